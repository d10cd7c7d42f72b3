"""Retrieval with moments (method/analysis/explore.py, method/analysis/retrieval.py) on a demo model trained for a few epochs."""
import json

import numpy as np
import pytest
import torch
from demo_run import STUDENT_RUNS, demo_runs, student_runs

from method.analysis import explore
from method.analysis.retrieval import TeacherCurves, load_run, pair_curves, video_scores
from method.data import build_split, collate_train
from method.data.moment_file import moments_path
from method.evaluation import metrics
from method.models.teacher import PrecomputedTeacher


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
    """A video of 40 stored frames pooled to 16: model frames [2, 4), peak 3 -> stored [5, 10), peak 8 (its centre).

    Clips by fraction: clip 23 of 32 on a 26-frame video is stored frames [18.6875, 19.5), its peak frame 19.
    """
    assert explore._span(2, 4, 16, 40, 2.0, 3) == {"start_frame": 5.0, "end_frame": 10.0, "n_frames": 40,
                                                   "peak_frame": 8, "start_s": 2.5, "end_s": 5.0}  # 3.5 * 2.5
    assert explore._span(2, 4, 16, 16, None) == {"start_frame": 2.0, "end_frame": 4.0, "n_frames": 16}
    assert explore._span(23, 24, 32, 26, None, 23) == {"start_frame": 18.688, "end_frame": 19.5, "n_frames": 26,
                                                       "peak_frame": 19}


# --------------------------------------------------------------------------- #
# the other students: GMMFormer (clips), GMMFormerV2 (frames), DL-DKD on GMMFormer (7 scores)
# --------------------------------------------------------------------------- #
SCORES = {"gmmformer": ["fused", "clip", "frame"], "gmmformer_v2": ["fused", "clip", "frame"],
          "holmes": ["fused", "clip", "frame"], "ral": ["fused", "clip", "frame"],
          "dldkd-gmmformer": ["fused", "inheritance", "exploration", "inheritance_clip", "inheritance_frame",
                              "exploration_clip", "exploration_frame"]}
# the recipe's inference weights (clip, frame); the others' 0.7 / 0.3
LEVEL_WEIGHTS = {"holmes": (0.6, 0.4), "ral": (0.5, 0.5)}
CURVE_LEVEL = {"gmmformer": ("clip", 32), "gmmformer_v2": ("frame", 128), "dldkd-gmmformer": ("clip", 32),
               "holmes": ("frame", 128), "ral": ("clip", 32)}


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    return student_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def student_analysis(students):
    return {name: explore.analyse(load_run(students[name], device="cpu"), "test") for name in STUDENT_RUNS}


@pytest.mark.slow  # trains the other students (demo_run.student_runs)
@pytest.mark.parametrize("name", STUDENT_RUNS)
def test_student_ranks_agree_with_eval_test_json(students, student_analysis, name):
    an = student_analysis[name]
    evaluated = json.loads(open(f"{students[name]}/eval_test.json").read())["t2v"]
    assert list(an.ranks) == list(evaluated) == an.run.model.score_names() == SCORES[name]
    for score, ranks in an.ranks.items():
        assert metrics.summarize_t2v(ranks) == evaluated[score], score


