"""Data: caption files, feature stores, input transforms, datasets, collate functions, sampler.

Shapes: V videos, Q captions, L padded frames (<= max_ctx_l), N padded tokens
(<= max_desc_l), Dv student frame dim, Dq text dim, Dt teacher (CLIP) dim.

On-disk layout (docs/data.md), under `<root_path>/<collection>/`::

    TextData/<collection>{train,val,test}.caption.txt
    TextData/roberta_<collection>_query_feat.hdf5          cap_id -> (n_tokens, Dq)
    TextData/clip_ViT_B_32_<collection>_query_feat.hdf5    cap_id -> (Dt,) or (1, Dt)
    FeatureData/<visual_feature>/                          BigFile, video_id -> (n, Dv)
    FeatureData/<visual_feature>.hdf5                      (used when the folder is absent)
    FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5   video_id -> (n, Dt)

Modules: `paths` (file names), `captions` (caption files), `stores` (HDF5 /
BigFile stores, caption-key lookup), `transforms` (pooling, normalisation,
teacher alignment), `datasets`, `collate`, `split` (the start-up data check and
`build_split`), `sampler` (the seeded global batches and a process's share),
`preload` (a split computed once and packed, batches gathered from it:
``--preload``), `feed` (batches on the device for training and evaluation).

Typical use (train.py / eval.py)::

    split = build_split(root, "tvr", "i3d_resnet", "train", use_teacher=True,
                        max_ctx_l=128, max_desc_l=30)
    sampler = GlobalBatchSampler(split.caption_counts(), batch_size=128, seed=2018)
    loader = DataLoader(split.train_dataset(), batch_sampler=sampler,
                        collate_fn=collate_train, worker_init_fn=seed_worker)
    dims = split.visual_dim, split.text_dim, split.teacher_dim
"""
from method.data.bigfile import DataError
from method.data.captions import Captions, read_caption_file
from method.data.collate import collate_queries, collate_train, collate_videos, pad_sequences
from method.data.datasets import QueryDataset, TrainDataset, VideoDataset
from method.data.paths import SPLITS, DatasetPaths, dataset_paths, require_file
from method.data.sampler import GlobalBatchSampler, seed_worker
from method.data.split import Split, build_split, check_split
from method.data.stores import H5Store, caption_key_candidates, open_video_store, resolve_caption_keys
from method.data.transforms import (
    align_frames,
    clip_features,
    l2_normalize,
    reduce_frames,
    student_frames,
    student_tokens,
    teacher_frames,
    teacher_sentence,
    uniform_pool,
)

__all__ = [
    "DataError", "Captions", "read_caption_file", "SPLITS", "DatasetPaths", "dataset_paths", "require_file",
    "H5Store", "open_video_store", "caption_key_candidates", "resolve_caption_keys",
    "uniform_pool", "clip_features", "reduce_frames", "l2_normalize", "align_frames",
    "student_frames", "teacher_frames", "student_tokens", "teacher_sentence",
    "TrainDataset", "VideoDataset", "QueryDataset",
    "pad_sequences", "collate_train", "collate_videos", "collate_queries",
    "check_split", "Split", "build_split", "GlobalBatchSampler", "seed_worker",
]
