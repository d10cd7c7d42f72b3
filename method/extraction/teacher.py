"""CLIP teacher features from raw videos or frame folders: ``python -m method.extract_teacher``.

Writes the two teacher files that training reads, in the released layout
(``docs/teacher_features.md`` has the recipes)::

    <root_path>/<collection>/FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5
        video_id -> float32 (n_sampled_frames, projection_dim)   image features
    <root_path>/<collection>/TextData/clip_ViT_B_32_<collection>_query_feat.hdf5
        cap_id   -> float32 (projection_dim,)                    sentence features

(``--teacher_name NAME`` writes ``FeatureData/NAME_<collection>_vid_features.hdf5``
and ``TextData/NAME_<collection>_query_feat.hdf5`` instead.) Features are the
projection outputs of ``get_image_features`` / ``get_text_features`` of any
CLIP-like model in transformers (CLIP, SigLIP, ...), not normalised, as the
released files hold them.

Inputs: ``--videos DIR`` holds either video files (any container FFmpeg reads,
decoded with PyAV, video_id = file stem) or one folder of frame images per video
(frames in natural file-name order, as TVQA ships the TVR frames). The captions
are those of ``TextData/<collection>{train,val,test}.caption.txt``; the videos
are the caption files' videos found in DIR.

Frames are sampled either at ``--fps F`` (the frame shown at the centre of each
1/F-second window) or with ``--align_to_student`` (one frame at the centre of
each student clip, so teacher and student rows line up one to one).

The run is resumable: entries already in the output files are skipped, each
video is written whole or not at all, a file gets its name only when the run
ends normally, and videos that cannot be read (``decode.DecodeError``: PyAV and
file errors, undecodable images, no frames) are reported at the end without
stopping the run. Any other error (the model, an API change, a shape) stops
the run with its traceback, and a run where every video fails exits non-zero.
"""
from __future__ import annotations

import argparse
import os
import time

import h5py
from tqdm import tqdm

from method.common.cli import HelpFormatter, resolve_device
from method.data.bigfile import parse_video2frames
from method.data.paths import COLLECTIONS, teacher_file_names
from method.extraction.captions import SPLITS, read_captions
from method.extraction.decode import DecodeError, load_frames
from method.extraction.encoders import encode_images, encode_texts, load_clip
from method.extraction.prefetch import prefetch_streams
from method.extraction.sampling import centre_indices, fps_indices
from method.extraction.sources import find_sources, locate_videos, print_list
from method.extraction.text import encode_captions
from method.extraction.writers import H5Writer, h5_keys

__all__ = ["DEFAULT_CLIP_MODEL", "SETTINGS_ATTR", "build_parser", "centre_indices", "encode_images",
           "encode_texts", "find_sources", "fps_indices", "load_clip", "main", "output_paths",
           "read_captions", "student_frame_counts"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
# Attribute of each output file recording how its entries were made.
SETTINGS_ATTR = "extract_teacher_settings"


def output_paths(root_path, collection, teacher_name=None):
    """(video_file, text_file) paths of the teacher features of a collection.

    Without `teacher_name` these are the released names, which training reads
    by default; with it, ``FeatureData/<teacher_name>_<collection>_vid_features.hdf5``
    and ``TextData/<teacher_name>_<collection>_query_feat.hdf5``.
    """
    video_name, text_name = teacher_file_names(collection, teacher_name)
    base = os.path.join(root_path, collection)
    return os.path.join(base, "FeatureData", video_name), os.path.join(base, "TextData", text_name)


def video_writer(path, model, sampling, hint="another --teacher_name"):
    """H5Writer of a teacher video file: another sampling is refused, another model warned about."""
    return H5Writer(path, {"clip_model": model, "sampling": sampling}, SETTINGS_ATTR, strict=("sampling",), hint=hint)


def text_writer(path, model):
    """H5Writer of a teacher caption file (another model is warned about)."""
    return H5Writer(path, {"clip_model": model}, SETTINGS_ATTR)


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
# command line
# --------------------------------------------------------------------------- #
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m method.extract_teacher",
        description="Extract CLIP teacher features (frames and captions) in the released DL-DKD layout.",
        formatter_class=HelpFormatter)
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
                   help="Hugging Face id or local folder of a CLIP-like model (CLIP, SigLIP, ...; model, image "
                        "processor and tokenizer); the paper's teacher is CLIP ViT-B/32")
    p.add_argument("--teacher_name", default=None,
                   help="write FeatureData/<NAME>_<collection>_vid_features.hdf5 and "
                        "TextData/<NAME>_<collection>_query_feat.hdf5 instead of the released names")
    p.add_argument("--batch_size", type=int, default=128, help="frames per forward pass")
    p.add_argument("--text_batch_size", type=int, default=256, help="captions per forward pass")
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


