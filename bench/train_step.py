"""Forward + backward + optimiser step of one training batch at TVR / ActivityNet sizes, for every student.

Prints one JSON line per preset: median step seconds, FLOPs of the step (counted
with FlopCounterMode), achieved FLOP/s and its fraction of this machine's
measured dense matmul FLOP/s in the same dtype, and the seconds spent in
GMMFormerV2's matching (Hungarian) loss, which runs on the CPU.

    python bench/train_step.py --device cpu --preset tvr --steps 5
    python bench/train_step.py --device cpu --preset tvr --recipe gmmformer_v2
    python bench/train_step.py --device cpu --preset tvr --recipe iccv --student gmmformer_v2

``--paths off exact on`` measures the GMMFormer family's reference ("off") and fast paths
(``method.models.students.blocks.FAST_PATH``, docs/performance.md) one after the other in the same
process, each with its own FLOP count and peak RSS (VmHWM, reset between paths); ``--lengths`` draws the
videos' frame counts and the captions' token counts (bench/common.py, LENGTHS, with its source);
``--profile N`` prints the N ops of one step with the most self CPU time, per path.

    python bench/train_step.py --device cpu --preset tvr --recipe gmmformer_v2 --paths off exact on --lengths tvr
"""
from __future__ import annotations

import dataclasses
import gc
import shlex
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import (
    LENGTHS,
    PRESETS,
    TEACHER_DIM,
    bench_parser,
    emit,
    machine,
    matmul_peak_flops,
    median_seconds,
    peak_rss_since_reset_mb,
    reset_peak_rss,
    synthetic_batch,
)
from method.config.settings import model_config, loss_settings
from method.training.compiled import CompiledForward, ShapePolicy
from method.common.cli import resolve_device
from method.config.flags import parse_train_args
from method.data import clip_features
from method.parallel.distributed import Dist
from method.losses import objective
from method.models.model import DLDKD
from method.training.optim import build_optimizer
from method.config.recipes import RECIPES
from method.models.students import STUDENTS, blocks
from method.models.teacher import PrecomputedTeacher
from method.training.loop import Run, train_step


PATHS = (*blocks.FAST_PATH_MODES, *(f"{m}+ckpt" for m in blocks.FAST_PATH_MODES if m != "off"))


def set_path(path: str) -> None:
    """blocks.FAST_PATH (and blocks.CHECKPOINT_BRANCHES for a "+ckpt" path) as ``path`` says."""
    mode, _, ckpt = path.partition("+")
    blocks.FAST_PATH, blocks.CHECKPOINT_BRANCHES = mode, ckpt == "ckpt"


class MatchingTimer:
    """Wraps the objective's OT loss and adds up its seconds (the Hungarian solver runs on the CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._inner = device, 0.0, objective.ot_loss

    def __call__(self, *args, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = self._inner(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        return out


def make_step(preset: dict, device: torch.device, amp: str, compile_model: bool, recipe: str, student,
              lengths: str = "full", train_args: str = ""):
    """(the training loop's step on one synthetic batch, as a function of nothing; the run's options).
    ``train_args``: more of ``method.train``'s flags, as one string (``--token_valid_positions``)."""
    torch.manual_seed(0)
    args = ["--root_path", "/unused", "--collection", "tvr", "--recipe", recipe,
            *(["--student", student] if student else []), *shlex.split(train_args)]
    opt = parse_train_args(args)
    model = DLDKD(model_config(opt, preset["visual_dim"], preset["text_dim"])).to(device).train()
    optimizer, scheduler = build_optimizer(model, "bertadam", opt.lr, opt.wd, total_steps=10_000)
    loss_fn = loss_settings(opt).build()
    shapes = ShapePolicy.for_model(model.cfg) if compile_model else None  # what --compile does
    run = Run(model=model, forward=CompiledForward(model, shapes) if compile_model else model, loader=None,
              optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
              teacher=None if opt.no_teacher else PrecomputedTeacher(), dist=Dist(),
              second_queries=loss_fn.objective.needs_second_queries, shapes=shapes)
    # the steady state: hard negatives on, Holmes' warm-up over (the partial OT and smoothing run)
    settings = {"kd_factor": 0.1, "hard_negative": True, "warmup_end": True,
                **({"alpha": 0.8, "beta": 0.8} if recipe == "dldkdpp" else {})}
    b = synthetic_batch(preset, device, lengths=lengths)
    if model.needs_clips:  # the clips: the padded frames pooled to 32 (the same cost as each video's own)
        b["clip_feat"] = torch.from_numpy(clip_features(b["video_feat"].cpu().numpy().swapaxes(0, 1), 32)
                                          .swapaxes(0, 1)).to(device)
        b["teacher_clip_feat"] = torch.randn(len(b["clip_feat"]), 32, TEACHER_DIM, device=device)
    # the training loop's own step, with distillation (when the recipe has a teacher) and hard negatives on
    return lambda: train_step(dataclasses.replace(run, amp=amp), b, settings), opt


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--preset", nargs="+", default=["tvr", "activitynet"], choices=sorted(PRESETS),
                   help="batch sizes to measure")
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype of the forward pass")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward as --compile does")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="iccv", help="the recipe whose step is measured")
    p.add_argument("--student", choices=sorted(STUDENTS), default=None,
                   help="the branch network under the recipe (default: the recipe's)")
    p.add_argument("--lengths", choices=LENGTHS, default="full",
                   help="frame and token counts of the batch (bench/common.py: full = every video at --preset's "
                        "frames; tvr = TVR-like, with its source)")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                   help="GMMFormer family: measure these blocks.FAST_PATH modes in this run, one after the other "
                        "(off = the reference; +ckpt: with blocks.CHECKPOINT_BRANCHES); default: the mode in force, "
                        "alone")
    p.add_argument("--profile", type=int, default=0, help="print the top N ops (self CPU time) of one step")
    p.add_argument("--train_args", default="",
                   help="more flags of method.train for the measured run, one string: "
                        "--train_args=--token_valid_positions")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    peak = matmul_peak_flops(device, dtype)
    timer = MatchingTimer(device)
    objective.ot_loss = timer
    paths = args.paths or [blocks.FAST_PATH + ("+ckpt" if blocks.CHECKPOINT_BRANCHES else "")]
    for name in args.preset:
        results = measure(args, name, paths, device, peak, timer)
        if len(paths) > 1 and "off" in results:
            ref = results["off"]
            for path, r in results.items():
                if path != "off":
                    emit(bench="train_step_ratio", preset=name, recipe=args.recipe, lengths=args.lengths,
                         path=path, time_ratio=round(r["step_seconds"] / ref["step_seconds"], 3),
                         speedup=round(ref["step_seconds"] / r["step_seconds"], 3),
                         gflop_ratio=round(r["step_gflop"] / ref["step_gflop"], 3),
                         peak_rss_ratio=round(r["peak_rss_mb"] / ref["peak_rss_mb"], 3))


