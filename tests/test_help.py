"""``--help`` of every command: each flag explained, each default stated once, no "(default: None)"."""
import argparse
import re
import runpy
import sys
from pathlib import Path

import pytest

from method import eval as evaluate
from method import train
from method.analysis import explore, report, summarize
from method.config import flags as config
from method.extraction import convert, prepare
from method.extraction import teacher as extract_teacher

COMMANDS = {  # module: (its main, the parser behind its --help)
    "method.train": (train.main, config.build_train_parser),
    "method.eval": (evaluate.main, evaluate.build_eval_parser),
    "method.explore": (explore.main, explore.build_parser),
    "method.report": (report.main, report.build_parser),
    "method.summarize": (summarize.main, summarize.build_parser),
    "method.prepare": (prepare.main, prepare.build_parser),
    "method.convert": (convert.main, convert.build_parser),
    "method.extract_teacher": (extract_teacher.main, extract_teacher.build_parser),
}
# the ``python -m method.<name>`` entry points: the modules at the top of method/ with a __main__ block
ENTRY_POINTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "method").glob("*.py")
                      if "__name__ == \"__main__\"" in p.read_text(encoding="utf-8"))
APPENDED = re.compile(r"\(default: [^)]*\)$")  # what an ArgumentDefaultsHelpFormatter adds
MENTION = re.compile(r"\bdefault\b", re.IGNORECASE)


@pytest.mark.parametrize("module", COMMANDS)
def test_help_states_each_default_once(module, capsys):
    main, build = COMMANDS[module]
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "(default: None)" not in capsys.readouterr().out
    parser = build()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{module} {action.dest}: no help text"
        shown = formatter._expand_help(action)
        assert "(default: None)" not in shown, (module, action.dest)
        if APPENDED.search(shown) and not APPENDED.search(action.help):  # the formatter added a default ...
            assert not MENTION.search(action.help), f"{module} {action.dest}: default stated twice: {shown}"


def test_the_formatter_adds_a_default_only_where_the_help_has_none():
    p = argparse.ArgumentParser(formatter_class=config.HelpFormatter)
    p.add_argument("--a", type=int, default=3, help="plain")
    p.add_argument("--b", type=int, default=3, help="stated (default 3)")
    p.add_argument("--c", default=None, help="none to state")
    shown = {a.dest: p._get_formatter()._expand_help(a) for a in p._actions if a.dest != "help"}
    assert shown == {"a": "plain (default: 3)", "b": "stated (default 3)", "c": "none to state"}


def test_every_command_has_its_entry_point():
    assert {f"method.{name}" for name in ENTRY_POINTS} == {*COMMANDS, "method.demo_data"}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_python_m_entry_point_runs_the_command(name, monkeypatch, capsys):
    """``python -m method.<name> --help``, run in this process as __main__: the command's own help, status 0."""
    path = Path(__file__).resolve().parents[1] / "method" / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code in (0, None)
    assert capsys.readouterr().out.startswith("usage: ")
