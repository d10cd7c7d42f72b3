"""Random streams of a run: seeding, capture and restore for exact resume, and the streams of several processes.

One process draws dropout masks and the triplet loss's negatives from the
device's default generator, as the released code does.

Several processes (torchrun) need the negatives to be the ones one process
draws, while dropout masks should differ between processes. So every process
draws its negatives from its own copy of one *sampling* generator (the same
state everywhere: cloned from the default generator right after the model is
initialised, which all processes do alike), and the default generators are
reseeded per (seed, epoch, process) for dropout. With dropout off, the
negatives, and so the whole run, equal the one-process run.

A checkpoint stores, besides the global states, the state of the stream the
negatives come from (``sampling``), so a run resumes exactly, and continues
the same draws when resumed with another number of processes.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_generator(device: torch.device) -> torch.Generator:
    """The default generator of ``device``."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def sampling_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` in the state of the device's default generator now."""
    gen = torch.Generator(device=device)
    gen.set_state(device_generator(device).get_state())
    return gen


@contextmanager
def evaluation_draws(sampling: Optional[torch.Generator]):
    """Let evaluation advance the negatives' stream exactly as it does in one process.

    Evaluation's DataLoaders draw their base seeds from the CPU default
    generator. One process on the CPU draws its negatives from that generator
    too, so each evaluation moves its later negatives. With several processes
    on the CPU, the shared sampling generator stands in for the default one
    while process 0 evaluates (the caller then hands its state to the others),
    so the negatives stay those of one process. On CUDA the negatives come from
    the CUDA generator, which evaluation never touches.
    """
    if sampling is None or sampling.device.type != "cpu":
        yield
        return
    own = torch.default_generator.get_state()
    torch.default_generator.set_state(sampling.get_state())
    try:
        yield
    finally:
        sampling.set_state(torch.default_generator.get_state())
        torch.default_generator.set_state(own)


def seed_process_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed the default generators for the dropout of process ``rank`` in ``epoch`` (several processes)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def capture(device: torch.device, sampling: Optional[torch.Generator]) -> dict:
    """Every random state of this process, plus the state of the stream the negatives come from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    stream = sampling if sampling is not None else device_generator(device)
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sampling": {"device": device.type, "state": stream.get_state()}}


def restore(state: dict, device: torch.device, sampling: Optional[torch.Generator]) -> None:
    """Inverse of ``capture``; the negatives' stream continues where the stored one stopped.

    The sampling state is restored when it was saved on the same kind of device
    (a CPU and a CUDA generator's states differ); otherwise the stream starts
    from the restored default generator.
    """
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    stream = sampling if sampling is not None else device_generator(device)
    saved = state.get("sampling")
    if saved is not None and saved["device"] == device.type:
        stream.set_state(saved["state"])
    elif sampling is not None:
        sampling.set_state(device_generator(device).get_state())
