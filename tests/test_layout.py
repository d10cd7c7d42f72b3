"""The package's layout contract: which group may import which, and thin entry points.

Groups, lowest first: ``common``; ``data`` and ``losses``; ``models`` (the
students, the teacher, checkpoints); ``parallel``; ``evaluation``;
``training``; ``config``; ``analysis``; the entry points (``method/*.py``).
``extraction`` stands apart: it reads and writes the data formats and nothing
of training. A module may import its own group and the groups below it.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "method"
# group -> the groups it may import (besides itself)
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "losses": {"common"},
    "models": {"common", "losses"},
    "parallel": {"common", "data", "losses", "models"},
    "evaluation": {"common", "data", "losses", "models", "parallel"},
    "training": {"common", "data", "losses", "models", "parallel", "evaluation"},
    "config": {"common", "data", "losses", "models", "parallel", "evaluation", "training"},
    "analysis": {"common", "data", "losses", "models", "parallel", "evaluation", "config"},
    "extraction": {"common", "data"},
}
ENTRY_POINTS = {"train", "eval", "explore", "report", "summarize", "prepare", "convert", "extract_teacher",
                "demo_data"}


def group_of(module: str) -> str:
    """'method.models.students.base' -> 'models'; 'method.train' -> 'entry'."""
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in ENTRY_POINTS:
        return "entry"
    return parts[1]


def method_imports(path: Path, source: str | None = None) -> set[str]:
    """The ``method.*`` modules a file imports (relative imports resolved)."""
    tree = ast.parse(source if source is not None else path.read_text())
    package = list(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "method"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "method":
                out.add(name)
                out |= {f"{name}.{a.name}" for a in node.names if (REPO / f"{name}.{a.name}".replace(".", "/")).exists()
                        or (REPO / (f"{name}.{a.name}".replace(".", "/") + ".py")).exists()}
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_belongs_to_a_group():
    groups = {group_of(".".join(p.relative_to(REPO).with_suffix("").parts)) for p in MODULES
              if p.name != "__init__.py" or p.parent != PACKAGE}
    assert groups <= set(ALLOWED) | {"entry"}, groups - set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if module == "method.__init__":
        return
    group = group_of(module)
    if group == "entry":  # entry points may use everything, but nothing may import them
        return
    bad = sorted(m for m in method_imports(path)
                 if group_of(m) != group and (group_of(m) == "entry" or group_of(m) not in ALLOWED[group]))
    assert not bad, f"{module} ({group}) imports {bad}: allowed below it are {sorted(ALLOWED[group])}"


def test_the_checker_catches_an_upward_import():
    """Upward imports, absolute or relative, are found (the contract test can fail)."""
    probe = PACKAGE / "data" / "probe.py"
    found = method_imports(probe, "from method.training.loop import train\nfrom ..models import model\n")
    assert {m for m in found if group_of(m) not in ALLOWED["data"] | {"data"}} == \
        {"method.training.loop", "method.models", "method.models.model"}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_are_short_and_run_as_modules(name):
    """``python -m method.<name>`` exists, is a plain module (no sys.modules swap) and stays short."""
    text = (PACKAGE / f"{name}.py").read_text()
    assert "sys.modules" not in text
    assert len(text.splitlines()) <= 60, f"method/{name}.py should only wire the command to its package"


def test_extraction_teacher_loads_no_model_loss_or_training():
    code = ("import sys, method.extraction.teacher\n"
            "bad = [m for m in sys.modules if m.startswith(('method.models', 'method.losses', 'method.training', "
            "'method.config', 'method.evaluation', 'method.parallel'))]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
