"""Evaluation: encode every video once, score queries in chunks, report both directions.

``python -m method.eval --model_dir RUN_DIR --root_path ROOT [--eval_split test]``
(``do_test.sh`` wraps it; ``NPROC=N ./do_test.sh`` runs N processes through
torchrun). Works for this project's runs and for the authors' checkpoints,
ICCV and DL-DKD++ (detected from the state-dict names).

Several processes (sharded evaluation, the same metrics as one process): each
process encodes a contiguous share of the videos and of the queries, in whole
encoding blocks (``--eval_video_bsz`` / ``--eval_query_bsz`` items; GMMFormer's
groups of ````eval_context_bsz```` videos, quirk Q1), so every block is encoded
exactly as one process encodes it. The encoded queries are all-gathered (Q x d
per branch, small); each process scores every query against its own videos
and counts, per query, the videos of its share ranked above the true one
(text-to-video) and, for the captions of its own videos, the captions ranked
above (video-to-text); the (n_q,) count vectors are summed over the processes.
Only process 0 writes files.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from method.common.files import atomic_write_json
from method.common.timing import device_timer
from method.data import DataError, build_split, collate_queries, collate_videos
from method.data.feed import EvalBlocks
from method.data.options import DataOptions
from method.data.preload import STORAGE_DTYPES, pack_queries, pack_videos
from method.data.sampler import block_range
from method.evaluation import metrics
from method.models.checkpoint import CheckpointError, model_file
from method.models.model import DLDKD, normalize_frames
from method.parallel.distributed import Dist, gather, offsets


@torch.no_grad()
def encode_split(model: DLDKD, video_loader, query_loader, device: torch.device):
    """Encode all videos (unit positions, kept per loader batch) and all queries of a split (or of a share).

    Returns (video_blocks, masks, video_ids, queries, cap_ids, encodings) where
    video_blocks is a list of {branch: {level: (Vb, Pb, d)}}, masks the list of
    their (Vb, Lb) frame masks, queries {branch: (Q, d)} and encodings
    {branch: {key: (Q, ...)}} the student's other query encodings
    (``Student.query_encodings``, e.g. RAL's tokens; empty for most); positions
    a level does not count hold a copy of their video's first position (see
    ``normalize_frames``), so scoring needs no mask.
    """
    model.eval()
    video_blocks, masks, video_ids = [], [], []
    for batch in tqdm(video_loader, desc="encode videos", leave=False):
        feat, mask = batch["video_feat"].to(device), batch["video_mask"].to(device)
        clips = batch["clip_feat"].to(device) if "clip_feat" in batch else None
        levels = model.score_masks(mask)
        videos = model.encode_videos(feat, mask, clips)
        video_blocks.append({b: {lv: normalize_frames(f, levels[lv]) for lv, f in v.items()} for b, v in videos.items()})
        masks.append(mask)
        video_ids.extend(batch["video_ids"])
    queries, cap_ids = {name: [] for name in model.branch_names}, []
    encodings = {name: {} for name in model.branch_names}
    for batch in tqdm(query_loader, desc="encode queries", leave=False):
        feat, mask = batch["query_feat"].to(device), batch["query_mask"].to(device)
        for name, q in model.encode_queries(feat, mask).items():
            queries[name].append(q)
        for name, enc in model.encode_query_encodings(feat, mask).items():
            for key, x in enc.items():
                encodings[name].setdefault(key, []).append(x)
        cap_ids.extend(batch["cap_ids"])
    empty = torch.zeros(0, model.cfg.student_cfg.hidden_size, device=device)  # a process's empty share of the queries
    return (video_blocks, masks, video_ids, {k: torch.cat(v) if v else empty for k, v in queries.items()}, cap_ids,
            {name: {key: torch.cat(x) for key, x in enc.items()} for name, enc in encodings.items()})


def score_chunk(queries: dict[str, torch.Tensor], video_blocks, rows: slice,
                model: DLDKD, fusion: dict[str, float],
                encodings: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Scores (C, n_videos of the blocks) of the queries in ``rows``: fused, per branch and per level.

    Each level is scored by the student's ``eval_level_scores`` (the max cosine for most), which also reads
    the rows' ``encodings`` ({branch: {key: (Q, ...)}}, ``encode_split``'s).
    """
    def level(q, name, lv):
        if not video_blocks:  # a process's empty share of the videos
            return q.new_zeros(len(q[rows]), 0)
        student = getattr(model, name)
        enc = {key: x[rows] for key, x in (encodings or {}).get(name, {}).items()}
        return torch.cat([student.eval_level_scores(lv, q[rows], enc, block[name][lv]) for block in video_blocks],
                         dim=1)

    levels = {name: {lv: level(q, name, lv) for lv in model.levels} for name, q in queries.items()}
    return model.named_scores(levels, fusion)


