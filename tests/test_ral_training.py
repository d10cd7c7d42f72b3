"""``--recipe ral`` through ``train.main([...])`` on tiny generated data (CPU): named finite terms (MIL and VIB
among them), a bit-identical ``--resume`` (several processes: tests/test_distributed.py); the golden training
steps through the project's
training step (model forward, ``GlobalBatch``, ``DLDKDLoss``, BertAdam); an authors' RAL best.ckpt through
``method.eval``."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_collection
from test_train import assert_resume_is_exact, read_metrics, run

from method import eval as evaluate
from method.analysis.retrieval import all_ranks, encode_split, load_run, open_split
from method.config.flags import MACHINE_FLAGS, parse_train_args
from method.config.settings import train_settings
from method.data import build_split, collate_queries, collate_videos
from method.evaluation.metrics import summarize_t2v, t2v_metrics
from method.losses import ral as ral_losses
from method.losses.ral import LOSS_TERMS
from method.models.checkpoint import (
    CheckpointError,
    authors_gmm_options,
    checkpoint_format,
    load_model,
    read_checkpoint,
)
from method.models.model import DLDKD, ModelConfig
from method.models.students import ral
from method.models.students.ral import RALConfig, RALStudent, ral_config
from method.parallel.distributed import Dist
from method.training import loop
from method.training.schedules import epoch_settings

GOLDEN_PATH = Path(__file__).resolve().parent / "golden" / "ral_golden.npz"
RAL = ["--recipe", "ral", "--hard_negative_start_epoch", "1"]  # hard negatives in the second epoch


@pytest.mark.parametrize("collection", ["tvr", "activitynet", "charades"])
def test_recipe_resolves_to_the_authors_config(collection):
    """Every setting of the authors' config that is a flag resolves to its value (RUN_FLAGS maps the run's names,
    frame_nce_weight is --nce_weight); Charades-STA resolves to our proposal; the student's own settings too."""
    opt = vars(parse_train_args(["--root_path", "/r", "--collection", collection, "--recipe", "ral"]))
    cfg = ral_config(collection)
    flags = {name: name for name in cfg.__dataclass_fields__ if name in opt and name not in MACHINE_FLAGS}
    flags.update(ral.RUN_FLAGS)
    # all but the data's sizes (read from the data), the evaluation batches (no effect on RAL's numbers), the
    # authors' run name, and the second query pass (the negation of --reuse_query_encoding, below)
    assert set(cfg.__dataclass_fields__) - set(flags) == {
        "visual_input_size", "query_input_size", "eval_context_bsz", "eval_query_bsz", "model_name",
        "second_query_pass"}
    assert {name: getattr(cfg, name) for name in flags} == {name: opt[flag] for name, flag in flags.items()}
    assert opt["reuse_query_encoding"] is (not cfg.second_query_pass) is False
    assert (opt["student"], opt["single_branch"], opt["no_teacher"], opt["batch_sort"], opt["optim"]) == \
        ("ral", True, True, "frames", "bertadam")
    assert (opt["seed"], opt["n_samples"], opt["support_captions"], opt["mil_weight"], opt["vib_weight"]) == \
        (9527, 6, 26, 4e-3, 2.5e-4)
    expected = {"tvr": (3e-4, 150, 15, 0.5, 0.5), "activitynet": (2.5e-4, 100, 10, 0.6, 0.4),
                "charades": (2e-4, 100, 10, 0.6, 0.4)}[collection]
    assert (opt["lr"], opt["n_epoch"], opt["max_es_cnt"], opt["clip_scale_w"], opt["frame_scale_w"]) == expected


def test_charades_is_labelled_as_our_proposal():
    from method.config.recipes import RECIPES
    assert "OUR choice" in RECIPES["ral"].source and "proposal" in RECIPES["ral"].title
    with pytest.raises(ValueError, match="charades"):  # the authors' own table has no Charades-STA setting
        RALConfig.for_collection("charades")


