"""Preloaded splits (``--preload``): every item computed once per run, packed into a few tensors, batches gathered.

Shapes: n items of a split (videos, or captions), T their total rows (frames,
or tokens), D a feature size, V videos / Q captions of a batch, L / N its
padded frames / tokens, K clips (``map_size``), Dv / Dq / Dt the student
frame, token and teacher sizes.

A split's items are the datasets' own (``method.data.datasets``): pooled and
normalised in float64, rounded to float32, exactly what the loaders batch.
They are computed once (in ``--num_workers`` processes) and stored in the
storage dtype (float32, float16 or bfloat16; a 16-bit dtype holds each float32
value rounded to nearest), on the CPU (``--preload ram``) or on the GPU
(``--preload device``):

- ``Packed``: variable-length items in one (T + 1, D) tensor; item i is rows
  ``start[i] : start[i] + length[i]``, and the last row is zeros, the padding row;
- student frames and tokens are ``Packed``; the teacher's frames, aligned to
  the student's, share the frames' rows; clips are (n, K, D) tensors and the
  teacher's sentences (n_captions, Dt).

A batch is a few ``index_select`` calls with indices computed on the host by
numpy (no loop over videos or frames) and copied in one transfer. Padded
positions index the zero row, so padding and masks come with the gather. The
batches equal ``collate_train`` / ``collate_videos`` / ``collate_queries`` of
the same items bit for bit (in float32 storage), in the storage dtype; the
feed (``method.data.feed``) casts them to float32 on the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from method.data.collate import SORT_KEYS, empty_train_batch

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRELOAD_MODES = ("none", "ram", "device")


@dataclass
class Packed:
    """Variable-length items (n of them) of D features as one (T + 1, D) tensor whose last row is zeros."""

    rows: torch.Tensor  # (T + 1, D) in the storage dtype
    start: np.ndarray  # (n,) int64 first row of each item
    length: np.ndarray  # (n,) int64 rows of each item

    @classmethod
    def allocate(cls, lengths: Sequence[int], dim: int, dtype: torch.dtype, device: torch.device) -> "Packed":
        length = np.asarray(lengths, dtype=np.int64).reshape(-1)
        start = np.cumsum(length) - length
        rows = storage((int(length.sum()) + 1, dim), dtype, device)
        rows[-1] = 0
        return cls(rows, start, length)

    @property
    def pad_row(self) -> int:
        return self.rows.shape[0] - 1

    def put(self, i: int, values: torch.Tensor, what: str) -> None:
        """Store item ``i`` (its (length[i], D) values, rounded to the storage dtype)."""
        if values.shape[0] != self.length[i]:
            raise ValueError(f"preload: {what} has {values.shape[0]} rows, its store's shapes said {self.length[i]}")
        self.rows[self.start[i]:self.start[i] + self.length[i]].copy_(values)

    def index(self, items: np.ndarray) -> np.ndarray:
        """(B, W) row indices of ``items`` padded to the longest (W rows), padding -> the zero row."""
        length = self.length[items]
        width = int(length.max())
        pos = np.arange(width)
        return np.where(pos[None, :] < length[:, None], self.start[items][:, None] + pos[None, :], self.pad_row)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16, torch.int64: np.int64}


def host_empty(shape: tuple, dtype: torch.dtype, pin: bool = False) -> torch.Tensor:
    """An uninitialised host tensor for a batch: pinned (``pin``, cached by torch's pinned allocator) or numpy's.

    A batch is large (201 MB at TVR sizes in float32). torch's CPU allocator
    returns such blocks to the system and faults every page in again for the
    next batch, which costs more than the gather itself; numpy's large
    allocations ask for huge pages, and pinned blocks are reused.
    """
    if pin:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    out = torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))
    return out.view(dtype) if dtype == torch.bfloat16 else out


def storage(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised storage of a packed split on ``device`` (host: numpy's, see ``host_empty``)."""
    return host_empty(shape, dtype) if device.type == "cpu" else torch.empty(shape, dtype=dtype, device=device)


def gather(rows: torch.Tensor, index: torch.Tensor, pin: bool = False) -> torch.Tensor:
    """rows (T, ...), index (B[, W]) -> (B[, W], ...) in rows' dtype; ``pin``: into pinned host memory."""
    flat = index.reshape(-1)
    out = None
    if rows.device.type == "cpu":
        out = host_empty((flat.numel(), *rows.shape[1:]), rows.dtype, pin)
    return torch.index_select(rows, 0, flat, out=out).view(*index.shape, *rows.shape[1:])


def mask_of(index: torch.Tensor, pad_row: int) -> torch.Tensor:
    """float32 (B, W) mask, 1 where ``index`` is an item's row, 0 on padding."""
    return (index != pad_row).to(torch.float32)


def device_indices(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """int64 arrays as tensors on ``device`` through one copy (pinned and non-blocking on CUDA), shapes kept."""
    flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a in arrays]))
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        flat = flat.to(device)
    out, at = [], 0
    for a in arrays:
        out.append(flat[at:at + a.size].view(a.shape))
        at += a.size
    return out


