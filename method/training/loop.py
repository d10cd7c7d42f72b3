"""Train DL-DKD: ``python -m method.train --root_path ROOT --collection tvr [--recipe dldkdpp] [...]``.

Several processes: ``torchrun --nproc_per_node N -m method.train ...`` trains the
same recipe on the same global batches (``--bsz`` videos); see ``method.parallel.distributed``.

A run folder holds ``opt.json`` (every resolved flag), ``model.ckpt`` (best
val SumR), ``latest.ckpt`` (everything needed by ``--resume``), ``metrics.csv``
(one row per epoch), ``train.log.txt``, TensorBoard logs in ``tb/`` and, at
the end, ``eval_test.json``. Process 0 writes them; every process evaluates its
share of the val and test splits (``method.evaluation.evaluate``, sharded evaluation).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from method.common.files import atomic_write_json
from method.data import DataError, GlobalBatchSampler, build_split, collate_train, seed_worker
from method.data.feed import TrainFeed
from method.data.options import DataOptions
from method.data.preload import STORAGE_DTYPES, pack_train
from method.evaluation.evaluate import EvalFeed, evaluate, evaluate_split, make_eval_feed
from method.losses import DLDKDLoss
from method.models.checkpoint import atomic_save, load_model, model_payload, read_checkpoint
from method.models.model import DLDKD
from method.models.students import blocks
from method.models.teacher import PrecomputedTeacher
from method.parallel import distributed
from method.parallel.global_batch import GlobalBatch, pad_share, share_sizes
from method.training import rng, runtime
from method.training.compiled import CompiledForward, ShapePolicy
from method.training.run_dir import setup_logging, write_metrics
from method.training.schedules import epoch_settings
from method.training.settings import TrainSettings

log = logging.getLogger("dldkd")
EXIT_STOPPED = 143  # 128 + SIGTERM: stopped on request, resumable


def train(s: TrainSettings, d: distributed.Dist, device: torch.device, run_dir: Path, resuming: bool) -> Optional[dict]:
    """Train in ``run_dir`` (continuing its ``latest.ckpt`` when ``resuming``), then evaluate the best checkpoint on
    the test split; returns that result (process 0)."""
    setup_logging(run_dir, d)
    blocks.configure(s.runtime.fast_path, s.runtime.checkpoint_branches)
    log.info(runtime.policy_summary(device) + f"; GMMFormer-family blocks: --fast_path {s.runtime.fast_path}"
             + (", --checkpoint_branches" if s.runtime.checkpoint_branches else ""))
    rng.set_seed(s.seed)
    r = build_run(s, device, d)
    state = {"epoch": 0, "best_score": 0.0, "es_cnt": 0, "history": []}
    if resuming:
        state = restore(run_dir / "latest.ckpt", r, device)
        log.info("resumed %s at epoch %d", run_dir, state["epoch"])
    if d.is_main:  # the resolved flags, with the text size read from the data
        atomic_write_json(run_dir / "opt.json", {**s.record, "q_feat_size": r.data.q_feat_size,
                                                 "results_dir": str(run_dir)}, sort_keys=True)
    log.info("recipe %s | train %d videos, %d steps/epoch, %d processes, %d parameters, device %s", s.recipe,
             r.loader.n_videos, len(r.loader), d.world, sum(p.numel() for p in r.model.parameters()), device)
    writer = SummaryWriter(run_dir / "tb", purge_step=state["epoch"]) if d.is_main else None
    with distributed.StopSignal() as stop:
        train_epochs(s, r, state, run_dir, device, writer, stop)
    if d.is_main:
        writer.close()
    if not d.broadcast((run_dir / "model.ckpt").is_file()):
        raise SystemExit(f"no epoch reached a val SumR above 0, so {run_dir}/model.ckpt was never written")
    best, info = load_model(run_dir / "model.ckpt")  # every process: each evaluates its share of the test split
    result = evaluate_split(best.to(device), "test", r.data, s.fusion, device, run_dir, info, dist=d)
    return result if d.is_main else None


def train_epochs(s: TrainSettings, r: "Run", state: dict, run_dir, device, writer, stop) -> None:
    """The epoch loop: train, evaluate (process 0), keep the best, stop early or on SIGTERM."""
    d = r.dist
    for epoch in progress(d, range(state["epoch"], s.n_epoch), desc="epochs", initial=state["epoch"],
                          total=s.n_epoch):
        t0, lr = time.time(), r.scheduler.get_last_lr()[0]
        settings = epoch_settings(s.schedule, epoch)
        losses = train_one_epoch(r, epoch, settings, device, stop)
        if losses is None:
            log.warning("stopped by SIGTERM in epoch %d; latest.ckpt holds the epochs before it; continue with "
                        "--resume %s", epoch, run_dir)
            raise SystemExit(EXIT_STOPPED)
        with rng.evaluation_draws(r.sampling):  # every process evaluates its share
            val = evaluate(r.model, r.val.videos, r.val.queries, device, s.fusion, r.data.eval_query_bsz,
                           dist=d)["t2v"]
        if d.is_main:  # process 0 writes; the others wait for its verdict
            row = epoch_row(epoch, lr, settings, losses, val, time.time() - t0)
            improved = end_of_epoch(state, row, r, run_dir, device, writer)
            log.info("epoch %d | loss %.4f | val SumR %.2f (best %.2f)%s | %.1fs", epoch, losses["loss"],
                     row["val_sumr"], state["best_score"], " *" if improved else "", row["epoch_seconds"])
        verdict = d.broadcast({"state": {k: state[k] for k in ("epoch", "best_score", "es_cnt")},
                               "sampling": None if r.sampling is None else r.sampling.get_state()})
        state.update(verdict["state"])
        if r.sampling is not None:
            r.sampling.set_state(verdict["sampling"])
        if state["es_cnt"] > s.max_es_cnt:
            log.info("early stop: no val improvement for %d epochs", state["es_cnt"])
            break
        if stop.requested(d) and epoch + 1 < s.n_epoch:
            log.warning("stopped by SIGTERM after epoch %d; continue with --resume %s", epoch, run_dir)
            raise SystemExit(EXIT_STOPPED)


def epoch_row(epoch: int, lr: float, settings: dict, losses: dict, val: dict, seconds: float) -> dict:
    """One row of metrics.csv: the epoch's settings, mean losses and val metrics (fused, SumR per branch)."""
    return {"epoch": epoch, "lr": lr, **{k: int(v) if isinstance(v, bool) else v for k, v in settings.items()},
            **losses, **{f"val_{k}": v for k, v in val["fused"].items()},
            **{f"val_sumr_{name}": m["sumr"] for name, m in val.items() if name != "fused"},
            "epoch_seconds": seconds}


