"""End-to-end training runs through ``train.main([...])`` on tiny generated data (CPU)."""
import csv
import json
import math
import os
import shutil

import pytest
import torch

from method import train
from method.models.model import DLDKD
from method.training import loop, runtime

ARGS = ["--collection", "tvr", "--visual_feature", "i3d_resnet", "--device", "cpu", "--num_workers", "0",
        "--hidden_size", "16", "--n_heads", "2", "--bsz", "3", "--margin", "0.1", "--kd_schedule", "exp_decay",
        "--seed", "7", "--eval_query_bsz", "4", "--eval_video_bsz", "3"]


def run(root, run_dir, *extra):
    return train.main(["--root_path", root, "--results_dir", str(run_dir), *ARGS, *extra])


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def final_weights(run_dir):
    return torch.load(run_dir / "latest.ckpt", weights_only=True)["model"]


def test_two_epoch_run_writes_its_files(data, tmp_path):
    run_dir = tmp_path / "run"
    result = run(data, run_dir, "--n_epoch", "2")
    for name in ("opt.json", "model.ckpt", "latest.ckpt", "metrics.csv", "train.log.txt", "eval_test.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").iterdir())
    opt = json.loads((run_dir / "opt.json").read_text())
    assert opt["kd_schedule"] == "exp_decay" and opt["no_teacher"] is False and opt["q_feat_size"] == 5
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "trip_inh", "nce_inh", "kd", "trip_exp", "nce_exp", "val_sumr", "lr", "kd_factor"} <= set(rows[0])
    assert float(rows[1]["kd_factor"]) == pytest.approx(0.1 * 0.95)
    ckpt = torch.load(run_dir / "model.ckpt", weights_only=True)  # plain weights-only load
    assert ckpt["model_config"]["student_config"]["hidden_size"] == 16
    assert set(result["t2v"]) == {"fused", "inheritance", "exploration"}
    assert set(result["t2v"]["fused"]) == {"r1", "r5", "r10", "r100", "sumr", "medr", "meanr", "map"}
    assert json.loads((run_dir / "eval_test.json").read_text())["t2v"] == result["t2v"]


# Students other than DL-DKD's, through their recipe or under DL-DKD's two branches; hard negatives from epoch 1.
STUDENT_RUNS = {"gmmformer_v2": ["--recipe", "gmmformer_v2", "--hard_negative_start_epoch", "1"],
                "dldkd-gmmformer": ["--student", "gmmformer", "--hard_negative_start_epoch", "1"]}


@pytest.mark.parametrize("extra", [[], *STUDENT_RUNS.values()], ids=["dldkd", *STUDENT_RUNS])
def test_resume_gives_the_uninterrupted_result(data, tmp_path, monkeypatch, extra):
    assert_resume_is_exact(data, tmp_path, monkeypatch, *extra)


