"""The GMMFormer family's losses on query embeddings: query diversity (QDL) and caption-clip matching (OT).

docs/gmmformer.md, "Losses". Shapes: Q queries, V videos, K clips per video, d
embedding size; ``labels[q]`` is query q's video (0..V-1). The inputs are
the second query encoding q' (quirk Q5) and the clip features C.

Distributed use: a video's captions are always all in one process, so the
partner mask of QDL and the matching of OT are local. A process computes its
own queries' terms and divides by the global count (``num_queries``,
``num_pairs``), so the processes' values add up to the one-process loss.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


def _partners(labels: Tensor) -> Tensor:
    """Bool (Q, Q): ``[i, j]`` iff i != j and queries i and j describe the same video."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)


def qdl_v1_terms(queries: Tensor, labels: Tensor, margin: float, scale: float) -> Tensor:
    """(Q,) GMMFormer terms ``log(1 + sum_i N[i, j] exp(a (K[i, j] + mrg)))`` per query j; 0 without a partner.

    queries: (Q, d), labels: (Q,); K = cosine matrix, N = partner mask.
    """
    z = _unit(queries)
    logits = (scale * (z @ z.t() + margin)).masked_fill(~_partners(labels), float("-inf"))  # (Q, Q)
    # log(1 + sum exp) as a logsumexp with a 0 logit: stable, and a column of -inf gives 0 with zero gradient
    return torch.logsumexp(torch.cat([logits.new_zeros(1, logits.shape[1]), logits]), dim=0)


def qdl_v2_terms(queries: Tensor, labels: Tensor, margin: float, scale: float, focal: float) -> Tensor:
    """(Q,) GMMFormerV2 terms ``sum_i N[i, j] (1 + K[i, j])^lam log(1 + exp(a (K[i, j] + mrg)))`` per query j."""
    z = _unit(queries)
    cos = z @ z.t()
    pairs = (1.0 + cos) ** focal * F.softplus(scale * (cos + margin))
    return torch.where(_partners(labels), pairs, torch.zeros_like(pairs)).sum(dim=0)


def qdl_v1(queries: Tensor, labels: Tensor, margin: float, scale: float,
           num_queries: Optional[int] = None) -> Tensor:
    """GMMFormer's query-diverse loss (5.4): the terms summed, divided by ``num_queries`` (default Q)."""
    terms = qdl_v1_terms(queries, labels, margin, scale)
    return terms.sum() / (terms.shape[0] if num_queries is None else num_queries)


def qdl_v2(queries: Tensor, labels: Tensor, margin: float, scale: float, focal: float,
           num_queries: Optional[int] = None) -> Tensor:
    """GMMFormerV2's focal query-diverse loss (5.5): the terms summed, divided by ``num_queries`` (default Q)."""
    terms = qdl_v2_terms(queries, labels, margin, scale, focal)
    return terms.sum() / (terms.shape[0] if num_queries is None else num_queries)


def ot_matches(cost: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Hungarian matching of each video's captions to its clips (5.6), videos with >= 2 captions, in video order.

    cost: (Q, K) cost of query q against clip k of its own video (detached);
    labels: (Q,). Returns (rows, cols) int64 (P,): the matched query and clip
    of every pair, each video's pairs in the solver's (caption) order.
    """
    from scipy.optimize import linear_sum_assignment  # here: scipy is needed only by this loss

    cost = cost.detach().cpu().numpy()
    labels = labels.detach().cpu().numpy()
    rows, cols = [], []
    for video in np.unique(labels):
        members = np.flatnonzero(labels == video)
        if members.size < 2:
            continue
        r, c = linear_sum_assignment(cost[members])
        rows.append(members[r])
        cols.append(c)
    if not rows:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(np.concatenate(rows)).long(), torch.from_numpy(np.concatenate(cols)).long()


def ot_pair_count(caption_counts: Sequence[int], n_clips: int) -> int:
    """Matched pairs of a batch: ``sum over videos with n >= 2 captions of min(n, n_clips)``."""
    return int(sum(min(n, n_clips) for n in caption_counts if n >= 2))


def ot_loss(queries: Tensor, clips: Tensor, labels: Tensor, num_pairs: Optional[int] = None) -> Tensor:
    """GMMFormerV2's matching loss (5.6): ``1 + mean over matched pairs of -cos(q'_i, C_{y_i, c})``.

    queries: (Q, d), clips: (V, K, d), labels: (Q,). The matching is a
    constant; the matched costs carry the gradient. With ``num_pairs`` (the
    global pair count) returns ``sum(1 + R[matched]) / num_pairs``. A batch
    without a video of >= 2 captions gives 0 with zero gradients (quirk Q8 fixed).
    """
    own = _unit(clips)[labels]  # (Q, K, d): each query's own video's clips
    cost = -torch.bmm(own, _unit(queries)[:, :, None]).squeeze(-1)  # (Q, K)
    rows, cols = ot_matches(cost, labels)
    if rows.numel() == 0:
        return cost.sum() * 0.0
    matched = cost[rows.to(cost.device), cols.to(cost.device)]
    if num_pairs is None:
        return 1.0 + matched.mean()
    return (1.0 + matched).sum() / num_pairs
