"""Demo models trained for a few epochs, shared by the tests of explore and report.

Built once per test session (the first test that asks trains them) under
pytest's temporary folder: 150 demo videos, a small DL-DKD (4 epochs) and a
``--no_teacher`` run (2 epochs) to compare it with.
"""
from method import demo_data, train

DEMO_VIDEOS = 150
TRAIN_ARGS = ["--collection", "tvr", "--visual_feature", "i3d_resnet", "--device", "cpu", "--num_workers", "0",
              "--preload", "--hidden_size", "32", "--n_heads", "2", "--bsz", "16", "--lr", "1e-3", "--margin", "0.1",
              "--kd_schedule", "exp_decay", "--seed", "1"]
_built = {}


def demo_runs(tmp_path_factory) -> dict:
    """{"root": data root, "run": DL-DKD run folder, "other": no-teacher run folder} (paths as str)."""
    if not _built:
        base = tmp_path_factory.mktemp("demo_runs")
        root = str(base / "data")
        demo_data.generate(root, "tvr", DEMO_VIDEOS, seed=0)
        for name, extra in (("run", ["--n_epoch", "4"]), ("other", ["--n_epoch", "2", "--no_teacher"])):
            train.main(["--root_path", root, "--results_dir", str(base / name), *TRAIN_ARGS, *extra])
        _built.update(root=root, run=str(base / "run"), other=str(base / "other"))
    return _built
