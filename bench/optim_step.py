"""The optimiser step (the released BertAdam) on the parameters of the TVR model, three implementations.

The parameters are those of the TVR two-branch model (3072-d frames, 768-d text,
hidden 384: 70 tensors, 5.46 M values, in the decayed and the non-decayed group),
with random gradients (randn x 0.01, so the large tensors are clipped and the
small ones are not). Variants, each from the same start:

- ``loop``: the released rule one tensor at a time (the oracle of tests/test_optim.py);
- ``previous``: ``BertAdam.step`` before it was vectorised: foreach updates, but
  the per-tensor clip factors built in a Python loop;
- ``foreach``: ``method.training.optim.BertAdam``, a fixed number of foreach calls per group.

Prints one JSON line per variant: median step milliseconds over ``--steps``
steps, and whether its parameters after those steps equal the loop's bit for
bit (on CUDA, ``_foreach_norm`` may round differently from a per-tensor norm).

    python bench/optim_step.py --device cpu --steps 30
"""
from __future__ import annotations

import functools

import torch

from common import bench_parser, emit, machine, median_seconds
from method.common.cli import resolve_device
from method.models.model import DLDKD, ModelConfig
from method.training.optim import BertAdam, param_groups

LR, BETAS, EPS, MAX_NORM = 2.5e-4, (0.9, 0.999), 1e-6, 1.0


@torch.no_grad()
def loop_step(groups: list, state: dict) -> None:
    """The released update, one parameter tensor at a time (the same primitives as the vectorised step).

    Every parameter here has a gradient; ``state`` maps a parameter to its (m, v).
    """
    b1, b2 = BETAS
    for group in groups:
        for p in group["params"]:
            g = p.grad * (MAX_NORM / (torch.linalg.vector_norm(p.grad) + 1e-6)).clamp(max=1.0)
            if p not in state:
                state[p] = (torch.zeros_like(p), torch.zeros_like(p))
            m, v = state[p]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            update = m / (v.sqrt() + EPS)
            if group["weight_decay"] > 0:
                update.add_(p, alpha=group["weight_decay"])
            p.add_(update, alpha=-LR)


@torch.no_grad()
def previous_step(groups: list, state: dict) -> None:
    """``BertAdam.step`` as it was before (commit 51096f1): the clip factors in a Python list comprehension."""
    b1, b2 = BETAS
    for group in groups:
        params = group["params"]
        for p in params:
            if p not in state:
                state[p] = (torch.zeros_like(p), torch.zeros_like(p))
        norms = torch._foreach_norm([p.grad for p in params])
        factors = [(MAX_NORM / (n + 1e-6)).clamp(max=1.0) for n in norms]
        grads = torch._foreach_mul([p.grad for p in params], factors)
        exp_avgs, exp_avg_sqs = [state[p][0] for p in params], [state[p][1] for p in params]
        torch._foreach_mul_(exp_avgs, b1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - b1)
        torch._foreach_mul_(exp_avg_sqs, b2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - b2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, EPS)
        updates = torch._foreach_div(exp_avgs, denom)
        if group["weight_decay"] > 0.0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-LR)


def tvr_groups(device: torch.device) -> list:
    """The TVR model's two parameter groups, with seeded random gradients (randn x 0.01)."""
    torch.manual_seed(0)
    model = DLDKD(ModelConfig.of(visual_input_size=3072, query_input_size=768)).to(device)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * 0.01).to(device)
    return param_groups(model, 0.01)


def run_variant(name: str, device: torch.device, steps: int, warmup: int) -> tuple[float, list]:
    """Median seconds of one step of variant ``name``, and its parameters after all steps (on the CPU)."""
    groups = tvr_groups(device)
    if name == "foreach":
        step = BertAdam(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.01, max_grad_norm=MAX_NORM).step
    else:
        step = functools.partial(loop_step if name == "loop" else previous_step, groups, {})
    seconds = median_seconds(step, device, steps, warmup)
    return seconds, [p.detach().cpu() for group in groups for p in group["params"]]


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    results = {}
    for name in ("loop", "previous", "foreach"):
        seconds, params = run_variant(name, device, args.steps, args.warmup)
        results[name] = seconds
        if name == "loop":
            reference = params
        diff = max(float((a - b).abs().max()) for a, b in zip(params, reference))
        emit(bench="optim_step", variant=name, device=machine(device), tensors=len(params),
             parameters=sum(t.numel() for t in params), steps=args.steps,
             step_ms=round(seconds * 1e3, 2), speedup_vs_loop=round(results["loop"] / seconds, 2),
             identical_to_loop=all(torch.equal(a, b) for a, b in zip(params, reference)),
             max_abs_diff_vs_loop=diff)


if __name__ == "__main__":
    main()