def assert_resume_is_exact(data, tmp_path, monkeypatch, *extra):
    """A 2-epoch run, and the same run interrupted in its second epoch then resumed, end with equal weights and
    equal metrics.csv rows (every loss term, setting and val metric)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(data, full, "--n_epoch", "2", *extra)
    interrupted_run(data, cut, monkeypatch, *extra)
    assert torch.load(cut / "latest.ckpt", weights_only=True)["epoch"] == 1
    train.main(["--resume", str(cut), "--device", "cpu", "--num_workers", "0"])
    a, b = final_weights(full), final_weights(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = read_metrics(full)
    keep = [k for k in rows[0] if not k.endswith("_seconds")]
    assert "val_sumr" in keep and "loss" in keep
    assert [{k: r[k] for k in keep} for r in rows] == [{k: r[k] for k in keep} for r in read_metrics(cut)]


STUDENTS = {"dldkd": [], "gmmformer": ["--recipe", "gmmformer"], "gmmformer_v2": ["--recipe", "gmmformer_v2"],
            "holmes": ["--recipe", "holmes", "--warmup_epoch", "0"], "ral": ["--recipe", "ral"]}


def loss_columns(row: dict) -> list:
    """The loss terms (and their sum) of a metrics.csv row: not the epoch, its settings, val metrics or times."""
    settings = ("epoch", "lr", "kd_factor", "hard_negative", "alpha", "beta")
    return [k for k in row if k not in settings and not k.startswith("val_") and not k.endswith("_seconds")]


@pytest.mark.parametrize("extra", [pytest.param(extra, id=name, marks=() if name == "dldkd" else pytest.mark.slow)
                                   for name, extra in [*STUDENTS.items(), ("dldkd-gmmformer", STUDENT_RUNS["dldkd-gmmformer"])]])
def test_bf16_autocast_runs_on_the_cpu(data, tmp_path, extra):
    """One epoch under --amp bf16 (CPU autocast): finite losses that differ from float32's by bf16 rounding only."""
    run(data, tmp_path / "fp32", "--n_epoch", "1", *extra)
    run(data, tmp_path / "bf16", "--n_epoch", "1", "--amp", "bf16", *extra)
    (a,), (b,) = read_metrics(tmp_path / "fp32"), read_metrics(tmp_path / "bf16")
    terms = loss_columns(a)
    assert "loss" in terms and terms == loss_columns(b)
    assert all(math.isfinite(float(b[k])) for k in terms)
    assert any(a[k] != b[k] for k in terms)  # the forward ran in bfloat16
    for k in terms:
        assert float(b[k]) == pytest.approx(float(a[k]), rel=0.05, abs=1e-3), k
    assert json.loads((tmp_path / "bf16" / "opt.json").read_text())["amp"] == "bf16"


@pytest.mark.slow
@pytest.mark.parametrize("extra", STUDENTS.values(), ids=STUDENTS)
def test_compile_trains_every_student(data, tmp_path, monkeypatch, extra):
    """--compile hands the model to torch.compile (here its eager backend: Dynamo's graph capture without
    inductor's compile time); one step gives the losses of the plain model. GMMFormer compiles only with
    --gauss_own_length (quirk Q1 ties its numbers to the padded length, which the buckets change)."""
    real, compiled = torch.compile, []

    def eager_compile(model, **kwargs):
        compiled.append(model)
        return real(model, **{**kwargs, "backend": "eager"})

    if "gmmformer" in extra:
        extra = [*extra, "--gauss_own_length"]
    run(data, tmp_path / "plain", "--n_epoch", "1", "--bsz", "9", *extra)  # 9 videos: one step
    monkeypatch.setattr(torch, "compile", eager_compile)
    run(data, tmp_path / "compiled", "--n_epoch", "1", "--bsz", "9", "--compile", *extra)
    assert len(compiled) == 1 and isinstance(compiled[0], DLDKD)
    (a,), (b,) = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "compiled")
    for k in loss_columns(a):
        assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-6), k


