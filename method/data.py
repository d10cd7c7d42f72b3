"""Caption files, feature stores, input transforms, datasets and collate functions.

Shapes: V videos, Q captions, L padded frames (<= max_ctx_l), N padded tokens
(<= max_desc_l), Dv student frame dim, Dq text dim, Dt teacher (CLIP) dim.

On-disk layout (DATA_AND_CHECKPOINTS.md), under `<root_path>/<collection>/`::

    TextData/<collection>{train,val,test}.caption.txt
    TextData/roberta_<collection>_query_feat.hdf5          cap_id -> (n_tokens, Dq)
    TextData/clip_ViT_B_32_<collection>_query_feat.hdf5    cap_id -> (Dt,) or (1, Dt)
    FeatureData/<visual_feature>/                          BigFile, video_id -> (n, Dv)
    FeatureData/<visual_feature>.hdf5                      (used when the folder is absent)
    FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5   video_id -> (n, Dt)

Typical use (train.py / eval.py)::

    split = build_split(root, "tvr", "i3d_resnet", "train", use_teacher=True,
                        max_ctx_l=128, max_desc_l=30)
    loader = DataLoader(split.train_dataset(), batch_size=128, shuffle=True,
                        collate_fn=collate_train, worker_init_fn=seed_worker)
    dims = split.visual_dim, split.text_dim, split.teacher_dim
"""

import os
import random
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from method.bigfile import BigFile, DataError

__all__ = [
    "DataError", "Captions", "read_caption_file", "DatasetPaths", "dataset_paths",
    "H5Store", "open_video_store", "caption_key_candidates", "resolve_caption_keys",
    "uniform_pool", "reduce_frames", "l2_normalize", "align_frames",
    "student_frames", "teacher_frames", "student_tokens", "teacher_sentence",
    "TrainDataset", "VideoDataset", "QueryDataset",
    "pad_sequences", "collate_train", "collate_videos", "collate_queries",
    "check_split", "Split", "build_split", "seed_worker",
]

SPLITS = ("train", "val", "test")
N_SHOWN = 5  # missing keys quoted in an error message


# ----------------------------------------------------------------------------
# Caption files
# ----------------------------------------------------------------------------

@dataclass
class Captions:
    """Content of one `<collection><split>.caption.txt`.

    Attributes:
        path: the caption file.
        cap_ids: caption ids in file order.
        captions: cap_id -> caption text.
        video_ids: ordered set of `cap_id.split('#')[0]`, first-appearance order.
        video2caps: video_id -> its cap_ids in file order.
    """

    path: str
    cap_ids: list
    captions: dict
    video_ids: list
    video2caps: dict

    def __len__(self):
        return len(self.cap_ids)


def _require_file(path, what):
    """Raise a DataError naming `path` and what it should contain when it is absent."""
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}: it should contain {what}")


