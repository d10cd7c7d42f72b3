"""One prepared GPU check: environment, CPU-vs-CUDA parity of every recipe, precision and compile, speed, NCCL.

    python bench/gpu_check.py                        # one GPU, under 8 minutes (--budget_s)
    python bench/gpu_check.py --device cpu --tiny    # CI: tiny sizes, gloo, CUDA-only items skipped (< 1 minute)

Prints one JSON line per check, in this order, then a summary line:

- ``env``: device, torch, CUDA, cuDNN, the SDPA backends, TF32 / bf16 support.
- ``nccl``: a one-process NCCL group (gloo on the CPU) through env:// on
  localhost, driven as a distributed run: ``method.parallel.distributed.gather`` and
  its backward, broadcast and all-gathers, and one DDP training step of the
  distributed code path (``GlobalBatch`` gathers) against the plain step.
- ``parity_<recipe>``: a training step of iccv, dldkdpp, gmmformer,
  gmmformer_v2, holmes, holmes_dual, ral, and iccv with --student gmmformer_v2 / holmes / ral, three steps from the
  same weights and batches on the CPU and on the device (float32, TF32 off,
  dropout 0, hard negatives from a pool of 1: no random draw): max relative
  error of the loss terms, the gradients of every step and the weights after
  the steps; ``ok`` at 1e-4. Parameters whose gradient is 0 in exact
  arithmetic (attention key biases: a constant added to every logit of a
  softmax row) hold only rounding noise, which Adam-type updates turn into
  arbitrary steps; a float64 step on the CPU finds them (below 1e-10 of the
  largest gradient: those, and any as small, e.g. at tiny sizes GMMFormerV2's
  fusion head, whose Gaussian branches nearly coincide at initialisation),
  and they are listed as ``noise_only`` and left out.
- ``fast_path_tape``: the GMMFormer family's length buckets in training with
  dropout on the device (``blocks.CUDA_TAPE`` on): GMMFormerV2, RAL and Holmes
  (--token_valid_positions), the reference path against "exact" from one seed:
  loss terms, gradients and the generator's state after the step; ``ok`` at
  1e-4 says the tape draws the reference's masks there (``CUDA_TAPE`` can
  become the default).
- ``precision``: bf16 autocast, TF32 and --compile against float32 on the
  device (loss deltas over three steps) and the graphs --compile built.
- ``step_<variant>``: the training step at TVR sizes (128 videos x 128 frames
  x 3072-d, 640 captions x 30 tokens) in fp32 / tf32 / bf16 / bf16_compile:
  median seconds, FLOPs (FlopCounterMode on an eager step) and FLOP/s, peak
  memory, the top kernels by device time and the device-to-host syncs per step.
- ``epoch_<preload>``: a training epoch from a memory-mapped BigFile written
  here with ``--epoch_videos`` videos (default 1,280, 10 steps; TVR's 17,435
  videos are 137 steps, about 20 GB: the epoch time is extrapolated, and the
  line says so), with ``--preload device`` and without.
- ``eval``: evaluation at TVR test size (2,179 videos x 128 frames, 10,895 queries).

Each check is one function with its own time budget (SIGALRM); a check that
fails or runs out of time prints its error in its line and the next one runs.
With ``--device cpu`` both sides of the parity checks run on the CPU (this
checks the harness), and CUDA-only items are skipped with the reason.
"""
from __future__ import annotations

import dataclasses
import copy
import gc
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from common import PRESETS, TEACHER_DIM, bench_parser, emit, machine, synthetic_batch, write_collection
from method.config.settings import model_config, loss_settings, epoch_schedule, train_settings
from method.common.timing import device_timer
from method.training import rng
from method.training import runtime
from method.training.compiled import FRAME_BUCKETS, TOKEN_BUCKETS, CompiledForward, ShapePolicy, bucket
from method.common.cli import resolve_device
from method.config.flags import parse_train_args
from method.data import collate_queries, collate_train, collate_videos
from method.data.feed import EvalBlocks
from method.parallel.distributed import Dist, StopSignal, gather
from method.evaluation.evaluate import evaluate
from method.models.model import DLDKD
from method.training.optim import build_optimizer
from method.training.schedules import epoch_settings
from method.models.teacher import PrecomputedTeacher
from method.training.loop import Run, build_run, train_one_epoch, train_step
from method.losses import ral as ral_losses
from method.models.students import blocks

