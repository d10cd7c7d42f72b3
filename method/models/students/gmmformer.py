"""The GMMFormer student (Wang et al., AAAI 2024; docs/gmmformer.md, "The GMMFormer network").

Clip level: the 32 mean-pooled clips through two GMM blocks (no mask).
Frame level: the frames through two masked GMM blocks, attention-pooled to
one vector per video. Parameter names equal the authors' state-dict names.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from method.models.students import register
from method.models.students.base import ModelConfig, Student
from method.models.students.blocks import GMMAttentionLayer, GMMBlock, LinearLayer, PositionalEncoding, attention_pool


@register
class GMMFormerStudent(Student):
    """Query: projection, positions, one attention layer, attention pooling. Video: clip and frame GMM encoders."""

    name = "gmmformer"
    levels = ("clip", "frame")
    needs_clips = True
    kd_levels = ("clip",)  # the frame level is one pooled vector per video
    level_weights = {"clip": 0.7, "frame": 0.3}

    def __init__(self, cfg: ModelConfig, with_query_proj: bool = True):
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

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> (Q, d)."""
        x = self.query_pos_embed((input_proj or self.query_input_proj)(feat))
        return attention_pool(self.modular_vector_mapping, self.query_encoder(x, mask), mask)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """frames: (V, L, Dv), frame_mask: (V, L), clips: (V, K, Dv) -> {"clip": (V, K, d), "frame": (V, 1, d)}.

        The frame Gaussians span the padded length L of the batch (quirk Q1), or
        each video's own length with ``cfg.gauss_own_length``.
        """
        c = self.clip_pos_embed(self.clip_input_proj(clips))
        c = self.clip_encoder_2(self.clip_encoder(c))
        lengths = frame_mask.sum(dim=1).long() if self.cfg.gauss_own_length else None
        f = self.frame_pos_embed(self.frame_input_proj(frames))
        f = self.frame_encoder_2(self.frame_encoder_1(f, frame_mask, lengths), frame_mask, lengths)
        return {"clip": c, "frame": attention_pool(self.modular_vector_mapping_2, f, frame_mask)[:, None]}

    def score_masks(self, frame_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """All 32 clips and the one pooled frame vector count: {"clip": (V, K), "frame": (V, 1)} ones."""
        ones = frame_mask.new_ones
        v = frame_mask.shape[0]
        return {"clip": ones(v, self.cfg.map_size), "frame": ones(v, 1)}

    def eval_video_group(self) -> Optional[int]:
        """The authors' evaluation groups of ``eval_context_bsz`` videos (frame vectors depend on each other, Q1)."""
        return None if self.cfg.gauss_own_length else self.cfg.eval_context_bsz

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        if cfg.hidden_size % cfg.n_heads:
            raise ValueError(f"--hidden_size {cfg.hidden_size} is not a multiple of --n_heads {cfg.n_heads}")
