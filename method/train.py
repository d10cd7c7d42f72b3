"""Train DL-DKD: ``python -m method.train --root_path ROOT --collection tvr [...]``.

A run folder holds ``opt.json`` (every resolved flag), ``model.ckpt`` (best
val SumR), ``latest.ckpt`` (everything needed by ``--resume``), ``metrics.csv``
(one row per epoch), ``train.log.txt``, TensorBoard logs in ``tb/`` and, at
the end, ``eval_test.json``.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .checkpoint import FORMAT, atomic_save, load_model, read_checkpoint
from .config import parse_train_args, resolve_device, save_opt
from .data import DataError, build_split, collate_train, seed_worker
from .eval import evaluate, evaluate_split, make_eval_loaders
from .losses import DLDKDLoss
from .model import DLDKD, ModelConfig
from .optim import build_optimizer
from .schedules import kd_factor
from .teacher import PrecomputedTeacher

log = logging.getLogger("dldkd")


def main(argv=None) -> dict:
    opt = parse_train_args(argv)
    run_dir = prepare_run_dir(opt)
    setup_logging(run_dir)
    device = resolve_device(opt.device)
    set_seed(opt.seed)
    r = build_run(opt, device)
    model, loader, optimizer, scheduler, teacher = r.model, r.loader, r.optimizer, r.scheduler, r.teacher
    state = {"epoch": 0, "best_score": 0.0, "es_cnt": 0, "history": []}
    if opt.resume:
        state = restore(run_dir / "latest.ckpt", model, optimizer, scheduler)
        log.info("resumed %s at epoch %d", run_dir, state["epoch"])
    save_opt(opt, run_dir)
    log.info("train %d videos, %d steps/epoch, %d parameters, device %s", len(loader.dataset),
             len(loader), sum(p.numel() for p in model.parameters() if p.requires_grad), device)
    writer = SummaryWriter(run_dir / "tb", purge_step=state["epoch"])
    fusion = {"exploration": opt.exploration_weight, "inheritance": opt.inheritance_weight}
    for epoch in tqdm(range(state["epoch"], opt.n_epoch), desc="epochs", initial=state["epoch"], total=opt.n_epoch):
        t0 = time.time()
        loader.sampler.generator.manual_seed(opt.seed + epoch)  # epoch order independent of history
        kd = 0.0 if teacher is None else kd_factor(epoch, opt.kd_schedule, opt.loss_scale_weight,
                                                   opt.loss_init_weight, opt.kd_k, opt.kd_b)
        hard = epoch >= opt.hard_negative_start_epoch
        lr = scheduler.get_last_lr()[0]
        losses = train_one_epoch(r.forward, loader, optimizer, scheduler, r.loss_fn, teacher, kd, hard, device, opt)
        val = evaluate(model, r.val_videos, r.val_queries, device, fusion, opt.eval_query_bsz)["t2v"]
        row = {"epoch": epoch, "lr": lr, "kd_factor": kd, "hard_negative": int(hard), **losses,
               **{f"val_{k}": v for k, v in val["fused"].items()},
               **{f"val_sumr_{name}": m["sumr"] for name, m in val.items() if name != "fused"},
               "epoch_seconds": time.time() - t0}
        state["history"].append(row)
        improved = val["fused"]["sumr"] > state["best_score"]
        if improved:
            state["best_score"], state["es_cnt"] = val["fused"]["sumr"], 0
            atomic_save(model_payload(model, epoch, state["best_score"]), run_dir / "model.ckpt")
        else:
            state["es_cnt"] += 1
        state["epoch"] = epoch + 1
        atomic_save({**model_payload(model, epoch, state["best_score"]), **state, "rng": rng_state(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                    run_dir / "latest.ckpt")
        write_metrics(run_dir, state["history"], writer)
        log.info("epoch %d | loss %.4f | val SumR %.2f (best %.2f)%s | %.1fs", epoch, losses["loss"],
                 val["fused"]["sumr"], state["best_score"], " *" if improved else "", row["epoch_seconds"])
        if state["es_cnt"] > opt.max_es_cnt:
            log.info("early stop: no val improvement for %d epochs", state["es_cnt"])
            break
    writer.close()
    if not (run_dir / "model.ckpt").is_file():
        raise SystemExit(f"no epoch reached a val SumR above 0, so {run_dir}/model.ckpt was never written")
    best, info = load_model(run_dir / "model.ckpt")
    return evaluate_split(best.to(device), "test", opt, device, run_dir, info)


def build_run(opt, device: torch.device) -> SimpleNamespace:
    """Everything before the epoch loop: data check, loaders, model, optimiser, loss, teacher."""
    try:
        train_split = build_split(**split_args(opt, "train"), use_teacher=not opt.no_teacher, preload=opt.preload)
        val_split = build_split(**split_args(opt, "val"), use_teacher=False, preload=opt.preload)
    except DataError as e:
        raise SystemExit(f"data check failed: {e}") from None
    if opt.q_feat_size is None:
        opt.q_feat_size = train_split.text_dim
    elif train_split.text_dim != opt.q_feat_size:
        raise SystemExit(f"--q_feat_size {opt.q_feat_size} disagrees with the text features "
                         f"({train_split.text_dim}-d) of {opt.root_path}/{opt.collection}")
    cfg = ModelConfig(visual_input_size=train_split.visual_dim, query_input_size=train_split.text_dim,
                      hidden_size=opt.hidden_size, n_heads=opt.n_heads, max_ctx_l=opt.max_ctx_l,
                      max_desc_l=opt.max_desc_l, input_drop=opt.input_drop, drop=opt.drop,
                      share_query_proj=not opt.separate_query_proj, single_branch=opt.single_branch)
    model = DLDKD(cfg).to(device)
    loader = make_train_loader(train_split.train_dataset(), opt, device)
    val_videos, val_queries = make_eval_loaders(val_split, opt, device)
    optimizer, scheduler = build_optimizer(model, opt.optim, opt.lr, opt.wd, len(loader) * opt.n_epoch,
                                           opt.lr_warmup_proportion)
    return SimpleNamespace(
        model=model, forward=torch.compile(model) if opt.compile else model, loader=loader,
        val_videos=val_videos, val_queries=val_queries, optimizer=optimizer, scheduler=scheduler,
        loss_fn=DLDKDLoss(opt.margin, opt.hard_pool_size, opt.nce_weight, opt.kd_temperature),
        teacher=None if opt.no_teacher else PrecomputedTeacher())


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, teacher, kd, hard, device, opt) -> dict:
    """One pass over the training videos.

    Returns the epoch mean of every loss term and of their sum (``loss``), and
    ``data_seconds``: the time spent waiting for batches (the rest of the epoch
    is compute).
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    data_seconds, t_ready = 0.0, time.perf_counter()
    with torch.autograd.detect_anomaly() if opt.debug else nullcontext():
        for batch in tqdm(loader, desc="train", leave=False):
            data_seconds += time.perf_counter() - t_ready
            b = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            terms = train_step(model, b, optimizer, scheduler, loss_fn, teacher, kd, hard, opt.amp)
            for name, value in terms.items():  # summed on device: no sync per step
                sums[name] = sums.get(name, 0.0) + value.detach()
            t_ready = time.perf_counter()
    return {**{name: (total / len(loader)).item() for name, total in sums.items()}, "data_seconds": data_seconds}


