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
"""
from __future__ import annotations

import os
import pickle
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

from .model import DLDKD, ModelConfig

FORMAT = "dldkd-v1"
RELEASED_PREFIXES = {"A_": "exploration.", "B_": "inheritance."}
# DL-DKD++ module names -> this model's (the same modules; DLDKDPP.md section 1).
DLDKDPP_MODULES = {"query_pos_embed": "query_pos_embed", "query_input_proj": "query_input_proj",
                   "query_encoder": "query_encoder", "modular_vector_mapping": "modular_vector_mapping",
                   "visual_pos_embed": "frame_pos_embed", "visual_input_proj": "frame_input_proj",
                   "visual_encoder": "frame_encoder", "out_mapping_linear": "mapping_linear"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``.

    An interrupted write leaves the previous file intact.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _EasyDictStandIn:
    """Allow-listed under the name ``easydict.EasyDict``; unpickles as an OrderedDict."""

    def __new__(cls, *args):
        return OrderedDict()


def read_checkpoint(path: str | Path) -> dict:
    """Load either format with the restricted (weights-only) unpickler."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([(_EasyDictStandIn, "easydict.EasyDict")]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise CheckpointError(
            f"{path}: refused to load: the file needs more than tensors and plain containers "
            f"(neither this project's format nor the authors' model.ckpt). Unpickler said: {first}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict, got {type(ckpt).__name__}")
    return ckpt


def checkpoint_format(ckpt: dict) -> str:
    """'own' (this project), 'iccv' (the authors' A_/B_ names) or 'dldkdpp' (their master names); else 'unknown'.

    The authors' keys may carry a ``module.`` prefix (a multi-GPU run).
    """
    if ckpt.get("format") == FORMAT:
        return "own"
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


def dldkdpp_model_config(model_cfg: dict, opt: dict, state: dict) -> ModelConfig:
    """ModelConfig of a DL-DKD++ checkpoint: sizes from the tensors' shapes, the rest from its config / opt.json."""
    state = {_strip_module(k): v for k, v in state.items()}
    cfg = {**opt, **model_cfg}
    try:
        query_pos = state["query_pos_embed.position_embeddings.weight"]
        return ModelConfig(
            visual_input_size=int(state["visual_input_proj.LayerNorm.weight"].shape[0]),
            query_input_size=int(state["query_input_proj.LayerNorm.weight"].shape[0]),
            hidden_size=int(query_pos.shape[1]),
            n_heads=int(cfg.get("n_heads", 4)),
            max_ctx_l=int(state["visual_pos_embed.position_embeddings.weight"].shape[0]),
            max_desc_l=int(query_pos.shape[0]),
            input_drop=float(cfg.get("input_drop", 0.1)),
            drop=float(cfg.get("drop", 0.1)),
            share_query_proj=False,
            single_branch=not any(k.startswith("exp_") for k in state),
        )
    except KeyError as e:
        raise CheckpointError(f"the DL-DKD++ state dict lacks {e.args[0]!r}") from None


def released_model_config(model_cfg: dict, opt: dict, state: dict) -> ModelConfig:
    """ModelConfig from the authors' EasyDict ``model_cfg`` and ``opt.json``."""
    cfg = {**opt, **model_cfg}
    try:
        return ModelConfig(
            visual_input_size=int(cfg["visual_input_size"]),
            query_input_size=int(cfg["query_input_size"]),
            hidden_size=int(cfg.get("A_hidden_size", cfg.get("B_hidden_size", 384))),
            n_heads=int(cfg.get("n_heads", 4)),
            max_ctx_l=int(cfg.get("max_ctx_l", 128)),
            max_desc_l=int(cfg.get("max_desc_l", 30)),
            input_drop=float(cfg.get("input_drop", 0.1)),
            drop=float(cfg.get("drop", 0.1)),
            share_query_proj=True,
            single_branch=not any(_strip_module(k).startswith("A_") for k in state),
        )
    except KeyError as e:
        raise CheckpointError(f"the authors' model_cfg lacks {e.args[0]!r}") from None


def load_model(path: str | Path, opt: dict | None = None) -> tuple[DLDKD, dict]:
    """Rebuild the model stored in ``path`` (either format).

    Returns (model in eval mode on CPU, info) where info has ``epoch``,
    ``released`` (bool) and ``model_config`` (dict).
    """
    ckpt = read_checkpoint(path)
    fmt = checkpoint_format(ckpt)
    if fmt == "iccv":
        cfg = released_model_config(ckpt.get("model_cfg") or {}, opt or {}, ckpt["model"])
        state = released_to_own(ckpt["model"], cfg.share_query_proj)
    elif fmt == "dldkdpp":
        cfg = dldkdpp_model_config(ckpt.get("model_cfg") or {}, opt or {}, ckpt["model"])
        state = dldkdpp_to_own(ckpt["model"])
    elif fmt == "own":
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        state = ckpt["model"]
    else:
        raise CheckpointError(
            f"{path}: neither this project's checkpoint (format {FORMAT!r}) nor the authors' (ICCV keys "
            f"A_*/B_*, or DL-DKD++ keys query_*/visual_*/exp_*); first keys: {list(ckpt['model'])[:3]}")
    model = DLDKD(cfg)
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
