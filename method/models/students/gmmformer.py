"""The GMMFormer student (Wang et al., AAAI 2024; docs/gmmformer.md, "The GMMFormer network").

Clip level: the 32 mean-pooled clips through two GMM blocks (no mask).
Frame level: the frames through two masked GMM blocks, attention-pooled to
one vector per video. Parameter names equal the authors' state-dict names.
``--robust_alignment`` (ours, off by default) adds RAL's text and video
Gaussians on its caption tokens and the frame encoder's per-frame outputs
(``probabilistic``, docs/students.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from method.losses.objective import QueryDiversity
from method.models.students import register
from method.models.students.base import Student, StudentConfig, setting
from method.models.students.blocks import (
    GMMAttentionLayer,
    GMMBlock,
    LinearLayer,
    PositionalEncoding,
    attention_pool,
    buckets_allowed,
    encode_pooled_query,
    run_bucketed,
)
from method.models.students.probabilistic import (
    RobustAlignmentConfig,
    RobustAlignmentHooks,
    RobustAlignmentLosses,
    robust_objective,
)


@dataclass
class GMMFamilyConfig(StudentConfig):
    """The settings every GMMFormer-family student has."""

    map_size: int = setting(32, "GMMFormer family: clips per video (mean-pooled frames)")
    gauss_centred: bool = setting(False, "GMMFormer family, fixes quirk Q2: centre each Gaussian on its own key "
                                         "position (i / (L - 1)) instead of i / L (changes results)")


@dataclass
class GMMFormerConfig(RobustAlignmentConfig, GMMFamilyConfig):
    """GMMFormer's settings (and the ``robust_alignment`` switch, ours, default off)."""

    gauss_own_length: bool = setting(False, "GMMFormer, fixes quirk Q1: size each video's frame Gaussians by its own "
                                            "length, not the padded batch length (changes results)")
    eval_context_bsz: int = setting(100, "GMMFormer: videos encoded together at evaluation; their frame Gaussians are "
                                         "sized by the group's longest video (quirk Q1), so this changes its numbers")


@dataclass
class GMMFormerLosses:
    """The factors of GMMFormer's objective (the authors' loss_factor and neg_factor)."""

    clip_nce_weight: float = setting(0.05, "GMMFormer family: weight of the clip-level InfoNCE term")
    qdl_weight: float = setting(0.001, "GMMFormer family: weight of the query-diversity loss (0: off)")
    qdl_margin: float = setting(0.15, "query-diversity loss: margin (neg_factor[0])")
    qdl_scale: float = setting(32.0, "query-diversity loss: scale (neg_factor[1])")

    def query_diversity(self, focal=None):
        """The query-diversity term, or None when its weight is 0."""
        if self.qdl_weight <= 0:
            return None
        return QueryDiversity(self.qdl_weight, self.qdl_margin, self.qdl_scale, focal)


@dataclass
class GMMFormerStudentLosses(RobustAlignmentLosses, GMMFormerLosses):
    """The gmmformer student's objective factors: GMMFormer's, and MIL and VIB's (they act only with
    ``--robust_alignment``; the other GMMFormer-family students derive from ``GMMFormerLosses``)."""