def measure(args, name: str, paths: list, device: torch.device, peak: float, timer: MatchingTimer) -> dict:
    """Each path's FLOP count, median step seconds and peak RSS; prints and returns their JSON records.

    The paths' timed steps are interleaved (off, exact, on, off, ...), so a load that comes and goes on a
    shared machine reaches every path alike; the peak RSS (VmHWM) is reset before each step and the
    largest of a path's steps reported (the models and batches of the other paths are resident too: the
    same baseline for every path).
    """
    flops, opt = {}, None
    for path in paths:
        set_path(path)
        # FLOPs are counted on an eager step (the same maths), so the count does not
        # depend on how torch.compile traces or fuses the model.
        counted, opt = make_step(PRESETS[name], device, args.amp, False, args.recipe, args.student, args.lengths,
                                 args.train_args)
        counted()  # allocate optimiser state outside the counted step
        with FlopCounterMode(display=False) as counter:
            counted()
        flops[path] = counter.get_total_flops()
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                counted()
            print(f"# profile: preset {name}, recipe {args.recipe}, path {path}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile), flush=True)
        del counted
    gc.collect()
    steps = {}
    for path in paths:
        set_path(path)
        steps[path], _ = make_step(PRESETS[name], device, args.amp, args.compile, args.recipe, args.student,
                                   args.lengths, args.train_args)
    times = {path: [] for path in paths}
    rss = {path: 0.0 for path in paths}
    matching = {path: 0.0 for path in paths}
    resets = True
    for rep in range(args.warmup + args.steps):
        for path in paths:
            set_path(path)
            gc.collect()
            resets = reset_peak_rss() and resets
            timer.seconds = 0.0
            seconds = median_seconds(steps[path], device, 1, 0)
            rss[path] = max(rss[path], peak_rss_since_reset_mb())
            if rep >= args.warmup:
                times[path].append(seconds)
                matching[path] += timer.seconds / args.steps
    records = {}
    for path in paths:
        seconds, f, m = statistics.median(times[path]), flops[path], matching[path]
        records[path] = dict(
            bench="train_step", preset=name, recipe=args.recipe, student=opt.student, device=machine(device),
            amp=args.amp, compile=args.compile, path=path, lengths=args.lengths, train_args=args.train_args,
            step_seconds=round(seconds, 4), step_seconds_all=[round(t, 2) for t in times[path]],
            step_gflop=round(f / 1e9, 1), achieved_gflops=round(f / seconds / 1e9, 1),
            matmul_peak_gflops=round(peak / 1e9, 1), fraction_of_peak=round(f / seconds / peak, 3),
            matching_seconds=round(m, 4), matching_share=round(m / seconds, 4), peak_rss_mb=round(rss[path]),
            peak_rss_reset=resets, **PRESETS[name])
        emit(**records[path])
    del steps
    return records


if __name__ == "__main__":
    main()