def test_two_epochs_give_the_named_terms(data, tmp_path):
    run_dir = tmp_path / "run"
    result = run(data, run_dir, "--n_epoch", "2", *RAL)
    opt = json.loads((run_dir / "opt.json").read_text())
    assert (opt["student"], opt["clip_scale_w"], opt["frame_scale_w"], opt["mil_weight"]) == ("ral", 0.5, 0.5, 4e-3)
    rows = read_metrics(run_dir)
    assert [(int(r["epoch"]), int(r["hard_negative"])) for r in rows] == [(0, 0), (1, 1)]
    for row in rows:
        assert set(LOSS_TERMS) | {"loss"} <= set(row)
        assert all(math.isfinite(float(row[k])) for k in (*LOSS_TERMS, "loss"))
        assert float(row["loss"]) == pytest.approx(sum(float(row[k]) for k in LOSS_TERMS), rel=1e-5)
        assert float(row["mil"]) > 0 and float(row["vib"]) != 0 and float(row["frame_nce"]) > 0
    ckpt = torch.load(run_dir / "model.ckpt", weights_only=True)
    assert ckpt["model_config"]["student"] == "ral"
    stored = ckpt["model_config"]["student_config"]
    assert stored["support_captions"] == 26 and "n_samples" not in stored  # an objective setting (RALLosses)
    assert "inheritance.pie_net_text.fc.weight" in ckpt["model"]
    assert set(result["t2v"]) == {"fused", "clip", "frame"}
    # the stored run evaluates to the same numbers with python -m method.eval
    again = evaluate.main(["--model_dir", str(run_dir), "--device", "cpu", "--num_workers", "0"])
    assert again["t2v"] == result["t2v"]


def test_resume_gives_the_uninterrupted_result(data, tmp_path, monkeypatch):
    assert_resume_is_exact(data, tmp_path, monkeypatch, *RAL)


@pytest.mark.parametrize("recipe", ["iccv", "dldkdpp"])
def test_dldkd_on_ral_trains_both_branches_with_their_own_terms(data, tmp_path, recipe):
    """DL-DKD on the RAL student (--student ral): two RAL branches, each with its ranking terms on the clip and
    word-frame levels and its MIL and VIB, the teacher distilled into the inheritance branch over the clips (the
    word-frame score has no per-frame score of a query)."""
    run_dir = tmp_path / recipe
    result = run(data, run_dir, "--n_epoch", "2", "--recipe", recipe, "--student", "ral")
    opt = json.loads((run_dir / "opt.json").read_text())
    assert (opt["student"], opt["single_branch"], opt["no_teacher"]) == ("ral", False, False)
    rows = read_metrics(run_dir)
    names = {f"{t}_{b}" for t in LOSS_TERMS for b in ("inh", "exp")} | {"kd", "loss"}
    assert names <= set(rows[1])
    assert all(math.isfinite(float(rows[1][k])) for k in names)
    assert float(rows[1]["mil_inh"]) > 0 and float(rows[1]["kd"]) > 0
    assert {"fused", "inheritance", "exploration", "inheritance_frame"} <= set(result["t2v"])


# --------------------------------------------------------------------------- #
# the golden training steps through the project's training step
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def golden():
    if not GOLDEN_PATH.is_file():
        pytest.fail(f"RAL golden file missing: {GOLDEN_PATH}")
    return np.load(GOLDEN_PATH)


def close(actual, ref, tol=1e-5, name=""):
    """max |actual - ref| / max(1, |ref|) <= tol (the golden README's tolerance)."""
    a = actual.detach().double().numpy() if torch.is_tensor(actual) else np.asarray(actual, np.float64)
    ref = np.asarray(ref, np.float64)
    assert a.shape == ref.shape, name
    dev = float((np.abs(a - ref) / np.maximum(1.0, np.abs(ref))).max())
    assert dev <= tol, f"{name}: {dev:.3g} > {tol}"


