"""The training objective: every branch's retrieval terms and the distillation term, weighted and named.

One objective serves every recipe: DL-DKD (two branches of a student, the
teacher distilled into the inheritance branch), DL-DKD++ (soft-target
InfoNCE) and the GMMFormer family (one branch, NCE and triplet at the clip and
frame levels, query diversity, V2's matching loss), and DL-DKD on a
GMMFormer-family student (both). Shapes: Q queries and V videos of the global
batch, P positions of a level, R / C the queries / videos a process owns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from method.losses.distill import kl_distill_loss
from method.losses.evidential import EvidentialTerms, evidential_terms
from method.losses.query import ot_loss, qdl_v1, qdl_v2
from method.losses.ranking import (
    draw_t2v,
    draw_v2t,
    hard_count,
    nce_t2v_terms,
    nce_v2t_terms,
    soft_nce_reduce,
    soft_nce_t2v_terms,
    soft_nce_v2t_terms,
    t2v_negatives,
    triplet_t2v_terms,
    triplet_v2t_terms,
    v2t_negatives,
)

SUFFIX = {"inheritance": "inh", "exploration": "exp"}


@dataclass
class BatchLayout:
    """The global training batch, and the part of its (Q, V) score matrices a process owns.

    Attributes:
        labels: (Q,) int64 video of every query of the global batch.
        video_mask: (V, L) float frame mask of every video, 1 = valid frame.
        rows: the queries this process owns (their t2v and KL terms).
        cols: the videos this process owns (their v2t terms).
        level_masks: {level: (V, P)} positions counted by each level's video-level max
            (default: the frame level counts the valid frames).
    """

    labels: Tensor
    video_mask: Tensor
    rows: slice
    cols: slice
    level_masks: Dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if not self.level_masks:
            self.level_masks = {"frame": self.video_mask}

    @classmethod
    def whole(cls, labels: Tensor, video_mask: Tensor, level_masks: Optional[Dict[str, Tensor]] = None) -> "BatchLayout":
        """One process: every row and column."""
        return cls(labels, video_mask, slice(0, len(labels)), slice(0, len(video_mask)), dict(level_masks or {}))

    @property
    def num_queries(self) -> int:
        return len(self.labels)

    @property
    def is_whole(self) -> bool:
        """Whether the owned rows and columns are the whole batch (one process, or a replicated objective)."""
        return (self.rows, self.cols) == (slice(0, self.num_queries), slice(0, self.num_videos))

    @property
    def num_videos(self) -> int:
        return len(self.video_mask)


@dataclass
class LocalBatch:
    """What the terms of a video and its own captions need, from this process's share alone.

    Attributes:
        queries2: {branch: (R, d)} the second query encoding (query diversity, OT).
        clips: {branch: (C, K, d)} clip embeddings of the share's videos (OT).
        labels: (R,) int64 index of each query's video within the share.
        num_queries: Q of the global batch (the query-diversity mean).
        num_pairs: matched (caption, clip) pairs of the global batch (the OT mean).
    """

    queries2: Dict[str, Tensor]
    clips: Dict[str, Tensor]
    labels: Tensor
    num_queries: int
    num_pairs: int


@dataclass
class TeacherScores:
    """Teacher scores of the rows / columns a process owns (no gradient).

    Attributes:
        frame_cos: (R, P) per-position cosine of each owned query with its own video (KL term).
        kd_mask: (R, P) float, positions the KL runs over (1 = valid).
        video_raw_rows: (R, V) raw-dot video-level scores of the owned queries (soft targets), or None.
        video_raw_cols: (Q, C) the same for the owned videos' columns, or None.
    """

    frame_cos: Tensor
    kd_mask: Tensor
    video_raw_rows: Optional[Tensor] = None
    video_raw_cols: Optional[Tensor] = None


@dataclass(frozen=True)
class SoftNCEOptions:
    """DL-DKD++ soft alignment (``--label_style soft``) and the authors' quirks it keeps by default."""

    leak: float = 1e-12
    detach_self_targets: bool = False
    keep_parts: bool = False


@dataclass(frozen=True)
class QueryDiversity:
    """The GMMFormer family's query-diversity loss: weight, (margin, scale), and V2's focal exponent (None: V1 form)."""

    weight: float
    margin: float
    scale: float
    focal: Optional[float] = None


