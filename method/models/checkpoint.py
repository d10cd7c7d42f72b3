"""Checkpoints: atomic writes, this project's format, and the authors' ICCV and DL-DKD++ formats.

This project's ``model.ckpt`` / ``latest.ckpt`` hold only tensors, numbers,
strings, lists and dicts, so they load with ``torch.load(weights_only=True)``.

The authors' ``model.ckpt`` is ``{"model": state_dict, "model_cfg": EasyDict,
"epoch": int}``. It is read with the same restricted unpickler: the one global
it needs beyond tensors, ``easydict.EasyDict``, is allow-listed as a stand-in
that builds a plain ``OrderedDict``, so no code from the file runs and the
``easydict`` package is not needed. Their two codes name the parameters
differently:

- ICCV (released checkpoints): ``A_`` exploration, ``B_`` inheritance, and
  ``frame_*`` / ``mapping_linear`` as here; the exploration branch encodes
  queries with ``B_query_input_proj``.
- DL-DKD++ (branch master): inheritance unprefixed, exploration ``exp_``, and
  ``visual_*`` / ``out_mapping_linear``; the exploration branch has its own
  query projection.

The authors' GMMFormer / GMMFormerV2 run folders hold ``best.ckpt``:
``{"config": plain dict, "epoch": int, "model_val": [R1, R5, R10, R100, SumR],
"state_dict": their names, "optimizer": ...}``, whose optimiser state pickles
an object of their class ``Opts.optimization.WarmupLinearSchedule``. That
class is allow-listed as an inert stand-in (it only receives the attributes),
so again no code from the file runs. Their state-dict names are this
model's names below its single branch (``inheritance.``), since the students
keep the authors' module names; the folder has no ``opt.json``, so the
evaluation settings come from ``config`` (``authors_gmm_options``).
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from method.common.files import atomic_write
from method.models.model import DLDKD, ModelConfig
from method.models.students import ConfigError, holmes, ral, student_class

FORMAT = "dldkd-v1"
log = logging.getLogger("dldkd")
RELEASED_PREFIXES = {"A_": "exploration.", "B_": "inheritance."}
# DL-DKD++ module names -> this model's (the same modules; docs/data.md, "DL-DKD++ checkpoints").
DLDKDPP_MODULES = {"query_pos_embed": "query_pos_embed", "query_input_proj": "query_input_proj",
                   "query_encoder": "query_encoder", "modular_vector_mapping": "modular_vector_mapping",
                   "visual_pos_embed": "frame_pos_embed", "visual_input_proj": "frame_input_proj",
                   "visual_encoder": "frame_encoder", "out_mapping_linear": "mapping_linear"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path`` (``common.files.atomic_write``).

    An interrupted write leaves the previous file intact.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


class _EasyDictStandIn:
    """Allow-listed under the name ``easydict.EasyDict``; unpickles as an OrderedDict."""

    def __new__(cls, *args):
        return OrderedDict()


class _ScheduleStandIn:
    """Allow-listed under the name of the GMMFormer codes' LR schedule class; holds its attributes, runs nothing."""


def _numpy_scalar_globals() -> list:
    """What a pickled numpy scalar (e.g. a float64 metric) needs: numpy's scalar constructor and dtypes (data only)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return [core.multiarray.scalar, np.dtype,
            *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)}]


# Globals the authors' checkpoints need beyond tensors: inert stand-ins, and numpy scalars.
_SAFE_GLOBALS = [(_EasyDictStandIn, "easydict.EasyDict"),
                 (_ScheduleStandIn, "Opts.optimization.WarmupLinearSchedule"), *_numpy_scalar_globals()]


def read_checkpoint(path: str | Path) -> dict:
    """Load any of the formats with the restricted (weights-only) unpickler."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise CheckpointError(
            f"{path}: refused to load: the file needs more than tensors and plain containers "
            f"(neither this project's format nor the authors' model.ckpt). Unpickler said: {first}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or not ("model" in ckpt or "state_dict" in ckpt):
        raise CheckpointError(f"{path}: expected a dict with a 'model' (or, the GMMFormer codes', 'state_dict') "
                              f"state dict, got {type(ckpt).__name__}")
    return ckpt


