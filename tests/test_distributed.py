"""Several processes (gloo on the CPU): the same recipe as one process, torchrun scripts, faults and preemption."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from dist_steps import free_port, noise_only, run_steps, spawn_worker
from synthetic import write_collection
from torch.utils.data import RandomSampler

from method import train
from method.data import GlobalBatchSampler
from method.models.model import DLDKD, ModelConfig
from method.parallel.distributed import Dist
from method.training import loop

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# the global batch and a process's share
# --------------------------------------------------------------------------- #
def test_shares_rebuild_the_one_process_batches():
    counts = [1, 3, 2, 2, 5, 1, 1, 4, 2, 3, 1]
    one = GlobalBatchSampler(counts, batch_size=4, seed=7)
    for epoch in (0, 3):
        one.set_epoch(epoch)
        batches = list(one)
        # the order of torch's RandomSampler with a generator seeded seed + epoch, cut into batches of 4
        order = list(RandomSampler(range(len(counts)), generator=torch.Generator().manual_seed(7 + epoch)))
        assert sorted(sum(batches, [])) == list(range(len(counts)))
        assert [sorted(b) for b in batches] == [sorted(order[i:i + 4]) for i in range(0, len(counts), 4)]
        for b in batches:  # stably sorted by caption count, descending
            assert [counts[i] for i in b] == sorted((counts[i] for i in b), reverse=True)
        for world in (2, 3, 4, 5):
            shares = []
            for rank in range(world):
                s = GlobalBatchSampler(counts, batch_size=4, seed=7, rank=rank, world=world)
                s.set_epoch(epoch)
                shares.append(list(s))
            assert len(shares[0]) == len(one) == 3
            for k, batch in enumerate(batches):
                parts = [shares[r][k] for r in range(world)]
                assert sum(parts, []) == batch
                assert max(map(len, parts)) - min(map(len, parts)) <= 1  # world 5 > last batch of 3: empty shares


def test_bsz_must_be_a_multiple_of_the_processes(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit, match="--bsz 4 is the global batch.*multiple of the 3 processes"):
        train.main(["--root_path", str(tmp_path / "nowhere"), "--collection", "tvr", "--bsz", "4"])


# --------------------------------------------------------------------------- #
# the same loss, gradients and weights as one process (spawned, gloo)
# --------------------------------------------------------------------------- #
def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


# (case of dist_steps.CASES, processes, global batches [(videos, max captions per video)]). 5 videos over 2
# processes are shares of 3 and 2; the 2-video batch over 3 processes leaves one process an empty share. The
# first batches mix videos of one caption (skipped by OT) with videos of several; the GMMFormerV2 cases end
# with a batch of one caption per video: no OT pair, no query-diversity partner.
JOBS = [("iccv", 2, [(5, 3), (4, 3), (3, 3)]), ("soft", 2, [(5, 3), (4, 3), (3, 3)]), ("soft", 3, [(5, 3), (2, 3)]),
        ("gmmformer", 2, [(5, 3), (4, 3), (3, 3)]), ("gmmformer_v2", 2, [(5, 3), (4, 3), (3, 1)]),
        ("dldkd_gmmformer_v2", 2, [(5, 3), (4, 3), (3, 1)]), ("dldkd_gmmformer", 3, [(5, 3), (2, 3)]),
        ("holmes", 2, [(5, 3), (4, 3), (3, 3)]), ("holmes", 3, [(5, 3), (4, 2)]), ("dldkd_holmes", 2, [(5, 3), (4, 3)]),
        ("ral", 2, [(5, 3), (4, 3), (3, 1)]), ("ral", 3, [(5, 3), (4, 2)]), ("dldkd_ral", 2, [(5, 3), (4, 3)]),
        ("holmes_dual", 2, [(5, 3), (4, 3)]), ("dldkd_ra", 2, [(5, 3), (4, 3), (3, 3)])]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """world -> folder of every rank's results of the JOBS of that many processes (one spawn per world)."""
    folders = {}

    def results(world: int) -> Path:
        if world not in folders:
            folder = tmp_path_factory.mktemp(f"world{world}")
            jobs = [(case, steps) for case, w, steps in JOBS if w == world]
            mp.spawn(spawn_worker, args=(world, free_port(), str(folder), jobs), nprocs=world, join=True)
            folders[world] = folder
        return folders[world]
    return results


