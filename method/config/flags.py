"""Command-line flags of training and evaluation, their resolution against the recipe table, and resume.

Experiment flags have no default of their own: an absent flag takes the
recipe table's value (``method.config.recipes``), so ``--help`` points there.
Machine flags (``MACHINE_FLAGS``) describe where and how fast a run goes, not
what it computes; they have ordinary defaults, are the only flags that may
change on ``--resume`` and are never taken from a stored ``opt.json``.
Each student's own settings become flags from its configuration dataclass.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional

from method.common.cli import HelpFormatter, device_name
from method.common.files import atomic_write_json, read_json
from method.config.recipes import RECIPES, check_recipe, recipe_student, recipe_values
from method.data.paths import COLLECTIONS
from method.data.preload import PRELOAD_MODES, STORAGE_DTYPES
from method.models.students import STUDENTS, StudentConfig, student_class
from method.models.students.blocks import FAST_PATH_MODES
from method.training.compiled import COMPILE_V1_ERROR
from method.training.schedules import DECAY_WAY_NAMES, SCHEDULES, SOFT_SCHEDULES

# The one declaration of the flags that may change on --resume (and that evaluation, summaries and reports never
# take from a run's opt.json): where the data is and how the run is executed, not what it computes.
MACHINE_FLAGS = ("root_path", "device", "num_workers", "preload", "dist_timeout", "debug", "tf32", "deterministic",
                 "compile", "checkpoint_branches", "eval_video_bsz", "eval_query_bsz", "resume", "resume_if_exists")
FROM_TABLE = "(default: the recipe's, docs/recipes.md)"
EPOCHS_ON_RESUME = ("--n_epoch cannot change on --resume: it sets the horizon of the learning-rate decay and of the "
                    "schedules, so a longer run is a different run; start a new one (docs/recipes.md, 'Resume')")


def fusion_weights(opt) -> dict[str, float]:
    """Inference weights: of the branches (0.3 exploration + 0.7 inheritance) and of a student's levels."""
    return {"exploration": opt.exploration_weight, "inheritance": opt.inheritance_weight,
            "clip": opt.clip_scale_w, "frame": opt.frame_scale_w}


