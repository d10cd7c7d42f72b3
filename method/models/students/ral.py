"""RAL on GMMFormerV2 (Zhang et al., EMNLP Findings 2025; RAL.md): the network, its scores and its settings.

RAL keeps GMMFormerV2 (``gmmformer_v2``: pooled query, 32-clip and 128-frame
DyGMM blocks, clip score) and adds, with the authors' state-dict names:

- a token-level text encoder (``frame_branch_query_proj`` -> the shared
  ``query_pos_embed`` -> ``frame_branch_query_encoder``) whose tokens score
  the frames: the **word-frame score**, per token the best frame, tokens
  averaged with confidence weights from ``text_weight_fc`` (RAL.md 2.2, 2.3, 3);
- training only: a text Gaussian per video (from its support set, the tokens
  of all its captions) and a video Gaussian per video (from its frames), each
  a PIE head (mean) and an uncertainty head (log sigma), K = 6 samples each
  (RAL.md 2.4-2.8, 4); the samples feed MIL and VIB (``method.losses.ral``).

Shapes: V videos, Q captions, L_t padded tokens, P = 128 frame positions,
D hidden size, K samples, C support capacity (captions per video).

Settings: the registered student's ``Config`` is ``RALNetConfig`` (the
network's), its ``Losses`` ``RALLosses`` (the objective's); ``RALConfig`` is
every setting of an authors' run (both plus the run's), its defaults TVR's,
``COLLECTION_DEFAULTS`` what differs per collection (``CHARADES_PROPOSAL``:
ours). A student built from a ``StudentConfig`` maps it with
``ral_config_from_model_config``; in the project's loop the frame level is
scored through the ``Student`` hooks (``train_outputs``, ``level_scores``,
``query_encodings``, ``eval_level_scores``, ``eval_positive_scores``) and MIL /
VIB are the objective's ``output_terms`` (``method.losses.ral.SampleTerms``).

Quirks of the authors' code (RAL.md 9) and their decisions here; "faithful"
is every default, a field removes a quirk where a fix makes sense:

- R1 keep: support capacity 26 captions x L_t rows for both datasets, the text
  heads attend over every row unmasked (empty slots and padded tokens count).
  ``support_captions`` (26); fix ``mask_support_attention`` masks those rows.
- R2 crash -> fixable: more than 26 captions of a video raise ValueError, as
  released; ``support_overflow_grow`` widens the support set for that batch
  only (batches within 26 captions keep the faithful numbers).
- R3 keep: the video heads attend over all 128 positions, zero rows weigh
  exp(0); fix ``mask_video_attention``.
- R4 keep: VIB reads log sigma as a log-variance in KL_v / KL_t and as a
  log-std in KL_tv and in the sampling, and uses the mean of the K samples;
  fixes ``vib_log_std`` (log-std everywhere) and ``vib_use_mean`` (mu).
- R5 keep: word-frame masks multiply (padded frames count as 0 in the
  per-token max: floor at 0 below 128 frames); fix ``mask_padded_frames``
  (the v2 Q3 fix, same field name) excludes them.
- R6 keep: U_f's confidences come from the unnormalised tokens, S_f's from the
  normalised ones; fix ``confidence_from_normalised`` (both from unit tokens).
- R7 keep: the token encoder shares ``query_pos_embed``; fix
  ``own_token_pos_embed`` adds ``frame_branch_query_pos_embed`` (not in the
  authors' checkpoints).
- R8 crash -> removed (no numbers change): the model pads the frame mask and
  features to ``max_ctx_l`` itself, so batches need not be 128 wide; the
  authors' loader padding (``pad_frames``) gives the same numbers.
- R9 keep: MIL logits are raw dot products, no temperature (no field: the
  method's definition).
- R10 keep: noise in every training step. ``train_forward`` (the reference)
  draws it in the forward from the ``generator`` passed in (None: torch's
  global generator, the authors' draw order). Training through ``method.train``
  draws it in the objective (``SampleTerms``), text first, from the stream of
  the triplet negatives after their draws, for the whole batch: the same
  distribution, other draws than the authors' order, and several processes
  draw what one process draws.
- R11 removed (no numbers change): one-caption batches (no squeeze here) and
  OT without a video of 2+ captions (0, ``method.losses.query.ot_loss``)
  work; no DataParallel here.
- R12 no Charades-STA setting: ``CHARADES_PROPOSAL`` is ours, not the authors'.
- R13 ActivityNet: ``act.py`` (0.6 / 0.4, 100 epochs, stop after 10) is what
  ``COLLECTION_DEFAULTS`` takes, not the stale bytecode (0.65 / 0.35, 150 / 15).
- R14 README vs code: the code's values (BertAdam 3e-4 / 2.5e-4, 150 / 15 on TVR).
- R15 working-directory outputs: the project's run folder layout instead.
- v2's Q5 (second query pass for QDL / OT) kept; ``second_query_pass`` False reuses q.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from method.losses.ral import LOSS_TERMS, sample_gaussian
from method.models.students import register
from method.models.students.base import ScoreOutput, StudentConfig, score_level, setting
from method.models.students.blocks import (  # noqa: F401  (pad_frames re-exported)
    FFNAttentionLayer,
    LinearLayer,
    PositionalEncoding,
    cut_masked_tail,
    init_normal_weights,
    pad_frames,
)
from method.models.students.gmmformer import GMMFamilyConfig
from method.models.students.gmmformer_v2 import (
    V2_CLIPS,
    V2_FRAMES,
    GMMFormerV2Losses,
    GMMFormerV2Student,
    state_sizes,
)
from method.models.students.probabilistic import (  # noqa: F401  (RAL's heads and support set, shared; re-exported)
    AttentionPooling,
    PIEHead,
    RobustAlignmentLosses,
    UncertaintyHead,
    _unit,
    caption_slots,
    support_set,
    text_pooling,
    video_pooling,
)


@dataclass
class RALNetConfig(GMMFamilyConfig):
    """The RAL network's settings (the registered student's ``Config``: flags ``--<field>``, stored in checkpoints).

    Defaults are the authors' TVR values; the other collections': ``RALStudent.collection_defaults``.
    """

    sft_factor: float = setting(0.09, "RAL (GMMFormerV2): temperature of the DyGMM branch-fusion softmax")
    mask_padded_frames: bool = setting(False, "RAL, fixes quirk R5 (v2's Q3): padded frames leave the per-token max "
                                              "of the word-frame score (the authors' count them as 0)")
    support_captions: int = setting(26, "RAL: support-set capacity in captions per video (x the batch's tokens; "
                                        "quirk R1: 26 for every collection)")
    mask_support_attention: bool = setting(False, "RAL, fixes quirk R1: the text Gaussian heads attend only over "
                                                  "real tokens (the authors' attend over empty slots and padding)")
    support_overflow_grow: bool = setting(False, "RAL, fixes quirk R2: widen the support set of a batch where a "
                                                 "video has more than --support_captions captions (the authors' "
                                                 "code crashes)")
    mask_video_attention: bool = setting(False, "RAL, fixes quirk R3: the video Gaussian heads attend only over real "
                                                "frames (the authors' attend over all 128 positions)")
    confidence_from_normalised: bool = setting(False, "RAL, fixes quirk R6: the token confidences of the raw "
                                                      "word-frame score (U_f) come from the unit tokens too")
    own_token_pos_embed: bool = setting(False, "RAL, fixes quirk R7: the token encoder gets its own position table "
                                               "(not in the authors' checkpoints)")

    def __post_init__(self):
        for name in ("support_captions", "hidden_size", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class RALLosses(RobustAlignmentLosses, GMMFormerV2Losses):
    """The factors of RAL's objective: GMMFormerV2's (clip NCE, QDL v2, OT) plus MIL and VIB over the samples
    (``mil_weight``, ``vib_weight``, ``vib_log_std``, ``vib_use_mean``, ``n_samples``: ``RobustAlignmentLosses``,
    shared with ``--robust_alignment`` on other students; ``sample_terms`` the MIL and VIB terms)."""


@dataclass
class RALConfig(RALLosses, RALNetConfig):
    """Every setting of RAL on GMMFormerV2: the network's (``RALNetConfig``), the objective's (``RALLosses``) and
    the run's below; defaults = the authors' TVR config (``Configs/tvr.py``), ``COLLECTION_DEFAULTS`` the others."""

    # ---- data
    collection: str = setting("tvr", "collection name (tvr, activitynet)")
    visual_feature: str = setting("i3d_resnet", "visual feature folder under FeatureData")
    visual_input_size: int = setting(3072, "visual feature size d_v")
    query_input_size: int = setting(768, "token feature size d_q (RoBERTa)")
    sort_by: str = setting("frames", "order of the videos in a training batch (frame count, descending)")
    # ---- network (the TVR values of the run; the network's own fields are RALNetConfig's)
    input_drop: float = setting(0.2, "dropout of the input projections and positional encodings")
    drop: float = setting(0.2, "dropout inside the attention layers and fusion heads")
    # ---- losses
    margin: float = setting(0.1, "triplet margin")
    frame_nce_weight: float = setting(0.04, "loss_factor f1: word-frame InfoNCE (--nce_weight)")
    hard_negative_start_epoch: int = setting(20, "first epoch (0-based) with hard triplet negatives")
    hard_pool_size: int = setting(20, "hard negatives drawn from this many top videos")
    # ---- optimisation and schedule
    optimizer: str = setting("bertadam", "BertAdam: no bias correction, per-tensor clip 1.0, decoupled decay")
    lr: float = setting(3e-4, "peak learning rate (one group; decay by the name rule)")
    weight_decay: float = setting(0.01, "weight decay of names without 'bias' / 'LayerNorm.weight'")
    warmup: float = setting(0.01, "warm-up fraction of t_total = steps per epoch x n_epoch")
    n_epoch: int = setting(150, "epochs (also sets t_total, even under early stopping)")
    max_es_cnt: int = setting(15, "stop when more than this many epochs in a row do not improve val SumR")
    batch_size: int = setting(128, "videos per training batch (each with all its captions)")
    eval_context_bsz: int = setting(100, "videos per evaluation batch (scores do not depend on it)")
    eval_query_bsz: int = setting(50, "captions per evaluation batch (scores do not depend on it)")
    seed: int = setting(9527, "seed of Python, numpy and torch")
    # ---- inference
    clip_scale_w: float = setting(0.5, "weight of the clip score in the fused inference score")
    frame_scale_w: float = setting(0.5, "weight of the word-frame score in the fused inference score")
    model_name: str = setting("RAL_gmmv2_tvr", "the authors' run name (results/<collection>/<model_name>)")
    second_query_pass: bool = setting(True, "v2 Q5: QDL and OT read a second encoding of the queries "
                                            "(False: --reuse_query_encoding)")

    @classmethod
    def for_collection(cls, collection: str, **overrides) -> "RALConfig":
        """The authors' setting of ``collection`` (``COLLECTION_DEFAULTS``), then ``overrides``."""
        if collection not in COLLECTION_DEFAULTS:
            raise ValueError(f"RAL has no setting for collection {collection!r}; expected one of "
                             f"{sorted(COLLECTION_DEFAULTS)} (charades: see CHARADES_PROPOSAL)")
        return cls(**{**COLLECTION_DEFAULTS[collection], **overrides})

    def loss_weights(self) -> dict[str, float]:
        """{term: weight} in ``LOSS_TERMS`` order (triplets weigh 1)."""
        return {"clip_nce": self.clip_nce_weight, "clip_trip": 1.0, "frame_nce": self.frame_nce_weight,
                "frame_trip": 1.0, "qdl": self.qdl_weight, "ot": self.ot_weight, "mil": self.mil_weight,
                "vib": self.vib_weight}

    def score_weights(self) -> dict[str, float]:
        """Inference weights of the levels."""
        return {"clip": self.clip_scale_w, "frame": self.frame_scale_w}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "RALConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# What differs per collection (Configs/tvr.py, Configs/act.py at befbf22; RAL.md 7).
COLLECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "tvr": dict(
        collection="tvr", visual_feature="i3d_resnet", visual_input_size=3072, query_input_size=768,
        lr=3e-4, n_epoch=150, max_es_cnt=15, input_drop=0.2, drop=0.2, margin=0.1,
        clip_nce_weight=0.05, frame_nce_weight=0.04, qdl_weight=8e-5, ot_weight=0.09,
        qdl_margin=0.15, qdl_scale=32.0, qdl_focal=1.0, sft_factor=0.09,
        clip_scale_w=0.5, frame_scale_w=0.5, mil_weight=4e-3, vib_weight=2.5e-4,
        hard_negative_start_epoch=20, seed=9527, model_name="RAL_gmmv2_tvr"),
    "activitynet": dict(
        collection="activitynet", visual_feature="i3d", visual_input_size=1024, query_input_size=1024,
        lr=2.5e-4, n_epoch=100, max_es_cnt=10, input_drop=0.31, drop=0.31, margin=0.2,
        clip_nce_weight=0.02, frame_nce_weight=0.04, qdl_weight=0.003, ot_weight=0.11,
        qdl_margin=0.2, qdl_scale=32.0, qdl_focal=1.0, sft_factor=0.6,
        clip_scale_w=0.6, frame_scale_w=0.4, mil_weight=4e-3, vib_weight=2.5e-4,
        hard_negative_start_epoch=20, seed=9527, model_name="RAL_gmmv2_act"),
}