@pytest.mark.slow  # spawns one group of processes per world size
@pytest.mark.parametrize("case,world,steps", JOBS, ids=[f"{c}-{w}proc" for c, w, _ in JOBS])
def test_processes_match_one_process(spawned, case, world, steps):
    """Dropout off, hard negatives drawn from a pool of 2: loss terms, every gradient, weights after the steps.

    The GMMFormer family's batches are sorted by frame count (its recipes) or
    caption count (DL-DKD on its students), as the recipe's loader sorts them.
    """
    folder = spawned(world)
    ranks = [torch.load(folder / f"{case}-rank{r}.pt", weights_only=True) for r in range(world)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the spawned processes: on a busy CPU a second thread slows tiny matmuls down
    try:
        one = run_steps(Dist(), case, steps)
    finally:
        torch.set_num_threads(threads)
    counts = one["caption_counts"]
    assert any(1 in c and max(c) > 1 for c in counts[:2]), counts
    if max(counts[-1]) == 1:  # no video with >= 2 captions: no OT pair and no query-diversity partner
        lonely = {k: v for k, v in one["terms"][-1].items() if k.split("_")[0] in ("ot", "qdl")}
        assert lonely and set(lonely.values()) == {0.0}, lonely
    # Parameters whose gradient is 0 in exact arithmetic (dist_steps.noise_only) carry only rounding noise,
    # which Adam-type updates normalise into arbitrary steps in two runs that add up in a different order.
    noise = set(one["noise_only"])
    for step, (got, ref) in enumerate(zip(ranks[0]["terms"], one["terms"])):
        assert got.keys() == ref.keys()
        for name in ref:
            assert got[name] == pytest.approx(ref[name], rel=1e-5), (step, name)
    for step, (got, ref) in enumerate(zip(ranks[0]["grads"], one["grads"])):
        assert got.keys() == ref.keys() and len(ref) > 0
        for name in ref:
            if name in noise:
                scale = max(g.abs().max().item() for g in ref.values())
                assert (got[name] - ref[name]).abs().max().item() <= 1e-9 * scale, (step, name)
            else:
                assert relative(got[name], ref[name]) <= 1e-5, (step, name, relative(got[name], ref[name]))
    for name, ref in one["weights"].items():
        for r in range(1, world):  # every process holds the same weights
            assert torch.equal(ranks[r]["weights"][name], ranks[0]["weights"][name]), name
        if name not in noise:
            assert relative(ranks[0]["weights"][name], ref) <= 1e-5, (name, relative(ranks[0]["weights"][name], ref))


# --------------------------------------------------------------------------- #
# torchrun: the launch script, a killed process, SIGTERM
# --------------------------------------------------------------------------- #
TINY = ["--device", "cpu", "--num_workers", "0", "--hidden_size", "8", "--n_heads", "2", "--bsz", "4",
        "--input_drop", "0", "--drop", "0", "--q_feat_size", "5", "--eval_query_bsz", "4", "--eval_video_bsz", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_collection(str(root), n_videos=10)  # batches of 4, 4, 2 videos
    return root


def launch(args, env=None, timeout=240):
    env = {**os.environ, "PYTHON": sys.executable, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def run_folders(root: Path, exp_id: str) -> list:
    return sorted((root / "tvr" / "results").glob(f"tvr-{exp_id}-*"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["iccv", "holmes", "ral"])
def test_do_tvr_with_two_processes_matches_one_process(data, recipe):
    """The launch script under torchrun (holmes, ral: the whole-batch objective replicated on both processes)."""
    two = launch(["bash", "do_tvr.sh", str(data), *TINY, "--n_epoch", "2", "--exp_id", f"two{recipe}"],
                 env={"NPROC": "2", "RECIPE": recipe})
    assert two.returncode == 0, two.stderr[-3000:]
    one = launch(["bash", "do_tvr.sh", str(data), *TINY, "--n_epoch", "2", "--exp_id", f"one{recipe}"],
                 env={"RECIPE": recipe})
    assert one.returncode == 0, one.stderr[-3000:]
    (two_dir,), (one_dir,) = run_folders(data, f"two{recipe}"), run_folders(data, f"one{recipe}")
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())
    sumr = [json.loads((d / "eval_test.json").read_text())["t2v"]["fused"]["sumr"] for d in (two_dir, one_dir)]
    assert abs(sumr[0] - sumr[1]) <= 0.5, sumr
    ckpt = torch.load(two_dir / "model.ckpt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert "2 processes" in (two_dir / "train.log.txt").read_text()


def torchrun(*extra, run_dir, kill=None, restarts=0):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "--monitor-interval", "0.2", str(REPO / "tests" / "fault_worker.py"),
           *extra, "--results_dir", str(run_dir), "--resume_if_exists"]
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if kill:
        env["DLDKD_TEST_KILL"] = kill
    return launch(cmd, env=env)


@pytest.mark.slow
def test_killed_process_restarts_from_latest_and_ends_with_the_same_weights(data, tmp_path):
    args = ["--root_path", str(data), "--collection", "tvr", *TINY, "--n_epoch", "3", "--margin", "0.1",
            "--kd_schedule", "exp_decay"]
    ref = torchrun(*args, run_dir=tmp_path / "uninterrupted")
    assert ref.returncode == 0, ref.stderr[-3000:]
    # Process 1 is SIGKILLed at the start of epoch 1; torchrun restarts the group, which resumes.
    hit = torchrun(*args, run_dir=tmp_path / "killed", kill="1:1", restarts=1)
    assert hit.returncode == 0, hit.stderr[-3000:]
    assert "resumed" in (tmp_path / "killed" / "train.log.txt").read_text()
    a = torch.load(tmp_path / "uninterrupted" / "latest.ckpt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "latest.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)
    # Without a restart, the group goes down with the dead process named, instead of hanging ...
    down = torchrun(*args, run_dir=tmp_path / "down", kill="1:1", restarts=0)
    assert down.returncode != 0
    assert "ChildFailedError" in down.stderr and "Signal 9 (SIGKILL)" in down.stderr, down.stderr[-3000:]
    # ... and one process resumes it: the same recipe, so the 2-process weights up to float rounding.
    assert torch.load(tmp_path / "down" / "latest.ckpt", weights_only=True)["epoch"] == 1
    train.main(["--resume", str(tmp_path / "down"), "--device", "cpu", "--num_workers", "0"])
    c = torch.load(tmp_path / "down" / "latest.ckpt", weights_only=True)
    noise = noise_only(DLDKD(ModelConfig.from_dict(c["model_config"])))  # rounding noise only, see above
    for name, value in a["model"].items():
        if name not in noise:
            assert relative(c["model"][name], value) <= 1e-5, (name, relative(c["model"][name], value))


@pytest.mark.parametrize("extra", [[], ["--recipe", "gmmformer_v2", "--hard_negative_start_epoch", "1"]],
                         ids=["dldkd", "gmmformer_v2"])
def test_sigterm_stops_after_the_step_and_the_run_resumes_exactly(data, tmp_path, monkeypatch, extra):
    args = ["--root_path", str(data), "--collection", "tvr", *TINY, "--n_epoch", "3", "--resume_if_exists", *extra]
    train.main([*args, "--results_dir", str(tmp_path / "whole")])
    real, steps = loop.train_step, []

    def preempted(*a, **k):
        out = real(*a, **k)
        steps.append(1)
        if len(steps) == 5:  # the second step of epoch 1 (3 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(loop, "train_step", preempted)
    with pytest.raises(SystemExit) as stopped:
        train.main([*args, "--results_dir", str(tmp_path / "cut")])
    assert stopped.value.code == loop.EXIT_STOPPED and len(steps) == 5  # stopped right after that step
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
    assert torch.load(tmp_path / "cut" / "latest.ckpt", weights_only=True)["epoch"] == 1  # the complete epoch
    monkeypatch.undo()
    train.main([*args, "--results_dir", str(tmp_path / "cut")])  # the same command continues the run
    a = torch.load(tmp_path / "whole" / "latest.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "latest.ckpt", weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