def read_caption_file(path):
    """Read a caption file, one `<cap_id> <caption text>` a line (blank lines skipped).

    Returns:
        Captions. Raises DataError on a malformed line or a repeated cap_id.
    """
    _require_file(path, "one caption a line, '<cap_id> <caption text>'")
    cap_ids, captions, video2caps = [], {}, {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise DataError(f"{path}, line {line_no}: expected '<cap_id> <caption text>', got {line[:80]!r}")
            cap_id, text = parts
            if cap_id in captions:
                raise DataError(f"{path}, line {line_no}: caption id {cap_id!r} appears twice")
            cap_ids.append(cap_id)
            captions[cap_id] = text
            video2caps.setdefault(cap_id.split("#")[0], []).append(cap_id)
    return Captions(path, cap_ids, captions, list(video2caps), video2caps)


# ----------------------------------------------------------------------------
# Paths and feature stores
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetPaths:
    """Released file paths of one collection (see the module docstring)."""

    collection_dir: str
    captions: dict            # split -> caption file
    text_feat: str            # RoBERTa token features
    teacher_text_feat: str    # CLIP sentence features
    video_bigfile: str        # student frames, BigFile folder
    video_hdf5: str           # student frames, HDF5 alternative
    teacher_video_feat: str   # CLIP frame features


def dataset_paths(root_path, collection, visual_feature, teacher_video_file=None, teacher_query_file=None):
    """Paths of the released files of `<root_path>/<collection>`.

    `teacher_video_file` (relative to FeatureData/) and `teacher_query_file`
    (relative to TextData/) replace the default CLIP file names; an absolute
    path is used as is.
    """
    base = os.path.join(root_path, collection)
    text_dir = os.path.join(base, "TextData")
    feat_dir = os.path.join(base, "FeatureData")
    return DatasetPaths(
        collection_dir=base,
        captions={s: os.path.join(text_dir, f"{collection}{s}.caption.txt") for s in SPLITS},
        text_feat=os.path.join(text_dir, f"roberta_{collection}_query_feat.hdf5"),
        teacher_text_feat=os.path.join(
            text_dir, teacher_query_file or f"clip_ViT_B_32_{collection}_query_feat.hdf5"),
        video_bigfile=os.path.join(feat_dir, visual_feature),
        video_hdf5=os.path.join(feat_dir, f"{visual_feature}.hdf5"),
        teacher_video_feat=os.path.join(
            feat_dir, teacher_video_file or f"new_clip_vit_32_{collection}_vid_features.hdf5"),
    )


class H5Store:
    """Read-only HDF5 feature store, key -> float32 array.

    The file is opened lazily in each process (the pid is remembered), so an
    h5py handle is never shared between forked DataLoader workers.
    """

    def __init__(self, path, what="an HDF5 file of features, key -> float32 array"):
        _require_file(path, what)
        self.path = path
        self._file = None
        self._pid = None
        self._keys = None

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = state["_pid"] = None
        return state

    def keys(self):
        """Set of all keys (cached)."""
        if self._keys is None:
            self._keys = set(self._handle().keys())
        return self._keys

    def __contains__(self, key):
        return key in self.keys()

    def get(self, key):
        """Array stored under `key` as float32 ndarray."""
        try:
            data = self._handle()[key]
        except KeyError:
            raise DataError(f"{self.path}: no key {key!r}") from None
        return np.asarray(data[()], dtype=np.float32)

    @property
    def dim(self):
        """Last dimension of the first stored array (the feature size)."""
        handle = self._handle()
        first = next(iter(handle), None)
        if first is None:
            raise DataError(f"{self.path}: the file holds no features")
        return int(handle[first].shape[-1])


def open_video_store(paths):
    """Student frame store: the BigFile folder if present, else the HDF5 file."""
    if os.path.isdir(paths.video_bigfile):
        return BigFile(paths.video_bigfile)
    if os.path.isfile(paths.video_hdf5):
        return H5Store(paths.video_hdf5)
    raise DataError(
        f"missing student frame features: neither the BigFile folder {paths.video_bigfile} "
        f"(feature.bin, shape.txt, id.txt, video2frames.txt) nor the HDF5 file {paths.video_hdf5} "
        f"(video_id -> (n_frames, dim)) exists")


def caption_key_candidates(cap_id):
    """Keys under which a caption may be stored: itself, then its other form.

    `<vid>#enc#<n>` also tries `<vid>#<n>`; `<vid>#<n>` also tries `<vid>#enc#<n>`.
    """
    if "#enc#" in cap_id:
        return [cap_id, cap_id.replace("#enc#", "#")]
    vid, sep, num = cap_id.rpartition("#")
    if sep and num.isdigit():
        return [cap_id, f"{vid}#enc#{num}"]
    return [cap_id]


def resolve_caption_keys(cap_ids, store):
    """Find each caption's key in `store` once.

    Returns:
        (dict cap_id -> key, list of cap_ids with no key, in input order)
    """
    keys = store.keys()
    mapping, missing = {}, []
    for cap_id in cap_ids:
        key = next((k for k in caption_key_candidates(cap_id) if k in keys), None)
        if key is None:
            missing.append(cap_id)
        else:
            mapping[cap_id] = key
    return mapping, missing


def _missing_message(path, missing, total, kind, content):
    shown = ", ".join(repr(k) for k in missing[:N_SHOWN])
    return (f"{path}: no {content} for {len(missing)} of {total} {kind}; "
            f"first missing: {shown}")


def _resolve_or_raise(cap_ids, store, content):
    mapping, missing = resolve_caption_keys(cap_ids, store)
    if missing:
        raise DataError(_missing_message(store.path, missing, len(cap_ids), "captions", content))
    return mapping


# ----------------------------------------------------------------------------
# Transforms (numpy, vectorised)
# ----------------------------------------------------------------------------

def uniform_pool(x, n_out):
    """Uniform segment mean pooling, (n, D) -> (n_out, D).

    Boundaries b = round(linspace(0, n, n_out + 1)), each clipped to n - 1
    (so frame n - 1 is never averaged in); out[i] = mean(x[b[i]:b[i+1]]) when
    b[i] < b[i+1], else x[b[i]]. Computed in float64 with a cumulative sum;
    returned in x's floating dtype (float64 for non-float input).
    """
    x = np.asarray(x)
    n = x.shape[0]
    if n == 0:
        raise ValueError("uniform_pool needs at least one frame")
    bounds = np.minimum(np.round(np.linspace(0, n, n_out + 1)).astype(np.int64), n - 1)
    start, stop = bounds[:-1], bounds[1:]
    counts = stop - start
    x64 = x.astype(np.float64, copy=False)
    csum = np.zeros((n + 1,) + x.shape[1:], dtype=np.float64)
    np.cumsum(x64, axis=0, out=csum[1:])
    safe_counts = np.maximum(counts, 1).reshape((-1,) + (1,) * (x.ndim - 1))
    means = (csum[stop] - csum[start]) / safe_counts
    single = (counts <= 0).reshape(safe_counts.shape)
    out = np.where(single, x64[start], means)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return out.astype(out_dtype, copy=False)


def reduce_frames(x, max_len):
    """(n, D) -> x when n <= max_len, else uniform_pool(x, max_len)."""
    return x if len(x) <= max_len else uniform_pool(x, max_len)


def l2_normalize(x, eps=1e-5):
    """x / (||x|| + eps) along the last axis; keeps x's dtype."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def align_frames(teacher, n):
    """Resample teacher frames (nt, Dt) onto the student's n frames -> (n, Dt).

    Identity when nt == n, uniform_pool when nt > n, else frame
    floor((i + 0.5) * nt / n) for output i (nearest centre, repeats frames).
    """
    nt = len(teacher)
    if nt == n:
        return teacher
    if nt > n:
        return uniform_pool(teacher, n)
    idx = ((2 * np.arange(n) + 1) * nt) // (2 * n)
    return teacher[idx]


def student_frames(x, max_ctx_l):
    """Student frames (n, Dv) -> (min(n, max_ctx_l), Dv) float32: reduced, then
    L2-normalised, in float64 as the released code does."""
    return l2_normalize(reduce_frames(np.asarray(x, dtype=np.float64), max_ctx_l)).astype(np.float32)


def teacher_frames(x, n_student, max_ctx_l):
    """Teacher frames (nt, Dt) -> (n_student, Dt) float32: reduced to max_ctx_l,
    not normalised, then aligned to the student's final frame count."""
    reduced = reduce_frames(np.asarray(x, dtype=np.float64), max_ctx_l)
    return align_frames(reduced, n_student).astype(np.float32)


def student_tokens(x, max_desc_l):
    """RoBERTa tokens (n_tokens, Dq) -> (min(n_tokens, max_desc_l), Dq) float32,
    each token L2-normalised (per token, so truncating first gives the same values)."""
    return l2_normalize(np.asarray(x, dtype=np.float32)[:max_desc_l])


def teacher_sentence(x, source="teacher text features"):
    """CLIP sentence vector (Dt,) or (1, Dt) -> (Dt,) float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise DataError(f"{source}: expected a (Dt,) or (1, Dt) sentence vector, got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------

class _Items(Dataset):
    """Base: items built by `_load(i)`, optionally all preloaded into RAM."""

    def __len__(self):
        return len(self._keys)

    def _preload(self, preload, desc):
        self._cache = [self._load(i) for i in tqdm(range(len(self)), desc=desc)] if preload else None

    def __getitem__(self, index):
        return self._cache[index] if self._cache is not None else self._load(index)


class TrainDataset(_Items):
    """Training items, one video with all of its captions.

    Item dict:
        video_id: str; cap_ids: list of k str (caption-file order)
        video_feat: float32 (L_i, Dv), L_i = min(n_frames, max_ctx_l), L2-normalised
        query_feats: list of k float32 (n_j, Dq), n_j <= max_desc_l, per-token normalised
        teacher_video_feat: float32 (L_i, Dt)   (teacher on)
        teacher_query_feat: float32 (k, Dt)     (teacher on)
    The teacher is on when both teacher stores are given.
    """

    def __init__(self, captions, video_store, text_store, teacher_text_store=None, teacher_video_store=None,
                 max_ctx_l=128, max_desc_l=30, preload=False):
        if (teacher_text_store is None) != (teacher_video_store is None):
            raise ValueError("give both teacher stores (text and video) or neither")
        self._keys = list(captions.video_ids)
        self.video2caps = captions.video2caps
        self.video_store, self.text_store = video_store, text_store
        self.teacher_text_store, self.teacher_video_store = teacher_text_store, teacher_video_store
        self.max_ctx_l, self.max_desc_l = max_ctx_l, max_desc_l
        self.text_keys = _resolve_or_raise(captions.cap_ids, text_store, "text feature")
        self.use_teacher = teacher_text_store is not None
        if self.use_teacher:
            self.teacher_text_keys = _resolve_or_raise(captions.cap_ids, teacher_text_store, "CLIP text feature")
        self._preload(preload, "preload train")

    def _load(self, index):
        vid = self._keys[index]
        cap_ids = self.video2caps[vid]
        video = student_frames(self.video_store.get(vid), self.max_ctx_l)
        item = {
            "video_id": vid,
            "cap_ids": list(cap_ids),
            "video_feat": video,
            "query_feats": [student_tokens(self.text_store.get(self.text_keys[c]), self.max_desc_l)
                            for c in cap_ids],
        }
        if self.use_teacher:
            item["teacher_video_feat"] = teacher_frames(self.teacher_video_store.get(vid), len(video),
                                                        self.max_ctx_l)
            item["teacher_query_feat"] = np.stack(
                [teacher_sentence(self.teacher_text_store.get(self.teacher_text_keys[c]),
                                  self.teacher_text_store.path) for c in cap_ids])
        return item


class VideoDataset(_Items):
    """Evaluation videos, one a item: dict(video_id, video_feat float32 (L_i, Dv))."""

    def __init__(self, captions, video_store, max_ctx_l=128, preload=False):
        self._keys = list(captions.video_ids)
        self.video_store, self.max_ctx_l = video_store, max_ctx_l
        self._preload(preload, "preload videos")

    def _load(self, index):
        vid = self._keys[index]
        return {"video_id": vid, "video_feat": student_frames(self.video_store.get(vid), self.max_ctx_l)}


class QueryDataset(_Items):
    """Evaluation captions, one a item: dict(cap_id, query_feat float32 (n_j, Dq))."""

    def __init__(self, captions, text_store, max_desc_l=30, preload=False):
        self._keys = list(captions.cap_ids)
        self.text_store, self.max_desc_l = text_store, max_desc_l
        self.text_keys = _resolve_or_raise(self._keys, text_store, "text feature")
        self._preload(preload, "preload queries")

    def _load(self, index):
        cap_id = self._keys[index]
        return {"cap_id": cap_id,
                "query_feat": student_tokens(self.text_store.get(self.text_keys[cap_id]), self.max_desc_l)}


# ----------------------------------------------------------------------------
# Collate functions
# ----------------------------------------------------------------------------

def pad_sequences(arrays):
    """List of B arrays (n_i, D) -> (padded float32 (B, max n_i, D), mask float32 (B, max n_i)).

    mask is 1 on valid positions, 0 on padding (which is zero).
    """
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    max_len = int(lengths.max())
    padded = np.empty((len(arrays), max_len, arrays[0].shape[-1]), dtype=np.float32)
    for i, a in enumerate(arrays):  # one copy per item (each a whole (n_i, D) block)
        padded[i, :len(a)] = a
        padded[i, len(a):] = 0.0
    mask = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.float32)
    return torch.from_numpy(padded), torch.from_numpy(mask)


def collate_train(items):
    """Training batch from TrainDataset items.

    Videos are stably sorted by caption count, descending; captions are
    concatenated video by video in caption-file order.

    Returns dict:
        video_feat float32 (V, L, Dv), video_mask float32 (V, L) (1 = valid),
        query_feat float32 (Q, N, Dq), query_mask float32 (Q, N),
        query_labels int64 (Q,) (index of each caption's video after the sort),
        video_ids list of V str, cap_ids list of Q str, and with the teacher:
        teacher_video_feat float32 (V, L, Dt), teacher_query_feat float32 (Q, Dt).
    """
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["cap_ids"]))  # sorted() is stable
    items = [items[i] for i in order]
    video_feat, video_mask = pad_sequences([it["video_feat"] for it in items])
    query_feat, query_mask = pad_sequences([q for it in items for q in it["query_feats"]])
    n_caps = [len(it["cap_ids"]) for it in items]
    batch = {
        "video_feat": video_feat,
        "video_mask": video_mask,
        "query_feat": query_feat,
        "query_mask": query_mask,
        "query_labels": torch.from_numpy(np.repeat(np.arange(len(items), dtype=np.int64), n_caps)),
        "video_ids": [it["video_id"] for it in items],
        "cap_ids": [c for it in items for c in it["cap_ids"]],
    }
    if "teacher_video_feat" in items[0]:
        teacher_video, teacher_mask = pad_sequences([it["teacher_video_feat"] for it in items])
        if not torch.equal(teacher_mask, video_mask):
            raise ValueError("teacher frames must be aligned to the student's frame counts")
        batch["teacher_video_feat"] = teacher_video
        batch["teacher_query_feat"] = torch.from_numpy(
            np.concatenate([it["teacher_query_feat"] for it in items]).astype(np.float32, copy=False))
    return batch


def collate_videos(items):
    """VideoDataset items -> dict(video_feat float32 (V, L, Dv), video_mask float32 (V, L), video_ids)."""
    video_feat, video_mask = pad_sequences([it["video_feat"] for it in items])
    return {"video_feat": video_feat, "video_mask": video_mask, "video_ids": [it["video_id"] for it in items]}


def collate_queries(items):
    """QueryDataset items -> dict(query_feat float32 (Q, N, Dq), query_mask float32 (Q, N), cap_ids)."""
    query_feat, query_mask = pad_sequences([it["query_feat"] for it in items])
    return {"query_feat": query_feat, "query_mask": query_mask, "cap_ids": [it["cap_id"] for it in items]}


# ----------------------------------------------------------------------------
# Start-up check and split builder
# ----------------------------------------------------------------------------

def _missing_videos(video_ids, store):
    """Video ids with no frames in `store` (absent, or an empty BigFile frame list)."""
    keys = store.keys()
    if isinstance(store, BigFile):
        return [v for v in video_ids if v not in keys or store.n_frames(v) == 0]
    return [v for v in video_ids if v not in keys]


def check_split(captions, video_store, text_store, teacher_text_store=None, teacher_video_store=None):
    """Verify before training that every caption and video of a split has its features.

    Checks: the split has captions; every caption has a text feature (and a
    CLIP text feature when the teacher is on); every video has student frames
    (and teacher frames when on); the two teacher files have the same dim.
    Raises one DataError listing, per file, how many keys are missing in total
    and the first few of them.
    """
    if not captions.cap_ids:
        raise DataError(f"{captions.path}: the split has no captions")
    problems = []
    n_caps, n_videos = len(captions.cap_ids), len(captions.video_ids)
    text_checks = [(text_store, "RoBERTa text feature")]
    video_checks = [(video_store, "student frame features")]
    if teacher_text_store is not None:
        text_checks.append((teacher_text_store, "CLIP text feature"))
    if teacher_video_store is not None:
        video_checks.append((teacher_video_store, "CLIP frame features"))
    for store, content in text_checks:
        missing = resolve_caption_keys(captions.cap_ids, store)[1]
        if missing:
            problems.append(_missing_message(store.path, missing, n_caps, "captions", content))
    for store, content in video_checks:
        missing = _missing_videos(captions.video_ids, store)
        if missing:
            problems.append(_missing_message(store.path, missing, n_videos, "videos", content))
    if not problems and teacher_text_store is not None and teacher_video_store is not None:
        if teacher_text_store.dim != teacher_video_store.dim:
            problems.append(f"teacher dims differ: {teacher_text_store.path} has {teacher_text_store.dim}, "
                            f"{teacher_video_store.path} has {teacher_video_store.dim}")
    if problems:
        raise DataError(f"data check failed for {captions.path}:\n  " + "\n  ".join(problems))


@dataclass
class Split:
    """One split of a collection: its captions, stores and dataset factories.

    The teacher stores are None when the teacher is off.
    """

    name: str
    paths: DatasetPaths
    captions: Captions
    video_store: object            # BigFile or H5Store
    text_store: H5Store
    teacher_text_store: object     # H5Store or None
    teacher_video_store: object    # H5Store or None
    max_ctx_l: int
    max_desc_l: int
    preload: bool = False

    @property
    def visual_dim(self):
        """Student frame dim Dv."""
        return self.video_store.dim

    @property
    def text_dim(self):
        """Student token dim Dq."""
        return self.text_store.dim

    @property
    def teacher_dim(self):
        """Teacher dim Dt, or None when the teacher is off."""
        return None if self.teacher_video_store is None else self.teacher_video_store.dim

    def train_dataset(self):
        """TrainDataset over this split (with the teacher when it is on)."""
        return TrainDataset(self.captions, self.video_store, self.text_store, self.teacher_text_store,
                            self.teacher_video_store, self.max_ctx_l, self.max_desc_l, self.preload)

    def video_dataset(self):
        """VideoDataset over this split's videos."""
        return VideoDataset(self.captions, self.video_store, self.max_ctx_l, self.preload)

    def query_dataset(self):
        """QueryDataset over this split's captions."""
        return QueryDataset(self.captions, self.text_store, self.max_desc_l, self.preload)


def build_split(root_path, collection, visual_feature, split, use_teacher, max_ctx_l, max_desc_l,
                preload=False, teacher_video_file=None, teacher_query_file=None, check=True):
    """Open one split: read its captions, open the stores, and (check=True) run check_split.

    Missing files raise DataError naming the path and what it should contain.
    The teacher files are opened only when `use_teacher` (evaluation splits
    do not need them).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    paths = dataset_paths(root_path, collection, visual_feature, teacher_video_file, teacher_query_file)
    captions = read_caption_file(paths.captions[split])
    video_store = open_video_store(paths)
    text_store = H5Store(paths.text_feat, "RoBERTa token features, cap_id -> (n_tokens, Dq)")
    teacher_text_store = teacher_video_store = None
    if use_teacher:
        teacher_text_store = H5Store(paths.teacher_text_feat, "CLIP sentence features, cap_id -> (Dt,) or (1, Dt)")
        teacher_video_store = H5Store(paths.teacher_video_feat, "CLIP frame features, video_id -> (n_frames, Dt)")
    if check:
        check_split(captions, video_store, text_store, teacher_text_store, teacher_video_store)
    return Split(split, paths, captions, video_store, text_store, teacher_text_store, teacher_video_store,
                 max_ctx_l, max_desc_l, preload)


def seed_worker(worker_id):
    """DataLoader worker_init_fn: seed numpy and random from torch's per-worker seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
