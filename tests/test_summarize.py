"""Tables over runs (method/analysis/summarize.py) on run folders with known metrics."""
import csv
import json
import math

import numpy as np
import pytest

from method.analysis import summarize

KEYS = ("r1", "r5", "r10", "r100", "sumr", "medr", "meanr", "map")


def make_run(folder, seed, no_teacher, r1, best_epoch, epoch_seconds, lr=2.5e-4, scores=None, **flags):
    """A run folder with opt.json, eval_test.json and metrics.csv holding the given numbers.

    ``scores``: the names besides "fused" (default DL-DKD's inheritance, with r1 / 2, and exploration, zeros;
    otherwise score k has r1 + 100 k); ``flags``: more opt.json entries.
    """
    folder.mkdir(parents=True)
    opt = {"seed": seed, "no_teacher": no_teacher, "lr": lr, "results_dir": str(folder), "exp_id": f"e{seed}",
           "device": "cpu", "num_workers": 0, "collection": "tvr", **flags}
    (folder / "opt.json").write_text(json.dumps(opt))
    t2v = {k: r1 + i for i, k in enumerate(KEYS)}
    if scores is None:
        named = {"inheritance": {**t2v, "r1": r1 / 2}, "exploration": {k: 0.0 for k in KEYS}}
    else:
        named = {name: {**t2v, "r1": r1 + 100 * k} for k, name in enumerate(scores, 1)}
    (folder / "eval_test.json").write_text(json.dumps(
        {"split": "test", "checkpoint_epoch": best_epoch, "t2v": {"fused": t2v, **named}, "v2t": {}}))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "loss", "alpha", "epoch_seconds"])
        w.writeheader()
        w.writerows({"epoch": e, "loss": 1.0, "alpha": 0.5, "epoch_seconds": s} for e, s in enumerate(epoch_seconds))
    return folder


@pytest.fixture
def runs(tmp_path):
    specs = [(1, False, 30.0, 4, [60, 60]), (2, False, 33.0, 6, [90, 90]), (3, False, 36.0, 5, [20, 20, 20]),
             (1, True, 20.0, 2, [120]), (2, True, 24.0, 9, [60, 120])]
    return [make_run(tmp_path / f"run{i}", *spec) for i, spec in enumerate(specs)]


def test_mean_and_std_over_seeds(runs, tmp_path, capsys):
    rows = summarize.main([*map(str, runs), "--out", str(tmp_path / "table")])
    assert [r["group"] for r in rows] == ["no_teacher=False", "no_teacher=True"]  # the one flag that differs
    dldkd, baseline = rows
    assert dldkd["n_runs"] == 3 and baseline["n_runs"] == 2
    assert dldkd["r1"] == pytest.approx((33.0, 3.0))  # 30, 33, 36: sample std 3
    assert baseline["r1"] == pytest.approx((22.0, math.sqrt(8.0)))
    assert dldkd["map"] == pytest.approx((33.0 + 7, 3.0))
    assert dldkd["best_epoch"] == pytest.approx((5.0, 1.0))
    assert dldkd["wall_minutes"] == pytest.approx((2.0, 1.0))  # 120, 180, 60 seconds
    assert baseline["wall_minutes"] == pytest.approx((2.5, np.std([2.0, 3.0], ddof=1)))
    out = capsys.readouterr().out
    assert "| no_teacher=False | 3 | 33.0 ± 3.0 |" in out and "| no_teacher=True | 2 | 22.0 ± 2.8 |" in out
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[0]["r1_mean"]) == 33.0 and float(table[1]["r1_std"]) == pytest.approx(math.sqrt(8.0))
    assert table[0]["no_teacher"] == "False" and table[0]["runs"].split() == [str(r) for r in runs[:3]]
    tex = (tmp_path / "table.tex").read_text()
    assert "no\\_teacher=False & 3 & $33.0 \\pm 3.0$" in tex and "\\toprule" in tex and "\\bottomrule" in tex


def test_group_by_flag_branch_and_single_runs(runs, tmp_path, capsys):
    rows = summarize.main([*map(str, runs[:4]), "--group_by", "seed", "--branch", "inheritance",
                           "--out", str(tmp_path / "t")])
    assert [(r["group"], r["n_runs"]) for r in rows] == [("seed=1", 2), ("seed=2", 1), ("seed=3", 1)]
    assert rows[0]["r1"] == pytest.approx((12.5, np.std([15.0, 10.0], ddof=1)))
    assert rows[1]["r1"][0] == 16.5 and math.isnan(rows[1]["r1"][1])  # one run: no spread
    assert "| seed=2 | 1 | 16.5 |" in capsys.readouterr().out


