"""Time to assemble one TVR-size training batch, and the memory of a preloaded split in each storage dtype.

Writes a random collection in the released layout (BigFile 3072-d frames,
768-d tokens, 512-d teacher; 5 captions a video), then times one batch of
128 videos and their 640 captions (teacher on, as the ICCV recipe), median
over several batches:

- "files": ``TrainDataset`` items read from the memory-mapped BigFile and the
  HDF5 files (pooled and normalised in float64) + ``collate_train``, warm page
  cache: what every epoch does without ``--preload``;
- "cached_items": items computed once and kept, + ``collate_train`` (what
  ``--preload`` did before the packed split);
- "packed": ``PackedTrain.batch`` of the preloaded split in RAM (float32,
  float16, bfloat16), and with the cast to float32 that the feed applies
  (on a GPU that cast runs on the device); ``host_plan_ms``: its host part
  alone (sort, caption and row indices: all that ``--preload device`` leaves
  to the host), ``reused_buffers_ms``: the gathers into buffers allocated
  once (pinned memory is reused so in a CUDA run; fresh host memory must be
  faulted in and zeroed by the system first), and ``memcpy_same_bytes_ms``: a
  plain copy of the batch's bytes between two buffers, the memory-bandwidth floor.

Memory: measured (``nbytes``) for the generated split and computed from the
shapes for TVR's train split (17,435 videos, 87,175 captions) and a test split
share of one process (2,179 videos, 10,895 captions; eval holds no teacher),
at the mean frames / tokens given (estimates) and at the bounds 128 / 30.

    python bench/batch_feed.py --videos 384 --batches 5
"""
from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch

from common import TVR_SPLITS, bench_parser, emit, machine, peak_rss_mb, write_collection
from method.data import build_split, collate_train
from method.data.feed import as_float32
from method.data.preload import STORAGE_DTYPES, pack_train, packed_bytes

DIMS = (3072, 768, 512)


def median_time(fn, batches) -> tuple[float, list]:
    times = []
    for idx in batches:
        t0 = time.perf_counter()
        fn(idx)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), [round(t, 4) for t in times]


