"""Building blocks shared by the students, named as in the authors' state dicts.

Shapes: B sequences of T positions, d hidden size, H heads.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

MASK_VALUE = -1e10  # masked frames / tokens before a max or a pooling softmax, as released

# The GMMFormer family's fast path (docs/performance.md, "The GMMFormer family's fast path"):
#   "off"   the straightforward form, the authors' (GMMFormerV2 pads every batch to 128 frames): the reference;
#   "exact" (default) only what gives the same numbers up to float rounding, the same random stream included:
#           the fusion cross-attention's key / value projections folded into its one query, compact dropout
#           masks, and videos / captions cut to their own length in length buckets, in training too: there
#           every dropout mask is drawn once at the padded batch's shape, in the reference's order, and each
#           bucket takes its rows and positions of it (``DropoutTape``), so the masks are the reference's;
#   "on"    "exact", but each bucket draws its own dropout masks (the same distribution, other masks than the
#           reference: a seeded run's numbers change), skipping the padded positions' draws.
# A run sets it from --fast_path (``configure``); benchmarks and tests set this attribute.
FAST_PATH = "exact"
FAST_PATH_MODES = ("off", "exact", "on")
# Activation checkpointing of the GMM / DyGMM blocks' branches (an option, off by default; a run's
# --checkpoint_branches): each branch keeps only its input and its dropout masks (bool) for backward and runs again
# in backward, with those masks. Less memory, one more forward of the branches in time (docs/performance.md). Fast
# path only; the same numbers.
CHECKPOINT_BRANCHES = False
# Length buckets in training on CUDA: the tape draws each mask with ``native_dropout`` at the reference's shape and
# dtype (what ATen's dropout runs there), expecting the reference's masks and generator offset. Off until a GPU run
# of bench/gpu_check.py's ``fast_path_tape`` check (which sets it for its own run) shows that they are; off, a CUDA
# region with dropout runs whole, at the batch's longest sequence.
CUDA_TAPE = False
BUCKET_OVERHEAD = 64  # cost of one more length bucket, in padded positions (its extra small ops)
MAX_BUCKETS = 8


def fast_path() -> str:
    """The fast-path mode now in force ("off", "exact", "on")."""
    if FAST_PATH not in FAST_PATH_MODES:
        raise ValueError(f"blocks.FAST_PATH={FAST_PATH!r}: one of {FAST_PATH_MODES}")
    return FAST_PATH


def configure(mode: str, checkpoint: bool = False) -> None:
    """Set ``FAST_PATH`` and ``CHECKPOINT_BRANCHES`` for this process (a run's ``--fast_path`` and
    ``--checkpoint_branches``)."""
    global FAST_PATH, CHECKPOINT_BRANCHES
    if mode not in FAST_PATH_MODES:
        raise ValueError(f"fast path {mode!r}: one of {FAST_PATH_MODES}")
    FAST_PATH, CHECKPOINT_BRANCHES = mode, bool(checkpoint)


def buckets_allowed(module: nn.Module) -> bool:
    """Whether ``module`` may cut its sequences into length buckets (``run_bucketed``): on the fast path ("exact"
    or "on"). In training on "exact" the buckets' dropouts take the reference's masks (``DropoutTape``)."""
    return fast_path() != "off"


def extents(mask: torch.Tensor) -> list[int]:
    """mask: (B, T) 1 = valid -> per row, 1 + the index of its last valid position (T for a row with none)."""
    t = mask.shape[1]
    pos = torch.arange(1, t + 1, device=mask.device)
    ext = ((mask != 0) * pos).amax(dim=1)
    return torch.where(ext == 0, t, ext).tolist()


def cut_masked_tail(feats: torch.Tensor, mask: torch.Tensor, zero_rows: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(feats (V, P, D), mask (V, P)) cut after the last position that counts in any row, and whether anything was
    cut, on the fast path (not under ``--compile``); else unchanged. A position does not count in a row when it is
    masked or (``zero_rows``) its feature row is exactly zero: for a max over positions where each such position is
    a 0 candidate (the zeroed padded frames of GMMFormerV2's family, Q3 / RAL's R5; the dual Holmes' token-wise
    score) the cut positions were 0 candidates of every row, so a 0 floor on the max over the rest gives the same
    scores and the same gradients of everything that produced the rows."""
    if fast_path() == "off" or torch.compiler.is_compiling():
        return feats, mask, False
    alive = mask != 0
    if zero_rows:
        alive = alive & (feats != 0).any(dim=-1)
    counted = alive.any(dim=0).nonzero()
    length = int(counted.max()) + 1 if len(counted) else mask.shape[1]
    if length == mask.shape[1]:
        return feats, mask, False
    return feats[:, :length], mask[:, :length], True


def length_buckets(lengths: Sequence[int], overhead: Optional[int] = None,
                   max_buckets: int = MAX_BUCKETS) -> list[tuple[list[int], int]]:
    """Groups of rows cut to a common length: [(row indices, length)], minimising the padded positions
    ``sum(rows x length)`` plus ``overhead`` (default ``BUCKET_OVERHEAD``) per group, at most ``max_buckets`` groups
    (dynamic programme over the rows sorted by length)."""
    overhead = BUCKET_OVERHEAD if overhead is None else overhead
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    if n == 0:
        return []
    inf = float("inf")
    # best[k][j]: least cost of the first j sorted rows in k groups
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + (j - i) * ls[j - 1] + overhead
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_buckets + 1), key=lambda m: best[m][n])
    groups, j = [], n
    while k > 0:
        i = cut[k][j]
        groups.append((order[i:j], ls[j - 1]))
        j, k = i, k - 1
    return groups[::-1]


