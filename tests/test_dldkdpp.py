"""DL-DKD++ (``--recipe dldkdpp``) against the authors' master code (dldkdpp_golden.npz), and through the scripts."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_bigfile, write_collection, write_h5

from method import train
from method.config.flags import parse_train_args
from method.data import build_split, collate_queries, collate_train, collate_videos
from method.losses import DLDKDLoss, SoftNCEOptions
from method.models.checkpoint import dldkdpp_to_own, load_model
from method.models.model import DLDKD, ModelConfig
from method.models.teacher import PrecomputedTeacher
from method.parallel.distributed import Dist
from method.parallel.global_batch import GlobalBatch, share_sizes
from method.training.schedules import alpha_schedule, beta_schedule, kd_factor

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = {"inher_trip": "trip_inh", "inher_nce": "nce_inh", "explore_trip": "trip_exp",
              "explore_nce": "nce_exp", "kl_intra": "kd"}


# --------------------------------------------------------------------------- #
# the authors' tiny model (master state-dict names)
# --------------------------------------------------------------------------- #
def master_state(g) -> dict:
    return {k[len("model/"):]: torch.from_numpy(g[k]) for k in g.files if k.startswith("model/")}


def tiny_model(g) -> DLDKD:
    """The golden model: the authors' generator ran it with dropout 0."""
    model = DLDKD(ModelConfig.of(visual_input_size=16, query_input_size=12, hidden_size=8, n_heads=2,
                              input_drop=0.0, drop=0.0, share_query_proj=False))
    model.load_state_dict(dldkdpp_to_own(master_state(g)))
    return model


def tiny_batch(g) -> dict:
    t = {k: torch.from_numpy(g[f"tiny_{k}"]) for k in ("student_videos", "student_videos_mask", "student_text",
                                                       "student_text_mask", "teacher_videos", "teacher_text",
                                                       "text_labels")}
    return {"video_feat": t["student_videos"], "video_mask": t["student_videos_mask"],
            "query_feat": t["student_text"], "query_mask": t["student_text_mask"], "query_labels": t["text_labels"],
            "teacher_video_feat": t["teacher_videos"], "teacher_query_feat": t["teacher_text"]}


def tiny_terms(model, batch, epoch, soft=True) -> dict:
    """The training loop's own forward and losses (one process), at TVR's margin 0.1 and a hard pool of 1."""
    model.train()
    view = GlobalBatch.build(Dist(), model(batch["video_feat"], batch["video_mask"], batch["query_feat"],
                                           batch["query_mask"]), batch, share_sizes(Dist(), batch, 32))
    loss_fn = DLDKDLoss(margin=0.1, hard_pool_size=1, soft=SoftNCEOptions() if soft else None)
    return loss_fn(view.branch_scores(), view.layout, view.teacher_scores(PrecomputedTeacher(), batch, soft),
                   kd_factor=kd_factor(epoch, "exp_decay", 0.1), hard_negative=True,
                   alpha=alpha_schedule(epoch), beta=beta_schedule(epoch))


def test_tiny_model_loss_terms_match_authors(dldkdpp_golden):
    g = dldkdpp_golden
    model, batch = tiny_model(g), tiny_batch(g)
    names = [str(n) for n in g["tiny_loss_component_names"]]
    for row, epoch in zip(g["tiny_loss_components"], g["tiny_epochs"]):
        terms = tiny_terms(model, batch, int(epoch))
        got = [terms[COMPONENTS[n]].item() for n in names[:-1]] + [sum(terms.values()).item()]
        np.testing.assert_allclose(got, row, rtol=1e-5, err_msg=f"epoch {epoch}")
    hard = tiny_terms(model, batch, 0, soft=False)  # label_style hard: the ICCV InfoNCE
    got = [hard[COMPONENTS[n]].item() for n in names[:-1]] + [sum(hard.values()).item()]
    np.testing.assert_allclose(got, g["tiny_hard_loss_components_epoch0"], rtol=1e-5)