def kd_schedule_name(value: str) -> str:
    """A schedule name, or the released ``decay_way`` number 0-8 mapped to its name."""
    return DECAY_WAY_NAMES.get(int(value), value) if value.strip().isdigit() else value


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
    g.add_argument("--teacher_video_file", default=None,
                   help="teacher frame features in FeatureData/ (default new_clip_vit_32_<collection>_vid_features.hdf5)")
    g.add_argument("--teacher_query_file", default=None,
                   help="teacher caption features in TextData/ (default clip_ViT_B_32_<collection>_query_feat.hdf5)")
    g.add_argument("--teachers", type=lambda v: [n for n in v.split(",") if n], default=None, metavar="NAME,NAME",
                   help="several teachers distilled together: comma-separated names, 'clip' for the released CLIP "
                        "files and NAME for FeatureData/NAME_<collection>_vid_features.hdf5 with "
                        "TextData/NAME_<collection>_query_feat.hdf5 (as the extractors name them); the target is the "
                        "mean of their softmax distributions; not with --teacher_*_file (default: one teacher, the "
                        "--teacher_*_file flags)")
    g.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes (0 = in the main process)")
    g.add_argument("--preload", nargs="?", const="ram", default="none", choices=PRELOAD_MODES,
                   help="compute every item's pooled, normalised features once per run and hold the split: ram "
                        "(host memory; plain --preload) or device (GPU memory: batches are gathered and padded "
                        "there); none reads the feature files and pools every epoch. Training: every process holds "
                        "the whole train split; evaluation: its share (docs/performance.md)")
    g.add_argument("--preload_dtype", choices=tuple(STORAGE_DTYPES), default="float32",
                   help="storage dtype of the preloaded features (batches are cast to float32): float16 / bfloat16 "
                        "halve the memory and round the inputs (changes the numbers); needs --preload")
    g.add_argument("--device", default="auto", type=device_name, help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--eval_video_bsz", type=int, default=200, help="videos per batch when encoding for evaluation")
    g.add_argument("--eval_query_bsz", type=int, default=500,
                   help="queries per chunk when scoring (bounds evaluation memory: chunk x n_videos)")
    g = p.add_argument_group("inference weights")
    g.add_argument("--exploration_weight", type=float, help="weight of the exploration branch in the fused score "
                                                            + FROM_TABLE)
    g.add_argument("--inheritance_weight", type=float, help="weight of the inheritance branch in the fused score "
                                                            + FROM_TABLE)
    g.add_argument("--clip_scale_w", type=float,
                   help="GMMFormer family: weight of the clip-level score in a branch's score " + FROM_TABLE)
    g.add_argument("--frame_scale_w", type=float,
                   help="GMMFormer family: weight of the frame-level score in a branch's score " + FROM_TABLE)


def student_settings() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every flag of the students' own configurations: {name: (field, students that have it)}.

    The common ``StudentConfig`` fields first, then each student's own (a name
    two students share is one flag).
    """
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name in sorted(STUDENTS):
        cls = student_class(name)
        own = list(cls.Config.flag_fields()) + (list(dataclasses.fields(cls.Losses)) if cls.Losses else [])
        for f in own:
            out.setdefault(f.name, (f, []))[1].append(name)
    return out


def _add_setting(g, f: dataclasses.Field, owners: list[str]) -> None:
    help_text = f.metadata.get("help", "")
    if len(owners) < len(STUDENTS):
        help_text += f" [{', '.join(owners)}]"
    kwargs = {"help": f"{help_text} {FROM_TABLE}", "default": None}
    if isinstance(f.default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = type(f.default)
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
    g.add_argument(f"--{f.name}", **kwargs)


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m method.train",
        description="Train a PRVR recipe: DL-DKD (dual learning with dynamic knowledge distillation), DL-DKD++, "
                    "GMMFormer, GMMFormerV2, Holmes or RAL. Experiment flags default to the recipe table's values "
                    "for the collection (docs/recipes.md); flags given here override them.",
        formatter_class=HelpFormatter)
    add_data_args(p)
    g = p.add_argument_group("training data")
    g.add_argument(
        "--pool_to_teacher", action=argparse.BooleanOptionalAction, default=None,
        help="DL-DKD++ training items: a student video longer than its teacher video is first mean-pooled to the "
             "teacher's frame count (evaluation videos are not), as the authors' DL-DKD++ code does " + FROM_TABLE)
    g.add_argument("--batch_sort", choices=("captions", "frames"),
                   help="order of the videos inside a training batch, descending: caption count (the DL-DKD "
                        "loader) or frame count (the GMMFormer loader); it decides labels and negative draws "
                        + FROM_TABLE)
    g = p.add_argument_group("run")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="iccv",
                   help="the recipe whose values are the defaults: iccv (DL-DKD, ICCV 2023), dldkdpp (DL-DKD++, soft "
                        "alignment), gmmformer or gmmformer_v2 (one network, no teacher), holmes (Holmes, ICML 2026: one "
                        "network, no teacher, an evidential objective), each with its per-collection "
                        "values (docs/recipes.md)")
    g.add_argument("--exp_id", help="name of the experiment, part of the run folder name (default: the recipe's name, "
                                    "with the student's when --student is given)")
    g.add_argument("--results_dir", default=None,
                   help="run folder (default <root_path>/<collection>/results/<collection>-<exp_id>-<time>-<pid>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a stopped run from RUN_DIR/latest.ckpt with the settings of RUN_DIR/opt.json; only "
                        "machine flags may be given besides (" + ", ".join(MACHINE_FLAGS[:-2]) + ")")
    g.add_argument("--resume_if_exists", action="store_true",
                   help="with --results_dir DIR: continue the run in DIR from its latest.ckpt when there is one, "
                        "else start it there (for torchrun --max-restarts and requeued cluster jobs)")
    g.add_argument("--seed", type=int, help="seed of Python, NumPy, torch and the DataLoader " + FROM_TABLE)
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
    g.add_argument("--student", choices=sorted(STUDENTS),
                   help="the network of a branch (method/models/students): dldkd (ICCV 2023), gmmformer, gmmformer_v2, "
                        "holmes; "
                        "it brings its own settings and the loss factors of its objective for the collection (default: "
                        "the recipe's, dldkd for iccv and dldkdpp)")
    g.add_argument("--separate_query_proj", action=argparse.BooleanOptionalAction, default=None,
                   help="give the exploration branch its own query input projection (default: the recipe's; shared "
                        "for the dldkd student, as the released ICCV model, separate for the others)")
    g.add_argument("--single_branch", action=argparse.BooleanOptionalAction, default=None,
                   help="one branch only (the ablation; the GMMFormer recipes train one network) " + FROM_TABLE)
    settings = student_settings()
    for name, (f, owners) in settings.items():
        if name in {x.name for x in StudentConfig.flag_fields()}:
            _add_setting(g, f, owners)
    g = p.add_argument_group("the students' own settings (each applies to the students in brackets)")
    for name, (f, owners) in settings.items():
        if name not in {x.name for x in StudentConfig.flag_fields()}:
            _add_setting(g, f, owners)
    g = p.add_argument_group("losses")
    g.add_argument("--margin", type=float, help="triplet margin " + FROM_TABLE)
    g.add_argument("--hard_pool_size", type=int, help="hard negatives are drawn from this many top videos "
                                                      + FROM_TABLE)
    g.add_argument("--hard_negative_start_epoch", type=int,
                   help="first epoch (0-based) of hard-negative sampling; before it negatives are uniform "
                        + FROM_TABLE)
    g.add_argument("--nce_weight", type=float,
                   help="weight of the InfoNCE term of each branch (the frame level of a GMMFormer-family student) "
                        + FROM_TABLE)
    g.add_argument("--reuse_query_encoding", action=argparse.BooleanOptionalAction, default=None,
                   help="GMMFormer family, fixes quirk Q5: the query-diversity and OT losses reuse the query "
                        "encoding of the scores instead of encoding the queries a second time (another dropout "
                        "sample) " + FROM_TABLE)
    g.add_argument("--exclude_all_norms_from_decay", action=argparse.BooleanOptionalAction, default=None,
                   help="no weight decay on any LayerNorm (fixes GMMFormerV2's quirk Q7: its norm1 / norm2 are decayed "
                        "because the released rule looks for 'LayerNorm' in the name) " + FROM_TABLE)
    g.add_argument("--label_style", choices=("hard", "soft"),
                   help="InfoNCE targets: hard (one-hot, ICCV) or soft (DL-DKD++ soft alignment: part of the batch "
                        "mixes in the teacher's score distribution (inheritance) or the branch's own (exploration)) "
                        + FROM_TABLE)
    g.add_argument("--alpha", type=float,
                   help="soft: initial share of the batch that keeps one-hot targets (also the hard part's weight) "
                        + FROM_TABLE)
    g.add_argument("--beta", "--belta", dest="beta", type=float,
                   help="soft: initial weight of the one-hot label inside a soft target (the authors' belta) "
                        + FROM_TABLE)
    g.add_argument("--alpha_decay", choices=SOFT_SCHEDULES, help="soft: per-epoch schedule of alpha " + FROM_TABLE)
    g.add_argument("--beta_decay", "--belta_decay", dest="beta_decay", choices=SOFT_SCHEDULES,
                   help="soft: per-epoch schedule of beta (floored at 0.5 when beta >= 0.5) " + FROM_TABLE)
    g.add_argument("--soft_sigmoid_k", type=float,
                   help="soft: K of the sigmoid schedules, x0 K / (K + exp(100 e / K)) (the authors' "
                        "selfDistil_sigmoid_k) " + FROM_TABLE)
    g.add_argument("--soft_exp_k", type=float,
                   help="soft: k of the exp schedules, x0 k^e (the authors share exponential_k with the KL schedule) "
                        + FROM_TABLE)
    g.add_argument("--soft_nce_leak", type=float,
                   help="soft: the authors' epsilon inside log(target + eps) of the video-to-text terms; it gives "
                        "non-positive captions weight 1e-12, which matters for widely spread scores (0 removes it) "
                        + FROM_TABLE)
    g.add_argument("--soft_detach_self_targets", action=argparse.BooleanOptionalAction, default=None,
                   help="soft: detach the exploration branch's own scores where they serve as targets (the authors' "
                        "code lets gradients flow through them) " + FROM_TABLE)
    g.add_argument("--soft_keep_parts", action=argparse.BooleanOptionalAction, default=None,
                   help="soft: keep each direction's hard (soft) term whenever it has rows; the authors drop both "
                        "directions' hard terms once floor(alpha V) = 0 (epochs 91-103 at TVR sizes) " + FROM_TABLE)
    g.add_argument("--no_teacher", action=argparse.BooleanOptionalAction, default=None,
                   help="ablation: no distillation term (teacher files not read) " + FROM_TABLE)
    g.add_argument("--kd_schedule", type=kd_schedule_name, choices=SCHEDULES,
                   help="distillation weight schedule, by name or the released decay_way number 0-8 "
                        + FROM_TABLE)
    g.add_argument("--loss_scale_weight", type=float, help="scale of the schedule w(e) on the KL term " + FROM_TABLE)
    g.add_argument("--loss_init_weight", type=float, help="initial weight of the rising schedules " + FROM_TABLE)
    g.add_argument("--kd_k", type=float,
                   help="k of the schedule (the recipe's; without one: exp 0.95, linear -0.01, sigmoid 800)")
    g.add_argument("--kd_b", type=float, help="intercept b of the linear schedules (the recipe's; without one 1)")
    g.add_argument("--kd_temperature", type=float, help="softmax temperature of the KL term " + FROM_TABLE)
    g.add_argument("--kd_level", choices=("frame", "clip"),
                   help="positions the teacher is distilled over (default: the student's first, frame; clip for "
                        "gmmformer, whose frame branch pools each video to one vector): the teacher's frames aligned "
                        "to the student's frames, or pooled to its clips like the student's")
    g = p.add_argument_group("optimisation")
    g.add_argument("--n_epoch", type=int, help="maximum number of epochs " + FROM_TABLE)
    g.add_argument("--max_es_cnt", type=int,
                   help="stop when this many epochs in a row bring no val improvement, plus one " + FROM_TABLE)
    g.add_argument("--bsz", type=int, help="videos per training batch (with all their captions) " + FROM_TABLE)
    g.add_argument("--lr", type=float, help="peak learning rate " + FROM_TABLE)
    g.add_argument("--wd", type=float, help="decoupled weight decay " + FROM_TABLE)
    g.add_argument("--lr_warmup_proportion", type=float,
                   help="fraction of all updates spent in linear warm-up " + FROM_TABLE)
    g.add_argument("--amp", choices=("none", "bf16"),
                   help="bf16: run the model's forward pass under bfloat16 autocast (losses stay float32); a speed "
                        "option for GPUs that changes the numbers " + FROM_TABLE)
    g.add_argument("--fast_path", choices=FAST_PATH_MODES,
                   help="the GMMFormer family's blocks (GMMFormer, GMMFormerV2, Holmes, RAL): off = the "
                        "straightforward form (the authors' padding to 128 frames included); exact = only the work "
                        "that changes the numbers, in length buckets, with the reference's dropout masks; on = exact, "
                        "each bucket drawing its own masks (faster on the CPU, other masks: a seeded run changes); "
                        "docs/performance.md " + FROM_TABLE)
    g.add_argument("--checkpoint_branches", action="store_true",
                   help="activation checkpointing of the GMMFormer family's attention branches and query encoder "
                        "(with --fast_path exact or on): about half the training step's peak memory for one more "
                        "forward of the branches, the same numbers")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model's forward, frames and tokens padded to a few lengths so that a run "
                        "compiles a bounded number of graphs (method/training/compiled.py; gmmformer needs "
                        "--gauss_own_length, quirk Q1); a speed option")
    g.add_argument("--optim", choices=("bertadam", "adamw"),
                   help="bertadam: the released rule (no bias correction, per-tensor clipping); adamw: torch AdamW "
                        + FROM_TABLE)
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv) -> dict:
    """The flags given on the command line (parsed), without any default."""
    ns = argparse.Namespace()
    saved = [(a, a.default) for a in parser._actions]
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        parser.parse_args(argv, ns)
    finally:
        for a, default in saved:
            a.default = default
    return {k: v for k, v in vars(ns).items() if k != "help"}


def resolve(values: dict, given: dict) -> argparse.Namespace:
    """The resolved flags: the recipe table's ``values``, the command line's ``given`` (parsed flags with None for
    absent ones) winning; the student-dependent and per-collection defaults filled; other students' settings
    dropped."""
    opt = argparse.Namespace(**{**given, **values, **{k: v for k, v in given.items() if v is not None}})
    return complete(opt)


def complete(opt: argparse.Namespace) -> argparse.Namespace:
    """Fill what depends on the student or the collection, and drop the settings of other students."""
    cls = student_class(opt.student)
    if getattr(opt, "separate_query_proj", None) is None:
        opt.separate_query_proj = not cls.shares_query_proj
    if getattr(opt, "kd_level", None) is None:
        opt.kd_level = cls.kd_levels[0]
    if opt.kd_level not in cls.kd_levels:
        raise SystemExit(f"--kd_level {opt.kd_level}: the {opt.student} student distils over "
                         f"{' or '.join(cls.kd_levels)}{cls.kd_levels_note}")
    if getattr(opt, "visual_feature", None) is None:
        opt.visual_feature = COLLECTIONS.get(opt.collection, {}).get("visual_feature")
    if opt.visual_feature is None:
        raise SystemExit(f"--visual_feature is required for collection {opt.collection!r}")
    own = set(cls.defaults(opt.collection))
    for name in student_settings():
        if name not in own and hasattr(opt, name):
            delattr(opt, name)
    return opt


def check_conflicts(opt: argparse.Namespace, given: dict) -> Optional[str]:
    """The first combination of flags that cannot run, as an error message, or None."""
    if opt.label_style == "soft" and opt.no_teacher:
        return ("--label_style soft needs the teacher (the inheritance branch's soft targets are the teacher's "
                "scores): drop --no_teacher or add --label_style hard")
    if opt.teachers and opt.no_teacher:
        return "--teachers names the teachers to distil; --no_teacher turns distillation off: give one"
    if opt.teachers and (opt.teacher_video_file or opt.teacher_query_file):
        return ("--teachers names every teacher's files; --teacher_video_file / --teacher_query_file name one "
                "teacher's: give one or the other")
    if opt.resume_if_exists and not opt.results_dir:
        return "--resume_if_exists needs --results_dir DIR (the run folder to continue)"
    if opt.compile and student_class(opt.student).padding_changes_numbers(model_settings(opt)):
        return COMPILE_V1_ERROR
    if opt.preload_dtype != "float32" and opt.preload == "none":
        return (f"--preload_dtype {opt.preload_dtype} needs --preload ram or --preload device (the run stores its "
                f"preloaded features in {opt.preload_dtype}; without --preload they are read from the files in "
                f"float32)")
    student_flags = student_settings()
    for name in given:
        if name in student_flags and name not in student_class(opt.student).defaults(opt.collection):
            return (f"--{name} is a setting of the {', '.join(student_flags[name][1])} student; this run trains "
                    f"{opt.student}")
    return None


def model_settings(opt: argparse.Namespace) -> StudentConfig:
    """The student's configuration from the resolved flags (input sizes 0: the data gives them)."""
    config_cls = student_class(opt.student).Config
    return config_cls(**{f.name: getattr(opt, f.name) for f in config_cls.flag_fields()})


