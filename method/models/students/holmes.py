"""The Holmes student (Li et al., ICML 2026; HOLMES.md sections 2-3, 7-9).

Holmes is GMMFormerV2 with another DyGMM block (``HolmesDyGMMBlock``: widths
none, 0.5, 1, 2, 4, 8, 16, 32 in ``e_attns.0..7``; the fusion token is the
mean of the block's own branch outputs, not the ``weight_token`` parameter)
and an evidential objective (``method.losses.evidential``). Parameter names
equal the authors' state-dict names (``Holmes_Net``), so ``best.ckpt``'s
``state_dict`` loads as is: 297 tensors, TVR dims 32,273,440 parameters.

The registered student (``--student holmes``, ``--recipe holmes``) declares
its network settings in ``HolmesNetConfig`` (its ``Config``) and its
objective's in ``HolmesLosses`` (``objective_terms``: GMMFormerV2's ranking
terms without OT, plus the evidential terms that ``method.losses`` adds from
the clip and frame score matrices). ``HolmesConfig`` is every setting of an
authors' run (both of these plus the run's: lr, epochs, seed, ...); their
defaults are the authors' TVR values, ``COLLECTION_DEFAULTS`` holds what
``Configs/act.py`` and ``cha.py`` change, and ``holmes_config(collection,
**overrides)`` resolves them: the one source of the student's
``collection_defaults`` and of the recipe's values (``RUN_FLAGS``). The student also
builds from a ``HolmesConfig`` (``HolmesStudent.from_config``, the golden
tests) and keeps the authors' ``training_forward``.

Quirks of the authors' code (HOLMES.md section 9) and the decisions taken
here; every default is the faithful behaviour, a field removes a quirk where
a fix makes sense:

- H1  keep: ``weight_token`` exists (state dict, optimiser) but is unused; it
      never gets a gradient (BertAdam skips it). No fix (removing it breaks
      the checkpoint layout).
- H2  keep: the DyGMM token averages the branch outputs over all positions,
      the frame block's padded ones too (so the frame block always runs on 128
      positions). Fix: ``token_valid_positions`` (mean over valid positions;
      the frame block then runs on the batch's L positions only).
- H3  keep: the POT min-max runs over the padded caption columns too. Fix:
      ``pot_minmax_valid_only``.
- H4  keep: pseudo-label rows renormalised after the dustbin took its mass.
      No fix field: the rows are targets of a Dirichlet mean, which sums to 1.
- H5  keep (no effect): the dustbin value P_v is computed (k-th smallest) and
      used; any value gives the same plan. No field.
- H6  keep: uncertain queries keep one-hot labels; softmax at temperature 1.
- H7  keep: lower median of the expected entropy over all queries.
- H8  keep: label smoothing and the intra-video loss from ``warmup_epoch``
      (20), with the hard negatives (``hard_negative_start_epoch`` 20).
- H9  keep (float32): the EDL variance ``a(S-a)/(S^2(S+1))`` is 0 where
      ``S^2(S+1)`` overflows (ActivityNet's combined evidence); its true value
      is below 1/S < 1.5e-13 there, so no fix. The DS combination is computed
      in the form ``E0 + E1 + E0*E1/K`` (algebraically the authors'; their
      float32 belief is ill-conditioned when ``1 - C`` is tiny, the evidence
      is not).
- H10 visual size from the config (3072 / 1024) as released; today's code
      reads it from the data and checks it (``visual_input_size``).
- H11 fixed (no number changes): the pooling squeezes only the pooled axis, so
      a single caption works; a single-video training batch raises a
      ValueError in the triplet (the authors' crash, with a message).
- H12 the BigFile -> HDF5 conversion exists here (``python -m method.convert``);
      Holmes reads ``FeatureData/<feature>/feature.hdf5`` (see the integration doc).
- H13 the README numbers are val-split "Best" numbers (report only).
- H14 DataParallel / cudnn.benchmark: not reproduced (runtime matters only).
- H15 (dual-query, ``holmes_dual``) keep: token weights of S_f from the
      normalised tokens, of U_f from the raw ones. Fix: ``shared_token_weights``.
- H16 (dual-query) the unused Dirichlet KL term of ``multisrc/Losses/loss.py``
      and the other dead code of section 9 are not reproduced.
- GMMFormerV2's Q2 (``gauss_centred``), Q3 (``mask_padded_frames``), Q5
  (``reuse_query_encoding``) keep by default, with the same fixes.

Shapes: V videos, Q queries, N tokens, L frames (<= 128), K = 32 clips,
M = the most captions of a video in the batch, d hidden size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from method.losses.evidential import EvidentialTerms
from method.models.students import register
from method.models.students.base import Student, StudentConfig, setting
from method.models.students.blocks import (
    FFNAttentionLayer,
    LinearLayer,
    PositionalEncoding,
    buckets_allowed,
    encode_pooled_query,
    init_normal_weights,
    pad_frames,
    pad_positions,
    relu_dropout,
    run_bucketed,
    stacked_branches,
)
from method.models.students.gmmformer import GMMFamilyConfig
from method.models.students.gmmformer_v2 import GMMFormerV2QueryLosses, state_sizes

HOLMES_WIDTHS = (None, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # e_attns.0..7 (None = no Gaussian)
HOLMES_CLIPS, HOLMES_FRAMES = 32, 128  # the fusion heads predict weights per absolute position
MASK_VALUE = -1e10


@dataclass
class HolmesNetConfig(GMMFamilyConfig):
    """The Holmes network's settings (the registered student's ``Config``; flags ``--<field>``).

    Defaults are the authors' TVR values; other collections: ``HolmesStudent.collection_defaults``.
    """

    sft_factor: float = setting(0.09, "Holmes: temperature of the DyGMM branch-fusion softmax (sft_factor)")
    mask_padded_frames: bool = setting(False, "GMMFormerV2, fixes quirk Q3: padded frames take no part in the "
                                              "frame-level max (the authors' zeroed padded frames floor every shorter "
                                              "video's frame score at 0)")
    token_valid_positions: bool = setting(False, "Holmes, fixes quirk H2: the DyGMM fusion token averages the valid "
                                                 "positions only (the authors' average includes the padded frames)")


@dataclass
class HolmesLosses(GMMFormerV2QueryLosses):
    """The factors of Holmes' objective: GMMFormerV2's ranking terms (no OT) and the evidential terms."""

    intra_edl_weight: float = setting(0.8, "Holmes: weight of the intra-video evidential loss against the partial-OT "
                                           "pseudo-labels (loss_factor[3]; 0 in the warm-up)")
    edl_weight: float = setting(0.2, "Holmes: weight of each of the three inter-video evidential terms (frame, "
                                     "clip, combined; loss_factor[4])")
    edl_tau: float = setting(0.05, "Holmes: evidence temperature of the inter-video terms, E = exp(tanh(S) / tau)")
    edl_intra_video_tau: float = setting(0.06, "Holmes: evidence temperature of the intra-video term")
    division_beta: float = setting(0.3, "Holmes: clamp beta of the query identification thresholds (division_beta)")
    smooth_beta: float = setting(0.2, "Holmes: label-smoothing weight of the ambiguous queries (smooth_beta)")
    pot_scale: float = setting(0.1, "Holmes: entropic scale of the partial OT of the pseudo-labels (pot_scale)")
    pot_prompt_ratio: float = setting(0.3, "Holmes: dustbin value of the partial OT, this quantile of the valid "
                                           "similarities (pot_prompt_ratio)")
    pot_iters: int = setting(50, "Holmes: Sinkhorn iterations of the partial OT")
    pot_minmax_valid_only: bool = setting(False, "Holmes, fixes quirk H3: the partial OT's min-max runs over the "
                                                 "real captions only (the authors' includes the padded ones)")
    warmup_epoch: int = setting(20, "Holmes: first epoch (0-based) of label smoothing and of the intra-video term "
                                    "(warmup_end)")

    def evidential(self) -> EvidentialTerms:
        """The evidential terms' settings (``method.losses.evidential``; no dual-query consistency term)."""
        return EvidentialTerms(**{f.name: getattr(self, f.name) for f in fields(EvidentialTerms)
                                  if f.name != "dc_weight"})


