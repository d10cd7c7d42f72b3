"""``--recipe holmes`` and ``--recipe holmes_dual`` through ``train.main([...])`` on tiny generated data (CPU):
named finite terms by phase, a bit-identical ``--resume`` (several processes: tests/test_distributed.py); the
authors' Holmes and dual-query best.ckpt through ``method.eval``."""
import json
import math

import numpy as np
import pytest
import torch
from synthetic import write_collection
from test_train import assert_resume_is_exact, read_metrics, run

from method import eval as evaluate
from method.config.flags import MACHINE_FLAGS, parse_train_args
from method.data import build_split, collate_queries, collate_videos
from method.losses.evidential import TERM_NAMES
from method.models.checkpoint import (
    CheckpointError,
    checkpoint_format,
    load_model,
    read_checkpoint,
)
from method.models.students.holmes import HolmesStudent, eval_scores, holmes_config
from method.models.students.holmes_dual import HolmesDualStudent, holmes_dual_config

# warm-up over after epoch 0, hard negatives from epoch 1: both phases in two epochs
HOLMES = ["--recipe", "holmes", "--warmup_epoch", "1", "--hard_negative_start_epoch", "1"]


@pytest.mark.parametrize("collection", ["tvr", "activitynet", "charades"])
def test_recipe_resolves_to_the_authors_config(collection):
    """Every setting of the authors' config that is a flag here resolves to its value (frame_nce_weight is
    --nce_weight), with the recipe's own: one network, no teacher, batches by frames."""
    opt = vars(parse_train_args(["--root_path", "/r", "--collection", collection, "--recipe", "holmes"]))
    cfg = holmes_config(collection)
    flags = {name: name for name in cfg.__dataclass_fields__ if name in opt and name not in MACHINE_FLAGS}
    flags["frame_nce_weight"] = "nce_weight"
    # all but the data's sizes, initializer_range (the model's init, 0.02), dc_weight (dual), the evaluation batches
    assert len(flags) == 43
    assert {name: getattr(cfg, name) for name in flags} == {name: opt[flag] for name, flag in flags.items()}
    assert (opt["student"], opt["single_branch"], opt["no_teacher"], opt["batch_sort"], opt["optim"]) == \
        ("holmes", True, True, "frames", "bertadam")
    assert (opt["seed"], opt["warmup_epoch"], opt["hard_negative_start_epoch"]) == (0, 20, 20)


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


@pytest.mark.parametrize("recipe", ["iccv", "dldkdpp"])
def test_dldkd_on_holmes_trains_both_branches_with_their_evidential_terms(data, tmp_path, recipe):
    """DL-DKD on the Holmes student (--student holmes): two Holmes branches, each with its own losses (the
    evidential terms after the warm-up), the teacher distilled into the inheritance branch."""
    run_dir = tmp_path / recipe
    result = run(data, run_dir, "--n_epoch", "2", "--recipe", recipe, "--student", "holmes", "--warmup_epoch", "1")
    opt = json.loads((run_dir / "opt.json").read_text())
    assert (opt["student"], opt["single_branch"], opt["no_teacher"]) == ("holmes", False, False)
    rows = read_metrics(run_dir)
    names = {f"{t}_{b}" for t in TERM_NAMES for b in ("inh", "exp")} | {"kd", "loss"}
    assert names <= set(rows[1])
    assert all(math.isfinite(float(rows[1][k])) for k in names)
    assert float(rows[0]["intra_edl_inh"]) == 0 and float(rows[1]["intra_edl_inh"]) > 0
    assert float(rows[1]["kd"]) > 0
    assert {"fused", "inheritance", "exploration"} <= set(result["t2v"])


@pytest.mark.slow
def test_reuse_query_encoding_trains(data, tmp_path):
    """--reuse_query_encoding (fix Q5): the query-diversity term and the partial OT read the first encoding (the
    model encodes the queries once)."""
    run_dir = tmp_path / "reuse"
    run(data, run_dir, "--n_epoch", "1", "--bsz", "9", *HOLMES, "--warmup_epoch", "0", "--reuse_query_encoding")
    (row,) = read_metrics(run_dir)
    assert int(row["warmup_end"]) == 1 and float(row["intra_edl"]) > 0
    assert all(math.isfinite(float(row[k])) for k in (*TERM_NAMES, "loss"))


