"""CLIP teacher features from raw videos or frame folders: ``python -m method.extract_teacher``.

Writes the two teacher files that training reads, in the released layout
(``docs/teacher_features.md`` has the recipes)::

    <root_path>/<collection>/FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5
        video_id -> float32 (n_sampled_frames, projection_dim)   CLIP image features
    <root_path>/<collection>/TextData/clip_ViT_B_32_<collection>_query_feat.hdf5
        cap_id   -> float32 (projection_dim,)                    CLIP sentence features

(``--teacher_name NAME`` writes ``FeatureData/NAME_<collection>_vid_features.hdf5``
and ``TextData/NAME_<collection>_query_feat.hdf5`` instead.) Features are the
projection outputs of ``get_image_features`` / ``get_text_features``, not
normalised, as the released files hold them.

Inputs: ``--videos DIR`` holds either video files (any container FFmpeg reads,
decoded with PyAV, video_id = file stem) or one folder of frame images per video
(frames in natural file-name order, as TVQA ships the TVR frames). The captions
are those of ``TextData/<collection>{train,val,test}.caption.txt``; the videos
are the caption files' videos found in DIR.

Frames are sampled either at ``--fps F`` (the frame shown at the centre of each
1/F-second window) or with ``--align_to_student`` (one frame at the centre of
each student clip, so teacher and student rows line up one to one).

The run is resumable: entries already in the output files are skipped, each
video is written whole or not at all, and videos that fail to decode are
reported at the end without stopping the run.

transformers, av and pillow are optional dependencies of the project, imported
only here and only when needed: ``pip install -r requirements-extract.txt``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import torch
from tqdm import tqdm

from method.bigfile import parse_video2frames
from method.config import COLLECTIONS, resolve_device

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Attribute of each output file recording how its entries were made.
SETTINGS_ATTR = "extract_teacher_settings"


# --------------------------------------------------------------------------- #
# optional dependencies
# --------------------------------------------------------------------------- #
def _import_optional(module):
    """Import an optional extractor dependency, or exit with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"method.extract_teacher needs the optional package providing {module!r} ({exc}).\n"
            f"Install the extractor requirements into the project environment:\n"
            f"    .venv/bin/pip install -r requirements-extract.txt") from exc


# --------------------------------------------------------------------------- #
# file names and inputs
# --------------------------------------------------------------------------- #
def output_paths(root_path, collection, teacher_name=None):
    """(video_file, text_file) paths of the teacher features of a collection.

    Without `teacher_name` these are the released names, which training reads
    by default; with it, ``FeatureData/<teacher_name>_<collection>_vid_features.hdf5``
    and ``TextData/<teacher_name>_<collection>_query_feat.hdf5``.
    """
    if teacher_name is None:
        video_name = f"new_clip_vit_32_{collection}_vid_features.hdf5"
        text_name = f"clip_ViT_B_32_{collection}_query_feat.hdf5"
    else:
        video_name = f"{teacher_name}_{collection}_vid_features.hdf5"
        text_name = f"{teacher_name}_{collection}_query_feat.hdf5"
    base = os.path.join(root_path, collection)
    return os.path.join(base, "FeatureData", video_name), os.path.join(base, "TextData", text_name)


def read_captions(root_path, collection, splits=SPLITS):
    """Captions of the caption files of `splits` that exist.

    Returns:
        (captions, video_ids, missing_files): dict cap_id -> text in file order
        (first occurrence wins), the ordered set of their video ids
        (``cap_id.split('#')[0]``), and the caption files that do not exist.
    """
    captions, missing = {}, []
    for split in splits:
        path = os.path.join(root_path, collection, "TextData", f"{collection}{split}.caption.txt")
        if not os.path.isfile(path):
            missing.append(path)
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(None, 1)
                if parts:
                    captions.setdefault(parts[0], parts[1] if len(parts) > 1 else "")
    video_ids = list(dict.fromkeys(cap_id.split("#")[0] for cap_id in captions))
    return captions, video_ids, missing


