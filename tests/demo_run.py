"""Demo models trained for a few epochs, shared by the tests of explore and report.

Built once per test session (the first test that asks trains them) under
pytest's temporary folder, on one set of 150 demo videos: a small DL-DKD (4
epochs) and a ``--no_teacher`` run (2 epochs) to compare it with
(``demo_runs``), and 2-epoch runs of the other students (``student_runs``):
the GMMFormer, GMMFormerV2, Holmes and RAL recipes and DL-DKD's two branches on the
GMMFormer student.
"""
from method import train
from method.data import demo as demo_data

DEMO_VIDEOS = 150
TRAIN_ARGS = ["--collection", "tvr", "--visual_feature", "i3d_resnet", "--device", "cpu", "--num_workers", "0",
              "--preload", "--hidden_size", "32", "--n_heads", "2", "--bsz", "16", "--lr", "1e-3", "--margin", "0.1",
              "--kd_schedule", "exp_decay", "--seed", "1"]
STUDENT_RUNS = {"gmmformer": ["--recipe", "gmmformer"], "gmmformer_v2": ["--recipe", "gmmformer_v2"],
                "dldkd-gmmformer": ["--student", "gmmformer"], "holmes": ["--recipe", "holmes", "--warmup_epoch", "1"],
                "ral": ["--recipe", "ral"]}
_built = {}


def _train(name: str, *extra) -> str:
    """Train the run ``name`` on the demo data (once per session); returns its folder."""
    if name not in _built:
        path = str(_built["base"] / name)
        train.main(["--root_path", _built["root"], "--results_dir", path, *TRAIN_ARGS, *extra])
        _built[name] = path
    return _built[name]


def _data(tmp_path_factory) -> str:
    if "root" not in _built:
        _built["base"] = tmp_path_factory.mktemp("demo_runs")
        _built["root"] = str(_built["base"] / "data")
        demo_data.generate(_built["root"], "tvr", DEMO_VIDEOS, seed=0)
    return _built["root"]


def demo_runs(tmp_path_factory) -> dict:
    """{"root": data root, "run": DL-DKD run folder, "other": no-teacher run folder} (paths as str)."""
    root = _data(tmp_path_factory)
    return {"root": root, "run": _train("run", "--n_epoch", "4"),
            "other": _train("other", "--n_epoch", "2", "--no_teacher")}


def student_runs(tmp_path_factory) -> dict:
    """{"root": data root, name: run folder for each of STUDENT_RUNS} (2 epochs each)."""
    root = _data(tmp_path_factory)
    return {"root": root, **{name: _train(name, "--n_epoch", "2", *extra) for name, extra in STUDENT_RUNS.items()}}
