"""Command-line flags of training and evaluation, dataset defaults, and ``opt.json``.

Defaults reproduce the ICCV recipe of the released code (``../shared/spec/METHOD.md``);
flag names follow the released code where it has one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from method.common.cli import HelpFormatter, resolve_device  # noqa: F401  (re-exported)
from method.data.paths import COLLECTIONS
from method.training.compiled import COMPILE_V1_ERROR
from method.data.preload import PRELOAD_MODES, STORAGE_DTYPES
from method.config.recipes import RECIPES, recipe_defaults, recipe_student, student_defaults
from method.training.schedules import SOFT_SCHEDULES
from method.models.students import STUDENTS, student_class

# Flags that describe the machine, not the experiment: on --resume they come
# from the command line, everything else from the run's opt.json.
RUNTIME_KEYS = ("device", "num_workers", "resume", "resume_if_exists", "debug", "preload", "dist_timeout")


def fusion_weights(opt) -> dict[str, float]:
    """Inference weights: of the branches (0.3 exploration + 0.7 inheritance) and of a student's levels."""
    return {"exploration": opt.exploration_weight, "inheritance": opt.inheritance_weight,
            "clip": opt.clip_scale_w, "frame": opt.frame_scale_w}


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
    g.add_argument("--teachers", type=lambda v: [n for n in v.split(",") if n], default=None, metavar="NAME,NAME",
                   help="several teachers distilled together: comma-separated names, 'clip' for the released CLIP "
                        "files and NAME for FeatureData/NAME_<collection>_vid_features.hdf5 with "
                        "TextData/NAME_<collection>_query_feat.hdf5 (as the extractors name them); the target is the "
                        "mean of their softmax distributions (default: one teacher, the --teacher_*_file flags)")
    g.add_argument("--teacher_query_file", default=None,
                   help="teacher caption features in TextData/ (default clip_ViT_B_32_<collection>_query_feat.hdf5)")
    g.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes (0 = in the main process)")
    g.add_argument("--preload", nargs="?", const="ram", default="none", choices=PRELOAD_MODES,
                   help="compute every item's pooled, normalised features once per run and hold the split: ram "
                        "(host memory; plain --preload) or device (GPU memory: batches are gathered and padded "
                        "there); none reads the feature files and pools every epoch. Training: every process holds "
                        "the whole train split; evaluation: its share (docs/performance.md)")
    g.add_argument("--preload_dtype", choices=tuple(STORAGE_DTYPES), default="float32",
                   help="storage dtype of the preloaded features (batches are cast to float32): float16 / bfloat16 "
                        "halve the memory and round the inputs (changes the numbers); needs --preload")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--eval_video_bsz", type=int, default=200, help="videos per batch when encoding for evaluation")
    g.add_argument("--eval_query_bsz", type=int, default=500,
                   help="queries per chunk when scoring (bounds evaluation memory: chunk x n_videos)")
    g.add_argument("--exploration_weight", type=float, default=0.3, help="weight of the exploration branch in the fused score")
    g.add_argument("--inheritance_weight", type=float, default=0.7, help="weight of the inheritance branch in the fused score")
    g.add_argument("--clip_scale_w", type=float, default=0.7,
                   help="GMMFormer family: weight of the clip-level score in a branch's score")
    g.add_argument("--frame_scale_w", type=float, default=0.3,
                   help="GMMFormer family: weight of the frame-level score in a branch's score")


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m method.train",
        description="Train DL-DKD (dual learning with dynamic knowledge distillation) for PRVR.",
        formatter_class=HelpFormatter)
    add_data_args(p)
    g = p.add_argument_group("training data")
    g.add_argument(
        "--pool_to_teacher", action=argparse.BooleanOptionalAction, default=False,
        help="DL-DKD++ training items: a student video longer than its teacher video is first mean-pooled to the "
             "teacher's frame count (evaluation videos are not), as the authors' DL-DKD++ code does")
    g.add_argument("--batch_sort", choices=("captions", "frames"), default="captions",
                   help="order of the videos inside a training batch, descending: caption count (the DL-DKD "
                        "loader) or frame count (the GMMFormer loader); it decides labels and negative draws")
    g = p.add_argument_group("run")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="iccv",
                   help="flag defaults of a recipe: iccv (ICCV 2023), dldkdpp (DL-DKD++, soft alignment), gmmformer or "
                        "gmmformer_v2 (the GMMFormer / GMMFormerV2 codes: one network, no teacher), each with its "
                        "per-collection settings; flags given explicitly still win")
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
                        "fails")
    g = p.add_argument_group("model")
    g.add_argument("--student", choices=sorted(STUDENTS), default=None,
                   help="the network of a branch (method/students): dldkd (ICCV 2023), gmmformer, gmmformer_v2 "
                        "(default: the recipe's, dldkd for iccv and dldkdpp); it brings the loss factors of its own "
                        "objective for the collection (method/recipes.py STUDENT_DEFAULTS)")
    g.add_argument("--hidden_size", type=int, default=384, help="hidden size d of both branches")
    g.add_argument("--n_heads", type=int, default=4, help="attention heads")
    g.add_argument("--input_drop", type=float, default=0.1, help="dropout on the inputs and positional encodings")
    g.add_argument("--drop", type=float, default=0.1, help="dropout in the attention block")
    g.add_argument("--separate_query_proj", action=argparse.BooleanOptionalAction, default=None,
                   help="give the exploration branch its own query input projection (default: shared for the dldkd "
                        "student, as the released ICCV model; separate for the other students)")
    g.add_argument("--single_branch", action="store_true",
                   help="one branch only (the ablation; the GMMFormer recipes train one network)")
    g.add_argument("--map_size", type=int, default=32, help="GMMFormer family: clips per video (mean-pooled frames)")
    g.add_argument("--sft_factor", type=float, default=0.09,
                   help="GMMFormerV2: temperature of the softmax that fuses the Gaussian branches per position")
    g.add_argument("--eval_context_bsz", type=int, default=100,
                   help="GMMFormer: videos encoded together at evaluation; their frame Gaussians are sized by the "
                        "group's longest video (quirk Q1), so this changes its numbers")
    g.add_argument("--gauss_own_length", action="store_true",
                   help="GMMFormer, fixes quirk Q1: size each video's frame Gaussians by its own length, not the "
                        "padded batch length (changes results)")
    g.add_argument("--gauss_centred", action="store_true",
                   help="GMMFormer family, fixes quirk Q2: centre each Gaussian on its own key position (i / (L - 1)) "
                        "instead of i / L (changes results)")
    g.add_argument("--mask_padded_frames", action="store_true",
                   help="GMMFormerV2, fixes quirk Q3: padded frames take no part in the frame-level max (the authors' "
                        "zeroed padded frames floor every shorter video's frame score at 0)")
    g = p.add_argument_group("losses")
    g.add_argument("--margin", type=float, default=0.2, help="triplet margin (the TVR script uses 0.1)")
    g.add_argument("--hard_pool_size", type=int, default=20, help="hard negatives are drawn from this many top videos")
    g.add_argument("--hard_negative_start_epoch", type=int, default=0,
                   help="first epoch (0-based) of hard-negative sampling; before it negatives are uniform")
    g.add_argument("--nce_weight", type=float, default=0.04,
                   help="weight of the InfoNCE term of each branch (the frame level of a GMMFormer-family student)")
    g.add_argument("--clip_nce_weight", type=float, default=0.05,
                   help="GMMFormer family: weight of the clip-level InfoNCE term (the student's default for the "
                        "collection)")
    g.add_argument("--qdl_weight", type=float, default=0.0,
                   help="GMMFormer family: weight of the query-diversity loss (default: the student's for the "
                        "collection; 0 for dldkd)")
    g.add_argument("--qdl_margin", type=float, default=0.15, help="query-diversity loss: margin (neg_factor[0])")
    g.add_argument("--qdl_scale", type=float, default=32.0, help="query-diversity loss: scale (neg_factor[1])")
    g.add_argument("--qdl_focal", type=float, default=1.0,
                   help="GMMFormerV2's query-diversity loss: exponent of its focal factor (1 + cos)^x (neg_factor[2])")
    g.add_argument("--ot_weight", type=float, default=0.0,
                   help="GMMFormerV2: weight of the caption-to-clip matching (Hungarian / OT) loss (default: the "
                        "student's for the collection; 0 for the others)")
    g.add_argument("--reuse_query_encoding", action="store_true",
                   help="GMMFormer family, fixes quirk Q5: the query-diversity and OT losses reuse the query "
                        "encoding of the scores instead of encoding the queries a second time (another dropout "
                        "sample)")
    g.add_argument("--exclude_all_norms_from_decay", action="store_true",
                   help="no weight decay on any LayerNorm (fixes GMMFormerV2's quirk Q7: its norm1 / norm2 are decayed "
                        "because the released rule looks for 'LayerNorm' in the name)")
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
    g.add_argument("--kd_level", choices=("frame", "clip"), default=None,
                   help="positions the teacher is distilled over (default: frame; clip for gmmformer, whose frame "
                        "branch pools each video to one vector): the teacher's frames aligned to the student's frames, "
                        "or pooled to its clips like the student's")
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
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model's forward, frames and tokens padded to a few lengths so that a run "
                        "compiles a bounded number of graphs (method/compiled.py; gmmformer needs --gauss_own_length, "
                        "quirk Q1); a speed option, off by default")
    g.add_argument("--optim", choices=("bertadam", "adamw"), default="bertadam",
                   help="bertadam: the released rule (no bias correction, per-tensor clipping); adamw: torch AdamW")
    return p


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
    student = first.student or recipe_student(first.recipe) or "dldkd"
    parser.set_defaults(**student_defaults(student, first.collection), **recipe_defaults(first.recipe, first.collection))
    opt = parser.parse_args(argv)
    opt.student = student
    resolve_student_flags(opt)
    if opt.label_style == "soft" and opt.no_teacher:
        parser.error("--label_style soft needs the teacher (the inheritance branch's soft targets are the teacher's "
                     "scores): drop --no_teacher or add --label_style hard")
    if opt.teachers and opt.no_teacher:
        parser.error("--teachers names the teachers to distil; --no_teacher turns distillation off: give one")
    if opt.resume_if_exists and not opt.results_dir:
        parser.error("--resume_if_exists needs --results_dir DIR (the run folder to continue)")
    if opt.compile and opt.student == "gmmformer" and not opt.gauss_own_length:
        parser.error(COMPILE_V1_ERROR)
    check_preload(opt)
    return fill_collection_defaults(opt)


