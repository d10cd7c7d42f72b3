"""The settings of a stored run, for evaluating and analysing it: its opt.json (or an authors' best.ckpt config)."""
from __future__ import annotations

import argparse
from pathlib import Path

from method.config.flags import MACHINE_FLAGS, load_opt, stored_settings
from method.config.recipes import RECIPES, recipe_values
from method.models.checkpoint import CheckpointError, authors_gmm_options, read_checkpoint

# Never compared or grouped by (summaries): the machine's flags and where the run was written.
EVAL_RUNTIME_KEYS = (*MACHINE_FLAGS, "results_dir")
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

    The model's settings come from the run's opt.json; the machine's
    (``MACHINE_FLAGS``: device, workers, batch sizes, ...) never do, nor the
    preloading dtype (evaluation's own choice). ``overrides`` (the data root,
    the split, flags given to the command) win over both.
    """
    stored = stored_options(model_dir)
    opt = stored_settings({k: v for k, v in stored.items() if k not in EVAL_OWN_KEYS}, overrides)
    if not opt.root_path:
        raise SystemExit("--root_path is required (the run's opt.json does not name one)")
    return opt, stored


def recipe_fallback(opt: argparse.Namespace):
    """``load_model``'s fallback: the recipe table's values for an authors' checkpoint of format ``fmt`` on the
    run's collection (``iccv`` and ``dldkdpp`` checkpoints hold the dldkd student)."""
    def values(fmt: str) -> tuple[dict, str]:
        recipe = fmt if fmt in RECIPES else opt.recipe
        return (recipe_values(recipe, opt.collection),
                f"the recipe table ({recipe} on {opt.collection}, method/config/recipes.py)")
    return values
