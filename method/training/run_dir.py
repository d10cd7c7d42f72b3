"""The run folder: where it is, whether a run continues in it, its log and its per-epoch metrics.

Only process 0 of a distributed run writes here; the others follow its decisions.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from pathlib import Path

from method.config.flags import resume_options
from method.parallel.distributed import Dist

log = logging.getLogger("dldkd")


def _decide(opt) -> dict:
    """Process 0's decision: the run folder and whether to resume there, or an error message."""
    if opt.resume:
        run_dir = Path(opt.resume)
        if not (run_dir / "latest.ckpt").is_file():
            return {"error": f"--resume {run_dir}: no latest.ckpt there to continue from"}
        return {"run_dir": str(run_dir), "resume": True}
    if opt.results_dir:
        run_dir = Path(opt.results_dir)
    else:
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
        run_dir = Path(opt.root_path) / opt.collection / "results" / f"{opt.collection}-{opt.exp_id}-{stamp}"
    if (run_dir / "latest.ckpt").exists():
        if opt.resume_if_exists:
            return {"run_dir": str(run_dir), "resume": True}
        return {"error": f"{run_dir} already holds a run; use --resume {run_dir} (or --resume_if_exists) "
                         f"or another folder"}
    return {"run_dir": str(run_dir), "resume": False}


def prepare_run_dir(opt, d: Dist):
    """Create the run folder (process 0) and agree on it; returns (opt, run_dir, resuming).

    A run found by ``--resume_if_exists`` continues with the settings of its
    own opt.json, like ``--resume``.
    """
    decision = d.broadcast(_decide(opt) if d.is_main else None)
    if "error" in decision:
        raise SystemExit(decision["error"])
    run_dir, resuming = Path(decision["run_dir"]), decision["resume"]
    if resuming and not opt.resume:
        opt = resume_options(run_dir, opt)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    d.barrier()
    opt.results_dir = str(run_dir)
    return opt, run_dir, resuming


def setup_logging(run_dir: Path, d: Dist) -> None:
    """Process 0 logs to ``train.log.txt`` and stdout; the others only warnings, to stderr, with their rank."""
    log.handlers.clear()
    if d.is_main:
        log.setLevel(logging.INFO)
        handlers = (logging.FileHandler(run_dir / "train.log.txt"), logging.StreamHandler(sys.stdout))
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    else:
        log.setLevel(logging.WARNING)
        handlers = (logging.StreamHandler(sys.stderr),)
        fmt = logging.Formatter(f"%(asctime)s [rank {d.rank}] %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)


def write_metrics(run_dir: Path, history: list[dict], writer) -> None:
    """Rewrite metrics.csv from the history (kept in latest.ckpt, so the two never disagree); log the last row."""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in history for k in row))
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(history)
    tmp = run_dir / "metrics.csv.tmp"
    tmp.write_text(buf.getvalue())
    tmp.replace(run_dir / "metrics.csv")
    row = history[-1]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
