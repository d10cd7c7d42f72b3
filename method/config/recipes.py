"""The recipe table: every value of every recipe for every collection, in one place.

A recipe is the training setup of one published code: ``iccv`` (DL-DKD,
ICCV 2023: its launch scripts), ``dldkdpp`` (the authors' DL-DKD++ code),
``gmmformer`` and ``gmmformer_v2`` (the GMMFormer / GMMFormerV2 codes: one
network, no teacher), ``holmes`` (the Holmes code: one network, no teacher,
an evidential objective), ``holmes_dual`` (its dual-query variant, TVR
only), ``ral`` (the RAL code: GMMFormerV2 with
a word-frame score and Gaussian samples, MIL and VIB; its
Charades-STA values are our proposal, the authors publish none). A run's values are resolved in this order, each layer
overriding the one before:

1. ``COMMON``: the values every recipe shares unless it says otherwise (the
   ICCV code's);
2. the student's own values for the collection (its module's ``Config`` and
   ``Losses`` defaults and ``collection_defaults``, ``method.models.students``);
3. the recipe's values for all collections, then for the collection;
4. the command line.

``python -m method.train --recipe R --collection C`` and ``RECIPE=R
./do_C.sh`` train the same run (a test compares their ``opt.json``);
``docs/recipes.md``'s table is generated from ``recipe_table`` (a test keeps it
current). Machine settings (device, workers, preloading, ...) are not part of a
recipe: they are flags with their own defaults (``method.config.flags``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from method.models.students import StudentConfig, holmes, holmes_dual, ral, student_class

# Every recipe's value unless the recipe, or its student, says otherwise: the ICCV 2023 code's.
COMMON = {
    # run
    "seed": 2018,
    "student": "dldkd",
    # training data
    "pool_to_teacher": False,        # DL-DKD++ pools long student videos to the teacher's frame count
    "batch_sort": "captions",        # the DL-DKD loader orders a batch's videos by caption count
    # model
    "separate_query_proj": None,     # None: shared for the dldkd student (the released quirk), else separate
    "single_branch": False,
    # losses
    "margin": 0.2,
    "hard_pool_size": 20,
    "hard_negative_start_epoch": 0,
    "nce_weight": 0.04,
    "reuse_query_encoding": False,
    "exclude_all_norms_from_decay": False,
    "label_style": "hard",
    "alpha": 0.8,
    "beta": 0.8,
    "alpha_decay": "sigmoid",
    "beta_decay": "sigmoid",
    "soft_sigmoid_k": 800.0,
    "soft_exp_k": 0.95,
    "soft_nce_leak": 1e-12,
    "soft_detach_self_targets": False,
    "soft_keep_parts": False,
    "no_teacher": False,
    "kd_schedule": "exp_decay",      # the ICCV scripts' dynamic weight 0.1 * 0.95^epoch (released decay_way 1)
    "kd_k": 0.95,
    "kd_b": None,
    "loss_scale_weight": 0.1,
    "loss_init_weight": 0.1,
    "kd_temperature": 0.2,
    "kd_level": None,                # None: the student's first distillation level
    # optimisation
    "n_epoch": 100,
    "max_es_cnt": 10,
    "bsz": 128,
    "lr": 2.5e-4,
    "wd": 0.01,
    "lr_warmup_proportion": 0.01,
    "optim": "bertadam",
    "amp": "none",
    "fast_path": "exact",            # the GMMFormer family's blocks (models/students/blocks.py, docs/performance.md)
    # inference weights
    "exploration_weight": 0.3,
    "inheritance_weight": 0.7,
    "clip_scale_w": 0.7,
    "frame_scale_w": 0.3,
}

_GMM_COMMON = {"no_teacher": True, "single_branch": True, "seed": 9527, "batch_sort": "frames"}


@dataclass(frozen=True)
class Recipe:
    """One recipe: what it is, its values for every collection and per collection."""

    title: str
    source: str
    values: dict = field(default_factory=dict)
    collections: dict = field(default_factory=dict)
    only_collections: Optional[tuple] = None  # the collections it is defined for (None: any)


RECIPES = {
    "iccv": Recipe(
        "DL-DKD (ICCV 2023)", "the authors' ICCV launch scripts",
        collections={"tvr": {"margin": 0.1}}),
    "dldkdpp": Recipe(
        "DL-DKD++ (soft alignment)", "the authors' DL-DKD++ scripts",
        values={
            "n_epoch": 120,                # also the horizon of the LR decay
            "seed": 9527,
            "label_style": "soft",         # soft-target InfoNCE in both branches
            "separate_query_proj": True,   # the exploration branch's own query projection trains
            "pool_to_teacher": True,       # training items: student frames pooled to the teacher's count
        },
        collections={
            "tvr": {"margin": 0.1, "lr": 3e-4, "input_drop": 0.2, "drop": 0.2},
            "activitynet": {"input_drop": 0.25, "drop": 0.25},
            "charades": {"lr": 2.4e-4, "input_drop": 0.15, "drop": 0.15},
        }),
    "gmmformer": Recipe(
        "GMMFormer (AAAI 2024)", "the authors' Configs/{tvr,act,cha}.py",
        values={**_GMM_COMMON, "student": "gmmformer"},
        collections={
            "tvr": {"lr": 3e-4, "input_drop": 0.2, "drop": 0.2, "margin": 0.1, "hard_negative_start_epoch": 30},
            "activitynet": {"lr": 2.5e-4, "input_drop": 0.2, "drop": 0.2, "margin": 0.2,
                            "hard_negative_start_epoch": 20},
            # quirk Q9: hard negatives from epoch 100 of 100, i.e. never
            "charades": {"lr": 2.5e-4, "input_drop": 0.15, "drop": 0.15, "margin": 0.2,
                         "hard_negative_start_epoch": 100},
        }),
    "gmmformer_v2": Recipe(
        "GMMFormerV2", "the authors' Configs/{tvr,act,cha}.py",
        values={**_GMM_COMMON, "student": "gmmformer_v2"},
        collections={
            "tvr": {"lr": 3e-4, "input_drop": 0.2, "drop": 0.2, "margin": 0.1, "hard_negative_start_epoch": 20},
            "activitynet": {"lr": 2.5e-4, "input_drop": 0.31, "drop": 0.31, "margin": 0.2,
                            "hard_negative_start_epoch": 20},
            "charades": {"lr": 2e-4, "input_drop": 0.25, "drop": 0.25, "margin": 0.2,
                         "hard_negative_start_epoch": 20},
        }),
    # Holmes (ICML 2026): every value of the authors' Configs/{tvr,act,cha}.py that is not the student's own
    # setting (lr, epochs, early stop, seed 0, dropouts, margin, frame NCE weight, hard negatives from epoch 20,
    # inference weights 0.6 / 0.4, ...), read from their one source in method/models/students/holmes.py (HolmesConfig's
    # defaults, TVR, and COLLECTION_DEFAULTS); its warm-up epoch (20) and loss factors are the student's
    # (HolmesLosses, collection_defaults).
    "holmes": Recipe(
        "Holmes (ICML 2026)", "the authors' Configs/{tvr,act,cha}.py",
        values={"no_teacher": True, "single_branch": True, "batch_sort": "frames", "student": "holmes"},
        collections={c: holmes.recipe_collection_values(c) for c in ("tvr", "activitynet", "charades")}),
    # Holmes' dual-query variant (the authors' multisrc/ tree): TVR only, as its config builder; Holmes' values with
    # multisrc/Configs/tvr.py's (150 epochs, inference 0.5 / 0.5, ...), from holmes_dual.COLLECTION_DEFAULTS.
    "holmes_dual": Recipe(
        "Holmes dual-query (ICML 2026, multisrc/)", "the authors' multisrc/Configs/tvr.py (TVR only)",
        values={"no_teacher": True, "single_branch": True, "batch_sort": "frames", "student": "holmes_dual"},
        collections={"tvr": holmes.recipe_collection_values("tvr", holmes_dual.HolmesDualConfig,
                                                            holmes_dual.COLLECTION_DEFAULTS)},
        only_collections=("tvr",)),
    # RAL on GMMFormerV2 (EMNLP Findings 2025): every value of the authors' Configs/{tvr,act}.py that is not the
    # student's own setting (BertAdam, lr, 150 / 100 epochs, max_es_cnt 15 / 10, seed 9527, inference weights
    # 0.5 / 0.5 and 0.6 / 0.4, ...), read from their one source in method/models/students/ral.py (COLLECTION_DEFAULTS);
    # its MIL / VIB weights, sample count and support capacity are the student's (RALLosses, RALNetConfig).
    # Charades-STA is OUR choice, not the authors' (they publish none, quirk R12): ral.CHARADES_PROPOSAL, GMMFormerV2's
    # Charades values with RAL's constants, fusion 0.6 / 0.4, 100 epochs, stop after 10.
    "ral": Recipe(
        "RAL (EMNLP Findings 2025); Charades-STA: our proposal",
        "the authors' Configs/{tvr,act}.py; charades: OUR choice (ral.CHARADES_PROPOSAL: GMMFormerV2's Charades "
        "values + RAL's constants, fusion 0.6 / 0.4, 100 epochs / stop after 10), not the authors'",
        values={"no_teacher": True, "single_branch": True, "student": "ral"},
        collections={c: ral.recipe_collection_values(c) for c in ("tvr", "activitynet", "charades")}),
}


def check_recipe(recipe: str, collection: Optional[str]) -> Recipe:
    """The recipe ``recipe``; ValueError naming the choices, or why the collection is refused."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    r = RECIPES[recipe]
    if r.only_collections is not None and collection not in r.only_collections:
        raise ValueError(f"--recipe {recipe} is defined for {', '.join(r.only_collections)} only, not "
                         f"{collection!r}: its authors publish no settings for it")
    return r


