"""Benchmark: open a large BigFile without reading it, and build training batches from it.

    python bench/bigfile_open.py [--rows 200000] [--dim 3072] [--videos 2800]
                                 [--out-dir DIR] [--keep]

Writes (in chunks, in a child process so its buffers do not count) a BigFile
of rows x dim float32 (default ~2.4 GB, TVR-like: ~70 frames a video) plus a
small RoBERTa-like token HDF5 for the captions of the benchmarked videos, then
prints JSON lines:

- "open": peak RSS (resource.getrusage) before and after opening the BigFile,
  the current RSS, and the file size: the map is not read into memory;
- "batch": time to build one training batch (TrainDataset items +
  collate_train) of --batch-size videos, median over --batches batches, with a
  cold-ish page cache (posix_fadvise DONTNEED on the files first) and warm.
"""

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from method.data.bigfile import BigFile  # noqa: E402
from method.data import H5Store, TrainDataset, collate_train, read_caption_file  # noqa: E402

CHUNK_ROWS = 2048
TOKENS = 15
CAPTIONS_PER_VIDEO = 5


def emit(**record):
    print(json.dumps(record), flush=True)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb():
    """Current RSS split into anonymous memory and mapped file pages, in MB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "rss_anon_mb": fields["RssAnon"], "rss_file_mb": fields["RssFile"]}


def frame_ids(n_rows, n_videos):
    """Video id -> its row ids; rows are split as evenly as possible, in order."""
    bounds = np.linspace(0, n_rows, n_videos + 1).round().astype(int)
    return {f"vid{v:05d}": [f"vid{v:05d}_{i}" for i in range(hi - lo)]
            for v, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))}


def write_bigfile(folder, n_rows, dim, n_videos, seed):
    """Write feature.bin chunk by chunk, then shape.txt, id.txt, video2frames.txt."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, "feature.bin")
    with open(path, "wb") as f:
        for start in range(0, n_rows, CHUNK_ROWS):
            rows = min(CHUNK_ROWS, n_rows - start)
            rng.random((rows, dim), dtype=np.float32).astype("<f4").tofile(f)
        f.flush()
        os.fsync(f.fileno())
    v2f = frame_ids(n_rows, n_videos)
    with open(os.path.join(folder, "shape.txt"), "w") as f:
        f.write(f"{n_rows} {dim}\n")
    with open(os.path.join(folder, "id.txt"), "w") as f:
        f.write(" ".join(fid for fids in v2f.values() for fid in fids))
    with open(os.path.join(folder, "video2frames.txt"), "w") as f:
        f.write(repr(v2f))


def write_text(cap_path, h5_path, video_ids, text_dim, seed):
    """Caption file and token HDF5 for `video_ids` (CAPTIONS_PER_VIDEO each)."""
    rng = np.random.default_rng(seed + 1)
    with open(cap_path, "w") as cap_file, h5py.File(h5_path, "w") as h5:
        for vid in video_ids:
            for j in range(CAPTIONS_PER_VIDEO):
                cap_id = f"{vid}#enc#{j}"
                cap_file.write(f"{cap_id} a caption\n")
                h5.create_dataset(cap_id, data=rng.standard_normal((TOKENS, text_dim), dtype=np.float32))


def drop_page_cache(path):
    """Ask the kernel to evict a file's clean pages (no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_batches(dataset, batches, files, cold):
    times = []
    for idx in batches:
        if cold:
            for path in files:
                drop_page_cache(path)
        t0 = time.perf_counter()
        batch = collate_train([dataset[i] for i in idx])
        times.append(time.perf_counter() - t0)
    return times, batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="frame rows in feature.bin")
    parser.add_argument("--dim", type=int, default=3072, help="feature size of a row")
    parser.add_argument("--videos", type=int, default=2800, help="videos the rows are split into")
    parser.add_argument("--text-dim", type=int, default=768, help="size of the generated token features")
    parser.add_argument("--batch-size", type=int, default=128, help="videos per training batch")
    parser.add_argument("--batches", type=int, default=5, help="batches timed per cache state")
    parser.add_argument("--out-dir", default=None, help="where to write the BigFile (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated values")
    args = parser.parse_args(argv)
    n_needed = args.batch_size * args.batches
    if n_needed > args.videos:
        parser.error("--batch-size x --batches must not exceed --videos")
    created_dir = args.out_dir is None or not os.path.exists(args.out_dir)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="bigfile_bench_")
    os.makedirs(out_dir, exist_ok=True)
    folder = os.path.join(out_dir, "i3d_resnet")
    text_files = [os.path.join(out_dir, name) for name in ("benchtrain.caption.txt", "roberta_bench_query_feat.hdf5")]
    try:
        t0 = time.perf_counter()
        writer = multiprocessing.Process(target=write_bigfile,
                                         args=(folder, args.rows, args.dim, args.videos, args.seed))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit(f"writing the BigFile failed (exit code {writer.exitcode})")
        feature_bin = os.path.join(folder, "feature.bin")
        emit(event="generate", rows=args.rows, dim=args.dim, videos=args.videos,
             file_mb=round(os.path.getsize(feature_bin) / 2 ** 20, 1),
             seconds=round(time.perf_counter() - t0, 2))

        peak_before = peak_rss_mb()
        t0 = time.perf_counter()
        bigfile = BigFile(folder)
        open_s = time.perf_counter() - t0
        emit(event="open", open_s=round(open_s, 3), peak_rss_mb_before=round(peak_before, 1),
             peak_rss_mb_after_open=round(peak_rss_mb(), 1), **current_rss_mb(),
             file_mb=round(os.path.getsize(feature_bin) / 2 ** 20, 1))

        rng = np.random.default_rng(args.seed + 2)
        chosen = sorted(bigfile.keys())
        chosen = [chosen[i] for i in rng.choice(len(chosen), n_needed, replace=False)]
        cap_path, h5_path = text_files
        write_text(cap_path, h5_path, chosen, args.text_dim, args.seed)
        captions = read_caption_file(cap_path)
        dataset = TrainDataset(captions, bigfile, H5Store(h5_path))
        batches = np.arange(n_needed).reshape(args.batches, args.batch_size)
        for cold in (True, False):
            times, batch = time_batches(dataset, batches, [feature_bin, h5_path], cold)
            emit(event="batch", cache="cold" if cold else "warm", batch_videos=args.batch_size,
                 batch_captions=len(batch["cap_ids"]), video_feat=list(batch["video_feat"].shape),
                 median_s=round(statistics.median(times), 4), times_s=[round(t, 4) for t in times])
        emit(event="rss_after_batches", peak_rss_mb=round(peak_rss_mb(), 1), **current_rss_mb())
    finally:
        if args.keep:
            emit(event="kept", out_dir=out_dir)
        elif created_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:  # only what this script wrote into an existing folder
            shutil.rmtree(folder, ignore_errors=True)
            for path in text_files:
                if os.path.exists(path):
                    os.remove(path)


if __name__ == "__main__":
    main()
