"""A trained model on one split: loading a run, encoding the split once, ranks, top-k and per-frame curves.

The building blocks of ``method.analysis.explore`` and ``method.analysis.report``. Shapes:
Q captions, V videos, L padded frames (<= max_ctx_l), d hidden size, P
(query, video) pairs. Scores are those of evaluation (``method.evaluation.evaluate``):
per-position cosine, video score = max over a level's positions, a branch's
score = the weighted sum of its levels' (GMMFormer family: 0.7 clip + 0.3
frame), fused = weighted sum of the branches'. The per-position curves of
explore and report are those of the student's positional level
(``DLDKD.position_level``: frames, or GMMFormer's 32 clips).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from method.common.cli import device_name, resolve_device
from method.config.flags import fusion_weights
from method.config.run_options import recipe_fallback, resolve_model_dir, run_options
from method.config.settings import data_options
from method.data import (
    DataError,
    H5Store,
    Split,
    build_split,
    clip_features,
    dataset_paths,
    resolve_caption_keys,
    teacher_frames,
    teacher_sentence,
)
from method.evaluation import metrics
from method.evaluation.evaluate import check_feature_sizes, make_eval_loaders, score_chunk
from method.evaluation.evaluate import encode_split as eval_encode_split
from method.models.checkpoint import CheckpointError, load_model, model_file
from method.models.model import DLDKD, frame_dot


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by the tools that load a run and look at one split."""
    p.add_argument("--root_path", default=None,
                   help="data root holding <collection>/TextData and FeatureData (default: the run's opt.json)")
    p.add_argument("--collection", default=None,
                   help="only to find a bare run name in <root_path>/<collection>/results/")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="caption split to look at")
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes for encoding the split")
    p.add_argument("--moments", default=None,
                   help="ground-truth moments file (see method/analysis/moment_file.py; default "
                        "<root_path>/<collection>/TextData/<collection>_moments.txt when it exists)")
    p.add_argument("--moment_threshold", type=float, default=0.5,
                   help="moment rule: the positions (frames, or clips) around the peak scoring at least "
                        "median + THRESHOLD * (peak - median)")
    p.add_argument("--fps", type=float, default=None,
                   help="feature frames per second of the student video features; moments are then also given in "
                        "seconds (e.g. 0.667 for TVR's 1.5 s i3d_resnet clips)")


@dataclass
class Run:
    """A loaded run folder (or released checkpoint): its folder, resolved settings and model."""

    path: Path
    opt: argparse.Namespace
    model: DLDKD
    info: dict  # checkpoint epoch, released flag, model config (see method.models.checkpoint.load_model)
    device: torch.device

    @property
    def fusion(self) -> dict[str, float]:
        return fusion_weights(self.opt)


def load_run(model_dir: str, root_path: str | None = None, collection: str | None = None,
             device: str = "auto", num_workers: int = 0) -> Run:
    """Model and settings of a run folder: the run's opt.json, with the data root and machine from the caller."""
    path = resolve_model_dir(model_dir, root_path, collection)
    opt, stored = run_options(path, {"device": device, "num_workers": num_workers,
                                     **({"root_path": root_path} if root_path else {})})
    try:
        model, info = load_model(model_file(path), stored, fallback=recipe_fallback(opt))
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    dev = resolve_device(device)
    return Run(path, opt, model.to(dev), info, dev)


def open_split(run: Run, split_name: str) -> Split:
    """The split's captions and feature stores, checked against the model's input sizes."""
    opt = run.opt
    try:
        split = build_split(opt.root_path, opt.collection, opt.visual_feature, split_name, use_teacher=False,
                            max_ctx_l=opt.max_ctx_l, max_desc_l=opt.max_desc_l)
        check_feature_sizes(run.model, split, model_file(run.path))
    except (CheckpointError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    return split


@dataclass
class EncodedSplit:
    """Every caption and video of a split, encoded once.

    ``mask`` and ``n_frames`` describe the positions of the curves
    (``curve_level``): a video's frames, or its clips (all valid).
    """

    cap_ids: list[str]
    video_ids: list[str]
    query_video: torch.Tensor  # (Q,) int64 index of each caption's video
    queries: dict[str, torch.Tensor]  # branch -> (Q, d)
    encodings: dict[str, dict[str, torch.Tensor]]  # branch -> the student's other query encodings (Q, ...)
    positions: dict[str, dict[str, torch.Tensor]]  # branch -> level -> (V, P, d) unit, uncounted = first position
    mask: torch.Tensor  # (V, P) 1 = a valid position of the curve level
    curve_level: str

    @property
    def n_frames(self) -> torch.Tensor:
        """(V,) valid positions of each video on the curve level's time axis."""
        return self.mask.sum(1).long()


def _lay_blocks(blocks: list, n_pad: int) -> torch.Tensor:
    """Blocks (Vb, Pb, d) into one (V, n_pad, d) tensor; extra positions repeat each video's first position."""
    return torch.cat([torch.cat([b, b[:, :1].expand(-1, n_pad - b.shape[1], -1)], 1) for b in blocks])


def encode_split(run: Run, split: Split) -> EncodedSplit:
    """Encode all videos and captions of ``split`` (memory: V x P x d floats per branch and level).

    ``method.evaluation.evaluate.encode_split`` encodes them in loader blocks; here the
    blocks are laid into one (V, P, d) tensor per branch and level, each
    block's extra positions holding its videos' first position, as within a block.
    """
    model = run.model
    videos, queries = make_eval_loaders(split, data_options(run.opt), run.device, model)
    blocks, masks, video_ids, encoded, cap_ids, encodings = eval_encode_split(model, videos, queries, run.device)
    level = model.position_level
    curve_masks = [model.score_masks(m)[level] if level == "clip" else m for m in masks]
    n_pad = {lv: max(b[model.branch_names[0]][lv].shape[1] for b in blocks) for lv in model.levels}
    positions = {name: {lv: _lay_blocks([b[name][lv] for b in blocks], n_pad[lv]) for lv in model.levels}
                 for name in model.branch_names}
    width = n_pad[level]
    mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in curve_masks])
    index = {v: i for i, v in enumerate(video_ids)}
    query_video = torch.tensor([index[c.split("#")[0]] for c in cap_ids], device=run.device)
    return EncodedSplit(cap_ids, video_ids, query_video, encoded, encodings, positions, mask, level)