# Not the authors' (they publish no Charades-STA setting, R12): GMMFormerV2's Charades-STA config
# (GMMFORMER.md 7) with RAL's constants, ActivityNet's fusion (I3D features, like ActivityNet) and v2's
# 100 epochs / stop after 10. To be confirmed on val.
CHARADES_PROPOSAL: dict[str, Any] = dict(
    collection="charades", visual_feature="i3d_rgb_lgi", visual_input_size=1024, query_input_size=1024,
    lr=2e-4, n_epoch=100, max_es_cnt=10, input_drop=0.25, drop=0.25, margin=0.2,
    clip_nce_weight=0.02, frame_nce_weight=0.04, qdl_weight=0.003, ot_weight=0.1,
    qdl_margin=0.2, qdl_scale=32.0, qdl_focal=1.0, sft_factor=0.6,
    clip_scale_w=0.6, frame_scale_w=0.4, mil_weight=4e-3, vib_weight=2.5e-4,
    hard_negative_start_epoch=20, seed=9527, model_name="RAL_gmmv2_cha")

COLLECTION_ALIASES = {"act": "activitynet", "anet": "activitynet", "cha": "charades"}  # the authors' -d values
# The recipe's settings per collection: the authors' (COLLECTION_DEFAULTS) and, for Charades-STA, OUR proposal.
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {**COLLECTION_DEFAULTS, "charades": CHARADES_PROPOSAL}


def ral_config(collection: str, **overrides) -> RALConfig:
    """The recipe's config of ``collection``: the authors' (tvr, activitynet) or our Charades-STA proposal."""
    collection = COLLECTION_ALIASES.get(collection, collection)
    if collection not in RECIPE_SETTINGS:
        raise ValueError(f"no RAL setting for collection {collection!r}; expected one of {sorted(RECIPE_SETTINGS)}")
    return RALConfig(**{**RECIPE_SETTINGS[collection], **overrides})


# The run's values that are flags of every recipe, not the student's settings: {RALConfig field: flag}. The recipe
# table (``method/config/recipes.py``) reads them from here, so COLLECTION_DEFAULTS / CHARADES_PROPOSAL is their one
# source (``second_query_pass`` is the negation of ``--reuse_query_encoding``).
RUN_FLAGS = {"lr": "lr", "n_epoch": "n_epoch", "max_es_cnt": "max_es_cnt", "input_drop": "input_drop",
             "drop": "drop", "margin": "margin", "hard_pool_size": "hard_pool_size", "frame_nce_weight": "nce_weight",
             "hard_negative_start_epoch": "hard_negative_start_epoch", "seed": "seed", "batch_size": "bsz",
             "weight_decay": "wd", "warmup": "lr_warmup_proportion", "optimizer": "optim", "sort_by": "batch_sort",
             "clip_scale_w": "clip_scale_w", "frame_scale_w": "frame_scale_w"}


def recipe_collection_values(collection: str) -> dict:
    """The recipe's flag values for ``collection`` (``RUN_FLAGS`` of the collection's config)."""
    cfg = ral_config(collection)
    return {**{flag: getattr(cfg, name) for name, flag in RUN_FLAGS.items()},
            "reuse_query_encoding": not cfg.second_query_pass}


