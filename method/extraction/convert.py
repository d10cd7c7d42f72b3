"""Student frames between the BigFile folder and a per-video HDF5 file: ``python -m method.convert SRC [DST]``.

    FeatureData/<name>/        feature.bin, shape.txt, id.txt, video2frames.txt (this codebase, MS-SL, DL-DKD)
    FeatureData/<name>.hdf5    video_id -> float32 (n_frames, dim)   (GMMFormer-family codebases: feature.hdf5)

The direction follows SRC: a folder is converted to HDF5, an HDF5 file to a
folder. Videos keep their order (the HDF5 file tracks creation order) and,
where they are not ``<video_id>_<i>``, their BigFile row ids (dataset attribute
``row_ids``), so BigFile -> HDF5 -> BigFile gives the same four files byte for
byte whenever the rows are stored video after video in video2frames order (as
``method.extraction.prepare`` writes them); otherwise the rows are laid out video by video
and every video's frames stay identical. One video is in memory at a time
(feature.bin is memory-mapped). The output is written under a temporary name
and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import shutil

import h5py
import numpy as np
from tqdm import tqdm

from method.common.cli import HelpFormatter
from method.data.bigfile import BigFile
from method.extraction.writers import read_video2frames, write_bigfile

ROW_IDS_ATTR = "row_ids"


def _default_row_ids(video_id, n):
    return [f"{video_id}_{i}" for i in range(n)]


def _swap_in(tmp, dst):
    """Rename the finished `tmp` to `dst`, replacing what is there."""
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def bigfile_to_hdf5(src, dst):
    """BigFile folder `src` -> HDF5 file `dst` (video_id -> (n_frames, dim) float32), replacing `dst`.

    Returns the number of videos.
    """
    store = BigFile(src)
    video2frames = read_video2frames(src)
    tmp = dst + ".partial"
    with h5py.File(tmp, "w", track_order=True) as f:
        for vid, row_ids in tqdm(video2frames.items(), desc="videos", unit="video"):
            dataset = f.create_dataset(vid, data=store.read_video(vid))
            if row_ids != _default_row_ids(vid, len(row_ids)):
                dataset.attrs[ROW_IDS_ATTR] = np.array(row_ids, dtype=h5py.string_dtype())
    _swap_in(tmp, dst)
    return len(video2frames)


def hdf5_to_bigfile(src, dst):
    """HDF5 file `src` (video_id -> (n_frames, dim)) -> BigFile folder `dst`, replacing `dst`.

    Returns (n_rows, dim).
    """
    tmp = dst + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with h5py.File(src, "r") as f:
        def videos():
            for vid in tqdm(list(f.keys()), desc="videos", unit="video"):
                dataset = f[vid]
                row_ids = dataset.attrs.get(ROW_IDS_ATTR)
                yield vid, np.asarray(dataset[()]), None if row_ids is None else [str(r) for r in row_ids]
        shape = write_bigfile(tmp, videos())
    _swap_in(tmp, dst)
    return shape


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m method.convert",
        description="Convert student frame features between a BigFile folder and a per-video HDF5 file.",
        formatter_class=HelpFormatter)
    p.add_argument("src", help="a BigFile folder (converted to HDF5) or an HDF5 file (converted to a BigFile folder)")
    p.add_argument("dst", nargs="?",
                   help="output path (default: SRC.hdf5 for a folder, SRC without .hdf5 for a file)")
    p.add_argument("--overwrite", action="store_true", help="replace DST when it exists")
    return p


def main(argv=None):
    opt = build_parser().parse_args(argv)
    src = os.path.normpath(opt.src)
    to_hdf5 = os.path.isdir(src)
    if not to_hdf5 and not os.path.isfile(src):
        raise SystemExit(f"{src}: neither a BigFile folder nor an HDF5 file")
    dst = opt.dst or (src + ".hdf5" if to_hdf5 else os.path.splitext(src)[0])
    if dst == src:
        raise SystemExit(f"{src}: give DST (the default output would be SRC itself)")
    if os.path.exists(dst) and not opt.overwrite:
        raise SystemExit(f"{dst} exists: pass --overwrite to replace it")
    if to_hdf5:
        print(f"{bigfile_to_hdf5(src, dst)} videos -> {dst}")
    else:
        n_rows, dim = hdf5_to_bigfile(src, dst)
        print(f"{n_rows} x {dim} rows -> {dst}")
    return 0

