"""The DL-DKD student (ICCV 2023): one attention block per modality, scored per frame.

Parameter names equal the released ones without their ``B_`` / ``A_`` branch
prefix, so released checkpoints map by prefix (``method.models.checkpoint``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from method.models.students import register
from method.models.students.base import Student, StudentConfig
from method.models.students.blocks import AttentionBlock, LinearLayer, PositionalEncoding, attention_pool


@register
class DLDKDStudent(Student):
    """Query: projection, positions, one attention block, attention pooling. Video: the same, then a Linear per frame."""

    name = "dldkd"
    shares_query_proj = True  # the released model encodes exploration queries with B_query_input_proj

    def __init__(self, cfg: StudentConfig, with_query_proj: bool = True):
        super().__init__(cfg)
        d = cfg.hidden_size
        if with_query_proj:
            self.query_input_proj = LinearLayer(cfg.query_input_size, d, cfg.input_drop)
        self.query_pos_embed = PositionalEncoding(cfg.max_desc_l, d, cfg.input_drop)
        self.query_encoder = AttentionBlock(d, cfg.n_heads, cfg.drop)
        self.modular_vector_mapping = nn.Linear(d, 1, bias=False)
        self.frame_input_proj = LinearLayer(cfg.visual_input_size, d, cfg.input_drop)
        self.frame_pos_embed = PositionalEncoding(cfg.max_ctx_l, d, cfg.input_drop)
        self.frame_encoder = AttentionBlock(d, cfg.n_heads, cfg.drop)
        self.mapping_linear = nn.Linear(d, d)

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> (Q, d)."""
        x = (input_proj or self.query_input_proj)(feat)
        x = self.query_encoder(self.query_pos_embed(x), mask)
        return attention_pool(self.modular_vector_mapping, x, mask)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """frames: (V, L, Dv), frame_mask: (V, L) -> {"frame": (V, L, d)}."""
        x = self.frame_encoder(self.frame_pos_embed(self.frame_input_proj(frames)), frame_mask)
        return {"frame": self.mapping_linear(x)}