class _NeedsReference(Exception):
    """A length-bucketed region asked for a dropout mask the tape cannot draw like the reference."""


class DropoutTape:
    """The dropout masks of a length-bucketed region, drawn at the padded batch's shapes in the reference's order.

    The reference draws each dropout of a region once, at the whole batch's shape ``(r x V, ..., T, ...)``; the
    buckets run the region's code one after the other, each making the same dropout calls in the same order. So
    the first bucket's k-th call draws the k-th mask at the padded shape (the same random numbers, in the same
    order, as the reference's k-th draw), and every bucket takes its rows and positions of it: each element is
    dropped exactly where the reference drops it. ``rows``: the batch's row count V; ``length``: its padded T.
    A call's ``length_dims`` are the dims of T (cut to the bucket's length); dim 0 holds ``r`` row blocks of V
    (``r`` > 1: several branches' rows, branch-major, as DyGMM's ``ca`` reads them).
    """

    def __init__(self, rows: int, length: int, device: torch.device, state: torch.Tensor):
        self.rows, self.length, self.device = rows, length, device
        self.masks: list[Optional[torch.Tensor]] = []
        self.pos, self.idx, self.bucket_length, self.first, self.last = 0, None, 0, True, False
        self.state = state  # the generator's state before the region, then after each draw

    def start(self, idx: torch.Tensor, length: int, first: bool, last: bool) -> None:
        self.pos, self.idx, self.bucket_length, self.first, self.last = 0, idx, length, first, last

    def take(self, x: torch.Tensor, p: float, length_dims: Sequence[int]) -> torch.Tensor:
        """The kept mask (bool, x's shape) of this bucket's next dropout call on ``x``."""
        b = len(self.idx)
        if x.shape[0] % b:
            raise RuntimeError(f"dropout of {tuple(x.shape)} in a bucket of {b} rows")
        r = x.shape[0] // b
        if self.first:
            if not _tape_draws_on(self.device):  # elsewhere run the reference
                raise _NeedsReference
            if not torch.equal(_rng_state(self.device), self.state):
                raise _NeedsReference  # something else drew random numbers in between
            full = list(x.shape)
            full[0] = r * self.rows
            for dim in length_dims:
                full[dim] = self.length
            self.masks.append(_reference_keep(full, p, x.dtype, x.device))
            self.state = _rng_state(self.device)
        mask = self.masks[self.pos]
        if self.last:
            self.masks[self.pos] = None
        self.pos += 1
        mask = mask.view(r, self.rows, *mask.shape[1:])
        for dim in length_dims:  # views, then one copy of the bucket's part
            mask = mask.narrow(dim + 1, 0, self.bucket_length)
        return mask.index_select(1, self.idx).view(x.shape)


_TAPE: Optional[DropoutTape] = None
# regions run in buckets, and regions set back to the whole padded batch (tests and benchmarks read them)
BUCKET_COUNTS = {"bucketed": 0, "reference": 0}


def _tape_draws_on(device: torch.device) -> bool:
    """Whether the tape reproduces the reference's dropout masks on ``device``: the CPU; CUDA with ``CUDA_TAPE``."""
    return device.type == "cpu" or (device.type == "cuda" and CUDA_TAPE)


def _rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator that ``device``'s dropouts draw from."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def run_bucketed(fn: Callable[..., torch.Tensor], mask: torch.Tensor, *tensors: torch.Tensor,
                 pad_length: bool = True, length: Optional[int] = None) -> torch.Tensor:
    """``fn(mask, *tensors)`` for (B, T, ...) sequences whose positions beyond each row's last valid one take no
    part in anything the others produce (masked keys, masked pooling): each length bucket runs cut to its
    length, and the outputs are put back in row order, with ``pad_length`` zero-padded along dim 1 to T, or to
    ``length`` (padded rows: ``fn`` must give 0 there itself).

    ``length`` (>= T): the reference's padded length, when the reference pads the batch further to it with
    masked positions (GMMFormerV2's 128 frames): its dropout masks are drawn at that length.

    On the "exact" path the dropouts inside ``fn`` (``dropout`` / ``relu_dropout`` of this module) take their
    masks from a ``DropoutTape``: the reference's random numbers and masks. Where that cannot be guaranteed the
    generator is set back and ``fn`` runs on the whole batch, as the reference: where the tape draws (the CPU;
    CUDA with ``CUDA_TAPE``) but a dropout outside this module drew in between, padded to ``length`` as the
    reference runs, bit for bit on the CPU; elsewhere (CUDA without ``CUDA_TAPE``) at T, with the reference's
    numbers and masks drawn at T.
    """
    global _TAPE
    t = mask.shape[1]
    full = t if length is None else length
    if full < t:
        raise ValueError(f"run_bucketed: length {full} below the batch's {t} positions")

    def padded(out: torch.Tensor) -> torch.Tensor:
        return pad_positions(out, full) if pad_length else out

    if torch.compiler.is_compiling():  # --compile traces one padded shape (ShapePolicy), not data-dependent buckets
        return padded(fn(mask, *tensors))
    groups = length_buckets(extents(mask))
    if not groups or (len(groups) == 1 and groups[0][1] == full) or _TAPE is not None:
        return padded(fn(mask, *tensors))  # no rows, nothing to cut, or already inside a bucketed region
    start = _rng_state(mask.device) if fast_path() == "exact" else None
    tape = DropoutTape(mask.shape[0], full, mask.device, start) if start is not None else None
    outs, order = [], []
    try:
        for n, (rows, cut) in enumerate(groups):
            idx = torch.tensor(rows, device=mask.device)
            if tape is not None:
                tape.start(idx, cut, n == 0, n == len(groups) - 1)
                _TAPE = tape
            out = fn(mask[idx, :cut], *(x[idx, :cut] for x in tensors))
            if tape is not None:
                _TAPE = None
                if not torch.equal(_rng_state(mask.device), tape.state):
                    raise _NeedsReference  # a dropout outside this module's drew: not the reference's stream
            outs.append(padded(out))
            order.extend(rows)
    except _NeedsReference:
        _TAPE = None
        _set_rng_state(start, mask.device)
        BUCKET_COUNTS["reference"] += 1
        if _tape_draws_on(mask.device) and full > t:
            return fn(pad_positions(mask, full), *(pad_positions(x, full) for x in tensors))
        return padded(fn(mask, *tensors))
    finally:
        _TAPE = None
    BUCKET_COUNTS["bucketed"] += 1
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(outs)[inverse.to(mask.device)]


