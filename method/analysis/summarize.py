"""Tables over runs: mean +- std over seeds of every text-to-video metric, per group of runs.

    python -m method.summarize RUN_DIR [RUN_DIR ...] [--group_by FLAG ...] [--split test] [--branch fused]
                               [--out summary]

Reads each run's ``opt.json``, ``eval_<split>.json`` and ``metrics.csv``.
Runs are grouped by the values of ``--group_by`` flags of their opt.json
(default: every flag whose value differs between the runs, except the seed,
names, paths and machine settings); a run older than a flag has its default
(older than ``--student``: the dldkd student). Per group: number of runs,
mean and sample standard deviation (n - 1) of R@1, R@5, R@10, R@100, SumR,
median rank, mean rank and mAP of the score ``--branch`` (fused, or any
score of the runs' evaluation: inheritance, exploration; GMMFormer: clip,
frame; DL-DKD on it: inheritance_clip, ...), of the best epoch (0-based, the
checkpoint the evaluation used) and of the training wall time (the sum of
metrics.csv's ``epoch_seconds``). Prints Markdown; writes ``<out>.csv`` and
``<out>.tex``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from method.common.cli import HelpFormatter
from method.config.flags import load_opt, stored_settings
from method.config.run_options import EVAL_RUNTIME_KEYS

METRICS = (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"), ("r100", "R@100"), ("sumr", "SumR"),
           ("medr", "MedR"), ("meanr", "MnR"), ("map", "mAP"), ("best_epoch", "best epoch"),
           ("wall_minutes", "time (min)"))
# Flags never used to group runs by default: they differ between seeds of one setting.
NOT_GROUPING = {"seed", "exp_id", "results_dir", "resume", "root_path", *EVAL_RUNTIME_KEYS}


def read_run(path: Path, split: str, branch: str) -> dict:
    """opt.json, the t2v metrics of score ``branch`` on ``split``, best epoch and wall time of one run folder."""
    opt = vars(stored_settings(load_opt(path), {}))  # a run older than a flag: the recipe table's value
    eval_path = path / f"eval_{split}.json"
    if not eval_path.is_file():
        raise SystemExit(f"{eval_path} not found: evaluate the run first "
                         f"(python -m method.eval --model_dir {path} --eval_split {split})")
    result = json.loads(eval_path.read_text())
    if branch not in result.get("t2v", {}):
        raise SystemExit(f"{eval_path}: no t2v metrics of the score {branch!r}; --branch can be one of "
                         f"{', '.join(result.get('t2v', {})) or 'none (no t2v metrics)'}")
    values = {key: float(result["t2v"][branch][key]) for key, _ in METRICS[:8]}
    values["best_epoch"] = float(result.get("checkpoint_epoch", math.nan))
    values["wall_minutes"] = math.nan
    metrics_csv = path / "metrics.csv"
    if metrics_csv.is_file():
        with open(metrics_csv, newline="") as f:
            seconds = [float(r["epoch_seconds"]) for r in csv.DictReader(f) if r.get("epoch_seconds")]
        if seconds:
            values["wall_minutes"] = sum(seconds) / 60.0
    return {"path": path, "opt": opt, "values": values}


def differing_flags(runs: list[dict]) -> list[str]:
    """Flags of opt.json whose values differ between the runs (sorted), except NOT_GROUPING."""
    keys = sorted({k for r in runs for k in r["opt"]} - NOT_GROUPING)
    return [k for k in keys if len({json.dumps(r["opt"].get(k), sort_keys=True) for r in runs}) > 1]


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the finite values; NaN where undefined."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def summarize(runs: list[dict], flags: list[str]) -> list[dict]:
    """One row per group (first-appearance order): label, flag values, n_runs, (mean, std) of every metric."""
    for flag in flags:
        missing = [str(r["path"]) for r in runs if flag not in r["opt"]]
        if missing:
            raise SystemExit(f"--group_by {flag}: not a flag of {missing[0]}/opt.json")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(json.dumps(r["opt"][f]) for f in flags), []).append(r)
    rows = []
    for members in groups.values():
        values = {f: members[0]["opt"][f] for f in flags}
        row = {"group": ", ".join(f"{f}={v}" for f, v in values.items()) or "all", "flags": values,
               "n_runs": len(members), "runs": [str(m["path"]) for m in members]}
        for key, _ in METRICS:
            row[key] = mean_std(np.array([m["values"][key] for m in members]))
        rows.append(row)
    return rows


def _cell(key: str, mean: float, std: float, pm: str) -> str:
    if math.isnan(mean):
        return "–"
    digits = 3 if key == "map" else 1
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f"{pm}{std:.{digits}f}")


def to_markdown(rows: list[dict]) -> str:
    head = "| group | runs | " + " | ".join(h for _, h in METRICS) + " |"
    rule = "|---|---:|" + "---:|" * len(METRICS)
    body = ["| " + row["group"] + f" | {row['n_runs']} | "
            + " | ".join(_cell(k, *row[k], " ± ") for k, _ in METRICS) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_csv(rows: list[dict], flags: list[str], path: Path) -> None:
    """Unrounded numbers: group, flag values, n_runs, <metric>_mean, <metric>_std, ..., runs."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", *flags, "n_runs", *(f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")), "runs"])
        for row in rows:
            numbers = ["" if math.isnan(x) else repr(x) for k, _ in METRICS for x in row[k]]
            w.writerow([row["group"], *(row["flags"][f] for f in flags), row["n_runs"], *numbers,
                        " ".join(row["runs"])])


LATEX_PM = " \\pm "


def _latex_escape(text: str) -> str:
    return "".join("\\" + c if c in "&%$#_{}" else c for c in text)


def to_latex(rows: list[dict]) -> str:
    """A booktabs tabular with $mean \\pm std$ cells."""
    cols = "l" + "r" * (len(METRICS) + 1)
    head = "Group & Runs & " + " & ".join(_latex_escape(h) for _, h in METRICS) + " \\\\"
    body = [_latex_escape(row["group"]) + f" & {row['n_runs']} & "
            + " & ".join("$" + _cell(k, *row[k], LATEX_PM) + "$" if not math.isnan(row[k][0]) else "--"
                         for k, _ in METRICS) + " \\\\" for row in rows]
    return "\n".join([f"\\begin{{tabular}}{{{cols}}}", "\\toprule", head, "\\midrule", *body, "\\bottomrule",
                      "\\end{tabular}"]) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m method.summarize", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (opt.json, eval_<split>.json, metrics.csv)")
    p.add_argument("--group_by", nargs="+", default=None, metavar="FLAG",
                   help="opt.json flags whose values define a group (default: the flags that differ between "
                        "the runs, except seed, names, paths and machine settings)")
    p.add_argument("--split", default="test", help="summarize eval_<split>.json")
    p.add_argument("--branch", default="fused", metavar="SCORE",
                   help="score whose metrics are summarized: fused, or any score of the runs' eval_<split>.json "
                        "(inheritance, exploration; clip, frame; inheritance_clip, ...)")
    p.add_argument("--out", default="summary", help="output prefix: writes <out>.csv and <out>.tex")
    return p


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    runs = [read_run(path, args.split, args.branch) for path in args.runs]
    flags = args.group_by if args.group_by is not None else differing_flags(runs)
    rows = summarize(runs, flags)
    print(f"text-to-video, {args.branch} score, {args.split} split: mean ± sample std over runs\n")
    print(to_markdown(rows))
    write_csv(rows, flags, Path(f"{args.out}.csv"))
    Path(f"{args.out}.tex").write_text(to_latex(rows))
    print(f"\nwritten: {args.out}.csv, {args.out}.tex")
    return rows


if __name__ == "__main__":
    main()