@dataclass(frozen=True)
class Objective:
    """The retrieval terms of one branch of a student.

    Attributes:
        nce_weights: {level: weight of its InfoNCE term}, in loss order; every
            level also has a triplet term (weight 1).
        qdl: the query-diversity term, or None.
        ot_weight: weight of GMMFormerV2's matching (OT) term (0: none).
        kd_level: the level whose per-position scores distil the teacher.
        evidential: Holmes' evidential terms (on the clip and frame levels), or None.
        output_terms: terms computed from the student's extra forward outputs, or None: a callable
            ``(outputs {key: tensor} of one branch, labels (Q,), generator) -> {name: weighted scalar}`` over the
            whole batch, drawing any noise from ``generator`` (RAL's MIL and VIB over the Gaussians' samples,
            ``method.losses.ral.SampleTerms``).
    """

    nce_weights: Mapping[str, float] = field(default_factory=lambda: {"frame": 0.04})
    qdl: Optional[QueryDiversity] = None
    ot_weight: float = 0.0
    kd_level: str = "frame"
    evidential: Optional[EvidentialTerms] = None
    output_terms: Optional[Callable[..., Dict[str, Tensor]]] = None

    @property
    def needs_second_queries(self) -> bool:
        """Whether the terms read a second encoding of the queries (query diversity, OT, partial OT)."""
        return self.qdl is not None or self.ot_weight > 0 or self.evidential is not None

    @property
    def whole_batch(self) -> bool:
        """Whether a term needs the whole batch in one place (the evidential terms: the Dempster-Shafer
        evidence over the batch's videos, the query sets' thresholds and median over all its queries; the
        output terms: RAL's MIL softmax over every video's samples); several processes then each compute the
        whole objective (``GlobalBatch.build(replicate=True)``)."""
        return self.evidential is not None or self.output_terms is not None


