"""The launch scripts and the package metadata agree with the code they wrap."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from method.config.flags import parse_train_args
from method.config.recipes import RECIPES

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"tvr": "do_tvr.sh", "activitynet": "do_activitynet.sh", "charades": "do_charades.sh"}


def script_command(script: str, env: dict) -> list:
    """The command a launch script runs, printed instead of run (PYTHON=echo)."""
    proc = subprocess.run(["bash", str(REPO / script), "/data/root"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHON": "echo", **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("collection", sorted(SCRIPTS))
def test_script_and_recipe_flag_train_the_same_run(collection, recipe):
    """``RECIPE=R ./do_C.sh ROOT`` and ``python -m method.train --recipe R --collection C --root_path ROOT`` resolve
    to the same opt.json (every key), so the scripts' editable blocks equal the recipe table."""
    only = RECIPES[recipe].only_collections
    if only is not None and collection not in only:  # refused by both, with one line saying why
        proc = subprocess.run(["bash", str(REPO / SCRIPTS[collection]), "/data/root"], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "PYTHON": "echo", "RECIPE": recipe})
        assert proc.returncode != 0 and "TVR only" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        with pytest.raises(SystemExit):
            parse_train_args(["--root_path", "/data/root", "--collection", collection, "--recipe", recipe])
        return
    cmd = script_command(SCRIPTS[collection], {"RECIPE": recipe})
    assert cmd[:2] == ["-m", "method.train"]
    from_script = vars(parse_train_args(cmd[2:]))
    from_recipe = vars(parse_train_args(["--root_path", "/data/root", "--collection", collection, "--recipe", recipe]))
    assert from_script == from_recipe
    assert from_script["exp_id"] == recipe


@pytest.mark.parametrize("collection", ["activitynet", "charades"])
def test_holmes_dual_is_refused_outside_tvr_saying_why(collection, capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--root_path", "/r", "--collection", collection, "--recipe", "holmes_dual"])
    assert f"--recipe holmes_dual is defined for tvr only, not '{collection}': its authors publish no settings" \
        in capsys.readouterr().err


@pytest.mark.parametrize("collection", sorted(SCRIPTS))
def test_iccv_values_without_the_script(collection):
    """--recipe iccv (the default) is the ICCV scripts' recipe: exponential KD decay, their margin, lr and seed."""
    opt = parse_train_args(["--root_path", "/r", "--collection", collection])
    assert (opt.recipe, opt.kd_schedule, opt.kd_k, opt.loss_scale_weight) == ("iccv", "exp_decay", 0.95, 0.1)
    assert opt.margin == (0.1 if collection == "tvr" else 0.2)
    assert (opt.lr, opt.seed, opt.n_epoch, opt.bsz, opt.student) == (2.5e-4, 2018, 100, 128, "dldkd")


@pytest.mark.parametrize("collection", sorted(SCRIPTS))
def test_student_variable_puts_a_student_under_the_recipe(collection):
    cmd = script_command(SCRIPTS[collection], {"STUDENT": "gmmformer_v2"})
    opt = parse_train_args(cmd[2:])
    assert (opt.recipe, opt.student, opt.exp_id, opt.single_branch, opt.no_teacher) == \
        ("iccv", "gmmformer_v2", "iccv_gmmformer_v2", False, False)
    assert opt.ot_weight > 0 and opt.separate_query_proj  # the student's own objective; its own query projections
    assert opt == parse_train_args(["--root_path", "/data/root", "--collection", collection,
                                    "--student", "gmmformer_v2"])


def test_nproc_starts_torchrun_and_nodes_need_an_address():
    cmd = script_command("do_tvr.sh", {"NPROC": "4", "MAX_RESTARTS": "2"})
    assert cmd[:2] == ["-m", "torch.distributed.run"] and "--standalone" in cmd
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4" and cmd[cmd.index("--max-restarts") + 1] == "2"
    assert cmd[cmd.index("-m", 2):][:2] == ["-m", "method.train"]
    nodes = script_command("do_tvr.sh", {"NPROC": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"})
    assert "--standalone" not in nodes and nodes[nodes.index("--master_addr") + 1] == "10.0.0.1"
    assert nodes[nodes.index("--node_rank") + 1] == "1" and nodes[nodes.index("--nnodes") + 1] == "2"
    rdzv = script_command("do_tvr.sh", {"NNODES": "2", "RDZV_ENDPOINT": "head:29400"})
    assert rdzv[rdzv.index("--rdzv_endpoint") + 1] == "head:29400"
    missing = subprocess.run(["bash", str(REPO / "do_tvr.sh"), "/data/root"], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHON": "echo", "NNODES": "2"})
    assert missing.returncode != 0 and "NODE_RANK is required" in missing.stderr


def requirement_lines(name: str) -> set:
    lines = (REPO / name).read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "-r"))}


def test_pyproject_has_the_requirements_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) == requirement_lines("requirements.txt")
    extras = project["optional-dependencies"]
    assert set(extras["extract"]) == requirement_lines("requirements-extract.txt")
    assert set(extras["report"]) == requirement_lines("requirements-report.txt")
    assert set(extras["test"]) - {"dldkd[extract,report]"} == requirement_lines("requirements-test.txt")
    assert {"dldkd-train", "dldkd-eval"} <= set(project["scripts"])
    assert sys.version_info >= (3, 10)


# torch APIs of the code with the first release that has them (requirements.txt explains the floor).
TORCH_API_RELEASES = {
    r"StandIn, \"\w+\.": (2, 6),  # an (object, "module.Name") tuple in safe_globals' allow-list
    r"torch\.serialization\.safe_globals": (2, 5),
    r"FlopCounterMode": (2, 1),
    r"scaled_dot_product_attention": (2, 0),
    r"torch\.compile\(": (2, 0),
}


def test_torch_floor_is_the_newest_listed_api_the_code_uses():
    """The floor equals the newest of the APIs above that the code still uses (not a search for new APIs)."""
    code = "\n".join(path.read_text() for folder in ("method", "bench") for path in (REPO / folder).rglob("*.py"))
    used = {pattern: release for pattern, release in TORCH_API_RELEASES.items() if re.search(pattern, code)}
    assert used == TORCH_API_RELEASES  # an API no longer used: drop it here and revisit the floor
    floor = re.search(r"^torch>=(\d+)\.(\d+),", (REPO / "requirements.txt").read_text(), re.M)
    assert max(used.values()) == (int(floor[1]), int(floor[2]))


def test_docs_recipe_table_is_generated_from_the_table():
    """docs/recipes.md shows the recipe table as method/config/recipes.py resolves it
    (regenerate with ``python -m method.config.recipes``)."""
    from method.config.recipes import markdown_table
    text = (REPO / "docs" / "recipes.md").read_text()
    shown = text.split("<!-- recipe-table:start -->\n", 1)[1].split("\n<!-- recipe-table:end -->", 1)[0]
    assert shown == markdown_table()
