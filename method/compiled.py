"""``--compile``: the model's forward under ``torch.compile`` with a bounded set of input shapes.

Shapes: V videos, Q captions of a process's share, L padded frames, N padded tokens.

A compiled graph is specialised to the static sizes it was traced with, so
every new (L, N) could compile another one. Under ``--compile``:

- L pads to the next of ``FRAME_BUCKETS`` (capped at ``max_ctx_l``) and N to
  the next of ``TOKEN_BUCKETS`` (capped at ``max_desc_l``), with zeros and a
  zero mask (``ShapePolicy.pad``). The students mask padded frames and tokens,
  so this changes only float rounding (the matmuls' shapes change), except:
  - ``gmmformer`` (v1) sizes its frame Gaussians by the padded length (quirk
    Q1, GMMFORMER.md 3.3), so padding would change its numbers: its frames are
    not padded (``--gauss_own_length`` removes the quirk, and they are); L is
    marked dynamic instead, one graph for every L;
  - ``gmmformer_v2`` already runs its frames as the first L of 128 positions,
    so padding L is harmless.
- V and Q (the batch sizes, which vary with the captions per video and the
  last batch) are marked dynamic.
- Shares of fewer than two videos (an empty share of a small last batch, or a
  single video) and, for v1, a longest video of one frame run the eager
  module: sizes 0 and 1 would specialise new graphs.

So an epoch compiles at most one graph per (frame bucket, token bucket)
pair it meets (fewer: once a bucketed size has changed, torch makes it
dynamic), and the eager and compiled calls drive the same module (and DDP).
The scores and losses stay eager: the scores are two matmuls and a masked
max per level, and the losses read a shared random generator and host sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .global_batch import pad_positions
from .students import ModelConfig

FRAME_BUCKETS = (16, 32, 64, 128)
TOKEN_BUCKETS = (8, 16, 30)


def buckets_up_to(buckets: tuple[int, ...], cap: int) -> tuple[int, ...]:
    """The buckets below ``cap``, then ``cap`` itself."""
    return tuple(b for b in buckets if b < cap) + (cap,)


def bucket(n: int, buckets: Optional[tuple[int, ...]]) -> int:
    """The smallest bucket >= n (n itself beyond the last one, or without buckets)."""
    if buckets is None:
        return n
    return next((b for b in buckets if b >= n), n)


@dataclass(frozen=True)
class ShapePolicy:
    """The padded lengths of ``--compile``: frames (None: frames not padded, gmmformer v1) and tokens."""

    frames: Optional[tuple[int, ...]]
    tokens: tuple[int, ...]

    @classmethod
    def for_model(cls, cfg: ModelConfig) -> "ShapePolicy":
        v1_quirk = cfg.student == "gmmformer" and not cfg.gauss_own_length  # Q1: padding changes its numbers
        frames = None if v1_quirk else buckets_up_to(FRAME_BUCKETS, cfg.max_ctx_l)
        return cls(frames, buckets_up_to(TOKEN_BUCKETS, cfg.max_desc_l))

    @property
    def dynamic_frames(self) -> bool:
        return self.frames is None

    def frame_length(self, n: int) -> int:
        """The padded frame count of a batch whose longest video (of the global batch) has ``n`` frames."""
        return bucket(n, self.frames)

    def pad_tokens(self, batch: dict) -> dict:
        """The batch with its tokens padded to their bucket (query_feat, query_mask)."""
        n = bucket(batch["query_mask"].shape[1], self.tokens)
        return {**batch, "query_feat": pad_positions(batch["query_feat"], n),
                "query_mask": pad_positions(batch["query_mask"], n)}


def _maybe_dynamic(t: Optional[torch.Tensor], *dims: int) -> None:
    if t is not None:
        for dim in dims:
            torch._dynamo.maybe_mark_dynamic(t, dim)


class CompiledForward:
    """The training forward (the model, or DDP around it) compiled, with the batch dims marked dynamic.

    ``backend``: ``torch.compile``'s (tests pass a counting backend).
    """

    def __init__(self, module: torch.nn.Module, policy: ShapePolicy, backend="inductor"):
        self.eager = module
        self.policy = policy
        self.compiled = torch.compile(module, backend=backend)

    def __call__(self, video_feat, video_mask, query_feat, query_mask, clip_feat=None, second_queries=False):
        args = (video_feat, video_mask, query_feat, query_mask, clip_feat, second_queries)
        if video_feat.shape[0] < 2 or (self.policy.dynamic_frames and video_feat.shape[1] < 2):
            return self.eager(*args)  # sizes 0 / 1 would specialise a graph of their own
        for t in (video_feat, video_mask, clip_feat, query_feat, query_mask):
            _maybe_dynamic(t, 0)
        if self.policy.dynamic_frames:
            _maybe_dynamic(video_feat, 1)
            _maybe_dynamic(video_mask, 1)
        return self.compiled(*args)
