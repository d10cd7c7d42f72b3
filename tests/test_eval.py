"""Evaluation through do_test.sh / eval.main: the authors' checkpoints, this project's runs, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import DQ, DV, write_collection
from test_checkpoint import released_cfg, released_state

from method import eval as eval_cli
from method.data import build_split, collate_queries, collate_videos
from method.evaluation import metrics
from method.models.checkpoint import released_to_own
from method.models.model import DLDKD, ModelConfig

REPO = Path(__file__).resolve().parents[1]
HIDDEN = 8


def authors_run(folder: Path, visual=DV, query=DQ) -> dict:
    """A results folder as the authors' code leaves it: EasyDict model_cfg, their opt.json names."""
    folder.mkdir(parents=True)
    state = released_state(visual=visual, query=query, hidden=HIDDEN, seed=3)
    torch.save({"model": state, "model_cfg": released_cfg(visual, query, HIDDEN), "epoch": 41}, folder / "model.ckpt")
    opt = {"collection": "tvr", "visual_feature": "i3d_resnet", "q_feat_size": query, "max_ctx_l": 128,
           "max_desc_l": 30, "A_hidden_size": HIDDEN, "B_hidden_size": HIDDEN, "n_heads": 4, "double_branch": True,
           "use_clip": True, "decay_way": 1, "frame_weight": 1, "clip_weight": 0, "margin": 0.1,
           "root_path": "/authors/home/VisualSearch", "device": "cuda", "num_workers": 8, "eval_query_bsz": 50,
           "results_dir": "/authors/results"}
    (folder / "opt.json").write_text(json.dumps(opt))
    return state


def do_test(*args):
    env = {**os.environ, "PYTHON": sys.executable, "TQDM_DISABLE": "1"}
    return subprocess.run(["bash", str(REPO / "do_test.sh"), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO)


def direct_scores(state, root):
    """Scores of every test query against every test video, by one forward pass of this project's model."""
    model = DLDKD(ModelConfig.of(visual_input_size=DV, query_input_size=DQ, hidden_size=HIDDEN, n_heads=4))
    model.load_state_dict(released_to_own(state))
    model.eval()
    split = build_split(root, "tvr", "i3d_resnet", "test", False, 128, 30)
    videos = collate_videos([split.video_dataset()[i] for i in range(len(split.video_dataset()))])
    queries = collate_queries([split.query_dataset()[i] for i in range(len(split.query_dataset()))])
    with torch.no_grad():
        out = model.score(videos["video_feat"], videos["video_mask"], queries["query_feat"], queries["query_mask"])
    scores = {k: o["frame"].video_scores for k, o in out.items()}
    scores["fused"] = 0.3 * scores["exploration"] + 0.7 * scores["inheritance"]
    vid_index = {v: i for i, v in enumerate(videos["video_ids"])}
    return scores, torch.tensor([vid_index[c.split("#")[0]] for c in queries["cap_ids"]])


def test_authors_checkpoint_through_do_test(data, tmp_path):
    run_dir = tmp_path / "checkpoint_tvr"
    state = authors_run(run_dir)
    proc = do_test("tvr", "i3d_resnet", data, run_dir, "--device", "cpu", "--num_workers", "0", "--save_scores")
    assert proc.returncode == 0, proc.stderr
    assert "text-to-video" in proc.stdout and "video-to-text" in proc.stdout
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert result["split"] == "test" and result["checkpoint_epoch"] == 41 and result["released_checkpoint"]
    assert set(result["t2v"]) == set(result["v2t"]) == {"fused", "inheritance", "exploration"}
    scores, query_video = direct_scores(state, data)
    saved = np.load(run_dir / "scores_test.npy")
    np.testing.assert_allclose(saved, scores["fused"].numpy(), rtol=1e-5, atol=1e-6)
    ids = json.loads((run_dir / "scores_test_ids.json").read_text())
    assert len(ids["query_ids"]) == result["n_queries"] == saved.shape[0]
    for name in scores:
        expected_t2v = metrics.t2v_metrics(scores[name], query_video)
        expected_v2t = metrics.v2t_metrics(scores[name], query_video)
        for key in ("r1", "r5", "r10", "r100", "sumr", "medr", "map"):
            assert result["t2v"][name][key] == pytest.approx(expected_t2v[key]), (name, key)
            assert result["v2t"][name][key] == pytest.approx(expected_v2t[key]), (name, key)


def test_model_dir_is_looked_up_in_results(data, tmp_path):
    authors_run(Path(data) / "tvr" / "results" / "checkpoint_tvr")
    result = eval_cli.main(["--root_path", data, "--collection", "tvr", "--model_dir", "checkpoint_tvr",
                              "--device", "cpu", "--num_workers", "0", "--eval_split", "val"])
    assert result["split"] == "val"
    assert (Path(data) / "tvr" / "results" / "checkpoint_tvr" / "eval_val.json").is_file()


def test_chunk_size_does_not_change_results(data, tmp_path):
    authors_run(tmp_path / "run")
    common = ["--root_path", data, "--model_dir", str(tmp_path / "run"), "--device", "cpu", "--num_workers", "0"]
    a = eval_cli.main([*common, "--eval_query_bsz", "1", "--eval_video_bsz", "2"])
    b = eval_cli.main([*common, "--eval_query_bsz", "1000", "--eval_video_bsz", "1000"])
    assert a["t2v"] == b["t2v"] and a["v2t"] == b["v2t"]


@pytest.mark.slow
def test_missing_opt_json(data, tmp_path):
    authors_run(tmp_path / "run")
    (tmp_path / "run" / "opt.json").unlink()
    proc = do_test("tvr", "i3d_resnet", data, tmp_path / "run", "--device", "cpu")
    assert proc.returncode != 0 and "opt.json not found" in proc.stderr


@pytest.mark.slow
def test_feature_size_mismatch(data, tmp_path):
    authors_run(tmp_path / "run", visual=DV + 3)
    proc = do_test("tvr", "i3d_resnet", data, tmp_path / "run", "--device", "cpu", "--num_workers", "0")
    assert proc.returncode != 0
    assert f"expects {DV + 3}-d frames" in proc.stderr and f"{DV}-d frames" in proc.stderr and "model.ckpt" in proc.stderr


@pytest.mark.slow
def test_unknown_checkpoint_format(data, tmp_path):
    authors_run(tmp_path / "run")
    torch.save({"model": {"encoder.weight": torch.zeros(1)}}, tmp_path / "run" / "model.ckpt")
    proc = do_test("tvr", "i3d_resnet", data, tmp_path / "run", "--device", "cpu")
    assert proc.returncode != 0 and "neither this project's checkpoint" in proc.stderr


@pytest.mark.slow
def test_split_without_captions(data, tmp_path):
    root = tmp_path / "data"
    write_collection(str(root), n_videos=3)
    (root / "tvr" / "TextData" / "tvrval.caption.txt").write_text("")
    authors_run(tmp_path / "run")
    proc = do_test("tvr", "i3d_resnet", root, tmp_path / "run", "--device", "cpu", "--eval_split", "val")
    assert proc.returncode != 0 and "tvrval.caption.txt" in proc.stderr
