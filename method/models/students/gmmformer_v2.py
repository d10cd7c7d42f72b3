"""The GMMFormerV2 student (arXiv 2405.13824; docs/gmmformer.md, "The GMMFormerV2 network").

Clip level: the 32 clips through one DyGMM block. Frame level: the frames
padded to exactly ``max_ctx_l`` = 128, one masked DyGMM block, padded rows
zeroed; scored per position. Both blocks share the token ``weight_token``.
Parameter names equal the authors' state-dict names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from method.models.students import register
from method.models.students.base import Student, setting
from method.models.students.blocks import (
    DyGMMBlock,
    FFNAttentionLayer,
    LinearLayer,
    PositionalEncoding,
    buckets_allowed,
    encode_pooled_query,
    pad_frames,
    run_bucketed,
)
from method.models.students.gmmformer import GMMFamilyConfig, GMMFormerLosses

V2_CLIPS, V2_FRAMES = 32, 128  # the fusion heads predict weights per absolute position (quirk Q4)


@dataclass
class GMMFormerV2Config(GMMFamilyConfig):
    """GMMFormerV2's settings."""

    sft_factor: float = setting(0.09, "GMMFormerV2: temperature of the softmax that fuses the Gaussian branches per "
                                      "position")
    mask_padded_frames: bool = setting(False, "GMMFormerV2, fixes quirk Q3: padded frames take no part in the "
                                              "frame-level max (the authors' zeroed padded frames floor every shorter "
                                              "video's frame score at 0)")


@dataclass
class GMMFormerV2QueryLosses(GMMFormerLosses):
    """GMMFormer's factors with GMMFormerV2's query-diversity loss (its weight and focal exponent); Holmes'
    ranking terms are these (it has no matching loss)."""

    qdl_weight: float = setting(8e-5, "GMMFormer family: weight of the query-diversity loss (0: off)")
    qdl_focal: float = setting(1.0, "GMMFormerV2's query-diversity loss: exponent of its focal factor (1 + cos)^x "
                                    "(neg_factor[2])")


@dataclass
class GMMFormerV2Losses(GMMFormerV2QueryLosses):
    """The factors of GMMFormerV2's objective: GMMFormer's, the focal exponent and the matching (OT) weight."""

    ot_weight: float = setting(0.09, "GMMFormerV2: weight of the caption-to-clip matching (Hungarian / OT) loss")