PARITY_TOL = 1e-4
PRECISION_TOL = {"bf16": 3e-2, "tf32": 5e-3, "compile": 1e-4}  # max relative loss delta against float32
RECIPES = {"iccv": ["--recipe", "iccv"], "dldkdpp": ["--recipe", "dldkdpp"], "gmmformer": ["--recipe", "gmmformer"],
           "gmmformer_v2": ["--recipe", "gmmformer_v2"],
           "iccv_student_gmmformer_v2": ["--recipe", "iccv", "--student", "gmmformer_v2"],
           "holmes": ["--recipe", "holmes"], "iccv_student_holmes": ["--recipe", "iccv", "--student", "holmes"],
           "holmes_dual": ["--recipe", "holmes_dual"],
           "ral": ["--recipe", "ral"], "iccv_student_ral": ["--recipe", "iccv", "--student", "ral"]}
TVR_TRAIN_STEPS = 137  # 17,435 videos in batches of 128
CLIPS = 32


@dataclass(frozen=True)
class Sizes:
    """Sizes of the checks: the parity batches, the timed step, the epoch, the evaluation."""

    videos: int  # parity / precision batches: videos, frames (max), captions a video, tokens (max)
    frames: int
    captions: int
    tokens: int
    visual: int
    text: int
    teacher: int
    hidden: int
    heads: int
    step: dict  # the timed step's preset (bench/common.py PRESETS)
    epoch_dims: tuple  # (visual, text, teacher) of the generated BigFile collection
    epoch_frames: tuple  # (lo, hi) frames of its videos
    eval: dict  # the evaluation's videos, queries, frames, dims


FULL = Sizes(videos=8, frames=48, captions=3, tokens=20, visual=1024, text=768, teacher=TEACHER_DIM, hidden=384,
             heads=4, step=PRESETS["tvr"], epoch_dims=(3072, 768, TEACHER_DIM), epoch_frames=(20, 128),
             eval={"videos": 2179, "queries": 10895, "frames": 128, "visual": 3072, "text": 768, "tokens": 30})
TINY = Sizes(videos=4, frames=8, captions=2, tokens=6, visual=16, text=12, teacher=8, hidden=8, heads=2,
             step={"videos": 4, "frames": 8, "visual_dim": 16, "captions": 2, "tokens": 10, "text_dim": 12},
             epoch_dims=(16, 12, 8), epoch_frames=(3, 12),
             eval={"videos": 10, "queries": 30, "frames": 8, "visual": 16, "text": 12, "tokens": 6})


class Skip(Exception):
    """The check does not apply here; the message says why."""


class OutOfTime(Exception):
    pass


class OneProcessGroup(Dist):
    """A process group of one driven as a distributed run (``Dist.enabled`` is True), to run its code path."""

    @property
    def enabled(self) -> bool:
        return True


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_opt(name: str, sizes: Sizes, extra=()):
    """A recipe's resolved flags, drawing-free (dropout 0, hard negatives from a pool of 1), at ``sizes``."""
    return parse_train_args(["--root_path", "/nonexistent", "--collection", "tvr", *RECIPES[name],
                             "--input_drop", "0", "--drop", "0", "--hard_pool_size", "1",
                             "--hidden_size", str(sizes.hidden), "--n_heads", str(sizes.heads), *extra])


def recipe_batches(opt, sizes: Sizes, n: int, seed: int = 0, one_bucket: bool = False) -> list:
    """``n`` training batches (CPU) for a recipe: clips for the GMMFormer family, teacher unless --no_teacher.

    Frames and tokens vary from 2 to their maximum, or (``one_bucket``) within the bucket of the maximum,
    so that the batches fall into one pair of --compile's buckets (one graph).
    """
    g = np.random.default_rng(seed)
    low_f, low_t = 2, 2
    if one_bucket:
        low_f = max([b for b in FRAME_BUCKETS if b < sizes.frames], default=1) + 1
        low_t = max([b for b in TOKEN_BUCKETS if b < sizes.tokens], default=1) + 1
    teacher = not opt.no_teacher
    clips = opt.student != "dldkd"
    batches = []
    for b in range(n):
        items = []
        for v in range(sizes.videos):
            frames, caps = int(g.integers(low_f, sizes.frames + 1)), int(g.integers(1, sizes.captions + 1))
            item = {"video_id": f"v{b}_{v}", "cap_ids": [f"v{b}_{v}#{j}" for j in range(caps)],
                    "video_feat": g.standard_normal((frames, sizes.visual)).astype(np.float32),
                    "query_feats": [g.standard_normal((int(g.integers(low_t, sizes.tokens + 1)), sizes.text))
                                    .astype(np.float32) for _ in range(caps)]}
            if clips:
                item["clip_feat"] = g.standard_normal((CLIPS, sizes.visual)).astype(np.float32)
            if teacher:
                item["teacher_video_feat"] = g.standard_normal((frames, sizes.teacher)).astype(np.float32)
                item["teacher_query_feat"] = g.standard_normal((caps, sizes.teacher)).astype(np.float32)
                if clips and opt.kd_level == "clip":
                    item["teacher_clip_feat"] = g.standard_normal((CLIPS, sizes.teacher)).astype(np.float32)
            items.append(item)
        batches.append(collate_train(items, sort_by=opt.batch_sort))
    return batches