def test_golden_steps_through_the_training_step(golden, monkeypatch):
    """``loop.train_step`` (what ``method.train --recipe ral`` runs) on the golden tiny model and batch, with the
    recipe's TVR objective (hard pool 1, as the golden) and BertAdam (lr 1e-2, t_total 100): the golden terms,
    total and gradients of the first step, the second step's total and gradients, and the parameters after both
    (within 1e-4, see ``test_ral.test_two_bertadam_steps``). The golden noise replaces the draws."""
    g = golden
    t = {k: torch.from_numpy(np.array(g[k])) for k in ("tiny_frame_video_features", "tiny_videos_mask",
                                                         "tiny_text_feat", "tiny_text_mask",
                                                         "tiny_clip_video_features", "tiny_text_labels")}
    opt = parse_train_args(["--root_path", "/r", "--collection", "tvr", "--recipe", "ral"])
    s = train_settings(opt)
    cfg = ModelConfig.of(visual_input_size=16, query_input_size=12, hidden_size=8, n_heads=2, student="ral",
                         single_branch=True, input_drop=0.0, drop=0.0, sft_factor=0.6)
    model = DLDKD(cfg)
    model.load_state_dict({"inheritance." + k[len("model/"):]: torch.from_numpy(np.array(g[k])).float()
                           for k in g.files if k.startswith("model/")})
    model.train()
    optimizer, scheduler = dataclasses.replace(s.optim, lr=1e-2).build(model, 100)
    r = loop.Run(model=model, forward=model, loader=None, optimizer=optimizer, scheduler=scheduler,
                 loss_fn=dataclasses.replace(s.loss, hard_pool_size=1).build(), teacher=None, dist=Dist(),
                 second_queries=True)
    noise = [torch.from_numpy(np.array(g[k])) for k in ("tiny_eps_text", "tiny_eps_video", "tiny_step2_eps_text",
                                                        "tiny_step2_eps_video")]
    real = ral_losses.sample_gaussian  # the objective draws the samples (text, then video)
    monkeypatch.setattr(ral_losses, "sample_gaussian", lambda mean, logsigma, n, generator=None, eps=None:
                        real(mean, logsigma, n, generator, noise.pop(0)))
    batch = {"video_feat": t["tiny_frame_video_features"].float(), "video_mask": t["tiny_videos_mask"].float(),
             "query_feat": t["tiny_text_feat"].float(), "query_mask": t["tiny_text_mask"].float(),
             "clip_feat": t["tiny_clip_video_features"].float(), "query_labels": t["tiny_text_labels"]}
    settings = epoch_settings(s.schedule, s.schedule.hard_negative_start_epoch)  # hard negatives, as the golden
    params = dict(model.inheritance.named_parameters())
    terms = loop.train_step(r, batch, settings)
    assert list(terms) == [*LOSS_TERMS, "loss"]
    reference = g["tiny_loss_components_unweighted"] * g["tiny_loss_weights"]
    for name, ref in zip(LOSS_TERMS, reference):
        assert terms[name].item() == pytest.approx(float(ref), rel=1e-5, abs=1e-7), name
    close(terms["loss"], g["tiny_loss_total"], name="total")
    for name, p in params.items():
        close(p.grad, g["tiny_grad/" + name], name=name)
    terms = loop.train_step(r, batch, settings)
    close(terms["loss"], g["tiny_step2_loss_total"], name="step 2 total")
    for name, p in params.items():
        close(p.grad, g["tiny_step2_grad/" + name], name=name)
    for name, p in params.items():
        close(p, g["tiny_after2/" + name], tol=1e-4, name=name)
    assert not noise


# --------------------------------------------------------------------------- #
# the authors' best.ckpt
# --------------------------------------------------------------------------- #
AUTHORS_CONFIG = {"dataset_name": "tvr", "visual_feature": "i3d_resnet", "visual_feat_dim": 16, "q_feat_size": 12,
                  "hidden_size": 8, "n_heads": 2, "max_ctx_l": 128, "max_desc_l": 30, "map_size": 32,
                  "input_drop": 0.2, "drop": 0.2, "sft_factor": 0.09, "clip_scale_w": 0.5, "frame_scale_w": 0.5,
                  "loss_factor": [0.05, 0.04, 8e-5, 0.09], "neg_factor": [0.15, 32, 1], "seed": 9527,
                  "model_name": "RAL_gmmv2_tvr"}


def write_authors_best(folder, config=None, drop_prefix=None):
    """A tiny best.ckpt in the RAL code's layout (``module.`` keys, its config keys); returns the student."""
    torch.manual_seed(3)
    student = RALStudent.from_config(RALConfig(visual_input_size=16, query_input_size=12, hidden_size=8,
                                               n_heads=2)).eval()
    state = {f"module.{k}": v for k, v in student.state_dict().items()
             if drop_prefix is None or not k.startswith(drop_prefix)}
    folder.mkdir(parents=True)
    torch.save({"config": config or AUTHORS_CONFIG, "epoch": 5, "model_val": [1.0, 2.0, 3.0, 4.0, 10.0],
                "state_dict": state, "optimizer": {}}, folder / "best.ckpt")
    return student


