"""Datasets: training items (a video with all its captions), evaluation videos and queries.

Each item is computed from the feature files when it is read; ``method.data.preload``
computes every item of a split once and packs them (``--preload``). The
``frame_counts`` / ``token_counts`` properties give the items' lengths from the
stores' shapes, without reading the features.
"""
import numpy as np
from torch.utils.data import Dataset

from method.data.stores import resolve_or_raise
from method.data.transforms import clip_features, student_frames, student_tokens, teacher_frames, teacher_sentence


class _Items(Dataset):
    """Base: items built by `_load(i)`."""

    def __len__(self):
        return len(self._keys)

    def __getitem__(self, index):
        return self._load(index)


def _token_counts(cap_ids, text_store, text_keys, max_desc_l):
    """Tokens of each caption after truncation to ``max_desc_l``, from the store's shapes."""
    return [min(text_store.n_frames(text_keys[c]), max_desc_l) for c in cap_ids]


class TrainDataset(_Items):
    """Training items, one video with all of its captions.

    Item dict:
        video_id: str; cap_ids: list of k str (caption-file order)
        video_feat: float32 (L_i, Dv), L_i = min(n_frames, max_ctx_l), L2-normalised
        query_feats: list of k float32 (n_j, Dq), n_j <= max_desc_l, per-token normalised
        teacher_video_feat: float32 (L_i, Dt)   (teacher on)
        teacher_query_feat: float32 (k, Dt)     (teacher on)
        clip_feat: float32 (K, Dv)              (``n_clips`` = K given: the GMMFormer family's clips)
        teacher_clip_feat: float32 (K, Dt)      (teacher on and ``teacher_clips``: distillation over clips)
    The teacher is on when both teacher stores are given. Clips are pooled
    from the video's stored frames (``clip_features``), not from the
    ``max_ctx_l`` frames, and the teacher's clips from the teacher's stored frames.

    ``frame_count_store`` (DL-DKD++'s ``--pool_to_teacher``): a store of the
    teacher's frames; a student video longer than its teacher video is first
    mean-pooled to the teacher's frame count (see ``student_frames``). The
    teacher frames are then aligned to the student's count as always.
    """

    def __init__(self, captions, video_store, text_store, teacher_text_store=None, teacher_video_store=None,
                 max_ctx_l=128, max_desc_l=30, frame_count_store=None, n_clips=None, teacher_clips=False):
        if (teacher_text_store is None) != (teacher_video_store is None):
            raise ValueError("give both teacher stores (text and video) or neither")
        if teacher_clips and n_clips is None:
            raise ValueError("teacher clips need n_clips")
        self.frame_count_store = frame_count_store
        self.n_clips, self.teacher_clips = n_clips, teacher_clips
        self._keys = list(captions.video_ids)
        self.video2caps = captions.video2caps
        self.video_store, self.text_store = video_store, text_store
        self.teacher_text_store, self.teacher_video_store = teacher_text_store, teacher_video_store
        self.max_ctx_l, self.max_desc_l = max_ctx_l, max_desc_l
        self.text_keys = resolve_or_raise(captions.cap_ids, text_store, "text feature")
        self.use_teacher = teacher_text_store is not None
        if self.use_teacher:
            self.teacher_text_keys = resolve_or_raise(captions.cap_ids, teacher_text_store, "CLIP text feature")

    @property
    def caption_counts(self):
        """Number of captions of each video, in dataset order."""
        return [len(self.video2caps[vid]) for vid in self._keys]

    @property
    def frame_counts(self):
        """Number of frames of each video after pooling (what ``video_feat`` holds), in dataset order.

        Read from the stores' frame counts, without the features.
        """
        counts = []
        for vid in self._keys:
            n = self.video_store.n_frames(vid)
            if self.frame_count_store is not None:
                n = min(n, self.frame_count_store.n_frames(vid))
            counts.append(min(n, self.max_ctx_l))
        return counts

    @property
    def token_counts(self):
        """Tokens of every caption of every video (``query_feats``' lengths), videos in dataset order, each
        video's captions in caption-file order; read from the store's shapes."""
        return _token_counts([c for vid in self._keys for c in self.video2caps[vid]], self.text_store,
                             self.text_keys, self.max_desc_l)

    def _load(self, index):
        vid = self._keys[index]
        cap_ids = self.video2caps[vid]
        n_teacher = None if self.frame_count_store is None else self.frame_count_store.n_frames(vid)
        raw = self.video_store.get(vid)
        video = student_frames(raw, self.max_ctx_l, n_teacher)
        item = {
            "video_id": vid,
            "cap_ids": list(cap_ids),
            "video_feat": video,
            "query_feats": [student_tokens(self.text_store.get(self.text_keys[c]), self.max_desc_l)
                            for c in cap_ids],
        }
        if self.n_clips is not None:
            item["clip_feat"] = clip_features(raw, self.n_clips)
        if self.use_teacher:
            teacher_raw = self.teacher_video_store.get(vid)
            item["teacher_video_feat"] = teacher_frames(teacher_raw, len(video), self.max_ctx_l)
            if self.teacher_clips:
                item["teacher_clip_feat"] = clip_features(teacher_raw, self.n_clips, normalize=False)
            item["teacher_query_feat"] = np.stack(
                [teacher_sentence(self.teacher_text_store.get(self.teacher_text_keys[c]),
                                  self.teacher_text_store.path) for c in cap_ids])
        return item


class VideoDataset(_Items):
    """Evaluation videos, one a item: dict(video_id, video_feat float32 (L_i, Dv)[, clip_feat float32 (K, Dv)])."""

    def __init__(self, captions, video_store, max_ctx_l=128, n_clips=None):
        self._keys = list(captions.video_ids)
        self.video_store, self.max_ctx_l, self.n_clips = video_store, max_ctx_l, n_clips

    @property
    def frame_counts(self):
        """Frames of each video after pooling (``video_feat``'s length), from the store's frame counts."""
        return [min(self.video_store.n_frames(vid), self.max_ctx_l) for vid in self._keys]

    def _load(self, index):
        vid = self._keys[index]
        raw = self.video_store.get(vid)
        item = {"video_id": vid, "video_feat": student_frames(raw, self.max_ctx_l)}
        if self.n_clips is not None:
            item["clip_feat"] = clip_features(raw, self.n_clips)
        return item


class QueryDataset(_Items):
    """Evaluation captions, one a item: dict(cap_id, query_feat float32 (n_j, Dq))."""

    def __init__(self, captions, text_store, max_desc_l=30):
        self._keys = list(captions.cap_ids)
        self.text_store, self.max_desc_l = text_store, max_desc_l
        self.text_keys = resolve_or_raise(self._keys, text_store, "text feature")

    @property
    def token_counts(self):
        """Tokens of each caption after truncation (``query_feat``'s length), from the store's shapes."""
        return _token_counts(self._keys, self.text_store, self.text_keys, self.max_desc_l)

    def _load(self, index):
        cap_id = self._keys[index]
        return {"cap_id": cap_id,
                "query_feat": student_tokens(self.text_store.get(self.text_keys[cap_id]), self.max_desc_l)}

