"""Figures of the README: distillation schedules, and validation curves of training runs.

Needs matplotlib (not a requirement of training: ``pip install "matplotlib>=3.7,<4"``).

    python figures/plot.py schedules                      # figures/kd_schedules.png
    python figures/plot.py curves RUN_DIR [RUN_DIR ...]   # figures/val_curves.png from each metrics.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from method.schedules import DECAY_WAY_NAMES, kd_factor  # noqa: E402

HERE = Path(__file__).resolve().parent


def plot_schedules(out: Path, epochs: int = 100) -> None:
    """The factor on the KL term per epoch for every released decay_way (scale 0.1, init 0.1)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = list(range(epochs))
    for way, name in DECAY_WAY_NAMES.items():
        ax.plot(x, [kd_factor(e, name) for e in x], label=f"{way}: {name}", lw=2.5 if way == 1 else 1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("factor on the KL term")
    ax.set_title("Dynamic distillation schedules (released decay_way; the ICCV scripts use 1)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_curves(run_dirs: list[Path], out: Path) -> None:
    """Validation SumR (fused score) per epoch of each run, labelled with its switches."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in run_dirs:
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        opt = json.loads((run / "opt.json").read_text())
        label = "no teacher" if opt["no_teacher"] else "single branch" if opt["single_branch"] else "DL-DKD"
        ax.plot([int(r["epoch"]) for r in rows], [float(r["val_sumr"]) for r in rows], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val SumR (fused)")
    ax.set_title("Demo data: validation SumR per epoch (same seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=("schedules", "curves"), help="which figure to draw")
    p.add_argument("runs", nargs="*", type=Path, help="run folders (curves)")
    p.add_argument("--out", type=Path, default=None, help="output PNG (default figures/<name>.png)")
    args = p.parse_args(argv)
    if args.figure == "schedules":
        plot_schedules(args.out or HERE / "kd_schedules.png")
    else:
        if not args.runs:
            p.error("curves needs at least one run folder")
        plot_curves(args.runs, args.out or HERE / "val_curves.png")


if __name__ == "__main__":
    main()
