"""The DL-DKD student (ICCV 2023): one attention block per modality, scored per frame.

Parameter names equal the released ones without their ``B_`` / ``A_`` branch
prefix, so released checkpoints map by prefix (``method.models.checkpoint``).
``--robust_alignment`` (ours, off by default) adds RAL's text and video
Gaussians on its caption tokens and frames (``probabilistic``, docs/students.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from method.models.students import register
from method.models.students.base import Student, StudentConfig
from method.models.students.blocks import AttentionBlock, LinearLayer, PositionalEncoding, attention_pool
from method.models.students.probabilistic import (
    RobustAlignmentConfig,
    RobustAlignmentHooks,
    RobustAlignmentLosses,
    robust_objective,
)


@dataclass
class DLDKDConfig(RobustAlignmentConfig, StudentConfig):
    """The DL-DKD student's settings: the common ones and the ``robust_alignment`` switch (ours, default off)."""


@register
class DLDKDStudent(RobustAlignmentHooks, Student):
    """Query: projection, positions, one attention block, attention pooling. Video: the same, then a Linear per frame.

    With ``robust_alignment``: the Gaussian heads (``robust_alignment.*``) on the query encoder's tokens and the
    per-frame outputs, ``video_outputs`` their means and log sigmas, MIL and VIB in the objective (``Losses``).
    """

    name = "dldkd"
    Config = DLDKDConfig
    Losses = RobustAlignmentLosses  # its factors act only with --robust_alignment
    shares_query_proj = True  # the released model encodes exploration queries with B_query_input_proj

    def __init__(self, cfg: StudentConfig, with_query_proj: bool = True):
        super().__init__(cfg)
        d = cfg.hidden_size
        if with_query_proj:
            self.query_input_proj = LinearLayer(cfg.query_input_size, d, cfg.input_drop, keep_input=False)
        self.query_pos_embed = PositionalEncoding(cfg.max_desc_l, d, cfg.input_drop)
        self.query_encoder = AttentionBlock(d, cfg.n_heads, cfg.drop)
        self.modular_vector_mapping = nn.Linear(d, 1, bias=False)
        self.frame_input_proj = LinearLayer(cfg.visual_input_size, d, cfg.input_drop, keep_input=False)
        self.frame_pos_embed = PositionalEncoding(cfg.max_ctx_l, d, cfg.input_drop)
        self.frame_encoder = AttentionBlock(d, cfg.n_heads, cfg.drop)
        self.mapping_linear = nn.Linear(d, d)
        self.init_robust_alignment(cfg)

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> (Q, d)."""
        x = (input_proj or self.query_input_proj)(feat)
        x = self.query_encoder(self.query_pos_embed(x), mask)
        self.keep_tokens(x)
        return attention_pool(self.modular_vector_mapping, x, mask)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """frames: (V, L, Dv), frame_mask: (V, L) -> {"frame": (V, L, d)}."""
        x = self.frame_encoder(self.frame_pos_embed(self.frame_input_proj(frames)), frame_mask)
        x = self.mapping_linear(x)
        self.keep_frames(x)
        return {"frame": x}

    @classmethod
    def objective_for(cls, cfg: DLDKDConfig, losses: RobustAlignmentLosses, nce_weight: float) -> dict:
        """The frame level's NCE and triplet, plus MIL and VIB with ``robust_alignment``."""
        return robust_objective(cls.objective_terms(losses, nce_weight), cfg, losses)
