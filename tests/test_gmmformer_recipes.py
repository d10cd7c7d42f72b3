"""The GMMFormer recipes through the project's own training step, evaluator and checkpoint reader.

tests/test_gmmformer.py checks the networks and the pure losses against the
authors' numbers; here the same golden tiny models go through what a run
uses: ``method.training.loop``'s objective and ``train_step`` (loss, gradients, two
BertAdam steps), ``method.evaluation.evaluate.evaluate`` (the authors' evaluator groups) and
an authors' run folder (best.ckpt) through ``./do_test.sh``.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_collection
from torch.utils.data import DataLoader

from method.config.flags import parse_train_args
from method.config.settings import loss_settings
from method.data import collate_queries, collate_videos
from method.evaluation.evaluate import evaluate
from method.models.model import DLDKD, ModelConfig
from method.parallel.distributed import Dist
from method.training import loop
from method.training.optim import build_optimizer, param_groups

REPO = Path(__file__).resolve().parents[1]
VERSIONS = {"v1": "gmmformer", "v2": "gmmformer_v2"}


@pytest.fixture(scope="module")
def g(gmmformer_golden):
    """tests/golden/gmmformer_golden.npz (conftest.py; a missing file fails the test)."""
    return gmmformer_golden


def authors_state(g, version) -> dict:
    prefix = f"{version}_model/"
    return {k[len(prefix):]: torch.from_numpy(g[k]) for k in g.files if k.startswith(prefix)}


def tiny_model(g, version, **cfg) -> DLDKD:
    if version == "v2":
        cfg.setdefault("sft_factor", 0.09)
    model = DLDKD(ModelConfig.of(visual_input_size=16, query_input_size=12, hidden_size=8, n_heads=2,
                                 student=VERSIONS[version], single_branch=True, input_drop=0.0, drop=0.0, **cfg))
    model.load_state_dict({f"inheritance.{k}": v for k, v in authors_state(g, version).items()})
    return model


def tiny_batch(g) -> dict:
    """The golden training batch, already in the order of the authors' collate (frame counts descending)."""
    t = {k: torch.from_numpy(g[k]) for k in ("tiny_frame_video_features", "tiny_videos_mask", "tiny_text_feat",
                                             "tiny_text_mask", "tiny_clip_video_features", "tiny_text_labels")}
    return {"video_feat": t["tiny_frame_video_features"], "video_mask": t["tiny_videos_mask"],
            "query_feat": t["tiny_text_feat"], "query_mask": t["tiny_text_mask"],
            "query_labels": t["tiny_text_labels"].long(), "clip_feat": t["tiny_clip_video_features"]}


def recipe_run(g, version) -> loop.Run:
    """The run a ``--recipe gmmformer[_v2]`` TVR command builds, on the tiny model: its objective and optimiser.

    The authors' golden run: hard negatives from a pool of 1 (deterministic), margin 0.1, dropout 0, BertAdam
    at lr 1e-2 with t_total = 2 x 50 updates.
    """
    opt = parse_train_args(["--root_path", "/unused", "--collection", "tvr", "--recipe", VERSIONS[version],
                            "--hard_pool_size", "1", "--input_drop", "0", "--drop", "0"])
    model = tiny_model(g, version)
    optimizer, scheduler = build_optimizer(model, "bertadam", 1e-2, opt.wd, total_steps=100,
                                           warmup=opt.lr_warmup_proportion)
    loss_fn = loss_settings(opt).build()
    return loop.Run(model=model, forward=model, loader=None, optimizer=optimizer, scheduler=scheduler,
                     loss_fn=loss_fn, teacher=None, dist=Dist(), second_queries=loss_fn.objective.needs_second_queries)


