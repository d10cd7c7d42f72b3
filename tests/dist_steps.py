"""Training steps of one process or of several (gloo on the CPU), for tests/test_distributed.py.

``run_steps`` trains a tiny model on fixed global batches through the training
loop's own ``train_step``; each process takes its share of every batch with
``GlobalBatchSampler``'s own ``share``. ``spawn_worker`` is the entry point of a
spawned process.
"""
import os

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from method import distributed, rng, train
from method.data import collate_train
from method.data.sampler import share
from method.losses import DLDKDLoss, SoftNCEOptions
from method.model import DLDKD, ModelConfig
from method.optim import build_optimizer
from method.teacher import PrecomputedTeacher

DV, DQ, DT = 6, 5, 4


def global_batch_items(n_videos: int, seed: int) -> list:
    """TrainDataset-like items, sorted by caption count as a global batch is: lengths and counts vary."""
    g = np.random.default_rng(seed)
    items = []
    for v in range(n_videos):
        n, caps = int(g.integers(2, 9)), int(g.integers(1, 4))
        items.append({"video_id": f"v{v}", "cap_ids": [f"v{v}#{j}" for j in range(caps)],
                      "video_feat": g.standard_normal((n, DV)).astype(np.float32),
                      "query_feats": [g.standard_normal((int(g.integers(2, 7)), DQ)).astype(np.float32)
                                      for _ in range(caps)],
                      "teacher_video_feat": g.standard_normal((n, DT)).astype(np.float32),
                      "teacher_query_feat": g.standard_normal((caps, DT)).astype(np.float32)})
    return sorted(items, key=lambda it: -len(it["cap_ids"]))


def run_steps(d: distributed.Dist, soft: bool, batch_sizes) -> dict:
    """Train steps on global batches of ``batch_sizes`` videos; returns the global terms, gradients and weights."""
    rng.set_seed(0)
    model = DLDKD(ModelConfig(DV, DQ, hidden_size=8, n_heads=2, input_drop=0.0, drop=0.0,
                              share_query_proj=not soft))
    forward = DistributedDataParallel(model) if d.enabled else model
    optimizer, scheduler = build_optimizer(model, "bertadam", 1e-3, 0.01, total_steps=20, warmup=0.1)
    run = train.Run(model=model, forward=forward, loader=None, optimizer=optimizer, scheduler=scheduler,
                    loss_fn=DLDKDLoss(0.1, 2, soft=SoftNCEOptions() if soft else None),
                    teacher=PrecomputedTeacher(), dist=d,
                    sampling=rng.sampling_generator(torch.device("cpu")) if d.enabled else None)
    settings = {"kd_factor": 0.1, "hard_negative": True, "alpha": 0.6, "beta": 0.7} if soft else \
        {"kd_factor": 0.1, "hard_negative": True}
    out = {"terms": [], "grads": []}
    for step, n_videos in enumerate(batch_sizes):
        local = collate_train(share(global_batch_items(n_videos, seed=step), d.rank, d.world), dims=(DV, DQ, DT))
        terms = train.train_step(run, local, settings, "none")
        out["terms"].append({k: d.all_reduce_sum(v.detach().clone()).item() for k, v in terms.items()})
        out["grads"].append({name: p.grad.clone() for name, p in model.named_parameters()})
    out["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def spawn_worker(rank: int, world: int, port: int, folder: str, soft: bool, batch_sizes) -> None:
    """torch.multiprocessing.spawn target: join a gloo group on localhost, run the steps, save the result."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    d, _ = distributed.setup(torch.device("cpu"), timeout_minutes=2)
    try:
        torch.save(run_steps(d, soft, batch_sizes), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        d.close()
