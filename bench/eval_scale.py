"""Evaluation at TVR test size (2,179 videos of 128 frames, 10,895 queries) and multiples of it.

Items are generated on the fly (seeded random features at TVR sizes) and go
through the real path: DataLoader + collate, ``method.evaluation.evaluate.evaluate`` (encode
every video once, score query chunks against all videos, t2v and v2t metrics
for the fused score and both branches). Also measures the "pure matmul" time:
the same scoring matmuls (chunk x d @ d x frames) alone, for the ratio.

    python bench/eval_scale.py --device cpu --scale 1
    python bench/eval_scale.py --device cpu --scale 10 --skip_matmul_baseline
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from common import bench_parser, device_timer, emit, machine, matmul_peak_flops, median_seconds, peak_rss_mb
from method.common.cli import resolve_device
from method.data import collate_queries, collate_videos
from method.evaluation.evaluate import evaluate
from method.models.model import DLDKD, ModelConfig

TVR_TEST = {"videos": 2179, "queries": 10895, "frames": 128, "visual_dim": 3072, "tokens": 30, "text_dim": 768}


# Items are slices of one fixed random pool at seeded offsets: real-sized, varied,
# and nearly free to make, so the timing is the evaluation's, not a generator's.
POOL = torch.Generator().manual_seed(0)
POOL = torch.randn(1 << 23, generator=POOL)


def pool_slice(seed: int, shape: tuple[int, int]):
    n = shape[0] * shape[1]
    start = int(torch.randint(0, POOL.numel() - n, (1,), generator=torch.Generator().manual_seed(seed)))
    return POOL[start:start + n].view(shape).numpy()


class RandomVideos(Dataset):
    """Video i: (frames, visual_dim) features, id ``v<i>``."""

    def __init__(self, n, frames, dim):
        self.n, self.frames, self.dim = n, frames, dim

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"video_id": f"v{i}", "video_feat": pool_slice(i, (self.frames, self.dim))}


class RandomQueries(Dataset):
    """Query j of video j % n_videos: (8..tokens, text_dim) features, id ``v<k>#enc#<j>``."""

    def __init__(self, n, n_videos, tokens, dim):
        self.n, self.n_videos, self.tokens, self.dim = n, n_videos, tokens, dim

    def __len__(self):
        return self.n

    def __getitem__(self, j):
        n_tok = 8 + j % (self.tokens - 7)
        return {"cap_id": f"v{j % self.n_videos}#enc#{j}",
                "query_feat": pool_slice(10_000_000 + j, (n_tok, self.dim))}


def encode_flops(model, videos: DataLoader, queries: DataLoader, device) -> tuple[float, float]:
    """FLOPs of encoding one video and one query, counted on the loaders' first batches."""
    vb, qb = next(iter(videos)), next(iter(queries))
    with torch.no_grad(), FlopCounterMode(display=False) as fv:
        model.encode_videos(vb["video_feat"].to(device), vb["video_mask"].to(device))
    with torch.no_grad(), FlopCounterMode(display=False) as fq:
        model.encode_queries(qb["query_feat"].to(device), qb["query_mask"].to(device))
    return fv.get_total_flops() / len(vb["video_ids"]), fq.get_total_flops() / len(qb["cap_ids"])


def same_shape_matmul_seconds(n_queries, n_videos, frames, hidden, chunk, video_bsz, device) -> float:
    """Seconds of the scoring matmuls alone (both branches), from one timed (chunk x d) @ (d x frames) block."""
    q = torch.randn(chunk, hidden, device=device)
    f = torch.randn(hidden, video_bsz * frames, device=device)
    per_block = median_seconds(lambda: q @ f, device, repeats=5, warmup=2)
    return 2 * (n_queries / chunk) * (n_videos / video_bsz) * per_block


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--scale", type=float, default=1.0, help="multiple of TVR's test split (videos and queries)")
    p.add_argument("--chunk", type=int, default=500, help="queries scored at once (--eval_query_bsz)")
    p.add_argument("--video_bsz", type=int, default=200, help="videos encoded at once (--eval_video_bsz)")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader workers generating items")
    p.add_argument("--skip_matmul_baseline", action="store_true", help="do not time the bare matmuls")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    s = TVR_TEST
    n_videos, n_queries = int(s["videos"] * args.scale), int(s["queries"] * args.scale)
    model = DLDKD(ModelConfig.of(visual_input_size=s["visual_dim"], query_input_size=s["text_dim"])).to(device).eval()
    common = {"num_workers": args.num_workers, "pin_memory": device.type == "cuda"}
    videos = DataLoader(RandomVideos(n_videos, s["frames"], s["visual_dim"]), batch_size=args.video_bsz,
                        collate_fn=collate_videos, **common)
    queries = DataLoader(RandomQueries(n_queries, n_videos, s["tokens"], s["text_dim"]), batch_size=args.chunk,
                         collate_fn=collate_queries, **common)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with device_timer(device) as t:
        res = evaluate(model, videos, queries, device, {"exploration": 0.3, "inheritance": 0.7}, args.chunk)
    seconds = t.seconds
    d, frames = model.cfg.student_cfg.hidden_size, s["frames"]
    record = {"bench": "eval_scale", "device": machine(device), "scale": args.scale, "n_videos": n_videos,
              "n_queries": n_queries, "frames": frames, "chunk": args.chunk, "seconds": round(seconds, 1),
              "encode_seconds": round(res["seconds"]["encode"], 1),
              "score_seconds": round(res["seconds"]["score"], 1),
              "encoded_videos_mb": round(2 * n_videos * frames * d * 4 / 2 ** 20),
              "chunk_scores_mb": round(args.chunk * args.video_bsz * frames * 4 / 2 ** 20),
              "peak_rss_mb": round(peak_rss_mb()), "t2v_fused_sumr": round(res["t2v"]["fused"]["sumr"], 2)}
    if device.type == "cuda":
        record["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20)
    if not args.skip_matmul_baseline:
        per_video, per_query = encode_flops(model, videos, queries, device)
        score_flops = 2 * n_queries * n_videos * frames * d * 2  # both branches, q . f for every frame
        total = per_video * n_videos + per_query * n_queries + score_flops
        peak = matmul_peak_flops(device, torch.float32)
        base = same_shape_matmul_seconds(n_queries, n_videos, frames, d, args.chunk, args.video_bsz, device)
        record.update(total_gflop=round(total / 1e9), matmul_peak_gflops=round(peak / 1e9, 1),
                      matmul_seconds_at_peak=round(total / peak, 1),
                      ratio_to_matmul_peak=round(seconds / (total / peak), 2),
                      score_matmul_seconds=round(base, 1),
                      score_ratio_to_same_shape_matmul=round(res["seconds"]["score"] / base, 2))
    emit(**record)


if __name__ == "__main__":
    main()