def test_resume_gives_the_uninterrupted_result(data, tmp_path, monkeypatch):
    assert_resume_is_exact(data, tmp_path, monkeypatch, *HOLMES)


def write_authors_best(folder, collection_alias="tvr"):
    """A tiny best.ckpt in the Holmes code's layout (``module.`` keys, its config keys); returns the student."""
    torch.manual_seed(3)
    cfg = holmes_config("tvr", visual_input_size=16, query_input_size=12, hidden_size=8, n_heads=2)
    student = HolmesStudent.from_config(cfg).eval()
    config = {"dataset_name": collection_alias, "visual_feature": "i3d_resnet", "visual_feat_dim": 16,
              "q_feat_size": 12, "hidden_size": 8, "n_heads": 2, "max_ctx_l": 128, "max_desc_l": 30, "map_size": 32,
              "input_drop": 0.2, "drop": 0.2, "sft_factor": 0.09, "clip_scale_w": 0.6, "frame_scale_w": 0.4,
              "loss_factor": [0.05, 0.04, 8e-5, 0.8, 0.2, 0], "neg_factor": [0.15, 32, 1], "seed": 0}
    folder.mkdir(parents=True)
    torch.save({"config": config, "epoch": 5, "model_val": [1.0, 2.0, 3.0, 4.0, 10.0, None],
                "state_dict": {f"module.{k}": v for k, v in student.state_dict().items()}, "optimizer": {}},
               folder / "best.ckpt")
    return student


def test_authors_best_ckpt_evaluates_with_its_weights(tmp_path):
    """``python -m method.eval --model_dir FOLDER`` on a Holmes best.ckpt: recognised before GMMFormerV2's
    ``weight_token`` rule, rebuilt, scored 0.6 S_c + 0.4 S_f as the authors' evaluator scores it."""
    root = tmp_path / "data"
    write_collection(str(root), n_videos=7, dims=(16, 12, 4))
    run_dir = tmp_path / "authors_holmes"
    student = write_authors_best(run_dir)
    ckpt = read_checkpoint(run_dir / "best.ckpt")
    assert checkpoint_format(ckpt) == "holmes"
    evaluate.main(["--model_dir", str(run_dir), "--root_path", str(root), "--device", "cpu", "--num_workers", "0",
                   "--save_scores"])
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert result["checkpoint_format"] == "holmes" and result["checkpoint_epoch"] == 5
    assert list(result["t2v"]) == ["fused", "clip", "frame"]
    split = build_split(str(root), "tvr", "i3d_resnet", "test", False, 128, 30)
    vids = collate_videos([split.video_dataset(32)[i] for i in range(len(split.captions.video_ids))])
    caps = collate_queries([split.query_dataset()[i] for i in range(len(split.captions))])
    fused = eval_scores(student, [(caps["query_feat"], caps["query_mask"])],
                        [(vids["video_feat"], vids["video_mask"], vids["clip_feat"])], weights=(0.6, 0.4))
    np.testing.assert_allclose(np.load(run_dir / "scores_test.npy"), fused.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="does not store 'gauss_centred'"):  # without the recipe table
        load_model(run_dir / "best.ckpt")


# --------------------------------------------------------------------------- #
# the dual-query variant (holmes_dual, TVR only)
# --------------------------------------------------------------------------- #
DUAL = ["--recipe", "holmes_dual", "--warmup_epoch", "1", "--hard_negative_start_epoch", "1"]


def test_dual_recipe_resolves_to_the_authors_config():
    """multisrc/Configs/tvr.py: every setting that is a flag (150 epochs, inference 0.5 / 0.5, its EDL factors,
    dc_weight 0, the H15 fix off)."""
    opt = vars(parse_train_args(["--root_path", "/r", "--collection", "tvr", "--recipe", "holmes_dual"]))
    cfg = holmes_dual_config("tvr")
    flags = {name: name for name in cfg.__dataclass_fields__ if name in opt and name not in MACHINE_FLAGS}
    flags["frame_nce_weight"] = "nce_weight"
    assert set(cfg.__dataclass_fields__) - set(flags) == {"visual_input_size", "query_input_size",
                                                           "initializer_range", "eval_context_bsz", "eval_query_bsz"}
    assert {name: getattr(cfg, name) for name in flags} == {name: opt[flag] for name, flag in flags.items()}
    assert (opt["student"], opt["n_epoch"], opt["clip_scale_w"], opt["frame_scale_w"], opt["dc_weight"],
            opt["shared_token_weights"]) == ("holmes_dual", 150, 0.5, 0.5, 0.0, False)


