"""``--compile``: the model's forward under ``torch.compile`` with a bounded set of input shapes.

Shapes: V videos, Q captions of a process's share, L padded frames, N padded tokens.

A compiled graph is specialised to the static sizes it was traced with, so
every new (L, N) could compile another one. Under ``--compile``:

- L pads to the next of ``FRAME_BUCKETS`` (capped at ``max_ctx_l``) and N to
  the next of ``TOKEN_BUCKETS`` (capped at ``max_desc_l``), with zeros and a
  zero mask (``ShapePolicy.pad_tokens``, ``pad_share``). The students mask
  padded frames and tokens, so this changes only float rounding (the
  matmuls' shapes change). ``gmmformer_v2`` already runs its frames as the
  first L of 128 positions, so padding L is harmless there too.
- ``gmmformer`` (v1) is refused unless ``--gauss_own_length``: it sizes its
  frame Gaussians by the padded length (quirk Q1, docs/gmmformer.md), so
  padding would change its numbers, and L cannot be left dynamic either (the
  Gaussian grid, ``linspace(0, 1, L)``, needs a concrete L), so every new L
  would compile another graph. With ``--gauss_own_length`` each video's
  Gaussians have its own length and padding is harmless.
- V and Q (the batch sizes, which vary with the captions per video and the
  last batch) are marked dynamic.
- Shares of fewer than two videos (an empty share of a small last batch, or a
  single video, in a run of several processes) run the eager module: sizes 0
  and 1 would specialise graphs of their own.

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

from method.models.model import ModelConfig
from method.models.students import student_class
from method.parallel.global_batch import pad_positions

FRAME_BUCKETS = (16, 32, 64, 128)
TOKEN_BUCKETS = (8, 16, 30)


def buckets_up_to(buckets: tuple[int, ...], cap: int) -> tuple[int, ...]:
    """The buckets below ``cap``, then ``cap`` itself."""
    return tuple(b for b in buckets if b < cap) + (cap,)


def bucket(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n (n itself beyond the last one)."""
    return next((b for b in buckets if b >= n), n)


COMPILE_V1_ERROR = ("--compile with --student gmmformer needs --gauss_own_length: its frame Gaussians are sized by "
                    "the batch's padded length (quirk Q1), so its frames can be neither padded to a few lengths "
                    "(that changes its numbers) nor left dynamic (the Gaussian grid needs a concrete length), and "
                    "every new frame count would compile another graph; --gauss_own_length (changes results) "
                    "sizes them by each video's own length, or train without --compile")


@dataclass(frozen=True)
class ShapePolicy:
    """The padded lengths of ``--compile``: frames and tokens."""

    frames: tuple[int, ...]
    tokens: tuple[int, ...]

    @classmethod
    def for_model(cls, cfg: ModelConfig) -> "ShapePolicy":
        """The buckets of a model; ValueError (``COMPILE_V1_ERROR``) for GMMFormer with quirk Q1."""
        if student_class(cfg.student).padding_changes_numbers(cfg.student_cfg):
            raise ValueError(COMPILE_V1_ERROR)
        sc = cfg.student_cfg
        return cls(buckets_up_to(FRAME_BUCKETS, sc.max_ctx_l), buckets_up_to(TOKEN_BUCKETS, sc.max_desc_l))

    def frame_length(self, n: int) -> int:
        """The padded frame count of a batch whose longest video (of the global batch) has ``n`` frames."""
        return bucket(n, self.frames)

    def pad_tokens(self, batch: dict) -> dict:
        """The batch with its tokens padded to their bucket (query_feat, query_mask)."""
        n = bucket(batch["query_mask"].shape[1], self.tokens)
        return {**batch, "query_feat": pad_positions(batch["query_feat"], n),
                "query_mask": pad_positions(batch["query_mask"], n)}


def _maybe_dynamic(t: Optional[torch.Tensor], dim: int) -> None:
    if t is not None:
        torch._dynamo.maybe_mark_dynamic(t, dim)


class CompiledForward:
    """The training forward (the model, or DDP around it) compiled, with the batch dims (V, Q) marked dynamic.

    ``backend``: ``torch.compile``'s (tests pass a counting backend).
    """

    def __init__(self, module: torch.nn.Module, policy: ShapePolicy, backend="inductor"):
        self.eager = module
        self.policy = policy
        self.compiled = torch.compile(module, backend=backend)

    def __call__(self, video_feat, video_mask, query_feat, query_mask, clip_feat=None, second_queries=False,
                 query_labels=None):
        args = (video_feat, video_mask, query_feat, query_mask, clip_feat, second_queries, query_labels)
        if video_feat.shape[0] < 2:
            return self.eager(*args)  # sizes 0 / 1 would specialise a graph of their own
        for t in (video_feat, video_mask, clip_feat, query_feat, query_mask, query_labels):
            _maybe_dynamic(t, 0)
        return self.compiled(*args)