def _natural_key(name):
    """Sort key comparing digit runs as numbers: frame2 < frame10 (same as plain order when zero-padded)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def find_sources(videos_dir, input_type, wanted_ids):
    """Locate the videos of `wanted_ids` in one `videos_dir`.

    Args:
        videos_dir: folder of video files, or of one frame folder per video.
        input_type: "videos", "frames", or "auto" (whichever of files /
            sub-folders matches more of `wanted_ids`).
        wanted_ids: the video ids of the caption files.
    Returns:
        (input_type, sources, duplicates): the resolved type, dict video_id ->
        path for the ids found, and the ids that several files share as stem
        (the first file in name order is used).
    """
    if not os.path.isdir(videos_dir):
        raise SystemExit(f"--videos {videos_dir}: not a folder")
    files, dirs, duplicates = {}, {}, []
    for entry in sorted(os.scandir(videos_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            dirs[entry.name] = entry.path
        elif entry.is_file():
            stem = os.path.splitext(entry.name)[0]
            if stem in files:
                duplicates.append(stem)
            else:
                files[stem] = entry.path
    if input_type == "auto":
        n_dirs = sum(vid in dirs for vid in wanted_ids)
        n_files = sum(vid in files for vid in wanted_ids)
        input_type = "frames" if n_dirs > n_files else "videos"
    found = dirs if input_type == "frames" else files
    sources = {vid: found[vid] for vid in wanted_ids if vid in found}
    return input_type, sources, sorted(set(duplicates) & set(sources))


def student_frame_counts(root_path, collection, visual_feature):
    """Number of student frames (clips) per video, from the student's feature store.

    Reads ``FeatureData/<visual_feature>/video2frames.txt`` of a BigFile folder,
    else the shapes in ``FeatureData/<visual_feature>.hdf5``.
    """
    base = os.path.join(root_path, collection, "FeatureData", visual_feature)
    v2f_path = os.path.join(base, "video2frames.txt")
    if os.path.isfile(v2f_path):
        with open(v2f_path, encoding="utf-8") as f:
            return {vid: len(rows) for vid, rows in parse_video2frames(f.read(), v2f_path).items()}
    if os.path.isfile(base + ".hdf5"):
        with h5py.File(base + ".hdf5", "r") as f:
            return {vid: int(f[vid].shape[0]) for vid in f.keys()}
    raise SystemExit(f"--align_to_student: no student features at {base}/video2frames.txt nor {base}.hdf5")


# --------------------------------------------------------------------------- #
# frame sampling
# --------------------------------------------------------------------------- #
def fps_indices(timestamps, duration, fps):
    """Frames sampled at `fps`: the frame shown at the centre of each 1/fps window.

    With duration D there are ``max(1, floor(D * fps))`` windows; window k is
    centred at ``(k + 0.5) / fps`` (one window centred at D / 2 when D * fps < 1).
    The frame shown at time t is the last one whose timestamp is <= t.

    Args:
        timestamps: (T,) non-decreasing presentation times in seconds, first 0.
        duration: D in seconds (last timestamp plus one frame duration).
        fps: sampling rate F.
    Returns:
        int64 (n,) frame indices.
    """
    if duration * fps < 1:
        targets = np.array([duration / 2])
    else:
        targets = (np.arange(math.floor(duration * fps + 1e-6)) + 0.5) / fps
    idx = np.searchsorted(np.asarray(timestamps), targets, side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1).astype(np.int64)


def centre_indices(n_frames, n_clips):
    """Frame at the centre of each of `n_clips` equal clips of `n_frames` frames.

    Index of clip i = floor((i + 0.5) * n_frames / n_clips), clipped to n_frames - 1
    (computed in integers, so exact).
    """
    i = np.arange(n_clips, dtype=np.int64)
    return np.minimum((2 * i + 1) * n_frames // (2 * n_clips), n_frames - 1)


# --------------------------------------------------------------------------- #
# decoding
# --------------------------------------------------------------------------- #
def _video_timestamps(path):
    """First decoding pass of a video file: presentation times and duration.

    Timestamps come from the frames' pts and the stream's time base, relative
    to the first frame; where pts are missing, from the average frame rate.
    """
    av = _import_optional("av")
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pts = [frame.pts for frame in container.decode(stream)]
        time_base, rate = stream.time_base, stream.average_rate
    if not pts:
        raise ValueError("no frames decoded")
    frame_dur = 1.0 / float(rate) if rate else None
    if time_base is not None and all(p is not None for p in pts):
        times = (np.asarray(pts, dtype=np.float64) - pts[0]) * float(time_base)
        times = np.maximum.accumulate(times)
        if frame_dur is None:
            steps = np.diff(times)
            frame_dur = float(np.median(steps)) if steps.size else 0.0
    elif frame_dur is not None:
        times = np.arange(len(pts)) * frame_dur
    else:
        raise ValueError("frames carry no timestamps and the stream no frame rate")
    return times, float(times[-1] + frame_dur)


def _decode_video_frames(path, indices):
    """Second decoding pass: the frames at `indices` (decode order) as PIL images."""
    av = _import_optional("av")
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    images = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                images[i] = frame.to_image()
            if i >= last:
                break
    if len(images) != len(wanted):
        raise ValueError(f"only {len(images)} of {len(wanted)} sampled frames decoded on the second pass")
    return [images[int(i)] for i in indices]


def _list_frame_files(folder):
    """Image files of a frame folder in natural name order."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def load_frames(path, input_type, sampler, frames_fps):
    """Decode the sampled frames of one video.

    Args:
        path: video file, or frame folder.
        input_type: "videos" or "frames".
        sampler: callable(timestamps, duration) -> frame indices.
        frames_fps: native rate of a frame folder: frame i is shown at
            i / frames_fps, the folder lasts n_frames / frames_fps seconds.
    Returns:
        list of RGB PIL images, one per sampled index.
    Raises:
        Exception (any) when the video cannot be decoded; the caller records it.
    """
    if input_type == "videos":
        timestamps, duration = _video_timestamps(path)
        return _decode_video_frames(path, sampler(timestamps, duration))
    image_mod = _import_optional("PIL.Image")
    files = _list_frame_files(path)
    if not files:
        raise ValueError("no image files in the frame folder")
    indices = sampler(np.arange(len(files)) / frames_fps, len(files) / frames_fps)
    images = []
    for i in indices:
        with image_mod.open(files[i]) as img:
            images.append(img.convert("RGB"))
    return images