def pad_positions(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T, ...) zero-padded along dim 1 to ``length`` >= T positions."""
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, length - x.shape[1]))


def pad_frames(frames: torch.Tensor, frame_mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (V, L, Dv) and mask (V, L) zero-padded to exactly ``length`` positions (what GMMFormerV2, RAL and
    Holmes do with every batch before the frame block)."""
    if frames.shape[1] > length:
        raise ValueError(f"{frames.shape[1]} frames exceed {length}")
    return pad_positions(frames, length), pad_positions(frame_mask, length)


def pack_mask(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """A bool mask as bits, 8 to a byte, least significant first (what backward keeps of a dropout):
    (packed (ceil(n / 8),) uint8, shape). On the CPU NumPy's ``packbits`` (tens of times faster), the same bytes."""
    flat = keep.reshape(-1)
    if flat.device.type == "cpu":
        return torch.from_numpy(np.packbits(flat.numpy(), bitorder="little")), keep.shape
    flat = F.pad(flat.view(torch.uint8), (0, -flat.numel() % 8))
    bits = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=keep.device)
    return (flat.view(-1, 8) * bits).sum(-1, dtype=torch.uint8), keep.shape


def unpack_mask(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``pack_mask``'s inverse: the bool mask of ``shape``."""
    n = math.prod(shape)
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little").view(np.bool_)).view(shape)
    bits = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=packed.device)
    return (packed[:, None] & bits).ne_(0).view(-1)[:n].view(shape)


_WORD_CHUNK = 1 << 20  # elements per ``random_`` call of ``_bernoulli_keep`` (an 8 MiB int64 buffer)
_MANTISSA = (1 << 53) - 1


@functools.cache
def _bernoulli_is_word_draw() -> bool:
    """Whether this build's CPU ``bernoulli_(p)`` is ATen's serial draw: per element, one 64-bit word of the
    generator's Mersenne Twister (``random64``), its low 53 bits ``k`` read as ``u = k / 2**53``, kept where
    ``u < p``. ``random_()`` on int64 draws the same words (as ``word mod 2**63``, the same low bits) at about
    half the cost. Builds that draw otherwise (MKL's stream on Intel CPUs, a future ATen) fail this check, and
    ``_bernoulli_keep`` calls ``bernoulli_`` itself. Checked once on a private generator."""
    gen, n = torch.Generator(), 4099  # beyond MKL's parallel grain, not a multiple of anything
    for p in (0.9, 0.3, 0.5):
        gen.manual_seed(20261204)
        want = torch.empty(n, dtype=torch.bool).bernoulli_(p, generator=gen)
        after = gen.get_state()
        gen.manual_seed(20261204)
        words = torch.empty(n, dtype=torch.int64).random_(generator=gen)
        same = torch.equal(want, (words & _MANTISSA) < math.ceil(p * 2.0 ** 53))
        if not (same and torch.equal(after, gen.get_state())):
            return False
    return True


def _bernoulli_keep(shape: Sequence[int], p: float, device: torch.device) -> torch.Tensor:
    """The CPU dropout's kept mask of ``shape``: the same random numbers as ATen's ``empty_like(x).bernoulli_(1 - p)``
    (one draw per element, in order), drawn straight into bools. Where ``bernoulli_`` is the serial word draw
    (``_bernoulli_is_word_draw``) the words come from ``random_`` in chunks and are compared in bulk: the same
    bits and generator state, about 30 % less time (the draw is one thread's serial loop either way). Under
    ``torch.compile`` plainly ``bernoulli_``."""
    keep = torch.empty(tuple(shape), dtype=torch.bool, device=device)
    if device.type != "cpu" or torch.compiler.is_compiling() or not _bernoulli_is_word_draw():
        return keep.bernoulli_(1 - p)  # (compiled: the compiler's own random stream either way)
    flat, n = keep.view(-1), keep.numel()
    threshold = math.ceil((1 - p) * 2.0 ** 53)  # k / 2**53 < 1 - p  <=>  k < threshold (exact: a power-of-2 scale)
    words = torch.empty(min(n, _WORD_CHUNK), dtype=torch.int64)
    for start in range(0, n, _WORD_CHUNK):
        chunk = words[:min(_WORD_CHUNK, n - start)].random_()
        torch.lt(chunk.bitwise_and_(_MANTISSA), threshold, out=flat[start:start + len(chunk)])
    return keep


