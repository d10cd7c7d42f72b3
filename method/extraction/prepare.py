"""Every feature training reads, from raw videos and captions: ``python -m method.prepare ROOT COLLECTION``.

Writes the released layout under ``ROOT/COLLECTION`` (docs/own_data.md)::

    TextData/<collection>{train,val,test}.caption.txt       the captions of each split
    TextData/roberta_<collection>_query_feat.hdf5           cap_id -> (n_tokens, d) student tokens
    FeatureData/<visual_feature>/                           BigFile: video_id -> (n_clips, d_video + d_image)
    FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5   video_id -> (n_clips, d_teacher)
    TextData/clip_ViT_B_32_<collection>_query_feat.hdf5     cap_id -> (d_teacher,)

(a teacher other than CLIP writes ``<teacher>_<collection>_...`` instead). The
student's rows are clips of a fixed time grid (``--clip_seconds``): per clip the
video model's features on ``--video_frames_per_clip`` frames, then the image
model's on ``--image_frames_per_clip`` frames (mean-pooled); the teacher's rows
are the image features of each clip's centre frame, so every file has one row
per clip. Runs resume where they stopped; videos that cannot be read
(``decode.DecodeError``) are listed, skipped and left out of the caption files,
while any other error (a model, an API change, a shape) stops the run with its
traceback, and so does a run where no video can be read.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shlex

import numpy as np

from method.common.cli import HelpFormatter, resolve_device
from method.extraction.captions import (
    SPLITS,
    parse_split_rule,
    read_single_file,
    released_captions,
    split_captions,
    video_id,
    write_caption_files,
)
from method.extraction.clips import Part
from method.extraction.decode import FrameSource
from method.extraction.encoders import DualEncoder, ImageEncoder, TokenEncoder, VideoEncoder, model_config
from method.extraction.sources import locate_videos, print_list
from method.extraction.teacher import DEFAULT_CLIP_MODEL, output_paths, text_writer, video_writer
from method.extraction.text import encode_captions
from method.extraction.visual import VisualJob, encode_videos
from method.extraction.writers import BigFileWriter, H5Writer, h5_keys, write_text_atomic

DEFAULT_VIDEO_MODEL = "MCG-NJU/videomae-base"
DEFAULT_IMAGE_MODEL = "microsoft/resnet-152"
DEFAULT_TEXT_MODEL = "roberta-base"
STUDENT_PARTS = ("video", "image")  # the order of the student's concatenated features
TEXT_ATTR = "prepare_settings"       # attribute of the token file recording how it was made
FAILED_FILE = "prepare_failed_videos.txt"


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m method.prepare",
        description="Write every feature DL-DKD training reads (student frames and tokens, teacher frames and "
                    "captions, caption files) for a collection of raw videos and captions.",
        formatter_class=HelpFormatter)
    p.add_argument("root_path", metavar="ROOT",
                   help="data root; the collection is written to ROOT/COLLECTION/{TextData,FeatureData}")
    p.add_argument("collection", metavar="COLLECTION",
                   help="name of the collection (its folder and the prefix of its files)")
    g = p.add_argument_group("inputs")
    g.add_argument("--videos", required=True, nargs="+", action="extend", metavar="DIR",
                   help="folder(s) of video files (any container FFmpeg reads; video_id = file stem) or of frame "
                        "folders (one per video, named by its video_id); searched in order")
    g.add_argument("--input_type", choices=("auto", "videos", "frames"), default="auto",
                   help="what each --videos folder holds; auto: whichever of files / sub-folders matches more "
                        "caption videos")
    g.add_argument("--frames_fps", type=float, default=3.0,
                   help="frame rate of frame folders: frame i is shown at i / frames_fps seconds")
    g.add_argument("--captions", metavar="FILE",
                   help="one caption file for all splits, '<cap_id> <caption>' or '<video_id> <caption>' a line "
                        "(cap_ids <video_id>#<n> are then made); split by --split_rule. Default: the released "
                        "caption files already in ROOT/COLLECTION/TextData")
    g.add_argument("--split_rule", default="ratio:0.7,0.1,0.2",
                   help="with --captions: ratio:TRAIN,VAL,TEST (videos ordered by a hash of their id and "
                        "--split_seed, then cut at these shares) or file:PATH ('<video_id> train|val|test' a line)")
    g.add_argument("--split_seed", type=int, default=0, help="seed of the ratio split")
    g = p.add_argument_group("student frames (FeatureData/<visual_feature>/, a BigFile)")
    g.add_argument("--visual_feature", default="auto",
                   help="folder name of the student frames, the --visual_feature of training; auto: the model "
                        "names, e.g. videomae_base_resnet_152")
    g.add_argument("--clip_seconds", type=float, default=1.5,
                   help="length of the clips of the time grid (TVR's features: 1.5); one row per clip")
    g.add_argument("--video_model", default=DEFAULT_VIDEO_MODEL,
                   help="Hugging Face video model (id or folder) for the clip features, mean of its last hidden "
                        "state over tokens (VideoMAE-base: 768-d), first in each row; none: image features only")
    g.add_argument("--video_frames_per_clip", type=int, default=None,
                   help="frames per clip for the video model, evenly spread over the clip; a multiple of the "
                        "model's own clip length, its features averaged over the windows (default: the model's "
                        "num_frames, 16 for VideoMAE)")
    g.add_argument("--image_model", default=DEFAULT_IMAGE_MODEL,
                   help="Hugging Face image model (id or folder) for the frame features, its pooled output "
                        "(ResNet-152: 2048-d), after the video features in each row; none: video features only")
    g.add_argument("--image_frames_per_clip", type=int, default=1,
                   help="frames per clip for the image model, evenly spread over the clip, features averaged "
                        "(1: the clip's centre frame)")
    g = p.add_argument_group("student text (TextData/roberta_<collection>_query_feat.hdf5)")
    g.add_argument("--text_model", default=DEFAULT_TEXT_MODEL,
                   help="Hugging Face text model (id or folder) for the per-token features of its last layer, <s> and "
                        "</s> included (roberta-base: 768-d, roberta-large: 1024-d); none: keep or skip that file")
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher_model", default=DEFAULT_CLIP_MODEL,
                   help="CLIP-like Hugging Face model (CLIP, SigLIP, ...) for the teacher's frame and caption "
                        "features; none: no teacher files (train with --no_teacher)")
    g.add_argument("--teacher_name", default="auto",
                   help="teacher files FeatureData/<NAME>_<collection>_vid_features.hdf5 and TextData/<NAME>_"
                        "<collection>_query_feat.hdf5; auto: the released CLIP names for a CLIP model, else the "
                        "model's name")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, with fp16 autocast), cpu, cuda or cuda:N")
    g.add_argument("--num_workers", type=int, default=4, help="threads decoding and preprocessing videos ahead")
    g.add_argument("--clips_per_batch", type=int, default=16,
                   help="clips of a video decoded, preprocessed and encoded together (bounds memory: about "
                        "num_workers x 2 x clips_per_batch x frames per clip x 0.6 MB at 224 px)")
    g.add_argument("--text_batch_size", type=int, default=128, help="captions per forward pass")
    return p


def short_name(model):
    """A file-name-safe name of a model id or folder: microsoft/resnet-152 -> resnet_152."""
    return re.sub(r"[^a-z0-9]+", "_", os.path.basename(os.path.normpath(model)).lower()).strip("_") or "model"


def _none(value):
    return None if value.lower() == "none" else value


def parse_args(argv=None):
    """Flags, with "none" models as None and the defaults that depend on the models resolved.

    Adds ``opt.video_group``: the frames of one video-model input (the model's clip length).
    """
    parser = build_parser()
    opt = parser.parse_args(argv)
    for key in ("video_model", "image_model", "text_model", "teacher_model"):
        setattr(opt, key, _none(getattr(opt, key)))
    if opt.video_model is None and opt.image_model is None:
        parser.error("--video_model none and --image_model none: the student needs one of them")
    if min(opt.clip_seconds, opt.image_frames_per_clip, opt.clips_per_batch, opt.text_batch_size,
           opt.video_frames_per_clip or 1) <= 0:
        parser.error("--clip_seconds, --video_frames_per_clip, --image_frames_per_clip, --clips_per_batch and "
                     "--text_batch_size must be positive")
    opt.video_group = None
    if opt.video_model is not None:
        opt.video_group = getattr(model_config(opt.video_model), "num_frames", None)
        opt.video_frames_per_clip = opt.video_frames_per_clip or opt.video_group
        if opt.video_frames_per_clip is None:
            parser.error(f"--video_frames_per_clip is needed: {opt.video_model} has no num_frames in its config")
        opt.video_group = opt.video_group or opt.video_frames_per_clip
        if opt.video_frames_per_clip % opt.video_group:
            parser.error(f"--video_frames_per_clip {opt.video_frames_per_clip} must be a multiple of "
                         f"{opt.video_model}'s clip length {opt.video_group}")
    if opt.visual_feature == "auto":
        opt.visual_feature = "_".join(short_name(m) for m in (opt.video_model, opt.image_model) if m)
    if opt.teacher_model is None:
        opt.teacher_name = None
    elif opt.teacher_name == "auto":
        is_clip = model_config(opt.teacher_model).model_type == "clip"
        opt.teacher_name = None if is_clip else short_name(opt.teacher_model)
    for name in (opt.visual_feature, opt.teacher_name or ""):
        if "/" in name or name.startswith("."):
            parser.error(f"{name!r}: a feature name must be a plain file name")
    return opt


def student_settings(opt):
    """How the student frames are made, recorded in the BigFile folder (all of it must match on a resume)."""
    return {"video_model": opt.video_model, "video_frames_per_clip": opt.video_frames_per_clip,
            "image_model": opt.image_model, "image_frames_per_clip": opt.image_frames_per_clip,
            "clip_seconds": opt.clip_seconds, "frames_fps": opt.frames_fps}


def load_splits(opt):
    """The captions of each split and whether they came from the collection's own caption files."""
    if opt.captions is None:
        return released_captions(opt.root_path, opt.collection), True
    return split_captions(read_single_file(opt.captions), parse_split_rule(opt.split_rule), opt.split_seed), False


def check_captions(splits):
    """dict cap_id -> text over all splits; refuses ids that repeat or that HDF5 cannot hold."""
    captions, where = {}, {}
    for split, caps in splits.items():
        for cap_id, text in caps:
            if cap_id in where:
                raise SystemExit(f"caption id {cap_id!r} is in both the {where[cap_id]} and the {split} split")
            if "/" in cap_id:
                raise SystemExit(f"caption id {cap_id!r}: an id with '/' cannot be an HDF5 key")
            where[cap_id] = split
            captions[cap_id] = text
    return captions


def missing_video_error(missing, captions, folders):
    """The error for caption videos found in no --videos folder: the first caption, its video, the folders."""
    vid = missing[0]
    cap_id = next(c for c in captions if video_id(c) == vid)
    more = f" ({len(missing)} videos are missing in all, e.g. {missing[:5]})" if len(missing) > 1 else ""
    return SystemExit(f"caption {cap_id!r}: its video {vid!r} is in none of the --videos folders "
                      f"{', '.join(folders)} (no video file {vid}.<ext>, no frame folder {vid}/){more}")


def encode_text_stage(opt, captions, token_path, teacher_text_path, get_teacher, device):
    """Student tokens and teacher sentences of the captions not yet written. Returns {label: (encoded, present)}."""
    report = {}
    if opt.text_model is not None:
        present = h5_keys(token_path)
        # similar lengths in a batch pad less
        todo = sorted((c for c in captions if c not in present), key=lambda c: len(captions[c]))
        if todo:
            with H5Writer(token_path, {"text_model": opt.text_model}, TEXT_ATTR, strict=("text_model",),
                          hint="--text_model none to keep the file as it is") as writer:
                encoder = TokenEncoder(opt.text_model, device)
                encode_captions(writer, todo, captions, encoder.encode, opt.text_batch_size, "student tokens")
        report[f"student tokens -> {token_path}"] = (len(todo), len(captions) - len(todo))
    if opt.teacher_model is not None:
        present = h5_keys(teacher_text_path)
        todo = [c for c in captions if c not in present]
        if todo:
            with text_writer(teacher_text_path, opt.teacher_model) as writer:
                encode_captions(writer, todo, captions, get_teacher().encode_texts, opt.text_batch_size,
                                "teacher captions")
        report[f"teacher captions -> {teacher_text_path}"] = (len(todo), len(captions) - len(todo))
    return report


def visual_jobs(opt, video_ids, sources, student_done, teacher_done):
    """The videos with parts still to encode, in caption order."""
    student = tuple(p for p, model in zip(STUDENT_PARTS, (opt.video_model, opt.image_model)) if model)
    jobs = []
    for vid in video_ids:
        parts = (student if vid not in student_done else ()) + (
            ("teacher",) if opt.teacher_model is not None and vid not in teacher_done else ())
        if parts:
            jobs.append(VisualJob(vid, FrameSource(*sources[vid], opt.frames_fps), parts))
    return jobs


def build_parts(opt, names, device, get_teacher):
    """The encoders of the parts in `names` (loaded now), as clips.Part."""
    parts = {}
    if "video" in names:
        per_input = opt.video_frames_per_clip // opt.video_group
        parts["video"] = Part(VideoEncoder(opt.video_model, device, opt.clips_per_batch * per_input),
                              opt.video_frames_per_clip, opt.video_group)
    if "image" in names:
        parts["image"] = Part(ImageEncoder(opt.image_model, device, opt.clips_per_batch * opt.image_frames_per_clip),
                              opt.image_frames_per_clip)
    if "teacher" in names:
        parts["teacher"] = Part(get_teacher(), 1)
    return parts


def encode_visual_stage(opt, video_ids, sources, bigfile, teacher_video_path, get_teacher, device):
    """Student and teacher frames of the videos not yet written. Returns (jobs, failures).

    A video that cannot be read (decode.DecodeError) is a failure, skipped; any other error stops the run,
    as does a run where every video of `video_ids` failed (SystemExit), leaving the outputs partial.
    """
    teacher_done = h5_keys(teacher_video_path) if opt.teacher_model is not None else set()
    jobs = visual_jobs(opt, video_ids, sources, bigfile.done(), teacher_done)
    if not jobs:
        return jobs, []
    names = {name for job in jobs for name in job.parts}
    with contextlib.ExitStack() as stack:
        teacher_writer = None
        if "teacher" in names:
            teacher_writer = stack.enter_context(video_writer(
                teacher_video_path, opt.teacher_model, f"grid:{opt.clip_seconds:g}s,frames_fps:{opt.frames_fps:g}",
                hint="another --teacher_name"))
        parts = build_parts(opt, names, device, get_teacher)

        def write(job, feats):
            if "teacher" in feats:
                teacher_writer.add(job.video_id, feats["teacher"])
                teacher_writer.flush()
            student = [feats[p] for p in STUDENT_PARTS if p in feats]
            if student:
                bigfile.add(job.video_id, np.concatenate(student, axis=1))

        failures = encode_videos(jobs, parts, opt.clip_seconds, opt.clips_per_batch, opt.num_workers, write)
        if len(failures) == len(video_ids):  # nothing usable; inside the writers, so their files stay partial
            vid, reason = failures[0]
            raise SystemExit(f"none of the {len(video_ids)} videos could be decoded (the first, {vid}: {reason}); "
                             f"nothing was written to the caption files")
    return jobs, failures


def write_failures(opt, failures, captions):
    """Write (or remove) the list of failed videos; print them. Returns the set of failed video ids."""
    path = os.path.join(opt.root_path, opt.collection, FAILED_FILE)
    if not failures:
        if os.path.isfile(path):
            os.remove(path)
        return set()
    write_text_atomic(path, "".join(f"{vid}\t{reason}\n" for vid, reason in failures))
    failed = {vid for vid, _ in failures}
    n_caps = sum(video_id(c) in failed for c in captions)
    print_list("videos that failed to decode", [f"{vid}: {reason}" for vid, reason in failures])
    print(f"warning: {len(failed)} videos failed to decode (listed in {path}); their {n_caps} captions are left "
          f"out of the caption files; the next run tries them again")
    return failed


def train_command(opt, teacher_video_path, teacher_text_path):
    """The training command for the written collection, shell-quoted (do_custom.sh runs it)."""
    cmd = ["python", "-m", "method.train", "--root_path", opt.root_path, "--collection", opt.collection,
           "--visual_feature", opt.visual_feature]
    if opt.teacher_model is None:
        cmd.append("--no_teacher")
    elif opt.teacher_name is not None:
        cmd += ["--teacher_video_file", os.path.basename(teacher_video_path),
                "--teacher_query_file", os.path.basename(teacher_text_path)]
    return shlex.join(cmd)


def main(argv=None):
    """Run the command; returns 0 (failed videos are reported, not fatal, unless every video failed: SystemExit)."""
    opt = parse_args(argv)
    base = os.path.join(opt.root_path, opt.collection)
    splits, from_collection = load_splits(opt)
    captions = check_captions(splits)
    if not captions:
        raise SystemExit("no captions")
    video_ids = list(dict.fromkeys(video_id(c) for c in captions))
    print(f"captions: {len(captions)} of {len(video_ids)} videos ("
          + ", ".join(f"{s} {len(splits.get(s, []))}" for s in SPLITS) + ")")
    sources = locate_videos(opt.videos, opt.input_type, video_ids)
    missing = [vid for vid in video_ids if vid not in sources]
    if missing:
        raise missing_video_error(missing, captions, opt.videos)

    bigfile = BigFileWriter(os.path.join(base, "FeatureData", opt.visual_feature), student_settings(opt),
                            strict=tuple(student_settings(opt)), hint="another --visual_feature")
    token_path = os.path.join(base, "TextData", f"roberta_{opt.collection}_query_feat.hdf5")
    teacher_video_path, teacher_text_path = output_paths(opt.root_path, opt.collection, opt.teacher_name)
    device = resolve_device(opt.device)

    @functools.cache
    def get_teacher():
        return DualEncoder(opt.teacher_model, device, opt.clips_per_batch)

    for label, (done, present) in encode_text_stage(opt, captions, token_path, teacher_text_path,
                                                     get_teacher, device).items():
        print(f"{label}: {done} encoded, {present} already present")
    jobs, failures = encode_visual_stage(opt, video_ids, sources, bigfile, teacher_video_path, get_teacher, device)
    assembled = bigfile.finish(order=video_ids)
    print(f"videos: {len(jobs)} of {len(video_ids)} had parts to encode, {len(jobs) - len(failures)} encoded, "
          f"{len(failures)} failed; student frames {'written' if assembled else 'unchanged'} -> {bigfile.folder}")
    failed = write_failures(opt, failures, captions)
    for path in write_caption_files(opt.root_path, opt.collection, splits, failed, keep_full=from_collection):
        print(f"wrote {path}")
    print("train with: " + train_command(opt, teacher_video_path, teacher_text_path))
    return 0

