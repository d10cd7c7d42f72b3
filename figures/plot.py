"""Figures of the README, drawn from demo runs (needs matplotlib: ``pip install -r requirements-report.txt``).

    python figures/plot.py schedules                         # kd_schedules.png: the distillation schedules
    python figures/plot.py curves RUN_DIR [RUN_DIR ...]      # val_curves.png: val SumR per epoch of runs
    python figures/plot.py training RUN_DIR [OTHER_RUN_DIR]  # training_curves.png: metrics.csv of one or two runs
    python figures/plot.py panel RUN_DIR [--cap_id ID]       # query_panel.png: a caption's score curves and moment
    python figures/plot.py architecture                      # architecture.png: the two branches and the teacher

``panel`` shows, by default, the first test caption whose true video ranks
second (so the figure shows the true and the top-1 video) and whose
estimated moment has IoU >= 0.5 with the true one.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from method.analysis import plots  # noqa: E402
from method.training.schedules import DECAY_WAY_NAMES, kd_factor  # noqa: E402

HERE = Path(__file__).resolve().parent


def plot_schedules(out: Path, epochs: int = 100) -> None:
    """The factor on the KL term per epoch for every released decay_way (scale 0.1, init 0.1)."""
    plt = plots.require_matplotlib()
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


def run_label(run: Path) -> str:
    opt = json.loads((run / "opt.json").read_text())
    return "no teacher" if opt["no_teacher"] else "single branch" if opt["single_branch"] else "DL-DKD"


def read_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(run_dirs: list[Path], out: Path) -> None:
    """Validation SumR (fused score) per epoch of each run, labelled with its switches."""
    plt = plots.require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in run_dirs:
        rows = read_rows(run)
        ax.plot([int(r["epoch"]) for r in rows], [float(r["val_sumr"]) for r in rows], marker="o",
                label=run_label(run))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val SumR (fused)")
    ax.set_title("Demo data: validation SumR per epoch (same seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_training(run_dirs: list[Path], out: Path) -> None:
    """The report's training curves (losses, KD factor, LR, val SumR per branch, time) of one or two runs."""
    plots.training_curves({run_label(run): read_rows(run) for run in run_dirs}, out)


def plot_panel(run_dir: Path, cap_id: str | None, out: Path) -> None:
    """The report's query panel of one test caption of the run."""
    from method.analysis.explore import analyse, query_records, select_queries
    from method.analysis.report import panel_figure
    from method.analysis.retrieval import TeacherCurves, load_run

    an = analyse(load_run(str(run_dir), device="cpu"), "test")
    if cap_id:
        q = select_queries(an, cap_ids=[cap_id])[0]
    else:
        iou = an.iou() if an.gt is not None else [1.0] * len(an.enc.cap_ids)  # without ground truth: rank only
        q = next((i for i in range(len(an.enc.cap_ids)) if int(an.ranks["fused"][i]) == 2 and iou[i] >= 0.5), 0)
    record = query_records(an, [q], top_k=5)[0]
    panel_figure(an, q, record, TeacherCurves(an.run.opt), out)
    print(f"panel: {record['cap_id']} \"{record['caption']}\", rank {record['rank']['fused']}, IoU {record['iou']}")


