"""bench/gpu_check.py --device cpu --tiny: every check runs (CUDA-only ones skipped with a reason) and the parity passes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXPECTED = ["env", "nccl", "parity_iccv", "parity_dldkdpp", "parity_gmmformer", "parity_gmmformer_v2",
            "parity_iccv_student_gmmformer_v2", "parity_holmes", "parity_iccv_student_holmes",
            "parity_holmes_dual", "parity_ral", "parity_iccv_student_ral", "fast_path_tape", "precision",
            "step_fp32", "step_tf32", "step_bf16", "step_bf16_compile", "epoch_data", "epoch_device", "epoch_files",
            "eval", "summary"]


@pytest.mark.slow  # a new interpreter running every check of the bench script
def test_gpu_check_on_the_cpu_tiny():
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]  # every line is JSON
    checks = {line["check"]: line for line in lines}
    assert [line["check"] for line in lines] == EXPECTED, proc.stderr[-3000:]
    assert proc.returncode == 0, (checks["summary"], proc.stderr[-3000:])
    for name in EXPECTED[2:12]:
        line = checks[name]
        assert line["ok"] and line["tolerance"] == 1e-4, line
        assert max(line["max_rel_terms"], line["max_rel_grads"], line["max_rel_weights"]) <= 1e-4
        assert any(n.endswith("key.bias") for n in line["noise_only"])  # found by the float64 step
    tape = checks["fast_path_tape"]
    assert tape["ok"] and set(tape["students"]) == {"gmmformer_v2", "ral", "holmes"}, tape
    for student in tape["students"].values():
        assert student["same_generator_state"] and student["regions"]["bucketed"] > 0, tape
    assert checks["nccl"]["ok"] and checks["nccl"]["backend"] == "gloo"
    assert checks["precision"]["ok"] and checks["precision"]["compile_graphs"] >= 1
    assert "CUDA" in checks["step_tf32"]["skipped"]
    for name in ("step_fp32", "step_bf16", "step_bf16_compile", "epoch_device", "epoch_files", "eval"):
        assert checks[name]["ok"], checks[name]
    assert checks["epoch_device"]["loss"] == checks["epoch_files"]["loss"]  # preloaded or not: the same step
    assert checks["summary"] == {**checks["summary"], "ok": True, "failed": [], "skipped": ["step_tf32"]}


def test_fast_path_tape_check_finds_other_masks(monkeypatch):
    """The tape check fails when the buckets' masks are not the reference's (as CUDA's would be if
    ``native_dropout`` drew them otherwise at the tape's shape): errors of order 1."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check
    from method.models.students import blocks

    real = blocks._reference_keep
    monkeypatch.setattr(blocks, "_reference_keep", lambda *a: real(*a).flip(-1))
    ctx = type("Ctx", (), {"device": torch.device("cpu"), "sizes": gpu_check.TINY})()
    out = gpu_check.check_fast_path_tape(ctx)
    assert not out["ok"] and out["worst"] > 1e-2, out
    assert blocks.CUDA_TAPE is False and blocks.FAST_PATH == "exact" and blocks.BUCKET_OVERHEAD == 64  # set back
