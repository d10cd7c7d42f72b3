"""Runtime policy of a run: float32 matmul precision, deterministic kernels, finite losses, synchronised timings.

- ``apply_policy(tf32, deterministic)``: the numerics switches of ``--tf32`` and
  ``--deterministic``, set explicitly either way. Call it before the first CUDA
  call (``method.train.main`` does so first thing): cuBLAS reads
  ``CUBLAS_WORKSPACE_CONFIG`` when it creates its handle.
- ``policy_summary(device)``: one log line saying what is in force.
- ``check_finite(terms, epoch, step)``: stops a run at the first NaN / Inf loss term.
- ``RuntimePolicy``: the run's execution settings (device, precision, compile, debug).
- ``EpochClock(device)``: an epoch's split into waiting for data and computing (CUDA events on CUDA).
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from method.common.timing import sync as _sync

log = logging.getLogger("dldkd")

# Deterministic cuBLAS needs a fixed workspace (CUDA >= 10.2): 8 buffers of 4 MiB, or 8 of 16 KiB (slower).
CUBLAS_WORKSPACE = ":4096:8"
DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")


@dataclass(frozen=True)
class RuntimePolicy:
    """How a run executes (machine flags, and bf16 autocast which changes the numbers)."""

    device: str = "auto"
    tf32: bool = False
    deterministic: bool = False
    amp: str = "none"  # "bf16": the forward pass under bfloat16 autocast
    compile: bool = False
    fast_path: str = "exact"  # the GMMFormer family's blocks (blocks.FAST_PATH)
    checkpoint_branches: bool = False  # blocks.CHECKPOINT_BRANCHES
    debug: bool = False  # torch.autograd.detect_anomaly
    dist_timeout: float = 60.0  # minutes


class NonFiniteLoss(SystemExit):
    """A loss term became NaN or Inf; the message names the epoch, the step and the terms."""


def apply_policy(tf32: bool, deterministic: bool) -> None:
    """Set the float32 matmul precision and the kernel determinism of this process.

    ``tf32``: CUDA matmuls (cuBLAS) and cuDNN convolutions may round their
    float32 inputs to TF32 (10-bit mantissa; Ampere and newer GPUs). Off: both
    exact float32 (cuDNN's own default would allow TF32). These flags act on
    CUDA only; CPU matmuls are left as they are (exact float32).

    ``deterministic``: ``torch.use_deterministic_algorithms(True)`` (CUDA index /
    scatter-add backward and similar kernels use their deterministic, slower
    versions; an op without one raises), cuDNN deterministic and not
    benchmarking, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment
    (kept when it already holds a deterministic value). Off: PyTorch's defaults.
    """
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in DETERMINISTIC_WORKSPACES:
            if torch.cuda.is_initialized():
                log.warning("--deterministic: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set; "
                            "cuBLAS may not be deterministic (set CUBLAS_WORKSPACE_CONFIG=%s before starting)",
                            CUBLAS_WORKSPACE)
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic


def policy_summary(device: torch.device) -> str:
    """The policy in force, read back from torch, in one line for the run's log."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    if device.type == "cuda":
        precision = "TF32 (--tf32)" if torch.backends.cuda.matmul.allow_tf32 else "exact float32"
    else:
        precision = "exact float32" + (" (--tf32 has no effect on the CPU)" if torch.backends.cuda.matmul.allow_tf32
                                       else "")
    line = f"matmuls: {precision}; deterministic algorithms: {'on' if deterministic else 'off'}"
    if deterministic and device.type == "cuda":
        line += f" (CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')})"
    return line


def check_finite(terms: Mapping[str, torch.Tensor], epoch: int, step: int, dist=None) -> None:
    """Raise ``NonFiniteLoss`` when a loss term is NaN or Inf.

    Args:
        terms: name -> scalar tensor (this process's loss terms of the step).
        epoch: 0-based epoch; step: 0-based index of the step within the epoch.
        dist: a ``method.parallel.distributed.Dist`` of several processes, so that all of
            them stop at the same step (one small CPU-side exchange); None for one.

    Reads one bool from the device per step: on CUDA the host waits for the
    step's kernels before it queues the next step (a sync the loop otherwise
    avoids). The parameters updated from a non-finite loss are only in memory:
    ``latest.ckpt`` is written at the end of an epoch, so it keeps the last good one.
    """
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    finite = torch.isfinite(values)
    bad_here = not bool(finite.all())
    if dist is not None and dist.enabled:
        if not dist.any(bad_here):
            return
    elif not bad_here:
        return
    where = f"epoch {epoch}, step {step} (0-based, within the epoch)"
    if not bad_here:
        raise NonFiniteLoss(f"non-finite loss on another process at {where}; this process's terms are finite")
    bad = [f"{name}={value:g}" for name, value, ok in zip(terms, values.tolist(), finite.tolist()) if not ok]
    raise NonFiniteLoss(f"non-finite loss at {where}: {', '.join(bad)}; the run stops (latest.ckpt, when there "
                        f"is one, holds the epochs before epoch {epoch})")


class EpochClock:
    """An epoch's time split into waiting for batches (``data``) and computing steps (``compute``).

    ``with clock.waiting(): batch = next(...)`` and ``with clock.computing(): step``.
    On the CPU both are host timers (perf_counter). On CUDA the host runs ahead
    of the GPU, so host timers would charge queued kernels to whatever waits
    next: ``compute`` is the GPU time of the steps, from CUDA events recorded
    on the current stream around each step (read once, by ``seconds``), and
    ``data`` the rest of the epoch's synchronised wall time, i.e. the time the
    GPU did not spend on a step (waiting for data, launches, collectives).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self._host = {"data": 0.0, "compute": 0.0}
        self._events: list = []
        _sync(device)
        self._start = time.perf_counter()

    @contextmanager
    def _host_span(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self._host[key] += time.perf_counter() - t0

    def waiting(self):
        return self._host_span("data")

    @contextmanager
    def computing(self) -> Iterator[None]:
        if not self.cuda:
            with self._host_span("compute"):
                yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._events.append((start, end))

    def seconds(self) -> dict:
        """{"data_seconds", "compute_seconds"} so far (on CUDA: synchronises once)."""
        if not self.cuda:
            return {"data_seconds": self._host["data"], "compute_seconds": self._host["compute"]}
        _sync(self.device)
        wall = time.perf_counter() - self._start
        compute = sum(s.elapsed_time(e) for s, e in self._events) / 1000
        return {"data_seconds": max(wall - compute, 0.0), "compute_seconds": compute}
