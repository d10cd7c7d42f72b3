"""Wall time of device work: synchronised on CUDA, ``time.perf_counter`` on the CPU."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch


@dataclass
class Timer:
    """Seconds measured by ``device_timer``; None until the block has ended."""

    seconds: Optional[float] = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def device_timer(device: torch.device) -> Iterator[Timer]:
    """Wall time of the block's work on ``device``.

    On CUDA the device is synchronised before and after the block, so queued
    kernels count where they run, not where they were launched; on the CPU it
    is ``time.perf_counter``. ``with device_timer(d) as t: ...`` then ``t.seconds``.
    """
    timer = Timer()
    sync(device)
    start = time.perf_counter()
    yield timer
    sync(device)
    timer.seconds = time.perf_counter() - start
