"""Frames per second of the teacher extractor with a tiny random CLIP (no download).

Writes short MPEG-4 videos and a tiny CLIP into a temp folder (the test
suite's helpers), then times ``method.extract_teacher`` sampling every frame.
Needs ``requirements-extract.txt``.

    python bench/extract_fps.py --device cpu --videos 10 --frames 20
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import bench_parser, device_timer, emit, machine  # noqa: E402
from method.extraction import teacher as extract_teacher# noqa: E402
from method.common.cli import resolve_device  # noqa: E402
from test_extract_teacher import VIDEO_FPS, make_tiny_clip, write_captions, write_video  # noqa: E402


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--videos", type=int, default=10, help="videos to encode")
    p.add_argument("--frames", type=int, default=20, help="frames per video (all are sampled)")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--batch_size", type=int, default=64, help="frames per CLIP forward pass")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_tiny_clip(os.path.join(tmp, "clip"))
        os.makedirs(os.path.join(tmp, "videos"))
        for i in range(args.videos):
            write_video(os.path.join(tmp, "videos", f"v{i}.mp4"), args.frames, size=args.size, seed=i)
        write_captions(os.path.join(tmp, "data"), "bench", {"train": [(f"v{i}#0", "a caption") for i in range(args.videos)]})
        with device_timer(device) as t:
            extract_teacher.main(["--root_path", os.path.join(tmp, "data"), "--collection", "bench",
                                  "--videos", os.path.join(tmp, "videos"), "--fps", str(VIDEO_FPS),
                                  "--clip_model", clip, "--device", str(device), "--skip_text",
                                  "--batch_size", str(args.batch_size)])
        seconds = t.seconds
    frames = args.videos * args.frames
    emit(bench="extract_fps", device=machine(device), model="tiny random CLIP", videos=args.videos, frames=frames,
         seconds=round(seconds, 2), frames_per_second=round(frames / seconds, 1))


if __name__ == "__main__":
    main()
