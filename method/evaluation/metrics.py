"""Retrieval ranks and metrics for text-to-video (t2v) and video-to-text (v2t).

Conventions
-----------
* ``scores`` is ``(n_q, n_v)``, higher = better (any real dtype, any device;
  numpy arrays are accepted and converted).
* ``query_video`` is ``(n_q,)`` int64: the index of query ``i``'s only
  relevant video. A video may have several queries (captions).
* Ties are PESSIMISTIC: every other item whose score equals the relevant
  item's score is counted as ranked above it, so a constant score row gives
  the worst rank. Comparisons are written as ``not (s < pos)`` so that NaN
  scores are pessimistic as well (a NaN competitor counts above, a NaN
  positive gets the worst rank).

Structure
---------
Evaluation at scale streams over query chunks and never holds the full score
matrix, so the module is split into primitives working on one chunk of query
rows and summaries turning ranks into metrics:

* ``t2v_ranks(chunk, gt_video, pos=None)`` -> ``(C,)`` 1-based ranks.
* ``v2t_rank_counts(chunk, chunk_query_index, query_video, pos)`` -> ``(n_q,)``
  partial counts; summed over all chunks and ``+ 1`` they are every caption's
  rank in its video's column (among all ``n_q`` captions).
* ``t2v_rank_counts`` / ``v2t_share_counts``: the same counts from a share of
  the video columns (a process's videos in sharded evaluation); summed over
  the shares, plus 1, they are the ranks above.
* ``summarize_t2v(ranks)`` / ``summarize_v2t(caption_ranks, query_video,
  n_videos)`` -> dict with ``r1 r5 r10 r100 sumr medr meanr map``.
* ``t2v_metrics`` / ``v2t_metrics`` run the above over a full matrix, chunked.

Extra memory per chunk of ``C`` query rows: ``C * n_v`` bools for t2v;
``C * n_q`` scores plus ``C * n_q`` bools for v2t.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np
import torch

__all__ = [
    "RECALL_KS",
    "t2v_ranks",
    "v2t_rank_counts",
    "t2v_rank_counts",
    "v2t_share_counts",
    "summarize_t2v",
    "summarize_v2t",
    "t2v_metrics",
    "v2t_metrics",
    "format_table",
]

RECALL_KS = (1, 5, 10, 100)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _to_tensor(x, device: Optional[torch.device] = None) -> torch.Tensor:
    """Tensor view of ``x`` (numpy arrays / sequences converted), moved to ``device``."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr).copy()
        t = torch.from_numpy(arr)
    if device is not None and t.device != device:
        t = t.to(device)
    return t


def _to_index(x, device: Optional[torch.device] = None) -> torch.Tensor:
    t = _to_tensor(x, device)
    if t.dtype != torch.long:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"index tensor must be integer, got {t.dtype}")
        t = t.long()
    return t