def student_collection_values(collection: str) -> dict:
    """The student's own settings (network beyond ``StudentConfig``, and objective) for ``collection``."""
    cfg = ral_config(collection)
    common = {f.name for f in dataclasses.fields(StudentConfig)}
    own = [f.name for f in dataclasses.fields(RALNetConfig) if f.name not in common]
    return {name: getattr(cfg, name) for name in own + [f.name for f in dataclasses.fields(RALLosses)]}


# Fields of a student configuration that carry over to RALConfig unchanged (the network's; the rest of RALConfig
# keeps the collection's values).
_FROM_MODEL_CONFIG = tuple(f.name for f in dataclasses.fields(RALNetConfig)) + ("eval_context_bsz",)


def ral_config_from_model_config(cfg: StudentConfig, collection: Optional[str] = None) -> RALConfig:
    """A student configuration (``RALNetConfig``, or another's) -> a ``RALConfig``: the collection's defaults
    (default TVR), then the network fields ``cfg`` has."""
    base = COLLECTION_DEFAULTS.get(collection or "tvr", {})
    return RALConfig(**{**base, **{name: getattr(cfg, name) for name in _FROM_MODEL_CONFIG if hasattr(cfg, name)}})


# The authors' best.ckpt (``{config, epoch, model_val, state_dict, optimizer}``): its ``config`` keys -> RALConfig fields.
AUTHORS_CONFIG_KEYS = {
    "visual_feature": "visual_feature", "max_ctx_l": "max_ctx_l", "max_desc_l": "max_desc_l", "map_size": "map_size",
    "n_heads": "n_heads", "input_drop": "input_drop", "drop": "drop", "sft_factor": "sft_factor", "margin": "margin",
    "lr": "lr", "n_epoch": "n_epoch", "max_es_cnt": "max_es_cnt", "hard_negative_start_epoch":
    "hard_negative_start_epoch", "hard_pool_size": "hard_pool_size", "seed": "seed", "model_name": "model_name",
    "clip_scale_w": "clip_scale_w", "frame_scale_w": "frame_scale_w", "eval_context_bsz": "eval_context_bsz",
    "eval_query_bsz": "eval_query_bsz",
}
RAL_MARKER_KEYS = ("text_weight_fc.0.weight", "pie_net_text.fc.weight", "frame_branch_query_proj.net.1.weight")


def is_authors_ral_state(state: dict) -> bool:
    """Whether a state dict (the authors' names, ``module.`` allowed) is RAL's (GMMFormerV2 has ``weight_token`` too)."""
    keys = {k[len("module."):] if k.startswith("module.") else k for k in state}
    return all(k in keys for k in RAL_MARKER_KEYS)


def ral_config_from_authors(config: dict, state: dict) -> RALConfig:
    """RALConfig of the authors' best.ckpt: sizes from the tensors (names without ``module.``), settings from its
    ``config`` (``dataset_name`` / ``collection`` picks the defaults; ``loss_factor`` f0..f3, ``neg_factor``)."""
    collection = str(config.get("collection", config.get("dataset_name", "tvr")))
    collection = COLLECTION_ALIASES.get(collection, collection)
    values = dict(COLLECTION_DEFAULTS.get(collection, COLLECTION_DEFAULTS["tvr"]))
    values.update({ours: config[theirs] for theirs, ours in AUTHORS_CONFIG_KEYS.items() if theirs in config})
    if "loss_factor" in config:
        values.update(zip(("clip_nce_weight", "frame_nce_weight", "qdl_weight", "ot_weight"),
                          map(float, config["loss_factor"])))
    if "neg_factor" in config:
        values.update(zip(("qdl_margin", "qdl_scale", "qdl_focal"), map(float, config["neg_factor"])))
    query_pos = state["query_pos_embed.position_embeddings.weight"]
    values.update(visual_input_size=int(state["frame_input_proj.LayerNorm.weight"].shape[0]),
                  query_input_size=int(state["query_input_proj.LayerNorm.weight"].shape[0]),
                  hidden_size=int(query_pos.shape[1]), max_desc_l=int(query_pos.shape[0]),
                  max_ctx_l=int(state["frame_pos_embed.position_embeddings.weight"].shape[0]))
    return RALConfig(**values)


def authors_checkpoint_values(ckpt: dict) -> tuple[dict, dict]:
    """(sizes, stored) of the authors' ``best.ckpt``: the network sizes its tensors fix, and the settings its
    ``config`` stores (``AUTHORS_CONFIG_KEYS``, ``loss_factor``, ``neg_factor``; our names, the collection's
    aliases resolved)."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    config = dict(ckpt.get("config") or {})
    stored = {ours: config[theirs] for theirs, ours in AUTHORS_CONFIG_KEYS.items() if theirs in config}
    for theirs in ("collection", "dataset_name"):
        if theirs in config:
            stored["collection"] = COLLECTION_ALIASES.get(str(config[theirs]), str(config[theirs]))
    if "loss_factor" in config:
        stored.update(zip(("clip_nce_weight", "frame_nce_weight", "qdl_weight", "ot_weight"),
                          map(float, config["loss_factor"])))
    if "neg_factor" in config:
        stored.update(zip(("qdl_margin", "qdl_scale", "qdl_focal"), map(float, config["neg_factor"])))
    sizes = state_sizes(state)
    return sizes, stored


def as_ral_config(cfg: Union[RALConfig, StudentConfig]) -> RALConfig:
    return cfg if isinstance(cfg, RALConfig) else ral_config_from_model_config(cfg)


# --------------------------------------------------------------------------- #
# heads (RAL.md 2.4-2.6; the Gaussian heads are in ``probabilistic``)
# --------------------------------------------------------------------------- #
def confidence_head(dim: int) -> nn.Sequential:
    """``text_weight_fc``: Linear(D, D) -> ReLU -> Linear(D, 1) (names ``0.*``, ``2.*``)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=False), nn.Linear(dim, 1))