def _prefetch(fn, items, workers):
    """Yield (item, future of fn(item)) in order, computing up to 2 * workers items ahead."""
    executor = ThreadPoolExecutor(max_workers=max(1, workers))
    pending = deque()
    iterator = iter(items)
    try:
        for item in iterator:
            pending.append((item, executor.submit(fn, item)))
            if len(pending) >= 2 * max(1, workers):
                break
        while pending:
            item, future = pending.popleft()
            for nxt in iterator:
                pending.append((nxt, executor.submit(fn, nxt)))
                break
            yield item, future
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- #
# CLIP
# --------------------------------------------------------------------------- #
def load_clip(name_or_path, device):
    """CLIP model (eval mode, on `device`) and its processor, via transformers."""
    transformers = _import_optional("transformers")
    model = transformers.CLIPModel.from_pretrained(name_or_path).to(device).eval()
    processor = transformers.AutoProcessor.from_pretrained(name_or_path)
    return model, processor


def _projection(output):
    """Projected features from get_*_features: a tensor (transformers 4) or its pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _autocast(device):
    """fp16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def encode_images(model, pixel_values, device, batch_size):
    """(n, 3, H, W) preprocessed frames -> float32 ndarray (n, projection_dim)."""
    out = []
    for start in range(0, len(pixel_values), batch_size):
        batch = pixel_values[start:start + batch_size].to(device, non_blocking=True)
        with _autocast(device):
            out.append(_projection(model.get_image_features(pixel_values=batch)).float().cpu())
    return torch.cat(out).numpy()


@torch.inference_mode()
def encode_texts(model, tokenizer, texts, device):
    """List of captions -> float32 ndarray (n, projection_dim); text truncated to the model's length (77)."""
    max_length = model.config.text_config.max_position_embeddings
    tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
    with _autocast(device):
        return _projection(model.get_text_features(**tokens)).float().cpu().numpy()


