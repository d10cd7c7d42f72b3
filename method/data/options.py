"""What the data pipeline needs to know about a run: where the features are, how items are cut, how they are fed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DataOptions:
    """The data settings of a run (built once from the flags by ``method.config.settings``)."""

    root_path: str
    collection: str
    visual_feature: str
    max_ctx_l: int = 128  # frames; longer videos are mean-pooled to it
    max_desc_l: int = 30  # tokens; longer captions are truncated
    q_feat_size: Optional[int] = None  # checked against the data; None: read from it
    teacher_video_file: Optional[str] = None
    teacher_query_file: Optional[str] = None
    teachers: Optional[tuple] = None  # several teachers' names (--teachers)
    use_teacher: bool = True
    pool_to_teacher: bool = False  # DL-DKD++ training items
    batch_sort: str = "captions"  # the training batch's video order: "captions" or "frames"
    num_workers: int = 4
    preload: str = "none"  # none, ram or device
    preload_dtype: str = "float32"
    eval_video_bsz: int = 200
    eval_query_bsz: int = 500

    def split_args(self, split: str) -> dict:
        """Keyword arguments of ``method.data.build_split`` for ``split`` (teacher files as given)."""
        return {"root_path": self.root_path, "collection": self.collection, "visual_feature": self.visual_feature,
                "split": split, "max_ctx_l": self.max_ctx_l, "max_desc_l": self.max_desc_l,
                "teacher_video_file": self.teacher_video_file, "teacher_query_file": self.teacher_query_file,
                "teachers": list(self.teachers) if self.teachers else None}