def end_of_epoch(state: dict, row: dict, r: "Run", run_dir, device, writer) -> bool:
    """Record the epoch, keep the best model, write ``latest.ckpt`` and the metrics; True when it improved."""
    state["history"].append(row)
    improved = row["val_sumr"] > state["best_score"]
    if improved:
        state["best_score"], state["es_cnt"] = row["val_sumr"], 0
        atomic_save(model_payload(r.model, row["epoch"], state["best_score"]), run_dir / "model.ckpt")
    else:
        state["es_cnt"] += 1
    state["epoch"] = row["epoch"] + 1
    atomic_save({**model_payload(r.model, row["epoch"], state["best_score"]), **state,
                 "rng": rng.capture(device, r.sampling), "optimizer": r.optimizer.state_dict(),
                 "scheduler": r.scheduler.state_dict()}, run_dir / "latest.ckpt")
    write_metrics(run_dir, state["history"], writer)
    return improved


@dataclass
class Run:
    """Everything a training step and an epoch need."""

    model: DLDKD  # the module itself: checkpoints and evaluation
    forward: torch.nn.Module  # what the step calls: the model, wrapped by DDP and / or compiled (CompiledForward)
    loader: Optional[TrainFeed]  # this process's shares of the epoch's global batches, on the device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: DLDKDLoss
    teacher: Optional[PrecomputedTeacher]
    dist: distributed.Dist
    data: Optional[DataOptions] = None  # with the text feature size read from the data
    seed: int = 0
    amp: str = "none"
    debug: bool = False
    sampling: Optional[torch.Generator] = None  # negatives' stream of several processes (see method.training.rng)
    second_queries: bool = False  # encode the queries twice (query diversity and OT read the second, quirk Q5)
    val: Optional[EvalFeed] = None  # this process's share of the val split, built once per run
    shapes: Optional[ShapePolicy] = None  # --compile: frames and tokens padded to a few lengths