def test_authors_best_ckpt_evaluates_with_its_weights(tmp_path):
    """``python -m method.eval --model_dir FOLDER`` on a RAL best.ckpt: recognised before GMMFormerV2's
    ``weight_token`` rule, rebuilt, scored 0.5 S_c + 0.5 S_f (the word-frame score) as the authors' evaluator."""
    root = tmp_path / "data"
    write_collection(str(root), n_videos=7, dims=(16, 12, 4))
    run_dir = tmp_path / "authors_ral"
    student = write_authors_best(run_dir)
    ckpt = read_checkpoint(run_dir / "best.ckpt")
    assert checkpoint_format(ckpt) == "ral"
    evaluate.main(["--model_dir", str(run_dir), "--root_path", str(root), "--device", "cpu", "--num_workers", "0",
                   "--eval_video_bsz", "3", "--eval_query_bsz", "4", "--save_scores"])
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert result["checkpoint_format"] == "ral" and result["checkpoint_epoch"] == 5
    assert list(result["t2v"]) == ["fused", "clip", "frame"]
    split = build_split(str(root), "tvr", "i3d_resnet", "test", False, 128, 30)
    vids = collate_videos([split.video_dataset(32)[i] for i in range(len(split.captions.video_ids))])
    caps = collate_queries([split.query_dataset()[i] for i in range(len(split.captions))])
    with torch.no_grad():
        enc = student.encode_video(vids["video_feat"], vids["video_mask"], vids["clip_feat"])
        text, mask = caps["query_feat"], caps["query_mask"]
        ref = student.inference_scores(student.encode_query(text, mask), student.encode_tokens(text, mask), mask,
                                       enc["clip"], enc["frame"], vids["video_mask"])
    np.testing.assert_allclose(np.load(run_dir / "scores_test.npy"), ref["fused"].numpy(), rtol=1e-5, atol=1e-5)
    # the frame level alone is the word-frame score, not the pooled query's cosine
    labels = torch.tensor([vids["video_ids"].index(c.split("#")[0]) for c in caps["cap_ids"]])
    assert result["t2v"]["frame"]["sumr"] == pytest.approx(t2v_metrics(ref["frame"], labels)["sumr"])
    # the analysis commands rank with the same scores (the student's evaluation hooks)
    run = load_run(str(run_dir), root_path=str(root), device="cpu")
    ranks = all_ranks(run, encode_split(run, open_split(run, "test")))
    for name in ("fused", "clip", "frame"):
        assert summarize_t2v(ranks[name])["sumr"] == pytest.approx(result["t2v"][name]["sumr"]), name
    with pytest.raises(CheckpointError, match="does not store 'gauss_centred'"):  # without the recipe table
        load_model(run_dir / "best.ckpt")


def test_authors_options_resolve_the_collection_alias():
    state = {"module." + k: torch.zeros(1) for k in ral.RAL_MARKER_KEYS}
    options = authors_gmm_options({"state_dict": {**state, "module.weight_token": torch.zeros(1)},
                                   "config": {**AUTHORS_CONFIG, "dataset_name": "act", "clip_scale_w": 0.6,
                                              "frame_scale_w": 0.4}})
    assert (options["recipe"], options["student"], options["collection"]) == ("ral", "ral", "activitynet")
    assert (options["clip_scale_w"], options["frame_scale_w"]) == (0.6, 0.4)


def test_a_checkpoint_of_another_method_is_refused_naming_what_differs(tmp_path):
    """A GMMFormerV2 best.ckpt is not RAL's; a RAL-marked one without its video Gaussian heads is refused, naming
    the missing tensors."""
    v2 = {k: v for k, v in RALStudent(RALConfig(visual_input_size=16, query_input_size=12, hidden_size=8,
                                                n_heads=2)).state_dict().items()
          if not k.startswith(("pie_net", "uncertain_net", "text_weight_fc", "frame_branch_query"))}
    assert checkpoint_format({"state_dict": v2, "config": {}}) == "gmmformer_v2"
    write_authors_best(tmp_path / "partial", drop_prefix="uncertain_net_video")
    with pytest.raises(CheckpointError, match=r"missing \['inheritance.uncertain_net_video"):
        load_model(tmp_path / "partial" / "best.ckpt", fallback=lambda fmt: (ral_config("tvr").to_dict(), "test"))
