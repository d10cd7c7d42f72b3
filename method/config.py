"""Command-line flags of training and evaluation, dataset defaults, and ``opt.json``.

Defaults reproduce the ICCV recipe of the released code (``../shared/spec/METHOD.md``);
flag names follow the released code where it has one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .recipes import RECIPES, recipe_defaults
from .schedules import SOFT_SCHEDULES

# Per-collection defaults of the released feature packages.
COLLECTIONS = {
    "tvr": {"visual_feature": "i3d_resnet"},
    "activitynet": {"visual_feature": "i3d"},
    "charades": {"visual_feature": "i3d_rgb_lgi"},
}
# Flags that describe the machine, not the experiment: on --resume they come
# from the command line, everything else from the run's opt.json.
RUNTIME_KEYS = ("device", "num_workers", "resume", "resume_if_exists", "debug", "preload", "dist_timeout")


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
                   help="hold the split's (pooled) features in RAM instead of reading the feature files each epoch "
                        "(each process of a distributed run holds the whole split)")
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
    p.add_argument_group("training data").add_argument(
        "--pool_to_teacher", action=argparse.BooleanOptionalAction, default=False,
        help="DL-DKD++ training items: a student video longer than its teacher video is first mean-pooled to the "
             "teacher's frame count (evaluation videos are not), as the authors' DL-DKD++ code does")
    g = p.add_argument_group("run")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="iccv",
                   help="flag defaults of a recipe: iccv (ICCV 2023) or dldkdpp (DL-DKD++, soft alignment, with its "
                        "per-collection settings); flags given explicitly still win")
    g.add_argument("--exp_id", default="run", help="name of the experiment, part of the run folder name")
    g.add_argument("--results_dir", default=None,
                   help="run folder (default <root_path>/<collection>/results/<collection>-<exp_id>-<timestamp>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a stopped run from RUN_DIR/latest.ckpt with the settings of RUN_DIR/opt.json")
    g.add_argument("--resume_if_exists", action="store_true",
                   help="with --results_dir DIR: continue the run in DIR from its latest.ckpt when there is one, "
                        "else start it there (for torchrun --max-restarts and requeued cluster jobs)")
    g.add_argument("--seed", type=int, default=2018, help="seed of Python, NumPy, torch and the DataLoader")
    g.add_argument("--debug", action="store_true", help="enable torch.autograd.detect_anomaly (slow)")
    g.add_argument("--tf32", action="store_true",
                   help="CUDA: let float32 matmuls and cuDNN round their inputs to TF32 (faster on Ampere and newer, "
                        "changes the numbers); without it they are exact float32. No effect on the CPU")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, "
                        "CUBLAS_WORKSPACE_CONFIG=:4096:8): needed for a bit-exact --resume on CUDA; slower on CUDA, "
                        "the same numbers on the CPU (docs/performance.md)")
    g.add_argument("--dist_timeout", type=float, default=60.0,
                   help="several processes: minutes a process waits for the others in a collective before the run "
                        "fails (rank 0 evaluates while the others wait)")
    g = p.add_argument_group("model")
    g.add_argument("--hidden_size", type=int, default=384, help="hidden size d of both branches")
    g.add_argument("--n_heads", type=int, default=4, help="attention heads")
    g.add_argument("--input_drop", type=float, default=0.1, help="dropout on the inputs and positional encodings")
    g.add_argument("--drop", type=float, default=0.1, help="dropout in the attention block")
    g.add_argument("--separate_query_proj", action=argparse.BooleanOptionalAction, default=False,
                   help="give the exploration branch its own query input projection "
                        "(the released model shares the inheritance branch's)")
    g.add_argument("--single_branch", action="store_true", help="ablation: inheritance branch only")
    g = p.add_argument_group("losses")
    g.add_argument("--margin", type=float, default=0.2, help="triplet margin (the TVR script uses 0.1)")
    g.add_argument("--hard_pool_size", type=int, default=20, help="hard negatives are drawn from this many top videos")
    g.add_argument("--hard_negative_start_epoch", type=int, default=0,
                   help="first epoch (0-based) of hard-negative sampling; before it negatives are uniform")
    g.add_argument("--nce_weight", type=float, default=0.04, help="weight of the InfoNCE term of each branch")
    g.add_argument("--label_style", choices=("hard", "soft"), default="hard",
                   help="InfoNCE targets: hard (one-hot, ICCV) or soft (DL-DKD++ soft alignment: part of the batch "
                        "mixes in the teacher's score distribution (inheritance) or the branch's own (exploration))")
    g.add_argument("--alpha", type=float, default=0.8,
                   help="soft: initial share of the batch that keeps one-hot targets (also the hard part's weight)")
    g.add_argument("--beta", "--belta", dest="beta", type=float, default=0.8,
                   help="soft: initial weight of the one-hot label inside a soft target (the authors' belta)")
    g.add_argument("--alpha_decay", choices=SOFT_SCHEDULES, default="sigmoid", help="soft: per-epoch schedule of alpha")
    g.add_argument("--beta_decay", "--belta_decay", dest="beta_decay", choices=SOFT_SCHEDULES, default="sigmoid",
                   help="soft: per-epoch schedule of beta (floored at 0.5 when beta >= 0.5)")
    g.add_argument("--soft_sigmoid_k", type=float, default=800.0,
                   help="soft: K of the sigmoid schedules, x0 K / (K + exp(100 e / K)) (the authors' selfDistil_sigmoid_k)")
    g.add_argument("--soft_exp_k", type=float, default=0.95,
                   help="soft: k of the exp schedules, x0 k^e (the authors share exponential_k with the KL schedule)")
    g.add_argument("--soft_nce_leak", type=float, default=1e-12,
                   help="soft: the authors' epsilon inside log(target + eps) of the video-to-text terms; it gives "
                        "non-positive captions weight 1e-12, which matters for widely spread scores (0 removes it)")
    g.add_argument("--soft_detach_self_targets", action="store_true",
                   help="soft: detach the exploration branch's own scores where they serve as targets (the authors' "
                        "code lets gradients flow through them)")
    g.add_argument("--soft_keep_parts", action="store_true",
                   help="soft: keep each direction's hard (soft) term whenever it has rows; the authors drop both "
                        "directions' hard terms once floor(alpha V) = 0 (epochs 91-103 at TVR sizes)")
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
    """Flags of a training run: the recipe's defaults, then the command line; with --resume, the run's opt.json."""
    parser = build_train_parser()
    first = parser.parse_args(argv)
    if first.resume:
        return resume_options(Path(first.resume), first)
    if not first.root_path or not first.collection:
        parser.error("--root_path and --collection are required (or --resume RUN_DIR)")
    parser.set_defaults(**recipe_defaults(first.recipe, first.collection))
    opt = parser.parse_args(argv)
    if opt.label_style == "soft" and opt.no_teacher:
        parser.error("--label_style soft needs the teacher (the inheritance branch's soft targets are the teacher's "
                     "scores): drop --no_teacher or add --label_style hard")
    if opt.resume_if_exists and not opt.results_dir:
        parser.error("--resume_if_exists needs --results_dir DIR (the run folder to continue)")
    return fill_collection_defaults(opt)


def resume_options(run_dir: Path, cli: argparse.Namespace) -> argparse.Namespace:
    """The settings of the run in ``run_dir`` (its opt.json), with the machine's flags from ``cli``."""
    stored = load_opt(run_dir)
    runtime = {k: getattr(cli, k) for k in RUNTIME_KEYS}
    defaults = vars(build_train_parser().parse_args([]))  # flags newer than the run's opt.json
    return fill_collection_defaults(argparse.Namespace(**{**defaults, **stored, **runtime, "resume": str(run_dir)}))


def save_opt(opt: argparse.Namespace, run_dir: Path) -> None:
    with open(run_dir / "opt.json", "w") as f:
        json.dump(vars(opt), f, indent=2, sort_keys=True)


def load_opt(run_dir: Path) -> dict:
    path = Path(run_dir) / "opt.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: a run folder holds the opt.json written by training")
    with open(path) as f:
        return json.load(f)