def _reference_keep(shape: Sequence[int], p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The kept mask ATen's dropout draws for a contiguous tensor of ``shape`` and ``dtype``: on the CPU
    ``_bernoulli_keep``'s; on CUDA ``native_dropout``'s (its masks depend on the dtype)."""
    if device.type == "cpu":
        return _bernoulli_keep(shape, p, device)
    return torch.native_dropout(torch.empty(tuple(shape), dtype=dtype, device=device), p, True)[1]


def _draw_dropout(x: torch.Tensor, p: float, keep: Optional[torch.Tensor] = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x dropped, kept mask (bool)) with the random numbers ``F.dropout(x, p, True)`` draws: on the CPU
    ``empty_like(x).bernoulli_(1 - p)`` (drawn straight into bools: the same numbers) scaled by 1 / (1 - p), as
    ATen's dropout; elsewhere ``native_dropout`` (what ATen's dropout calls on CUDA). With ``keep`` given (a
    ``DropoutTape``'s), no draw: x scaled where ``keep``, 0 elsewhere, as the CPU's dropout computes it."""
    if keep is None and x.device.type != "cpu":
        out, keep = torch.native_dropout(x, p, True)
        return out, keep
    if keep is None:
        keep = _bernoulli_keep(x.shape, p, x.device)
    return x * keep.to(x.dtype).div_(1 - p), keep


class _CompactDropout(torch.autograd.Function):
    """``F.dropout`` (the same random draw, the same numbers) that keeps a bool mask for backward,
    not the float noise tensor ATen's CPU dropout keeps: its bits (``pack_mask``), 1/32 of its memory."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        out, keep = _draw_dropout(x, p, keep)
        packed, ctx.shape = pack_mask(keep)
        ctx.save_for_backward(packed)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (packed,) = ctx.saved_tensors
        return grad * unpack_mask(packed, ctx.shape).to(grad.dtype).div_(1 - ctx.p), None, None


class _ReluDropout(torch.autograd.Function):
    """``F.dropout(F.relu(h), p, True)`` (the same random draw, the same numbers) keeping only its output for
    backward (which the next Linear keeps anyway): the gradient passes where the output is > 0, scaled by
    1 / (1 - p), exactly what ReLU's and dropout's backward give; ReLU's output and the noise are not kept."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, p: float, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        out, _ = _draw_dropout(F.relu(h), p, keep)
        ctx.save_for_backward(out)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        scale = torch.ones((), dtype=grad.dtype, device=grad.device).div_(1 - ctx.p)
        # grad where the output is > 0 (ReLU passed it and dropout kept it), times 1 / (1 - p): one pass
        return torch.ops.aten.threshold_backward(grad, out, 0).mul_(scale), None, None


class _MaskLog:
    """The dropout masks of one checkpointed call, logged by its forward and replayed when backward runs it again."""

    def __init__(self):
        self.masks: list[tuple[torch.Tensor, torch.Size]] = []  # pack_mask's
        self.pos, self.replay = 0, False


_LOG: Optional[_MaskLog] = None


def _draw_keep(x: torch.Tensor, p: float) -> torch.Tensor:
    """The kept mask ``F.dropout(x, p, True)`` would draw (see ``_draw_dropout``), without applying it."""
    if x.device.type != "cpu":
        return torch.native_dropout(x, p, True)[1]
    return _bernoulli_keep(x.shape, p, x.device)


def _keep_mask(module: nn.Dropout, x: torch.Tensor, length_dims: Sequence[int]) -> Optional[torch.Tensor]:
    """This dropout call's kept mask when it must be known before the call: replayed in a checkpointed branch's
    second run, taken from the ``DropoutTape`` inside a bucketed region, drawn and logged in a checkpointed
    branch's first run; None: the autograd function draws it."""
    if _LOG is not None and _LOG.replay:
        keep = unpack_mask(*_LOG.masks[_LOG.pos])
        _LOG.pos += 1
        return keep
    keep = None if _TAPE is None else _TAPE.take(x, module.p, length_dims)
    if _LOG is not None:
        if keep is None:
            keep = _draw_keep(x, module.p)
        _LOG.masks.append(pack_mask(keep))
    return keep


def checkpointed(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)`` under activation checkpointing (``torch.utils.checkpoint``, non-reentrant) whose second run,
    in backward, replays the first run's dropout masks (``_MaskLog``): the same numbers, no new random draws."""
    log = _MaskLog()

    def run(*a: torch.Tensor) -> torch.Tensor:
        global _LOG
        prev, _LOG = _LOG, log
        log.pos = 0
        try:
            return fn(*a)
        finally:
            _LOG = prev
            log.replay = True

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, preserve_rng_state=False)


