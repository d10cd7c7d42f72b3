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
    # a quarter of TVR's batch, for profiles and quick comparisons
    "tvr_mid": {"videos": 32, "frames": 128, "visual_dim": 3072, "captions": 5, "tokens": 30, "text_dim": 768},
    # a quarter of ActivityNet's batch, likewise
    "activitynet_mid": {"videos": 32, "frames": 128, "visual_dim": 1024, "captions": 4, "tokens": 30,
                        "text_dim": 1024},
}
# Length distributions of a batch's videos (frames, at most the preset's) and captions (tokens):
#   full     every video at the preset's frames, tokens uniform in 8..tokens (the earlier benchmarks);
#   tvr      TVR-like. Source: TVR (Lei et al., ECCV 2020, "TVR: A Large-Scale Dataset for Video-Subtitle
#            Moment Retrieval", Sec. 3): videos of 60-90 s (76.2 s on average), queries of 13.4 words on
#            average; its released ResNet+I3D features (the 3072-d ones) are one per 1.5 s. So frames uniform
#            in 40..60, and tokens 2 + 1.3 x words (RoBERTa's BPE with <s> </s>), words normal(13.4, 4) in 3..22;
#            this is an estimate from the published means, not a histogram of the split;
#   uniform  frames uniform in 1..frames, tokens uniform in 1..tokens (the equivalence tests' range);
#   long     TVR-like, plus one video of the batch at the preset's full length (a batch padded to 128).
LENGTHS = ("full", "tvr", "uniform", "long")
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


def draw_lengths(kind: str, videos: int, captions: int, frames: int, tokens: int, g: torch.Generator):
    """(frames per video (V,), tokens per caption (Q,)) drawn from the distribution ``kind`` (see LENGTHS)."""
    q = videos * captions
    if kind == "full":
        return torch.full((videos,), frames), torch.randint(8, tokens + 1, (q,), generator=g)
    if kind == "uniform":
        return torch.randint(1, frames + 1, (videos,), generator=g), torch.randint(1, tokens + 1, (q,), generator=g)
    if kind in ("tvr", "long"):
        f = torch.randint(40, 61, (videos,), generator=g).clamp(max=frames)
        if kind == "long":
            f[0] = frames
        words = (13.4 + 4 * torch.randn(q, generator=g)).round().clamp(3, 22)
        return f, (2 + 1.3 * words).round().long().clamp(1, tokens)
    raise ValueError(f"lengths {kind!r}: one of {LENGTHS}")


def synthetic_batch(preset: dict, device: torch.device, seed: int = 0, lengths: str = "full") -> dict:
    """A full-size training batch with random features; frame and token counts drawn by ``lengths``
    (default: all frames valid, token lengths 8..tokens), padded to the batch's longest as the loader does."""
    g = torch.Generator().manual_seed(seed)
    v, q = preset["videos"], preset["videos"] * preset["captions"]
    frame_counts, token_counts = draw_lengths(lengths, v, preset["captions"], preset["frames"], preset["tokens"], g)
    l, n = int(frame_counts.max()), (int(token_counts.max()) if lengths != "full" else preset["tokens"])
    video_mask = (torch.arange(l)[None] < frame_counts[:, None]).float()
    query_mask = (torch.arange(n)[None] < token_counts[:, None]).float()
    batch = {
        "video_feat": torch.randn(v, l, preset["visual_dim"], generator=g) * video_mask[..., None],
        "video_mask": video_mask,
        "teacher_video_feat": torch.randn(v, l, TEACHER_DIM, generator=g),
        "query_feat": torch.randn(q, n, preset["text_dim"], generator=g) * query_mask[..., None],
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


def reset_peak_rss() -> bool:
    """Returns freed heap to the system and resets this process's peak RSS (Linux: /proc/self/clear_refs 5);
    False where that is not possible."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mb() -> float:
    """Peak resident memory since the last ``reset_peak_rss`` (VmHWM), else since the start, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


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