def checkpoint_format(ckpt: dict) -> str:
    """'own' (this project), 'iccv' (the authors' A_/B_ names), 'dldkdpp' (their master names), 'gmmformer',
    'gmmformer_v2', 'holmes', 'holmes_dual' or 'ral' (the GMMFormer, Holmes and RAL codes' best.ckpt); else
    'unknown'.

    The authors' keys may carry a ``module.`` prefix (a multi-GPU run).
    """
    if ckpt.get("format") == FORMAT:
        return "own"
    if "state_dict" in ckpt and "model" not in ckpt:
        keys = {_strip_module(k) for k in ckpt["state_dict"]}
        holmes_kind = holmes.authors_checkpoint_student(keys)  # before V2's rule: Holmes has weight_token too
        if holmes_kind is not None:
            return holmes_kind
        if ral.is_authors_ral_state(keys):  # before V2's rule: RAL has weight_token too
            return "ral"
        if "weight_token" in keys:
            return "gmmformer_v2"
        if any(k.startswith("clip_encoder_2.") for k in keys):
            return "gmmformer"
        return "unknown"
    modules = {_strip_module(k).split(".", 1)[0] for k in ckpt["model"]}
    if any(m.startswith("B_") for m in modules):
        return "iccv"
    if {m[len("exp_"):] if m.startswith("exp_") else m for m in modules} <= set(DLDKDPP_MODULES):
        return "dldkdpp"
    return "unknown"


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def released_to_own(state: dict, share_query_proj: bool = True) -> dict:
    """Rename an authors' state dict (``A_`` exploration, ``B_`` inheritance) to this model's names.

    With the released sharing, ``A_query_input_proj`` is dropped: the released
    model never uses it (its exploration branch encodes queries with
    ``B_query_input_proj``), so it never trained.
    """
    out = OrderedDict()
    for key, value in state.items():
        key = _strip_module(key)
        prefix = key[:2]
        if prefix not in RELEASED_PREFIXES:
            raise CheckpointError(f"unexpected key {key!r}: released keys start with A_ or B_")
        if share_query_proj and key.startswith("A_query_input_proj."):
            continue
        out[RELEASED_PREFIXES[prefix] + key[2:]] = value
    return out


def own_to_released(state: dict) -> dict:
    """Inverse of ``released_to_own`` (the unused A_query_input_proj is not recreated)."""
    inverse = {v: k for k, v in RELEASED_PREFIXES.items()}
    out = OrderedDict()
    for key, value in state.items():
        branch, rest = key.split(".", 1)
        out[inverse[branch + "."] + rest] = value
    return out


def dldkdpp_to_own(state: dict) -> dict:
    """Rename a DL-DKD++ state dict (inheritance unprefixed, exploration ``exp_``) to this model's names."""
    out = OrderedDict()
    for key, value in state.items():
        key = _strip_module(key)
        branch, key = ("exploration", key[len("exp_"):]) if key.startswith("exp_") else ("inheritance", key)
        module, rest = key.split(".", 1)
        if module not in DLDKDPP_MODULES:
            raise CheckpointError(f"unexpected key {key!r}: not a DL-DKD++ module name")
        out[f"{branch}.{DLDKDPP_MODULES[module]}.{rest}"] = value
    return out


def _authors_config(student: str, fmt: str, path, sizes: dict, stored: dict, fallback) -> "ModelConfig":
    """The student's configuration of an authors' checkpoint.

    ``sizes``: what the tensors' shapes fix; ``stored``: the checkpoint's own
    config (and opt.json). A setting in neither is taken from ``fallback(fmt)``
    (the recipe table's values for the checkpoint's collection) and logged;
    when no fallback gives it, the checkpoint is refused naming the key.
    """
    config_cls = student_class(student).Config
    values, filled = {}, {}
    table, source = fallback(fmt) if fallback is not None else ({}, "")
    for f in dataclasses.fields(config_cls):
        if f.name in sizes:
            values[f.name] = sizes[f.name]
        elif f.name in stored:
            values[f.name] = type(f.default)(stored[f.name])
        elif f.name in table:
            values[f.name] = filled[f.name] = table[f.name]
        else:
            raise CheckpointError(f"{path}: the {fmt} checkpoint does not store {f.name!r}, which the {student} "
                                  f"student needs, and no recipe value for it is known (give the run's opt.json)")
    if filled:
        log.warning("%s: not stored in the checkpoint, taken from %s: %s", path, source,
                    ", ".join(f"{k}={v}" for k, v in filled.items()))
    return config_cls(**values)


