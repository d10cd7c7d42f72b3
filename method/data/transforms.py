"""Input transforms of frames, tokens and sentence vectors (numpy, vectorised)."""
import numpy as np

from method.data.bigfile import DataError


def uniform_pool(x, n_out, exact_ties=False):
    """Uniform segment mean pooling, (n, D) -> (n_out, D).

    Boundaries b[i] = round(i / n_out * n) (round half to even), each clipped
    to n - 1 (so frame n - 1 is never averaged in); out[i] = mean(x[b[i]:b[i+1]])
    when b[i] < b[i+1], else x[b[i]]. Computed in float64 with a cumulative sum;
    returned in x's floating dtype (float64 for non-float input).

    The boundaries are computed as the authors' code does, ``(i / n_out) * n``
    in float64. For n_out = 128 (a power of two) that equals the usual
    statement round(linspace(0, n, 129)) for every n; for other n_out, exact
    .5 ties may land on either side (300 -> 200: 10.5 -> 11 but 61.5 -> 61),
    which is what DL-DKD++'s pooling to the teacher's frame count does
    (golden ``data_v1_train_student``). ``exact_ties`` computes the exact
    round(linspace(0, n, n_out + 1)) instead (``align_frames``).
    """
    x = np.asarray(x)
    n = x.shape[0]
    if n == 0:
        raise ValueError("uniform_pool needs at least one frame")
    points = np.linspace(0, n, n_out + 1) if exact_ties else np.arange(n_out + 1) / n_out * n
    bounds = np.minimum(np.round(points).astype(np.int64), n - 1)
    start, stop = bounds[:-1], bounds[1:]
    counts = stop - start
    x64 = x.astype(np.float64, copy=False)
    csum = np.zeros((n + 1,) + x.shape[1:], dtype=np.float64)
    np.cumsum(x64, axis=0, out=csum[1:])
    safe_counts = np.maximum(counts, 1).reshape((-1,) + (1,) * (x.ndim - 1))
    means = (csum[stop] - csum[start]) / safe_counts
    single = (counts <= 0).reshape(safe_counts.shape)
    out = np.where(single, x64[start], means)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return out.astype(out_dtype, copy=False)


def reduce_frames(x, max_len):
    """(n, D) -> x when n <= max_len, else uniform_pool(x, max_len)."""
    return x if len(x) <= max_len else uniform_pool(x, max_len)


def l2_normalize(x, eps=1e-5):
    """x / (||x|| + eps) along the last axis; keeps x's dtype."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def align_frames(teacher, n):
    """Resample teacher frames (nt, Dt) onto the student's n frames -> (n, Dt).

    Identity when nt == n, uniform_pool when nt > n, else frame
    floor((i + 0.5) * nt / n) for output i (nearest centre, repeats frames).
    The released code has no such step; this one keeps the exact linspace
    boundaries it has always used (``exact_ties``), so ICCV runs are unchanged.
    """
    nt = len(teacher)
    if nt == n:
        return teacher
    if nt > n:
        return uniform_pool(teacher, n, exact_ties=True)
    idx = ((2 * np.arange(n) + 1) * nt) // (2 * n)
    return teacher[idx]


def student_frames(x, max_ctx_l, n_teacher=None):
    """Student frames (n, Dv) -> (m, Dv) float32: reduced to at most max_ctx_l, then
    L2-normalised, in float64 as the released code does.

    With ``n_teacher`` (DL-DKD++ training items, ``--pool_to_teacher``) a student
    longer than its teacher is first pooled to the teacher's ``n_teacher`` frames.
    """
    x = np.asarray(x, dtype=np.float64)
    if n_teacher is not None and len(x) > n_teacher:
        x = uniform_pool(x, n_teacher)
    return l2_normalize(reduce_frames(x, max_ctx_l)).astype(np.float32)


def clip_features(x, n_clips=32, normalize=True):
    """GMMFormer's clip-level input: the raw frames (n, D) mean-pooled to exactly ``n_clips`` clips -> float32.

    For any n, also n < n_clips (docs/gmmformer.md, "32-clip pooling"; the authors' ``average_to_fixed_length``):
    boundaries round(k n / n_clips) (half to even; exact in float64 for
    n_clips = 32), each clipped to n - 1; clip i is the mean of its frames, or
    frame b_i alone when the segment is empty. This is ``uniform_pool``'s rule
    applied without the n > n_clips condition. Each clip is then L2-normalised
    (+1e-5 on the norm), all in float64. ``normalize=False`` keeps the means
    (the teacher's frames, which are not normalised at load time).
    """
    clips = uniform_pool(np.asarray(x, dtype=np.float64), n_clips)
    return (l2_normalize(clips) if normalize else clips).astype(np.float32)


def teacher_frames(x, n_student, max_ctx_l):
    """Teacher frames (nt, Dt) -> (n_student, Dt) float32: reduced to max_ctx_l,
    not normalised, then aligned to the student's final frame count."""
    reduced = reduce_frames(np.asarray(x, dtype=np.float64), max_ctx_l)
    return align_frames(reduced, n_student).astype(np.float32)


def student_tokens(x, max_desc_l):
    """RoBERTa tokens (n_tokens, Dq) -> (min(n_tokens, max_desc_l), Dq) float32,
    each token L2-normalised (per token, so truncating first gives the same values)."""
    return l2_normalize(np.asarray(x, dtype=np.float32)[:max_desc_l])


def teacher_sentence(x, source="teacher text features"):
    """CLIP sentence vector (Dt,) or (1, Dt) -> (Dt,) float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise DataError(f"{source}: expected a (Dt,) or (1, Dt) sentence vector, got shape {x.shape}")
    return x