def plot_architecture(out: Path) -> None:
    """Boxes and arrows: inputs, the two student branches, the frozen teacher, the losses and the fusion."""
    plt = plots.require_matplotlib()
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(13, 5.6))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)

    def box(x0, y0, x1, y1, text, color, bold_first=True):
        ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.006", fc=color, ec="0.3"))
        lines = text.split("\n")
        head = lines[0] if bold_first else None
        if head:
            ax.text((x0 + x1) / 2, y1 - 0.035, head, ha="center", va="top", fontsize=10, weight="bold")
        body = "\n".join(lines[1:] if bold_first else lines)
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 - (0.02 if bold_first else 0), body, ha="center", va="center",
                fontsize=8.5, linespacing=1.5)

    def arrow(x0, y0, x1, y1, text="", style="-|>", color="0.2", dy=0.02):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": style, "color": color, "lw": 1.4})
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + dy, text, ha="center", va="bottom", fontsize=8, color=color)

    box(0.01, 0.60, 0.15, 0.84, "caption\nRoBERTa tokens\n(N x Dq)", "#f3f3f3")
    box(0.01, 0.16, 0.15, 0.40, "untrimmed video\nframe features\n(L x Dv, L <= 128)", "#f3f3f3")
    branch = ("query: Linear -> pos. emb. -> self-attention\n-> attention pooling: one vector (d)\n"
              "frames: Linear -> pos. emb. -> self-attention\n-> Linear: one vector per frame (L x d)")
    box(0.21, 0.56, 0.50, 0.94, "inheritance branch\n" + branch, "#dbe9f6")
    box(0.21, 0.06, 0.50, 0.44, "exploration branch\n" + "query projection: ICCV shared, DL-DKD++ own\n" + branch,
        "#fde6cf")
    box(0.57, 0.64, 0.76, 0.90, "scores\ncosine per frame s(t)\nvideo score = max over t\n"
        "triplet + 0.04 InfoNCE", "#dbe9f6")
    box(0.57, 0.10, 0.76, 0.36, "scores\ncosine per frame s(t)\nvideo score = max over t\n"
        "triplet + 0.04 InfoNCE", "#fde6cf")
    box(0.57, 0.41, 0.76, 0.57, "CLIP teacher (frozen)\nprecomputed features\nsentence x frames: s_T(t)",
        "#e8e8e8")
    box(0.84, 0.38, 0.99, 0.62, "inference\nfused video score\n0.7 inheritance\n+ 0.3 exploration", "#e3f2e1")
    for y in (0.75, 0.25):
        arrow(0.15, 0.72, 0.21, y)
        arrow(0.15, 0.28, 0.21, y)
    arrow(0.50, 0.77, 0.57, 0.77)
    arrow(0.50, 0.23, 0.57, 0.23)
    arrow(0.665, 0.575, 0.665, 0.635, color="tab:red")
    ax.text(0.655, 0.605, "KL(s_T || s_inh), T = 0.2\nx 0.1 w(epoch), training only", fontsize=8,
            color="tab:red", va="center", ha="right")
    arrow(0.76, 0.77, 0.84, 0.56)
    arrow(0.76, 0.23, 0.84, 0.44)
    ax.set_title("DL-DKD: a frozen teacher guides the inheritance branch with a decaying weight; "
                 "the exploration branch learns retrieval only", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=("schedules", "curves", "training", "panel", "architecture"),
                   help="which figure to draw")
    p.add_argument("runs", nargs="*", type=Path, help="run folders (curves, training: one or two; panel: one)")
    p.add_argument("--cap_id", default=None, help="panel: the test caption to show (default: see above)")
    p.add_argument("--out", type=Path, default=None, help="output PNG (default figures/<name>.png)")
    args = p.parse_args(argv)
    needs = {"curves": (1, 99, "one or more run folders"), "training": (1, 2, "one or two run folders"),
             "panel": (1, 1, "one run folder"), "schedules": (0, 0, "no run folder"),
             "architecture": (0, 0, "no run folder")}
    low, high, what = needs[args.figure]
    if not low <= len(args.runs) <= high:
        p.error(f"{args.figure} takes {what}")
    if args.cap_id and args.figure != "panel":
        p.error("--cap_id belongs to the panel figure")
    default = {"schedules": "kd_schedules", "curves": "val_curves", "training": "training_curves",
               "panel": "query_panel", "architecture": "architecture"}[args.figure]
    out = args.out or HERE / f"{default}.png"
    if args.figure == "schedules":
        plot_schedules(out)
    elif args.figure == "curves":
        plot_curves(args.runs, out)
    elif args.figure == "training":
        plot_training(args.runs, out)
    elif args.figure == "panel":
        plot_panel(args.runs[0], args.cap_id, out)
    else:
        plot_architecture(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
