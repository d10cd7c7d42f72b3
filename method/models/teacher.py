"""The frozen teachers, seen through their precomputed features.

DL-DKD's teacher is CLIP ViT-B/32, but nothing here depends on that: a
teacher is a pair of feature files (one vector per caption, one per frame)
named by flags (``--teacher_query_file`` / ``--teacher_video_file``, or
``--teachers NAME,...`` for several), so another precomputed teacher is a
data change. ``method.extract_teacher`` and ``method.extraction.prepare`` write such files.

Several teachers travel through the data concatenated along the feature axis
(``dims`` gives each one's size); their scores are computed per teacher and
stacked on a leading axis of size K. How their distributions are combined is
in ``method.losses.distill`` (the KL target) and ``mixture_scores`` (the
DL-DKD++ soft targets): the mean of the teachers' softmax distributions.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from method.losses.distill import mixture_log_softmax
from method.models.model import MASK_VALUE, frame_dot


class PrecomputedTeacher:
    """Teacher scores from precomputed sentence and frame features; no gradient.

    ``dims``: the feature size of each teacher when several are concatenated
    (None or one entry: a single teacher, scores without the teacher axis).
    """

    def __init__(self, dims: Optional[Sequence[int]] = None):
        self.dims = list(dims) if dims is not None and len(dims) > 1 else None

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] if self.dims is None else list(torch.split(x, self.dims, dim=-1))

    def _stack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if self.dims is None else torch.stack(parts)

    @torch.no_grad()
    def frame_scores(self, query_feat: torch.Tensor, video_feat: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        """Cosine of each caption with every frame of its own video (the distillation target).

        query_feat: (Q, Dt) sentence vectors; video_feat: (V, L, Dt) frames
        (padded frames are masked by the loss with the student's frame mask);
        labels: (Q,) video index of each caption -> (Q, L), or (K, Q, L) for K teachers.
        """
        out = []
        for q, v in zip(self._split(query_feat.float()), self._split(video_feat.float())):
            q = F.normalize(q, dim=-1, eps=1e-12)
            frames = F.normalize(v, dim=-1, eps=1e-12).index_select(0, labels)  # (Q, L, Dt)
            out.append(torch.bmm(frames, q[:, :, None]).squeeze(-1))
        return self._stack(out)

    @torch.no_grad()
    def video_scores_raw(self, query_feat: torch.Tensor, video_feat: torch.Tensor,
                         video_mask: torch.Tensor) -> torch.Tensor:
        """DL-DKD++ soft targets: raw dot products, max over the valid frames (the student's mask).

        The features are used as stored: no normalisation, no temperature.
        query_feat: (Q, Dt); video_feat: (V, L, Dt); video_mask: (V, L) -> (Q, V), or (K, Q, V).
        """
        out = []
        for q, v in zip(self._split(query_feat.float()), self._split(video_feat.float())):
            dots = frame_dot(q, v)  # (Q, V, L)
            out.append(dots.masked_fill_((video_mask == 0)[None], MASK_VALUE).amax(dim=-1))
        return self._stack(out)


def mixture_scores(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Scores whose softmax over ``dim`` is the mean of K teachers' softmax distributions.

    scores: (K, ...) per teacher -> ``log mean_k softmax(scores_k, dim)`` (..., no K axis); a tensor
    without the teacher axis (one teacher) is returned as it is.
    """
    if scores.dim() == 2:
        return scores
    return mixture_log_softmax(scores, dim)