class DLDKDLoss(nn.Module):
    """The training objective, returned as a dict of already weighted terms.

    Per branch and level: a triplet term and an InfoNCE term (times its
    weight; with ``soft`` DL-DKD++'s soft-target InfoNCE: the teacher's targets
    for the inheritance branch, the branch's own scores for the exploration
    branch); per branch the query-diversity and OT terms of the objective;
    ``kd`` (times ``kd_factor``) whenever teacher scores are given. Names: a
    one-level student (DL-DKD) gives ``trip_inh``, ``nce_inh``, ``kd``,
    ``trip_exp``, ``nce_exp``; a student with levels gives ``<level>_nce``,
    ``<level>_trip``, ``qdl``, ``ot`` (the GMMFormer authors' names), with
    ``_inh`` / ``_exp`` appended when there are two branches; an objective
    with ``evidential`` terms adds ``intra_edl``, ``frame_edl``, ``clip_edl``,
    ``combine_edl`` (Holmes' names); ``output_terms`` add theirs (RAL: ``mil``,
    ``vib``); both need the whole batch (``Objective.whole_batch``). The training
    loop sums the values. Every value is this process's contribution: the
    sum over the processes of a distributed run is the global term.
    """

    def __init__(self, margin: float, hard_pool_size: int, nce_weight: float = 0.04, kd_temperature: float = 0.2,
                 soft: Optional[SoftNCEOptions] = None, objective: Optional[Objective] = None):
        super().__init__()
        self.margin = margin
        self.hard_pool_size = hard_pool_size
        self.kd_temperature = kd_temperature
        self.soft = soft
        self.objective = objective or Objective(nce_weights={"frame": nce_weight})

    def forward(self, scores: Mapping[str, Mapping[str, object]], layout: BatchLayout,
                teacher: Optional[TeacherScores] = None, kd_factor: float = 0.0, hard_negative: bool = False,
                alpha: float = 1.0, beta: float = 1.0, generator: Optional[torch.Generator] = None,
                local: Optional[LocalBatch] = None, warmup_end: bool = False,
                outputs: Optional[Mapping[str, Mapping[str, Tensor]]] = None) -> Dict[str, Tensor]:
        """Compute the weighted loss terms.

        Args:
            scores: {branch: {level: pair}} for 'inheritance' (and 'exploration'); a pair has
                ``rows`` (the owned queries against all videos) and ``cols`` (all
                queries against the owned videos), each with ``video_scores``,
                ``video_scores_raw`` and (rows) ``frame_scores`` (R, V, P), uncounted
                positions at -1e10. One process: ``rows`` and ``cols`` are the same.
            layout: labels, masks and the owned rows / columns.
            teacher: teacher scores, or None without a teacher.
            kd_factor: multiplier of the distillation term (schedule value of the epoch).
            hard_negative: whether the triplet terms use hard negatives.
            alpha, beta: soft-alignment schedule values of the epoch (soft only).
            generator: generator of the negative draws (None: the default generator).
            local: the share's second query encodings and clips (needed by query diversity and OT).
            warmup_end: whether the evidential terms' warm-up is over (pseudo-labels, smoothing).
            outputs: the student's extra forward outputs {key: {branch: tensor}} of the whole batch
                (``DLDKD.output_keys``), read by the objective's ``output_terms``.

        Returns:
            Dict of scalar tensors (see the class docstring for the names).
        """
        obj = self.objective
        if obj.whole_batch and not layout.is_whole:
            raise ValueError("the evidential and output terms need the whole batch (GlobalBatch.build(replicate=True))")
        two_branches = "exploration" in scores
        legacy = list(obj.nce_weights) == ["frame"]
        terms: Dict[str, Tensor] = {}
        for name in ("inheritance", "exploration"):
            if name not in scores:
                continue
            suffix = f"_{SUFFIX[name]}" if (two_branches or legacy) else ""
            for level, nce_weight in obj.nce_weights.items():
                pair = scores[name][level]
                prefix = "" if legacy else f"{level}_"
                trip = self._triplet(pair, layout, hard_negative, generator)
                nce = nce_weight * self._nce(name, pair, layout, teacher, alpha, beta)
                if legacy:
                    terms[f"trip{suffix}"], terms[f"nce{suffix}"] = trip, nce
                else:
                    terms[f"{prefix}nce{suffix}"], terms[f"{prefix}trip{suffix}"] = nce, trip
            if obj.needs_second_queries:
                if local is None or name not in local.queries2:
                    raise ValueError("query diversity and OT need the second query encoding (local.queries2)")
                queries2 = local.queries2[name]
            if obj.qdl is not None:
                q = obj.qdl
                value = (qdl_v1(queries2, local.labels, q.margin, q.scale, num_queries=local.num_queries)
                         if q.focal is None else
                         qdl_v2(queries2, local.labels, q.margin, q.scale, q.focal, num_queries=local.num_queries))
                terms[f"qdl{suffix}"] = q.weight * value
            if obj.ot_weight > 0:
                value = ot_loss(queries2, local.clips[name], local.labels, num_pairs=local.num_pairs)
                terms[f"ot{suffix}"] = obj.ot_weight * value
            if obj.evidential is not None:
                value = evidential_terms(scores[name]["clip"].rows.video_scores, scores[name]["frame"].rows.video_scores,
                                         local.clips[name], queries2, local.labels, obj.evidential, warmup_end)
                terms.update({f"{k}{suffix}": v for k, v in value.items()})
            if obj.output_terms is not None:
                if outputs is None:
                    raise ValueError("the objective's output terms need the student's forward outputs (outputs)")
                value = obj.output_terms({k: v[name] for k, v in outputs.items()}, layout.labels, generator)
                terms.update({f"{k}{suffix}": v for k, v in value.items()})
            if name == "inheritance" and teacher is not None:
                rows = scores[name][obj.kd_level].rows
                row_labels = layout.labels[layout.rows]
                student = rows.frame_scores[torch.arange(len(row_labels), device=row_labels.device), row_labels]
                terms["kd"] = kd_factor * kl_distill_loss(student, teacher.frame_cos, teacher.kd_mask,
                                                          self.kd_temperature)
        return terms

    def _triplet(self, pair, layout: BatchLayout, hard_negative: bool, generator) -> Tensor:
        """t2v terms of the owned rows plus v2t terms of the owned columns; draws for the whole batch, as released."""
        labels, rows, cols = layout.labels, layout.rows, layout.cols
        num_q, num_v = layout.num_queries, layout.num_videos
        device = labels.device
        row_labels = labels[rows]
        video_index = torch.arange(num_v, device=device)[cols]
        t2v_draw = draw_t2v(num_q, num_v, hard_negative, self.hard_pool_size, device, generator)[rows]
        t2v_neg = t2v_negatives(pair.rows.video_scores, row_labels, hard_negative, self.hard_pool_size, t2v_draw)
        t2v = triplet_t2v_terms(pair.rows.video_scores, row_labels, t2v_neg, self.margin).sum() / num_q
        v2t_draw = draw_v2t(num_v, hard_negative, device, generator)
        v2t_neg = v2t_negatives(pair.cols.video_scores, labels, video_index, hard_negative,
                                None if v2t_draw is None else v2t_draw[cols])
        return t2v + triplet_v2t_terms(pair.cols.video_scores, labels, video_index, v2t_neg, self.margin).sum() / num_v

    def _nce(self, name, pair, layout: BatchLayout, teacher, alpha, beta) -> Tensor:
        labels, row_labels = layout.labels, layout.labels[layout.rows]
        num_q, num_v = layout.num_queries, layout.num_videos
        query_index = torch.arange(num_q, device=labels.device)[layout.rows]
        video_index = torch.arange(num_v, device=labels.device)[layout.cols]
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


@dataclass(frozen=True)
class LossSettings:
    """Everything ``DLDKDLoss`` is built from (``method.config.settings`` fills it from the flags)."""

    margin: float
    hard_pool_size: int
    kd_temperature: float
    objective: Objective
    soft: Optional[SoftNCEOptions] = None  # DL-DKD++ soft alignment, or None (hard InfoNCE)

    def build(self) -> "DLDKDLoss":
        return DLDKDLoss(self.margin, self.hard_pool_size, kd_temperature=self.kd_temperature, soft=self.soft,
                         objective=self.objective)
