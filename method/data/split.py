"""One split of a collection: the start-up data check and the split builder."""
from dataclasses import dataclass

from method.data.bigfile import BigFile, DataError
from method.data.captions import Captions, read_caption_file
from method.data.datasets import QueryDataset, TrainDataset, VideoDataset
from method.data.paths import SPLITS, DatasetPaths, dataset_paths, teacher_paths
from method.data.stores import (
    H5Store,
    TeacherFrames,
    TeacherSentences,
    missing_message,
    open_video_store,
    resolve_caption_keys,
)


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
            problems.append(missing_message(store.path, missing, n_caps, "captions", content))
    for store, content in video_checks:
        missing = _missing_videos(captions.video_ids, store)
        if missing:
            problems.append(missing_message(store.path, missing, n_videos, "videos", content))
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
    frame_count_store: object = None  # teacher frames whose counts the student is pooled to (--pool_to_teacher)

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
        """Teacher dim Dt (several teachers: the sum), or None when the teacher is off."""
        return None if self.teacher_video_store is None else self.teacher_video_store.dim

    @property
    def teacher_dims(self):
        """Each teacher's dim (one entry for one teacher), or None when the teacher is off."""
        store = self.teacher_video_store
        return None if store is None else getattr(store, "dims", [store.dim])

    def train_dataset(self, n_clips=None, teacher_clips=False):
        """TrainDataset over this split (with the teacher when it is on; ``n_clips`` clips per video when given)."""
        return TrainDataset(self.captions, self.video_store, self.text_store, self.teacher_text_store,
                            self.teacher_video_store, self.max_ctx_l, self.max_desc_l,
                            frame_count_store=self.frame_count_store, n_clips=n_clips, teacher_clips=teacher_clips)

    def video_dataset(self, n_clips=None):
        """VideoDataset over this split's videos (with ``n_clips`` clips per video when given)."""
        return VideoDataset(self.captions, self.video_store, self.max_ctx_l, n_clips)

    def query_dataset(self):
        """QueryDataset over this split's captions."""
        return QueryDataset(self.captions, self.text_store, self.max_desc_l)


def build_split(root_path, collection, visual_feature, split, use_teacher, max_ctx_l, max_desc_l,
                teacher_video_file=None, teacher_query_file=None, check=True, pool_to_teacher=False,
                teachers=None):
    """Open one split: read its captions, open the stores, and (check=True) run check_split.

    Missing files raise DataError naming the path and what it should contain.
    The teacher files are opened only when `use_teacher` (evaluation splits
    do not need them). `pool_to_teacher` (training items of DL-DKD++) pools a
    student video longer than its teacher video to the teacher's frame count;
    it opens the teacher's frame file even without `use_teacher`. `teachers`
    (names, see ``teacher_paths``) replaces the one teacher of the file flags
    with several, seen as one concatenated store each for frames and sentences
    (``TeacherFrames`` / ``TeacherSentences``); every teacher's files are checked.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    paths = dataset_paths(root_path, collection, visual_feature, teacher_video_file, teacher_query_file)
    captions = read_caption_file(paths.captions[split])
    video_store = open_video_store(paths)
    text_store = H5Store(paths.text_feat, "RoBERTa token features, cap_id -> (n_tokens, Dq)")
    teacher_text_store = teacher_video_store = None
    if use_teacher and teachers:
        pairs = [teacher_paths(root_path, collection, name) for name in teachers]
        frames = [H5Store(v, f"teacher {n}'s frame features, video_id -> (n_frames, Dt)") for n, (v, _) in
                  zip(teachers, pairs)]
        texts = [H5Store(t, f"teacher {n}'s sentence features, cap_id -> (Dt,) or (1, Dt)") for n, (_, t) in
                 zip(teachers, pairs)]
        if check:  # each teacher on its own, so a message names its file
            for text, video in zip(texts, frames):
                check_split(captions, video_store, text_store, text, video)
        teacher_text_store, teacher_video_store = texts[0], frames[0]
        if len(teachers) > 1:
            teacher_text_store, teacher_video_store = TeacherSentences(texts), TeacherFrames(frames)
    elif use_teacher:
        teacher_text_store = H5Store(paths.teacher_text_feat, "CLIP sentence features, cap_id -> (Dt,) or (1, Dt)")
        teacher_video_store = H5Store(paths.teacher_video_feat, "CLIP frame features, video_id -> (n_frames, Dt)")
    frame_count_store = None
    if pool_to_teacher:
        frame_count_store = teacher_video_store or H5Store(
            paths.teacher_video_feat, "CLIP frame features, video_id -> (n_frames, Dt) (--pool_to_teacher reads "
            "their frame counts)")
    if check and not (use_teacher and teachers):
        check_split(captions, video_store, text_store, teacher_text_store, teacher_video_store or frame_count_store)
    return Split(split, paths, captions, video_store, text_store, teacher_text_store, teacher_video_store,
                 max_ctx_l, max_desc_l, frame_count_store)