def train_step(model, b: dict, optimizer, scheduler, loss_fn, teacher, kd: float, hard: bool, amp: str) -> dict:
    """Forward, losses, backward, one optimiser and LR step on a batch ``b`` already on the device.

    ``amp="bf16"`` runs the forward pass under bfloat16 autocast; the losses
    always run in float32. Returns the loss terms and their sum (``loss``) as
    device tensors.
    """
    with torch.autocast(b["video_feat"].device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        outputs = model(b["video_feat"], b["video_mask"], b["query_feat"], b["query_mask"])
    outputs = {name: out.float() for name, out in outputs.items()}
    teacher_scores = None if teacher is None else teacher.frame_scores(
        b["teacher_query_feat"], b["teacher_video_feat"], b["query_labels"])
    terms = loss_fn(outputs, b["query_labels"], b["video_mask"], teacher_scores, kd, hard)
    loss = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return {**terms, "loss": loss}


def split_args(opt, split: str) -> dict:
    return {"root_path": opt.root_path, "collection": opt.collection, "visual_feature": opt.visual_feature,
            "split": split, "max_ctx_l": opt.max_ctx_l, "max_desc_l": opt.max_desc_l,
            "teacher_video_file": opt.teacher_video_file, "teacher_query_file": opt.teacher_query_file}


def make_train_loader(dataset, opt, device: torch.device) -> DataLoader:
    """Shuffled batches of ``bsz`` videos (last partial batch kept); the sampler is reseeded per epoch."""
    sampler = RandomSampler(dataset, generator=torch.Generator())
    return DataLoader(dataset, batch_size=opt.bsz, sampler=sampler, collate_fn=collate_train,
                      num_workers=opt.num_workers, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(opt.seed), pin_memory=device.type == "cuda",
                      persistent_workers=opt.num_workers > 0)


def prepare_run_dir(opt) -> Path:
    if opt.resume:
        run_dir = Path(opt.resume)
        if not (run_dir / "latest.ckpt").is_file():
            raise SystemExit(f"--resume {run_dir}: no latest.ckpt there to continue from")
    elif opt.results_dir:
        run_dir = Path(opt.results_dir)
    else:
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
        run_dir = Path(opt.root_path) / opt.collection / "results" / f"{opt.collection}-{opt.exp_id}-{stamp}"
    if not opt.resume and (run_dir / "latest.ckpt").exists():
        raise SystemExit(f"{run_dir} already holds a run; use --resume {run_dir} or another folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    opt.results_dir = str(run_dir)
    return run_dir


def setup_logging(run_dir: Path) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.FileHandler(run_dir / "train.log.txt"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_payload(model: DLDKD, epoch: int, best_score: float) -> dict:
    """The model part of a checkpoint: loads with weights_only=True and rebuilds the model."""
    return {"format": FORMAT, "model": model.state_dict(), "model_config": model.cfg.to_dict(),
            "epoch": epoch, "val_sumr": best_score}


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore(path: Path, model, optimizer, scheduler) -> dict:
    ckpt = read_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return {k: ckpt[k] for k in ("epoch", "best_score", "es_cnt", "history")}


def write_metrics(run_dir: Path, history: list[dict], writer: SummaryWriter) -> None:
    """Rewrite metrics.csv from the history (kept in latest.ckpt, so the two never disagree)."""
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


if __name__ == "__main__":
    main()
