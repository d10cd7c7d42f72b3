"""Peak RSS of one training step with one path's model alone in the process (bench/train_step.py keeps every
path's model resident, which raises the common baseline and understates the ratios).

Builds the step as bench/train_step.py does (``make_step``), runs it once (optimiser state allocated), resets
the peak (VmHWM) and runs it again; prints the resident memory at the reset (model, optimiser state,
batch, the Python runtime), the peak, and the step's seconds (with the load average: on a shared machine the
seconds vary, the memory does not). Run one process per path:

    python bench/peak_rss.py --preset tvr --recipe iccv --student gmmformer_v2 --path exact
    python bench/peak_rss.py --preset tvr_mid --recipe gmmformer_v2 --path off
"""
from __future__ import annotations

import gc
import os
import time

import torch

from common import PRESETS, LENGTHS, bench_parser, emit, peak_rss_since_reset_mb, reset_peak_rss
from train_step import PATHS, make_step, set_path
from method.common.cli import resolve_device
from method.config.recipes import RECIPES
from method.models.students import STUDENTS


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--preset", default="tvr", choices=sorted(PRESETS), help="batch size to measure")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="gmmformer_v2",
                   help="the recipe whose step is measured")
    p.add_argument("--student", choices=sorted(STUDENTS), default=None,
                   help="the branch network under the recipe (default: the recipe's)")
    p.add_argument("--lengths", choices=LENGTHS, default="tvr",
                   help="frame and token counts of the batch (bench/common.py)")
    p.add_argument("--path", choices=PATHS, default="exact",
                   help="the fast-path mode (off = the reference; +ckpt: with checkpointed branches)")
    p.add_argument("--train_args", default="",
                   help="more flags of method.train for the measured run, one string: "
                        "--train_args=--token_valid_positions")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    set_path(args.path)
    step, opt = make_step(PRESETS[args.preset], device, "none", False, args.recipe, args.student, args.lengths,
                          args.train_args)
    step()
    gc.collect()
    reset_peak_rss()
    base = peak_rss_since_reset_mb()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    emit(bench="peak_rss", preset=args.preset, recipe=args.recipe, student=opt.student, path=args.path,
         lengths=args.lengths, train_args=args.train_args, rss_at_reset_mb=round(base),
         peak_rss_mb=round(peak_rss_since_reset_mb()),
         step_seconds=round(seconds, 2), loadavg=float(os.getloadavg()[0]), threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