def positive_scores(queries, video_blocks, query_video: torch.Tensor, model: DLDKD, fusion,
                    encodings: Optional[dict] = None) -> dict:
    """Each query's score with its own video (Q,), every named score, block by block (the student's
    ``eval_positive_scores``, reading ``encodings`` as ``score_chunk``).

    ``query_video`` indexes the blocks' videos; a query whose video is not in
    them (another process's share: an index outside) gets 0.
    """
    pos = {name: {lv: torch.zeros(len(query_video), device=query_video.device) for lv in model.levels}
           for name in queries}
    start = 0
    for block in video_blocks:
        n = next(iter(next(iter(block.values())).values())).shape[0]
        sel = ((query_video >= start) & (query_video < start + n)).nonzero().squeeze(1)
        local = query_video[sel] - start
        for name, q in queries.items():
            student = getattr(model, name)
            enc = {key: x[sel] for key, x in (encodings or {}).get(name, {}).items()}
            for lv in model.levels:
                own = block[name][lv].index_select(0, local)  # (q, Pb, d)
                pos[name][lv][sel] = student.eval_positive_scores(lv, q[sel], enc, own)
        start += n
    return model.named_scores(pos, fusion)


def gather_ids(d: Dist, ids: list) -> tuple[list, list]:
    """(every process's share sizes, the ids of all shares in rank order)."""
    parts = d.all_gather_objects(ids)
    return [len(p) for p in parts], [i for p in parts for i in p]


