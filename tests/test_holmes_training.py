"""``--recipe holmes`` through ``train.main([...])`` on tiny generated data (CPU): named finite terms by phase,
a bit-identical ``--resume``, one process only."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from synthetic import write_collection
from test_train import final_weights, interrupted_run, read_metrics, run

from method import train
from method.config.flags import parse_train_args
from method.config.settings import train_settings
from method.losses.evidential import TERM_NAMES
from method.training import loop

# warm-up over after epoch 0, hard negatives from epoch 1: both phases in two epochs
HOLMES = ["--recipe", "holmes", "--warmup_epoch", "1", "--hard_negative_start_epoch", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_collection(str(root), n_videos=9)
    return str(root)


def test_two_epochs_give_the_named_terms_of_both_phases(data, tmp_path):
    run_dir = tmp_path / "run"
    result = run(data, run_dir, "--n_epoch", "2", *HOLMES)
    opt = json.loads((run_dir / "opt.json").read_text())
    assert (opt["student"], opt["single_branch"], opt["no_teacher"], opt["clip_scale_w"], opt["frame_scale_w"]) == \
        ("holmes", True, True, 0.6, 0.4)
    assert (opt["edl_tau"], opt["intra_edl_weight"], opt["max_es_cnt"], opt["batch_sort"]) == (0.05, 0.8, 20, "frames")
    rows = read_metrics(run_dir)
    assert [(int(r["epoch"]), int(r["warmup_end"]), int(r["hard_negative"])) for r in rows] == [(0, 0, 0), (1, 1, 1)]
    for row in rows:
        assert set(TERM_NAMES) | {"loss"} <= set(row)
        assert all(math.isfinite(float(row[k])) for k in (*TERM_NAMES, "loss"))
        assert float(row["loss"]) == pytest.approx(sum(float(row[k]) for k in TERM_NAMES), rel=1e-5)
    assert float(rows[0]["intra_edl"]) == 0 and float(rows[1]["intra_edl"]) > 0  # the warm-up, then the POT term
    ckpt = torch.load(run_dir / "model.ckpt", weights_only=True)
    assert ckpt["model_config"]["student"] == "holmes"
    assert ckpt["model_config"]["student_config"]["token_valid_positions"] is False
    assert set(result["t2v"]) == {"fused", "clip", "frame"}


def test_resume_gives_the_uninterrupted_result(data, tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(data, full, "--n_epoch", "2", *HOLMES)
    interrupted_run(data, cut, monkeypatch, *HOLMES)
    assert torch.load(cut / "latest.ckpt", weights_only=True)["epoch"] == 1
    train.main(["--resume", str(cut), "--device", "cpu", "--num_workers", "0"])
    a, b = final_weights(full), final_weights(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    keep = [k for k in read_metrics(full)[0] if not k.endswith("_seconds")]
    assert [{k: r[k] for k in keep} for r in read_metrics(full)] == [{k: r[k] for k in keep} for r in read_metrics(cut)]


def test_several_processes_are_refused_at_the_start(tmp_path):
    opt = parse_train_args(["--root_path", str(tmp_path), "--collection", "tvr", "--recipe", "holmes"])
    with pytest.raises(SystemExit, match="one process only: its evidential terms need the whole batch"):
        loop.train(train_settings(opt), SimpleNamespace(enabled=True), torch.device("cpu"), tmp_path, False)
