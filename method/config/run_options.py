"""The settings of a stored run, for evaluating and analysing it: its opt.json (or an authors' best.ckpt config)."""
from __future__ import annotations

import argparse
from pathlib import Path

from method.config.flags import (RUNTIME_KEYS, build_train_parser, check_preload, fill_collection_defaults, load_opt,
                                 resolve_student_flags)
from method.models.checkpoint import CheckpointError, authors_gmm_options, read_checkpoint

EVAL_RUNTIME_KEYS = (*RUNTIME_KEYS, "eval_video_bsz", "eval_query_bsz", "results_dir")
# Evaluation's own choices, not taken from the run's opt.json (a run's storage dtype is its training's).
EVAL_OWN_KEYS = ("preload_dtype",)


def resolve_model_dir(model_dir: str, root_path: str | None, collection: str | None) -> Path:
    """A folder is used as is; otherwise <root_path>/<collection>/results/<model_dir>."""
    path = Path(model_dir)
    if path.is_dir():
        return path
    if root_path and collection:
        candidate = Path(root_path) / collection / "results" / model_dir
        if candidate.is_dir():
            return candidate
        raise SystemExit(f"model dir not found: neither {path} nor {candidate} is a folder")
    raise SystemExit(f"model dir not found: {path} (give --root_path and --collection to look in results/)")


def stored_options(model_dir: Path) -> dict:
    """The run's stored settings: its opt.json, or (an authors' GMMFormer run folder) its best.ckpt's config."""
    if not (model_dir / "opt.json").is_file() and (model_dir / "best.ckpt").is_file():
        try:
            return authors_gmm_options(read_checkpoint(model_dir / "best.ckpt"))
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from None
    return load_opt(model_dir)


def run_options(model_dir: Path, overrides: dict) -> tuple[argparse.Namespace, dict]:
    """The settings of the run in ``model_dir`` (this project's opt.json or the authors'), and the stored dict.

    The model's settings come from the run's opt.json; the machine's (device,
    workers, batch sizes) never do. ``overrides`` (the data root, the split,
    the machine's flags) win over both.
    """
    stored = stored_options(model_dir)
    settings = {k: v for k, v in stored.items() if k not in (*EVAL_RUNTIME_KEYS, *EVAL_OWN_KEYS)}
    opt = argparse.Namespace(**{**vars(build_train_parser().parse_args([])), **settings, **overrides})
    if not opt.root_path:
        raise SystemExit("--root_path is required (the run's opt.json does not name one)")
    return check_preload(resolve_student_flags(fill_collection_defaults(opt))), stored