def test_dual_two_epochs_give_the_named_terms_and_resume_exactly(data, tmp_path, monkeypatch):
    run_dir = tmp_path / "dual"
    result = run(data, run_dir, "--n_epoch", "2", *DUAL)
    rows = read_metrics(run_dir)
    names = (*TERM_NAMES, "dc")
    assert [(int(r["epoch"]), int(r["warmup_end"])) for r in rows] == [(0, 0), (1, 1)]
    for row in rows:
        assert all(math.isfinite(float(row[k])) for k in (*names, "loss"))
        assert float(row["loss"]) == pytest.approx(sum(float(row[k]) for k in names), rel=1e-5)
        assert float(row["dc"]) == 0  # dc_weight 0, as released
    assert float(rows[1]["intra_edl"]) > 0
    assert torch.load(run_dir / "model.ckpt", weights_only=True)["model_config"]["student"] == "holmes_dual"
    assert set(result["t2v"]) == {"fused", "clip", "frame"}
    assert_resume_is_exact(data, tmp_path / "resume", monkeypatch, *DUAL)


def test_dual_mask_padded_frames_is_refused(data, tmp_path):
    with pytest.raises(SystemExit, match="mask_padded_frames is not available for holmes_dual"):
        run(data, tmp_path / "masked", "--n_epoch", "1", *DUAL, "--mask_padded_frames")


def test_dual_query_best_ckpt_evaluates_with_its_weights(tmp_path):
    """A dual-query best.ckpt (recognised by ``text_weight_fc``) through ``python -m method.eval``: the token-wise
    frame score through the student's evaluation hooks, 0.5 S_c + 0.5 S_f, equal to the authors' evaluator."""
    root = tmp_path / "data"
    write_collection(str(root), n_videos=7, dims=(16, 12, 4))
    run_dir = tmp_path / "authors_dual"
    torch.manual_seed(4)
    student = HolmesDualStudent.from_config(holmes_dual_config("tvr", visual_input_size=16, query_input_size=12,
                                                               hidden_size=8, n_heads=2)).eval()
    config = {"dataset_name": "tvr", "visual_feature": "i3d_resnet", "visual_feat_dim": 16, "q_feat_size": 12,
              "hidden_size": 8, "n_heads": 2, "max_ctx_l": 128, "max_desc_l": 30, "map_size": 32, "input_drop": 0.2,
              "drop": 0.2, "sft_factor": 0.09, "clip_scale_w": 0.5, "frame_scale_w": 0.5,
              "loss_factor": [0.05, 0.04, 8e-5, 0.1, 0.01, 0], "neg_factor": [0.15, 32, 1], "seed": 0}
    run_dir.mkdir()
    torch.save({"config": config, "epoch": 7, "model_val": [1.0, 2.0, 3.0, 4.0, 10.0, None],
                "state_dict": {f"module.{k}": v for k, v in student.state_dict().items()}, "optimizer": {}},
               run_dir / "best.ckpt")
    assert checkpoint_format(read_checkpoint(run_dir / "best.ckpt")) == "holmes_dual"
    evaluate.main(["--model_dir", str(run_dir), "--root_path", str(root), "--device", "cpu", "--num_workers", "0",
                   "--eval_video_bsz", "3", "--eval_query_bsz", "4", "--save_scores"])
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert result["checkpoint_format"] == "holmes_dual" and list(result["t2v"]) == ["fused", "clip", "frame"]
    split = build_split(str(root), "tvr", "i3d_resnet", "test", False, 128, 30)
    vids = collate_videos([split.video_dataset(32)[i] for i in range(len(split.captions.video_ids))])
    caps = collate_queries([split.query_dataset()[i] for i in range(len(split.captions))])
    fused = eval_scores(student, [(caps["query_feat"], caps["query_mask"])],
                        [(vids["video_feat"], vids["video_mask"], vids["clip_feat"])], weights=(0.5, 0.5))
    np.testing.assert_allclose(np.load(run_dir / "scores_test.npy"), fused.numpy(), rtol=1e-5, atol=1e-5)
