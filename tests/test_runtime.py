"""Tests of method/runtime.py: the precision / determinism policy, the finite-loss check, the device timer."""
import os
import time

import pytest
import torch

from method.common.timing import device_timer
from method.training import runtime


@pytest.fixture
def default_policy(monkeypatch):
    """Each test starts and ends with the policy of a plain run (and the environment it found)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    runtime.apply_policy(tf32=False, deterministic=False)
    yield
    runtime.apply_policy(tf32=False, deterministic=False)


def test_policy_is_explicit_both_ways(default_policy):
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's own default: "off" must turn it off
    runtime.apply_policy(tf32=False, deterministic=False)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ

    runtime.apply_policy(tf32=True, deterministic=True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    onednn = getattr(torch.backends.mkldnn, "matmul", None)  # torch >= 2.9 has a oneDNN (CPU) precision switch
    assert onednn is None or onednn.fp32_precision in ("none", "ieee")  # CPU matmuls are left exact


def test_deterministic_keeps_a_valid_workspace_setting(default_policy, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    runtime.apply_policy(tf32=False, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")  # not a deterministic workspace: replaced
    runtime.apply_policy(tf32=False, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_policy_summary_names_what_is_in_force(default_policy):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.policy_summary(cpu) == "matmuls: exact float32; deterministic algorithms: off"
    runtime.apply_policy(tf32=True, deterministic=True)
    assert runtime.policy_summary(cpu) == ("matmuls: exact float32 (--tf32 has no effect on the CPU); "
                                           "deterministic algorithms: on")
    assert runtime.policy_summary(cuda) == ("matmuls: TF32 (--tf32); deterministic algorithms: on "
                                            "(CUBLAS_WORKSPACE_CONFIG=:4096:8)")


def terms(**values):
    return {k: torch.tensor(v, requires_grad=True) * 1.0 for k, v in values.items()}


def test_check_finite_passes_finite_terms_and_names_the_bad_ones():
    runtime.check_finite(terms(trip=0.3, kd=1e30, loss=1e30), epoch=0, step=0)
    with pytest.raises(runtime.NonFiniteLoss, match=r"epoch 3, step 5 .*: kd=nan, loss=nan;") as e:
        runtime.check_finite(terms(trip=0.3, kd=float("nan"), loss=float("nan")), epoch=3, step=5)
    assert "trip" not in str(e.value) and isinstance(e.value, SystemExit)
    with pytest.raises(runtime.NonFiniteLoss, match=r"epoch 0, step 2 .*: nce=-inf, loss=-inf;"):
        runtime.check_finite(terms(nce=float("-inf"), loss=float("-inf")), epoch=0, step=2)


class _Peers:
    """A stand-in for several processes: ``any`` reports what the other processes saw."""

    enabled = True

    def __init__(self, others_bad):
        self.others_bad, self.asked = others_bad, []

    def any(self, flag):
        self.asked.append(flag)
        return flag or self.others_bad


def test_check_finite_stops_every_process_at_the_same_step():
    fine = _Peers(others_bad=False)
    runtime.check_finite(terms(loss=1.0), epoch=1, step=4, dist=fine)
    assert fine.asked == [False]
    with pytest.raises(runtime.NonFiniteLoss, match=r"another process at epoch 1, step 4"):
        runtime.check_finite(terms(loss=1.0), epoch=1, step=4, dist=_Peers(others_bad=True))
    here = _Peers(others_bad=False)
    with pytest.raises(runtime.NonFiniteLoss, match=r"epoch 1, step 4 .*: loss=nan"):
        runtime.check_finite(terms(loss=float("nan")), epoch=1, step=4, dist=here)
    assert here.asked == [True]


def test_device_timer_on_the_cpu():
    with device_timer(torch.device("cpu")) as t:
        assert t.seconds is None
        time.sleep(0.05)
    assert 0.05 <= t.seconds < 1.0


def test_device_timer_synchronises_cuda_around_the_block(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device)))
    device = torch.device("cuda", 0)
    with device_timer(device) as t:
        calls.append("work")
    assert calls == [("sync", device), "work", ("sync", device)] and t.seconds >= 0


def test_epoch_clock_on_the_cpu_adds_host_spans():
    clock = runtime.EpochClock(torch.device("cpu"))
    for _ in range(2):
        with clock.waiting():
            time.sleep(0.01)
        with clock.computing():
            time.sleep(0.02)
    seconds = clock.seconds()
    assert set(seconds) == {"data_seconds", "compute_seconds"}
    assert 0.02 <= seconds["data_seconds"] < 0.2 and 0.04 <= seconds["compute_seconds"] < 0.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.py on a GPU)")
def test_epoch_clock_on_cuda_counts_queued_kernels_as_compute():
    device = torch.device("cuda")
    a = torch.randn(4096, 4096, device=device)
    clock = runtime.EpochClock(device)
    with clock.computing():
        for _ in range(20):
            a = a @ a / 64  # queued: the host leaves the block long before the GPU is done
    with clock.waiting():
        pass
    seconds = clock.seconds()
    assert seconds["compute_seconds"] > 10 * seconds["data_seconds"]