def recipe_student(recipe: str, student: Optional[str] = None) -> str:
    """The student a run trains: ``student`` when given, else the recipe's."""
    return student or RECIPES[recipe].values.get("student", COMMON["student"])


def recipe_values(recipe: str, collection: Optional[str], student: Optional[str] = None) -> dict:
    """Every resolved value of ``recipe`` on ``collection`` with ``student`` (default the recipe's), before the
    command line: ``COMMON``, the student's own values, the recipe's (all collections, then this one)."""
    r = check_recipe(recipe, collection)
    student = recipe_student(recipe, student)
    values = {**COMMON, **student_class(student).defaults(collection), **r.values,
              **r.collections.get(collection, {})}
    values["student"] = student
    return values


def recipe_table(collections: tuple = ("tvr", "activitynet", "charades")) -> list[dict]:
    """One row per (recipe, collection) with every value that differs from ``COMMON`` (for the docs)."""
    rows = []
    for name, r in RECIPES.items():
        for collection in collections:
            if r.only_collections is not None and collection not in r.only_collections:
                continue
            values = recipe_values(name, collection)
            rows.append({"recipe": name, "collection": collection,
                         **{k: v for k, v in values.items() if not _common(k, v)}})
    return rows


def _base_student_defaults() -> dict:
    return {f.name: f.default for f in StudentConfig.flag_fields()}