def _not_less(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a >= b`` with NaN on either side counted as True (pessimistic)."""
    out = torch.lt(a, b)
    return out.logical_not_()


def _check_scores(scores: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (n_q, n_v), got shape {tuple(scores.shape)}")


def _check_query_video(query_video: torch.Tensor, n_q: int, n_v: int) -> None:
    if query_video.dim() != 1 or query_video.shape[0] != n_q:
        raise ValueError(
            f"query_video must have shape ({n_q},), got {tuple(query_video.shape)}"
        )
    if n_q and (int(query_video.min()) < 0 or int(query_video.max()) >= n_v):
        raise ValueError(f"query_video entries must lie in [0, {n_v})")


# --------------------------------------------------------------------------- #
# primitives
# --------------------------------------------------------------------------- #
def t2v_ranks(scores_chunk, gt_video, pos=None) -> torch.Tensor:
    """Pessimistic 1-based text-to-video ranks of a chunk of query rows.

    ``scores_chunk`` (C, n_v), ``gt_video`` (C,) the relevant video of each
    row, ``pos`` (C,) optional positive scores (default: gathered from the
    chunk). ``rank = 1 + #{v != gt_video: s[v] >= pos}``; the gt column is
    excluded by index, not by value. Returns int64 (C,) on the scores' device.
    """
    s = _to_tensor(scores_chunk)
    _check_scores(s)
    gt = _to_index(gt_video, s.device)
    if gt.dim() != 1 or gt.shape[0] != s.shape[0]:
        raise ValueError(f"gt_video must have shape ({s.shape[0]},), got {tuple(gt.shape)}")
    if pos is None:
        pos = s.gather(1, gt[:, None]).squeeze(1)
    else:
        pos = _to_tensor(pos, s.device)
        if pos.shape != gt.shape:
            raise ValueError(f"pos must have shape {tuple(gt.shape)}, got {tuple(pos.shape)}")
    ge = _not_less(s, pos[:, None])  # (C, n_v) bool
    count = ge.sum(dim=1)
    own = ge.gather(1, gt[:, None]).squeeze(1)  # gt column's own comparison
    return (count - own.long() + 1).long()


def v2t_rank_counts(scores_chunk, chunk_query_index, query_video, pos) -> torch.Tensor:
    """Partial video-to-text rank counts contributed by one chunk of query rows.

    For every caption ``j`` (all ``n_q``) with video ``l_j = query_video[j]``
    and positive score ``pos[j] = S[j, l_j]``, counts the rows ``q'`` of this
    chunk (global indices ``chunk_query_index`` (C,)), ``q' != j`` by index,
    with ``S[q', l_j] >= pos[j]``. Summed over all chunks and ``+ 1``, this is
    caption ``j``'s pessimistic rank among all ``n_q`` captions in column
    ``l_j``. Extra memory ``C * (n_q + n_v)``. Returns int64 (n_q,).
    """
    s = _to_tensor(scores_chunk)
    _check_scores(s)
    qidx = _to_index(chunk_query_index, s.device)
    qv = _to_index(query_video, s.device)
    p = _to_tensor(pos, s.device)
    if qidx.dim() != 1 or qidx.shape[0] != s.shape[0]:
        raise ValueError(
            f"chunk_query_index must have shape ({s.shape[0]},), got {tuple(qidx.shape)}"
        )
    if qv.dim() != 1 or p.shape != qv.shape:
        raise ValueError("query_video and pos must both have shape (n_q,)")
    # Row j of the gather is video l_j's column over the chunk: contiguous rows,
    # so the gather is a row copy rather than a strided column walk.
    cols = s.t().contiguous().index_select(0, qv)  # (n_q, C): cols[j, c] = S[q'_c, l_j]
    ge = _not_less(cols, p[:, None])  # (n_q, C) bool
    del cols
    counts = ge.sum(dim=1)  # (n_q,) int64
    # remove each chunk row's comparison with itself (q' == j), by index
    rows = torch.arange(s.shape[0], device=s.device)
    self_hit = ge[qidx, rows].long()  # ge[qidx[c], c]
    counts.index_add_(0, qidx, -self_hit)
    return counts.long()


def t2v_rank_counts(scores_chunk, gt_column, pos) -> torch.Tensor:
    """Text-to-video rank counts of a chunk of query rows against a share of the video columns.

    ``scores_chunk`` (C, n_cols): the rows' scores against the share's videos;
    ``gt_column`` (C,): the column of each row's relevant video in the share,
    any value outside [0, n_cols) when the share does not hold it; ``pos``
    (C,): the rows' positive scores. Returns int64 (C,) ``#{v != gt: s[v] >= pos}``
    over the share's columns (pessimistic, NaN as in ``t2v_ranks``); summed
    over shares that partition the videos, plus 1, these are ``t2v_ranks``.
    """
    s = _to_tensor(scores_chunk)
    _check_scores(s)
    gt = _to_index(gt_column, s.device)
    p = _to_tensor(pos, s.device)
    if gt.shape != (s.shape[0],) or p.shape != gt.shape:
        raise ValueError(f"gt_column and pos must have shape ({s.shape[0]},)")
    if s.shape[1] == 0:
        return torch.zeros(s.shape[0], dtype=torch.long, device=s.device)
    ge = _not_less(s, p[:, None])  # (C, n_cols)
    inside = (gt >= 0) & (gt < s.shape[1])
    own = ge.gather(1, gt.clamp(0, s.shape[1] - 1)[:, None]).squeeze(1) & inside
    return (ge.sum(dim=1) - own.long()).long()


def v2t_share_counts(scores_chunk, chunk_query_index, captions, caption_column, caption_pos, n_q: int) -> torch.Tensor:
    """Video-to-text rank counts of a chunk of query rows for the captions whose video a share of columns holds.

    ``scores_chunk`` (C, n_cols) with global row indices ``chunk_query_index``
    (C,); ``captions`` (m,): the global indices of the captions whose video is
    in the share, ``caption_column`` (m,) that video's column, ``caption_pos``
    (m,) their positive scores. Returns int64 (n_q,): at each such caption j,
    the rows q' != j of the chunk with ``S[q', l_j] >= pos[j]``, 0 elsewhere.
    With one share of all columns this is ``v2t_rank_counts``; with shares
    that partition the videos, the shares' results add up to it.
    """
    s = _to_tensor(scores_chunk)
    _check_scores(s)
    qidx = _to_index(chunk_query_index, s.device)
    caps = _to_index(captions, s.device)
    cols = _to_index(caption_column, s.device)
    p = _to_tensor(caption_pos, s.device)
    out = torch.zeros(int(n_q), dtype=torch.long, device=s.device)
    if caps.numel() == 0:
        return out
    ge = _not_less(s.t().contiguous().index_select(0, cols), p[:, None])  # (m, C): ge[k, c] = S[q'_c, l_k] >= pos_k
    out.index_add_(0, caps, ge.sum(dim=1))
    # remove each chunk row's comparison with itself (q' == j), where that caption is one of ``captions``
    slot = torch.full((int(n_q),), -1, dtype=torch.long, device=s.device)
    slot[caps] = torch.arange(caps.numel(), device=s.device)
    k = slot[qidx]  # (C,) the row's caption among ``captions``, or -1
    hit = (k >= 0).nonzero().squeeze(1)
    out.index_add_(0, qidx[hit], -ge[k[hit], hit].long())
    return out


# --------------------------------------------------------------------------- #
# summaries
# --------------------------------------------------------------------------- #
def _rank_summary(ranks: torch.Tensor) -> Dict[str, float]:
    """R@K / SumR / medr / meanr / mAP of 1-based ranks (one relevant item each)."""
    ranks = ranks.reshape(-1).long()
    n = int(ranks.numel())
    if n == 0:
        raise ValueError("cannot summarize an empty set of ranks")
    out: Dict[str, float] = {}
    sumr = 0.0
    for k in RECALL_KS:
        # same arithmetic as the released evaluator: 100.0 * count / n
        r = 100.0 * int((ranks <= k).sum()) / n
        out[f"r{k}"] = r
        sumr += r
    out["sumr"] = sumr
    srt = torch.sort(ranks).values
    if n % 2:
        out["medr"] = float(int(srt[n // 2]))
    else:
        out["medr"] = (int(srt[n // 2 - 1]) + int(srt[n // 2])) / 2.0
    out["meanr"] = int(ranks.sum()) / n  # exact integer sum, like numpy's mean
    out["map"] = float((1.0 / ranks.double()).sum()) / n
    return out


def summarize_t2v(ranks) -> Dict[str, float]:
    """Text-to-video metrics of per-query 1-based ranks (see module doc).

    Keys: r1 r5 r10 r100 (percent), sumr (sum of the unrounded recalls),
    medr (np.median convention), meanr, map (mean of 1/rank). Python floats.
    """
    return _rank_summary(_to_index(ranks))


def summarize_v2t(caption_ranks, query_video, n_videos: int) -> Dict[str, float]:
    """Video-to-text metrics from every caption's rank in its video's column.

    A video's rank is the best (smallest) rank among its captions; R@K, medr
    and meanr are over those per-video best ranks. mAP is the mean over
    videos of AP over all of the video's captions: with the captions' ranks
    sorted ascending ``r_(1) <= ... <= r_(k)``, ``AP = mean_i i / r_(i)``.
    Videos without any caption are excluded from every metric.
    """
    r = _to_index(caption_ranks)
    lv = _to_index(query_video, r.device)
    if r.dim() != 1 or lv.shape != r.shape:
        raise ValueError("caption_ranks and query_video must both have shape (n_q,)")
    n_videos = int(n_videos)
    _check_query_video(lv, r.shape[0], n_videos)
    n_q = r.shape[0]
    counts = torch.bincount(lv, minlength=n_videos)  # (n_videos,)
    has = counts > 0
    if not bool(has.any()):
        raise ValueError("no video has a caption")
    big = torch.iinfo(torch.long).max
    best = torch.full((n_videos,), big, dtype=torch.long, device=r.device)
    best.scatter_reduce_(0, lv, r, reduce="amin", include_self=True)
    out = _rank_summary(best[has])

    # AP: order captions by (video, rank) with two stable sorts
    o1 = torch.sort(r, stable=True).indices
    o2 = torch.sort(lv[o1], stable=True).indices
    perm = o1[o2]
    r_s, l_s = r[perm], lv[perm]
    starts = torch.cumsum(counts, 0) - counts  # first sorted position of each video
    i_in_group = torch.arange(n_q, device=r.device) - starts[l_s] + 1  # 1-based
    prec = i_in_group.double() / r_s.double()
    ap_sum = torch.zeros(n_videos, dtype=torch.float64, device=r.device)
    ap_sum.index_add_(0, l_s, prec)
    ap = ap_sum[has] / counts[has].double()
    out["map"] = float(ap.sum()) / int(has.sum())
    return out


# --------------------------------------------------------------------------- #
# full-matrix convenience
# --------------------------------------------------------------------------- #
def _prepare(scores, query_video, chunk_size: int):
    s = _to_tensor(scores)
    _check_scores(s)
    qv = _to_index(query_video, s.device)
    _check_query_video(qv, s.shape[0], s.shape[1])
    if int(chunk_size) < 1:
        raise ValueError("chunk_size must be >= 1")
    return s, qv, int(chunk_size)


def t2v_metrics(scores, query_video, chunk_size: int = 2048) -> Dict[str, float]:
    """Text-to-video metrics of a full ``(n_q, n_v)`` score matrix, chunked over queries."""
    s, qv, cs = _prepare(scores, query_video, chunk_size)
    parts = [t2v_ranks(s[a:a + cs], qv[a:a + cs]) for a in range(0, s.shape[0], cs)]
    ranks = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return summarize_t2v(ranks)


def v2t_metrics(scores, query_video, chunk_size: int = 2048) -> Dict[str, float]:
    """Video-to-text metrics of a full ``(n_q, n_v)`` score matrix, chunked over queries."""
    s, qv, cs = _prepare(scores, query_video, chunk_size)
    n_q = s.shape[0]
    ar = torch.arange(n_q, device=s.device)
    pos = s[ar, qv]
    counts = torch.zeros(n_q, dtype=torch.long, device=s.device)
    for a in range(0, n_q, cs):
        counts += v2t_rank_counts(s[a:a + cs], ar[a:a + cs], qv, pos)
    return summarize_v2t(counts + 1, qv, s.shape[1])


# --------------------------------------------------------------------------- #
# printing
# --------------------------------------------------------------------------- #
_TABLE_COLS = (("R@1", "r1"), ("R@5", "r5"), ("R@10", "r10"), ("R@100", "r100"), ("SumR", "sumr"))


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Aligned text table: one line per named metrics dict, R@1 R@5 R@10 R@100 SumR (1 decimal)."""
    names = [str(n) for n in rows]
    name_w = max([len(n) for n in names] + [0])
    cells = [[f"{float(m[key]):.1f}" for _, key in _TABLE_COLS] for m in rows.values()]
    col_w = [
        max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _) in enumerate(_TABLE_COLS)
    ]
    header = " " * name_w + "  " + "  ".join(h.rjust(w) for (h, _), w in zip(_TABLE_COLS, col_w))
    lines = [header]
    for n, c in zip(names, cells):
        lines.append(n.ljust(name_w) + "  " + "  ".join(v.rjust(w) for v, w in zip(c, col_w)))
    return "\n".join(lines)
