"""Datasets: training items (a video with all its captions), evaluation videos and queries."""
import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from method.data.stores import resolve_or_raise
from method.data.transforms import student_frames, student_tokens, teacher_frames, teacher_sentence


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

    ``frame_count_store`` (DL-DKD++'s ``--pool_to_teacher``): a store of the
    teacher's frames; a student video longer than its teacher video is first
    mean-pooled to the teacher's frame count (see ``student_frames``). The
    teacher frames are then aligned to the student's count as always.
    """

    def __init__(self, captions, video_store, text_store, teacher_text_store=None, teacher_video_store=None,
                 max_ctx_l=128, max_desc_l=30, preload=False, frame_count_store=None):
        if (teacher_text_store is None) != (teacher_video_store is None):
            raise ValueError("give both teacher stores (text and video) or neither")
        self.frame_count_store = frame_count_store
        self._keys = list(captions.video_ids)
        self.video2caps = captions.video2caps
        self.video_store, self.text_store = video_store, text_store
        self.teacher_text_store, self.teacher_video_store = teacher_text_store, teacher_video_store
        self.max_ctx_l, self.max_desc_l = max_ctx_l, max_desc_l
        self.text_keys = resolve_or_raise(captions.cap_ids, text_store, "text feature")
        self.use_teacher = teacher_text_store is not None
        if self.use_teacher:
            self.teacher_text_keys = resolve_or_raise(captions.cap_ids, teacher_text_store, "CLIP text feature")
        self._preload(preload, "preload train")

    @property
    def caption_counts(self):
        """Number of captions of each video, in dataset order."""
        return [len(self.video2caps[vid]) for vid in self._keys]

    def _load(self, index):
        vid = self._keys[index]
        cap_ids = self.video2caps[vid]
        n_teacher = None if self.frame_count_store is None else self.frame_count_store.n_frames(vid)
        video = student_frames(self.video_store.get(vid), self.max_ctx_l, n_teacher)
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
        self.text_keys = resolve_or_raise(self._keys, text_store, "text feature")
        self._preload(preload, "preload queries")

    def _load(self, index):
        cap_id = self._keys[index]
        return {"cap_id": cap_id,
                "query_feat": student_tokens(self.text_store.get(self.text_keys[cap_id]), self.max_desc_l)}