def _tensor_bytes(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@dataclass
class PackedTrain:
    """A training split, packed: videos in dataset order, their captions video by video (caption-file order)."""

    video_ids: list
    cap_ids: list  # (n_captions,) video by video
    frames: Packed  # (T_frames + 1, Dv)
    tokens: Packed  # (T_tokens + 1, Dq), one item per caption
    first_caption: np.ndarray  # (n,) index of each video's first caption
    n_captions: np.ndarray  # (n,)
    dims: tuple  # collate_train's dims (the empty share's sizes)
    clips: Optional[torch.Tensor] = None  # (n, K, Dv)
    teacher_frames: Optional[torch.Tensor] = None  # (T_frames + 1, Dt), the rows of ``frames``
    teacher_clips: Optional[torch.Tensor] = None  # (n, K, Dt)
    teacher_sentences: Optional[torch.Tensor] = None  # (n_captions, Dt)
    pin: bool = False  # gather into pinned host memory (RAM preload, CUDA training)

    @property
    def device(self) -> torch.device:
        return self.frames.rows.device

    @property
    def nbytes(self) -> int:
        return sum(_tensor_bytes(t) for t in (self.frames.rows, self.tokens.rows, self.clips, self.teacher_frames,
                                               self.teacher_clips, self.teacher_sentences))

    def sort_keys(self, by: str) -> np.ndarray:
        if by not in SORT_KEYS:
            raise ValueError(f"unknown batch order {by!r}; expected one of {SORT_KEYS}")
        return self.n_captions if by == "captions" else self.frames.length

    def plan(self, items: Sequence[int], sort_by: str = "captions") -> dict:
        """The host side of a batch (numpy, no loop over videos or frames): the sorted videos, their
        captions, the labels and the padded row indices of frames and tokens."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        items = items[np.argsort(-self.sort_keys(sort_by)[items], kind="stable")]
        n_caps = self.n_captions[items]
        first = np.cumsum(n_caps) - n_caps  # first caption of each video in the batch
        captions = np.repeat(self.first_caption[items] - first, n_caps) + np.arange(int(n_caps.sum()))
        return {"videos": items, "captions": captions, "labels": np.repeat(np.arange(items.size), n_caps),
                "frames": self.frames.index(items), "tokens": self.tokens.index(captions), "counts": n_caps}

    def batch(self, items: Sequence[int], sort_by: str = "captions") -> tuple[dict, list]:
        """``collate_train`` of the items ``items`` (dataset indices), and each video's caption count.

        Tensors are on the split's device, features in the storage dtype.
        """
        if len(items) == 0:
            return {k: v.to(self.device) if torch.is_tensor(v) else v
                    for k, v in empty_train_batch(*self.dims).items()}, []
        plan = self.plan(items, sort_by)
        f_idx, t_idx, v_idx, c_idx, labels = device_indices(
            [plan["frames"], plan["tokens"], plan["videos"], plan["captions"], plan["labels"]], self.device)
        batch = {
            "video_feat": gather(self.frames.rows, f_idx, self.pin),
            "video_mask": mask_of(f_idx, self.frames.pad_row),
            "query_feat": gather(self.tokens.rows, t_idx, self.pin),
            "query_mask": mask_of(t_idx, self.tokens.pad_row),
            "query_labels": labels,
            "video_ids": [self.video_ids[i] for i in plan["videos"].tolist()],
            "cap_ids": [self.cap_ids[i] for i in plan["captions"].tolist()],
        }
        if self.clips is not None:
            batch["clip_feat"] = gather(self.clips, v_idx, self.pin)
        if self.teacher_frames is not None:
            batch["teacher_video_feat"] = gather(self.teacher_frames, f_idx, self.pin)
            batch["teacher_query_feat"] = gather(self.teacher_sentences, c_idx, self.pin)
            if self.teacher_clips is not None:
                batch["teacher_clip_feat"] = gather(self.teacher_clips, v_idx, self.pin)
        return batch, plan["counts"].tolist()


@dataclass
class PackedVideos:
    """Evaluation videos, packed (a contiguous range of a split's videos)."""

    video_ids: list
    frames: Packed
    clips: Optional[torch.Tensor] = None  # (n, K, Dv)
    pin: bool = False

    @property
    def nbytes(self) -> int:
        return _tensor_bytes(self.frames.rows) + _tensor_bytes(self.clips)

    def __len__(self) -> int:
        return len(self.video_ids)

    def batch(self, items: Sequence[int]) -> dict:
        """``collate_videos`` of the items ``items`` (indices into this range), storage dtype."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        f_idx, v_idx = device_indices([self.frames.index(items), items], self.frames.rows.device)
        batch = {"video_feat": gather(self.frames.rows, f_idx, self.pin),
                 "video_mask": mask_of(f_idx, self.frames.pad_row),
                 "video_ids": [self.video_ids[i] for i in items.tolist()]}
        if self.clips is not None:
            batch["clip_feat"] = gather(self.clips, v_idx, self.pin)
        return batch


@dataclass
class PackedQueries:
    """Evaluation captions, packed (a contiguous range of a split's captions)."""

    cap_ids: list
    tokens: Packed
    pin: bool = False

    @property
    def nbytes(self) -> int:
        return _tensor_bytes(self.tokens.rows)

    def __len__(self) -> int:
        return len(self.cap_ids)

    def batch(self, items: Sequence[int]) -> dict:
        """``collate_queries`` of the items ``items`` (indices into this range), storage dtype."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        (t_idx,) = device_indices([self.tokens.index(items)], self.tokens.rows.device)
        return {"query_feat": gather(self.tokens.rows, t_idx, self.pin),
                "query_mask": mask_of(t_idx, self.tokens.pad_row),
                "cap_ids": [self.cap_ids[i] for i in items.tolist()]}


def computed_items(dataset, num_workers: int, desc: str):
    """The dataset's items in order (as tensors), computed in ``num_workers`` processes.

    The loader has its own generator, so preloading draws nothing from the
    default one (the model's initialisation and the run's draws stay the same).
    """
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator())
    return tqdm(loader, desc=desc, total=len(dataset), leave=False)


def _range(dataset, indices: Optional[range]):
    return dataset if indices is None or len(indices) == len(dataset) else Subset(dataset, indices)


def pack_train(dataset, dtype: torch.dtype, device: torch.device, num_workers: int = 0,
               pin: bool = False) -> PackedTrain:
    """Compute every item of a ``TrainDataset`` once and pack it (see the module docstring).

    ``pin``: batches gathered on the host go to pinned memory (RAM preload for a CUDA run).
    """
    ds = dataset
    n_caps = np.asarray(ds.caption_counts, dtype=np.int64)
    frames = Packed.allocate(ds.frame_counts, ds.video_store.dim, dtype, device)
    tokens = Packed.allocate(ds.token_counts, ds.text_store.dim, dtype, device)
    n, caps = len(ds), int(n_caps.sum())
    clips = teacher_frames = teacher_clips = teacher_sentences = None
    if ds.n_clips is not None:
        clips = storage((n, ds.n_clips, ds.video_store.dim), dtype, device)
    teacher_dim = None
    if ds.use_teacher:
        teacher_dim = ds.teacher_video_store.dim
        teacher_frames = storage((frames.rows.shape[0], teacher_dim), dtype, device)
        teacher_frames[-1] = 0
        teacher_sentences = storage((caps, teacher_dim), dtype, device)
        if ds.teacher_clips:
            teacher_clips = storage((n, ds.n_clips, teacher_dim), dtype, device)
    first = np.cumsum(n_caps) - n_caps
    video_ids, cap_ids = [], []
    for i, item in enumerate(computed_items(ds, num_workers, "preload train")):
        video_ids.append(item["video_id"])
        cap_ids.extend(item["cap_ids"])
        frames.put(i, item["video_feat"], f"video {item['video_id']}")
        for j, (cap, q) in enumerate(zip(item["cap_ids"], item["query_feats"])):
            tokens.put(first[i] + j, q, f"caption {cap}")
        if clips is not None:
            clips[i].copy_(item["clip_feat"])
        if teacher_frames is not None:
            rows = slice(frames.start[i], frames.start[i] + frames.length[i])
            teacher_frames[rows].copy_(item["teacher_video_feat"])
            teacher_sentences[first[i]:first[i] + n_caps[i]].copy_(item["teacher_query_feat"])
            if teacher_clips is not None:
                teacher_clips[i].copy_(item["teacher_clip_feat"])
    dims = (ds.video_store.dim, ds.text_store.dim, teacher_dim, ds.n_clips, ds.teacher_clips)
    return PackedTrain(video_ids, cap_ids, frames, tokens, first, n_caps, dims, clips, teacher_frames,
                       teacher_clips, teacher_sentences, pin)


def pack_videos(dataset, dtype: torch.dtype, device: torch.device, indices: Optional[range] = None,
                num_workers: int = 0, pin: bool = False) -> PackedVideos:
    """Compute the ``VideoDataset`` items ``indices`` (default all) once and pack them."""
    counts = dataset.frame_counts
    indices = range(len(dataset)) if indices is None else indices
    frames = Packed.allocate([counts[i] for i in indices], dataset.video_store.dim, dtype, device)
    clips = None
    if dataset.n_clips is not None:
        clips = storage((len(indices), dataset.n_clips, dataset.video_store.dim), dtype, device)
    video_ids = []
    for i, item in enumerate(computed_items(_range(dataset, indices), num_workers, "preload videos")):
        video_ids.append(item["video_id"])
        frames.put(i, item["video_feat"], f"video {item['video_id']}")
        if clips is not None:
            clips[i].copy_(item["clip_feat"])
    return PackedVideos(video_ids, frames, clips, pin)


def pack_queries(dataset, dtype: torch.dtype, device: torch.device, indices: Optional[range] = None,
                 num_workers: int = 0, pin: bool = False) -> PackedQueries:
    """Compute the ``QueryDataset`` items ``indices`` (default all) once and pack them."""
    indices = range(len(dataset)) if indices is None else indices
    counts = dataset.token_counts
    tokens = Packed.allocate([counts[i] for i in indices], dataset.text_store.dim, dtype, device)
    cap_ids = []
    for i, item in enumerate(computed_items(_range(dataset, indices), num_workers, "preload queries")):
        cap_ids.append(item["cap_id"])
        tokens.put(i, item["query_feat"], f"caption {item['cap_id']}")
    return PackedQueries(cap_ids, tokens, pin)


def packed_bytes(n_videos: int, frames: float, n_captions: int, tokens: float, dims: tuple, dtype: torch.dtype,
                 n_clips: Optional[int] = None, teacher_clips: bool = False) -> dict:
    """Bytes of a packed training split from its sizes: mean ``frames`` per video and ``tokens`` per caption.

    ``dims = (Dv, Dq, Dt or None)``. Returns {part: bytes} and "total".
    """
    dv, dq, dt = dims
    size = torch.empty((), dtype=dtype).element_size()
    total_frames, total_tokens = n_videos * frames, n_captions * tokens
    out = {"frames": total_frames * dv * size, "tokens": total_tokens * dq * size}
    if n_clips:
        out["clips"] = n_videos * n_clips * dv * size
    if dt:
        out["teacher_frames"] = total_frames * dt * size
        out["teacher_sentences"] = n_captions * dt * size
        if n_clips and teacher_clips:
            out["teacher_clips"] = n_videos * n_clips * dt * size
    out = {k: int(v) for k, v in out.items()}
    out["total"] = sum(out.values())
    return out
