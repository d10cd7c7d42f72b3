"""What every command-line entry point shares: the help formatter and the device flag."""
from __future__ import annotations

import argparse

import torch


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Prints each default once: ``(default: X)`` is added only where the help text
    does not already speak of a default, and never for None, SUPPRESS or an off switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def device_name(value: str) -> str:
    """argparse type of ``--device``: auto, cpu, cuda or cuda:N, checked when the flags are parsed."""
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; refuses CUDA where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device