@torch.no_grad()
def evaluate(model: DLDKD, video_loader, query_loader, device: torch.device, fusion: dict[str, float],
             chunk_size: int = 500, scores_path: Path | None = None, dist: Optional[Dist] = None) -> dict:
    """Text-to-video and video-to-text metrics of the fused score and of each branch.

    Memory beyond the encoded split is bounded by ``chunk_size * n_videos``.
    With ``scores_path`` the fused score matrix is streamed to a ``.npy`` file
    (process 0). ``dist``: several processes, each giving its share of the
    videos and of the queries (module docstring); every process returns the
    metrics of the whole split.
    """
    d = dist or Dist()
    with device_timer(device) as t_encode:
        video_blocks, _, own_videos, own_queries, own_caps, own_enc = encode_split(model, video_loader, query_loader,
                                                                                   device)
        video_sizes, video_ids = gather_ids(d, own_videos)
        query_sizes, cap_ids = gather_ids(d, own_caps)
        queries = {name: gather(d, q, query_sizes) for name, q in own_queries.items()}
        encodings = {name: {key: gather(d, x, query_sizes) for key, x in enc.items()} for name, enc in own_enc.items()}
    vid_index = {v: i for i, v in enumerate(video_ids)}
    missing = [c for c in cap_ids if c.split("#")[0] not in vid_index]
    if missing:
        raise DataError(f"{len(missing)} captions have no video in the split, first {missing[0]!r}")
    query_video = torch.tensor([vid_index[c.split("#")[0]] for c in cap_ids], device=device)
    n_q, n_v = len(cap_ids), len(video_ids)
    first = offsets(video_sizes)[d.rank]  # this process's first video
    column = query_video - first  # each query's video among this process's columns (outside: another's)
    own = ((column >= 0) & (column < video_sizes[d.rank])).nonzero().squeeze(1)  # captions of own videos
    names = model.score_names()
    out_scores = None
    if scores_path is not None and d.is_main:
        out_scores = np.lib.format.open_memmap(scores_path, mode="w+", dtype=np.float32, shape=(n_q, n_v))
    with device_timer(device) as t_score:
        pos = positive_scores(queries, video_blocks, column, model, fusion, encodings)
        pos = dict(zip(names, d.all_reduce_sum(torch.stack([pos[name] for name in names]))))  # 0 but once
        t2v = torch.zeros(len(names), n_q, dtype=torch.long, device=device)
        v2t = torch.zeros(len(names), n_q, dtype=torch.long, device=device)
        for start in tqdm(range(0, n_q, chunk_size), desc="score", leave=False):
            rows = slice(start, min(start + chunk_size, n_q))
            scores = score_chunk(queries, video_blocks, rows, model, fusion, encodings)
            index = torch.arange(rows.start, rows.stop, device=device)
            for k, name in enumerate(names):
                t2v[k, rows] = metrics.t2v_rank_counts(scores[name], column[rows], pos[name][rows])
                v2t[k] += metrics.v2t_share_counts(scores[name], index, own, column[own], pos[name][own], n_q)
            if scores_path is not None:
                fused = scores["fused"]
                if d.enabled:  # every process's columns
                    fused = gather(d, fused.t().contiguous(), video_sizes).t()
                if out_scores is not None:
                    out_scores[rows] = fused.cpu().numpy()
        counts = d.all_reduce_sum(torch.stack([t2v, v2t]))  # each process counted its own videos' columns
    if out_scores is not None:
        out_scores.flush()
    return {
        "n_queries": n_q, "n_videos": n_v,
        "seconds": {"encode": t_encode.seconds, "score": t_score.seconds},
        "t2v": {name: metrics.summarize_t2v(counts[0, k] + 1) for k, name in enumerate(names)},
        "v2t": {name: metrics.summarize_v2t(counts[1, k] + 1, query_video, n_v) for k, name in enumerate(names)},
        "cap_ids": cap_ids, "video_ids": video_ids,
    }


@dataclass
class EvalFeed:
    """A process's share of a split's videos and queries, in encoding blocks (``EvalBlocks``)."""

    videos: EvalBlocks
    queries: EvalBlocks


def make_eval_feed(split, data: DataOptions, device: torch.device, model: DLDKD, dist: Optional[Dist] = None,
                   persistent: bool = False) -> EvalFeed:
    """A process's share of a split's videos and queries, in split order, from the files or preloaded.

    Videos carry the student's clips when it reads them, and come in the
    student's evaluation groups when their encodings depend on each other
    (GMMFormer's quirk Q1: ````eval_context_bsz```` videos), else ``--eval_video_bsz``;
    queries in blocks of ``--eval_query_bsz``. Shares are whole blocks
    (``block_range``). ``--preload`` packs the share once (here); otherwise
    DataLoaders read the files at every evaluation, with ``persistent``
    workers (the per-epoch validation of a training run).
    """
    d = dist or Dist()
    n_clips = model.n_clips
    video_block = model.eval_video_group() or data.eval_video_bsz
    videos, queries = split.video_dataset(n_clips), split.query_dataset()
    video_share = block_range(len(videos), video_block, d.rank, d.world)
    query_share = block_range(len(queries), data.eval_query_bsz, d.rank, d.world)
    if data.preload != "none":
        dtype = STORAGE_DTYPES[data.preload_dtype]
        where = device if data.preload == "device" else torch.device("cpu")
        pin = where.type == "cpu" and device.type == "cuda"
        return EvalFeed(
            EvalBlocks(device, video_block,
                       packed=pack_videos(videos, dtype, where, video_share, data.num_workers, pin)),
            EvalBlocks(device, data.eval_query_bsz,
                       packed=pack_queries(queries, dtype, where, query_share, data.num_workers, pin)))
    common = {"num_workers": data.num_workers, "pin_memory": device.type == "cuda", "shuffle": False,
              "persistent_workers": persistent and data.num_workers > 0}

    def part(dataset, indices):
        return dataset if len(indices) == len(dataset) else Subset(dataset, indices)

    return EvalFeed(
        EvalBlocks(device, video_block, loader=DataLoader(part(videos, video_share), batch_size=video_block,
                                                         collate_fn=collate_videos, **common)),
        EvalBlocks(device, data.eval_query_bsz, loader=DataLoader(part(queries, query_share),
                                                                batch_size=data.eval_query_bsz,
                                                                collate_fn=collate_queries, **common)))