def stacked_branches(owner: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor,
                     run: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``torch.stack([run(layer, x) for layer in layers])``: the parallel attention branches of ``owner``'s block,
    each checkpointed (``checkpointed``) when ``checkpoint_branches(owner)``."""
    if checkpoint_branches(owner):
        return torch.stack([checkpointed(lambda y, layer=layer: run(layer, y), x) for layer in layers])
    return torch.stack([run(layer, x) for layer in layers])


def checkpoint_branches(module: nn.Module) -> bool:
    """Whether ``module``'s branches run checkpointed now: ``CHECKPOINT_BRANCHES``, the fast path, training,
    gradients on."""
    return CHECKPOINT_BRANCHES and FAST_PATH != "off" and module.training and torch.is_grad_enabled()


def _compact(module: nn.Dropout, x: torch.Tensor) -> bool:
    """Whether ``module``'s dropout of ``x`` runs as one of this module's compact forms now: the fast path, in
    training, 0 < p < 1, a non-empty x (elsewhere the plain module, which draws nothing or zeroes everything)."""
    return FAST_PATH != "off" and module.training and 0 < module.p < 1 and x.numel() > 0


def dropout(module: nn.Dropout, x: torch.Tensor, length_dims: Sequence[int] = (1,)) -> torch.Tensor:
    """``module(x)``; on the fast path with a bool mask kept for backward (``_CompactDropout``).
    ``length_dims``: x's dims of the sequence positions (see ``DropoutTape``)."""
    if not _compact(module, x):
        return module(x)
    return _CompactDropout.apply(x, module.p, _keep_mask(module, x, length_dims))


def relu_dropout(module: nn.Dropout, h: torch.Tensor, length_dims: Sequence[int] = (1,)) -> torch.Tensor:
    """``module(F.relu(h))``; on the fast path keeping only the output for backward (``_ReluDropout``)."""
    if not _compact(module, h):
        return module(F.relu(h))
    return _ReluDropout.apply(h, module.p, _keep_mask(module, h, length_dims))


class _NormDropoutLinear(torch.autograd.Function):
    """``Linear(dropout(LayerNorm(x)))`` with a given kept mask, keeping for backward its input, the LayerNorm's
    statistics and the mask's bits, not the normalised and the dropped (.., D_in) copies (D_in = 3,072 for TVR's
    frames): backward normalises again (elementwise, the same numbers), then the matmuls, the dropout's and the
    LayerNorm's backward that autograd runs for the three modules."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w, b, keep, p: float, eps: float):
        z, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps)
        out = F.linear(z * keep.to(z.dtype).div_(1 - p), w, b)
        packed, ctx.shape = pack_mask(keep)
        ctx.save_for_backward(x, mean, rstd, packed, ln_w, ln_b, w)
        ctx.p, ctx.eps = p, eps
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mean, rstd, packed, ln_w, ln_b, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        scale = unpack_mask(packed, ctx.shape).to(grad.dtype).div_(1 - ctx.p)
        g2 = grad.reshape(-1, grad.shape[-1])
        gw = gb = gx = gln_w = gln_b = None
        if need[3]:
            z = torch.native_layer_norm(x, (x.shape[-1],), ln_w, ln_b, ctx.eps)[0]
            gw = g2.t().mm((z * scale).reshape(-1, x.shape[-1]))
        if need[4]:
            gb = g2.sum(0)
        if need[0] or need[1] or need[2]:
            gz = g2.mm(w).view(x.shape) * scale
            gx, gln_w, gln_b = torch.ops.aten.native_layer_norm_backward(
                gz, x, [x.shape[-1]], mean, rstd, ln_w, ln_b, [need[0], need[1], need[2]])
        return gx, gln_w, gln_b, gw, gb, None, None, None


class LinearLayer(nn.Module):
    """LayerNorm(in) -> Dropout -> Linear(in, out) -> ReLU; names as released (``LayerNorm``, ``net.1``).

    With ``keep_input`` on the fast path in training, one autograd function (``_NormDropoutLinear``) that keeps
    x, not its two normalised copies, with the reference's dropout mask: less memory for one more LayerNorm in
    backward (the GMMFormer family's choice; DL-DKD's student, whose step is small, keeps the plain form)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float, keep_input: bool = True):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(in_dim, eps=1e-5)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
        self.keep_input = keep_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop, linear = self.net
        if (not self.keep_input or not _compact(drop, x) or not torch.is_grad_enabled()
                or x.dtype != linear.weight.dtype or torch.is_autocast_enabled(x.device.type)):
            return F.relu(self.net(self.LayerNorm(x)))
        keep = _keep_mask(drop, x, (1,))
        if keep is None:
            keep = _draw_keep(x, drop.p)
        ln = self.LayerNorm
        return F.relu(_NormDropoutLinear.apply(x, ln.weight, ln.bias, linear.weight, linear.bias, keep, drop.p,
                                               ln.eps))


class PositionalEncoding(nn.Module):
    """x + trainable position embedding -> LayerNorm -> Dropout."""

    def __init__(self, max_len: int, dim: int, dropout: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d) with T <= max_len."""
        x = x + self.position_embeddings.weight[: x.shape[1]]
        return dropout(self.dropout, self.LayerNorm(x))


class SelfAttentionCore(nn.Module):
    """Multi-head self-attention; -10000 added on padded keys; dropout on the probabilities."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout_p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d), mask: (B, T) 1 = valid -> (B, T, d)."""
        b, t, d = x.shape

        def heads(h: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d/H)
            return h.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        bias = ((1.0 - mask) * -10000.0).to(x.dtype)[:, None, None, :]  # (B, 1, 1, T)
        out = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
            attn_mask=bias, dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, t, d)


