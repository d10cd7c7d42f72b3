"""A whole training epoch and a whole evaluation on demo data, split into data time and compute time.

Generates the demo dataset at the chosen size (``--dims tvr`` gives TVR's feature
sizes: 3072-d frames, 768-d text, 512-d teacher) and runs the real training
pieces (``method.training.loop.build_run`` / ``train_one_epoch``, ``method.evaluation.evaluate.evaluate``).

    python bench/epoch.py --videos 640 --dims tvr --device cpu --num_workers 2

``--paths off exact`` (with a GMMFormer-family recipe or student) trains the epoch once per
``blocks.FAST_PATH`` mode in the same process, from the same seed, on the same data, and reports each
path's epoch seconds, peak RSS (VmHWM, reset before each) and final loss (the paths give the same numbers):

    python bench/epoch.py --videos 320 --dims tvr --device cpu --num_workers 0 --preload ram \
        --recipe gmmformer_v2 --paths off exact
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import bench_parser, device_timer, emit, machine, peak_rss_mb, peak_rss_since_reset_mb, reset_peak_rss
from train_step import PATHS, set_path
from method.config.recipes import RECIPES
from method.models.students import STUDENTS
from method.config.settings import epoch_schedule, train_settings
from method.data import demo as demo_data
from method.training import rng
from method.common.cli import resolve_device
from method.config.flags import parse_train_args
from method.parallel.distributed import Dist, StopSignal
from method.evaluation.evaluate import evaluate
from method.training.schedules import epoch_settings
from method.training.loop import build_run, train_one_epoch

DIMS = {"demo": {}, "tvr": {"visual_dim": 3072, "text_dim": 768, "teacher_dim": 512}}


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--videos", type=int, default=400, help="videos in the generated dataset (55%% train, 15%% val, 30%% test)")
    p.add_argument("--dims", choices=sorted(DIMS), default="demo", help="feature sizes of the generated data")
    p.add_argument("--max_frames", type=int, default=None, help="longest generated video (default: the demo's)")
    p.add_argument("--root", default=None, help="reuse/generate the dataset here (default: a temporary folder)")
    p.add_argument("--bsz", type=int, default=128, help="videos per training batch")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--preload", choices=("none", "ram", "device"), default="none",
                   help="--preload of the run: the split's features computed once and held in RAM or on the device")
    p.add_argument("--preload_dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="storage dtype of the preloaded features")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="iccv", help="training recipe of the epoch")
    p.add_argument("--student", choices=sorted(STUDENTS), default=None, help="the student (default: the recipe's)")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                   help="GMMFormer family: train the epoch once per blocks.FAST_PATH mode (bench/train_step.py)")
    p.add_argument("--skip_eval", action="store_true", help="no evaluation after the epoch")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        if not (root / "tvr" / "TextData" / "tvrtest.caption.txt").is_file():
            overrides = dict(DIMS[args.dims])
            if args.max_frames:
                overrides["max_frames"] = args.max_frames
            t0 = time.perf_counter()
            demo_data.generate(str(root), "tvr", n_videos=args.videos, seed=0, **overrides)
            emit(bench="generate", videos=args.videos, dims=args.dims, seconds=round(time.perf_counter() - t0, 2))
        opt = parse_train_args(["--root_path", str(root), "--collection", "tvr", "--device", str(device),
                                "--bsz", str(args.bsz), "--num_workers", str(args.num_workers), "--n_epoch", "1",
                                "--kd_schedule", "exp_decay", "--recipe", args.recipe,
                                *(["--student", args.student] if args.student else []),
                                "--preload", args.preload, "--preload_dtype", args.preload_dtype])
        for path in args.paths or [None]:
            if path is not None:
                set_path(path)
            run_epoch(args, opt, device, path)


def run_epoch(args, opt, device, path) -> None:
    rng.set_seed(opt.seed)
    reset_peak_rss()
    with device_timer(device) as setup:
        r = build_run(train_settings(opt), device, Dist())
    with StopSignal() as stop, device_timer(device) as epoch:
        losses = train_one_epoch(r, 0, epoch_settings(epoch_schedule(opt), 0), device, stop)
    setup_seconds, epoch_seconds = setup.seconds, epoch.seconds
    data, compute = losses["data_seconds"], losses["compute_seconds"]
    emit(bench="train_epoch", recipe=args.recipe, student=opt.student, path=path, device=machine(device),
         videos=r.loader.n_videos, steps=len(r.loader),
         bsz=args.bsz, visual_dim=r.model.cfg.student_cfg.visual_input_size, num_workers=args.num_workers,
         preload=args.preload, preload_dtype=args.preload_dtype,
         setup_seconds=round(setup_seconds, 2), epoch_seconds=round(epoch_seconds, 2),
         data_seconds=round(data, 2), compute_seconds=round(compute, 2),
         data_fraction=round(data / epoch_seconds, 3), peak_rss_mb=round(peak_rss_since_reset_mb()),
         loss=round(float(losses["loss"]), 6) if "loss" in losses else None)
    if args.skip_eval:
        return
    fusion = {"exploration": 0.3, "inheritance": 0.7}
    with device_timer(device) as t:
        res = evaluate(r.model, r.val.videos, r.val.queries, device, fusion, opt.eval_query_bsz)
    emit(bench="eval_val", path=path, device=machine(device), n_videos=res["n_videos"], n_queries=res["n_queries"],
         seconds=round(t.seconds, 2), peak_rss_mb=round(peak_rss_mb()))


if __name__ == "__main__":
    main()