def test_data_check_is_the_same_for_every_student(data, tmp_path):
    """The start-up data check does not depend on the student: the same message for a missing file."""
    root = tmp_path / "data"
    shutil.copytree(data, root)
    os.remove(root / "tvr" / "TextData" / "roberta_tvr_query_feat.hdf5")
    messages = []
    for name in ("dldkd", "gmmformer_v2"):
        with pytest.raises(SystemExit) as failed:
            run(str(root), tmp_path / name, "--n_epoch", "1", *STUDENTS[name])
        messages.append(str(failed.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("data check failed: missing file ") and "roberta_tvr_query_feat.hdf5" in messages[0]


def test_same_seed_same_losses(data, tmp_path):
    run(data, tmp_path / "a", "--n_epoch", "1")
    run(data, tmp_path / "b", "--n_epoch", "1")
    assert read_metrics(tmp_path / "a")[0]["loss"] == read_metrics(tmp_path / "b")[0]["loss"]


# Per-epoch mean losses of the default recipe (teacher on, two branches, exp_decay)
# on the data above, recorded before the speed work of bench/: a speed-up must not
# change the numbers of the default recipe.
RECORDED_LOSSES = [
    {"loss": 2.3603217601776123, "kd": 1.4788451194763184, "trip_inh": 0.3534419536590576, "nce_exp": 0.08887871354818344},
    {"loss": 1.9629980325698853, "kd": 1.1613898277282715, "trip_inh": 0.28620365262031555, "nce_exp": 0.09028083086013794},
]


def test_losses_match_recorded_values(data, tmp_path):
    run(data, tmp_path / "run", "--n_epoch", "2")
    rows = read_metrics(tmp_path / "run")
    for row, expected in zip(rows, RECORDED_LOSSES, strict=True):
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-4), key


def test_ablation_switches_are_recorded(data, tmp_path):
    run(data, tmp_path / "nt", "--n_epoch", "1", "--no_teacher")
    run(data, tmp_path / "sb", "--n_epoch", "1", "--single_branch", "--kd_schedule", "3")
    nt, sb = read_metrics(tmp_path / "nt")[0], read_metrics(tmp_path / "sb")[0]
    assert "kd" not in nt and "trip_exp" in nt
    assert "trip_exp" not in sb and "kd" in sb
    assert json.loads((tmp_path / "nt" / "opt.json").read_text())["no_teacher"] is True
    assert json.loads((tmp_path / "sb" / "opt.json").read_text())["single_branch"] is True
    assert set(json.loads((tmp_path / "sb" / "eval_test.json").read_text())["t2v"]) == {"fused", "inheritance"}


def test_existing_run_folder_is_not_overwritten(data, tmp_path):
    run(data, tmp_path / "run", "--n_epoch", "1")
    with pytest.raises(SystemExit, match="--resume"):
        run(data, tmp_path / "run", "--n_epoch", "1")


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_epoch(data, tmp_path, monkeypatch):
    real_epoch, real_loss = loop.train_one_epoch, loop.DLDKDLoss.forward
    now = {"epoch": None, "step": 0}

    def tracked_epoch(r, epoch, *args, **kwargs):
        now.update(epoch=epoch, step=0)
        return real_epoch(r, epoch, *args, **kwargs)

    def kd_nan_at_epoch_1_step_0(self, *args, **kwargs):
        terms = real_loss(self, *args, **kwargs)
        if (now["epoch"], now["step"]) == (1, 0):
            terms["kd"] = terms["kd"] * float("nan")  # in the graph: the backward and the update see it too
        now["step"] += 1
        return terms

    monkeypatch.setattr(loop, "train_one_epoch", tracked_epoch)
    monkeypatch.setattr(loop.DLDKDLoss, "forward", kd_nan_at_epoch_1_step_0)
    with pytest.raises(SystemExit, match=r"non-finite loss at epoch 1, step 0 \(0-based, within the epoch\): "
                                         r"kd=nan, loss=nan;"):
        run(data, tmp_path / "run", "--n_epoch", "3")
    assert now == {"epoch": 1, "step": 1}  # stopped at the first step of epoch 1
    latest = torch.load(tmp_path / "run" / "latest.ckpt", weights_only=True)
    assert latest["epoch"] == 1 and len(latest["history"]) == 1  # epoch 0 done, epoch 1 to start
    assert all(torch.isfinite(v).all() for v in latest["model"].values())
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "run")] == [0]


def test_deterministic_and_tf32_are_recorded_and_change_nothing_on_the_cpu(data, tmp_path):
    run(data, tmp_path / "plain", "--n_epoch", "1")
    try:
        run(data, tmp_path / "policy", "--n_epoch", "1", "--deterministic", "--tf32")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        runtime.apply_policy(tf32=False, deterministic=False)
    opt = json.loads((tmp_path / "policy" / "opt.json").read_text())
    assert opt["deterministic"] is True and opt["tf32"] is True
    assert json.loads((tmp_path / "plain" / "opt.json").read_text())["deterministic"] is False
    assert "(--tf32 has no effect on the CPU); deterministic algorithms: on" in (
        tmp_path / "policy" / "train.log.txt").read_text()
    assert "matmuls: exact float32; deterministic algorithms: off" in (tmp_path / "plain" / "train.log.txt").read_text()
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "policy")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def interrupted_run(data, run_dir, monkeypatch, *extra):
    """A 2-epoch run stopped during its second epoch (latest.ckpt holds epoch 0)."""
    real, calls = loop.train_one_epoch, []

    def interrupted_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(data, run_dir, "--n_epoch", "2", *extra)
    monkeypatch.undo()