def make_eval_loaders(split, data: DataOptions, device: torch.device, model: DLDKD):
    """(videos, queries) of a whole split for one process: ``make_eval_feed``'s two block iterables."""
    feed = make_eval_feed(split, data, device, model)
    return feed.videos, feed.queries


def evaluate_split(model: DLDKD, split_name: str, data: DataOptions, fusion: dict, device: torch.device,
                   model_dir: Path, info: dict, save_scores: bool = False, dist: Optional[Dist] = None) -> dict:
    """Evaluate ``model`` on a split, print the tables and write ``<model_dir>/eval_<split>.json``.

    ``dist``: several processes, each evaluating its share (process 0 prints and writes).
    """
    d = dist or Dist()
    try:
        split = build_split(data.root_path, data.collection, data.visual_feature, split_name, use_teacher=False,
                            max_ctx_l=data.max_ctx_l, max_desc_l=data.max_desc_l)
        check_feature_sizes(model, split, model_file(model_dir))
    except (CheckpointError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    feed = make_eval_feed(split, data, device, model, d)
    t0 = time.time()
    scores_path = model_dir / f"scores_{split_name}.npy" if save_scores else None
    res = evaluate(model, feed.videos, feed.queries, device, fusion, data.eval_query_bsz, scores_path, d)
    result = {"split": split_name, "n_queries": res["n_queries"], "n_videos": res["n_videos"],
              "checkpoint_epoch": info["epoch"], "released_checkpoint": info["released"],
              "checkpoint_format": info["format"],
              "t2v": res["t2v"], "v2t": res["v2t"]}
    if not d.is_main:
        return result
    if scores_path is not None:
        with open(model_dir / f"scores_{split_name}_ids.json", "w") as f:
            json.dump({"query_ids": res["cap_ids"], "video_ids": res["video_ids"]}, f)
    atomic_write_json(model_dir / f"eval_{split_name}.json", result)
    print(f"{model_dir} | split {split_name}: {res['n_queries']} queries, {res['n_videos']} videos, "
          f"checkpoint epoch {info['epoch']}, {time.time() - t0:.1f}s" + (f", {d.world} processes" if d.enabled else ""))
    print("text-to-video\n" + metrics.format_table(res["t2v"]))
    print("video-to-text\n" + metrics.format_table(res["v2t"]))
    return result


def check_feature_sizes(model: DLDKD, split, ckpt_path: Path) -> None:
    """The checkpoint's input sizes must match the data's feature sizes."""
    cfg = model.cfg.student_cfg
    if (cfg.visual_input_size, cfg.query_input_size) != (split.visual_dim, split.text_dim):
        raise CheckpointError(
            f"{ckpt_path}: the model expects {cfg.visual_input_size}-d frames and {cfg.query_input_size}-d text, "
            f"the data has {split.visual_dim}-d frames and {split.text_dim}-d text")

