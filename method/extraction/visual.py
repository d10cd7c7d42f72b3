"""The video stage of ``method.extraction.prepare``: every part (student video model, student image model,
teacher) of a video from one decode, on one clip grid."""
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from method.extraction.clips import clip_chunks
from method.extraction.decode import DecodeError, FrameSource
from method.extraction.prefetch import prefetch_streams
from method.extraction.sampling import clip_grid, grid_indices


@dataclass(frozen=True)
class VisualJob:
    """One video to encode: its source and the names of the parts it still lacks."""

    video_id: str
    source: FrameSource
    parts: tuple


def encode_videos(jobs, parts, clip_seconds, clips_per_batch, workers, write):
    """Decode each job's video once (in worker threads, ahead) and encode its parts on the clip grid.

    Args:
        jobs: VisualJobs, in the order to encode them.
        parts: dict part name -> clips.Part.
        clip_seconds: clip length of the grid (sampling.clip_grid).
        clips_per_batch: clips decoded, transformed and encoded together.
        workers: decoding threads.
        write: callable(job, {part: float32 (n_clips, d)}), called for each video
            whose parts all encoded.
    Returns:
        list of (video_id, reason) of the videos that could not be decoded
        (decode.DecodeError); they are skipped, the others go on.
    Raises:
        any other exception of decoding, transforming or encoding (a bug, an API
        change of a dependency), with its traceback: nothing of that video is
        written and the run stops.
    """
    def produce(job):
        timestamps, duration = job.source.timeline()
        starts, stops = clip_grid(duration, clip_seconds)
        plan = {name: grid_indices(timestamps, starts, stops, parts[name].per_clip) for name in job.parts}
        wanted = np.unique(np.concatenate([idx.ravel() for idx in plan.values()]))
        transforms = {name: parts[name].encoder.transform for name in job.parts}
        yield from clip_chunks(job.source.frames(wanted), plan, clips_per_batch, transforms)

    failures = []
    with tqdm(total=len(jobs), desc="videos", unit="video") as bar:
        for job, stream in prefetch_streams(produce, jobs, workers):
            feats = {name: [] for name in job.parts}
            try:
                for chunk in stream:
                    for name, pixels in chunk.items():
                        feats[name].append(parts[name].encode(pixels))
            except DecodeError as err:
                failures.append((job.video_id, str(err)))
            else:
                write(job, {name: np.concatenate(chunks) for name, chunks in feats.items()})
            bar.update(1)
            bar.set_postfix(failed=len(failures))
    return failures