@dataclass
class HolmesConfig(HolmesLosses, HolmesNetConfig):
    """Every setting of a Holmes run as the authors' config has it: the network's (``HolmesNetConfig``), the
    objective's (``HolmesLosses``) and the run's below; defaults are the authors' TVR values (``Configs/tvr.py``).

    Per-collection values: ``COLLECTION_DEFAULTS``. The authors' names are given
    in the help texts (``loss_factor[i]``, ``neg_factor``, ...). The registered
    student takes a ``HolmesNetConfig``; the run's fields are its recipe
    (``method/config/recipes.py`` reads them from ``COLLECTION_DEFAULTS``).
    """

    # data
    collection: str = setting("tvr", "collection: tvr, activitynet or charades")
    visual_feature: str = setting("i3d_resnet", "frame features, FeatureData/<visual_feature>/feature.hdf5")
    visual_input_size: int = setting(3072, "visual feature size (visual_feat_dim; hard-wired per collection, H10)")
    query_input_size: int = setting(768, "RoBERTa token size (q_feat_size)")
    # network (the TVR values of the run; the network's own fields are HolmesNetConfig's)
    input_drop: float = setting(0.2, "dropout of the input projections and positional encodings (input_drop)")
    drop: float = setting(0.2, "dropout inside the attention layers and the fusion head (drop)")
    initializer_range: float = setting(0.02, "std of the normal init of Linear / Embedding weights")
    # inference
    clip_scale_w: float = setting(0.6, "inference weight of the clip-level score")
    frame_scale_w: float = setting(0.4, "inference weight of the frame-level score")
    # ranking losses (GMMFormerV2's)
    margin: float = setting(0.1, "triplet margin")
    hard_pool_size: int = setting(20, "hard-negative pool of the triplet")
    frame_nce_weight: float = setting(0.04, "weight of the frame-level InfoNCE (loss_factor[1]; --nce_weight)")
    dc_weight: float = setting(0.0, "weight of the dual-query consistency term (loss_factor[5]; 0, unused in src/)")
    # training
    lr: float = setting(3e-4, "peak learning rate (BertAdam)")
    n_epoch: int = setting(100, "epochs (also the horizon of the LR schedule)")
    max_es_cnt: int = setting(20, "early stop when the epochs without val SumR improvement exceed this")
    hard_negative_start_epoch: int = setting(20, "epoch from which the triplets use hard negatives")
    seed: int = setting(0, "seed of Python, numpy and torch")
    bsz: int = setting(128, "videos per training batch")
    wd: float = setting(0.01, "BertAdam weight decay (name rule of the released optimiser)")
    lr_warmup_proportion: float = setting(0.01, "LR warm-up fraction of all steps")
    eval_context_bsz: int = setting(100, "videos per evaluation batch (no effect on the numbers)")
    eval_query_bsz: int = setting(50, "captions per evaluation batch, each re-sorted by token count (no effect)")
    reuse_query_encoding: bool = setting(False, "fix Q5: QDL and POT reuse the first query encoding")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "HolmesConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# What differs per collection (HOLMES.md section 7; Configs/{tvr,act,cha}.py): TVR's values are the fields' defaults