@pytest.mark.slow  # trains the other students (demo_run.student_runs)
@pytest.mark.parametrize("name", STUDENT_RUNS)
def test_student_moments_are_on_the_positional_level_and_in_range(student_analysis, name):
    """Clips (GMMFormer) or frames (GMMFormerV2); every moment inside its video, clips scaled by fraction."""
    an = student_analysis[name]
    enc = an.enc
    level, width = CURVE_LEVEL[name]
    assert enc.curve_level == level and enc.mask.shape[1] == width
    expected = np.full(len(enc.video_ids), 32) if level == "clip" else np.minimum(an.stored_frames, 128)
    assert enc.n_frames.tolist() == expected.tolist()
    start, end, peak = an.moment
    n = enc.n_frames[enc.query_video]
    assert bool(((0 <= start) & (start <= peak) & (peak < end) & (end <= n)).all())
    chosen = list(range(0, len(enc.cap_ids), 5))
    for q, rec in zip(chosen, explore.query_records(an, chosen, top_k=3)):
        v = int(enc.query_video[q])
        scale = an.stored_frames[v] / int(enc.n_frames[v])  # a clip covers 1/32 of the video
        assert rec["moment"]["start_frame"] == round(int(start[q]) * scale, 3)
        assert rec["moment"]["end_frame"] == round(int(end[q]) * scale, 3)
        for m in (rec["moment"], *(t["moment"] for t in rec["top"])):
            assert 0 <= m["start_frame"] < m["end_frame"] <= m["n_frames"]
            assert m["start_frame"] < m["peak_frame"] + 1 and m["peak_frame"] < m["end_frame"]  # the peak's frame
        assert list(rec["rank"]) == SCORES[name]
        for t in rec["top"]:
            score = t["score"]
            assert list(score) == SCORES[name]
            branches = ["inheritance", "exploration"] if "inheritance" in score else [None]
            w_clip, w_frame = LEVEL_WEIGHTS.get(name, (0.7, 0.3))
            for b in branches:  # a branch is 0.7 clip + 0.3 frame (Holmes: 0.6 / 0.4)
                whole, clip, frame = (score[b], score[f"{b}_clip"], score[f"{b}_frame"]) if b else \
                    (score["fused"], score["clip"], score["frame"])
                assert whole == pytest.approx(w_clip * clip + w_frame * frame, abs=2e-5)
            if b:
                assert score["fused"] == pytest.approx(0.3 * score["exploration"] + 0.7 * score["inheritance"],
                                                       abs=2e-5)
    ev = an.moment_evaluation()
    assert ev["estimate"]["n"] == len(enc.cap_ids) and 0 <= ev["estimate"]["miou"] <= 100


@pytest.mark.slow  # trains the other students (demo_run.student_runs)
def test_student_curves_of_the_other_level(student_analysis):
    """pair_curves of any level: their max over the positions is the level's video score."""
    for name in ("gmmformer", "gmmformer_v2"):
        an = student_analysis[name]
        enc, run = an.enc, an.run
        q = torch.arange(0, len(enc.cap_ids), 7)
        v = enc.query_video[q]
        scores = video_scores(run, enc, q)
        for level in ("clip", "frame"):
            curves = pair_curves(run, enc, q, v, level=level)["fused"]
            assert curves.shape[1] == {"clip": 32, "frame": 1 if name == "gmmformer" else 128}[level]
            own = scores[level][torch.arange(len(q)), v]
            torch.testing.assert_close(curves.amax(1), own, rtol=0, atol=1e-6)


@pytest.mark.slow  # trains the other students (demo_run.student_runs)
def test_cli_table_has_a_column_per_score(students, tmp_path, capsys):
    records = explore.main([students["dldkd-gmmformer"], "--device", "cpu", "--worst", "2", "--top_k", "3",
                            "--jsonl", str(tmp_path / "w.jsonl")])
    assert [list(r["rank"]) for r in records] == [SCORES["dldkd-gmmformer"]] * 2
    header = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("rank"))
    assert header.split()[2:-1] == ["fused", "inh", "exp", "inh_clip", "inh_frame", "exp_clip", "exp_frame"]


@pytest.mark.slow  # trains the other students (demo_run.student_runs)
@pytest.mark.parametrize("level", ["frame", "clip"])
def test_teacher_curves_are_the_distillation_targets(runs, students, level):
    """The teacher's curve on a student's positions is the KD target of training on those positions."""
    run = load_run(students["dldkd-gmmformer"] if level == "clip" else runs["run"], device="cpu")
    opt = run.opt
    assert opt.kd_level == level
    split = build_split(opt.root_path, opt.collection, opt.visual_feature, "test", True, opt.max_ctx_l,
                        opt.max_desc_l)
    items = split.train_dataset(32 if level == "clip" else None, level == "clip")
    teacher = TeacherCurves(opt)
    for index in (0, 3):
        item = items[index]
        batch = collate_train([item])
        positions = batch["teacher_clip_feat" if level == "clip" else "teacher_video_feat"]
        target = PrecomputedTeacher().frame_scores(batch["teacher_query_feat"], positions, batch["query_labels"])
        for j, cap_id in enumerate(item["cap_ids"]):
            curve = teacher.curve(cap_id, item["video_id"], positions.shape[1], level)
            np.testing.assert_allclose(curve, target[j].numpy(), rtol=1e-5, atol=1e-6)