def test_tiny_model_gradients_match_authors(dldkdpp_golden):
    """Every one of the 74 parameters' gradients of the full soft loss at epoch 45 (exploration targets undetached)."""
    g = dldkdpp_golden
    model = tiny_model(g)
    sum(tiny_terms(model, tiny_batch(g), int(g["tiny_grad_epoch"])).values()).backward()
    expected = dldkdpp_to_own({k[len("tiny_grad/"):]: torch.from_numpy(g[k])
                               for k in g.files if k.startswith("tiny_grad/")})
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert len(expected) == len(grads) == 74
    for name, ref in expected.items():
        scale = max(1.0, ref.abs().max().item())
        torch.testing.assert_close(grads[name], ref, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_tiny_model_scores_match_authors(dldkdpp_golden):
    g = dldkdpp_golden
    model, batch = tiny_model(g).eval(), tiny_batch(g)
    with torch.no_grad():
        scores = model.score(batch["video_feat"], batch["video_mask"], batch["query_feat"], batch["query_mask"])
        teacher = PrecomputedTeacher().video_scores_raw(batch["teacher_query_feat"], batch["teacher_video_feat"],
                                                        batch["video_mask"])
    close = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(teacher.numpy(), g["tiny_teacher_dot_max"], **close)
    for name, key in (("inheritance", "inher"), ("exploration", "explore")):
        np.testing.assert_allclose(scores[name]["frame"].video_scores_raw.numpy(), g[f"tiny_{key}_dot_max"], **close)
        np.testing.assert_allclose(scores[name]["frame"].video_scores.numpy(), g[f"tiny_{key}_cos_max"], **close)
        np.testing.assert_allclose(scores[name]["frame"].video_scores.numpy(), g[f"tiny_scores_{key}"], **close)
    fused = model.fuse({k: v["frame"].video_scores for k, v in scores.items()}, {"exploration": 0.3, "inheritance": 0.7})
    np.testing.assert_allclose(fused.numpy(), g["tiny_scores_fused"], **close)


# --------------------------------------------------------------------------- #
# data: the training-only pooling of the student to the teacher's frame count
# --------------------------------------------------------------------------- #
def golden_root(g, root: Path) -> None:
    """The authors' tiny on-disk root: BigFile student, CLIP video HDF5, CLIP text (1, 10) under <vid>#<n>."""
    vids = [str(v) for v in g["data_video_ids"]]
    counts = dict(zip(vids, g["data_caption_counts"].tolist()))
    base = root / "tvr"
    (base / "TextData").mkdir(parents=True)
    student = {v: g[f"data_{v}_student_raw"] for v in vids}
    write_bigfile(base / "FeatureData" / "i3d_resnet", {v: len(x) for v, x in student.items()},
                  np.random.default_rng(0), values=np.concatenate([student[v] for v in vids]))
    write_h5(base / "FeatureData" / "new_clip_vit_32_tvr_vid_features.hdf5",
             {v: g[f"data_{v}_teacher_raw"] for v in vids})
    batch_order = sorted(vids, key=lambda v: -counts[v])  # the collated batch: v1, v0, v3, v2
    batch_caps = [f"{v}#{j}" for v in batch_order for j in range(counts[v])]
    write_h5(base / "TextData" / "clip_ViT_B_32_tvr_query_feat.hdf5",
             {c: g["data_batch_teacher_text"][i][None] for i, c in enumerate(batch_caps)})
    rng = np.random.default_rng(1)
    lines = [f"{v}#enc#{j} caption {j} of {v}" for v in vids for j in range(counts[v])]
    write_h5(base / "TextData" / "roberta_tvr_query_feat.hdf5",
             {line.split()[0]: rng.standard_normal((5, 12)).astype(np.float32) for line in lines})
    for split in ("train", "val", "test"):
        (base / "TextData" / f"tvr{split}.caption.txt").write_text("\n".join(lines) + "\n")


def test_data_pooling_and_padding_match_authors(dldkdpp_golden, tmp_path):
    g = dldkdpp_golden
    golden_root(g, tmp_path)
    split = build_split(str(tmp_path), "tvr", "i3d_resnet", "train", use_teacher=True, max_ctx_l=128, max_desc_l=30,
                        pool_to_teacher=True)
    train_items = [split.train_dataset()[i] for i in range(4)]
    eval_items = [split.video_dataset()[i] for i in range(4)]
    for i, vid in enumerate(str(v) for v in g["data_video_ids"]):
        np.testing.assert_allclose(train_items[i]["video_feat"], g[f"data_{vid}_train_student"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(train_items[i]["teacher_video_feat"], g[f"data_{vid}_train_teacher"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(eval_items[i]["video_feat"], g[f"data_{vid}_eval_student"], rtol=1e-6, atol=1e-7)
    assert len(train_items[0]["video_feat"]) == 4 and len(eval_items[0]["video_feat"]) == 7  # v0: 7 frames, teacher 4
    batch = collate_train(train_items)
    assert batch["query_labels"].tolist() == g["data_batch_text_labels"].tolist()
    np.testing.assert_allclose(batch["video_feat"], g["data_batch_student_videos"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(batch["video_mask"], g["data_batch_student_videos_mask"])
    np.testing.assert_allclose(batch["teacher_video_feat"], g["data_batch_teacher_videos"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch["teacher_query_feat"], g["data_batch_teacher_text"])
    plain = build_split(str(tmp_path), "tvr", "i3d_resnet", "train", use_teacher=True, max_ctx_l=128, max_desc_l=30)
    assert len(plain.train_dataset()[0]["video_feat"]) == 7  # the ICCV recipe keeps the student's frames


# --------------------------------------------------------------------------- #
# the recipe: defaults, explicit flags, a run, its checkpoint, the authors' checkpoint
# --------------------------------------------------------------------------- #
def test_recipe_defaults_per_collection_and_explicit_flags_win():
    tvr = parse_train_args(["--root_path", "r", "--collection", "tvr", "--recipe", "dldkdpp"])
    assert (tvr.n_epoch, tvr.seed, tvr.lr, tvr.margin, tvr.input_drop, tvr.drop) == (120, 9527, 3e-4, 0.1, 0.2, 0.2)
    assert (tvr.label_style, tvr.separate_query_proj, tvr.pool_to_teacher, tvr.kd_schedule) == (
        "soft", True, True, "exp_decay")
    anet = parse_train_args(["--root_path", "r", "--collection", "activitynet", "--recipe", "dldkdpp"])
    assert (anet.lr, anet.margin, anet.drop, anet.visual_feature) == (2.5e-4, 0.2, 0.25, "i3d")
    cha = parse_train_args(["--root_path", "r", "--collection", "charades", "--recipe", "dldkdpp"])
    assert (cha.lr, cha.drop, cha.input_drop, cha.visual_feature) == (2.4e-4, 0.15, 0.15, "i3d_rgb_lgi")
    explicit = parse_train_args(["--root_path", "r", "--collection", "tvr", "--recipe", "dldkdpp", "--lr", "1e-4",
                                 "--label_style", "hard", "--belta", "0.6", "--n_epoch", "3", "--no-pool_to_teacher"])
    assert (explicit.lr, explicit.label_style, explicit.beta, explicit.n_epoch, explicit.seed) == (
        1e-4, "hard", 0.6, 3, 9527)
    assert not explicit.pool_to_teacher and explicit.separate_query_proj
    iccv = parse_train_args(["--root_path", "r", "--collection", "tvr"])
    assert (iccv.recipe, iccv.n_epoch, iccv.seed, iccv.lr, iccv.label_style, iccv.kd_schedule) == (
        "iccv", 100, 2018, 2.5e-4, "hard", "exp_decay")
    with pytest.raises(SystemExit):
        parse_train_args(["--root_path", "r", "--collection", "tvr", "--recipe", "dldkdpp", "--no_teacher"])


def do_script(script, *args, env=None):
    env = {**os.environ, "PYTHON": sys.executable, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(["bash", str(REPO / script), *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=REPO)


TINY = ["--device", "cpu", "--num_workers", "0", "--hidden_size", "8", "--n_heads", "2", "--bsz", "3",
        "--eval_query_bsz", "4", "--eval_video_bsz", "3"]


@pytest.mark.slow
def test_recipe_run_then_do_test(tmp_path):
    root = tmp_path / "data"
    write_collection(str(root), n_videos=9)
    run_dir = tmp_path / "run"
    result = train.main(["--root_path", str(root), "--collection", "tvr", "--recipe", "dldkdpp", "--n_epoch", "2",
                         "--results_dir", str(run_dir), *TINY])
    opt = json.loads((run_dir / "opt.json").read_text())
    assert (opt["recipe"], opt["label_style"], opt["lr"], opt["n_epoch"], opt["seed"]) == ("dldkdpp", "soft", 3e-4, 2,
                                                                                          9527)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # the schedules of a 2-epoch run (N = 2)
        e = int(row["epoch"])
        assert float(row["alpha"]) == alpha_schedule(e, n_epoch=2) and float(row["beta"]) == beta_schedule(e, n_epoch=2)
    model, info = load_model(run_dir / "model.ckpt")
    assert not model.cfg.share_query_proj and "exploration.query_input_proj.net.1.weight" in model.state_dict()
    proc = do_script("do_test.sh", "tvr", "i3d_resnet", root, run_dir, "--device", "cpu", "--num_workers", "0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run_dir / "eval_test.json").read_text())["t2v"] == result["t2v"]


@pytest.mark.slow
def test_authors_dldkdpp_checkpoint_through_do_test(dldkdpp_golden, tmp_path):
    """A results folder of the authors' master code: their state-dict names, EasyDict config and opt.json."""
    easydict = pytest.importorskip("easydict")
    g = dldkdpp_golden
    root = tmp_path / "data"
    write_collection(str(root), n_videos=6, dims=(16, 12, 10))
    run_dir = tmp_path / "results" / "tvr" / "tvr-debug-2025_01_01"
    run_dir.mkdir(parents=True)
    cfg = easydict.EasyDict(visual_input_size=16, query_input_size=12, inheritance_hidden=8, exploration_hidden=8,
                            max_ctx_l=128, max_desc_l=30, input_drop=0.2, drop=0.2, n_heads=2, margin=0.1,
                            label_style="soft", device=torch.device("cpu"), hard_pool_size=20)
    state = {f"module.{k}": v for k, v in master_state(g).items()}  # as saved from a DataParallel run
    torch.save({"model": state, "model_cfg": cfg, "epoch": 63}, run_dir / "model.ckpt")
    (run_dir / "opt.json").write_text(json.dumps({
        "collection": "tvr", "visual_feature": "i3d_resnet", "q_feat_size": 12, "n_heads": 2, "label_style": "soft",
        "alpha": 0.8, "belta": 0.8, "distill_loss_decay": "exp", "kl_intra_weight": 0.1, "exp_id": "debug",
        "root_path": "/authors/VisualSearch", "results_dir": "results/tvr/tvr-debug-2025_01_01", "device_ids": [0]}))
    proc = do_script("do_test.sh", "tvr", "i3d_resnet", root, run_dir, "--device", "cpu", "--num_workers", "0",
                     "--save_scores")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert (result["checkpoint_format"], result["checkpoint_epoch"]) == ("dldkdpp", 63)
    model = tiny_model(g).eval()  # the golden-verified model, scored directly
    split = build_split(str(root), "tvr", "i3d_resnet", "test", False, 128, 30)
    videos = collate_videos([split.video_dataset()[i] for i in range(len(split.video_dataset()))])
    queries = collate_queries([split.query_dataset()[i] for i in range(len(split.query_dataset()))])
    with torch.no_grad():
        scores = model.score(videos["video_feat"], videos["video_mask"], queries["query_feat"], queries["query_mask"])
    fused = 0.3 * scores["exploration"]["frame"].video_scores + 0.7 * scores["inheritance"]["frame"].video_scores
    np.testing.assert_allclose(np.load(run_dir / "scores_test.npy"), fused.numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- #
# Charades-STA
# --------------------------------------------------------------------------- #
def charades_root(tmp_path) -> Path:
    root = tmp_path / "data"
    write_collection(str(root), collection="charades", visual_feature="i3d_rgb_lgi", n_videos=8, enc_ids=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["dldkdpp", "iccv"])
def test_charades_script(tmp_path, recipe):
    root = charades_root(tmp_path)
    run_dir = tmp_path / "run"
    proc = do_script("do_charades.sh", root, "--q_feat_size", "5", "--n_epoch", "1", "--results_dir", run_dir, *TINY,
                     env={"RECIPE": recipe})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    opt = json.loads((run_dir / "opt.json").read_text())
    assert (opt["recipe"], opt["collection"], opt["visual_feature"]) == (recipe, "charades", "i3d_rgb_lgi")
    assert (opt["lr"], opt["drop"], opt["label_style"]) == ((2.4e-4, 0.15, "soft") if recipe == "dldkdpp"
                                                            else (2.5e-4, 0.1, "hard"))
    assert json.loads((run_dir / "eval_test.json").read_text())["n_queries"] > 0


@pytest.mark.slow
def test_charades_without_val_captions_names_the_file(tmp_path):
    root = charades_root(tmp_path)
    (root / "charades" / "TextData" / "charadesval.caption.txt").unlink()
    proc = do_script("do_charades.sh", root, "--q_feat_size", "5", "--results_dir", tmp_path / "run", *TINY,
                     env={"RECIPE": "dldkdpp"})
    assert proc.returncode != 0
    assert "charadesval.caption.txt" in proc.stderr and "missing file" in proc.stderr