def _extract_texts(opt, captions, get_clip, text_path):
    """Encode the captions not yet in the text file. Returns (n_encoded, n_present)."""
    present = h5_keys(text_path)
    todo = [cap_id for cap_id in captions if cap_id not in present]
    if todo:
        with text_writer(text_path, opt.clip_model) as writer:
            model, processor, device = get_clip()
            encode_captions(writer, todo, captions, lambda texts: encode_texts(model, processor.tokenizer, texts, device),
                            opt.text_batch_size, "captions")
    return len(todo), len(captions) - len(todo)


def all_failed_error(failures):
    """The error of a run where every video failed: how many, and the first reason."""
    return SystemExit(f"none of the {len(failures)} videos could be encoded (the first, {failures[0]}); "
                      f"nothing usable was written to the video file")


def _extract_videos(opt, todo, sources, n_student, get_clip, video_path, failures, n_present):
    """Encode the videos of `todo`, each written whole.

    `sources` maps a video id to (input_type, path); `n_student` to its number
    of student clips (used with --align_to_student). Videos that cannot be read
    (decode.DecodeError) are appended to `failures` ("video_id: reason") and
    skipped; any other error stops the run, the video file left partial.

    Returns:
        (n_encoded, n_frames).
    Raises:
        SystemExit when every video failed (none encoded now, none present
        before, `failures` not empty); the video file is left partial.
    """
    n_done = n_frames = 0
    if not todo:
        return n_done, n_frames

    def sampler_for(video_id):
        if opt.align_to_student:
            return lambda timestamps, duration: centre_indices(len(timestamps), n_student[video_id])
        return lambda timestamps, duration: fps_indices(timestamps, duration, opt.fps)

    def prepare(video_id):
        input_type, path = sources[video_id]
        images = load_frames(path, input_type, sampler_for(video_id), opt.frames_fps)
        yield processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    with video_writer(video_path, opt.clip_model, _sampling_setting(opt)) as writer:
        model, processor, device = get_clip()
        start = time.perf_counter()
        with tqdm(total=len(todo), desc="videos", unit="video") as bar:
            for video_id, stream in prefetch_streams(prepare, todo, opt.num_workers):
                try:
                    pixel_values = next(stream)
                except DecodeError as err:  # a video that cannot be read: record it, go on with the next one
                    failures.append(f"{video_id}: {err}")
                else:
                    feats = encode_images(model, pixel_values, device, opt.batch_size)
                    writer.add(video_id, feats)
                    n_done += 1
                    n_frames += len(feats)
                    if n_done % opt.flush_every == 0:
                        writer.flush()
                bar.update(1)
                bar.set_postfix(frames_per_s=f"{n_frames / max(time.perf_counter() - start, 1e-9):.1f}",
                                failed=len(failures))
        if not n_done and not n_present:  # inside the writer: its file keeps the partial name
            raise all_failed_error(failures)
    return n_done, n_frames


def main(argv=None):
    """Run the extractor; returns the exit status (0, or 1 with --strict and failures).

    Raises SystemExit (non-zero) when every video failed; an error that is not a
    video's decoding (model, API, shapes) propagates with its traceback.
    """
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
        """Load the model once, on first need (a run with nothing left to do loads nothing)."""
        if not clip:
            device = resolve_device(opt.device)
            print(f"loading {opt.clip_model} on {device}")
            clip.extend(load_clip(opt.clip_model, device) + (device,))
        return clip

    text_done = text_present = 0
    if not opt.skip_text:
        text_done, text_present = _extract_texts(opt, captions, get_clip, text_path)

    missing, failures = [], []
    n_done = n_frames = n_present = 0
    if not opt.skip_videos:
        sources = locate_videos(opt.videos, opt.input_type, video_ids)
        missing = [vid for vid in video_ids if vid not in sources]
        n_student = {}
        if opt.align_to_student:
            n_student = student_frame_counts(opt.root_path, opt.collection, opt.visual_feature)
        present = h5_keys(video_path)
        todo = []
        for vid in (v for v in video_ids if v in sources):
            if vid in present:
                n_present += 1
            elif opt.align_to_student and n_student.get(vid, 0) < 1:
                failures.append(f"{vid}: not in the student features {opt.visual_feature}")
            else:
                todo.append(vid)
        n_done, n_frames = _extract_videos(opt, todo, sources, n_student, get_clip, video_path, failures, n_present)
        if failures and not n_done and not n_present:
            raise all_failed_error(failures)

    print(f"captions: {text_done} encoded, {text_present} already present -> {text_path}")
    print(f"videos: {n_done} encoded ({n_frames} frames), {n_present} already present, "
          f"{len(missing)} missing from --videos, {len(failures)} failed -> {video_path}")
    if missing:
        print_list("videos of the caption files missing from --videos", missing)
    if failures:
        print_list("failed videos", failures)
    if opt.teacher_name is not None:
        print(f"train with: --teacher_video_file {os.path.basename(video_path)} "
              f"--teacher_query_file {os.path.basename(text_path)}")
    return 1 if opt.strict and (failures or missing) else 0