def parse_train_args(argv=None) -> argparse.Namespace:
    """Flags of a training run: the recipe table's values, then the command line; with --resume, the run's
    opt.json and nothing else but machine flags."""
    parser = build_train_parser()
    first = parser.parse_args(argv)
    given = explicit_flags(parser, argv)
    if first.resume:
        return resume_options(Path(first.resume), given)
    if not first.root_path or not first.collection:
        parser.error("--root_path and --collection are required (or --resume RUN_DIR)")
    try:
        check_recipe(first.recipe, first.collection)
        if first.student is not None and first.student != recipe_student(first.recipe) and \
                RECIPES[first.recipe].values.get("student"):
            raise ValueError(f"--recipe {first.recipe} trains the {recipe_student(first.recipe)} network alone; "
                             f"--student {first.student} is for the DL-DKD recipes (iccv, dldkdpp)")
    except ValueError as e:
        parser.error(str(e))
    values = recipe_values(first.recipe, first.collection, first.student)
    if first.exp_id is None:
        values["exp_id"] = first.recipe + (f"_{first.student}" if first.student and not
                                           RECIPES[first.recipe].values.get("student") else "")
    opt = resolve(values, vars(first))
    error = check_conflicts(opt, given)
    if error:
        parser.error(error)
    return opt


