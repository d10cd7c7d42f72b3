"""Where in a video a query matched: moment estimates from per-frame score curves, and their IoU metrics.

Pure, vectorised functions over P (query, video) pairs; L = padded frames.
Times are fractions of the video's length: frame i of a video of n frames
covers [i / n, (i + 1) / n).

The moment rule (``estimate_moments``): on a query's per-frame score curve
over the n valid frames of a video, take the peak frame p and the curve's
median m (the background level); the moment is the longest run of
consecutive frames around p whose score is at least ``m + threshold * (c[p] - m)``
(default threshold 0.5: halfway between the background and the peak).
"""
from __future__ import annotations

import torch

IOU_THRESHOLDS = (0.3, 0.5, 0.7)


def estimate_moments(curves: torch.Tensor, mask: torch.Tensor,
                     threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moment estimate of each pair by the rule of the module docstring.

    curves: (P, L) per-frame scores, mask: (P, L) 1 = valid frame (at least
    one per row). Returns int64 (start (P,), end (P,), peak (P,)): the span
    [start, end) and the peak frame, in frames.
    """
    valid = mask > 0
    if not bool(valid.any(1).all()):
        raise ValueError("every curve needs at least one valid frame")
    c = curves.float()
    peak = c.masked_fill(~valid, float("-inf")).argmax(1)
    top = c.gather(1, peak[:, None])
    base = c.masked_fill(~valid, float("nan")).nanmedian(1, keepdim=True).values
    below = (c < base + threshold * (top - base)) | ~valid  # (P, L): frames that end the run
    idx = torch.arange(c.shape[1], device=c.device)[None]
    start = torch.where(below & (idx < peak[:, None]), idx, -1).amax(1) + 1
    end = torch.where(below & (idx > peak[:, None]), idx, c.shape[1]).amin(1)
    return start, end, peak


def interval_iou(start_a: torch.Tensor, end_a: torch.Tensor,
                 start_b: torch.Tensor, end_b: torch.Tensor) -> torch.Tensor:
    """Temporal IoU of intervals [start_a, end_a) and [start_b, end_b), elementwise (any broadcastable shapes)."""
    inter = (torch.minimum(end_a, end_b) - torch.maximum(start_a, start_b)).clamp(min=0)
    union = (end_a - start_a) + (end_b - start_b) - inter
    return inter / union


def random_span_iou(length: torch.Tensor, n_frames: torch.Tensor,
                    gt_start: torch.Tensor, gt_end: torch.Tensor) -> torch.Tensor:
    """Expected IoU with the ground truth of a span of ``length`` frames placed uniformly at random.

    length, n_frames: (P,) int frames (1 <= length <= n_frames); gt_start,
    gt_end: (P,) fractions of the video. The expectation is exact: the mean
    over all n - length + 1 placements. Returns (P,) float64.
    """
    places = torch.arange(int(n_frames.max()), device=length.device)[None]  # (1, Lmax) start frames
    n = n_frames[:, None].double()
    ok = places <= (n_frames - length)[:, None]  # (P, Lmax)
    iou = interval_iou(places / n, (places + length[:, None]) / n, gt_start[:, None].double(),
                       gt_end[:, None].double())
    return (iou * ok).sum(1) / ok.sum(1)


def moment_metrics(iou: torch.Tensor) -> dict[str, float]:
    """Summary of the IoU (P,) of one moment per query with its ground truth.

    Keys: ``miou`` (mean IoU, percent), ``r1_iou0.3`` / ``0.5`` / ``0.7``
    (percent of queries whose moment has IoU >= the threshold), ``n`` (queries).
    """
    if iou.numel() == 0:
        raise ValueError("no query has a ground-truth moment")
    out = {"miou": 100.0 * float(iou.double().mean())}
    for t in IOU_THRESHOLDS:
        out[f"r1_iou{t}"] = 100.0 * float((iou >= t).double().mean())
    out["n"] = int(iou.numel())
    return out
