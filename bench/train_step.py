"""Forward + backward + optimiser step of one training batch at TVR / ActivityNet sizes.

Prints one JSON line per preset: median step seconds, FLOPs of the step (counted
with FlopCounterMode), achieved FLOP/s and its fraction of this machine's
measured dense matmul FLOP/s in the same dtype.

    python bench/train_step.py --device cpu --preset tvr --steps 5
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import PRESETS, bench_parser, emit, machine, matmul_peak_flops, median_seconds, synthetic_batch
from method.compiled import CompiledForward, ShapePolicy
from method.config import resolve_device
from method.distributed import Dist
from method.losses import DLDKDLoss, SoftNCEOptions
from method.model import DLDKD, ModelConfig
from method.optim import build_optimizer
from method.teacher import PrecomputedTeacher
from method.train import Run, train_step


def make_step(preset: dict, device: torch.device, amp: str, compile_model: bool, recipe: str):
    torch.manual_seed(0)
    soft = recipe == "dldkdpp"
    cfg = ModelConfig(visual_input_size=preset["visual_dim"], query_input_size=preset["text_dim"],
                      share_query_proj=not soft)
    model = DLDKD(cfg).to(device).train()
    optimizer, scheduler = build_optimizer(model, "bertadam", 2.5e-4, 0.01, total_steps=10_000)
    shapes = ShapePolicy.for_model(cfg) if compile_model else None  # what --compile does
    run = Run(model=model, forward=CompiledForward(model, shapes) if compile_model else model, loader=None,
              optimizer=optimizer, scheduler=scheduler,
              loss_fn=DLDKDLoss(margin=0.1, hard_pool_size=20, soft=SoftNCEOptions() if soft else None),
              teacher=PrecomputedTeacher(), dist=Dist(), shapes=shapes)
    settings = {"kd_factor": 0.1, "hard_negative": True, **({"alpha": 0.8, "beta": 0.8} if soft else {})}
    b = synthetic_batch(preset, device)
    # the training loop's own step, with distillation and hard negatives on
    return lambda: train_step(run, b, settings, amp)


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--preset", nargs="+", default=["tvr", "activitynet"], choices=sorted(PRESETS),
                   help="batch sizes to measure")
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype of the forward pass")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward as --compile does")
    p.add_argument("--recipe", choices=("iccv", "dldkdpp"), default="iccv",
                   help="the step's losses: ICCV, or DL-DKD++ (soft-target InfoNCE, own exploration query projection)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    peak = matmul_peak_flops(device, dtype)
    for name in args.preset:
        # FLOPs are counted on an eager step (the same maths), so the count does not
        # depend on how torch.compile traces or fuses the model.
        counted = make_step(PRESETS[name], device, args.amp, compile_model=False, recipe=args.recipe)
        counted()  # allocate optimiser state outside the counted step
        with FlopCounterMode(display=False) as counter:
            counted()
        flops = counter.get_total_flops()
        del counted
        step = make_step(PRESETS[name], device, args.amp, args.compile, args.recipe)
        seconds = median_seconds(step, device, args.steps, args.warmup)
        emit(bench="train_step", preset=name, recipe=args.recipe, device=machine(device), amp=args.amp,
             compile=args.compile,
             step_seconds=round(seconds, 4), step_gflop=round(flops / 1e9, 1),
             achieved_gflops=round(flops / seconds / 1e9, 1), matmul_peak_gflops=round(peak / 1e9, 1),
             fraction_of_peak=round(flops / seconds / peak, 3), **PRESETS[name])


if __name__ == "__main__":
    main()