def resume_options(run_dir: Path, given: dict) -> argparse.Namespace:
    """The settings of the run in ``run_dir`` (its opt.json) with the machine flags of ``given``.

    Any other flag given that differs from opt.json stops with one line naming each flag and both values.
    """
    stored = load_opt(run_dir)
    differ = [(k, v, stored.get(k)) for k, v in given.items()
              if k not in MACHINE_FLAGS and k != "results_dir" and v != stored.get(k)]
    if differ:
        lines = "; ".join(f"--{k} {v!r} (opt.json: {s!r})" for k, v, s in differ)
        hint = EPOCHS_ON_RESUME if any(k == "n_epoch" for k, _, _ in differ) else (
            "only these may change on resume: " + ", ".join(MACHINE_FLAGS[:-2]))
        raise SystemExit(f"--resume {run_dir}: {lines}: the run's settings come from its opt.json; {hint}")
    if given.get("results_dir") and Path(given["results_dir"]).resolve() != Path(run_dir).resolve():
        raise SystemExit(f"--resume {run_dir} continues in its own folder; --results_dir {given['results_dir']} "
                         f"names another")
    parser = build_train_parser()
    machine = {k: getattr(parser.parse_args([]), k) for k in MACHINE_FLAGS}
    machine.update({k: v for k, v in given.items() if k in MACHINE_FLAGS})
    values = recipe_values(stored.get("recipe", "iccv"), stored.get("collection"), stored.get("student"))
    opt = resolve({**values, **stored}, {**machine, "resume": str(run_dir)})
    error = check_conflicts(opt, {})
    if error:
        raise SystemExit(f"--resume {run_dir}: {error}")
    return opt


