"""Shared helpers of the benchmark scripts: dataset presets, synthetic batches, timing, peak FLOP/s.

Timings use ``method.common.timing.device_timer`` (synchronised on CUDA). On CUDA every
JSON line carries ``peak_cuda_mb``, ``torch.cuda.max_memory_allocated`` in MiB
(since the last ``median_seconds`` or reset).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py` from anywhere
from method.extraction.writers import write_bigfile  # noqa: E402
from method.common.timing import device_timer  # noqa: E402  (after the path insert)

# Sizes of one training batch: videos, frames, frame dim, captions per video, tokens, text dim.
PRESETS = {
    "tvr": {"videos": 128, "frames": 128, "visual_dim": 3072, "captions": 5, "tokens": 30, "text_dim": 768},
    "activitynet": {"videos": 128, "frames": 128, "visual_dim": 1024, "captions": 4, "tokens": 30, "text_dim": 1024},
}
TEACHER_DIM = 512
# TVR's splits (docs/data.md, "Split sizes"): train videos / captions, test videos / captions.
TVR_SPLITS = {"train": (17_435, 87_175), "test": (2_179, 10_895)}


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """Argument parser of a benchmark script: its docstring as help, and --device."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    return p


def emit(**record) -> None:
    """One JSON line per measurement; with CUDA in use, plus its peak allocated memory (``peak_cuda_mb``)."""
    if torch.cuda.is_initialized():
        record.setdefault("peak_cuda_mb", round(torch.cuda.max_memory_allocated() / 2 ** 20, 1))
    print(json.dumps(record), flush=True)


def synthetic_batch(preset: dict, device: torch.device, seed: int = 0) -> dict:
    """A full-size training batch with random features (all frames valid, token lengths 8..tokens)."""
    g = torch.Generator().manual_seed(seed)
    v, l, q = preset["videos"], preset["frames"], preset["videos"] * preset["captions"]
    lengths = torch.randint(8, preset["tokens"] + 1, (q,), generator=g)
    query_mask = (torch.arange(preset["tokens"])[None] < lengths[:, None]).float()
    batch = {
        "video_feat": torch.randn(v, l, preset["visual_dim"], generator=g),
        "video_mask": torch.ones(v, l),
        "teacher_video_feat": torch.randn(v, l, TEACHER_DIM, generator=g),
        "query_feat": torch.randn(q, preset["tokens"], preset["text_dim"], generator=g),
        "query_mask": query_mask,
        "teacher_query_feat": torch.randn(q, TEACHER_DIM, generator=g),
        "query_labels": torch.arange(v).repeat_interleave(preset["captions"]),
    }
    return {k: t.to(device) for k, t in batch.items()}


def median_seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (synchronised on CUDA).

    On CUDA the peak-memory counter is reset first, so the next ``emit`` reports this measurement's peak.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        with device_timer(device) as t:
            fn()
        times.append(t.seconds)
    return statistics.median(times)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s of this machine in ``dtype`` (best of a few square sizes)."""
    sizes = (2048, 4096) if device.type == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = median_seconds(lambda: a @ b, device, repeats=5, warmup=2)
        best = max(best, 2 * n ** 3 / seconds)
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


def write_collection(root: str, n_videos: int, visual_dim: int = 3072, text_dim: int = 768,
                     teacher_dim: int = TEACHER_DIM, frames=(32, 200), tokens=(8, 40), captions: int = 5,
                     seed: int = 0, eval_videos: int | None = None) -> dict:
    """A random collection ``root/tvr`` in the released layout (BigFile student frames, HDF5 text and teacher).

    Video i has ``frames`` (lo, hi) frames (uniform; more than 128 are pooled
    to 128), ``captions`` captions of ``tokens`` (lo, hi) tokens, and a teacher
    video of about its frame count. The train split lists every video, val
    and test the first ``eval_videos`` (default all).
    Values are slices of one random pool (fast to write, varied). Returns the sizes written.
    """
    g = np.random.default_rng(seed)
    pool = g.standard_normal(1 << 22, dtype=np.float32)
    base = os.path.join(root, "tvr")
    text_dir, feat_dir = os.path.join(base, "TextData"), os.path.join(base, "FeatureData")
    os.makedirs(text_dir, exist_ok=True)
    os.makedirs(feat_dir, exist_ok=True)
    vids = [f"vid{i:06d}" for i in range(n_videos)]
    counts = g.integers(frames[0], frames[1] + 1, n_videos)

    def values(n, dim):
        start = int(g.integers(0, pool.size - n * dim))
        return pool[start:start + n * dim].reshape(n, dim)

    n_rows, _ = write_bigfile(os.path.join(feat_dir, "i3d_resnet"),
                              ((v, values(int(n), visual_dim), None) for v, n in zip(vids, counts)))
    lines = []
    with h5py.File(os.path.join(text_dir, "roberta_tvr_query_feat.hdf5"), "w") as text, \
            h5py.File(os.path.join(text_dir, "clip_ViT_B_32_tvr_query_feat.hdf5"), "w") as clip, \
            h5py.File(os.path.join(feat_dir, "new_clip_vit_32_tvr_vid_features.hdf5"), "w") as teacher:
        for v, n in zip(vids, counts):
            teacher.create_dataset(v, data=values(max(1, int(n) + int(g.integers(-8, 9))), teacher_dim))
            for j in range(captions):
                cap = f"{v}#enc#{j}"
                lines.append(f"{cap} caption {j} of {v}")
                text.create_dataset(cap, data=values(int(g.integers(tokens[0], tokens[1] + 1)), text_dim))
                clip.create_dataset(cap, data=values(1, teacher_dim)[0])
    n_eval = len(lines) if eval_videos is None else eval_videos * captions
    for split, part in (("train", lines), ("val", lines[:n_eval]), ("test", lines[:n_eval])):
        with open(os.path.join(text_dir, f"tvr{split}.caption.txt"), "w") as f:
            f.write("\n".join(part) + "\n")
    return {"videos": n_videos, "captions": len(lines), "frame_rows": n_rows,
            "feature_bin_mb": round(n_rows * visual_dim * 4 / 2 ** 20)}
