"""The training objective: every branch's retrieval terms, the distillation term, named and weighted."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from .distill import kl_distill_loss
from .ranking import (draw_t2v, draw_v2t, hard_count, nce_t2v_terms, nce_v2t_terms, soft_nce_reduce,
                      soft_nce_t2v_terms, soft_nce_v2t_terms, t2v_negatives, triplet_t2v_terms, triplet_v2t_terms,
                      v2t_negatives)

@dataclass
class BatchLayout:
    """The global training batch, and the part of its (Q, V) score matrix a process owns.

    Attributes:
        labels: (Q,) int64 video of every query of the global batch.
        video_mask: (V, L) float mask of every video, 1 = valid frame.
        rows: the queries this process owns (their t2v and KL terms).
        cols: the videos this process owns (their v2t terms).
    """

    labels: Tensor
    video_mask: Tensor
    rows: slice
    cols: slice

    @classmethod
    def whole(cls, labels: Tensor, video_mask: Tensor) -> "BatchLayout":
        """One process: every row and column."""
        return cls(labels, video_mask, slice(0, len(labels)), slice(0, len(video_mask)))

    @property
    def num_queries(self) -> int:
        return len(self.labels)

    @property
    def num_videos(self) -> int:
        return len(self.video_mask)


@dataclass
class TeacherScores:
    """Teacher scores of the rows / columns a process owns (no gradient).

    Attributes:
        frame_cos: (R, L) per-frame cosine of each owned query with its own video (KL term).
        video_raw_rows: (R, V) raw-dot video-level scores of the owned queries (soft targets), or None.
        video_raw_cols: (Q, C) the same for the owned videos' columns, or None.
    """

    frame_cos: Tensor
    video_raw_rows: Optional[Tensor] = None
    video_raw_cols: Optional[Tensor] = None


@dataclass(frozen=True)
class SoftNCEOptions:
    """DL-DKD++ soft alignment (``--label_style soft``) and the authors' quirks it keeps by default."""

    leak: float = 1e-12
    detach_self_targets: bool = False
    keep_parts: bool = False


class DLDKDLoss(nn.Module):
    """The training objective, returned as a dict of already weighted terms.

    Terms: ``trip_inh``, ``nce_inh`` (times ``nce_weight``), ``kd`` (times
    ``kd_factor``; present whenever teacher scores are given), and, when the
    exploration branch exists, ``trip_exp``, ``nce_exp``. The training loop
    sums the values. With ``soft`` the InfoNCE terms are DL-DKD++'s soft-target
    ones (teacher targets for the inheritance branch, the branch's own scores
    for the exploration branch). Every value is this process's contribution:
    the sum over the processes of a distributed run is the global term.
    """

    def __init__(self, margin: float, hard_pool_size: int, nce_weight: float = 0.04, kd_temperature: float = 0.2,
                 soft: Optional[SoftNCEOptions] = None):
        super().__init__()
        self.margin = margin
        self.hard_pool_size = hard_pool_size
        self.nce_weight = nce_weight
        self.kd_temperature = kd_temperature
        self.soft = soft

    def forward(self, scores: Mapping[str, object], layout: BatchLayout, teacher: Optional[TeacherScores] = None,
                kd_factor: float = 0.0, hard_negative: bool = False, alpha: float = 1.0, beta: float = 1.0,
                generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Compute the weighted loss terms.

        Args:
            scores: {'inheritance': pair, 'exploration': pair (optional)}; a pair has
                ``rows`` (the owned queries against all videos) and ``cols`` (all
                queries against the owned videos), each with ``video_scores``,
                ``video_scores_raw`` and (rows) ``frame_scores`` (R, V, L), padded
                frames at -1e10. One process: ``rows`` and ``cols`` are the same.
            layout: labels, video mask and the owned rows / columns.
            teacher: teacher scores, or None without a teacher.
            kd_factor: multiplier of the distillation term (schedule value of the epoch).
            hard_negative: whether the triplet terms use hard negatives.
            alpha, beta: soft-alignment schedule values of the epoch (soft only).
            generator: generator of the negative draws (None: the default generator).

        Returns:
            Dict of scalar tensors: 'trip_inh', 'nce_inh', ['kd'], ['trip_exp', 'nce_exp'].
        """
        labels, rows, cols = layout.labels, layout.rows, layout.cols
        num_q, num_v = layout.num_queries, layout.num_videos
        device = labels.device
        row_labels = labels[rows]
        query_index = torch.arange(num_q, device=device)[rows]
        video_index = torch.arange(num_v, device=device)[cols]
        terms: Dict[str, Tensor] = {}
        for name, suffix in (("inheritance", "inh"), ("exploration", "exp")):
            if name not in scores:
                continue
            pair = scores[name]
            # Triplet: every process draws for the whole batch, in the released order, and keeps its part.
            t2v_draw = draw_t2v(num_q, num_v, hard_negative, self.hard_pool_size, device, generator)[rows]
            t2v_neg = t2v_negatives(pair.rows.video_scores, row_labels, hard_negative, self.hard_pool_size, t2v_draw)
            t2v = triplet_t2v_terms(pair.rows.video_scores, row_labels, t2v_neg, self.margin).sum() / num_q
            v2t_draw = draw_v2t(num_v, hard_negative, device, generator)
            v2t_neg = v2t_negatives(pair.cols.video_scores, labels, video_index, hard_negative,
                                    None if v2t_draw is None else v2t_draw[cols])
            v2t = triplet_v2t_terms(pair.cols.video_scores, labels, video_index, v2t_neg, self.margin).sum() / num_v
            terms[f"trip_{suffix}"] = t2v + v2t
            terms[f"nce_{suffix}"] = self.nce_weight * self._nce(name, pair, layout, teacher, query_index,
                                                                  video_index, alpha, beta)
            if name == "inheritance" and teacher is not None:
                student = pair.rows.frame_scores[torch.arange(len(row_labels), device=device), row_labels]
                kd = kl_distill_loss(student, teacher.frame_cos, layout.video_mask[row_labels], self.kd_temperature)
                terms["kd"] = kd_factor * kd
        return terms

    def _nce(self, name, pair, layout, teacher, query_index, video_index, alpha, beta) -> Tensor:
        labels, row_labels = layout.labels, layout.labels[layout.rows]
        num_q, num_v = layout.num_queries, layout.num_videos
        raw_rows, raw_cols = pair.rows.video_scores_raw, pair.cols.video_scores_raw
        if self.soft is None:
            return (nce_t2v_terms(raw_rows, row_labels).sum() / num_q
                    + nce_v2t_terms(raw_cols, labels, video_index).sum() / num_v)
        if name == "inheritance":
            if teacher is None or teacher.video_raw_rows is None:
                raise ValueError("soft-target InfoNCE needs the teacher's video scores for the inheritance branch")
            sims_rows, sims_cols = teacher.video_raw_rows, teacher.video_raw_cols
        elif self.soft.detach_self_targets:
            sims_rows, sims_cols = raw_rows.detach(), raw_cols.detach()
        else:  # as released: the exploration targets are its own scores, gradients flow through them
            sims_rows, sims_cols = raw_rows, raw_cols
        t2v = soft_nce_t2v_terms(raw_rows, sims_rows, row_labels, beta, query_index < hard_count(alpha, num_q))
        v2t = soft_nce_v2t_terms(raw_cols, sims_cols, labels, video_index, beta,
                                 video_index < hard_count(alpha, num_v), self.soft.leak)
        return soft_nce_reduce(t2v, query_index, v2t, video_index, num_q, num_v, alpha, self.soft.keep_parts)
