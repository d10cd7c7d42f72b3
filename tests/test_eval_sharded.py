"""Sharded evaluation: several processes (gloo, spawned) give exactly the one-process metrics; NPROC=N do_test.sh."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from dist_steps import free_port
from eval_shards import evaluate_share, spawn_eval, tiny_model
from synthetic import write_collection

from method.config.flags import parse_train_args, save_opt
from method.evaluation import metrics
from method.models.checkpoint import atomic_save, model_payload
from method.parallel.distributed import Dist

REPO = Path(__file__).resolve().parents[1]


# 7 videos and 19 captions; blocks of 2 / 3 (GMMFormer v1: groups of 3 or 4 videos, quirk Q1) split unevenly.
CASES = {
    "dldkd-2proc": ({"student": "dldkd", "context": 100, "video_bsz": 2, "query_bsz": 3, "preload": "none"}, 2),
    "dldkd-3proc-preloaded": ({"student": "dldkd", "context": 100, "video_bsz": 2, "query_bsz": 3,
                               "preload": "device"}, 3),
    "gmmformer-2proc": ({"student": "gmmformer", "context": 3, "video_bsz": 200, "query_bsz": 3,
                         "preload": "none"}, 2),
    "holmes-2proc": ({"student": "holmes", "context": 3, "video_bsz": 200, "query_bsz": 3, "preload": "none"}, 2),
    "ral-3proc": ({"student": "ral", "context": 3, "video_bsz": 200, "query_bsz": 3, "preload": "ram"}, 3),
    # 2 groups of 4 videos and 2 query blocks over 3 processes: the last one has no videos and no queries
    "gmmformer-3proc-empty-shares": ({"student": "gmmformer", "context": 4, "video_bsz": 200, "query_bsz": 10,
                                      "preload": "ram"}, 3),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_collection(str(folder), n_videos=7)
    return str(folder)


@pytest.mark.slow  # spawned processes
@pytest.mark.parametrize("name", sorted(CASES))
def test_processes_give_the_one_process_metrics(root, tmp_path, name):
    case, world = CASES[name]
    threads = torch.get_num_threads()
    try:
        one = evaluate_share(Dist(), root, case, tmp_path / "one.npy")
    finally:
        torch.set_num_threads(threads)
    mp.spawn(spawn_eval, args=(world, free_port(), str(tmp_path), root, case), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    assert len(one["cap_ids"]) == 19 and len(one["video_ids"]) == 7
    shares = [r["own_videos"] for r in ranks]
    assert sum(shares) == 7 and len(set(shares)) > 1, shares  # uneven shares
    for r in ranks:  # every process reports the whole split's metrics, equal to one process's
        assert r["t2v"] == one["t2v"] and r["v2t"] == one["v2t"]
        assert r["cap_ids"] == one["cap_ids"] and r["video_ids"] == one["video_ids"]
    names = set(one["t2v"])
    assert {"fused", "inheritance", "exploration"} <= names
    if case["student"] == "gmmformer":
        assert {"inheritance_clip", "inheritance_frame", "exploration_clip", "exploration_frame"} <= names
    assert np.array_equal(np.load(tmp_path / "scores.npy"), np.load(tmp_path / "one.npy"))  # process 0's file


def test_share_counts_add_up_to_the_ranks():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (11, 7), generator=g).float()  # many ties
    query_video = torch.randint(0, 7, (11,), generator=g)
    pos = scores[torch.arange(11), query_video]
    t2v, v2t = torch.zeros(11, dtype=torch.long), torch.zeros(11, dtype=torch.long)
    for cols in (range(0, 3), range(3, 3), range(3, 7)):  # column shares, one empty
        s, column = scores[:, cols.start:cols.stop], query_video - cols.start
        own = ((column >= 0) & (column < len(cols))).nonzero().squeeze(1)
        for rows in (slice(0, 4), slice(4, 11)):
            index = torch.arange(rows.start, rows.stop)
            t2v[rows] += metrics.t2v_rank_counts(s[rows], column[rows], pos[rows])
            v2t += metrics.v2t_share_counts(s[rows], index, own, column[own], pos[own], 11)
    assert torch.equal(t2v + 1, metrics.t2v_ranks(scores, query_video))
    ar = torch.arange(11)
    assert torch.equal(v2t, metrics.v2t_rank_counts(scores, ar, query_video, pos))


def do_test(*args, nproc=1):
    env = {**os.environ, "PYTHON": sys.executable, "TQDM_DISABLE": "1", "NPROC": str(nproc)}
    return subprocess.run(["bash", str(REPO / "do_test.sh"), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_do_test_with_two_processes_matches_one(root, tmp_path):
    """A GMMFormer v1 run folder (groups of 3 videos) through NPROC=2 ./do_test.sh (torchrun) and one process."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    atomic_save(model_payload(tiny_model("gmmformer", 3), 4, 1.0), run_dir / "model.ckpt")
    save_opt(parse_train_args(["--root_path", root, "--collection", "tvr", "--recipe", "gmmformer",
                               "--hidden_size", "8", "--n_heads", "2", "--eval_context_bsz", "3"]), run_dir)
    flags = ["--device", "cpu", "--num_workers", "0", "--eval_query_bsz", "4"]
    results = []
    for nproc in (1, 2):
        proc = do_test("tvr", "i3d_resnet", root, run_dir, *flags, nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("2 processes" in proc.stdout) == (nproc == 2)
        results.append(json.loads((run_dir / "eval_test.json").read_text()))
    assert results[0]["t2v"] == results[1]["t2v"] and results[0]["v2t"] == results[1]["v2t"]
    assert {"fused", "inheritance_clip", "exploration_frame"} <= set(results[0]["t2v"])
