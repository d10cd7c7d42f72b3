"""Which frames to take: pure functions of frame timestamps (numpy, vectorised).

A video is described by its frames' presentation times ``timestamps`` (T,),
non-decreasing seconds with the first at 0, and its duration D (the last
timestamp plus one frame duration). The frame shown at time t is the last one
whose timestamp is <= t.
"""
import math

import numpy as np


def frames_at(timestamps, times):
    """Index of the frame shown at each of `times` -> int64 array of times' shape, in [0, T - 1]."""
    idx = np.searchsorted(np.asarray(timestamps), np.asarray(times), side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1).astype(np.int64)


def fps_indices(timestamps, duration, fps):
    """Frames sampled at `fps`: the frame shown at the centre of each 1/fps window.

    With duration D there are ``max(1, floor(D * fps))`` windows; window k is
    centred at ``(k + 0.5) / fps`` (one window centred at D / 2 when D * fps < 1).

    Returns:
        int64 (n,) frame indices.
    """
    if duration * fps < 1:
        targets = np.array([duration / 2])
    else:
        targets = (np.arange(math.floor(duration * fps + 1e-6)) + 0.5) / fps
    return frames_at(timestamps, targets)


def centre_indices(n_frames, n_clips):
    """Frame at the centre of each of `n_clips` equal clips of `n_frames` frames.

    Index of clip i = floor((i + 0.5) * n_frames / n_clips), clipped to n_frames - 1
    (computed in integers, so exact).
    """
    i = np.arange(n_clips, dtype=np.int64)
    return np.minimum((2 * i + 1) * n_frames // (2 * n_clips), n_frames - 1)


def clip_grid(duration, clip_seconds):
    """The time grid: consecutive clips of `clip_seconds`, the last one cut at the end.

    There are ``max(1, ceil(D / clip_seconds))`` clips (a trailing part shorter
    than a clip is a clip of its own, so no moment is dropped); clip k spans
    ``[k * clip_seconds, min((k + 1) * clip_seconds, D)]``.

    Returns:
        (starts, stops): float64 (n_clips,) each.
    """
    n_clips = max(1, math.ceil(duration / clip_seconds - 1e-6))
    starts = np.arange(n_clips) * clip_seconds
    return starts, np.minimum(starts + clip_seconds, max(duration, 0.0))


def grid_indices(timestamps, starts, stops, per_clip):
    """`per_clip` frames per clip, shown at the centres of equal sub-windows of each clip.

    Sample j of clip k is taken at ``starts[k] + (j + 0.5) / per_clip * (stops[k] - starts[k])``
    (per_clip = 1: the clip's centre).

    Returns:
        int64 (n_clips, per_clip) frame indices, non-decreasing in row-major order.
    """
    offsets = (np.arange(per_clip) + 0.5) / per_clip
    times = starts[:, None] + offsets[None, :] * (stops - starts)[:, None]
    return frames_at(timestamps, times)