@register
class GMMFormerV2Student(Student):
    """Query: projection, positions, one FFN attention layer, attention pooling. Video: clip and frame DyGMM blocks."""

    name = "gmmformer_v2"
    Config = GMMFormerV2Config
    Losses = GMMFormerV2Losses
    collection_defaults = {  # the authors' Configs/act.py and cha.py (TVR's are the fields' defaults)
        "activitynet": {"clip_nce_weight": 0.02, "nce_weight": 0.04, "qdl_weight": 0.003, "qdl_margin": 0.2,
                        "ot_weight": 0.11, "sft_factor": 0.6},
        "charades": {"clip_nce_weight": 0.02, "nce_weight": 0.04, "qdl_weight": 0.003, "qdl_margin": 0.2,
                     "ot_weight": 0.1, "sft_factor": 0.6},
    }
    levels = ("clip", "frame")
    needs_clips = True
    kd_levels = ("frame", "clip")
    level_weights = {"clip": 0.7, "frame": 0.3}

    def __init__(self, cfg: GMMFormerV2Config, with_query_proj: bool = True):
        super().__init__(cfg)
        d, h, drop, centred = cfg.hidden_size, cfg.n_heads, cfg.drop, cfg.gauss_centred
        self.weight_token = nn.Parameter(torch.randn(1, 1, d))  # N(0, 1); the wrapper's init leaves it
        self.query_pos_embed = PositionalEncoding(cfg.max_desc_l, d, cfg.input_drop)
        self.clip_pos_embed = PositionalEncoding(cfg.max_ctx_l, d, cfg.input_drop)
        self.frame_pos_embed = PositionalEncoding(cfg.max_ctx_l, d, cfg.input_drop)
        if with_query_proj:
            self.query_input_proj = LinearLayer(cfg.query_input_size, d, cfg.input_drop)
        self.query_encoder = FFNAttentionLayer(d, h, drop, 4 * d)
        self.clip_input_proj = LinearLayer(cfg.visual_input_size, d, cfg.input_drop)
        self.clip_encoder = DyGMMBlock(d, h, drop, cfg.map_size, cfg.sft_factor, centred)
        self.frame_input_proj = LinearLayer(cfg.visual_input_size, d, cfg.input_drop)
        self.frame_encoder_1 = DyGMMBlock(d, h, drop, cfg.max_ctx_l, cfg.sft_factor, centred)
        self.modular_vector_mapping = nn.Linear(d, 1, bias=False)

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> (Q, d)."""
        return encode_pooled_query(self, feat, mask, input_proj)

    def _pad_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(V, L) -> (V, max_ctx_l), padded with zeros."""
        length = frame_mask.shape[1]
        if length > self.cfg.max_ctx_l:
            raise ValueError(f"{length} frames exceed --max_ctx_l {self.cfg.max_ctx_l}")
        return F.pad(frame_mask, (0, self.cfg.max_ctx_l - length))

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """frames: (V, L <= 128, Dv), frame_mask: (V, L), clips: (V, 32, Dv)
        -> {"clip": (V, 32, d), "frame": (V, 128, d) with padded rows 0}."""
        c = self.clip_encoder(self.clip_pos_embed(self.clip_input_proj(clips)), self.weight_token)
        # The authors pad the frames to 128 before the block ("off", the reference, does too). The positions
        # beyond a video's last frame are masked keys and zeroed at the end, so on the fast path each video runs
        # cut to its own length, in length buckets, with the reference's dropout masks drawn at 128 positions
        # (blocks.run_bucketed): the same numbers, less work.
        self._pad_mask(frame_mask)  # checks L <= max_ctx_l

        def encode(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            x = self.frame_encoder_1(self.frame_pos_embed(self.frame_input_proj(x)), self.weight_token, m)
            return x.masked_fill(m[..., None] == 0, 0.0)

        if buckets_allowed(self):
            return {"clip": c, "frame": run_bucketed(encode, frame_mask, frames, length=self.cfg.max_ctx_l)}
        frames, frame_mask = pad_frames(frames, frame_mask, self.cfg.max_ctx_l)
        return {"clip": c, "frame": encode(frame_mask, frames)}

    def score_masks(self, frame_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"clip": (V, 32) ones, "frame": (V, 128)}: ones (the zeroed padded rows floor the max at 0, quirk Q3),
        or the padded frame mask with ``cfg.mask_padded_frames``."""
        v = frame_mask.shape[0]
        if self.cfg.mask_padded_frames:
            frame = self._pad_mask(frame_mask)
        else:
            frame = frame_mask.new_ones(v, self.cfg.max_ctx_l)
        return {"clip": frame_mask.new_ones(v, self.cfg.map_size), "frame": frame}

    @classmethod
    def n_clips(cls, cfg: GMMFormerV2Config) -> int:
        return cfg.map_size

    @classmethod
    def objective_terms(cls, losses: GMMFormerV2Losses, nce_weight: float) -> dict:
        return {"nce_weights": {"clip": losses.clip_nce_weight, "frame": nce_weight},
                "qdl": losses.query_diversity(focal=losses.qdl_focal), "ot_weight": losses.ot_weight}

    @classmethod
    def check_config(cls, cfg: GMMFormerV2Config) -> None:
        super().check_config(cfg)
        if cfg.max_ctx_l != V2_FRAMES:
            raise ValueError(f"gmmformer_v2 needs --max_ctx_l {V2_FRAMES} (its fusion head is per frame position), "
                             f"got {cfg.max_ctx_l}")
        if cfg.map_size != V2_CLIPS:
            raise ValueError(f"gmmformer_v2 needs --map_size {V2_CLIPS} (its fusion head is per clip position), "
                             f"got {cfg.map_size}")


def state_sizes(state: dict) -> dict[str, int]:
    """The network sizes of a GMMFormerV2-based state dict (the authors' names, no ``module.``): input sizes,
    hidden size, tokens, frame positions and clips (Holmes' and RAL's ``best.ckpt``)."""
    query_pos = state["query_pos_embed.position_embeddings.weight"]
    return {"visual_input_size": int(state["frame_input_proj.LayerNorm.weight"].shape[0]),
            "query_input_size": int(state["query_input_proj.LayerNorm.weight"].shape[0]),
            "hidden_size": int(query_pos.shape[1]), "max_desc_l": int(query_pos.shape[0]),
            "max_ctx_l": int(state["frame_encoder_1.layer2.weight"].shape[0]),
            "map_size": int(state["clip_encoder.layer2.weight"].shape[0])}
