"""Recipes: named sets of flag defaults, for all collections and per collection.

``--recipe iccv`` (the default) is the ICCV 2023 code: the flags' own defaults
(its launch scripts' per-collection settings live in ``do_<collection>.sh``).
``--recipe dldkdpp`` is the authors' newer DL-DKD++ code (DLDKDPP.md sections
6 and 7): its defaults plus what its launch scripts pass for each collection.
A recipe only changes defaults: a flag given on the command line still wins,
and ``opt.json`` records the resolved values.
"""
from __future__ import annotations

RECIPES = {
    "iccv": {"all": {}, "collections": {}},
    "dldkdpp": {
        "all": {
            "n_epoch": 120,                # also the horizon of the LR decay
            "seed": 9527,
            "label_style": "soft",         # soft-target InfoNCE in both branches
            "separate_query_proj": True,   # the exploration branch's own query projection trains
            "pool_to_teacher": True,       # training items: student frames pooled to the teacher's count
            "kd_schedule": "exp_decay",    # --distill_loss_decay exp: 0.1 * 0.95^epoch
            "loss_scale_weight": 0.1,      # --kl_intra_weight
        },
        "collections": {
            "tvr": {"margin": 0.1, "lr": 3e-4, "input_drop": 0.2, "drop": 0.2},
            "activitynet": {"input_drop": 0.25, "drop": 0.25},
            "charades": {"lr": 2.4e-4, "input_drop": 0.15, "drop": 0.15},
        },
    },
}


def recipe_defaults(recipe: str, collection: str | None) -> dict:
    """Flag defaults of ``recipe`` for ``collection`` (an unknown collection gets the recipe's common ones)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    spec = RECIPES[recipe]
    return {**spec["all"], **spec["collections"].get(collection, {})}