# (HolmesNetConfig, HolmesLosses, HolmesConfig), declared once; the other collections' differences are here. The
# student's collection_defaults and the recipe's values are read from both (``holmes_config``).
COLLECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "tvr": {},
    "activitynet": {
        "visual_feature": "i3d", "visual_input_size": 1024, "query_input_size": 1024,
        "lr": 2.5e-4, "input_drop": 0.31, "drop": 0.31, "margin": 0.2, "sft_factor": 0.6, "max_es_cnt": 10,
        "clip_nce_weight": 0.02, "qdl_weight": 0.003, "qdl_margin": 0.2,
        "intra_edl_weight": 1e-4, "edl_weight": 0.06, "edl_tau": 0.04, "edl_intra_video_tau": 0.08,
    },
    "charades": {
        "visual_feature": "i3d_rgb_lgi", "visual_input_size": 1024, "query_input_size": 1024,
        "lr": 2e-4, "input_drop": 0.25, "drop": 0.25, "margin": 0.2, "sft_factor": 0.6,
        "clip_nce_weight": 0.02, "qdl_weight": 0.003, "qdl_margin": 0.2,
        "intra_edl_weight": 9e-4, "edl_weight": 0.06, "edl_tau": 0.08, "edl_intra_video_tau": 0.08,
    },
}
COLLECTION_ALIASES = {"act": "activitynet", "cha": "charades"}  # the authors' -d values


def holmes_config(collection: str = "tvr", cls: type = HolmesConfig, defaults: Optional[dict] = None,
                  **overrides) -> HolmesConfig:
    """The config of ``collection`` (``tvr``, ``activitynet`` / ``act``, ``charades`` / ``cha``) with ``overrides``."""
    collection = COLLECTION_ALIASES.get(collection, collection)
    table = COLLECTION_DEFAULTS if defaults is None else defaults
    if collection not in table:
        raise ValueError(f"no Holmes defaults for collection {collection!r}; expected one of {sorted(table)}")
    return cls(**{"collection": collection, **table[collection], **overrides})


def config_from_model_config(cfg: StudentConfig, cls: type = HolmesConfig) -> HolmesConfig:
    """A student configuration (``HolmesNetConfig``, ``StudentConfig`` or one of the GMMFormer family's) -> a Holmes
    config (``cls``): the fields of ``cls`` it has; the others keep ``cls``'s defaults."""
    names = {f.name for f in fields(cls)}
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in names})