def make_run(opt, sizes: Sizes, device: torch.device, state=None, dist: Dist | None = None,
             forward=None) -> Run:
    """The training run's pieces for ``opt`` (the model from ``state`` when given), one process unless ``dist``."""
    rng.set_seed(0)
    model = DLDKD(model_config(opt, sizes.visual, sizes.text))
    if state is not None:
        model.load_state_dict(state)
    model = model.to(device)
    optimizer, scheduler = build_optimizer(model, opt.optim, opt.lr, opt.wd, 30, opt.lr_warmup_proportion,
                                           opt.exclude_all_norms_from_decay)
    loss_fn = loss_settings(opt).build()
    d = dist or Dist()
    return Run(model=model, forward=forward(model) if forward else model, loader=None, optimizer=optimizer,
               scheduler=scheduler, loss_fn=loss_fn, teacher=None if opt.no_teacher else PrecomputedTeacher(),
               dist=d, sampling=rng.sampling_generator(device) if d.enabled else None,
               second_queries=loss_fn.objective.needs_second_queries and not opt.reuse_query_encoding)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def run_steps(run: Run, batches: list, settings: dict, device: torch.device, amp: str = "none") -> dict:
    """Training steps; the loss terms and gradients of each step and the weights after them (CPU copies)."""
    out = {"terms": [], "grads": []}
    for b in batches:
        terms = train_step(dataclasses.replace(run, amp=amp), to_device(b, device), settings)
        out["terms"].append({k: float(v.detach()) for k, v in terms.items()})
        out["grads"].append({n: p.grad.detach().double().cpu() for n, p in run.model.named_parameters()
                             if p.grad is not None})
    out["weights"] = {k: v.detach().double().cpu() for k, v in run.model.state_dict().items()}
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def zero_gradients(opt, sizes: Sizes, state: dict, batch: dict, settings: dict) -> set:
    """Parameters whose gradient is rounding noise: below 1e-10 of the largest in a float64 step (CPU).

    In float64 a gradient that is 0 in exact arithmetic comes out near 1e-17 of the
    largest; real ones keep their size (those below 1e-10 are left out as well).
    """
    run = make_run(opt, sizes, torch.device("cpu"), state)
    run.model.double()
    train_step(run, {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()},
               settings)
    norms = {n: float(p.grad.norm()) for n, p in run.model.named_parameters() if p.grad is not None}
    top = max(norms.values())
    return {n for n, g in norms.items() if g <= 1e-10 * top}


def compare(got: dict, ref: dict, skip: set) -> dict:
    """Max relative errors of loss terms, gradients and weights of ``got`` against ``ref`` (``skip`` left out)."""
    terms = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-6) for a, b in zip(got["terms"], ref["terms"]) for k in b)
    grads = max(relative(a[n], b[n]) for a, b in zip(got["grads"], ref["grads"]) for n in b if n not in skip)
    weights = max(relative(got["weights"][n], w) for n, w in ref["weights"].items()
                  if n not in skip and w.is_floating_point())
    return {"max_rel_terms": terms, "max_rel_grads": grads, "max_rel_weights": weights,
            "noise_only": sorted(skip), "terms_step0": ref["terms"][0]}


class CountingBackend:
    """A torch.compile backend that counts its graphs and hands them to ``inner`` (a backend name)."""

    def __init__(self, inner: str):
        self.inner = torch._dynamo.lookup_backend(inner)
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self.inner(gm, example_inputs)