def dldkdpp_model_config(model_cfg: dict, opt: dict, state: dict, path="checkpoint", fallback=None) -> ModelConfig:
    """ModelConfig of a DL-DKD++ checkpoint: sizes from the tensors' shapes, the rest from its config / opt.json."""
    state = {_strip_module(k): v for k, v in state.items()}
    try:
        query_pos = state["query_pos_embed.position_embeddings.weight"]
        sizes = {"visual_input_size": int(state["visual_input_proj.LayerNorm.weight"].shape[0]),
                 "query_input_size": int(state["query_input_proj.LayerNorm.weight"].shape[0]),
                 "hidden_size": int(query_pos.shape[1]),
                 "max_ctx_l": int(state["visual_pos_embed.position_embeddings.weight"].shape[0]),
                 "max_desc_l": int(query_pos.shape[0])}
    except KeyError as e:
        raise CheckpointError(f"the DL-DKD++ state dict lacks {e.args[0]!r}") from None
    sizes["robust_alignment"] = False  # the authors' state dicts have no Gaussian heads
    cfg = _authors_config("dldkd", "dldkdpp", path, sizes, {**opt, **model_cfg}, fallback)
    return ModelConfig(cfg, "dldkd", share_query_proj=False,
                       single_branch=not any(k.startswith("exp_") for k in state))


def released_model_config(model_cfg: dict, opt: dict, state: dict, path="checkpoint", fallback=None) -> ModelConfig:
    """ModelConfig from the authors' EasyDict ``model_cfg`` and ``opt.json``."""
    cfg = {**opt, **model_cfg}
    hidden = cfg.get("A_hidden_size", cfg.get("B_hidden_size"))
    sizes = {"hidden_size": int(hidden)} if hidden is not None else {}
    sizes["robust_alignment"] = False  # the authors' state dicts have no Gaussian heads
    student_cfg = _authors_config("dldkd", "iccv", path, sizes, cfg, fallback)
    return ModelConfig(student_cfg, "dldkd", share_query_proj=True,
                       single_branch=not any(_strip_module(k).startswith("A_") for k in state))


def gmm_model_config(student: str, config: dict, state: dict, path="checkpoint", fallback=None) -> ModelConfig:
    """ModelConfig of a GMMFormer / GMMFormerV2 checkpoint: sizes from the tensors, the rest from its config."""
    try:
        query_pos = state["query_pos_embed.position_embeddings.weight"]
        sizes = {"visual_input_size": int(state["frame_input_proj.LayerNorm.weight"].shape[0]),
                 "query_input_size": int(state["query_input_proj.LayerNorm.weight"].shape[0]),
                 "hidden_size": int(query_pos.shape[1]),
                 "max_ctx_l": int(state["frame_pos_embed.position_embeddings.weight"].shape[0]),
                 "max_desc_l": int(query_pos.shape[0])}
    except KeyError as e:
        raise CheckpointError(f"the {student} state dict lacks {e.args[0]!r}") from None
    sizes["robust_alignment"] = False  # the authors' state dicts have no Gaussian heads (gmmformer's switch)
    cfg = _authors_config(student, student, path, sizes, config, fallback)
    return ModelConfig(cfg, student, share_query_proj=False, single_branch=True)


def holmes_model_config(ckpt: dict, path="checkpoint", fallback=None) -> ModelConfig:
    """ModelConfig of a Holmes (or dual-query Holmes) best.ckpt: sizes from the tensors, the rest from its config
    (the authors' keys, ``holmes.authors_checkpoint_values``), else the recipe table's (``fallback``)."""
    try:
        kind, sizes, stored = holmes.authors_checkpoint_values(ckpt)
    except KeyError as e:
        raise CheckpointError(f"{path}: the Holmes state dict lacks {e.args[0]!r}") from None
    cfg = _authors_config(kind, kind, path, sizes, stored, fallback)
    return ModelConfig(cfg, kind, share_query_proj=False, single_branch=True)


def ral_model_config(ckpt: dict, path="checkpoint", fallback=None) -> ModelConfig:
    """ModelConfig of a RAL best.ckpt: sizes from the tensors, the rest from its config (the authors' keys,
    ``ral.authors_checkpoint_values``), else the recipe table's (``fallback``)."""
    try:
        sizes, stored = ral.authors_checkpoint_values(ckpt)
    except KeyError as e:
        raise CheckpointError(f"{path}: the RAL state dict lacks {e.args[0]!r}") from None
    cfg = _authors_config("ral", "ral", path, sizes, stored, fallback)
    return ModelConfig(cfg, "ral", share_query_proj=False, single_branch=True)


