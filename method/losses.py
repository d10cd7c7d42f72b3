"""Training losses of DL-DKD as pure functions of score tensors.

Shapes: Q queries (captions) in the batch, V videos, L padded frames.
``labels[q]`` is the index (0..V-1) of query q's video in the batch.

Videos without any query in the batch (never the case in training, where every
video comes with all of its captions) are masked out of the video-to-text terms:
they contribute 0, and the video-to-text sums are still divided by V, which is
what the released InfoNCE does for such videos (the released triplet would give
NaN there).
"""
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Finite stand-in for -inf on padded frames: exp() of it is exactly 0, and,
# unlike -inf, 0 * (it - x) is 0, so masked frames never produce NaN.
_MASK_FILL = -1e10


def _positive_mask(labels: Tensor, num_videos: int) -> Tensor:
    """Bool (Q, V) one-hot mask: ``[q, v]`` is True iff query q belongs to video v."""
    return F.one_hot(labels, num_videos).bool()


def sample_t2v_negatives(scores: Tensor, labels: Tensor, hard_negative: bool, hard_pool_size: int,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw one negative video per query for the text-to-video triplet term.

    Args:
        scores: (Q, V) video-level scores (only read, never differentiated).
        labels: (Q,) int64 positive video of each query.
        hard_negative: draw from the ``min(hard_pool_size, V - 1)`` highest-scoring
            non-positive videos of each query; otherwise from all V - 1 negatives.
        hard_pool_size: size of the hard pool.
        generator: optional torch.Generator on ``scores.device``.

    Returns:
        (Q,) int64 index of the sampled negative video of each query.

    Raises:
        ValueError: fewer than 2 videos, or a hard pool smaller than 1.
    """
    num_queries, num_videos = scores.shape
    if num_videos < 2:
        raise ValueError("the triplet loss needs at least 2 videos in the batch")
    if hard_negative:
        if hard_pool_size < 1:
            raise ValueError(f"hard_pool_size must be >= 1, got {hard_pool_size}")
        pool = min(hard_pool_size, num_videos - 1)
        masked = scores.detach().clone()
        masked[torch.arange(num_queries, device=scores.device), labels] = float("-inf")
        candidates = masked.topk(pool, dim=1).indices  # (Q, pool), never the positive
        pick = torch.randint(0, pool, (num_queries, 1), device=scores.device, generator=generator)
        return candidates.gather(1, pick).squeeze(1)
    # Uniform over the V - 1 other videos: draw in [0, V-1) and skip the positive.
    draw = torch.randint(0, num_videos - 1, (num_queries,), device=scores.device, generator=generator)
    return draw + (draw >= labels).long()


def sample_v2t_negatives(scores: Tensor, labels: Tensor, hard_negative: bool,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """Pick one negative query per video for the video-to-text triplet term.

    Args:
        scores: (Q, V) video-level scores (only read, never differentiated).
        labels: (Q,) int64 positive video of each query.
        hard_negative: take the highest-scoring query of another video; otherwise a
            uniformly random query of another video.
        generator: optional torch.Generator on ``scores.device``.

    Returns:
        (V,) int64 index of the negative query of each video. For a video whose
        queries are all the queries of the batch (no negative exists) the index is
        meaningless; ``triplet_loss`` masks such videos out.
    """
    num_videos = scores.shape[1]
    negative = ~_positive_mask(labels, num_videos).t()  # (V, Q)
    if hard_negative:
        masked = scores.detach().t().masked_fill(~negative, float("-inf"))
        return masked.argmax(dim=1)
    num_neg = negative.sum(dim=1)  # (V,)
    u = torch.rand(num_videos, device=scores.device, generator=generator)
    rank = (u * num_neg).long().clamp(max=(num_neg - 1).clamp(min=0))  # (V,) in [0, num_neg)
    # Stable sort puts each video's negative queries first, in query order.
    order = torch.sort((~negative).to(torch.uint8), dim=1, stable=True).indices  # (V, Q)
    return order.gather(1, rank.unsqueeze(1)).squeeze(1)


def triplet_loss(scores: Tensor, labels: Tensor, margin: float, hard_negative: bool, hard_pool_size: int,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Bidirectional triplet ranking loss on video-level cosine scores.

    text-to-video: ``mean_q max(0, m + S[q, neg_q] - S[q, label_q])`` with ``neg_q``
    from ``sample_t2v_negatives``. video-to-text: ``sum_v max(0, m + S[neg_v, v] - pos_v) / V``
    where ``pos_v`` is the mean score of video v's queries and ``neg_v`` comes from
    ``sample_v2t_negatives``. Videos without a query (or without a negative query)
    contribute 0. The random draws happen in that order (t2v, then v2t), so a
    generator seeded alike reproduces them through the two samplers.

    Args:
        scores: (Q, V) video-level cosine scores.
        labels: (Q,) int64 positive video of each query.
        margin: the margin m.
        hard_negative: use hard negatives (see the samplers).
        hard_pool_size: size of the text-to-video hard pool.
        generator: optional torch.Generator on ``scores.device``.

    Returns:
        Scalar tensor, t2v + v2t.
    """
    num_queries, num_videos = scores.shape
    query_idx = torch.arange(num_queries, device=scores.device)
    pos_scores = scores[query_idx, labels]  # (Q,)

    t2v_neg = sample_t2v_negatives(scores, labels, hard_negative, hard_pool_size, generator)
    t2v = (margin + scores[query_idx, t2v_neg] - pos_scores).clamp(min=0).mean()

    v2t_neg = sample_v2t_negatives(scores, labels, hard_negative, generator)
    positive = _positive_mask(labels, num_videos).to(scores.dtype)  # (Q, V)
    count = positive.sum(dim=0)  # (V,)
    valid = (count > 0) & (count < num_queries)
    pos_mean = (scores * positive).sum(dim=0) / count.clamp(min=1)  # (V,)
    neg = scores[v2t_neg, torch.arange(num_videos, device=scores.device)]  # (V,)
    v2t_terms = (margin + neg - pos_mean).clamp(min=0)
    v2t = torch.where(valid, v2t_terms, torch.zeros_like(v2t_terms)).sum() / num_videos
    return t2v + v2t


def nce_loss(raw_scores: Tensor, labels: Tensor) -> Tensor:
    """InfoNCE on unnormalised video-level scores, text-to-video plus multi-positive video-to-text.

    t2v: ``mean_q [logsumexp_v U[q, v] - U[q, label_q]]``;
    v2t: ``mean_v [logsumexp_q U[q, v] - logsumexp_{q in pos(v)} U[q, v]]``, where a
    video without a query contributes 0 (still counted in the mean, as released).

    Args:
        raw_scores: (Q, V) unnormalised scores U.
        labels: (Q,) int64 positive video of each query.

    Returns:
        Scalar tensor, the sum of the two means.
    """
    num_queries, num_videos = raw_scores.shape
    query_idx = torch.arange(num_queries, device=raw_scores.device)
    t2v = (torch.logsumexp(raw_scores, dim=1) - raw_scores[query_idx, labels]).mean()

    positive = _positive_mask(labels, num_videos)  # (Q, V)
    has_query = positive.any(dim=0)  # (V,)
    # Only columns with a positive are masked, so no logsumexp sees an all -inf column.
    pos_lse = torch.logsumexp(raw_scores.masked_fill(~positive & has_query, float("-inf")), dim=0)
    v2t_terms = torch.logsumexp(raw_scores, dim=0) - pos_lse
    v2t = torch.where(has_query, v2t_terms, torch.zeros_like(v2t_terms)).mean()
    return t2v + v2t


def kl_distill_loss(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float = 0.2) -> Tensor:
    """Frame-level distillation: ``sum_q KL(softmax(teacher_q / T) || softmax(student_q / T))``.

    Each row is one query against the frames of its own video; the softmaxes run
    over the valid frames only. The teacher side carries no gradient.

    Args:
        student: (Q, L) student per-frame cosine scores.
        teacher: (Q, L) teacher per-frame cosine scores.
        mask: (Q, L) float, 1 = valid frame, 0 = padding.
        temperature: T.

    Returns:
        Scalar tensor, summed over frames and over queries.
    """
    valid = mask > 0
    log_p_student = F.log_softmax((student / temperature).masked_fill(~valid, _MASK_FILL), dim=1)
    log_p_teacher = F.log_softmax((teacher.detach() / temperature).masked_fill(~valid, _MASK_FILL), dim=1)
    pointwise = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)  # (Q, L)
    return (pointwise * mask).sum()


