"""Holmes' frame pooling in float32 (HOLMES.md 1.1), and the dual-query collate's padding to 128 (10.1).

Holmes reads each video's frames as one float32 ``(n, d)`` array from
``FeatureData/<feature>/feature.hdf5`` and pools in float32; the rules are
GMMFormerV2's (``method.data.transforms``: 32 clips with boundaries
``round(k n / 32)`` half to even clipped to n - 1; 128 segments only when
n > 128; ``x / (||x|| + 1e-5)``), which computes in float64. The two agree
to float32 rounding (<= 1e-7 relative); these functions are the float32
path, vectorised (``np.add.reduceat``).
"""
from __future__ import annotations

import numpy as np


def segment_means_f32(x: np.ndarray, n_out: int) -> np.ndarray:
    """(n, d) -> (n_out, d) float32: mean of frames ``b_i .. b_{i+1} - 1``, or frame ``b_i`` when that is empty.

    ``b_k = min(round(k n / n_out), n - 1)`` (half to even; exact for n_out a power of two).
    """
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        raise ValueError("pooling needs at least one frame")
    bounds = np.minimum(np.round(np.arange(n_out + 1) / n_out * n).astype(np.int64), n - 1)
    start, stop = bounds[:-1], bounds[1:]
    # reduceat over (start, stop) pairs: the sum of x[start:stop], or x[start] when start >= stop
    sums = np.add.reduceat(x, np.stack([start, stop], axis=1).ravel(), axis=0)[::2]
    return (sums / np.maximum(stop - start, 1)[:, None].astype(np.float32)).astype(np.float32)


def l2_normalize_f32(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """``x / (||x|| + eps)`` along the last axis, float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + np.float32(eps))


def clip_features_f32(x: np.ndarray, n_clips: int = 32, normalize: bool = True) -> np.ndarray:
    """The clip-level input: ``average_to_fixed_length`` to ``n_clips`` (any n), then L2 (+1e-5), float32."""
    clips = segment_means_f32(x, n_clips)
    return l2_normalize_f32(clips) if normalize else clips


def frame_features_f32(x: np.ndarray, max_len: int = 128) -> np.ndarray:
    """The frame-level input: ``uniform_feature_sampling`` to ``max_len`` when n > max_len, then L2, float32."""
    x = np.asarray(x, dtype=np.float32)
    return l2_normalize_f32(x if len(x) <= max_len else segment_means_f32(x, max_len))