@torch.no_grad()
def video_scores(run: Run, enc: EncodedSplit, rows) -> dict[str, torch.Tensor]:
    """Video-level scores (R, V) of the caption rows ``rows`` (a slice or index tensor): every named score, by the
    evaluator's ``score_chunk`` on the laid-out split as one block (each level through the student's
    ``eval_level_scores``; RAL's word-frame score reads the caption tokens)."""
    return score_chunk(enc.queries, [enc.positions], rows, run.model, run.fusion, enc.encodings)


def all_ranks(run: Run, enc: EncodedSplit, chunk: int = 500) -> dict[str, torch.Tensor]:
    """1-based rank (Q,) of each caption's own video, every named score (pessimistic ties, as in eval)."""
    parts: dict[str, list] = {}
    for start in range(0, len(enc.cap_ids), chunk):
        rows = slice(start, start + chunk)
        for name, s in video_scores(run, enc, rows).items():
            parts.setdefault(name, []).append(metrics.t2v_ranks(s, enc.query_video[rows]))
    return {name: torch.cat(p) for name, p in parts.items()}


@torch.no_grad()
def pair_curves(run: Run, enc: EncodedSplit, q_idx: torch.Tensor, v_idx: torch.Tensor, chunk: int = 256,
                level: str | None = None) -> dict[str, torch.Tensor]:
    """Per-position cosine curves (P, L) of captions ``q_idx`` (P,) on videos ``v_idx`` (P,), per branch and fused.

    The curves are those of ``level`` (default the curve level: frames, or
    GMMFormer's clips); the fused curve weights the branches' curves like the
    fused video score. Positions beyond a video's length hold its first
    position's score: mask them with ``enc.mask[v_idx]`` (curve level).
    """
    level = level or enc.curve_level
    out: dict[str, list] = {name: [] for name in enc.queries}
    for start in range(0, len(q_idx), chunk):
        q, v = q_idx[start:start + chunk], v_idx[start:start + chunk]
        for name, queries in enc.queries.items():
            unit = F.normalize(queries[q], dim=-1, eps=1e-12)
            out[name].append(torch.bmm(enc.positions[name][level][v], unit[:, :, None]).squeeze(-1))
    width = next(iter(enc.positions.values()))[level].shape[1]
    curves = {name: torch.cat(c) if c else torch.zeros(0, width, device=run.device) for name, c in out.items()}
    curves["fused"] = run.model.fuse(curves, run.fusion)
    return curves


def stored_frame_counts(split: Split, video_ids: list[str]) -> np.ndarray:
    """(V,) frames of each video as stored in the feature files (before pooling to max_ctx_l)."""
    return np.array([split.video_store.n_frames(v) for v in video_ids], dtype=np.int64)


class TeacherCurves:
    """The teacher's per-position scores of a caption on a video, where the run's teacher files exist.

    Cosine of the CLIP sentence vector with the CLIP frames on the student's
    positions, as the distillation targets of training
    (``method.models.teacher.PrecomputedTeacher``): the frames aligned to the
    student's frames, or mean-pooled to its clips from the teacher's stored
    frames (``clip_features``, not normalised), as ``--kd_level clip`` pools them.
    """

    def __init__(self, opt: argparse.Namespace):
        paths = dataset_paths(opt.root_path, opt.collection, opt.visual_feature,
                              opt.teacher_video_file, opt.teacher_query_file)
        self.available = Path(paths.teacher_text_feat).is_file() and Path(paths.teacher_video_feat).is_file()
        self.max_ctx_l = opt.max_ctx_l
        if self.available:
            self.text = H5Store(paths.teacher_text_feat)
            self.video = H5Store(paths.teacher_video_feat)

    def curve(self, cap_id: str, video_id: str, n: int, level: str = "frame") -> np.ndarray | None:
        """(n,) teacher cosine per student position of ``level`` ("frame": n frames, "clip": n clips), or None
        without teacher features for this pair."""
        if not self.available or video_id not in self.video:
            return None
        keys = resolve_caption_keys([cap_id], self.text)[0]
        if cap_id not in keys:
            return None
        sentence = torch.from_numpy(teacher_sentence(self.text.get(keys[cap_id]), self.text.path))
        raw = self.video.get(video_id)
        if level == "clip":
            positions = clip_features(raw, n, normalize=False)
        else:
            positions = teacher_frames(raw, n, self.max_ctx_l)
        unit = F.normalize(torch.from_numpy(positions), dim=-1, eps=1e-12)
        return frame_dot(F.normalize(sentence[None], dim=-1, eps=1e-12), unit[None])[0, 0].numpy()
