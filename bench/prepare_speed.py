"""Videos per second and peak memory of ``python -m method.prepare`` with tiny random models (no download).

Generates short videos of moving patterns (mpeg4 and h264, 64x48 px, 10 fps,
2 to 4 s), one caption file and the tiny models of the tests in a temp folder,
then runs the whole command as a child process: decoding, the tiny VideoMAE,
ResNet, RoBERTa and CLIP, and the writers. Peak memory is the child's maximum
resident set (getrusage of the children). A second run over the finished
collection measures the resume check. Needs ``requirements-extract.txt``.

    python bench/prepare_speed.py --device cpu --videos 200
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from common import bench_parser, emit, machine, peak_rss_mb  # noqa: E402
from method.data.bigfile import BigFile  # noqa: E402
from method.common.cli import resolve_device  # noqa: E402
from tiny_models import make_tiny_models, write_pattern_video  # noqa: E402


def run_command(argv):
    """Run ``python -m method.prepare ARGV``; returns its wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "method.prepare", *argv], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--videos", type=int, default=200, help="videos to generate and prepare")
    p.add_argument("--num_workers", type=int, default=2, help="decoding threads of the command")
    p.add_argument("--clips_per_batch", type=int, default=16, help="clips encoded together")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        models = make_tiny_models(os.path.join(tmp, "models"))
        videos = os.path.join(tmp, "videos")
        os.makedirs(videos)
        seconds = 0.0
        with open(os.path.join(tmp, "captions.txt"), "w") as f:
            for i in range(args.videos):
                duration = 2 + (i % 5) * 0.5
                write_pattern_video(os.path.join(videos, f"v{i:04d}.mp4"), duration,
                                    codec="libx264" if i % 2 else "mpeg4", seed=i)
                seconds += duration
                f.write(f"v{i:04d} a person opens the door\nv{i:04d} the dog runs in the room\n")
        root = os.path.join(tmp, "data")
        command = [root, "bench", "--videos", videos, "--captions", os.path.join(tmp, "captions.txt"),
                   "--video_model", models["video"], "--image_model", models["image"],
                   "--text_model", models["text"], "--teacher_model", models["teacher"],
                   "--device", str(device), "--num_workers", str(args.num_workers),
                   "--clips_per_batch", str(args.clips_per_batch), "--visual_feature", "student"]
        first = run_command(command)
        child_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rerun = run_command(command)
        clips = sum(BigFile(os.path.join(root, "bench", "FeatureData", "student")).n_frames(f"v{i:04d}")
                    for i in range(args.videos))
    emit(bench="prepare_speed", device=machine(device), models="tiny random VideoMAE, ResNet, RoBERTa, CLIP",
         videos=args.videos, video_seconds=round(seconds, 1), clips=clips, captions=2 * args.videos,
         num_workers=args.num_workers, seconds=round(first, 2), videos_per_second=round(args.videos / first, 1),
         peak_rss_mb_command=round(child_peak_mb), peak_rss_mb_bench=round(peak_rss_mb()),
         rerun_seconds=round(rerun, 2))


if __name__ == "__main__":
    main()
