"""What training and evaluation iterate: batches on the device, from the feature files or a preloaded split.

- ``TrainFeed``: this process's share of every global batch (``GlobalBatchSampler``),
  from a DataLoader over the files (``collate_train`` in ``--num_workers``
  processes) or from a ``PackedTrain`` (``--preload``). It yields
  ``(batch, caption_counts)``: the batch on the device, features float32, and
  each video's caption count as host ints (``share_sizes`` needs no device read).
- ``EvalBlocks``: a process's share of a split's videos or queries in encoding
  blocks (``collate_videos`` / ``collate_queries``), from a DataLoader or packed.
- ``to_device``: on CUDA the host-to-device copy of the next batch runs on a
  side stream (pinned memory, non-blocking) while the current one is computed.

Without ``--preload`` the files are read and every item pooled each epoch;
with ``--preload ram`` batches are gathered from host memory and copied; with
``--preload device`` they are gathered on the GPU and nothing but an index is copied.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from method.data.preload import PackedQueries, PackedTrain, PackedVideos, host_empty


def _float32(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.float32:
        return t
    if t.device.type == "cpu":  # a host buffer of its own (see host_empty)
        return host_empty(tuple(t.shape), torch.float32).copy_(t)
    return t.float()


def as_float32(batch: dict) -> dict:
    """The batch with every floating tensor in float32 (16-bit storage is cast on the device)."""
    return {k: _float32(v) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def loader_seed_draw() -> None:
    """Draw what a new DataLoader iterator draws from the default CPU generator (its workers' base seed).

    Evaluation iterates its loaders every epoch, and one process on the CPU
    draws its negatives from that generator; feeds that iterate no fresh
    DataLoader (packed, persistent workers) draw this instead, so the run's
    later draws do not depend on ``--preload`` or on worker persistence.
    """
    torch.empty((), dtype=torch.int64).random_()


def _issue(batch: dict, device: torch.device, stream) -> tuple[dict, Optional[object]]:
    """Start the copy of the batch's host tensors to ``device`` on ``stream``; (device batch, its event)."""
    if not any(torch.is_tensor(v) and v.device.type == "cpu" for v in batch.values()):
        return batch, None
    with torch.cuda.stream(stream):
        out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        event = torch.cuda.Event()
        event.record(stream)
    return out, event


def _hand_over(batch: dict, event, device: torch.device) -> dict:
    """Make the current stream wait for the batch's copy, and tell the allocator where it is used."""
    if event is not None:
        current = torch.cuda.current_stream(device)
        current.wait_event(event)
        for v in batch.values():
            if torch.is_tensor(v):
                v.record_stream(current)
    return batch


def to_device(items: Iterable[tuple[dict, object]], device: torch.device) -> Iterator[tuple[dict, object]]:
    """(batch, extra) pairs with the batch's tensors moved to ``device``.

    On CUDA, one batch ahead: the next batch is fetched and its copy started
    on a side stream before the current one is handed over, so the copy
    overlaps the current step's kernels (host tensors should be pinned).
    Batches already on the device pass through. On the CPU: ``.to(device)``.
    """
    if device.type != "cuda":
        for batch, extra in items:
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}, extra
        return
    stream = torch.cuda.Stream(device)
    pending = None
    for batch, extra in items:
        issued = _issue(batch, device, stream), extra
        if pending is not None:
            (ready, event), pending_extra = pending
            yield _hand_over(ready, event, device), pending_extra
        pending = issued
    if pending is not None:
        (ready, event), pending_extra = pending
        yield _hand_over(ready, event, device), pending_extra


def caption_counts(batch: dict) -> list:
    """Each video's caption count of a host batch (from its labels, on the CPU)."""
    return torch.bincount(batch["query_labels"], minlength=batch["video_mask"].shape[0]).tolist()


class TrainFeed:
    """This process's share of every global batch of an epoch, on the device.

    Give either ``loader`` (a DataLoader with ``batch_sampler=sampler``) or
    ``packed``. ``sort_by``: the batch order (``--batch_sort``) of the packed batches.
    """

    def __init__(self, sampler, device: torch.device, loader: Optional[DataLoader] = None,
                 packed: Optional[PackedTrain] = None, sort_by: str = "captions"):
        if (loader is None) == (packed is None):
            raise ValueError("give a loader or a packed split")
        self.sampler, self.device, self.loader, self.packed, self.sort_by = sampler, device, loader, packed, sort_by

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def n_videos(self) -> int:
        return len(self.sampler.sort_counts)

    def _host(self):
        if self.packed is not None:
            for share in self.sampler:
                yield self.packed.batch(share, self.sort_by)
        else:
            for batch in self.loader:
                yield batch, caption_counts(batch)

    def __iter__(self) -> Iterator[tuple[dict, list]]:
        for batch, counts in to_device(self._host(), self.device):
            yield as_float32(batch), counts


class EvalBlocks:
    """A process's share of a split's videos (or queries) in encoding blocks, on the device, float32.

    Every iteration draws one number from the default CPU generator, as a new
    DataLoader iterator does (``loader_seed_draw``), whatever the source.
    """

    def __init__(self, device: torch.device, block: int, loader: Optional[DataLoader] = None,
                 packed: PackedVideos | PackedQueries | None = None):
        if (loader is None) == (packed is None):
            raise ValueError("give a loader or a packed share")
        self.device, self.block, self.loader, self.packed = device, block, loader, packed
        self._iterated = False

    def __len__(self) -> int:
        n = len(self.packed) if self.packed is not None else len(self.loader.dataset)
        return -(-n // self.block)

    def _host(self):
        if self.packed is not None:
            n = len(self.packed)
            for start in range(0, n, self.block):
                yield self.packed.batch(np.arange(start, min(start + self.block, n))), None
        else:
            for batch in self.loader:
                yield batch, None

    def __iter__(self) -> Iterator[dict]:
        reused = self.loader is not None and self.loader.persistent_workers and self._iterated
        if self.loader is None or reused:  # a fresh DataLoader iterator would draw its base seed
            loader_seed_draw()
        self._iterated = True
        for batch, _ in to_device(self._host(), self.device):
            yield as_float32(batch)