@pytest.mark.parametrize("version", VERSIONS)
def test_recipe_objective_and_two_steps_match_the_authors(g, version):
    """Weighted terms, total, every gradient and the weights after two steps of ``train_step``."""
    run = recipe_run(g, version)
    names = [str(n) for n in g[f"{version}_tiny_loss_component_names"]]
    weights = g[f"{version}_tiny_loss_weights"]
    expected = {n: w * c for n, w, c in zip(names, weights, g[f"{version}_tiny_loss_components_unweighted"])}
    batch = tiny_batch(g)
    losses = []
    for step in range(2):  # the first update has learning-rate multiplier 0: both steps see the same gradient
        terms = loop.train_step(run, batch, {"hard_negative": True})
        losses.append(terms.pop("loss").item())
        if step == 0:
            assert list(terms) == names
            for name, value in terms.items():
                assert value.item() == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
            assert losses[0] == pytest.approx(float(g[f"{version}_tiny_loss_total"]), rel=1e-5)
            grads = {k[len("inheritance."):]: p.grad.clone() for k, p in run.model.named_parameters()}
            prefix = f"{version}_tiny_grad/"
            ref = {k[len(prefix):]: g[k] for k in g.files if k.startswith(prefix)}
            assert grads.keys() == ref.keys()
            for name, r in ref.items():
                scale = max(1.0, float(np.abs(r).max()))
                np.testing.assert_allclose(grads[name].numpy(), r, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    assert np.mean(losses) == pytest.approx(float(g[f"{version}_tiny_train_one_epoch_avg_loss"]), rel=1e-5)
    # BertAdam's step m / (sqrt(v) + 1e-6) is about sign(g) times a constant once |g| >> 2e-5 (here
    # |g| > 1e-3), but follows the float32 rounding of g for gradients near 0 (an attention key bias's
    # gradient is 0 in exact arithmetic: a constant added to a whole softmax row). The weights after the steps are compared where
    # the authors' gradient is clear of that, or exactly 0 in both codes (unused position rows: weight decay
    # only); tests/test_optim.py checks the update rule exactly on the authors' gradients.
    checked = total = 0
    for key in (k for k in g.files if k.startswith(f"{version}_tiny_after2/")):
        name = key.split("/", 1)[1]
        grad = g[f"{version}_tiny_grad/{name}"]
        unused = (grad == 0) & (grads[name].numpy() == 0)
        clear = (np.abs(grad) > 1e-3) | unused
        got = run.model.state_dict()[f"inheritance.{name}"].numpy()
        np.testing.assert_allclose(got[clear], g[key][clear], rtol=1e-5, atol=1e-6, err_msg=key)
        checked, total = checked + int(clear.sum()), total + clear.size
    assert checked > 0.6 * total, (checked, total)


@pytest.mark.parametrize("version", VERSIONS)
def test_weight_decay_groups_are_the_authors(g, version):
    """117 / 152 undecayed tensors: LayerNorms named norm1 / norm2 are decayed (quirk Q7), unless the fix flag."""
    model = tiny_model(g, version)
    names = {id(p): k[len("inheritance."):] for k, p in model.named_parameters()}
    decayed, undecayed = param_groups(model, 0.01)
    assert {names[id(p)] for p in undecayed["params"]} == {str(n) for n in g[f"{version}_tiny_no_decay_names"]}
    fixed = param_groups(model, 0.01, exclude_all_norms=True)[1]["params"]
    extra = {names[id(p)] for p in fixed} - {names[id(p)] for p in undecayed["params"]}
    assert (len(extra) > 0) == (version == "v2") and all(".norm" in n for n in extra)


def eval_loaders(g, group: int):
    """The golden evaluation videos in groups of ``group`` (each padded to its longest) and the 10 captions."""
    batch, lengths = tiny_batch(g), g["tiny_videos_mask"].sum(1).astype(int)
    videos = [{"video_id": f"v{i}", "video_feat": batch["video_feat"][i, :n].numpy(),
               "clip_feat": batch["clip_feat"][i].numpy()} for i, n in enumerate(lengths)]
    caption_counts = np.bincount(g["tiny_text_labels"])
    cap_ids = [f"v{v}#{k}" for v, n in enumerate(caption_counts) for k in range(n)]
    text_lengths = g["tiny_text_mask"].sum(1).astype(int)
    queries = [{"cap_id": c, "query_feat": batch["query_feat"][i, :n].numpy()}
               for i, (c, n) in enumerate(zip(cap_ids, text_lengths))]
    return (DataLoader(videos, batch_size=group, collate_fn=collate_videos),
            DataLoader(queries, batch_size=5, collate_fn=collate_queries))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("group", [4, 2])
def test_evaluator_scores_match_the_authors(g, version, group, tmp_path):
    """method.evaluation.evaluate with the authors' evaluation groups (--eval_context_bsz) gives their fused scores."""
    model = tiny_model(g, version, **({"eval_context_bsz": group} if version == "v1" else {})).eval()
    videos, queries = eval_loaders(g, model.eval_video_group() or group)
    weights = {"clip": 0.7, "frame": 0.3, "exploration": 0.3, "inheritance": 0.7}
    res = evaluate(model, videos, queries, torch.device("cpu"), weights, scores_path=tmp_path / "s.npy")
    scores = np.load(tmp_path / "s.npy")
    np.testing.assert_allclose(scores, g[f"{version}_tiny_eval_fused_ctxbatch{group}"], rtol=1e-5, atol=1e-5)
    assert list(res["t2v"]) == ["fused", "clip", "frame"]


# --------------------------------------------------------------------------- #
# an authors' run folder through ./do_test.sh
# --------------------------------------------------------------------------- #
SCHEDULE_MODULE = '''
from abc import ABC


class _LRSchedule(ABC):
    def __init__(self, warmup=0.002, t_total=-1, **kw):
        self.warmup, self.t_total, self.warned_for_t_total_at_progress = warmup, t_total, -1


class WarmupLinearSchedule(_LRSchedule):
    pass
'''


def write_authors_run(folder: Path, g, version: str, tmp_path: Path) -> None:
    """best.ckpt as the authors' code saves it (their optimiser state pickles their schedule class), plus their
    hyperparams.yaml and log.txt."""
    package = tmp_path / "authors_code" / "Opts"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "optimization.py").write_text(SCHEDULE_MODULE)
    sys.path.insert(0, str(package.parent))
    try:
        from Opts.optimization import WarmupLinearSchedule
        state = authors_state(g, version)
        config = {"model_name": "GMMFormer_Net" if version == "v1" else "GMMFormerV2_Net", "dataset_name": "tvr",
                  "visual_feature": "i3d_resnet", "q_feat_size": 12, "hidden_size": 8, "n_heads": 2,
                  "max_ctx_l": 128, "max_desc_l": 30, "map_size": 32, "input_drop": 0.2, "drop": 0.2,
                  "clip_scale_w": 0.7, "frame_scale_w": 0.3, "eval_context_bsz": 100, "eval_query_bsz": 50,
                  "loss_factor": [0.05, 0.04, 0.001], "neg_factor": [0.15, 32], "sft_factor": 0.09, "seed": 9527}
        optimizer = {"state": {0: {"next_m": torch.zeros(3), "next_v": torch.zeros(3)}},
                     "param_groups": [{"lr": 3e-4, "schedule": WarmupLinearSchedule(warmup=0.01, t_total=100),
                                       "b1": 0.9, "b2": 0.999, "e": 1e-6, "weight_decay": 0.01,
                                       "max_grad_norm": 1.0, "params": [0]}]}
        folder.mkdir(parents=True)
        torch.save({"config": config, "epoch": 7, "model_val": [1.0, 2.0, 3.0, 4.0, 10.0],
                    "state_dict": {f"module.{k}" if version == "v2" else k: v for k, v in state.items()},
                    "optimizer": optimizer}, folder / "best.ckpt")
    finally:
        sys.path.remove(str(package.parent))
        for name in [m for m in sys.modules if m == "Opts" or m.startswith("Opts.")]:
            del sys.modules[name]
    (folder / "hyperparams.yaml").write_text("dataset_name: tvr\nvisual_feature: i3d_resnet\n")
    (folder / "log.txt").write_text("epoch 7: val SumR 10.0\n")


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_authors_run_folder_evaluates_through_do_test(g, version, tmp_path):
    """No code from the file runs (a plain weights-only load refuses it); the scores are the model's."""
    root = tmp_path / "data"
    write_collection(str(root), n_videos=7, dims=(16, 12, 4))
    run_dir = root / "tvr" / "results" / f"authors_{version}"
    write_authors_run(run_dir, g, version, tmp_path)
    with pytest.raises(Exception, match="Opts.optimization.WarmupLinearSchedule"):
        torch.load(run_dir / "best.ckpt", weights_only=True)
    proc = subprocess.run(["bash", "do_test.sh", "tvr", "i3d_resnet", str(root), f"authors_{version}",
                           "--device", "cpu", "--num_workers", "0", "--save_scores"],
                          capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin",
                                                                         "PYTHON": sys.executable,
                                                                         "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert result["checkpoint_format"] == VERSIONS[version] and result["checkpoint_epoch"] == 7
    assert list(result["t2v"]) == ["fused", "clip", "frame"]
    # the saved scores equal the golden model scoring the same split in one batch of videos (<= 100: one group)
    from method.data import build_split
    split = build_split(str(root), "tvr", "i3d_resnet", "test", False, 128, 30)
    model = tiny_model(g, version).eval()
    vids = collate_videos([split.video_dataset(32)[i] for i in range(len(split.captions.video_ids))])
    caps = collate_queries([split.query_dataset()[i] for i in range(len(split.captions))])
    with torch.no_grad():
        levels = model.score(vids["video_feat"], vids["video_mask"], caps["query_feat"], caps["query_mask"],
                             vids["clip_feat"])["inheritance"]
    fused = 0.7 * levels["clip"].video_scores + 0.3 * levels["frame"].video_scores
    np.testing.assert_allclose(np.load(run_dir / "scores_test.npy"), fused.numpy(), rtol=1e-5, atol=1e-5)
