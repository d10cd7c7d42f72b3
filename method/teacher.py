"""The frozen teacher, seen through its precomputed features.

DL-DKD's teacher is CLIP ViT-B/32, but nothing here depends on that: the
teacher is a pair of feature files (one vector per caption, one per frame)
named by flags (``--teacher_query_file``, ``--teacher_video_file``), so another
precomputed teacher is a data change. ``method.extract_teacher`` writes such
files from raw videos.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import MASK_VALUE, frame_dot


class PrecomputedTeacher:
    """Teacher scores from precomputed sentence and frame features; no gradient."""

    @torch.no_grad()
    def frame_scores(self, query_feat: torch.Tensor, video_feat: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        """Cosine of each caption with every frame of its own video (the distillation target).

        query_feat: (Q, Dt) sentence vectors; video_feat: (V, L, Dt) frames
        (padded frames are masked by the loss with the student's frame mask);
        labels: (Q,) video index of each caption -> (Q, L).
        """
        q = F.normalize(query_feat.float(), dim=-1, eps=1e-12)
        frames = F.normalize(video_feat.float(), dim=-1, eps=1e-12).index_select(0, labels)  # (Q, L, Dt)
        return torch.bmm(frames, q[:, :, None]).squeeze(-1)

    @torch.no_grad()
    def video_scores_raw(self, query_feat: torch.Tensor, video_feat: torch.Tensor,
                         video_mask: torch.Tensor) -> torch.Tensor:
        """DL-DKD++ soft targets: raw dot products, max over the valid frames (the student's mask).

        The features are used as stored: no normalisation, no temperature.
        query_feat: (Q, Dt); video_feat: (V, L, Dt); video_mask: (V, L) -> (Q, V).
        """
        dots = frame_dot(query_feat.float(), video_feat.float())  # (Q, V, L)
        return dots.masked_fill_((video_mask == 0)[None], MASK_VALUE).amax(dim=-1)
