"""Retrieval with moments (method/explore.py, method/retrieval.py) on a demo model trained for a few epochs."""
import json

import pytest
import torch

from demo_run import demo_runs
from method import explore, metrics
from method.moment_file import moments_path
from method.retrieval import load_run, pair_curves


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return demo_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def analysis(runs):
    return explore.analyse(load_run(runs["run"], device="cpu"), "test")


def test_ranks_agree_with_eval_test_json(runs, analysis):
    evaluated = json.loads(open(f"{runs['run']}/eval_test.json").read())["t2v"]
    assert set(analysis.ranks) == set(evaluated) == {"fused", "inheritance", "exploration"}
    for name, ranks in analysis.ranks.items():
        assert metrics.summarize_t2v(ranks) == evaluated[name], name


def test_top_k_lists_agree_with_the_ranks(analysis):
    n_videos = len(analysis.enc.video_ids)
    chosen = list(range(0, len(analysis.enc.cap_ids), 7))
    records = explore.query_records(analysis, chosen, top_k=n_videos)
    w = analysis.run.fusion
    for q, rec in zip(chosen, records):
        top = rec["top"]
        assert [t["rank"] for t in top] == list(range(1, n_videos + 1))
        fused = [t["score"]["fused"] for t in top]
        assert fused == sorted(fused, reverse=True)
        position = next(t["rank"] for t in top if t["true"])
        assert [t["video_id"] for t in top if t["true"]] == [rec["video_id"]]
        assert position == rec["rank"]["fused"] == int(analysis.ranks["fused"][q])
        for branch in ("inheritance", "exploration"):  # the branch's own order gives its rank
            own = sorted(top, key=lambda t: -t["score"][branch])
            assert 1 + [t["true"] for t in own].index(True) == rec["rank"][branch]
        for t in top[:3]:
            mixed = w["exploration"] * t["score"]["exploration"] + w["inheritance"] * t["score"]["inheritance"]
            assert t["score"]["fused"] == pytest.approx(mixed, abs=2e-5)
            m = t["moment"]
            assert 0 <= m["start_frame"] <= m["peak_frame"] < m["end_frame"] <= m["n_frames"]


def test_moment_estimate_beats_a_random_span(analysis):
    ev = analysis.moment_evaluation()
    est, rnd = ev["estimate"]["miou"], ev["random_span_miou"]
    line = f"demo moments, {ev['estimate']['n']} test captions: estimate mIoU {est:.1f}, random span {rnd:.1f}"
    print(line)
    assert ev["estimate"]["n"] == len(analysis.enc.cap_ids)
    assert est > 2 * rnd and est - rnd > 10, line
    assert ev["estimate"]["r1_iou0.3"] >= ev["estimate"]["r1_iou0.5"] >= ev["estimate"]["r1_iou0.7"]


def test_cli_worst_queries_jsonl_and_table(runs, analysis, tmp_path, capsys):
    out = tmp_path / "worst.jsonl"
    records = explore.main([runs["run"], "--device", "cpu", "--worst", "3", "--top_k", "4", "--fps", "2",
                            "--jsonl", str(out)])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == records and len(lines) == 3
    worst = sorted(analysis.ranks["fused"].tolist(), reverse=True)[:3]
    assert [r["rank"]["fused"] for r in lines] == worst
    for r in lines:
        assert len(r["top"]) == 4 and r["gt_moment"] is not None and 0 <= r["iou"] <= 1
        assert r["moment"]["start_s"] == pytest.approx(r["moment"]["start_frame"] / 2, abs=1e-3)
    text = capsys.readouterr().out
    assert all(r["cap_id"] in text for r in lines)
    assert "random span of the same length" in text and f"wrote 3 JSON lines to {out}" in text


def test_cli_selection_by_ids_and_file(runs, analysis, tmp_path):
    ids = analysis.enc.cap_ids[5:7]
    by_ids = explore.main([runs["run"], "--device", "cpu", "--cap_ids", *ids, "--jsonl", str(tmp_path / "a")])
    (tmp_path / "ids.txt").write_text("\n".join(reversed(ids)) + "\n")
    by_file = explore.main([runs["run"], "--device", "cpu", "--cap_file", str(tmp_path / "ids.txt"),
                            "--jsonl", str(tmp_path / "b")])
    assert [r["cap_id"] for r in by_ids] == ids and by_file == by_ids[::-1]
    best = explore.select_queries(analysis, best=4)
    assert sorted(int(analysis.ranks["fused"][q]) for q in best) == sorted(analysis.ranks["fused"].tolist())[:4]
    sample = explore.select_queries(analysis, sample=6, seed=3)
    assert len(set(sample)) == 6 and sample == explore.select_queries(analysis, sample=6, seed=3)


def test_bad_inputs_give_clear_errors(runs, tmp_path):
    (tmp_path / "ids.txt").write_text("nope#enc#0\n")
    with pytest.raises(SystemExit, match=r"--cap_file .*ids.txt: 1 ids are no caption of the test split"):
        explore.main([runs["run"], "--device", "cpu", "--cap_file", str(tmp_path / "ids.txt")])
    bad = tmp_path / "moments.txt"
    bad.write_text(open(moments_path(runs["root"], "tvr")).read() + "ghost#enc#9 1 3\n")
    with pytest.raises(SystemExit, match=r"moments.txt: 1 of \d+ cap_ids are no caption of the collection"):
        explore.main([runs["run"], "--device", "cpu", "--moments", str(bad)])
    with pytest.raises(SystemExit, match="opt.json not found"):
        explore.main([str(tmp_path), "--device", "cpu"])


def test_curves_mask_padding(analysis):
    """Pair curves of a short video: beyond its length they repeat its first frame, which the mask removes."""
    enc = analysis.enc
    v = int(torch.argmin(enc.n_frames))
    n = int(enc.n_frames[v])
    assert n < enc.mask.shape[1]
    curves = pair_curves(analysis.run, enc, torch.tensor([0]), torch.tensor([v]))
    for name in ("inheritance", "exploration"):
        assert torch.allclose(curves[name][0, n:], curves[name][0, :1].expand(enc.mask.shape[1] - n))


def test_spans_of_pooled_videos_are_given_in_stored_frames_and_seconds():
    """A video of 40 stored frames pooled to 16: model frames [2, 4), peak 3 -> stored [5, 10), peak 7."""
    assert explore._span(2, 4, 16, 40, 2.0, 3) == {"start_frame": 5.0, "end_frame": 10.0, "n_frames": 40,
                                                   "peak_frame": 7, "start_s": 2.5, "end_s": 5.0}
    assert explore._span(2, 4, 16, 16, None) == {"start_frame": 2.0, "end_frame": 4.0, "n_frames": 16}