@register
class GMMFormerStudent(RobustAlignmentHooks, Student):
    """Query: projection, positions, one attention layer, attention pooling. Video: clip and frame GMM encoders.

    With ``robust_alignment``: the Gaussian heads (``robust_alignment.*``) on the query encoder's tokens and the
    frame encoder's per-frame outputs, ``video_outputs`` their means and log sigmas, MIL and VIB in the objective.
    """

    name = "gmmformer"
    Config = GMMFormerConfig
    Losses = GMMFormerStudentLosses
    collection_defaults = {  # the authors' Configs/act.py and cha.py (TVR's are the fields' defaults)
        "activitynet": {"clip_nce_weight": 0.02, "nce_weight": 0.04, "qdl_weight": 0.015, "qdl_margin": 0.2},
        "charades": {"clip_nce_weight": 0.02, "nce_weight": 0.02, "qdl_weight": 0.005, "qdl_margin": 0.15},
    }
    levels = ("clip", "frame")
    needs_clips = True
    kd_levels = ("clip",)  # the frame level is one pooled vector per video
    kd_levels_note = " (its frame branch pools each video to one vector)"
    level_weights = {"clip": 0.7, "frame": 0.3}

    def __init__(self, cfg: GMMFormerConfig, with_query_proj: bool = True):
        super().__init__(cfg)
        d, h, drop, centred = cfg.hidden_size, cfg.n_heads, cfg.drop, cfg.gauss_centred
        self.query_pos_embed = PositionalEncoding(cfg.max_desc_l, d, cfg.input_drop)
        self.clip_pos_embed = PositionalEncoding(cfg.max_ctx_l, d, cfg.input_drop)
        self.frame_pos_embed = PositionalEncoding(cfg.max_ctx_l, d, cfg.input_drop)
        if with_query_proj:
            self.query_input_proj = LinearLayer(cfg.query_input_size, d, cfg.input_drop)
        self.query_encoder = GMMAttentionLayer(d, h, drop)
        self.clip_input_proj = LinearLayer(cfg.visual_input_size, d, cfg.input_drop)
        self.clip_encoder = GMMBlock(d, h, drop, centred)
        self.clip_encoder_2 = GMMBlock(d, h, drop, centred)
        self.frame_input_proj = LinearLayer(cfg.visual_input_size, d, cfg.input_drop)
        self.frame_encoder_1 = GMMBlock(d, h, drop, centred)
        self.frame_encoder_2 = GMMBlock(d, h, drop, centred)
        self.modular_vector_mapping = nn.Linear(d, 1, bias=False)
        self.modular_vector_mapping_2 = nn.Linear(d, 1, bias=False)
        self.init_robust_alignment(cfg)

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> (Q, d). ``robust_alignment``: the same layers, whole length (no
        buckets), their per-token outputs kept for ``train_outputs``."""
        if not self.cfg.robust_alignment:
            return encode_pooled_query(self, feat, mask, input_proj)
        x = self.query_pos_embed((input_proj or self.query_input_proj)(feat))
        x = self.query_encoder(x, mask)
        self.keep_tokens(x)
        return attention_pool(self.modular_vector_mapping, x, mask)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """frames: (V, L, Dv), frame_mask: (V, L), clips: (V, K, Dv) -> {"clip": (V, K, d), "frame": (V, 1, d)}.

        The frame Gaussians span the padded length L of the batch (quirk Q1), or
        each video's own length with ``cfg.gauss_own_length``.
        """
        c = self.clip_pos_embed(self.clip_input_proj(clips))
        c = self.clip_encoder_2(self.clip_encoder(c))
        length = frames.shape[1]  # the Gaussians' length (Q1), whatever length the videos run at

        def frame_outputs(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            lengths = m.sum(dim=1).long() if self.cfg.gauss_own_length else None
            x = self.frame_pos_embed(self.frame_input_proj(x))
            return self.frame_encoder_2(self.frame_encoder_1(x, m, lengths, length), m, lengths, length)

        def encode(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return attention_pool(self.modular_vector_mapping_2, frame_outputs(m, x), m)

        if self.cfg.robust_alignment:  # the per-frame outputs (V, L, d) are kept: the whole length, no buckets
            x = frame_outputs(frame_mask, frames)
            self.keep_frames(x)
            return {"clip": c, "frame": attention_pool(self.modular_vector_mapping_2, x, frame_mask)[:, None]}
        # Frames beyond a video's last one are masked keys and weigh 0 in the pooling, and the Gaussians are
        # those of the padded length cut: each video may run cut to its own length (blocks.FAST_PATH).
        if buckets_allowed(self):
            f = run_bucketed(encode, frame_mask, frames, pad_length=False)
        else:
            f = encode(frame_mask, frames)
        return {"clip": c, "frame": f[:, None]}

    def score_masks(self, frame_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """All 32 clips and the one pooled frame vector count: {"clip": (V, K), "frame": (V, 1)} ones."""
        ones = frame_mask.new_ones
        v = frame_mask.shape[0]
        return {"clip": ones(v, self.cfg.map_size), "frame": ones(v, 1)}

    def eval_video_group(self) -> Optional[int]:
        """The authors' evaluation groups of ``eval_context_bsz`` videos (frame vectors depend on each other, Q1)."""
        return None if self.cfg.gauss_own_length else self.cfg.eval_context_bsz

    @classmethod
    def padding_changes_numbers(cls, cfg: GMMFormerConfig) -> bool:
        return not cfg.gauss_own_length  # quirk Q1: the frame Gaussians span the padded length

    @classmethod
    def n_clips(cls, cfg: GMMFormerConfig) -> int:
        return cfg.map_size

    @classmethod
    def objective_terms(cls, losses: GMMFormerLosses, nce_weight: float) -> dict:
        return {"nce_weights": {"clip": losses.clip_nce_weight, "frame": nce_weight},
                "qdl": losses.query_diversity()}

    @classmethod
    def objective_for(cls, cfg: GMMFormerConfig, losses: GMMFormerStudentLosses, nce_weight: float) -> dict:
        """GMMFormer's terms, plus MIL and VIB with ``robust_alignment``."""
        return robust_objective(cls.objective_terms(losses, nce_weight), cfg, losses)
