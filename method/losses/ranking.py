"""Ranking losses of PRVR as per-row / per-column terms: triplet, InfoNCE, DL-DKD++ soft-target InfoNCE.

Shapes: Q queries (captions) in the global batch, V videos, L padded frames.
``labels[q]`` is the index (0..V-1) of query q's video in the batch.

Every loss is split into **text-to-video terms, one per query** (a row of the
(Q, V) score matrix) and **video-to-text terms, one per video** (a column).
A process that owns the rows ``R`` and the columns ``C`` of the global batch
(``method.losses.objective.BatchLayout``) computes exactly those terms, so the
processes of a distributed run add up to the one-process loss without scoring
anything twice. One process owns every row and column. The full-matrix
functions (``triplet_loss``, ``nce_loss``, ``soft_nce_loss``) compose the two
parts and are what the authors' golden numbers test.

Videos without any query in the batch (never the case in training, where every
video comes with all of its captions) are masked out of the video-to-text terms:
they contribute 0, and the video-to-text sums are still divided by V, which is
what the released InfoNCE does for such videos (the released triplet would give
NaN there).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def positive_mask(labels: Tensor, video_index: Tensor) -> Tensor:
    """Bool (Q, C): ``[q, c]`` is True iff query q belongs to video ``video_index[c]``."""
    return labels[:, None] == video_index[None, :]


def _all_videos(scores: Tensor) -> Tensor:
    return torch.arange(scores.shape[1], device=scores.device)


# --------------------------------------------------------------------------- #
# triplet ranking loss
# --------------------------------------------------------------------------- #
def draw_t2v(num_queries: int, num_videos: int, hard_negative: bool, hard_pool_size: int,
             device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    """The random draw behind the text-to-video negatives of all Q queries, (Q,) int64.

    Hard negatives: a position in the pool of ``min(hard_pool_size, V - 1)`` top
    videos; otherwise a position among the V - 1 other videos. Drawn for the
    whole global batch (a process slices its rows), so every process draws what
    one process draws.

    Raises:
        ValueError: fewer than 2 videos, or a hard pool smaller than 1.
    """
    if num_videos < 2:
        raise ValueError("the triplet loss needs at least 2 videos in the batch")
    if hard_negative:
        if hard_pool_size < 1:
            raise ValueError(f"hard_pool_size must be >= 1, got {hard_pool_size}")
        pool = min(hard_pool_size, num_videos - 1)
        return torch.randint(0, pool, (num_queries, 1), device=device, generator=generator).squeeze(1)
    return torch.randint(0, num_videos - 1, (num_queries,), device=device, generator=generator)


def draw_v2t(num_videos: int, hard_negative: bool, device: torch.device,
             generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
    """The random draw behind the video-to-text negatives of all V videos: (V,) uniform, or None (hard)."""
    return None if hard_negative else torch.rand(num_videos, device=device, generator=generator)


def t2v_negatives(scores: Tensor, labels: Tensor, hard_negative: bool, hard_pool_size: int, draw: Tensor) -> Tensor:
    """One negative video per query row.

    Args:
        scores: (R, V) video-level scores of R query rows (only read).
        labels: (R,) int64 positive video of each row.
        hard_negative: pick from the ``min(hard_pool_size, V - 1)`` highest-scoring
            non-positive videos; otherwise uniformly from all V - 1 negatives.
        hard_pool_size: size of the hard pool.
        draw: (R,) the rows' part of ``draw_t2v``.

    Returns:
        (R,) int64 negative video of each row (never its positive).
    """
    num_rows, num_videos = scores.shape
    if hard_negative:
        pool = min(hard_pool_size, num_videos - 1)
        masked = scores.detach().clone()
        masked[torch.arange(num_rows, device=scores.device), labels] = float("-inf")
        candidates = masked.topk(pool, dim=1).indices  # (R, pool), never the positive
        return candidates.gather(1, draw[:, None]).squeeze(1)
    return draw + (draw >= labels).long()  # skip the positive


def v2t_negatives(scores: Tensor, labels: Tensor, video_index: Tensor, hard_negative: bool,
                  draw: Optional[Tensor]) -> Tensor:
    """One negative query per video column.

    Args:
        scores: (Q, C) scores of all Q queries against C video columns (only read).
        labels: (Q,) int64 positive video of each query.
        video_index: (C,) int64 index of each column's video in the batch.
        hard_negative: the highest-scoring query of another video; otherwise a
            uniformly random query of another video.
        draw: (C,) the columns' part of ``draw_v2t`` (None with hard negatives).

    Returns:
        (C,) int64 negative query of each column. For a video whose queries are
        all the queries of the batch (no negative exists) the index is
        meaningless; ``triplet_v2t_terms`` masks such videos out.
    """
    negative = ~positive_mask(labels, video_index).t()  # (C, Q)
    if hard_negative:
        return scores.detach().t().masked_fill(~negative, float("-inf")).argmax(dim=1)
    num_neg = negative.sum(dim=1)  # (C,)
    rank = (draw * num_neg).long().clamp(max=(num_neg - 1).clamp(min=0))  # (C,) in [0, num_neg)
    # Stable sort puts each video's negative queries first, in query order.
    order = torch.sort((~negative).to(torch.uint8), dim=1, stable=True).indices  # (C, Q)
    return order.gather(1, rank[:, None]).squeeze(1)


def triplet_t2v_terms(scores: Tensor, labels: Tensor, negatives: Tensor, margin: float) -> Tensor:
    """(R,) ``max(0, m + S[q, neg_q] - S[q, label_q])`` of query rows ``scores`` (R, V)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    return (margin + scores[rows, negatives] - scores[rows, labels]).clamp(min=0)