# --------------------------------------------------------------------------- #
# output files
# --------------------------------------------------------------------------- #
def _open_output(path, settings):
    """Open an output HDF5 file in append mode and check how its entries were made.

    A new file records `settings` (JSON in an attribute). An existing file made
    with another sampling is refused (its rows would not be comparable); a
    different clip_model only warns (the same model may live at another path).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = h5py.File(path, "a")
    recorded = f.attrs.get(SETTINGS_ATTR)
    if recorded is None:
        if len(f):
            print(f"note: {path} has {len(f)} entries but no record of how they were made "
                  f"(e.g. a released file); new entries are added with {settings}")
        else:
            f.attrs[SETTINGS_ATTR] = json.dumps(settings, sort_keys=True)
        return f
    recorded = json.loads(recorded)
    if recorded.get("sampling") != settings.get("sampling"):
        f.close()
        raise SystemExit(f"{path} was made with sampling {recorded.get('sampling')!r}, this run uses "
                         f"{settings.get('sampling')!r}: pass the same sampling flags, another "
                         f"--teacher_name, or delete the file")
    if recorded.get("clip_model") != settings["clip_model"]:
        print(f"warning: {path} was made with --clip_model {recorded.get('clip_model')!r}, "
              f"this run uses {settings['clip_model']!r}")
    return f


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m method.extract_teacher",
        description="Extract CLIP teacher features (frames and captions) in the released DL-DKD layout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root_path", required=True, help="folder holding <collection>/TextData and FeatureData")
    p.add_argument("--collection", required=True, help="dataset folder name, e.g. tvr")
    p.add_argument("--videos", required=True, nargs="+", action="extend",
                   help="folder(s) of video files (video_id = file stem) or of frame folders (one per video); "
                        "several folders (or several --videos) are searched in order")
    p.add_argument("--input_type", choices=("auto", "videos", "frames"), default="auto",
                   help="what each --videos folder holds; auto: whichever of files / sub-folders "
                        "matches more caption videos")
    p.add_argument("--splits", nargs="+", default=list(SPLITS),
                   help="caption files TextData/<collection><split>.caption.txt to cover")
    sampling = p.add_mutually_exclusive_group(required=True)
    sampling.add_argument("--fps", type=float, help="sample F frames per second of video")
    sampling.add_argument("--align_to_student", action="store_true",
                          help="one frame at the centre of each student clip (as many rows as the student features)")
    p.add_argument("--frames_fps", type=float, default=3.0,
                   help="native frame rate of frame folders (TVQA frames: 3), used with --fps")
    p.add_argument("--visual_feature", default=None,
                   help="student features for --align_to_student: FeatureData/<name>/ (BigFile) or <name>.hdf5 "
                        "(default: the collection's, e.g. i3d_resnet for tvr)")
    p.add_argument("--clip_model", default=DEFAULT_CLIP_MODEL,
                   help="Hugging Face CLIP id or local folder (model and processor); the paper's teacher is ViT-B/32")
    p.add_argument("--teacher_name", default=None,
                   help="write FeatureData/<NAME>_<collection>_vid_features.hdf5 and "
                        "TextData/<NAME>_<collection>_query_feat.hdf5 instead of the released names")
    p.add_argument("--batch_size", type=int, default=128, help="frames per CLIP forward pass")
    p.add_argument("--text_batch_size", type=int, default=256, help="captions per CLIP forward pass")
    p.add_argument("--num_workers", type=int, default=4, help="threads decoding and preprocessing videos ahead")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--flush_every", type=int, default=20, help="flush the video file every N written videos")
    p.add_argument("--skip_text", action="store_true", help="do not extract caption features")
    p.add_argument("--skip_videos", action="store_true", help="do not extract frame features")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a video failed or is missing from --videos")
    return p


def _sampling_setting(opt):
    """How frames are sampled, as recorded in the video file."""
    if opt.align_to_student:
        return f"align_to_student:{opt.visual_feature}"
    return f"fps:{opt.fps:g},frames_fps:{opt.frames_fps:g}"


def _existing_keys(path):
    """Keys of an HDF5 file, empty when the file does not exist."""
    if not os.path.isfile(path):
        return set()
    with h5py.File(path, "r") as f:
        return set(f.keys())


def _print_list(title, items, limit=20):
    """Print a count and the first `limit` items."""
    print(f"{title}: {len(items)}")
    for item in items[:limit]:
        print(f"  {item}")
    if len(items) > limit:
        print(f"  ... and {len(items) - limit} more")


def _extract_texts(opt, captions, get_clip, text_path):
    """Encode the captions not yet in the text file. Returns (n_encoded, n_present)."""
    present = _existing_keys(text_path)
    todo = [cap_id for cap_id in captions if cap_id not in present]
    if todo:
        with _open_output(text_path, {"clip_model": opt.clip_model}) as f:
            model, processor, device = get_clip()
            for start in tqdm(range(0, len(todo), opt.text_batch_size), desc="captions", unit="batch"):
                batch = todo[start:start + opt.text_batch_size]
                feats = encode_texts(model, processor.tokenizer, [captions[c] for c in batch], device)
                for cap_id, feat in zip(batch, feats):
                    f.create_dataset(cap_id, data=feat.astype(np.float32))
                f.flush()
    return len(todo), len(captions) - len(todo)


def _extract_videos(opt, todo, sources, n_student, get_clip, video_path):
    """Encode the videos of `todo`, each written whole.

    `sources` maps a video id to (input_type, path); `n_student` to its number
    of student clips (used with --align_to_student).

    Returns:
        (n_encoded, n_frames, failures) with failures a list of "video_id: reason".
    """
    failures = []
    n_done = n_frames = 0
    if not todo:
        return n_done, n_frames, failures

    def sampler_for(video_id):
        if opt.align_to_student:
            return lambda timestamps, duration: centre_indices(len(timestamps), n_student[video_id])
        return lambda timestamps, duration: fps_indices(timestamps, duration, opt.fps)

    def prepare(video_id):
        input_type, path = sources[video_id]
        images = load_frames(path, input_type, sampler_for(video_id), opt.frames_fps)
        return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    with _open_output(video_path, {"clip_model": opt.clip_model, "sampling": _sampling_setting(opt)}) as f:
        model, processor, device = get_clip()
        start = time.perf_counter()
        with tqdm(total=len(todo), desc="videos", unit="video") as bar:
            for video_id, future in _prefetch(prepare, todo, opt.num_workers):
                try:
                    pixel_values = future.result()
                except Exception as exc:  # any decoding error: record it, go on with the next video
                    failures.append(f"{video_id}: {type(exc).__name__}: {exc}")
                else:
                    feats = encode_images(model, pixel_values, device, opt.batch_size)
                    f.create_dataset(video_id, data=feats.astype(np.float32))
                    n_done += 1
                    n_frames += len(feats)
                    if n_done % opt.flush_every == 0:
                        f.flush()
                bar.update(1)
                bar.set_postfix(frames_per_s=f"{n_frames / max(time.perf_counter() - start, 1e-9):.1f}",
                                failed=len(failures))
    return n_done, n_frames, failures


def main(argv=None):
    """Run the extractor; returns the exit status (0, or 1 with --strict and failures)."""
    opt = build_parser().parse_args(argv)
    if opt.align_to_student and opt.visual_feature is None:
        if opt.collection not in COLLECTIONS:
            raise SystemExit(f"--visual_feature is required with --align_to_student for collection {opt.collection!r}")
        opt.visual_feature = COLLECTIONS[opt.collection]["visual_feature"]
    video_path, text_path = output_paths(opt.root_path, opt.collection, opt.teacher_name)
    captions, video_ids, missing_files = read_captions(opt.root_path, opt.collection, opt.splits)
    for path in missing_files:
        print(f"note: no caption file {path}")
    if not captions:
        raise SystemExit("no captions: none of the caption files exists or they are empty")

    clip = []

    def get_clip():
        """Load CLIP once, on first need (a run with nothing left to do loads nothing)."""
        if not clip:
            device = resolve_device(opt.device)
            print(f"loading CLIP {opt.clip_model} on {device}")
            clip.extend(load_clip(opt.clip_model, device) + (device,))
        return clip

    text_done = text_present = 0
    if not opt.skip_text:
        text_done, text_present = _extract_texts(opt, captions, get_clip, text_path)

    missing, failures = [], []
    n_done = n_frames = n_present = 0
    if not opt.skip_videos:
        sources, duplicates = {}, []
        for folder in opt.videos:
            input_type, found, dups = find_sources(folder, opt.input_type, video_ids)
            print(f"--videos {folder}: reading {input_type}; {len(found)} of the {len(video_ids)} caption videos found")
            duplicates += dups + [vid for vid in found if vid in sources]
            for vid, path in found.items():
                sources.setdefault(vid, (input_type, path))
        if duplicates:
            _print_list("videos found more than once (the first folder, then the first file in name order, "
                        "is used)", sorted(set(duplicates)))
        missing = [vid for vid in video_ids if vid not in sources]
        n_student = {}
        if opt.align_to_student:
            n_student = student_frame_counts(opt.root_path, opt.collection, opt.visual_feature)
        present = _existing_keys(video_path)
        todo = []
        for vid in (v for v in video_ids if v in sources):
            if vid in present:
                n_present += 1
            elif opt.align_to_student and n_student.get(vid, 0) < 1:
                failures.append(f"{vid}: not in the student features {opt.visual_feature}")
            else:
                todo.append(vid)
        n_done, n_frames, decode_failures = _extract_videos(
            opt, todo, sources, n_student, get_clip, video_path)
        failures += decode_failures

    print(f"captions: {text_done} encoded, {text_present} already present -> {text_path}")
    print(f"videos: {n_done} encoded ({n_frames} frames), {n_present} already present, "
          f"{len(missing)} missing from --videos, {len(failures)} failed -> {video_path}")
    if missing:
        _print_list("videos of the caption files missing from --videos", missing)
    if failures:
        _print_list("failed videos", failures)
    if opt.teacher_name is not None:
        print(f"train with: --teacher_video_file {os.path.basename(video_path)} "
              f"--teacher_query_file {os.path.basename(text_path)}")
    return 1 if opt.strict and (failures or missing) else 0


if __name__ == "__main__":
    sys.exit(main())