# --------------------------------------------------------------------------- #
# pure functions: word-frame score (RAL.md 3; support set and poolings, 2.7: ``probabilistic``)
# --------------------------------------------------------------------------- #
def token_confidences(logits: Tensor, token_mask: Tensor) -> Tensor:
    """Confidence logits (Q, L_t) -> weights: softmax over the tokens, padded tokens at -inf (weight exactly 0)."""
    return torch.softmax(logits.masked_fill(token_mask == 0, float("-inf")), dim=-1)


def word_frame_scores(tokens: Tensor, token_mask: Tensor, frames: Tensor, frame_mask: Tensor,
                      weights: Tensor, mask_padded_frames: bool = False, cut: Optional[bool] = None) -> Tensor:
    """``score[q, v] = sum_t a[q, t] max_l <T[q, t], F[v, l]> m[q, t] n[v, l]`` (RAL.md 3), (Q, V).

    tokens: (Q, L_t, D), token_mask: (Q, L_t), frames: (V, P, D), frame_mask: (V, P),
    weights: (Q, L_t) the token confidences (``token_confidences``). Masks multiply
    (R5): a masked frame is a 0 candidate in the per-token max, so the max of a
    video with a masked position is floored at 0; ``mask_padded_frames`` leaves
    them out instead. One (Q L_t, V P) matmul; its backward keeps only the
    argmax indices.

    On the fast path (``blocks.FAST_PATH``) the positions that are masked or
    zero rows in every video (beyond the batch's longest, up to 128) are not
    computed: each was a 0 candidate of every video's max (R5, Q3), so the max
    over the others is floored at 0 instead (with ``mask_padded_frames`` only
    the masked ones, left out): the same numbers and the same gradients of the
    model, (Q L_t, V L) instead of (Q L_t, V 128). ``cut`` given: the caller
    has cut ``frames`` and ``frame_mask`` already (``cut_frame_tail``), True
    when it cut something (both scores of a level share one cut).
    """
    q, lt, d = tokens.shape
    if cut is None:
        frames, frame_mask, cut = cut_frame_tail(frames, frame_mask, mask_padded_frames)
    floor = cut and not mask_padded_frames
    v, p, _ = frames.shape
    dots = (tokens.reshape(q * lt, d) @ frames.reshape(v * p, d).t()).view(q, lt, v, p)
    if mask_padded_frames:  # in place on the fresh matmul output (its backward does not read it)
        dots = dots.masked_fill_(frame_mask[None, None] == 0, float("-inf"))
    else:
        dots = dots.mul_(frame_mask[None, None].to(dots.dtype))
    best = dots.max(dim=-1).values
    if floor:
        best = best.clamp_min(0.0)
    best = best * token_mask[..., None].to(dots.dtype)  # (Q, L_t, V)
    return torch.einsum("qtv,qt->qv", best, weights)


def cut_frame_tail(frames: Tensor, frame_mask: Tensor, mask_padded_frames: bool = False
                   ) -> tuple[Tensor, Tensor, bool]:
    """(frames, frame_mask, whether cut) without the positions that count in no video's word-frame max
    (``blocks.cut_masked_tail``: masked, or with R5 zero rows too), on the fast path."""
    return cut_masked_tail(frames, frame_mask, zero_rows=not mask_padded_frames)


def word_frame_pair(tokens: Tensor, token_mask: Tensor, frames: Tensor, frame_mask: Tensor, weight_fc: nn.Module,
                    mask_padded_frames: bool = False, confidence_from_normalised: bool = False,
                    raw: bool = True) -> dict[str, Tensor]:
    """Both forms of the word-frame score (RAL.md 3): {"cos": S_f, "raw": U_f, "logits_cos", "logits_raw"}.

    S_f: unit tokens and frames, confidences from the unit tokens. U_f: raw tokens
    and frames, confidences from the raw tokens (R6; ``confidence_from_normalised``:
    from the unit tokens too). Logits are the head's outputs before the mask.
    ``raw=False`` (inference) computes S_f only.
    """
    unit_tokens = _unit(tokens)
    logits_cos = weight_fc(unit_tokens).squeeze(-1)
    frames, frame_mask, cut = cut_frame_tail(frames, frame_mask, mask_padded_frames)  # unit rows: the same cut
    out = {"cos": word_frame_scores(unit_tokens, token_mask, _unit(frames), frame_mask,
                                    token_confidences(logits_cos, token_mask), mask_padded_frames, cut),
           "logits_cos": logits_cos}
    if raw:
        logits_raw = logits_cos if confidence_from_normalised else weight_fc(tokens).squeeze(-1)
        out["raw"] = word_frame_scores(tokens, token_mask, frames, frame_mask,
                                       token_confidences(logits_raw, token_mask), mask_padded_frames, cut)
        out["logits_raw"] = logits_raw
    return out


def fused_scores(clip_scores: Tensor, frame_scores: Tensor, clip_w: float, frame_w: float) -> Tensor:
    """Inference score ``clip_w S_c + frame_w S_f`` (TVR 0.5 / 0.5, ActivityNet 0.6 / 0.4)."""
    return clip_w * clip_scores + frame_w * frame_scores


# --------------------------------------------------------------------------- #
# the student
# --------------------------------------------------------------------------- #
# State-dict order of the authors' RAL4GMMV2_Net (RAL.md 2.9); weight_token is a parameter and comes first.
AUTHORS_MODULE_ORDER = (
    "query_pos_embed", "clip_pos_embed", "frame_pos_embed", "query_input_proj", "query_encoder",
    "frame_branch_query_encoder", "frame_branch_query_proj", "clip_input_proj", "clip_encoder", "frame_input_proj",
    "frame_encoder_1", "modular_vector_mapping", "pie_net_video", "uncertain_net_video", "pie_net_text",
    "uncertain_net_text", "text_weight_fc",
)