# The run's values that are flags of every recipe, not the student's settings: {HolmesConfig field: flag}. The
# recipe table (``method/config/recipes.py``) takes them from here, so COLLECTION_DEFAULTS is their one source.
RUN_FLAGS = {"lr": "lr", "n_epoch": "n_epoch", "max_es_cnt": "max_es_cnt", "input_drop": "input_drop",
             "drop": "drop", "margin": "margin", "hard_pool_size": "hard_pool_size", "frame_nce_weight": "nce_weight",
             "hard_negative_start_epoch": "hard_negative_start_epoch", "seed": "seed", "bsz": "bsz", "wd": "wd",
             "lr_warmup_proportion": "lr_warmup_proportion", "clip_scale_w": "clip_scale_w",
             "frame_scale_w": "frame_scale_w", "reuse_query_encoding": "reuse_query_encoding"}


def recipe_collection_values(collection: str, cls: type = HolmesConfig, defaults: Optional[dict] = None) -> dict:
    """The recipe's flag values for ``collection`` (``RUN_FLAGS`` of the collection's config)."""
    cfg = holmes_config(collection, cls, defaults)
    return {flag: getattr(cfg, name) for name, flag in RUN_FLAGS.items()}


def student_collection_values(collection: str, cls: type = HolmesConfig, defaults: Optional[dict] = None,
                              net: type = HolmesNetConfig, losses: type = HolmesLosses) -> dict:
    """The student's own settings (network ``net`` beyond ``StudentConfig``, and objective ``losses``) for
    ``collection``."""
    cfg = holmes_config(collection, cls, defaults)
    common = {f.name for f in fields(StudentConfig)}
    own = [f.name for f in fields(net) if f.name not in common] + [f.name for f in fields(losses)]
    return {name: getattr(cfg, name) for name in own}


# The authors' config keys (``Configs/*.py``, stored as ``config`` in best.ckpt) that map one to one.
AUTHORS_CONFIG_KEYS = {
    "dataset_name": "collection", "collection": "collection", "visual_feature": "visual_feature",
    "visual_feat_dim": "visual_input_size", "q_feat_size": "query_input_size", "max_desc_l": "max_desc_l",
    "max_ctx_l": "max_ctx_l", "map_size": "map_size", "hidden_size": "hidden_size", "n_heads": "n_heads",
    "input_drop": "input_drop", "drop": "drop", "sft_factor": "sft_factor", "initializer_range": "initializer_range",
    "clip_scale_w": "clip_scale_w", "frame_scale_w": "frame_scale_w", "margin": "margin",
    "hard_pool_size": "hard_pool_size", "edl_tau": "edl_tau", "edl_intra_video_tau": "edl_intra_video_tau",
    "division_beta": "division_beta", "smooth_beta": "smooth_beta", "pot_scale": "pot_scale",
    "pot_prompt_ratio": "pot_prompt_ratio", "lr": "lr", "n_epoch": "n_epoch", "max_es_cnt": "max_es_cnt",
    "warmup_epoch": "warmup_epoch", "hard_negative_start_epoch": "hard_negative_start_epoch", "seed": "seed",
    "wd": "wd", "lr_warmup_proportion": "lr_warmup_proportion", "bsz": "bsz",
    "eval_context_bsz": "eval_context_bsz", "eval_query_bsz": "eval_query_bsz",
}
LOSS_FACTOR_FIELDS = ("clip_nce_weight", "frame_nce_weight", "qdl_weight", "intra_edl_weight", "edl_weight",
                      "dc_weight")  # loss_factor[0..5]
NEG_FACTOR_FIELDS = ("qdl_margin", "qdl_scale", "qdl_focal")  # neg_factor[0..2]


def authors_checkpoint_student(state_keys) -> Optional[str]:
    """"holmes_dual", "holmes" or None from the keys of an authors' ``state_dict`` (``module.`` allowed).

    Test this before GMMFormerV2's rule (``weight_token``): Holmes has it too; its branches are ``e_attns``.
    """
    keys = {k[len("module."):] if k.startswith("module.") else k for k in state_keys}
    if not any(k.startswith("clip_encoder.e_attns.") for k in keys):
        return None
    return "holmes_dual" if "text_weight_fc.0.weight" in keys else "holmes"


