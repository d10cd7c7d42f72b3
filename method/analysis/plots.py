"""Figures of runs: training curves, rank distributions, rank changes, query panels (matplotlib, optional).

matplotlib is an optional extra (``pip install -r requirements-report.txt``);
``require_matplotlib`` says so when it is missing. Every function writes one
PNG and closes its figure.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

# The training loop's loss terms (method.losses.objective.DLDKDLoss: [<level>_]<term>[_inh|_exp], kd) and their sum.
LOSS_COLUMN = re.compile(r"loss|kd|((clip|frame)_)?(trip|nce|qdl|ot)(_inh|_exp)?")
TIME_COLUMNS = ("epoch_seconds", "data_seconds", "compute_seconds")
# metrics.csv columns shown elsewhere or not worth a curve; any other numeric column goes to "other".
KNOWN_COLUMNS = {"epoch", "lr", "kd_factor", "hard_negative", *TIME_COLUMNS,
                 "val_r1", "val_r5", "val_r10", "val_r100", "val_medr", "val_meanr", "val_map"}
BRANCH_COLORS = {"fused": "black", "inheritance": "tab:blue", "exploration": "tab:orange", "teacher": "tab:gray",
                 "clip": "tab:green", "frame": "tab:purple"}
LEVEL_SHADES = {"clip": 0.45, "frame": 0.75}  # a branch's level curves: lighter shades of its colour


def score_color(name: str):
    """Colour of a score's curves (None: matplotlib's next colour).

    fused black, inheritance blue, exploration orange, teacher gray; a
    one-branch student's levels green (clip) and purple (frame);
    ``<branch>_<level>`` a lighter shade of the branch's colour.
    """
    if name in BRANCH_COLORS:
        return BRANCH_COLORS[name]
    branch, _, level = name.partition("_")
    if branch not in BRANCH_COLORS:
        return None
    from matplotlib.colors import to_rgb
    shade = LEVEL_SHADES.get(level, 1.0)
    return tuple(1.0 - shade * (1.0 - c) for c in to_rgb(BRANCH_COLORS[branch]))


def is_loss_column(name: str) -> bool:
    """Whether a metrics.csv column is a loss term (or their sum)."""
    return LOSS_COLUMN.fullmatch(name) is not None


def val_sumr_columns(rows: list[dict]) -> dict[str, str]:
    """{metrics.csv column: score name} of the val SumR columns: val_sumr (fused), val_sumr_<score>."""
    names = dict.fromkeys(k for r in rows for k in r)
    return {n: n[len("val_sumr_"):] or "fused" for n in names if n == "val_sumr" or n.startswith("val_sumr_")}


def require_matplotlib():
    """pyplot with the Agg backend, or SystemExit naming the optional extra."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the figures need matplotlib: pip install -r requirements-report.txt") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    fig.clf()
    require_matplotlib().close(fig)


def _column(rows: list[dict], name: str) -> np.ndarray:
    """Float values of a metrics.csv column (NaN where empty or not a number)."""
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan
    return np.array([num(r.get(name)) for r in rows], dtype=np.float64)


def other_columns(rows: list[dict]) -> list[str]:
    """Numeric metrics.csv columns that no panel knows (e.g. new loss factors), in file order."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    known = KNOWN_COLUMNS | set(val_sumr_columns(rows))
    return [n for n in names if n not in known and not is_loss_column(n) and np.isfinite(_column(rows, n)).any()]


def training_curves(runs: dict[str, list[dict]], out: Path) -> None:
    """Six panels per epoch from the metrics.csv rows of one or two runs (the second one dashed).

    Losses (every term of the objective), distillation factor, learning
    rate, val SumR of every named score, epoch time, and any other numeric
    column; a column keeps its colour across runs.
    """
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    panels = axes.ravel()
    for style, rows in zip(("-", "--"), runs.values()):
        x = _column(rows, "epoch")
        for name in dict.fromkeys(k for r in rows for k in r):
            if is_loss_column(name) and (_column(rows, name) > 0).any():  # log axis
                _draw(panels[0], x, _column(rows, name), style, name)
        _draw(panels[1], x, _column(rows, "kd_factor"), style, "kd_factor")
        _draw(panels[2], x, _column(rows, "lr"), style, "lr")
        for name, score in val_sumr_columns(rows).items():
            _draw(panels[3], x, _column(rows, name), style, score, score_color(score), marker="o", ms=3)
        for name in (*TIME_COLUMNS, *other_columns(rows)):
            _draw(panels[4 if name in TIME_COLUMNS else 5], x, _column(rows, name), style, name)
    titles = ("losses (epoch mean)", "distillation factor on the KL term", "learning rate (epoch start)",
              "val SumR", "seconds per epoch", "other columns")
    for ax, title in zip(panels, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if panels[0].lines:
        panels[0].set_yscale("log")
    if not panels[5].lines:
        panels[5].set_axis_off()
    if len(runs) > 1:
        first, second = runs
        fig.suptitle(f"solid: {first}, dashed: {second}", fontsize=10)
    _save(fig, out)


def _draw(ax, x: np.ndarray, y: np.ndarray, style: str, label: str, color=None, **kw) -> None:
    """One curve; a dashed (second run) curve takes the colour of the solid one labelled alike, unlabelled."""
    if not np.isfinite(y).any():
        return
    if style == "-":
        ax.plot(x, y, style, color=color, label=label, **kw)
    else:
        same = next((line.get_color() for line in ax.get_lines() if line.get_label() == label), None)
        ax.plot(x, y, style, color=color or same, **kw)


def rank_distribution(ranks: dict[str, np.ndarray], n_videos: int, out: Path) -> None:
    """Histogram of the true video's rank (log bins) and R@K against K, one line per named rank array."""
    plt = require_matplotlib()
    fig, (hist, recall) = plt.subplots(1, 2, figsize=(11, 3.8))
    edges = np.unique(np.round(np.logspace(0, np.log10(n_videos + 1), 25)).astype(int))
    ks = np.arange(1, n_videos + 1)
    for name, r in ranks.items():
        color = score_color(name.split(" ")[0])
        hist.hist(r, bins=edges, histtype="step", lw=1.5, label=name, color=color, ls="--" if "(" in name else "-")
        recall.plot(ks, 100.0 * np.searchsorted(np.sort(r), ks, side="right") / len(r), label=name, color=color,
                    ls="--" if "(" in name else "-")
    hist.set_xscale("log")
    hist.set_xlabel("rank of the true video")
    hist.set_ylabel("captions")
    hist.set_title("rank distribution", fontsize=10)
    recall.set_xscale("log")
    recall.set_xlabel("K")
    recall.set_ylabel("R@K (%)")
    recall.set_title("recall at K", fontsize=10)
    for ax in (hist, recall):
        ax.legend(fontsize=7)
    _save(fig, out)