# --------------------------------------------------------------------------- #
# checks
# --------------------------------------------------------------------------- #
def check_env(ctx) -> dict:
    device = ctx.device
    out = {"device": machine(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2 ** 30, 1),
                   bf16_supported=torch.cuda.is_bf16_supported(), tf32_capable=props.major >= 8,
                   nccl=str(torch.cuda.nccl.version()),
                   sdpa_enabled={"flash": torch.backends.cuda.flash_sdp_enabled(),
                                 "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                                 "math": torch.backends.cuda.math_sdp_enabled(),
                                 "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)()})
        out["sdpa_usable"] = {name: sdpa_usable(device, dtype) for name, dtype in
                              (("float32_masked", torch.float32), ("bf16_masked", torch.bfloat16))}
    out["policy"] = runtime.policy_summary(device)
    return out


def sdpa_usable(device: torch.device, dtype: torch.dtype) -> dict:
    """Which fused SDPA kernels accept the students' attention: (B, 4 heads, 128, 96) with an additive key mask."""
    q = torch.randn(2, 4, 128, 96, device=device, dtype=dtype)
    mask = torch.zeros(2, 1, 1, 128, device=device, dtype=dtype)
    try:
        params = torch.backends.cuda.SDPAParams(q, q, q, mask, 0.1, False, False)
    except TypeError:  # torch without the enable_gqa argument
        params = torch.backends.cuda.SDPAParams(q, q, q, mask, 0.1, False)
    out = {"flash": torch.backends.cuda.can_use_flash_attention(params),
           "mem_efficient": torch.backends.cuda.can_use_efficient_attention(params)}
    if hasattr(torch.backends.cuda, "can_use_cudnn_attention"):
        out["cudnn"] = torch.backends.cuda.can_use_cudnn_attention(params)
    return out


def check_nccl(ctx) -> dict:
    """A one-process group through env:// on localhost: NCCL on CUDA (plus a gloo control group), gloo on the CPU."""
    device = ctx.device
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"})
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    tdist.init_process_group(backend, init_method="env://", rank=0, world_size=1, **kwargs)
    try:
        control = tdist.new_group(backend="gloo") if device.type == "cuda" else None
        d = OneProcessGroup(0, 1, 0, control)
        x = torch.randn(5, 3, device=device, requires_grad=True)
        w = torch.randn(5, 3, device=device)
        g = gather(d, x, [5])
        (g * w).sum().backward()
        gathered = bool(torch.equal(g.detach(), x.detach())) and bool(torch.equal(x.grad, w))
        objects = d.broadcast({"a": [1, 2]}) == {"a": [1, 2]} and d.all_gather_objects("x") == ["x"]
        ints = d.all_gather_ints([3, 4]) == [[3, 4]]
        opt = recipe_opt("iccv", ctx.sizes)
        batches = recipe_batches(opt, ctx.sizes, 1, seed=5)
        settings = epoch_settings(epoch_schedule(opt), 40)
        plain = make_run(opt, ctx.sizes, device)
        state = {k: v.cpu() for k, v in plain.model.state_dict().items()}
        ddp = make_run(opt, ctx.sizes, device, state, d, forward=lambda m: DistributedDataParallel(
            m, device_ids=[device.index or 0] if device.type == "cuda" else None))
        a, b = run_steps(plain, batches, settings, device), run_steps(ddp, batches, settings, device)
        diff = compare(b, a, set())
    finally:
        tdist.destroy_process_group()
    ok = gathered and objects and ints and max(diff["max_rel_terms"], diff["max_rel_weights"]) <= 1e-5
    return {"ok": ok, "backend": backend, "gather_and_backward": gathered, "broadcast_and_gathers": objects and ints,
            "ddp_step_vs_plain": {k: diff[k] for k in ("max_rel_terms", "max_rel_grads", "max_rel_weights")}}


@contextmanager
def host_noise(seed: int = 0):
    """The objective's Gaussian noise (RAL's samples) drawn on the CPU from a generator seeded with ``seed`` and
    moved to the device: the same noise on both sides of a parity check (CUDA's generator draws other numbers)."""
    real, gen = ral_losses.sample_gaussian, torch.Generator().manual_seed(seed)

    def draw(mean, logsigma, n, generator=None, eps=None):
        if eps is None:
            eps = torch.randn(mean.shape[0], n, mean.shape[1], generator=gen).to(mean.device)
        return real(mean, logsigma, n, None, eps)

    ral_losses.sample_gaussian = draw
    try:
        yield
    finally:
        ral_losses.sample_gaussian = real


def parity_check(recipe: str):
    def check(ctx) -> dict:
        device, sizes = ctx.device, ctx.sizes
        runtime.apply_policy(tf32=False, deterministic=False)
        opt = recipe_opt(recipe, sizes)
        batches = recipe_batches(opt, sizes, 3)
        settings = epoch_settings(epoch_schedule(opt), 40)  # past every recipe's hard-negative start
        cpu = make_run(opt, sizes, torch.device("cpu"))
        state = copy.deepcopy(cpu.model.state_dict())
        with host_noise():
            skip = zero_gradients(opt, sizes, state, batches[0], settings)
        with host_noise():
            ref = run_steps(cpu, batches, settings, torch.device("cpu"))
        with host_noise():
            got = run_steps(make_run(opt, sizes, device, state), batches, settings, device)
        diff = compare(got, ref, skip)
        worst = max(diff["max_rel_terms"], diff["max_rel_grads"], diff["max_rel_weights"])
        out = {"ok": worst <= PARITY_TOL, "tolerance": PARITY_TOL, "reference": "cpu", "target": str(device),
               "student": opt.student, "steps": len(batches), "settings": settings, **diff}
        if device.type == "cpu":
            out["note"] = "--device cpu: both sides on the CPU (checks the harness); CPU vs CUDA needs a GPU"
        return out
    return check


def tape_errors(got: dict, ref: dict) -> dict:
    """Max relative errors of one step's loss terms and gradients; a gradient's error relative to its norm, or to
    1e-4 of the largest gradient's where it is smaller: gradients that are 0 in exact arithmetic (attention key
    biases, the fusion logits' bias before the softmax over branches) hold only rounding noise, about 1e-10 of
    the largest; masks other than the reference's change every gradient by its own size."""
    terms = max(abs(got["terms"][0][k] - v) / max(abs(v), 1e-6) for k, v in ref["terms"][0].items())
    a, b = got["grads"][0], ref["grads"][0]
    floor = 1e-4 * max(float(g.norm()) for g in b.values())
    grads = max(float((a[n] - g).norm()) / max(float(g.norm()), floor) for n, g in b.items())
    return {"max_rel_terms": terms, "max_rel_grads": grads}


# the students whose training runs in length buckets with dropout (Holmes' frames only with the H2 fix)
TAPE_RECIPES = {"gmmformer_v2": [], "ral": [], "holmes": ["--token_valid_positions"]}


def check_fast_path_tape(ctx) -> dict:
    """Length buckets in training on the device, with dropout: each student's step on the reference path ("off":
    every batch padded to 128 frames, ATen's dropout) against "exact" with the tape drawing on the device
    (``blocks.CUDA_TAPE``; a bucket per length), from the same weights, batch and seed, on the device. The
    reference's masks give the same loss terms and gradients (``PARITY_TOL``, TF32 off; ``tape_errors``) and the
    same generator state after the step; other masks give errors of order 1. ``ok`` on a GPU: ``blocks.CUDA_TAPE``
    can be on by default."""
    device, sizes = ctx.device, ctx.sizes
    runtime.apply_policy(tf32=False, deterministic=False)
    saved = blocks.FAST_PATH, blocks.CUDA_TAPE, blocks.BUCKET_OVERHEAD
    students, worst, ok = {}, 0.0, True
    try:
        blocks.CUDA_TAPE, blocks.BUCKET_OVERHEAD = True, 0  # several buckets even in small batches
        for recipe, extra in TAPE_RECIPES.items():
            opt = parse_train_args(["--root_path", "/nonexistent", "--collection", "tvr", *RECIPES[recipe],
                                    "--hard_pool_size", "1", "--hidden_size", str(sizes.hidden),
                                    "--n_heads", str(sizes.heads), *extra])  # the recipe's dropout
            batch = recipe_batches(opt, sizes, 1, seed=2)
            settings = epoch_settings(epoch_schedule(opt), 40)
            state = copy.deepcopy(make_run(opt, sizes, torch.device("cpu")).model.state_dict())
            runs, counts = {}, {}
            for path in ("off", "exact"):
                blocks.FAST_PATH = path
                run = make_run(opt, sizes, device, state)
                before = dict(blocks.BUCKET_COUNTS)
                torch.manual_seed(7)  # the CPU's and every device's generator
                runs[path] = run_steps(run, batch, settings, device)
                runs[path]["rng"] = blocks._rng_state(device)
                counts[path] = {k: blocks.BUCKET_COUNTS[k] - before[k] for k in before}
            diff = tape_errors(runs["exact"], runs["off"])
            rel = max(diff["max_rel_terms"], diff["max_rel_grads"])
            same_rng = bool(torch.equal(runs["exact"]["rng"], runs["off"]["rng"]))
            bucketed = counts["exact"]["bucketed"] > 0 and counts["exact"]["reference"] == 0
            students[recipe] = {"max_rel_terms": diff["max_rel_terms"], "max_rel_grads": diff["max_rel_grads"],
                                "same_generator_state": same_rng, "regions": counts["exact"]}
            worst = max(worst, rel)
            ok = ok and rel <= PARITY_TOL and same_rng and bucketed
    finally:
        blocks.FAST_PATH, blocks.CUDA_TAPE, blocks.BUCKET_OVERHEAD = saved
    out = {"ok": ok, "tolerance": PARITY_TOL, "worst": worst, "students": students}
    if device.type == "cpu":
        out["note"] = "--device cpu: the CPU's tape (always on; checks the harness); the CUDA tape needs a GPU"
    return out


def loss_curve(run: Run, batches: list, settings: dict, device: torch.device, amp: str = "none") -> list:
    return [float(train_step(dataclasses.replace(run, amp=amp), to_device(b, device), settings)["loss"]) for b in batches]


def check_precision(ctx) -> dict:
    """bf16 autocast, TF32 and --compile against float32 on the device: loss deltas over three steps."""
    device, sizes = ctx.device, ctx.sizes
    opt = recipe_opt("iccv", sizes)
    batches = recipe_batches(opt, sizes, 3, seed=1, one_bucket=True)  # one compiled graph (CPU test: the bound)
    settings = epoch_settings(epoch_schedule(opt), 40)
    state = copy.deepcopy(make_run(opt, sizes, torch.device("cpu")).model.state_dict())
    runtime.apply_policy(tf32=False, deterministic=False)
    ref = loss_curve(make_run(opt, sizes, device, state), batches, settings, device)
    out = {"fp32_losses": ref}

    def delta(curve):
        return max(abs(a - b) / abs(b) for a, b in zip(curve, ref))

    results = {"bf16": delta(loss_curve(make_run(opt, sizes, device, state), batches, settings, device, "bf16"))}
    if device.type == "cuda":
        runtime.apply_policy(tf32=True, deterministic=False)
        try:
            results["tf32"] = delta(loss_curve(make_run(opt, sizes, device, state), batches, settings, device))
        finally:
            runtime.apply_policy(tf32=False, deterministic=False)
    else:
        out["tf32_skipped"] = "TF32 is a CUDA matmul mode (no effect on the CPU)"
    backend_name = "inductor" if device.type == "cuda" else "eager"
    backend = CountingBackend(backend_name)
    torch._dynamo.reset()
    compiled = make_run(opt, sizes, device, state,
                        forward=lambda m: CompiledForward(m, ShapePolicy.for_model(m.cfg), backend=backend))
    compiled.shapes = ShapePolicy.for_model(compiled.model.cfg)
    t0 = time.perf_counter()
    results["compile"] = delta(loss_curve(compiled, batches, settings, device))
    pairs = {(compiled.shapes.frame_length(b["video_mask"].shape[1]),
              bucket(b["query_mask"].shape[1], compiled.shapes.tokens)) for b in batches}
    out.update({f"{k}_max_rel_loss_delta": v for k, v in results.items()},
               compile_backend=backend_name, compile_graphs=backend.graphs, compile_bucket_pairs=len(pairs),
               compile_seconds_with_steps=round(time.perf_counter() - t0, 1), tolerances=PRECISION_TOL)
    if device.type == "cpu":
        out["compile_note"] = "the CPU check uses the eager backend (dynamo capture only): inductor takes minutes here"
    out["ok"] = all(v <= PRECISION_TOL[k] for k, v in results.items()) and backend.graphs <= len(pairs)
    return out


def step_check(variant: str):
    """The training step at TVR sizes (tiny with --tiny) in one precision variant."""
    def check(ctx) -> dict:
        device, preset = ctx.device, ctx.sizes.step
        if variant == "tf32" and device.type != "cuda":
            raise Skip("TF32 is a CUDA matmul mode (no effect on the CPU)")
        amp = "bf16" if variant.startswith("bf16") else "none"
        sizes = Sizes(**{**ctx.sizes.__dict__, "visual": preset["visual_dim"], "text": preset["text_dim"],
                         "teacher": TEACHER_DIM})
        opt = recipe_opt("iccv", sizes, ["--hard_pool_size", "20"])
        settings = epoch_settings(epoch_schedule(opt), 40)
        batch = synthetic_batch(preset, device)
        if "flops" not in ctx.cache:  # counted once, on an eager float32 step (the same maths in every variant)
            counted = make_run(opt, sizes, device)
            train_step(counted, batch, settings)  # optimiser state outside the count
            with FlopCounterMode(display=False) as counter:
                train_step(counted, batch, settings)
            ctx.cache["flops"] = counter.get_total_flops()
            del counted
        flops = ctx.cache["flops"]
        forward, compile_seconds = None, None
        if variant.endswith("compile"):
            backend = "inductor" if device.type == "cuda" else "eager"
            forward = lambda m: CompiledForward(m, ShapePolicy.for_model(m.cfg), backend=backend)  # noqa: E731
        runtime.apply_policy(tf32=variant == "tf32", deterministic=False)
        try:
            run = make_run(opt, sizes, device, forward=forward)
            if forward is not None:
                run.shapes = ShapePolicy.for_model(run.model.cfg)
            t0 = time.perf_counter()
            train_step(dataclasses.replace(run, amp=amp), batch, settings)  # warm-up (and compilation)
            synchronize(device)
            compile_seconds = round(time.perf_counter() - t0, 1) if forward is not None else None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for _ in range(ctx.repeats):
                with device_timer(device) as t:
                    train_step(dataclasses.replace(run, amp=amp), batch, settings)
                times.append(t.seconds)
            seconds = statistics.median(times)
            out = {"variant": variant, "preset": "tvr" if ctx.sizes is FULL else "tiny", "amp": amp,
                   "median_step_seconds": round(seconds, 5), "step_flops": flops,
                   "achieved_tflops": round(flops / seconds / 1e12, 4), "steps_timed": len(times), **preset}
            if compile_seconds is not None:
                out["first_step_seconds_with_compile"] = compile_seconds
            if device.type == "cuda":
                out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
            out.update(profile(run, batch, settings, amp, device))
        finally:
            runtime.apply_policy(tf32=False, deterministic=False)
        out["ok"] = True
        return out
    return check


def _device_time(event) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def profile(run: Run, batch: dict, settings: dict, amp: str, device: torch.device, steps: int = 2) -> dict:
    """Top operations / kernels of ``steps`` steps (torch.profiler) and, on CUDA, device-to-host syncs per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(dataclasses.replace(run, amp=amp), batch, settings)
        synchronize(device)
    table = prof.key_averages()
    if device.type != "cuda":
        top = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        return {"top_cpu_ops_ms": [[e.key[:60], round(e.self_cpu_time_total / 1e3 / steps, 2)] for e in top],
                "syncs_per_step": "n/a on the CPU"}
    kernels = [e for e in table if _device_time(e) > 0 and not e.key.startswith(("cuda", "Memcpy", "Memset"))]
    top = sorted(kernels, key=_device_time, reverse=True)[:8]
    sync_names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
    syncs = sum(e.count for e in table if e.key in sync_names)
    dtoh = sum(e.count for e in table if "Memcpy DtoH" in e.key or "Memcpy D2H" in e.key)
    return {"top_kernels_ms_per_step": [[e.key[:80], round(_device_time(e) / 1e3 / steps, 3)] for e in top],
            "syncs_per_step": syncs / steps, "dtoh_copies_per_step": dtoh / steps}


def epoch_check(preload: str):
    """A training epoch from a memory-mapped BigFile (written once), ``--preload device`` or from the files."""
    def check(ctx) -> dict:
        device, sizes = ctx.device, ctx.sizes
        if preload == "device" and device.type != "cuda":
            mode = "device (the CPU here)"
        else:
            mode = preload
        root = ctx.collection()
        opt = parse_train_args(["--root_path", root, "--collection", "tvr", "--device", str(device),
                                "--num_workers", str(ctx.workers), "--preload", preload, "--n_epoch", "1",
                                "--bsz", str(ctx.bsz), "--kd_schedule", "exp_decay", "--margin", "0.1",
                                "--hidden_size", str(sizes.hidden), "--n_heads", str(sizes.heads)])
        rng.set_seed(opt.seed)
        with device_timer(device) as setup:
            r = build_run(train_settings(opt), device, Dist())
        settings = epoch_settings(epoch_schedule(opt), 0)
        with StopSignal() as stop, device_timer(device) as t:
            losses = train_one_epoch(r, 0, settings, device, stop)
        steps = len(r.loader)
        out = {"preload": mode, "videos": ctx.epoch_videos, "steps": steps, "bsz": ctx.bsz,
               "num_workers": ctx.workers, "setup_seconds_incl_preload": round(setup.seconds, 1),
               "epoch_seconds": round(t.seconds, 2), "data_seconds": round(losses["data_seconds"], 2),
               "compute_seconds": round(losses["compute_seconds"], 2),
               "seconds_per_step": round(t.seconds / steps, 3), "loss": losses["loss"],
               "tvr_epoch_seconds_extrapolated": round(t.seconds / steps * TVR_TRAIN_STEPS, 1),
               "extrapolation": f"{steps} steps measured, TVR's epoch has {TVR_TRAIN_STEPS} (17,435 videos)",
               "frames_per_video": list(sizes.epoch_frames), "dims": list(sizes.epoch_dims)}
        if r.loader.packed is not None:
            out["preloaded_gib"] = round(r.loader.packed.nbytes / 2 ** 30, 2)
        if device.type == "cuda":
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        out["ok"] = bool(np.isfinite(losses["loss"]))
        return out
    return check


def check_eval(ctx) -> dict:
    """Evaluation at TVR test size: random items from DataLoader workers, every video encoded once, both directions."""
    from eval_scale import RandomQueries, RandomVideos  # noqa: E402  (bench/, on the path)
    device, e = ctx.device, ctx.sizes.eval
    torch.manual_seed(0)
    opt = recipe_opt("iccv", Sizes(**{**ctx.sizes.__dict__, "visual": e["visual"], "text": e["text"]}))
    model = DLDKD(model_config(opt, e["visual"], e["text"])).to(device).eval()
    common = {"num_workers": ctx.workers, "pin_memory": device.type == "cuda"}
    videos = EvalBlocks(device, 200, loader=DataLoader(RandomVideos(e["videos"], e["frames"], e["visual"]),
                                                       batch_size=200, collate_fn=collate_videos, **common))
    queries = EvalBlocks(device, 500, loader=DataLoader(RandomQueries(e["queries"], e["videos"], e["tokens"],
                                                                      e["text"]),
                                                        batch_size=500, collate_fn=collate_queries, **common))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with device_timer(device) as t:
        res = evaluate(model, videos, queries, device, {"exploration": 0.3, "inheritance": 0.7}, 500)
    out = {"n_videos": res["n_videos"], "n_queries": res["n_queries"], "seconds": round(t.seconds, 2),
           "encode_seconds": round(res["seconds"]["encode"], 2), "score_seconds": round(res["seconds"]["score"], 2),
           "t2v_fused_sumr_chance": round(res["t2v"]["fused"]["sumr"], 2)}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    out["ok"] = True
    return out


# --------------------------------------------------------------------------- #
# the runner
# --------------------------------------------------------------------------- #
class Context:
    """What the checks share: the device, the sizes, a temporary folder and the generated collection."""

    def __init__(self, args, device: torch.device, tmp: str):
        self.device, self.tmp = device, tmp
        self.sizes = TINY if args.tiny else FULL
        self.repeats = 3 if args.tiny else 5
        self.workers = args.num_workers
        self.epoch_videos = args.epoch_videos or (12 if args.tiny else 1280)
        self.bsz = 4 if args.tiny else 128
        self.cache: dict = {}

    def collection(self) -> str:
        if "root" not in self.cache:
            root = os.path.join(self.tmp, "data")
            v, t, te = self.sizes.epoch_dims
            t0 = time.perf_counter()
            info = write_collection(root, self.epoch_videos, v, t, te, frames=self.sizes.epoch_frames,
                                    eval_videos=min(8, self.epoch_videos))
            emit(check="epoch_data", seconds=round(time.perf_counter() - t0, 1), **info)
            self.cache["root"] = root
        return self.cache["root"]


CHECKS = [("env", check_env, 30), ("nccl", check_nccl, 60),
          *((f"parity_{name}", parity_check(name), 60) for name in RECIPES),
          ("fast_path_tape", check_fast_path_tape, 90),
          ("precision", check_precision, 90),
          *((f"step_{v}", step_check(v), 150 if v.endswith("compile") else 40)
            for v in ("fp32", "tf32", "bf16", "bf16_compile")),
          ("epoch_device", epoch_check("device"), 90), ("epoch_files", epoch_check("none"), 90),
          ("eval", check_eval, 60)]


def _alarm(signum, frame):
    raise OutOfTime("the check ran past its time budget")


def run_checks(ctx, budget_s: float, only=None) -> dict:
    """Run the checks in order, each with min(its budget, the time left); one JSON line each."""
    start = time.perf_counter()
    failed, skipped = [], []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for name, fn, budget in CHECKS:
            if only and not any(name.startswith(o) for o in only):
                continue
            left = budget_s - (time.perf_counter() - start)
            if left < 5:
                emit(check=name, skipped="no time left in --budget_s")
                skipped.append(name)
                continue
            t0 = time.perf_counter()
            signal.alarm(max(1, int(min(budget, left))))
            try:
                record = fn(ctx)
                signal.alarm(0)
                record = {"check": name, "seconds": round(time.perf_counter() - t0, 1), **record}
                if not record.get("ok", True):
                    failed.append(name)
            except Skip as e:
                signal.alarm(0)
                record = {"check": name, "skipped": str(e)}
                skipped.append(name)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001  (any failure of a check, SystemExit of a flag error too)
                signal.alarm(0)
                frame = traceback.extract_tb(e.__traceback__)[-1]
                record = {"check": name, "ok": False, "seconds": round(time.perf_counter() - t0, 1),
                          "error": f"{type(e).__name__}: {e}"[:2000], "where": f"{frame.filename}:{frame.lineno}"}
                failed.append(name)
            emit(**record)
            torch._dynamo.reset()
            gc.collect()
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        runtime.apply_policy(tf32=False, deterministic=False)
    summary = {"check": "summary", "ok": not failed, "failed": failed, "skipped": skipped,
               "seconds": round(time.perf_counter() - start, 1)}
    emit(**summary)
    return summary


def main(argv=None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CI on the CPU, under a minute)")
    p.add_argument("--budget_s", type=float, default=470.0, help="seconds for all checks together")
    p.add_argument("--epoch_videos", type=int, default=None,
                   help="videos of the generated BigFile for the epoch checks (default 1,280: 10 steps; 17,435 is "
                        "TVR's train split, about 20 GB on disk)")
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader workers of the epoch and evaluation checks")
    p.add_argument("--only", nargs="+", default=None, help="run only the checks whose names start with these")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.tiny:
        torch.set_num_threads(1)  # tiny ops: thread hand-offs would cost more than the work
        os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        summary = run_checks(Context(args, device, tmp), args.budget_s, args.only)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