def authors_checkpoint_values(ckpt: dict) -> tuple[str, dict, dict]:
    """(kind, sizes, stored) of an authors' ``best.ckpt``: "holmes" or "holmes_dual", the sizes its tensors fix,
    and the settings its ``config`` stores (``AUTHORS_CONFIG_KEYS``, ``loss_factor``, ``neg_factor``; our names,
    the collection's aliases resolved)."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    kind = authors_checkpoint_student(state)
    if kind is None:
        raise ValueError("not a Holmes state dict (no clip_encoder.e_attns.* keys)")
    config = dict(ckpt.get("config") or {})
    stored = {ours: config[theirs] for theirs, ours in AUTHORS_CONFIG_KEYS.items() if theirs in config}
    for key, names in (("loss_factor", LOSS_FACTOR_FIELDS), ("neg_factor", NEG_FACTOR_FIELDS)):
        if key in config:
            stored.update(zip(names, (float(x) for x in config[key])))
    if "collection" in stored:
        stored["collection"] = COLLECTION_ALIASES.get(stored["collection"], stored["collection"])
    sizes = state_sizes(state)
    return kind, sizes, stored


def config_from_authors_checkpoint(ckpt: dict) -> HolmesConfig:
    """The config of an authors' ``best.ckpt`` (``{config, epoch, model_val, state_dict, optimizer}``).

    The collection's defaults, then the stored ``config`` (``AUTHORS_CONFIG_KEYS``, ``loss_factor``,
    ``neg_factor``), then the sizes read from the tensors (``authors_checkpoint_values``). The
    ``state_dict`` keys load as they are (after stripping ``module.``) into the student.
    """
    from method.models.students.holmes_dual import COLLECTION_DEFAULTS as DUAL_DEFAULTS
    from method.models.students.holmes_dual import HolmesDualConfig

    kind, sizes, values = authors_checkpoint_values(ckpt)
    cls, table = (HolmesDualConfig, DUAL_DEFAULTS) if kind == "holmes_dual" else (HolmesConfig, COLLECTION_DEFAULTS)
    collection = values.get("collection", "tvr")
    base = {"collection": collection, **table.get(collection, {})}
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in {**base, **values, **sizes}.items() if k in names})


# --------------------------------------------------------------------------- #
# network pieces
# --------------------------------------------------------------------------- #
class HolmesDyGMMBlock(nn.Module):
    """Holmes' DyGMM block (HOLMES.md 2.2): eight attention layers ``e_attns.0..7`` fused per position.

    The fusion token is computed from the data: the mean over positions of the
    mean over branches of the branch outputs (quirk H2: padded positions
    included; ``valid_token`` averages the valid ones only). The shared
    cross-attention ``ca`` reads each branch with that token; the head
    ``layer2(Dropout(ReLU(layer1(.))))`` gives ``frame_len`` logits per branch;
    a softmax over branches (temperature ``tau``) weights them at each position.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, frame_len: int, tau: float, centred: bool = False,
                 valid_token: bool = False, widths: tuple = HOLMES_WIDTHS):
        super().__init__()
        self.e_attns = nn.ModuleList([FFNAttentionLayer(dim, n_heads, dropout, 4 * dim, w, centred) for w in widths])
        self.ca = FFNAttentionLayer(dim, n_heads, dropout, dim)
        self.layer1 = nn.Linear(dim, dim)
        self.layer2 = nn.Linear(dim, frame_len)
        self.dropout = nn.Dropout(dropout)
        self.frame_len = frame_len
        self.tau = tau
        self.valid_token = valid_token

    @property
    def widths(self) -> tuple:
        return tuple(layer.self.width for layer in self.e_attns)

    def branches(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, L, d), mask: (B, L) or None -> (8, B, L, d).

        L = frame_len, or (only with ``valid_token``) L < frame_len with a mask:
        positions L.. are then taken as masked and are not computed.
        """
        length = x.shape[1]
        if length != self.frame_len and not (self.valid_token and mask is not None and length < self.frame_len):
            raise ValueError(f"Holmes DyGMM block of frame_len {self.frame_len} got length {length}")
        return stacked_branches(self, self.e_attns, x, lambda layer, y: layer(y, mask, gauss_length=self.frame_len))

    def token(self, outs: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """outs: (8, B, L, d) -> the fusion token (B, 1, d): mean over branches, then over positions."""
        mean = outs.mean(dim=0)  # (B, L, d)
        if not self.valid_token or mask is None:
            return mean.mean(dim=1, keepdim=True)
        weights = mask.to(mean.dtype)
        return (torch.einsum("bl,bld->bd", weights, mean) / weights.sum(dim=1, keepdim=True).clamp(min=1))[:, None]

    def branch_tokens(self, outs: torch.Tensor, token: torch.Tensor,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """outs: (8, B, L, d), token: (B, 1, d), mask: (B, L) or None -> (B, 8, d): one ``ca`` call for all branches."""
        k, b, length, d = outs.shape
        memory = outs.reshape(k * b, length, d)
        keys = None if mask is None else mask.repeat(k, 1)
        tokens = self.ca(token.expand(b, 1, d).repeat(k, 1, 1), keys, memory)  # (K B, 1, d), branch-major
        return tokens.view(k, b, d).transpose(0, 1)

    def fusion_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, 8, d) -> Z (B, 8, frame_len), before the temperature."""
        return self.layer2(relu_dropout(self.dropout, self.layer1(tokens), ()))

    def parts(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Every intermediate: branches (8, B, L, d), token (B, 1, d), ca_tokens (B, 8, d), logits (B, 8, F), out."""
        outs = self.branches(x, mask)
        token = self.token(outs, mask)
        tokens = self.branch_tokens(outs, token, mask)
        logits = self.fusion_logits(tokens)
        weights = torch.softmax(logits[..., :x.shape[1]] / self.tau, dim=1)  # (B, 8, L): over branches
        out = torch.einsum("bkl,kbld->bld", weights, outs)
        return {"branches": outs, "token": token, "ca_tokens": tokens, "logits": logits, "out": out}

    def forward(self, x: torch.Tensor, weight_token: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, L, d), mask: (B, L) or None -> (B, L, d). ``weight_token`` is accepted and ignored (H1)."""
        return self.parts(x, mask)["out"]


def level_scores(query: torch.Tensor, feats: torch.Tensor, mask: Optional[torch.Tensor] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine, dot) video scores (Q, V): max over the positions of ``feats`` (V, P, d) counted by ``mask`` (V, P).

    Without a mask every position counts (zero rows score 0: the floor of quirk Q3).
    """
    v, p, d = feats.shape
    cos = (F.normalize(query, dim=-1, eps=1e-12) @ F.normalize(feats, dim=-1, eps=1e-12).reshape(v * p, d).t())
    raw = query @ feats.reshape(v * p, d).t()
    cos, raw = cos.view(-1, v, p), raw.view(-1, v, p)
    if mask is not None:
        pad = (mask == 0)[None]
        cos, raw = cos.masked_fill(pad, MASK_VALUE), raw.masked_fill(pad, MASK_VALUE)
    return cos.amax(dim=-1), raw.amax(dim=-1)


def fused_scores(clip_scores: torch.Tensor, frame_scores: torch.Tensor, clip_w: float = 0.6,
                 frame_w: float = 0.4) -> torch.Tensor:
    """Inference score ``clip_w * S_c + frame_w * S_f`` (Holmes 0.6 / 0.4; dual-query 0.5 / 0.5)."""
    return clip_w * clip_scores + frame_w * frame_scores


@torch.no_grad()
def eval_scores(student: "HolmesStudent", query_batches, video_batches, weights: Optional[tuple] = None
                ) -> torch.Tensor:
    """The authors' evaluator (``compute_context_info``, ``compute_query2ctx_info``): fused scores (Q, V).

    query_batches: iterable of (text (Qb, N, Dq), text_mask (Qb, N)), rows in this order;
    video_batches: iterable of (frames (Vb, L, Dv), frame_mask (Vb, L), clips (Vb, 32, Dv)), columns in
    this order. Every video is encoded once (its features do not depend on its batch), frame masks
    padded to 128 and concatenated; ``weights[0] S_c + weights[1] S_f`` (default: the student's
    config, 0.6 / 0.4 for Holmes, 0.5 / 0.5 for the dual-query variant).
    """
    cfg = student.hcfg
    clip_w, frame_w = (cfg.clip_scale_w, cfg.frame_scale_w) if weights is None else weights
    clips, frames, masks = [], [], []
    for f, m, c in video_batches:
        enc = student.encode_video(f, m, c)
        clips.append(enc["clip"])
        frames.append(enc["frame"])
        masks.append(F.pad(m, (0, cfg.max_ctx_l - m.shape[1])))
    clips, frames, masks = torch.cat(clips), torch.cat(frames), torch.cat(masks)
    rows = []
    for text, text_mask in query_batches:
        q = student.encode_query(text, text_mask)
        s_c, _ = level_scores(q, clips)
        s_f, _ = student.frame_level_scores(q, frames, masks, text, text_mask)
        rows.append(fused_scores(s_c, s_f, clip_w, frame_w))
    return torch.cat(rows)


# --------------------------------------------------------------------------- #
# the student
# --------------------------------------------------------------------------- #
@register
class HolmesStudent(Student):
    """Holmes_Net: query encoder (projection, positions, FFN attention layer, pooling), clip and frame DyGMM blocks.

    Registered as ``--student holmes`` (``--recipe holmes``): its ``Config`` is the network's settings, its
    ``Losses`` the objective's factors, ``collection_defaults`` the authors' values per collection.
    """

    name = "holmes"
    unused_parameters = ("weight_token",)  # H1
    Config = HolmesNetConfig
    Losses = HolmesLosses
    collection_defaults = {c: student_collection_values(c) for c in COLLECTION_DEFAULTS}
    levels = ("clip", "frame")
    needs_clips = True
    kd_levels = ("frame", "clip")
    level_weights = {"clip": 0.6, "frame": 0.4}
    config_class = HolmesConfig

    def __init__(self, cfg, with_query_proj: bool = True):
        """``cfg``: a ``HolmesConfig``, or a ``HolmesNetConfig`` / ``StudentConfig`` (mapped by
        ``config_from_model_config``; the objective's fields then keep their TVR defaults, which only
        ``training_forward``'s partial OT reads: training through ``method.train`` reads ``Losses``)."""
        super().__init__(cfg)
        hcfg = cfg if isinstance(cfg, HolmesConfig) else config_from_model_config(cfg, self.config_class)
        self.check_config(hcfg)
        self.hcfg = hcfg
        d, h, drop, centred = hcfg.hidden_size, hcfg.n_heads, hcfg.drop, hcfg.gauss_centred
        self.weight_token = nn.Parameter(torch.randn(1, 1, d))  # N(0, 1); unused (H1)
        self.query_pos_embed = PositionalEncoding(hcfg.max_desc_l, d, hcfg.input_drop)
        self.clip_pos_embed = PositionalEncoding(hcfg.max_ctx_l, d, hcfg.input_drop)
        self.frame_pos_embed = PositionalEncoding(hcfg.max_ctx_l, d, hcfg.input_drop)
        if with_query_proj:
            self.query_input_proj = LinearLayer(hcfg.query_input_size, d, hcfg.input_drop)
        self.query_encoder = FFNAttentionLayer(d, h, drop, 4 * d)
        self.clip_input_proj = LinearLayer(hcfg.visual_input_size, d, hcfg.input_drop)
        self.clip_encoder = HolmesDyGMMBlock(d, h, drop, hcfg.map_size, hcfg.sft_factor, centred,
                                             hcfg.token_valid_positions)
        self.frame_input_proj = LinearLayer(hcfg.visual_input_size, d, hcfg.input_drop)
        self.frame_encoder_1 = HolmesDyGMMBlock(d, h, drop, hcfg.max_ctx_l, hcfg.sft_factor, centred,
                                                hcfg.token_valid_positions)
        self.modular_vector_mapping = nn.Linear(d, 1, bias=False)

    @classmethod
    def from_config(cls, hcfg: HolmesConfig, with_query_proj: bool = True, init: bool = True) -> "HolmesStudent":
        """Build from a ``HolmesConfig``; ``init`` applies the authors' initialisation (``blocks.init_normal_weights``)."""
        student = cls(hcfg, with_query_proj)
        if init:
            init_normal_weights(student, hcfg.initializer_range)
        return student

    # ---- encoders --------------------------------------------------------- #
    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> (Q, d)."""
        return encode_pooled_query(self, feat, mask, input_proj)

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: (V, 32, Dv) -> C (V, 32, d)."""
        return self.clip_encoder(self.clip_pos_embed(self.clip_input_proj(clips)))

    def frame_block_input(self, frames: torch.Tensor, frame_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the frame block's input (V, 128, d), its mask (V, 128)): frames and mask zero-padded to 128 first.

        With ``token_valid_positions`` the padding beyond the batch's L frames is
        not needed (those positions take no part in anything) and is skipped.
        """
        length = frame_mask.shape[1]
        if length > self.hcfg.max_ctx_l:
            raise ValueError(f"{length} frames exceed max_ctx_l {self.hcfg.max_ctx_l}")
        if not self.hcfg.token_valid_positions:
            frames, frame_mask = pad_frames(frames, frame_mask, self.hcfg.max_ctx_l)
        return self.frame_pos_embed(self.frame_input_proj(frames)), frame_mask

    def encode_frames(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames: (V, L <= 128, Dv), frame_mask: (V, L) -> F (V, 128, d), padded rows 0.

        By default every video runs at 128 positions (its padded positions' outputs enter the fusion token, H2).
        With ``token_valid_positions`` they take no part in anything, so on the fast path each video runs cut to
        its own length, in length buckets (``blocks.run_bucketed``)."""
        def encode(m: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            x, mask = self.frame_block_input(f, m)
            return self.frame_encoder_1(x, None, mask).masked_fill(mask[..., None] == 0, 0.0)

        if self.hcfg.token_valid_positions and buckets_allowed(self):
            f = run_bucketed(encode, frame_mask, frames)
        else:
            f = encode(frame_mask, frames)
        return pad_positions(f, self.hcfg.max_ctx_l)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """-> {"clip": (V, 32, d), "frame": (V, 128, d) with padded rows 0}."""
        if clips is None:
            raise ValueError("the Holmes student needs the 32 mean-pooled clips (clip_feat)")
        return {"clip": self.encode_clips(clips), "frame": self.encode_frames(frames, frame_mask)}

    def score_masks(self, frame_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"clip": (V, 32) ones, "frame": (V, 128)}: ones (the zero rows floor the max at 0, Q3), or the padded
        frame mask with ``mask_padded_frames``."""
        v, pad = frame_mask.shape[0], self.hcfg.max_ctx_l - frame_mask.shape[1]
        if self.hcfg.mask_padded_frames:
            frame = F.pad(frame_mask, (0, pad))
        else:
            frame = frame_mask.new_ones(v, self.hcfg.max_ctx_l)
        return {"clip": frame_mask.new_ones(v, self.hcfg.map_size), "frame": frame}

    # ---- the authors' training forward (HOLMES.md section 3) -------------- #
    def frame_level_scores(self, queries: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor,
                           text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_f, U_f) (Q, V) of the encoded frames (V, 128, d); the dual-query student overrides it."""
        return level_scores(queries, frames, self.score_masks(frame_mask)["frame"])

    def training_forward(self, frames: torch.Tensor, frame_mask: torch.Tensor, text: torch.Tensor,
                         text_mask: torch.Tensor, clips: torch.Tensor, labels: torch.Tensor,
                         with_pot: bool = True) -> dict[str, torch.Tensor]:
        """``Holmes_Net.forward``: scores, the second query pass and the partial-OT pseudo-labels.

        Returns {"clip_scores" S_c, "clip_dots" U_c, "frame_scores" S_f, "frame_dots" U_f (Q, V),
        "queries" q, "queries2" q' (Q, d), "clip_feat" (V, 32, d), "frame_feat" (V, 128, d)} and, with
        ``with_pot`` (needed from the warm-up's end on), "intra_sim" Ŝ (V, M, 32), "pot_plan" Γ,
        "caption_mask" m (V, M), "pot_prompt", "pot_log_plan", "pot_mass" (section 4).
        """
        from method.losses.evidential import batch_pot, pack_by_video  # losses import no model code

        q = self.encode_query(text, text_mask)
        videos = self.encode_video(frames, frame_mask, clips)
        s_c, u_c = level_scores(q, videos["clip"], self.score_masks(frame_mask)["clip"])
        s_f, u_f = self.frame_level_scores(q, videos["frame"], frame_mask, text, text_mask)
        q2 = q if self.hcfg.reuse_query_encoding else self.encode_query(text, text_mask)
        out = {"clip_scores": s_c, "clip_dots": u_c, "frame_scores": s_f, "frame_dots": u_f, "queries": q,
               "queries2": q2, "clip_feat": videos["clip"], "frame_feat": videos["frame"]}
        if with_pot:
            clip_pack, text_pack, caption_mask = pack_by_video(videos["clip"], q2, labels)
            pot = batch_pot(clip_pack, text_pack, caption_mask, scale=self.hcfg.pot_scale,
                            prompt_ratio=self.hcfg.pot_prompt_ratio, iters=self.hcfg.pot_iters,
                            minmax_valid_only=self.hcfg.pot_minmax_valid_only)
            out.update(intra_sim=pot["sim"], pot_plan=pot["plan"], caption_mask=caption_mask,
                       pot_prompt=pot["prompt"], pot_log_plan=pot["log_plan"], pot_mass=pot["mass"])
        return out

    @classmethod
    def n_clips(cls, cfg: HolmesNetConfig) -> int:
        return cfg.map_size

    @classmethod
    def objective_terms(cls, losses: HolmesLosses, nce_weight: float) -> dict:
        """GMMFormerV2's ranking terms without its OT, and the evidential terms (whole batch)."""
        return {"nce_weights": {"clip": losses.clip_nce_weight, "frame": nce_weight},
                "qdl": losses.query_diversity(focal=losses.qdl_focal), "evidential": losses.evidential()}

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.hidden_size % cfg.n_heads:
            raise ValueError(f"--hidden_size {cfg.hidden_size} is not a multiple of --n_heads {cfg.n_heads}")
        if cfg.max_ctx_l != HOLMES_FRAMES:
            raise ValueError(f"holmes needs --max_ctx_l {HOLMES_FRAMES} (its fusion head is per frame position), "
                             f"got {cfg.max_ctx_l}")
        if cfg.map_size != HOLMES_CLIPS:
            raise ValueError(f"holmes needs --map_size {HOLMES_CLIPS} (its fusion head is per clip position), "
                             f"got {cfg.map_size}")


__all__ = ["HOLMES_WIDTHS", "HolmesNetConfig", "HolmesLosses", "HolmesConfig", "RUN_FLAGS",
           "recipe_collection_values", "student_collection_values", "COLLECTION_DEFAULTS", "holmes_config", "config_from_model_config",
           "AUTHORS_CONFIG_KEYS", "authors_checkpoint_student", "authors_checkpoint_values", "config_from_authors_checkpoint",
           "HolmesDyGMMBlock", "HolmesStudent", "level_scores", "fused_scores", "eval_scores"]