def stored_settings(stored: dict, overrides: dict) -> argparse.Namespace:
    """A stored run's settings for evaluation or analysis: its opt.json (completed from the recipe table for runs
    older than a flag), its machine flags replaced by the parser's defaults, and ``overrides`` on top."""
    defaults = vars(build_train_parser().parse_args([]))
    machine = {k: defaults[k] for k in MACHINE_FLAGS if k in defaults and k != "root_path"}  # the data's: stored
    kept = {k: v for k, v in stored.items() if k not in machine}
    values = recipe_values(stored.get("recipe", "iccv"), stored.get("collection"), stored.get("student"))
    base = {**defaults, **values, **kept, **machine}
    opt = resolve(base, overrides)
    error = check_conflicts(opt, {})
    if error:
        raise SystemExit(f"error: {error}")
    return opt


def save_opt(opt: argparse.Namespace | dict, run_dir: Path) -> None:
    """``run_dir/opt.json``: every resolved flag, written atomically."""
    atomic_write_json(Path(run_dir) / "opt.json", dict(vars(opt) if not isinstance(opt, dict) else opt),
                      sort_keys=True)


def load_opt(run_dir: Path) -> dict:
    path = Path(run_dir) / "opt.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: a run folder holds the opt.json written by training")
    return read_json(path)