def check_preload(opt: argparse.Namespace) -> argparse.Namespace:
    """A 16-bit storage dtype needs a preloaded split (the feature files are read in float32)."""
    if opt.preload_dtype != "float32" and opt.preload == "none":
        raise SystemExit(f"--preload_dtype {opt.preload_dtype} needs --preload ram or --preload device (the run "
                         f"stores its preloaded features in {opt.preload_dtype}; without --preload they are read "
                         f"from the files in float32)")
    return opt


def resolve_student_flags(opt: argparse.Namespace) -> argparse.Namespace:
    """Fill the student-dependent defaults (query projection, distillation level) and check the combination.

    Also completes the settings of runs older than these flags (the dldkd student).
    """
    if opt.student is None:
        opt.student = "dldkd"
    cls = student_class(opt.student)
    if opt.separate_query_proj is None:
        opt.separate_query_proj = opt.student != "dldkd"
    if opt.kd_level is None:
        opt.kd_level = cls.kd_levels[0]
    if opt.kd_level not in cls.kd_levels:
        raise SystemExit(f"--kd_level {opt.kd_level}: the {opt.student} student distils over "
                         f"{' or '.join(cls.kd_levels)}"
                         + (" (its frame branch pools each video to one vector)" if opt.student == "gmmformer" else ""))
    if opt.ot_weight > 0 and "clip" not in cls.levels:
        raise SystemExit(f"--ot_weight needs a student with clips; {opt.student} has none")
    return opt


def resume_options(run_dir: Path, cli: argparse.Namespace) -> argparse.Namespace:
    """The settings of the run in ``run_dir`` (its opt.json), with the machine's flags from ``cli``."""
    stored = load_opt(run_dir)
    runtime = {k: getattr(cli, k) for k in RUNTIME_KEYS}
    defaults = vars(build_train_parser().parse_args([]))  # flags newer than the run's opt.json
    opt = argparse.Namespace(**{**defaults, **stored, **runtime, "resume": str(run_dir)})
    return check_preload(resolve_student_flags(fill_collection_defaults(opt)))


def save_opt(opt: argparse.Namespace, run_dir: Path) -> None:
    with open(run_dir / "opt.json", "w") as f:
        json.dump(vars(opt), f, indent=2, sort_keys=True)


def load_opt(run_dir: Path) -> dict:
    path = Path(run_dir) / "opt.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: a run folder holds the opt.json written by training")
    with open(path) as f:
        return json.load(f)