@register
class RALStudent(GMMFormerV2Student):
    """GMMFormerV2 plus RAL's token encoder, confidence head and the two Gaussian heads (names as released).

    Registered as ``--student ral`` (``--recipe ral``): its ``Config`` is the network's settings
    (``RALNetConfig``), its ``Losses`` the objective's factors, ``collection_defaults`` the authors'
    values per collection (Charades-STA: our proposal). Built from a ``RALConfig`` or any
    ``StudentConfig`` (mapped by ``ral_config_from_model_config``); ``self.cfg`` is always the
    ``RALConfig``. ``from_config`` builds and initialises a standalone student (the ``DLDKD``
    wrapper initialises the ones it builds).

    The frame level is the word-frame score, which reads the caption tokens: the training forward's
    extra outputs (``train_outputs``: ``query_outputs`` per caption, ``video_outputs`` per video)
    carry the tokens, their confidence logits and the Gaussians' means and log sigmas; ``level_scores``,
    ``eval_level_scores`` and ``eval_positive_scores`` score the frame level from them.
    """

    name = "ral"
    Config = RALNetConfig
    Losses = RALLosses
    collection_defaults = {c: student_collection_values(c) for c in RECIPE_SETTINGS}
    levels = ("clip", "frame")
    needs_clips = True
    kd_levels = ("clip",)  # the word-frame score has no per-frame score of a query
    kd_levels_note = " (its frame level, the word-frame score, has no per-frame score of a query)"
    level_weights = {"clip": 0.5, "frame": 0.5}  # TVR; ActivityNet 0.6 / 0.4 (RALConfig.score_weights)
    query_outputs = ("tokens", "token_mask", "token_logits", "token_logits_raw")
    video_outputs = ("text_logsigma", "text_mean", "video_logsigma", "video_mean")

    def __init__(self, cfg: Union[RALConfig, StudentConfig], with_query_proj: bool = True):
        rcfg = as_ral_config(cfg)
        super().__init__(rcfg, with_query_proj)  # v2's modules and methods, reading rcfg's fields
        d, half = rcfg.hidden_size, rcfg.hidden_size // 2
        self.frame_branch_query_encoder = FFNAttentionLayer(d, rcfg.n_heads, rcfg.drop, 4 * d)
        self.frame_branch_query_proj = LinearLayer(rcfg.query_input_size, d, rcfg.input_drop)
        self.pie_net_video = PIEHead(d, half)
        self.uncertain_net_video = UncertaintyHead(d, half)
        self.pie_net_text = PIEHead(d, half)
        self.uncertain_net_text = UncertaintyHead(d, half)
        self.text_weight_fc = confidence_head(d)
        order = [n for n in AUTHORS_MODULE_ORDER if n in self._modules]
        if rcfg.own_token_pos_embed:  # R7 fix (not in the authors' checkpoints)
            self.frame_branch_query_pos_embed = PositionalEncoding(rcfg.max_desc_l, d, rcfg.input_drop)
            order.append("frame_branch_query_pos_embed")
        if set(order) != set(self._modules):
            raise AssertionError(f"module order out of date: {sorted(set(self._modules) ^ set(order))}")
        self._modules = OrderedDict((n, self._modules[n]) for n in order)

    @classmethod
    def from_config(cls, cfg: RALConfig) -> "RALStudent":
        """A standalone, initialised student (RAL.md 8)."""
        cls.check_config(cfg)
        student = cls(cfg)
        init_normal_weights(student)  # RAL.md 8 (the same rule as DLDKD._init_weights)
        return student

    # ---- encoders
    def encode_tokens(self, feat: Tensor, mask: Tensor) -> Tensor:
        """Token-level text encoder (``encode_frame_query``, RAL.md 2.2): (Q, L_t, Dq), (Q, L_t) -> W (Q, L_t, D).

        Padded positions keep the encoder's output (not zeroed).
        """
        pos = self.frame_branch_query_pos_embed if self.cfg.own_token_pos_embed else self.query_pos_embed
        return self.frame_branch_query_encoder(pos(self.frame_branch_query_proj(feat)), mask)

    def frame_mask_128(self, frame_mask: Tensor) -> Tensor:
        """The batch's frame mask zero-padded to ``max_ctx_l`` (the authors' loader does it; R8)."""
        return self._pad_mask(frame_mask)

    # ---- scores
    def scores(self, query: Tensor, tokens: Tensor, token_mask: Tensor, clip_feat: Tensor, frame_feat: Tensor,
               frame_mask: Tensor, raw: bool = True) -> dict[str, Tensor]:
        """S_c, U_c (max over clips of the pooled query) and S_f, U_f (word-frame), all (Q, V) (RAL.md 3).

        frame_feat: (V, 128, D) from ``encode_video``; frame_mask: (V, L <= 128).
        Also returns the confidence logits ("logits_cos", "logits_raw"). ``raw=False``
        (inference): only "clip_cos", "frame_cos", "logits_cos".
        """
        out = {"clip_cos": torch.einsum("qd,vkd->qvk", _unit(query), _unit(clip_feat)).amax(dim=-1)}
        if raw:
            out["clip_raw"] = torch.einsum("qd,vkd->qvk", query, clip_feat).amax(dim=-1)
        wf = word_frame_pair(tokens, token_mask, frame_feat, self.frame_mask_128(frame_mask), self.text_weight_fc,
                             self.cfg.mask_padded_frames, self.cfg.confidence_from_normalised, raw)
        out.update({"frame_cos": wf["cos"], "logits_cos": wf["logits_cos"]})
        if raw:
            out.update({"frame_raw": wf["raw"], "logits_raw": wf["logits_raw"]})
        return out

    def inference_scores(self, query: Tensor, tokens: Tensor, token_mask: Tensor, clip_feat: Tensor,
                         frame_feat: Tensor, frame_mask: Tensor) -> dict[str, Tensor]:
        """{"clip": S_c, "frame": S_f, "fused": clip_scale_w S_c + frame_scale_w S_f} (Q, V); no sampling."""
        s = self.scores(query, tokens, token_mask, clip_feat, frame_feat, frame_mask, raw=False)
        return {"clip": s["clip_cos"], "frame": s["frame_cos"],
                "fused": fused_scores(s["clip_cos"], s["frame_cos"], self.cfg.clip_scale_w, self.cfg.frame_scale_w)}

    # ---- the probabilistic part (training only)
    def gaussian(self, pie: PIEHead, unc: UncertaintyHead, pooled: Tensor, x: Tensor, mask: Optional[Tensor],
                 generator: Optional[torch.Generator] = None, eps: Optional[Tensor] = None,
                 sample: bool = True) -> dict[str, Tensor]:
        """mu = norm(PIE(p, X)), log sigma = Unc(p, X), and (``sample``) K samples (RAL.md 2.8)."""
        p, u = pie(pooled, x, mask), unc(pooled, x, mask)
        mean = _unit(p["out"])
        out = {"mean": mean, "logsigma": u["logsigma"], "pie_attn": p["attn"], "unc_attn": u["attn"],
               "pie_residual": p["residual"]}
        if sample:
            out["samples"], out["eps"] = sample_gaussian(mean, u["logsigma"], self.cfg.n_samples, generator, eps)
        return out

    def probabilistic(self, tokens: Tensor, token_mask: Tensor, labels: Tensor, frame_feat: Tensor,
                      frame_mask: Tensor, generator: Optional[torch.Generator] = None,
                      eps_text: Optional[Tensor] = None, eps_video: Optional[Tensor] = None,
                      sample: bool = True) -> dict[str, Any]:
        """Support sets, poolings and the text and video Gaussians (text drawn first; ``sample`` False: no draws,
        means and log sigmas only), RAL.md 4.

        tokens: W (Q, L_t, D), labels: (Q,) video of each caption, frame_feat: (V, P, D) with
        padded rows 0, frame_mask: (V, P). Returns {"support", "support_mask", "text_pooled",
        "video_pooled", "text": gaussian dict, "video": gaussian dict}.
        """
        cfg, v = self.cfg, frame_feat.shape[0]
        support, support_mask = support_set(tokens, token_mask, labels, v, cfg.support_captions,
                                            cfg.support_overflow_grow)
        p_t, p_v = text_pooling(support, support_mask), video_pooling(frame_feat, frame_mask)
        text = self.gaussian(self.pie_net_text, self.uncertain_net_text, p_t, support,
                             support_mask if cfg.mask_support_attention else None, generator, eps_text, sample)
        video = self.gaussian(self.pie_net_video, self.uncertain_net_video, p_v, frame_feat,
                              frame_mask if cfg.mask_video_attention else None, generator, eps_video, sample)
        return {"support": support, "support_mask": support_mask, "text_pooled": p_t, "video_pooled": p_v,
                "text": text, "video": video}

    def train_forward(self, frames: Tensor, frame_mask: Tensor, query_feat: Tensor, query_mask: Tensor,
                      clips: Tensor, labels: Tensor, generator: Optional[torch.Generator] = None,
                      eps_text: Optional[Tensor] = None, eps_video: Optional[Tensor] = None) -> dict[str, Any]:
        """One training forward (``RAL4GMMV2_Net.forward`` without its losses), the authors' order of random draws.

        Returns {"clip_feat" (V, 32, D), "frame_feat" (V, 128, D), "query" (Q, D),
        "tokens" (Q, L_t, D), "prob": ``probabilistic``'s dict, "scores": ``scores``'
        dict, "query2" (Q, D)}; ``method.losses.ral.ral_loss_terms`` takes it.
        """
        videos = self.encode_video(frames, frame_mask, clips)
        query = self.encode_query(query_feat, query_mask)
        tokens = self.encode_tokens(query_feat, query_mask)
        mask128 = self.frame_mask_128(frame_mask)
        prob = self.probabilistic(tokens, query_mask, labels, videos["frame"], mask128, generator, eps_text,
                                  eps_video)
        scores = self.scores(query, tokens, query_mask, videos["clip"], videos["frame"], frame_mask)
        query2 = self.encode_query(query_feat, query_mask) if self.cfg.second_query_pass else query
        return {"clip_feat": videos["clip"], "frame_feat": videos["frame"], "query": query, "tokens": tokens,
                "prob": prob, "scores": scores, "query2": query2}

    # ---- the project's training loop and evaluator (Student hooks)
    def confidence_logits(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(logits of S_f from the unit tokens, logits of U_f from the raw tokens (R6)), each (Q, L_t)."""
        logits = self.text_weight_fc(_unit(tokens)).squeeze(-1)
        raw = logits if self.cfg.confidence_from_normalised else self.text_weight_fc(tokens).squeeze(-1)
        return logits, raw

    def train_outputs(self, query_feat: Tensor, query_mask: Tensor, videos: dict[str, Tensor], video_mask: Tensor,
                      query_labels: Optional[Tensor]) -> dict[str, Tensor]:
        """The training forward's extra outputs: the tokens W (Q, L_t, D), their mask (Q, L_t), the confidence
        logits (Q, L_t) of S_f and U_f, and per video the text and video Gaussians' log sigma and mean (V, D);
        the objective draws their samples (``method.losses.ral.SampleTerms``, R10)."""
        if query_labels is None:
            raise ValueError("the ral student's training forward needs each caption's video (query_labels)")
        tokens = self.encode_tokens(query_feat, query_mask)
        prob = self.probabilistic(tokens, query_mask, query_labels, videos["frame"], self.frame_mask_128(video_mask),
                                  sample=False)
        logits, raw = self.confidence_logits(tokens)
        text, video = prob["text"], prob["video"]
        return {"tokens": tokens, "token_mask": query_mask, "token_logits": logits, "token_logits_raw": raw,
                "text_logsigma": text["logsigma"], "text_mean": text["mean"],
                "video_logsigma": video["logsigma"], "video_mean": video["mean"]}

    def query_encodings(self, feat: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Evaluation: {"tokens" (Q, max_desc_l, D), "token_mask", "token_logits" (Q, max_desc_l)}, zero-padded
        beyond the batch's L_t tokens (masked: the scores do not change)."""
        tokens = self.encode_tokens(feat, mask)
        logits = self.text_weight_fc(_unit(tokens)).squeeze(-1)
        extra = self.cfg.max_desc_l - tokens.shape[1]
        return {"tokens": F.pad(tokens, (0, 0, 0, extra)), "token_mask": F.pad(mask, (0, extra)),
                "token_logits": F.pad(logits, (0, extra))}

    def level_scores(self, level: str, queries: Tensor, feats: Tensor, mask: Tensor,
                     outputs: dict[str, Tensor]) -> ScoreOutput:
        """Training scores of a level: the clip level as GMMFormerV2's; the frame level the word-frame scores
        S_f (cosine) and U_f (raw), (R, V), from the R queries' ``outputs`` (no per-frame scores)."""
        if level != "frame":
            return score_level(queries, feats, mask)
        tokens, token_mask = outputs["tokens"], outputs["token_mask"]
        fix = self.cfg.mask_padded_frames  # the level's mask: ones (R5, padded rows are 0) or the padded frame mask
        feats, mask, cut = cut_frame_tail(feats, mask, fix)  # one cut for both scores (unit rows: the same)
        cos = word_frame_scores(_unit(tokens), token_mask, _unit(feats), mask,
                                token_confidences(outputs["token_logits"], token_mask), fix, cut)
        raw = word_frame_scores(tokens, token_mask, feats, mask,
                                token_confidences(outputs["token_logits_raw"], token_mask), fix, cut)
        return ScoreOutput(cos, raw, None)

    def eval_level_scores(self, level: str, queries: Tensor, encodings: dict[str, Tensor],
                          feats_unit: Tensor) -> Tensor:
        """Inference scores (Q, V) of a level against ``normalize_frames``' positions (V, P, D): the frame
        level is S_f (uncounted positions are zero rows or copies of a counted one: no mask needed)."""
        if level != "frame":
            return super().eval_level_scores(level, queries, encodings, feats_unit)
        token_mask = encodings["token_mask"]
        ones = feats_unit.new_ones(feats_unit.shape[:2])
        return word_frame_scores(_unit(encodings["tokens"]), token_mask, feats_unit, ones,
                                 token_confidences(encodings["token_logits"], token_mask))

    def eval_positive_scores(self, level: str, queries: Tensor, encodings: dict[str, Tensor],
                             own_unit: Tensor) -> Tensor:
        """Each query's inference score (Q,) with its own video's positions ``own_unit`` (Q, P, D)."""
        if level != "frame":
            return super().eval_positive_scores(level, queries, encodings, own_unit)
        token_mask = encodings["token_mask"]
        best = torch.bmm(_unit(encodings["tokens"]), own_unit.transpose(1, 2)).amax(dim=-1)  # (Q, L_t)
        weights = token_confidences(encodings["token_logits"], token_mask)
        return (best * token_mask.to(best.dtype) * weights).sum(dim=1)

    @classmethod
    def objective_terms(cls, losses: RALLosses, nce_weight: float) -> dict:
        """GMMFormerV2's terms on the clip and word-frame levels, plus MIL and VIB (whole batch)."""
        return {**super().objective_terms(losses, nce_weight), "output_terms": losses.sample_terms()}

    @staticmethod
    def check_config(cfg: Union[RALConfig, StudentConfig]) -> None:
        GMMFormerV2Student.check_config(cfg)
        if cfg.hidden_size % 2:
            raise ValueError(f"ral needs an even --hidden_size (its heads attend at D/2), got {cfg.hidden_size}")


__all__ = ["RALNetConfig", "RALLosses", "RALConfig", "COLLECTION_DEFAULTS", "CHARADES_PROPOSAL", "COLLECTION_ALIASES",
           "RECIPE_SETTINGS", "ral_config", "RUN_FLAGS", "recipe_collection_values", "student_collection_values", "LOSS_TERMS", "RALStudent", "AUTHORS_CONFIG_KEYS",
           "RAL_MARKER_KEYS", "is_authors_ral_state", "ral_config_from_authors", "authors_checkpoint_values",
           "ral_config_from_model_config", "as_ral_config", "AttentionPooling", "PIEHead",
           "UncertaintyHead", "confidence_head", "token_confidences", "word_frame_scores", "word_frame_pair",
           "fused_scores", "caption_slots", "support_set", "text_pooling", "video_pooling", "sample_gaussian",
           "pad_frames", "AUTHORS_MODULE_ORDER", "V2_CLIPS", "V2_FRAMES"]