class AttentionOutput(nn.Module):
    """Linear -> Dropout -> residual add -> LayerNorm."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(dropout(self.dropout, self.dense(h)) + residual)


class AttentionBlock(nn.Module):
    """One self-attention block, no feed-forward sub-layer (``self`` / ``output`` as released)."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.self = SelfAttentionCore(dim, n_heads, dropout)
        self.output = AttentionOutput(dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


def attention_pool(scorer: nn.Linear, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention pooling: softmax over positions of ``scorer(x)`` (padded at -1e10), weighted sum.

    scorer: Linear(d, 1, no bias); x: (B, T, d); mask: (B, T) 1 = valid -> (B, d).
    """
    logits = scorer(x).squeeze(-1).masked_fill(mask == 0, MASK_VALUE)
    return torch.einsum("bt,btd->bd", torch.softmax(logits, dim=-1), x)


def encode_pooled_query(student: nn.Module, feat: torch.Tensor, mask: torch.Tensor,
                        input_proj: Optional[nn.Module] = None) -> torch.Tensor:
    """The GMMFormer family's query encoder: projection, positions, ``student.query_encoder``, attention pooling.

    feat: (Q, N, Dq), mask: (Q, N) -> (Q, d). ``input_proj`` replaces ``student.query_input_proj``. Tokens beyond
    a caption's last one are masked keys and weigh 0 in the pooling, so captions may run cut to their own lengths
    (``FAST_PATH``).
    """
    proj = input_proj or student.query_input_proj

    def encode(m: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        x = student.query_pos_embed(proj(f))
        if checkpoint_branches(student):
            y = checkpointed(lambda z: student.query_encoder(z, m), x)
        else:
            y = student.query_encoder(x, m)
        return attention_pool(student.modular_vector_mapping, y, m)

    if buckets_allowed(student):
        return run_bucketed(encode, mask, feat, pad_length=False)
    return encode(mask, feat)


# --------------------------------------------------------------------------- #
# GMMFormer family (docs/gmmformer.md: "Shared blocks", "The GMMFormer network", "The GMMFormerV2 network")
# --------------------------------------------------------------------------- #
GMM_WIDTHS = (None, 0.5, 1.0, 5.0)  # GMMFormer's GMM block: attn0..attn3 (None = no Gaussian)
DYGMM_WIDTHS = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)  # GMMFormerV2's DyGMM block: attn0..attn7


def gaussian_matrix(length: int, width: float, centred: bool = False, own_lengths: torch.Tensor | None = None,
                    device: torch.device | None = None) -> torch.Tensor:
    """The Gaussian prior G(L, w) of the attention logits, float32 as the authors compute it.

    Row i is ``exp(-(x_j - c_i)^2 / (2 sigma^2))`` over the key grid
    ``x_j = j / (L - 1)`` (``linspace(0, 1, L)``), ``sigma = max(w, 0.01) / 9``,
    divided by its own maximum. Centres ``c_i = i / L`` as released (quirk Q2),
    or ``c_i = x_i`` with ``centred`` (a diagonal prior). Rows whose every
    entry underflows are NaN (0/0), as released (w = 0.1, L in 2..4).

    Returns (L, L); with ``own_lengths`` (V,) (quirk Q1 fix) a (V, L, L)
    stack where video v's top-left (n_v, n_v) block is G(n_v, w) and the
    entries beyond n_v are 0. Placed on ``own_lengths``' device, else ``device``.
    """
    if own_lengths is not None:
        device = own_lengths.device
    idx = torch.arange(length, device=device)
    if own_lengths is None:
        n = torch.full((1, 1), float(length), device=device)
        grid = torch.linspace(0, 1, length, device=device)[None]  # (1, L)
    else:
        n = own_lengths.to(torch.float32)[:, None]  # (V, 1)
        grid = idx / (n - 1).clamp(min=1)  # (V, L); x_0 = 0 when n = 1
    centres = grid if centred else idx / n  # (·, L)
    sigma = torch.tensor(width, dtype=torch.float32, device=device).clamp(min=1e-2) / 9
    diff = grid[:, None, :] - centres[:, :, None]  # (·, L rows, L keys)
    g = 0.3989422804014327 / sigma * torch.exp(-diff ** 2 / (2 * sigma ** 2))  # the constant cancels; kept for rounding
    if own_lengths is None:
        return (g / g.amax(dim=-1, keepdim=True))[0]
    inside = idx[None, :] < own_lengths[:, None]  # (V, L)
    g = g * inside[:, None, :]  # keys beyond n_v leave the row maximum
    valid = inside[:, :, None] & inside[:, None, :]
    return torch.where(valid, g / g.amax(dim=-1, keepdim=True), torch.zeros_like(g))


@functools.lru_cache(maxsize=256)
def _cached_gaussian(length: int, width: float, centred: bool, device: torch.device) -> torch.Tensor:
    """``gaussian_matrix(length, width, centred)`` computed once per length, width and device (fast path): the
    priors do not change from step to step. Read only; a normal tensor even when first made in inference mode."""
    with torch.inference_mode(False), torch.no_grad():
        return gaussian_matrix(length, width, centred, device=device)


class GaussianSelfAttention(nn.Module):
    """Multi-head attention whose logits are multiplied by G(L_k, width) before the -10000 padding term (2.4).

    Written out (no ``scaled_dot_product_attention``, which cannot multiply the
    logits); vectorised over items and heads. ``width=None``: plain attention.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, width: float | None = None, centred: bool = False):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.width = width
        self.centred = centred
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                own_lengths: torch.Tensor | None = None, gauss_length: int | None = None) -> torch.Tensor:
        """x: (B, T, d) queries; memory: (B, S, d) keys/values (default x); mask: (B, S) 1 = valid or None;
        own_lengths: (B,) per-item Gaussian lengths (quirk Q1 fix) or None -> (B, T, d).

        ``gauss_length`` (>= S): the sequence is the first S positions of one of
        that length whose other positions are all masked; G is that length's,
        cut to (T, S). Masked keys weigh exactly 0, so this equals attending
        over the whole padded length.
        """
        memory = x if memory is None else memory
        b, t, d = x.shape
        dh = d // self.n_heads

        def heads(h: torch.Tensor) -> torch.Tensor:  # (B, ·, d) -> (B, H, ·, d/H); B may be 0 (an empty share)
            return h.view(b, h.shape[1], self.n_heads, dh).transpose(1, 2)

        logits = heads(self.query(x)) @ heads(self.key(memory)).transpose(-1, -2) / math.sqrt(dh)  # (B, H, T, S)
        if self.width is not None:
            length = memory.shape[1] if gauss_length is None else gauss_length
            if own_lengths is None and FAST_PATH != "off" and not torch.compiler.is_compiling():
                gauss = _cached_gaussian(length, self.width, self.centred, x.device)
            else:
                gauss = gaussian_matrix(length, self.width, self.centred, own_lengths, device=x.device)
            gauss = gauss[..., :t, :memory.shape[1]]
            logits = logits * (gauss if own_lengths is None else gauss[:, None])
        if mask is not None:
            logits = logits + ((1.0 - mask) * -10000.0).to(logits.dtype)[:, None, None, :]
        # the sequence's positions (DropoutTape): queries and keys, or only the keys of a cross-attention
        probs = dropout(self.dropout, torch.softmax(logits, dim=-1), (2, 3) if memory is x else (3,))
        return (probs @ heads(self.value(memory))).transpose(1, 2).reshape(b, t, d)

    def one_query(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(query.expand(B, 1, d), mask, memory)`` for one query vector shared by every item, without
        projecting the keys and values (no Gaussian: ``width`` must be None). query: (1, 1, d), memory: (B, S, d),
        mask: (B, S) or None -> (B, 1, d).

        With q_h the query's head h: ``q_h . (W_k m + b_k)_h = (W_k,h^T q_h) . m + q_h . b_k,h`` and
        ``sum_s p_s (W_v m_s + b_v)_h = W_v,h (sum_s p_s m_s) + (sum_s p_s) b_v,h``: the same numbers up to
        float rounding, the same dropout draw (probabilities of the same shape, in the same order), and
        H d instead of 2 d^2 multiply-adds per memory position.
        """
        if self.width is not None:
            raise ValueError("one_query has no Gaussian prior")
        b, s, d = memory.shape
        h, dh = self.n_heads, d // self.n_heads
        q = self.query(query.reshape(1, d)).view(h, dh)  # (H, dh)
        wk = self.key.weight.view(h, dh, d)
        u = torch.einsum("hc,hcd->hd", q, wk) / math.sqrt(dh)  # (H, d)
        c = (q * self.key.bias.view(h, dh)).sum(-1) / math.sqrt(dh)  # (H,)
        logits = (memory @ u.t() + c).transpose(1, 2)  # (B, H, S)
        if mask is not None:
            logits = logits + ((1.0 - mask) * -10000.0).to(logits.dtype)[:, None, :]
        probs = dropout(self.dropout, torch.softmax(logits, dim=-1).contiguous().view(b, h, 1, s), (3,)).view(b, h, s)
        pooled = probs @ memory  # (B, H, d)
        out = torch.einsum("bhd,hcd->bhc", pooled, self.value.weight.view(h, dh, d))
        out = out + probs.sum(-1, keepdim=True) * self.value.bias.view(h, dh)
        return out.reshape(b, 1, d)


class GMMAttentionLayer(nn.Module):
    """GMMFormer attention layer (3.1): ``LN(X + Dropout(Linear(SA(X))))``, no feed-forward (``self`` / ``output``)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, width: float | None = None, centred: bool = False):
        super().__init__()
        self.self = GaussianSelfAttention(dim, n_heads, dropout, width, centred)
        self.output = AttentionOutput(dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                own_lengths: torch.Tensor | None = None, gauss_length: int | None = None) -> torch.Tensor:
        """x: (B, T, d), mask: (B, T) or None, own_lengths: (B,) or None -> (B, T, d).

        ``gauss_length``: see ``GaussianSelfAttention.forward``."""
        return self.output(self.self(x, mask, own_lengths=own_lengths, gauss_length=gauss_length), x)