def _common(key: str, value) -> bool:
    """Whether ``value`` is the common value of ``key`` (COMMON, or the default every student shares)."""
    common = {**_base_student_defaults(), **COMMON}
    return key in common and common[key] == value


def markdown_table() -> str:
    """``recipe_table`` as the Markdown of docs/recipes.md: a row per recipe and collection."""
    lines = ["| recipe | collection | values (besides the common ones below) |", "|---|---|---|"]
    for row in recipe_table():
        rest = ", ".join(f"`{k}={v}`" for k, v in sorted(row.items()) if k not in ("recipe", "collection"))
        lines.append(f"| `{row['recipe']}` | {row['collection']} | {rest} |")
    common = ", ".join(f"`{k}={v}`" for k, v in {**_base_student_defaults(), **COMMON}.items())
    lines += ["", f"Common values (every recipe unless its row says otherwise): {common}.",
              "", "Student values for a collection not listed are its TVR values. Flags given on the command line "
                  "override any of these."]
    return "\n".join(lines)


def write_docs_table(path: str = "docs/recipes.md") -> None:
    """Replace the text between the recipe-table markers of ``path`` with ``markdown_table()``."""
    from pathlib import Path

    doc = Path(path)
    text = doc.read_text()
    start, end = "<!-- recipe-table:start -->", "<!-- recipe-table:end -->"
    head, rest = text.split(start, 1)
    doc.write_text(f"{head}{start}\n{markdown_table()}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":  # python -m method.config.recipes: regenerate docs/recipes.md's table
    write_docs_table()
