"""What every student network shares: its configuration and the interface the rest of the code relies on.

A *student* is the network of one branch: a query encoder and a video
encoder into one space of size d. A video is scored at one or more *levels*
(DL-DKD: per frame; the GMMFormer family: 32 clips and the frames), each a
set of positions whose cosine with the query is maxed over. Shapes: V
videos, Q queries, L padded frames (<= max_ctx_l), N padded tokens
(<= max_desc_l), K clips (map_size), Dv / Dq input sizes, d hidden size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Optional

import torch
from torch import nn


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; stored in every checkpoint."""

    visual_input_size: int
    query_input_size: int
    hidden_size: int = 384
    n_heads: int = 4
    max_ctx_l: int = 128
    max_desc_l: int = 30
    input_drop: float = 0.1
    drop: float = 0.1
    share_query_proj: bool = True  # released quirk: exploration uses the inheritance query projection
    single_branch: bool = False  # one branch only (the ablation, and the GMMFormer recipes)
    student: str = "dldkd"  # the branch network (method.models.students registry)
    map_size: int = 32  # clips per video (GMMFormer family)
    sft_factor: float = 0.09  # GMMFormerV2: temperature of the branch-fusion softmax
    gauss_own_length: bool = False  # GMMFormer fix of quirk Q1: Gaussians sized by each video's own length
    gauss_centred: bool = False  # fix of quirk Q2: Gaussian centres on the key grid (a diagonal prior)
    mask_padded_frames: bool = False  # GMMFormerV2 fix of quirk Q3: padded frames leave the frame-level max
    eval_context_bsz: int = 100  # GMMFormer (Q1): videos encoded together at evaluation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Student(nn.Module):
    """Base class of a branch network; subclasses register in ``method.models.students``.

    Class attributes:
        name: registry name (``--student``).
        levels: score levels in loss order, e.g. ``("frame",)`` or ``("clip", "frame")``.
        needs_clips: whether ``encode_video`` reads the (V, K, Dv) mean-pooled clips.
        kd_levels: levels whose positions the teacher's features can be pooled onto
            (distillation over their per-position scores); the first is the default.
        level_weights: inference weight of each level in the branch's score.
    """

    name: ClassVar[str]
    levels: ClassVar[tuple[str, ...]] = ("frame",)
    needs_clips: ClassVar[bool] = False
    kd_levels: ClassVar[tuple[str, ...]] = ("frame",)
    level_weights: ClassVar[dict[str, float]] = {"frame": 1.0}

    def __init__(self, cfg: ModelConfig, with_query_proj: bool = True):
        super().__init__()
        self.cfg = cfg

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> one vector per query (Q, d).

        ``input_proj`` replaces the branch's own query input projection (the
        released ICCV model's sharing between branches).
        """
        raise NotImplementedError

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """frames: (V, L, Dv), frame_mask: (V, L), clips: (V, K, Dv) or None -> {level: (V, P_level, d)}."""
        raise NotImplementedError

    def score_masks(self, frame_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{level: (V, P_level) float mask} of the positions the video-level max runs over (1 = counted)."""
        return {"frame": frame_mask}

    def eval_video_group(self) -> Optional[int]:
        """Videos whose encodings depend on each other at evaluation (they must be encoded as one batch), or None."""
        return None

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        """Raise ValueError naming the flag when ``cfg`` cannot build this student."""