class FeedForward(nn.Module):
    """``layer2(Dropout(ReLU(layer1(x))))`` (names ``layer1`` / ``layer2`` as released)."""

    def __init__(self, dim: int, inner: int, dropout: float):
        super().__init__()
        self.layer1 = nn.Linear(dim, inner)
        self.layer2 = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, length_dims: Sequence[int] = (1,)) -> torch.Tensor:
        return self.layer2(relu_dropout(self.dropout, self.layer1(x), length_dims))


class FFNAttentionLayer(nn.Module):
    """GMMFormerV2 attention layer (4.1; with ``memory``, the cross-attention layer 4.2).

    ``Y = norm1(X + Dropout(SA(X, memory)))``, ``out = norm2(Y + Dropout(FFN(Y)))``,
    FFN of inner size ``inner`` (4d in 4.1, d in 4.2); no output Linear.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, inner: int, width: float | None = None,
                 centred: bool = False):
        super().__init__()
        self.self = GaussianSelfAttention(dim, n_heads, dropout, width, centred)
        self.output = FeedForward(dim, inner, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                memory: torch.Tensor | None = None, gauss_length: int | None = None) -> torch.Tensor:
        """x: (B, T, d), mask: (B, S) key mask or None, memory: (B, S, d) or None (= x) -> (B, T, d).

        ``gauss_length``: see ``GaussianSelfAttention.forward``.
        """
        dims = (1,) if memory is None else ()  # a cross-attention's queries are not the sequence's positions
        y = self.norm1(x + dropout(self.dropout, self.self(x, mask, memory, gauss_length=gauss_length), dims))
        return self.norm2(y + dropout(self.dropout, self.output(y, dims), dims))

    def forward_one_query(self, query: torch.Tensor, memory: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(query.expand(B, 1, d), mask, memory)``, query: (1, 1, d) -> (B, 1, d): see
        ``GaussianSelfAttention.one_query``."""
        x = query.expand(memory.shape[0], 1, query.shape[-1])
        y = self.norm1(x + dropout(self.dropout, self.self.one_query(query, memory, mask), ()))
        return self.norm2(y + dropout(self.dropout, self.output(y, ()), ()))


