"""Recipes and students: named sets of flag defaults, for all collections and per collection.

``--recipe iccv`` (the default) is the ICCV 2023 code: the flags' own defaults
(its launch scripts' per-collection settings live in ``do_<collection>.sh``).
``--recipe dldkdpp`` is the authors' newer DL-DKD++ code (DLDKDPP.md sections
6 and 7). ``--recipe gmmformer`` / ``gmmformer_v2`` are the GMMFormer and
GMMFormerV2 codes (GMMFORMER.md section 7): one network, no teacher, their
loader's batch order, seed, epochs and per-collection settings.

A student (``--student``) brings the loss factors of its own objective
(``STUDENT_DEFAULTS``, GMMFORMER.md section 7), so DL-DKD on a GMMFormer-family
student trains each branch with that student's terms. Precedence, lowest
first: the flags' defaults, the student's defaults, the recipe's defaults,
the command line. ``opt.json`` records the resolved values.
"""
from __future__ import annotations

_GMM_COMMON = {"no_teacher": True, "single_branch": True, "seed": 9527, "n_epoch": 100, "batch_sort": "frames"}

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
    "gmmformer": {
        "all": {**_GMM_COMMON, "student": "gmmformer"},
        "collections": {
            "tvr": {"lr": 3e-4, "input_drop": 0.2, "drop": 0.2, "margin": 0.1, "hard_negative_start_epoch": 30},
            "activitynet": {"lr": 2.5e-4, "input_drop": 0.2, "drop": 0.2, "margin": 0.2,
                            "hard_negative_start_epoch": 20},
            # quirk Q9: hard negatives from epoch 100 of 100, i.e. never
            "charades": {"lr": 2.5e-4, "input_drop": 0.15, "drop": 0.15, "margin": 0.2,
                         "hard_negative_start_epoch": 100},
        },
    },
    "gmmformer_v2": {
        "all": {**_GMM_COMMON, "student": "gmmformer_v2"},
        "collections": {
            "tvr": {"lr": 3e-4, "input_drop": 0.2, "drop": 0.2, "margin": 0.1, "hard_negative_start_epoch": 20},
            "activitynet": {"lr": 2.5e-4, "input_drop": 0.31, "drop": 0.31, "margin": 0.2,
                            "hard_negative_start_epoch": 20},
            "charades": {"lr": 2e-4, "input_drop": 0.25, "drop": 0.25, "margin": 0.2,
                         "hard_negative_start_epoch": 20},
        },
    },
}

# The loss factors of each student's objective (the authors' loss_factor, neg_factor, sft_factor). A
# collection without settings gets TVR's.
_V1_TVR = {"clip_nce_weight": 0.05, "nce_weight": 0.04, "qdl_weight": 0.001, "qdl_margin": 0.15, "qdl_scale": 32.0}
_V2_TVR = {"clip_nce_weight": 0.05, "nce_weight": 0.04, "qdl_weight": 8e-5, "qdl_margin": 0.15, "qdl_scale": 32.0,
           "qdl_focal": 1.0, "ot_weight": 0.09, "sft_factor": 0.09}
STUDENT_DEFAULTS = {
    "dldkd": {"all": {}, "collections": {}},
    "gmmformer": {
        "all": _V1_TVR,
        "collections": {
            "activitynet": {"clip_nce_weight": 0.02, "nce_weight": 0.04, "qdl_weight": 0.015, "qdl_margin": 0.2},
            "charades": {"clip_nce_weight": 0.02, "nce_weight": 0.02, "qdl_weight": 0.005, "qdl_margin": 0.15},
        },
    },
    "gmmformer_v2": {
        "all": _V2_TVR,
        "collections": {
            "activitynet": {"clip_nce_weight": 0.02, "nce_weight": 0.04, "qdl_weight": 0.003, "qdl_margin": 0.2,
                            "ot_weight": 0.11, "sft_factor": 0.6},
            "charades": {"clip_nce_weight": 0.02, "nce_weight": 0.04, "qdl_weight": 0.003, "qdl_margin": 0.2,
                         "ot_weight": 0.1, "sft_factor": 0.6},
        },
    },
}


def _defaults(table: dict, name: str, collection: str | None, what: str) -> dict:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}")
    spec = table[name]
    return {**spec["all"], **spec["collections"].get(collection, {})}


def recipe_defaults(recipe: str, collection: str | None) -> dict:
    """Flag defaults of ``recipe`` for ``collection`` (an unknown collection gets the recipe's common ones)."""
    return _defaults(RECIPES, recipe, collection, "recipe")


def recipe_student(recipe: str) -> str | None:
    """The student a recipe trains (None: the recipe leaves it to --student)."""
    return RECIPES[recipe]["all"].get("student")


def student_defaults(student: str, collection: str | None) -> dict:
    """Loss-factor defaults of ``student``'s objective for ``collection``."""
    return _defaults(STUDENT_DEFAULTS, student, collection, "student")
