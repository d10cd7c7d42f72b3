"""Each of the field's newest recipes end to end as a user runs it: data from ``python -m method.demo_data``, a
short training through its launch script (``RECIPE=R ./do_tvr.sh ROOT``), then ``./do_test.sh`` on the run
folder, which must reproduce the test metrics the training reported."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The recipes this file runs (the older ones: tests/test_train.py, test_dldkdpp.py, test_gmmformer_recipes.py).
RECIPES = ["holmes", "ral"]
SMALL = ["--n_epoch", "2", "--bsz", "16", "--hidden_size", "16", "--n_heads", "2", "--device", "cpu",
         "--num_workers", "0", "--eval_query_bsz", "64"]


def script(*args, env=None):
    env = {**os.environ, "PYTHON": sys.executable, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, "-m", "method.demo_data", str(root), "--videos", "80"], check=True, cwd=REPO,
                   capture_output=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_launch_script_trains_and_do_test_reproduces_its_result(demo_root, recipe):
    train = script("do_tvr.sh", str(demo_root), *SMALL, "--exp_id", f"ci{recipe}", env={"RECIPE": recipe})
    assert train.returncode == 0, train.stderr[-3000:]
    (run_dir,) = sorted((demo_root / "tvr" / "results").glob(f"tvr-ci{recipe}-*"))
    opt = json.loads((run_dir / "opt.json").read_text())
    assert opt["recipe"] == recipe and opt["n_epoch"] == 2
    trained = json.loads((run_dir / "eval_test.json").read_text())
    (run_dir / "eval_test.json").unlink()
    test = script("do_test.sh", "tvr", "i3d_resnet", str(demo_root), str(run_dir), "--device", "cpu",
                  "--num_workers", "0")
    assert test.returncode == 0, test.stderr[-3000:]
    assert "text-to-video" in test.stdout
    assert json.loads((run_dir / "eval_test.json").read_text())["t2v"] == trained["t2v"]