def authors_gmm_options(ckpt: dict) -> dict:
    """Evaluation settings (this project's flag names) of a GMMFormer-family or Holmes best.ckpt, from its
    ``config``."""
    cfg = dict(ckpt.get("config") or {})
    student = checkpoint_format(ckpt)
    out = {"recipe": student, "student": student, "single_branch": True, "no_teacher": True}
    for ours, theirs in (("collection", "dataset_name"), ("collection", "collection"),
                         ("visual_feature", "visual_feature"), ("max_ctx_l", "max_ctx_l"),
                         ("max_desc_l", "max_desc_l"), ("clip_scale_w", "clip_scale_w"),
                         ("frame_scale_w", "frame_scale_w"), ("map_size", "map_size"), ("q_feat_size", "q_feat_size")):
        if theirs in cfg:
            out[ours] = cfg[theirs]
    aliases = {"holmes": holmes.COLLECTION_ALIASES, "holmes_dual": holmes.COLLECTION_ALIASES,
               "ral": ral.COLLECTION_ALIASES}.get(student, {})
    if "collection" in out:  # the Holmes and RAL codes' -d values act / cha
        out["collection"] = aliases.get(out["collection"], out["collection"])
    return out


def model_file(run_dir: str | Path) -> Path:
    """The model of a run folder: ``model.ckpt`` (this project's, the authors' DL-DKD) or ``best.ckpt`` (GMMFormer,
    Holmes)."""
    run_dir = Path(run_dir)
    for name in ("model.ckpt", "best.ckpt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(f"{run_dir}: no model.ckpt (this project's runs, the authors' DL-DKD checkpoints) and no "
                          f"best.ckpt (the authors' GMMFormer / GMMFormerV2 / Holmes runs)")


def load_model(path: str | Path, opt: dict | None = None, fallback=None) -> tuple[DLDKD, dict]:
    """Rebuild the model stored in ``path`` (any format).

    ``opt``: the run's stored settings (the authors' opt.json); ``fallback``:
    ``fmt -> (values, description)``, the recipe table's values for an authors'
    checkpoint that does not store a setting (see ``_authors_config``).
    Returns (model in eval mode on CPU, info) where info has ``epoch``,
    ``released`` (bool), ``format`` and ``model_config`` (dict).
    """
    ckpt = read_checkpoint(path)
    fmt = checkpoint_format(ckpt)
    if fmt == "iccv":
        cfg = released_model_config(ckpt.get("model_cfg") or {}, opt or {}, ckpt["model"], path, fallback)
        state = released_to_own(ckpt["model"], cfg.share_query_proj)
    elif fmt == "dldkdpp":
        cfg = dldkdpp_model_config(ckpt.get("model_cfg") or {}, opt or {}, ckpt["model"], path, fallback)
        state = dldkdpp_to_own(ckpt["model"])
    elif fmt in ("gmmformer", "gmmformer_v2"):
        state = OrderedDict((_strip_module(k), v) for k, v in ckpt["state_dict"].items())
        cfg = gmm_model_config(fmt, dict(ckpt.get("config") or {}), state, path, fallback)
        state = OrderedDict((f"inheritance.{k}", v) for k, v in state.items())
    elif fmt in ("holmes", "holmes_dual"):
        cfg = holmes_model_config(ckpt, path, fallback)
        state = OrderedDict((f"inheritance.{_strip_module(k)}", v) for k, v in ckpt["state_dict"].items())
    elif fmt == "ral":
        cfg = ral_model_config(ckpt, path, fallback)
        state = OrderedDict((f"inheritance.{_strip_module(k)}", v) for k, v in ckpt["state_dict"].items())
    elif fmt == "own":
        try:
            cfg = ModelConfig.from_dict(ckpt["model_config"], f"{path}: model_config")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        state = ckpt["model"]
    else:
        keys = list(ckpt.get("model", ckpt.get("state_dict", {})))[:3]
        raise CheckpointError(
            f"{path}: neither this project's checkpoint (format {FORMAT!r}) nor the authors' (ICCV keys "
            f"A_*/B_*, DL-DKD++ keys query_*/visual_*/exp_*, or a GMMFormer / Holmes / RAL best.ckpt); first keys: "
            f"{keys}")
    try:
        model = DLDKD(cfg)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not match the model: "
                              f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    bad = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(f"{path}: {len(bad)} tensors have shapes that disagree with the config, "
                              f"first {k}: {got} in the file, {want} expected")
    model.load_state_dict(state)
    model.eval()
    info = {"epoch": int(ckpt.get("epoch", -1)), "released": fmt != "own", "format": fmt,
            "model_config": cfg.to_dict()}
    return model, info


def model_payload(model: DLDKD, epoch: int, best_score: float) -> dict:
    """The model part of a checkpoint: loads with weights_only=True and rebuilds the model (no ``module.``)."""
    return {"format": FORMAT, "model": model.state_dict(), "model_config": model.cfg.to_dict(),
            "epoch": epoch, "val_sumr": best_score}