def triplet_v2t_terms(scores: Tensor, labels: Tensor, video_index: Tensor, negatives: Tensor,
                      margin: float) -> Tensor:
    """(C,) ``max(0, m + S[neg_v, v] - mean_{q in pos(v)} S[q, v])`` of video columns ``scores`` (Q, C).

    0 for a video without a query or without a query of another video.
    """
    num_queries = scores.shape[0]
    positive = positive_mask(labels, video_index).to(scores.dtype)  # (Q, C)
    count = positive.sum(dim=0)  # (C,)
    pos_mean = (scores * positive).sum(dim=0) / count.clamp(min=1)
    neg = scores[negatives, torch.arange(scores.shape[1], device=scores.device)]
    terms = (margin + neg - pos_mean).clamp(min=0)
    valid = (count > 0) & (count < num_queries)
    return torch.where(valid, terms, torch.zeros_like(terms))


def sample_t2v_negatives(scores: Tensor, labels: Tensor, hard_negative: bool, hard_pool_size: int,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """Full-matrix convenience: draw and pick the t2v negatives of (Q, V) ``scores``, (Q,) int64."""
    draw = draw_t2v(scores.shape[0], scores.shape[1], hard_negative, hard_pool_size, scores.device, generator)
    return t2v_negatives(scores, labels, hard_negative, hard_pool_size, draw)


def sample_v2t_negatives(scores: Tensor, labels: Tensor, hard_negative: bool,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """Full-matrix convenience: draw and pick the v2t negatives of (Q, V) ``scores``, (V,) int64."""
    draw = draw_v2t(scores.shape[1], hard_negative, scores.device, generator)
    return v2t_negatives(scores, labels, _all_videos(scores), hard_negative, draw)


def triplet_loss(scores: Tensor, labels: Tensor, margin: float, hard_negative: bool, hard_pool_size: int,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Bidirectional triplet ranking loss on video-level cosine scores (Q, V), one process.

    ``mean_q`` of the t2v terms plus ``sum_v`` of the v2t terms divided by V. The
    random draws happen in that order (t2v, then v2t), as released.
    """
    t2v = triplet_t2v_terms(scores, labels, sample_t2v_negatives(scores, labels, hard_negative, hard_pool_size,
                                                                 generator), margin).mean()
    videos = _all_videos(scores)
    negatives = sample_v2t_negatives(scores, labels, hard_negative, generator)
    return t2v + triplet_v2t_terms(scores, labels, videos, negatives, margin).sum() / scores.shape[1]


# --------------------------------------------------------------------------- #
# InfoNCE (ICCV, one-hot targets)
# --------------------------------------------------------------------------- #
def nce_t2v_terms(raw_scores: Tensor, labels: Tensor) -> Tensor:
    """(R,) ``logsumexp_v U[q, v] - U[q, label_q]`` of query rows (R, V)."""
    rows = torch.arange(raw_scores.shape[0], device=raw_scores.device)
    return torch.logsumexp(raw_scores, dim=1) - raw_scores[rows, labels]


def nce_v2t_terms(raw_scores: Tensor, labels: Tensor, video_index: Tensor) -> Tensor:
    """(C,) ``logsumexp_q U[q, v] - logsumexp_{q in pos(v)} U[q, v]`` of video columns (Q, C); 0 without a query."""
    positive = positive_mask(labels, video_index)  # (Q, C)
    has_query = positive.any(dim=0)
    # Only columns with a positive are masked, so no logsumexp sees an all -inf column.
    pos_lse = torch.logsumexp(raw_scores.masked_fill(~positive & has_query, float("-inf")), dim=0)
    terms = torch.logsumexp(raw_scores, dim=0) - pos_lse
    return torch.where(has_query, terms, torch.zeros_like(terms))


def nce_loss(raw_scores: Tensor, labels: Tensor) -> Tensor:
    """InfoNCE on unnormalised video-level scores (Q, V): mean t2v term plus mean v2t term (one process)."""
    return (nce_t2v_terms(raw_scores, labels).mean()
            + nce_v2t_terms(raw_scores, labels, _all_videos(raw_scores)).mean())


# --------------------------------------------------------------------------- #
# DL-DKD++ soft-target InfoNCE (docs/method.md, "Soft-target InfoNCE")
# --------------------------------------------------------------------------- #
def hard_count(alpha: float, n: int) -> int:
    """How many of n rows (or columns) keep one-hot targets: ``floor(alpha * n)`` on a double."""
    return math.floor(alpha * n)


def soft_nce_t2v_terms(scores: Tensor, sims: Tensor, labels: Tensor, beta: float, hard_rows: Tensor) -> Tensor:
    """(R,) text-to-video terms of query rows ``scores`` (R, V).

    Hard rows: ``logsumexp_v s - s[q, label_q]``. Soft rows: the cross-entropy
    ``sum_v T[q, v] (logsumexp_v' s - s[q, v])`` with targets
    ``T = (1 - beta) softmax_v(sims[q]) + beta onehot(label_q)`` (softmax over the
    batch's videos, temperature 1; gradients flow through ``sims`` if it has them).
    """
    lse = torch.logsumexp(scores, dim=1)
    onehot = positive_mask(labels, _all_videos(scores)).to(scores.dtype)
    targets = (1.0 - beta) * torch.softmax(sims, dim=1) + beta * onehot
    soft = (targets * (lse[:, None] - scores)).sum(dim=1)
    hard = lse - scores[torch.arange(scores.shape[0], device=scores.device), labels]
    return torch.where(hard_rows, hard, soft)


def soft_nce_v2t_terms(scores: Tensor, sims: Tensor, labels: Tensor, video_index: Tensor, beta: float,
                       hard_cols: Tensor, leak: float = 1e-12) -> Tensor:
    """(C,) video-to-text terms of video columns ``scores`` (Q, C); 0 for a video without a query.

    ``logsumexp_q s - log sum_q (w[q] + leak) exp(s[q])``, i.e. minus the log of
    the target-weighted softmax mass (not a cross-entropy). Hard columns:
    ``w = onehot``; soft columns: ``w = (1 - beta) softmax_q(sims[:, v]) + beta onehot``
    (softmax over the batch's queries, not renormalised). ``leak`` is the
    authors' 1e-12 inside the log: in float32 a positive keeps weight exactly 1
    while a non-positive keeps weight 1e-12 (log -27.6), which matters when raw
    scores spread by more than about 25.
    """
    positive = positive_mask(labels, video_index)
    onehot = positive.to(scores.dtype)
    targets = (1.0 - beta) * torch.softmax(sims, dim=0) + beta * onehot
    targets = torch.where(hard_cols[None, :], onehot, targets)
    terms = torch.logsumexp(scores, dim=0) - torch.logsumexp(scores + torch.log(targets + leak), dim=0)
    return torch.where(positive.any(dim=0), terms, torch.zeros_like(terms))


def soft_nce_reduce(t2v_terms: Tensor, query_index: Tensor, v2t_terms: Tensor, video_index: Tensor,
                    num_queries: int, num_videos: int, alpha: float, keep_parts: bool = False) -> Tensor:
    """``alpha * hard + (1 - alpha) * soft`` of the terms a process owns (docs/method.md, soft-target InfoNCE).

    ``hard = sum t2v[q < hQ] / hQ + sum v2t[v < hV] / hV`` and ``soft`` likewise
    over the rest, with ``hQ = floor(alpha Q)``, ``hV = floor(alpha V)``. As
    released, a part is dropped whole (both directions) when either of its
    counts is 0: when ``hV = 0 < hQ`` the first hQ captions take no part in
    t2v at all. ``keep_parts`` keeps each direction's part whenever it has
    rows. ``query_index`` / ``video_index`` are the global indices of the terms.
    """
    hq, hv = hard_count(alpha, num_queries), hard_count(alpha, num_videos)
    zero = t2v_terms.new_zeros(())

    def part(terms, hard_mask, count):
        return torch.where(hard_mask, terms, 0.0).sum() / count if count else zero

    t2v_hard, v2t_hard = part(t2v_terms, query_index < hq, hq), part(v2t_terms, video_index < hv, hv)
    t2v_soft = part(t2v_terms, query_index >= hq, num_queries - hq)
    v2t_soft = part(v2t_terms, video_index >= hv, num_videos - hv)
    if keep_parts:
        hard, soft = t2v_hard + v2t_hard, t2v_soft + v2t_soft
    else:
        hard = t2v_hard + v2t_hard if hq and hv else zero
        soft = t2v_soft + v2t_soft if num_queries - hq and num_videos - hv else zero
    return alpha * hard + (1.0 - alpha) * soft


def soft_nce_loss(scores: Tensor, sims: Tensor, labels: Tensor, alpha: float, beta: float,
                  leak: float = 1e-12, keep_parts: bool = False) -> Tensor:
    """DL-DKD++ soft-target InfoNCE of (Q, V) raw scores, one process (unweighted).

    Captions ``0 .. floor(alpha Q) - 1`` and videos ``0 .. floor(alpha V) - 1``
    keep one-hot targets; the rest mix in ``softmax(sims)`` with weight
    ``1 - beta``. ``sims`` are the teacher's raw scores for the inheritance
    branch and the branch's own ``scores`` (the same tensor, not detached, as
    released) for the exploration branch.
    """
    num_queries, num_videos = scores.shape
    queries = torch.arange(num_queries, device=scores.device)
    videos = _all_videos(scores)
    t2v = soft_nce_t2v_terms(scores, sims, labels, beta, queries < hard_count(alpha, num_queries))
    v2t = soft_nce_v2t_terms(scores, sims, labels, videos, beta, videos < hard_count(alpha, num_videos), leak)
    return soft_nce_reduce(t2v, queries, v2t, videos, num_queries, num_videos, alpha, keep_parts)
