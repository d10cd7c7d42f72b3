"""Sharded evaluation of one process or of several (gloo on the CPU), for tests/test_eval_sharded.py.

``evaluate_share`` evaluates a tiny randomly initialised model (DL-DKD or
GMMFormer v1) on the test split of a synthetic collection through
``make_eval_feed`` and ``evaluate``; ``spawn_eval`` is the entry point of a
spawned process.
"""
import os

import torch
from synthetic import DQ, DV

from method.data import build_split
from method.data.options import DataOptions
from method.evaluation.evaluate import evaluate, make_eval_feed
from method.models.model import DLDKD, ModelConfig
from method.parallel import distributed

FUSION = {"exploration": 0.3, "inheritance": 0.7, "clip": 0.7, "frame": 0.3}


def tiny_model(student: str, eval_context_bsz: int) -> DLDKD:
    torch.manual_seed(11)
    extra = {"eval_context_bsz": eval_context_bsz} if student == "gmmformer" else {}
    return DLDKD(ModelConfig.of(DV, DQ, hidden_size=8, n_heads=2, student=student,
                                share_query_proj=student == "dldkd", **extra)).eval()


def evaluate_share(d: distributed.Dist, root: str, case: dict, scores_path=None) -> dict:
    """This process's share of the evaluation of ``case`` (student, block sizes, preload); every metric."""
    torch.set_num_threads(1)  # the one-process reference runs with the same thread count
    model = tiny_model(case["student"], case["context"])
    data = DataOptions(root, "tvr", "i3d_resnet", eval_video_bsz=case["video_bsz"], eval_query_bsz=case["query_bsz"],
                       preload=case["preload"], num_workers=0)
    split = build_split(root, "tvr", "i3d_resnet", "test", False, 128, 30)
    feed = make_eval_feed(split, data, torch.device("cpu"), model, d)
    res = evaluate(model, feed.videos, feed.queries, torch.device("cpu"), FUSION, case["query_bsz"], scores_path, d)
    return {"t2v": res["t2v"], "v2t": res["v2t"], "video_ids": res["video_ids"], "cap_ids": res["cap_ids"],
            "own_videos": sum(len(b["video_ids"]) for b in feed.videos)}


def spawn_eval(rank: int, world: int, port: int, folder: str, root: str, case: dict) -> None:
    """torch.multiprocessing.spawn target: join a gloo group on localhost, evaluate the share, save the result."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    d, _ = distributed.setup(torch.device("cpu"), timeout_minutes=2)
    try:
        scores = os.path.join(folder, "scores.npy")
        torch.save(evaluate_share(d, root, case, scores), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        d.close()