def test_resume_refuses_changed_experiment_flags_naming_each(data, tmp_path, monkeypatch):
    cut = tmp_path / "cut"
    interrupted_run(data, cut, monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        train.main(["--resume", str(cut), "--lr", "1", "--amp", "bf16", "--device", "cpu"])
    message = str(stopped.value)
    assert "--lr 1.0 (opt.json: 0.00025)" in message and "--amp 'bf16' (opt.json: 'none')" in message
    assert "\n" not in message and "--device" not in message
    with pytest.raises(SystemExit, match="--n_epoch cannot change on --resume"):
        train.main(["--resume", str(cut), "--n_epoch", "5"])
    with pytest.raises(SystemExit, match="hidden_size"):  # a student setting is an experiment flag too
        train.main(["--resume", str(cut), "--hidden_size", "32"])
    assert torch.load(cut / "latest.ckpt", weights_only=True)["epoch"] == 1  # nothing was touched


@pytest.mark.slow
def test_resume_takes_changed_machine_flags_and_continues(data, tmp_path, monkeypatch):
    """Machine flags may change on resume (here the feeding: preloaded, other batch sizes of evaluation); the run
    ends with the uninterrupted run's weights, and flags equal to opt.json's are accepted."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(data, full, "--n_epoch", "2")
    interrupted_run(data, cut, monkeypatch)
    train.main(["--resume", str(cut), "--device", "cpu", "--num_workers", "0", "--preload", "--eval_query_bsz", "2",
                "--lr", "2.5e-4", "--seed", "7"])
    a, b = final_weights(full), final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt = json.loads((cut / "opt.json").read_text())
    assert opt["preload"] == "ram" and opt["eval_query_bsz"] == 2 and opt["lr"] == 2.5e-4


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    from method.parallel.distributed import Dist
    from method.training import run_dir
    monkeypatch.setattr(run_dir.time, "strftime", lambda fmt: "2026_12_04_10_00_00")
    args = (Dist(), None, None, False, str(tmp_path), "tvr", "iccv")
    first, resuming = run_dir.prepare_run_dir(*args)
    second, _ = run_dir.prepare_run_dir(*args)
    assert not resuming and first != second and first.is_dir() and second.is_dir()
    assert (first.name, second.name) == ("tvr-iccv-2026_12_04_10_00_00", "tvr-iccv-2026_12_04_10_00_00-2")


def test_fast_path_flag_trains_the_reference_run(data, tmp_path):
    """``--fast_path exact`` (the default) and ``--checkpoint_branches`` train GMMFormerV2 to the reference's
    (``--fast_path off``) losses and metrics (the same dropout masks on the CPU: rounding apart, the same run);
    ``--fast_path on`` draws other masks: recorded in opt.json, other losses. The blocks are set back after."""
    from method.models.students import blocks
    v2 = ["--recipe", "gmmformer_v2", "--n_epoch", "1", "--hidden_size", "8"]
    runs = {name: tmp_path / name for name in ("off", "exact", "ckpt", "on")}
    try:
        run(data, runs["off"], *v2, "--fast_path", "off")
        run(data, runs["exact"], *v2)
        run(data, runs["ckpt"], *v2, "--checkpoint_branches")
        run(data, runs["on"], *v2, "--fast_path", "on")
    finally:
        blocks.configure("exact")
    assert json.loads((runs["on"] / "opt.json").read_text())["fast_path"] == "on"
    assert json.loads((runs["exact"] / "opt.json").read_text())["fast_path"] == "exact"
    (ref,) = read_metrics(runs["off"])
    terms = loss_columns(ref)
    for name in ("exact", "ckpt"):
        (row,) = read_metrics(runs[name])
        for k in terms + ["val_sumr"]:
            assert float(row[k]) == pytest.approx(float(ref[k]), rel=1e-4, abs=1e-6), (name, k)
    (other,) = read_metrics(runs["on"])
    assert any(float(other[k]) != pytest.approx(float(ref[k]), rel=1e-4) for k in terms)
