"""Several processes: the process group torchrun describes, gathers of variable-sized shares, the stop signal.

``torchrun --nproc_per_node N -m method.train ...`` starts N processes with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
their environment; ``setup`` joins them into one process group (NCCL on CUDA,
one GPU per process; gloo on the CPU). Without ``WORLD_SIZE`` (or with 1) the
run is one process and nothing here talks to anyone.

Each process holds a share of every global batch (``GlobalBatchSampler``);
shares differ in size by at most one video and may be empty. ``gather`` lays
the shares end to end in rank order, with a backward that returns to each
process the gradient that all processes' losses send to its share.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
import torch.distributed as dist

log = logging.getLogger("dldkd")


@dataclass
class Dist:
    """This process's place in the run: rank, number of processes and the groups to talk in.

    ``control`` is a gloo group for small CPU-side exchanges (sizes, flags,
    objects), so that they never wait on the GPU; with gloo it is the default group.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: Optional[object] = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather_ints(self, values: Sequence[int]) -> list[list[int]]:
        """Every process's ``values`` (the same count on each), in rank order."""
        if not self.enabled:
            return [list(values)]
        local = torch.tensor(list(values), dtype=torch.long)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local, group=self.control)
        return [p.tolist() for p in parts]

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any process."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def broadcast(self, obj, src: int = 0):
        """``obj`` of process ``src`` on every process (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def all_gather_objects(self, obj) -> list:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over the processes (device tensors, default group)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def world_size_from_env() -> int:
    """Number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device, timeout_minutes: float = 60.0) -> tuple[Dist, torch.device]:
    """Join the process group of a torchrun launch; returns (Dist, this process's device).

    On CUDA each process takes GPU ``LOCAL_RANK`` and the backend is NCCL (plus a
    gloo group for control messages); on the CPU the backend is gloo. A
    collective that waits longer than ``timeout_minutes`` (a dead or stuck peer)
    raises instead of hanging.
    """
    world = world_size_from_env()
    if world == 1:
        return Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = timedelta(minutes=timeout_minutes)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    # A group that torchrun restarts (--max-restarts) meets in the same store: keys of its own.
    store = dist.PrefixStore(f"dldkd/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    common = {"store": store, "rank": rank, "world_size": world, "timeout": timeout}
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, **common)
        control = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", **common)
        control = None
    return Dist(rank, world, local_rank, control), device


def offsets(sizes: Sequence[int]) -> list[int]:
    """Start of each process's share in the concatenation: exclusive prefix sums of ``sizes``."""
    out, total = [], 0
    for n in sizes:
        out.append(total)
        total += n
    return out


def _all_gather_padded(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every process's ``x`` (``sizes[r]`` rows on process r) in rank order."""
    width = max(sizes)
    padded = x.new_zeros((width,) + tuple(x.shape[1:]))
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _Gather(torch.autograd.Function):
    """Concatenation of all processes' shares; backward sums the processes' gradients of this share."""

    @staticmethod
    def forward(ctx, x, sizes, rank):
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        # Each process's loss covers part of the global batch; the gradient of the
        # global loss with respect to this share is the sum of all of theirs.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = offsets(ctx.sizes)[ctx.rank]
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def gather(d: Dist, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """All processes' ``x`` (process r holds ``sizes[r]`` rows), concatenated in rank order.

    Differentiable: the backward sends each process the sum over all processes of
    the gradient with respect to its rows. Tensors that need no gradient are
    gathered without a backward.
    """
    if not d.enabled:
        return x
    sizes = list(sizes)
    if not x.requires_grad:
        return _all_gather_padded(x, sizes)
    return _Gather.apply(x, sizes, d.rank)


class StopSignal:
    """SIGTERM (a scheduler's notice before preemption) asks the run to stop after the current step.

    A context manager: the handler is installed on entry and the previous one
    restored on exit. ``requested(d)`` is True on every process once any
    process has received the signal, so that all processes stop after the same step.
    """

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self) -> "StopSignal":
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame):
        if not self.received:
            log.warning("SIGTERM received: stopping after the current step")
        self.received = True

    def requested(self, d: Dist) -> bool:
        return d.any(self.received)


def data_parallel(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` wrapped by DDP; its ``unused_parameters`` (never a gradient) are left out of the exchange."""
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(model.unused_parameters))
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