def test_bad_inputs_name_the_file_or_flag(runs, tmp_path):
    (runs[0] / "eval_test.json").unlink()
    with pytest.raises(SystemExit, match=r"run0/eval_test.json not found: evaluate the run first"):
        summarize.main([str(runs[0])])
    with pytest.raises(SystemExit, match=r"--group_by no_such_flag: not a flag of .*run1/opt.json"):
        summarize.main([str(runs[1]), "--group_by", "no_such_flag", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="opt.json not found"):
        summarize.main([str(tmp_path / "nowhere")])


def test_runs_older_than_a_flag_have_its_default(runs, tmp_path):
    """A run folder written before --recipe existed groups with the explicit ICCV runs."""
    opt = json.loads((runs[2] / "opt.json").read_text())
    (runs[2] / "opt.json").write_text(json.dumps({**opt, "recipe": "iccv"}))
    newer = make_run(tmp_path / "pp", 4, False, 40.0, 7, [30])
    (newer / "opt.json").write_text(json.dumps({**json.loads((newer / "opt.json").read_text()), "recipe": "dldkdpp"}))
    rows = summarize.main([*map(str, runs[:3]), str(newer), "--group_by", "recipe", "--out", str(tmp_path / "t")])
    assert [(r["group"], r["n_runs"]) for r in rows] == [("recipe=iccv", 3), ("recipe=dldkdpp", 1)]


def test_branch_is_any_score_of_the_runs(tmp_path, capsys):
    gmm = [make_run(tmp_path / f"g{i}", i, True, 30.0 + 2 * i, 3, [60], scores=("clip", "frame"),
                    recipe="gmmformer", student="gmmformer") for i in (1, 2)]
    rows = summarize.main([*map(str, gmm), "--branch", "frame", "--out", str(tmp_path / "t")])
    assert [(r["group"], r["n_runs"]) for r in rows] == [("all", 2)]
    assert rows[0]["r1"][0] == 233.0  # 32 and 34, + 2 * 100 (the second score)
    assert "text-to-video, frame score" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"g1/eval_test.json: no t2v metrics of the score 'inheritance'; --branch "
                                         r"can be one of fused, clip, frame$"):
        summarize.main([str(gmm[0]), "--branch", "inheritance", "--out", str(tmp_path / "t")])


def test_group_by_student_and_recipe(runs, tmp_path):
    """Runs older than --student (no student in opt.json) are DL-DKD's student, as training resolves them."""
    iccv = make_run(tmp_path / "iccv", 5, False, 31.0, 4, [30], recipe="iccv", student="dldkd")
    gmm = make_run(tmp_path / "gmm", 6, True, 25.0, 4, [30], scores=("clip", "frame"), recipe="gmmformer",
                   student="gmmformer")
    on_gmm = make_run(tmp_path / "on_gmm", 7, False, 35.0, 4, [30], recipe="iccv", student="gmmformer_v2",
                      scores=("inheritance", "exploration", "inheritance_clip", "inheritance_frame",
                              "exploration_clip", "exploration_frame"))
    rows = summarize.main([*map(str, runs[:2]), str(iccv), str(gmm), str(on_gmm), "--group_by", "student",
                           "--out", str(tmp_path / "t")])
    assert [(r["group"], r["n_runs"]) for r in rows] == [("student=dldkd", 3), ("student=gmmformer", 1),
                                                         ("student=gmmformer_v2", 1)]
    rows = summarize.main([*map(str, runs[:2]), str(iccv), str(gmm), str(on_gmm), "--group_by", "recipe", "student",
                           "--out", str(tmp_path / "t")])
    assert [r["group"] for r in rows] == ["recipe=iccv, student=dldkd", "recipe=gmmformer, student=gmmformer",
                                          "recipe=iccv, student=gmmformer_v2"]
    assert rows[0]["r1"] == pytest.approx((np.mean([30.0, 33.0, 31.0]), np.std([30.0, 33.0, 31.0], ddof=1)))