class DLDKDLoss(nn.Module):
    """The DL-DKD training objective, returned as a dict of already weighted terms.

    Terms: ``trip_inh``, ``nce_inh`` (times ``nce_weight``), ``kd`` (times
    ``kd_factor``; present whenever teacher scores are given), and, when the
    exploration branch exists, ``trip_exp``, ``nce_exp``. The training loop sums
    the values.
    """

    def __init__(self, margin: float, hard_pool_size: int, nce_weight: float = 0.04, kd_temperature: float = 0.2):
        super().__init__()
        self.margin = margin
        self.hard_pool_size = hard_pool_size
        self.nce_weight = nce_weight
        self.kd_temperature = kd_temperature

    def forward(self, outputs: Mapping[str, object], labels: Tensor, frame_mask: Tensor,
                teacher_scores: Optional[Tensor] = None, kd_factor: float = 0.0, hard_negative: bool = False,
                generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Compute the weighted loss terms.

        Args:
            outputs: {'inheritance': ScoreOutput, 'exploration': ScoreOutput (optional)}, each
                with ``video_scores`` (Q, V), ``video_scores_raw`` (Q, V) and ``frame_scores``
                (Q, V, L) (padded frames at -1e10).
            labels: (Q,) int64 video of each query.
            frame_mask: (V, L) float batch video mask, 1 = valid frame.
            teacher_scores: (Q, L) teacher per-frame cosine of each query against its own
                video's frames, or None when there is no teacher.
            kd_factor: multiplier of the distillation term (schedule value of the epoch).
            hard_negative: whether the triplet terms use hard negatives.
            generator: optional torch.Generator for the triplet negative sampling.

        Returns:
            Dict of scalar tensors: 'trip_inh', 'nce_inh', ['kd'], ['trip_exp', 'nce_exp'].
        """
        terms: Dict[str, Tensor] = {}
        for name, suffix in (("inheritance", "inh"), ("exploration", "exp")):
            if name not in outputs:
                continue
            out = outputs[name]
            terms[f"trip_{suffix}"] = triplet_loss(out.video_scores, labels, self.margin, hard_negative,
                                                   self.hard_pool_size, generator)
            terms[f"nce_{suffix}"] = self.nce_weight * nce_loss(out.video_scores_raw, labels)
            if name == "inheritance" and teacher_scores is not None:
                query_idx = torch.arange(labels.shape[0], device=labels.device)
                student = out.frame_scores[query_idx, labels]  # (Q, L)
                kd = kl_distill_loss(student, teacher_scores, frame_mask[labels], self.kd_temperature)
                terms["kd"] = kd_factor * kd
        return terms
