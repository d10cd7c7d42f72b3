"""Released file paths of a collection, and the missing-file error."""
import os
from dataclasses import dataclass

from method.data.bigfile import DataError

SPLITS = ("train", "val", "test")
# The released feature packages: the name of each collection's student frame features.
COLLECTIONS = {
    "tvr": {"visual_feature": "i3d_resnet"},
    "activitynet": {"visual_feature": "i3d"},
    "charades": {"visual_feature": "i3d_rgb_lgi"},
}


def require_file(path, what):
    """Raise a DataError naming `path` and what it should contain when it is absent."""
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}: it should contain {what}")


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


def teacher_file_names(collection, name=None):
    """(frame file in FeatureData/, sentence file in TextData/) of a teacher: the released CLIP ViT-B/32 names
    without ``name``; else ``<name>_<collection>_vid_features.hdf5`` and ``<name>_<collection>_query_feat.hdf5``,
    as the extractors write another teacher's."""
    if name is None:
        return f"new_clip_vit_32_{collection}_vid_features.hdf5", f"clip_ViT_B_32_{collection}_query_feat.hdf5"
    return f"{name}_{collection}_vid_features.hdf5", f"{name}_{collection}_query_feat.hdf5"


def teacher_paths(root_path, collection, name):
    """(frame file, sentence file) of the teacher ``name`` of ``--teachers``: ``clip`` is the released CLIP
    ViT-B/32 pair, any other name the files ``teacher_file_names`` gives it."""
    base = os.path.join(root_path, collection)
    video, text = teacher_file_names(collection, None if name == "clip" else name)
    return os.path.join(base, "FeatureData", video), os.path.join(base, "TextData", text)


def dataset_paths(root_path, collection, visual_feature, teacher_video_file=None, teacher_query_file=None):
    """Paths of the released files of `<root_path>/<collection>`.

    `teacher_video_file` (relative to FeatureData/) and `teacher_query_file`
    (relative to TextData/) replace the default CLIP file names; an absolute
    path is used as is.
    """
    base = os.path.join(root_path, collection)
    text_dir = os.path.join(base, "TextData")
    feat_dir = os.path.join(base, "FeatureData")
    clip_video, clip_text = teacher_file_names(collection)
    return DatasetPaths(
        collection_dir=base,
        captions={s: os.path.join(text_dir, f"{collection}{s}.caption.txt") for s in SPLITS},
        text_feat=os.path.join(text_dir, f"roberta_{collection}_query_feat.hdf5"),
        teacher_text_feat=os.path.join(text_dir, teacher_query_file or clip_text),
        video_bigfile=os.path.join(feat_dir, visual_feature),
        video_hdf5=os.path.join(feat_dir, f"{visual_feature}.hdf5"),
        teacher_video_feat=os.path.join(feat_dir, teacher_video_file or clip_video),
    )