def build_run(s: TrainSettings, device: torch.device, d: distributed.Dist) -> Run:
    """Everything before the epoch loop: data check, feeds, model, optimiser, loss, teacher."""
    data = s.data
    try:
        train_split = build_split(**data.split_args("train"), use_teacher=data.use_teacher,
                                  pool_to_teacher=data.pool_to_teacher)
        val_split = build_split(**data.split_args("val"), use_teacher=False)
    except DataError as e:
        raise SystemExit(f"data check failed: {e}") from None
    if data.q_feat_size is None:
        data = dataclasses.replace(data, q_feat_size=train_split.text_dim)
    elif train_split.text_dim != data.q_feat_size:
        raise SystemExit(f"--q_feat_size {data.q_feat_size} disagrees with the text features "
                         f"({train_split.text_dim}-d) of {data.root_path}/{data.collection}")
    try:
        model = DLDKD(s.model.with_inputs(train_split.visual_dim, train_split.text_dim)).to(device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    forward = model
    if d.enabled:
        forward = distributed.data_parallel(model, device)
    shapes = ShapePolicy.for_model(model.cfg) if s.runtime.compile else None
    if shapes is not None:
        forward = CompiledForward(forward, shapes)
    loss_fn = s.loss.build()
    loader = make_train_feed(train_split, data, s.bsz, s.seed, device, d, model.n_clips, s.loss.objective.kd_level)
    optimizer, scheduler = s.optim.build(model, len(loader) * s.n_epoch)
    run = Run(model=model, forward=forward, loader=loader, optimizer=optimizer, scheduler=scheduler,
              loss_fn=loss_fn, teacher=PrecomputedTeacher(train_split.teacher_dims) if data.use_teacher else None,
              dist=d, data=data, seed=s.seed, amp=s.runtime.amp, debug=s.runtime.debug,
              sampling=rng.sampling_generator(device) if d.enabled else None,
              second_queries=loss_fn.objective.needs_second_queries and not s.reuse_query_encoding,
              shapes=shapes)
    run.val = make_eval_feed(val_split, data, device, model, d, persistent=True)
    return run


def train_one_epoch(r: Run, epoch: int, settings: dict, device, stop: distributed.StopSignal):
    """One pass over the training videos, or None when SIGTERM asked to stop.

    Returns the epoch mean of every loss term and of their sum (``loss``) over
    the global batches, ``data_seconds`` and ``compute_seconds``: process 0's
    time waiting for batches and computing steps (``runtime.EpochClock``: on
    CUDA the steps' GPU time, and the rest of the epoch).
    """
    r.model.train()
    r.loader.set_epoch(epoch)
    if r.dist.enabled:
        rng.seed_process_epoch(r.seed, epoch, r.dist.rank)  # dropout streams differ per process
    sums: dict[str, torch.Tensor] = {}
    clock = runtime.EpochClock(device)
    batches = iter(progress(r.dist, r.loader, desc="train", leave=False))
    with torch.autograd.detect_anomaly() if r.debug else nullcontext():
        for step in range(len(r.loader)):
            with clock.waiting():
                b, counts = next(batches)  # on the device; counts: host ints
            with clock.computing():
                sizes = share_sizes(r.dist, b, r.model.n_clips, counts)  # no device read
                terms = train_step(r, b, settings, sizes)
                runtime.check_finite(terms, epoch, step, r.dist)  # one bool read per step; stops at a NaN / Inf
                for name, value in terms.items():  # summed on device
                    sums[name] = sums.get(name, 0.0) + value.detach()
            if stop.requested(r.dist):
                return None
    totals = r.dist.all_reduce_sum(torch.stack(list(sums.values()))) / len(r.loader)  # processes' parts add up
    return {**dict(zip(sums, totals.tolist())), **clock.seconds()}


def train_step(r: Run, b: dict, settings: dict, sizes=None) -> dict:
    """Forward, losses, backward, one optimiser and LR step on this process's share ``b`` (on the device).

    ``settings``: ``epoch_settings`` of the epoch. ``amp="bf16"`` runs the
    encoders under bfloat16 autocast; the embeddings are cast to float32, so
    the scores, the gathers and the losses run in float32. ``sizes``: the
    shares' ``share_sizes`` (computed here when not given). Returns this
    process's part of the loss terms and of their sum (``loss``) as device
    tensors; summed over the processes they are the global batch's.
    """
    if sizes is None:
        sizes = share_sizes(r.dist, b, r.model.n_clips)
    # Every video is encoded padded to the global batch's longest, as in one process (--compile: to its bucket).
    b = pad_share(b, sizes.length if r.shapes is None else r.shapes.frame_length(sizes.length), sizes.tokens)
    if r.shapes is not None:
        b = r.shapes.pad_tokens(b)
    with torch.autocast(b["video_feat"].device.type, dtype=torch.bfloat16, enabled=r.amp == "bf16"):
        emb = r.forward(b["video_feat"], b["video_mask"], b["query_feat"], b["query_mask"], b.get("clip_feat"),
                        r.second_queries, b["query_labels"] if r.model.output_keys else None)
    if r.amp == "bf16":
        emb = float_embeddings(emb)
    # A whole-batch objective (Holmes, RAL) gets every process's outputs and is computed whole on each process.
    view = GlobalBatch.build(r.dist, emb, b, sizes, replicate=r.loss_fn.objective.whole_batch,
                             query_keys=r.model.query_outputs)
    scores = view.branch_scores(r.model.level_scorer(view.outputs))  # the student's level scores
    teacher = None
    if r.teacher is not None:
        teacher = view.teacher_scores(r.teacher, b, r.loss_fn.soft is not None, r.loss_fn.objective.kd_level)
    terms = r.loss_fn(scores, view.layout, teacher, generator=r.sampling, local=view.local,
                      outputs={k: view.outputs[k] for k in r.model.output_keys}, **settings)
    if view.replicated:  # each process holds the whole terms: its part is 1 / processes of them
        terms = {name: value * view.scale for name, value in terms.items()}
    loss = sum(terms.values())
    r.optimizer.zero_grad(set_to_none=True)
    # DDP averages the processes' gradients, and each loss is one process's part of the global sum.
    (loss * r.dist.world).backward()
    r.optimizer.step()
    r.scheduler.step()
    return {**terms, "loss": loss}


def float_embeddings(tree):
    """float32 copies of every floating tensor in the nested dict of embeddings (after a bf16 forward)."""
    if isinstance(tree, dict):
        return {k: float_embeddings(v) for k, v in tree.items()}
    return tree.float() if tree.is_floating_point() else tree


def progress(d: distributed.Dist, iterable, **kwargs):
    """A tqdm bar on process 0 (``TQDM_DISABLE=1`` turns it off), none on the others."""
    return tqdm(iterable, **kwargs) if d.is_main else iterable


def make_train_feed(split, data: DataOptions, bsz: int, seed: int, device: torch.device, d: distributed.Dist,
                    n_clips: Optional[int] = None, kd_level: str = "frame") -> TrainFeed:
    """This process's share of each global batch of ``bsz`` videos (see ``GlobalBatchSampler``), on the device.

    ``n_clips``: the items carry the student's clips (and, when the teacher is
    distilled over clips, the teacher's). ``data.preload``: the split packed
    once (here), batches gathered from it; otherwise a DataLoader reads the
    files in ``data.num_workers`` processes.
    """
    teacher_clips = n_clips is not None and data.use_teacher and kd_level == "clip"
    dataset = split.train_dataset(n_clips, teacher_clips)
    counts = dataset.caption_counts if data.batch_sort == "captions" else dataset.frame_counts
    sampler = GlobalBatchSampler(counts, bsz, seed, d.rank, d.world)
    if data.preload != "none":
        where = device if data.preload == "device" else torch.device("cpu")
        packed = pack_train(dataset, STORAGE_DTYPES[data.preload_dtype], where, data.num_workers,
                            pin=where.type == "cpu" and device.type == "cuda")
        log.info("preloaded the train split: %.2f GiB of %s on %s", packed.nbytes / 2 ** 30, data.preload_dtype,
                 where)
        return TrainFeed(sampler, device, packed=packed, sort_by=data.batch_sort)
    dims = (split.visual_dim, split.text_dim, split.teacher_dim, n_clips, teacher_clips)
    collate = functools.partial(collate_train, dims=dims, sort_by=data.batch_sort)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                        num_workers=data.num_workers, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda",
                        persistent_workers=data.num_workers > 0)
    return TrainFeed(sampler, device, loader=loader)


def restore(path, r: Run, device: torch.device) -> dict:
    """Load ``latest.ckpt`` into the run; returns the loop state (epoch, best score, early-stop count, history)."""
    ckpt = read_checkpoint(path)
    r.model.load_state_dict(ckpt["model"])
    r.optimizer.load_state_dict(ckpt["optimizer"])
    r.scheduler.load_state_dict(ckpt["scheduler"])
    rng.restore(ckpt["rng"], device, r.sampling)
    return {k: ckpt[k] for k in ("epoch", "best_score", "es_cnt", "history")}

