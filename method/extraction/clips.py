"""One video's sampled frames, grouped into chunks of consecutive clips and transformed per encoder.

A *part* is one encoder's view of the clip grid: ``plan[part]`` is an int64
``(n_clips, k)`` array of frame indices (k frames per clip). A chunk holds the
pixels of every part for a run of consecutive clips, so memory holds one
chunk's frames however long the video is.
"""
from dataclasses import dataclass

import numpy as np
import torch


def clip_chunks(frames, plan, chunk_clips, transforms):
    """Yield one video's clips in chunks, with each part's frames transformed.

    Args:
        frames: iterator of (index, PIL image) over the sorted unique indices of
            all of `plan` (FrameSource.frames).
        plan: dict part -> int64 (n_clips, k_part) frame indices, non-decreasing in
            row-major order (sampling.grid_indices).
        chunk_clips: clips per chunk.
        transforms: dict part -> callable(list of PIL images) -> Tensor (n, C, H, W).
    Yields:
        dict part -> Tensor (clips, k_part, C, H, W), for consecutive chunks of clips.
    """
    n_clips = len(next(iter(plan.values())))
    uses = {part: set(np.unique(idx).tolist()) for part, idx in plan.items()}
    cache = {part: {} for part in plan}  # frame index -> (C, H, W), in increasing index order
    frames = iter(frames)
    decoded = -1
    for start in range(0, n_clips, chunk_clips):
        stop = min(start + chunk_clips, n_clips)
        top = max(int(idx[start:stop].max()) for idx in plan.values())
        new = []
        while decoded < top:
            decoded, image = next(frames)
            new.append((decoded, image))
        for part, transform in transforms.items():
            mine = [(i, image) for i, image in new if i in uses[part]]
            if mine:
                cache[part].update(zip([i for i, _ in mine], transform([image for _, image in mine])))
        chunk = {}
        for part, idx in plan.items():
            keys = np.fromiter(cache[part], np.int64, len(cache[part]))
            stacked = torch.stack(list(cache[part].values()))
            chunk[part] = stacked[torch.from_numpy(np.searchsorted(keys, idx[start:stop]))]
            if stop < n_clips:  # keep only the frames later clips still use
                cache[part] = {i: x for i, x in cache[part].items() if i >= idx[stop, 0]}
        yield chunk


@dataclass
class Part:
    """An encoder on the clip grid.

    Attributes:
        encoder: has ``transform(images) -> (n, C, H, W)`` and
            ``encode(x) -> (n, d)``, x (n, C, H, W) when `group` is 1, else (n, group, C, H, W).
        per_clip: frames sampled per clip.
        group: frames per encoder input (1 for an image model, the clip length
            of a video model); per_clip is a multiple of it.
    """

    encoder: object
    per_clip: int
    group: int = 1

    def encode(self, pixels):
        """(clips, per_clip, C, H, W) -> float32 ndarray (clips, d): the mean over the clip's encoder inputs."""
        n = len(pixels)
        x = pixels.reshape(n * (self.per_clip // self.group), self.group, *pixels.shape[2:])
        feats = self.encoder.encode(x[:, 0] if self.group == 1 else x)
        return feats.reshape(n, self.per_clip // self.group, -1).mean(axis=1)