RANK_CHANGE_EDGES = (1, 2, 5, 10, 20, 50, 100)


def rank_change_bins(delta: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Counts of rank changes (C,) in signed bins '<= -100', '-99..-50', ..., '-1', '0', '+1', ..., '>= +100'."""
    e = RANK_CHANGE_EDGES
    neg = [(-(e[i + 1] - 1), -e[i]) for i in reversed(range(len(e) - 1))]
    pos = [(e[i], e[i + 1] - 1) for i in range(len(e) - 1)]
    labels = ([f"<= -{e[-1]}"] + [f"{lo}..{hi}" if lo != hi else f"{lo}" for lo, hi in neg] + ["0"]
              + [f"+{lo}..+{hi}" if lo != hi else f"+{lo}" for lo, hi in pos] + [f">= +{e[-1]}"])
    lower = np.array([lo for lo, _ in neg] + [0] + [lo for lo, _ in pos] + [e[-1]])  # lower bound of bins 1..
    index = np.searchsorted(lower, np.asarray(delta), side="right")
    return labels, np.bincount(index, minlength=len(labels))


def rank_change_histogram(delta: np.ndarray, names: tuple[str, str], out: Path) -> None:
    """Bar chart of per-caption rank changes rank(first) - rank(second) of the true video."""
    plt = require_matplotlib()
    labels, counts = rank_change_bins(delta)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    mid = len(labels) // 2
    colors = ["tab:green"] * mid + ["tab:gray"] + ["tab:red"] * mid
    ax.bar(range(len(labels)), counts, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
    ax.set_ylabel("captions")
    ax.set_title(f"rank({names[0]}) - rank({names[1]}) of the true video; green: {names[0]} ranks it higher",
                 fontsize=10)
    _save(fig, out)


def query_panel(panel: dict, out: Path) -> None:
    """Per-position score curves of one caption on its true video (and on the top-1 video when that is another).

    ``panel``: caption, and ``videos``: list of dicts with title, ``xlabel``,
    curves {name: (n,) array} over the n positions of the curve level
    (frames or clips; branches, fused, optionally teacher), ``main`` (the curve
    the moment is estimated on, drawn bold), optional ``steps`` {name: (m,)
    array}: another level of m positions spread evenly over the same video
    (e.g. 32 clips over the frames, or one vector per video), drawn as steps;
    ``estimate`` (start, end) and optional ``truth`` (start, end) in positions.
    """
    plt = require_matplotlib()
    videos = panel["videos"]
    fig, axes = plt.subplots(1, len(videos), figsize=(6.2 * len(videos), 3.4), squeeze=False)
    for ax, video in zip(axes[0], videos):
        n = 0
        for name, y in video["curves"].items():
            n = len(y)
            ax.plot(np.arange(n), y, color=score_color(name), lw=2.2 if name == video["main"] else 1.3,
                    ls=":" if name == "teacher" else "-", label=name)
        for name, y in video.get("steps", {}).items():
            ax.stairs(y, np.linspace(0, n, len(y) + 1) - 0.5, color=score_color(name), lw=1.3, ls="--",
                      baseline=None, label=f"{name} (whole video)" if len(y) == 1 else f"{name} ({len(y)} steps)")
        a, b = video["estimate"]
        ax.axvspan(a - 0.5, b - 0.5, color="tab:orange", alpha=0.25, label="estimated moment")
        if video.get("truth") is not None:
            a, b = video["truth"]
            ax.axvspan(a - 0.5, b - 0.5, facecolor="none", edgecolor="tab:green", hatch="//", lw=1.5,
                       label="true moment")
        ax.set_title(video["title"], fontsize=9)
        ax.set_xlabel(video["xlabel"])
        ax.set_ylabel("cosine")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(panel["caption"], fontsize=10)
    _save(fig, out)
