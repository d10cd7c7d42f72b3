"""Collate functions: padded tensors and masks from dataset items."""
import numpy as np
import torch

SORT_KEYS = ("captions", "frames")  # how a training batch orders its videos (DL-DKD / GMMFormer loaders)


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


def sort_key(item, by):
    """The descending sort key of a training item: its caption count (DL-DKD) or frame count (GMMFormer)."""
    if by == "captions":
        return len(item["cap_ids"])
    if by == "frames":
        return len(item["video_feat"])
    raise ValueError(f"unknown batch order {by!r}; expected one of {SORT_KEYS}")


def _stack(items, key):
    return torch.from_numpy(np.stack([it[key] for it in items]).astype(np.float32, copy=False))


def collate_train(items, dims=None, sort_by="captions"):
    """Training batch from TrainDataset items.

    Videos are stably sorted by ``sort_by`` ("captions": caption count, the
    DL-DKD loader; "frames": frame count after pooling, the GMMFormer
    loader), descending; captions are concatenated video by video in
    caption-file order.

    Returns dict:
        video_feat float32 (V, L, Dv), video_mask float32 (V, L) (1 = valid),
        query_feat float32 (Q, N, Dq), query_mask float32 (Q, N),
        query_labels int64 (Q,) (index of each caption's video after the sort),
        video_ids list of V str, cap_ids list of Q str; with the teacher:
        teacher_video_feat float32 (V, L, Dt), teacher_query_feat float32 (Q, Dt);
        with clips: clip_feat float32 (V, K, Dv) (and teacher_clip_feat (V, K, Dt)).

    ``dims = (Dv, Dq, Dt or None[, K or None[, teacher clips]])`` makes an empty
    ``items`` list (a process's empty share of a small last batch) a batch of
    zero videos with L = N = 1.
    """
    if not items:
        if dims is None:
            raise ValueError("collate_train got no items and no dims for an empty batch")
        return empty_train_batch(*dims)
    order = sorted(range(len(items)), key=lambda i: -sort_key(items[i], sort_by))  # sorted() is stable
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
    if "clip_feat" in items[0]:
        batch["clip_feat"] = _stack(items, "clip_feat")
    if "teacher_video_feat" in items[0]:
        teacher_video, teacher_mask = pad_sequences([it["teacher_video_feat"] for it in items])
        if not torch.equal(teacher_mask, video_mask):
            raise ValueError("teacher frames must be aligned to the student's frame counts")
        batch["teacher_video_feat"] = teacher_video
        batch["teacher_query_feat"] = torch.from_numpy(
            np.concatenate([it["teacher_query_feat"] for it in items]).astype(np.float32, copy=False))
        if "teacher_clip_feat" in items[0]:
            batch["teacher_clip_feat"] = _stack(items, "teacher_clip_feat")
    return batch


def collate_videos(items):
    """VideoDataset items -> dict(video_feat float32 (V, L, Dv), video_mask float32 (V, L), video_ids
    [, clip_feat float32 (V, K, Dv)])."""
    video_feat, video_mask = pad_sequences([it["video_feat"] for it in items])
    batch = {"video_feat": video_feat, "video_mask": video_mask, "video_ids": [it["video_id"] for it in items]}
    if "clip_feat" in items[0]:
        batch["clip_feat"] = _stack(items, "clip_feat")
    return batch


def collate_queries(items):
    """QueryDataset items -> dict(query_feat float32 (Q, N, Dq), query_mask float32 (Q, N), cap_ids)."""
    query_feat, query_mask = pad_sequences([it["query_feat"] for it in items])
    return {"query_feat": query_feat, "query_mask": query_mask, "cap_ids": [it["cap_id"] for it in items]}


def empty_train_batch(visual_dim, text_dim, teacher_dim=None, n_clips=None, teacher_clips=False):
    """A training batch of zero videos and captions (see ``collate_train``)."""
    batch = {"video_feat": torch.zeros(0, 1, visual_dim), "video_mask": torch.zeros(0, 1),
             "query_feat": torch.zeros(0, 1, text_dim), "query_mask": torch.zeros(0, 1),
             "query_labels": torch.zeros(0, dtype=torch.long), "video_ids": [], "cap_ids": []}
    if n_clips is not None:
        batch["clip_feat"] = torch.zeros(0, n_clips, visual_dim)
    if teacher_dim is not None:
        batch["teacher_video_feat"] = torch.zeros(0, 1, teacher_dim)
        batch["teacher_query_feat"] = torch.zeros(0, teacher_dim)
        if teacher_clips:
            batch["teacher_clip_feat"] = torch.zeros(0, n_clips, teacher_dim)
    return batch
