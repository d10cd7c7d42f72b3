"""Command-line flags of training and evaluation, dataset defaults, and ``opt.json``.

Defaults reproduce the ICCV recipe of the released code (``../shared/spec/METHOD.md``);
flag names follow the released code where it has one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# Per-collection defaults of the released feature packages.
COLLECTIONS = {
    "tvr": {"visual_feature": "i3d_resnet"},
    "activitynet": {"visual_feature": "i3d"},
    "charades": {"visual_feature": "i3d_rgb_lgi"},
}
# Flags that describe the machine, not the experiment: on --resume they come
# from the command line, everything else from the run's opt.json.
RUNTIME_KEYS = ("device", "num_workers", "resume", "debug", "preload")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--root_path", help="folder holding <collection>/TextData and <collection>/FeatureData")
    g.add_argument("--collection", help="dataset name: tvr, activitynet, charades, or any folder name")
    g.add_argument("--visual_feature", default=None,
                   help="student frame features, FeatureData/<name>/ (BigFile) or <name>.hdf5 "
                        "(default: i3d_resnet for tvr, i3d for activitynet, i3d_rgb_lgi for charades)")
    g.add_argument("--q_feat_size", type=int, default=None,
                   help="text feature size (768 for TVR's RoBERTa, 1024 otherwise); when given it is checked "
                        "against the data, when absent it is read from the data")
    g.add_argument("--max_ctx_l", type=int, default=128, help="max frames; longer videos are mean-pooled to it")
    g.add_argument("--max_desc_l", type=int, default=30, help="max tokens of a caption; longer ones are truncated")
    g.add_argument("--teacher_video_file", default=None,
                   help="teacher frame features in FeatureData/ (default new_clip_vit_32_<collection>_vid_features.hdf5)")
    g.add_argument("--teacher_query_file", default=None,
                   help="teacher caption features in TextData/ (default clip_ViT_B_32_<collection>_query_feat.hdf5)")
    g.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes (0 = in the main process)")
    g.add_argument("--preload", action="store_true",
                   help="hold the split's (pooled) features in RAM instead of reading the feature files each epoch")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--eval_video_bsz", type=int, default=200, help="videos per batch when encoding for evaluation")
    g.add_argument("--eval_query_bsz", type=int, default=500,
                   help="queries per chunk when scoring (bounds evaluation memory: chunk x n_videos)")
    g.add_argument("--exploration_weight", type=float, default=0.3, help="weight of the exploration branch in the fused score")
    g.add_argument("--inheritance_weight", type=float, default=0.7, help="weight of the inheritance branch in the fused score")


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m method.train",
        description="Train DL-DKD (dual learning with dynamic knowledge distillation) for PRVR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--exp_id", default="run", help="name of the experiment, part of the run folder name")
    g.add_argument("--results_dir", default=None,
                   help="run folder (default <root_path>/<collection>/results/<collection>-<exp_id>-<timestamp>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a stopped run from RUN_DIR/latest.ckpt with the settings of RUN_DIR/opt.json")
    g.add_argument("--seed", type=int, default=2018, help="seed of Python, NumPy, torch and the DataLoader")
    g.add_argument("--debug", action="store_true", help="enable torch.autograd.detect_anomaly (slow)")
    g = p.add_argument_group("model")
    g.add_argument("--hidden_size", type=int, default=384, help="hidden size d of both branches")
    g.add_argument("--n_heads", type=int, default=4, help="attention heads")
    g.add_argument("--input_drop", type=float, default=0.1, help="dropout on the inputs and positional encodings")
    g.add_argument("--drop", type=float, default=0.1, help="dropout in the attention block")
    g.add_argument("--separate_query_proj", action="store_true",
                   help="give the exploration branch its own query input projection "
                        "(the released model shares the inheritance branch's)")
    g.add_argument("--single_branch", action="store_true", help="ablation: inheritance branch only")
    g = p.add_argument_group("losses")
    g.add_argument("--margin", type=float, default=0.2, help="triplet margin (the TVR script uses 0.1)")
    g.add_argument("--hard_pool_size", type=int, default=20, help="hard negatives are drawn from this many top videos")
    g.add_argument("--hard_negative_start_epoch", type=int, default=0,
                   help="first epoch (0-based) of hard-negative sampling; before it negatives are uniform")
    g.add_argument("--nce_weight", type=float, default=0.04, help="weight of the InfoNCE term of each branch")
    g.add_argument("--no_teacher", action="store_true", help="ablation: no distillation term (teacher files not read)")
    g.add_argument("--kd_schedule", default="fixed",
                   help="distillation weight schedule: none, fixed, exp_decay, linear_decay, sigmoid_decay, "
                        "exp_rise, linear_rise, sigmoid_rise, capped_exp_growth, capped_saturating, "
                        "or the released decay_way number 0-8")
    g.add_argument("--loss_scale_weight", type=float, default=0.1, help="scale of the schedule w(e) on the KL term")
    g.add_argument("--loss_init_weight", type=float, default=0.1, help="initial weight of the rising schedules")
    g.add_argument("--kd_k", type=float, default=None,
                   help="k of the schedule (default: exp 0.95, linear -0.01, sigmoid 800)")
    g.add_argument("--kd_b", type=float, default=None, help="intercept b of the linear schedules (default 1)")
    g.add_argument("--kd_temperature", type=float, default=0.2, help="softmax temperature of the KL term")
    g = p.add_argument_group("optimisation")
    g.add_argument("--n_epoch", type=int, default=100, help="maximum number of epochs")
    g.add_argument("--max_es_cnt", type=int, default=10,
                   help="stop when this many epochs in a row bring no val improvement, plus one")
    g.add_argument("--bsz", type=int, default=128, help="videos per training batch (with all their captions)")
    g.add_argument("--lr", type=float, default=2.5e-4, help="peak learning rate")
    g.add_argument("--wd", type=float, default=0.01, help="decoupled weight decay")
    g.add_argument("--lr_warmup_proportion", type=float, default=0.01,
                   help="fraction of all updates spent in linear warm-up")
    g.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16: run the model's forward pass under bfloat16 autocast (losses stay float32); "
                        "a speed option for GPUs, off in the ICCV recipe")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (speed option, off by default)")
    g.add_argument("--optim", choices=("bertadam", "adamw"), default="bertadam",
                   help="bertadam: the released rule (no bias correction, per-tensor clipping); adamw: torch AdamW")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device


def fill_collection_defaults(opt: argparse.Namespace) -> argparse.Namespace:
    """Resolve the per-collection default of --visual_feature."""
    if opt.visual_feature is None:
        if opt.collection not in COLLECTIONS:
            raise SystemExit(f"--visual_feature is required for collection {opt.collection!r}")
        opt.visual_feature = COLLECTIONS[opt.collection]["visual_feature"]
    return opt


def parse_train_args(argv=None) -> argparse.Namespace:
    parser = build_train_parser()
    opt = parser.parse_args(argv)
    if opt.resume:
        stored = load_opt(Path(opt.resume))
        runtime = {k: getattr(opt, k) for k in RUNTIME_KEYS}
        opt = argparse.Namespace(**{**vars(parser.parse_args([])), **stored, **runtime})
    elif not opt.root_path or not opt.collection:
        parser.error("--root_path and --collection are required (or --resume RUN_DIR)")
    return fill_collection_defaults(opt)


def save_opt(opt: argparse.Namespace, run_dir: Path) -> None:
    with open(run_dir / "opt.json", "w") as f:
        json.dump(vars(opt), f, indent=2, sort_keys=True)


def load_opt(run_dir: Path) -> dict:
    path = Path(run_dir) / "opt.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: a run folder holds the opt.json written by training")
    with open(path) as f:
        return json.load(f)