class GMMBlock(nn.Module):
    """GMMFormer's GMM block (3.2): four attention layers with widths ``GMM_WIDTHS`` on the same input, averaged."""

    def __init__(self, dim: int, n_heads: int, dropout: float, centred: bool = False):
        super().__init__()
        for k, width in enumerate(GMM_WIDTHS):
            self.add_module(f"attn{k}", GMMAttentionLayer(dim, n_heads, dropout, width, centred))

    def branches(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                 own_lengths: torch.Tensor | None = None, gauss_length: int | None = None) -> torch.Tensor:
        """x: (B, T, d), mask: (B, T) or None, own_lengths: (B,) or None -> (4, B, T, d), attn0..attn3.

        ``gauss_length``: see ``GaussianSelfAttention.forward``."""
        return stacked_branches(self, [getattr(self, f"attn{k}") for k in range(len(GMM_WIDTHS))], x,
                                lambda layer, y: layer(y, mask, own_lengths, gauss_length))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                own_lengths: torch.Tensor | None = None, gauss_length: int | None = None) -> torch.Tensor:
        """-> (B, T, d), the plain mean of the branches (only the branch axis is reduced: quirk Q6 fixed)."""
        return self.branches(x, mask, own_lengths, gauss_length).mean(dim=0)


class DyGMMBlock(nn.Module):
    """GMMFormerV2's DyGMM block (4.3): eight attention layers fused per absolute position.

    A shared cross-attention ``ca`` reads each branch with the token t; the
    head ``layer2(Dropout(ReLU(layer1(.))))`` gives ``frame_len`` logits per
    branch; a softmax over the branches (temperature ``tau``) weights them at
    every position. The input is ``frame_len`` positions long (quirk Q4), or
    its first L positions when all the others are masked (padding): those
    take no part in anything the first L produce, so they are not computed.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, frame_len: int, tau: float, centred: bool = False):
        super().__init__()
        for k, width in enumerate(DYGMM_WIDTHS):
            self.add_module(f"attn{k}", FFNAttentionLayer(dim, n_heads, dropout, 4 * dim, width, centred))
        self.ca = FFNAttentionLayer(dim, n_heads, dropout, dim)
        self.layer1 = nn.Linear(dim, dim)
        self.layer2 = nn.Linear(dim, frame_len)
        self.dropout = nn.Dropout(dropout)
        self.frame_len = frame_len
        self.tau = tau

    def branches(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, d), mask: (B, L) or None -> (8, B, L, d), attn0..attn7.

        L < frame_len needs a mask: the positions L..frame_len-1 are taken as masked.
        """
        length = x.shape[1]
        if length > self.frame_len or (length < self.frame_len and mask is None):
            raise ValueError(f"DyGMM block of frame_len {self.frame_len} got length {length}"
                             + ("" if length > self.frame_len else " without a mask"))
        return stacked_branches(self, [getattr(self, f"attn{k}") for k in range(len(DYGMM_WIDTHS))], x,
                                lambda layer, y: layer(y, mask, gauss_length=self.frame_len))

    def branch_tokens(self, outs: torch.Tensor, token: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """outs: (K, B, L, d) branches, token: (1, 1, d), mask: (B, L) or None -> (B, K, d), one ``ca`` call."""
        k, b, length, d = outs.shape
        memory = outs.reshape(k * b, length, d)
        keys = None if mask is None else mask.repeat(k, 1)
        if fast_path() == "off":
            tokens = self.ca(token.expand(k * b, 1, d), keys, memory)  # (K B, 1, d), branch-major
        else:
            tokens = self.ca.forward_one_query(token, memory, keys)
        return tokens.view(k, b, d).transpose(0, 1)

    def fusion_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, K, d) -> Z (B, K, frame_len), before the temperature."""
        return self.layer2(relu_dropout(self.dropout, self.layer1(tokens), ()))

    def forward(self, x: torch.Tensor, token: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L <= frame_len, d), token: (1, 1, d), mask: (B, L) or None -> (B, L, d)."""
        outs = self.branches(x, mask)
        logits = self.fusion_logits(self.branch_tokens(outs, token, mask))[..., :x.shape[1]]
        weights = torch.softmax(logits / self.tau, dim=1)
        return torch.einsum("bkl,kbld->bld", weights, outs)


def init_normal_weights(module: nn.Module, std: float = 0.02) -> None:
    """The authors' ``reset_parameters`` (GMMFormer family, Holmes, RAL): Linear / Embedding weights N(0, std),
    Linear biases 0, LayerNorm (1, 0). Bare parameters (``weight_token``) keep their own init."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
