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
from typing import Optional

from method.common.files import atomic_write
from method.parallel.distributed import Dist

log = logging.getLogger("dldkd")


def _decide(resume, results_dir, resume_if_exists, default_dir: Path) -> dict:
    """Process 0's decision: the run folder and whether to resume there, or an error message.

    A new run's default folder is claimed by creating it (``-2``, ``-3``, ... when
    a run started in the same second took the name), so two runs never share one.
    """
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "latest.ckpt").is_file():
            return {"error": f"--resume {run_dir}: no latest.ckpt there to continue from"}
        return {"run_dir": str(run_dir), "resume": True}
    if results_dir:
        run_dir = Path(results_dir)
        if (run_dir / "latest.ckpt").exists():
            if resume_if_exists:
                return {"run_dir": str(run_dir), "resume": True}
            return {"error": f"{run_dir} already holds a run; use --resume {run_dir} (or --resume_if_exists) "
                             f"or another folder"}
        run_dir.mkdir(parents=True, exist_ok=True)
        return {"run_dir": str(run_dir), "resume": False}
    default_dir.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        run_dir = default_dir if n == 1 else default_dir.with_name(f"{default_dir.name}-{n}")
        try:
            run_dir.mkdir()
            return {"run_dir": str(run_dir), "resume": False}
        except FileExistsError:
            continue
    return {"error": f"could not create a new run folder beside {default_dir}"}


def prepare_run_dir(d: Dist, resume: Optional[str], results_dir: Optional[str], resume_if_exists: bool,
                    root_path: str, collection: str, exp_id: str) -> tuple[Path, bool]:
    """Create the run folder (process 0) and agree on it; returns (run_dir, resuming).

    Default folder: ``<root_path>/<collection>/results/<collection>-<exp_id>-<time>``.
    """
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
    default_dir = Path(root_path or ".") / str(collection) / "results" / f"{collection}-{exp_id}-{stamp}"
    decision = d.broadcast(_decide(resume, results_dir, resume_if_exists, default_dir) if d.is_main else None)
    if "error" in decision:
        raise SystemExit(decision["error"])
    d.barrier()
    return Path(decision["run_dir"]), decision["resume"]


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
    atomic_write(run_dir / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))
    row = history[-1]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