def reused_buffer_gather(packed, batches):
    """The batch's row gathers (frames, tokens, teacher frames) into buffers allocated once, as pinned memory
    is reused by torch's pinned allocator in a CUDA run with ``--preload ram``."""
    plans = {tuple(idx): packed.plan(idx) for idx in batches}
    parts = ((packed.frames.rows, "frames"), (packed.tokens.rows, "tokens"), (packed.teacher_frames, "frames"))
    buffers = {}

    def run(idx):
        plan = plans[tuple(idx)]
        for k, (rows, key) in enumerate(parts):
            index = torch.from_numpy(plan[key].reshape(-1))
            buf = buffers.get(k)
            if buf is None or buf.shape[0] < index.numel():
                buf = buffers[k] = torch.empty(index.numel(), rows.shape[1], dtype=rows.dtype)
            torch.index_select(rows, 0, index, out=buf[:index.numel()])
    return run


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--videos", type=int, default=384, help="videos of the generated split")
    p.add_argument("--batch", type=int, default=128, help="videos per batch")
    p.add_argument("--batches", type=int, default=5, help="batches timed (median reported)")
    p.add_argument("--mean_frames", type=float, default=70.0,
                   help="mean frames per TVR video for the computed memory (an estimate; 128 is the bound)")
    p.add_argument("--mean_tokens", type=float, default=20.0,
                   help="mean tokens per TVR caption for the computed memory (an estimate; 30 is the bound)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        sizes = write_collection(root, args.videos)
        emit(bench="generate", seconds=round(time.perf_counter() - t0, 1), **sizes)
        split = build_split(root, "tvr", "i3d_resnet", "train", True, 128, 30)
        dataset = split.train_dataset()
        dims = (split.visual_dim, split.text_dim, split.teacher_dim, None, False)
        g = np.random.default_rng(1)
        batches = [sorted(g.choice(len(dataset), args.batch, replace=False).tolist(),
                          key=lambda i: -len(dataset.video2caps[dataset._keys[i]])) for _ in range(args.batches)]
        for idx in batches[:1]:  # warm the page cache
            collate_train([dataset[i] for i in idx], dims=dims)
        shape = collate_train([dataset[i] for i in batches[0]], dims=dims)["video_feat"].shape
        common = {"device": machine(torch.device("cpu")), "batch_videos": args.batch,
                  "batch_captions": args.batch * 5, "video_feat": list(shape)}
        seconds, times = median_time(lambda idx: collate_train([dataset[i] for i in idx], dims=dims), batches)
        emit(bench="batch", source="files", median_ms=round(seconds * 1e3, 1), times_s=times, **common)
        t0 = time.perf_counter()
        items = [dataset[i] for i in range(len(dataset))]
        compute_s = time.perf_counter() - t0
        seconds, times = median_time(lambda idx, items=items: collate_train([items[i] for i in idx], dims=dims), batches)
        emit(bench="batch", source="cached_items", median_ms=round(seconds * 1e3, 1), times_s=times, **common)
        del items
        for name, dtype in STORAGE_DTYPES.items():
            t0 = time.perf_counter()
            packed = pack_train(dataset, dtype, torch.device("cpu"))
            pack_s = time.perf_counter() - t0
            gather_s, times = median_time(lambda idx, packed=packed: packed.batch(idx), batches)
            cast_s, _ = median_time(lambda idx, packed=packed: as_float32(packed.batch(idx)[0]), batches)
            plan_s, _ = median_time(lambda idx, packed=packed: packed.plan(idx), batches)
            batch_bytes = sum(v.numel() * v.element_size() for v in packed.batch(batches[0])[0].values()
                              if torch.is_tensor(v))
            reused_s, _ = median_time(reused_buffer_gather(packed, batches), batches)
            src, dst = torch.empty(batch_bytes, dtype=torch.uint8), torch.empty(batch_bytes, dtype=torch.uint8)
            src.fill_(1)
            dst.fill_(0)
            copy_s, _ = median_time(lambda idx, dst=dst, src=src: dst.copy_(src), batches)
            emit(bench="batch", source="packed", dtype=name, median_ms=round(gather_s * 1e3, 1),
                 with_float32_cast_ms=round(cast_s * 1e3, 1), host_plan_ms=round(plan_s * 1e3, 2),
                 reused_buffers_ms=round(reused_s * 1e3, 1), batch_mb=round(batch_bytes / 2 ** 20, 1),
                 memcpy_same_bytes_ms=round(copy_s * 1e3, 1),
                 times_s=times, pack_seconds=round(pack_s, 1), items_seconds=round(compute_s, 1),
                 packed_mb=round(packed.nbytes / 2 ** 20, 1),
                 packed_mb_per_video=round(packed.nbytes / 2 ** 20 / len(dataset), 3), **common)
            del packed, src, dst
        total_frames = int(sum(dataset.frame_counts))
        emit(bench="split_memory", split="generated", videos=len(dataset), mean_frames=round(total_frames / len(dataset), 1),
             **{f"{name}_mb": round(packed_bytes(len(dataset), total_frames / len(dataset), len(dataset) * 5,
                                                 np.mean(dataset.token_counts), DIMS, dtype)["total"] / 2 ** 20, 1)
                for name, dtype in STORAGE_DTYPES.items()})
    for split_name, teacher in (("train", True), ("test", False)):
        n_videos, n_caps = TVR_SPLITS[split_name]
        dims = DIMS if teacher else (*DIMS[:2], None)
        for label, frames, tokens in (("estimate", args.mean_frames, args.mean_tokens), ("bound", 128, 30)):
            for clips in (None, 32):
                record = {f"{name}_gib": round(packed_bytes(n_videos, frames, n_caps, tokens, dims, dtype,
                                                            clips)["total"] / 2 ** 30, 2)
                          for name, dtype in STORAGE_DTYPES.items()}
                emit(bench="split_memory", split=f"tvr_{split_name}", videos=n_videos, captions=n_caps,
                     teacher=teacher, clips=clips or 0, frames_per_video=frames, tokens_per_caption=tokens,
                     sizes=label, **record)
    emit(bench="peak_rss", peak_rss_mb=round(peak_rss_mb()))


if __name__ == "__main__":
    main()
