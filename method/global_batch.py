"""The global training batch as one process sees it: gathered embeddings and the scores it owns.

Shapes: Q queries and V videos of the global batch, L the longest video of the
global batch, R / C the queries / videos of this process's share, d hidden size,
Dt teacher dim.

Every process encodes only its share. ``GlobalBatch.build`` gathers the
shares' frame embeddings (with gradient) and masks, padded to the global L,
so every process sees every video of the one-process batch. A process scores
the rows of its own queries against all V videos (per frame: the
text-to-video and distillation terms); the video-level scores of all rows are
gathered (with gradient) for the columns of its own videos (the
video-to-text terms). Together the processes score the (Q, V, L) tensor once.
With one process the rows and the columns are the whole matrix and nothing
is gathered.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import Dist, gather, offsets
from .losses import BatchLayout, TeacherScores
from .model import ScoreOutput, score_branch
from .teacher import PrecomputedTeacher


@dataclass
class ScorePair:
    """Scores of one branch a process owns: ``rows`` (R queries x V videos), ``cols`` (Q queries x C videos).

    ``cols`` has video-level scores only (its ``frame_scores`` is None).
    """

    rows: ScoreOutput
    cols: ScoreOutput

    def float(self) -> "ScorePair":
        rows = self.rows.float()
        return ScorePair(rows, rows if self.cols is self.rows else self.cols.float())


def _pad_frames(x: torch.Tensor, length: int) -> torch.Tensor:
    """(V, l, ...) -> (V, length, ...) with zeros after the l frames."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, extra))


@dataclass
class GlobalBatch:
    """Gathered embeddings of the global batch and the part of it this process owns."""

    layout: BatchLayout
    queries: dict  # {branch: (R, d)} this process's queries
    frames: dict  # {branch: (V, L, d)} every video
    dist: Dist
    query_sizes: list
    video_sizes: list

    @classmethod
    def build(cls, d: Dist, embeddings: dict, batch: dict) -> "GlobalBatch":
        """Gather the shares: ``embeddings`` from the model's forward, ``batch`` this process's collated share."""
        labels, mask = batch["query_labels"], batch["video_mask"]
        if not d.enabled:
            return cls(BatchLayout.whole(labels, mask), embeddings["queries"], embeddings["frames"], d,
                       [len(labels)], [len(mask)])
        sizes = d.all_gather_ints([mask.shape[0], len(labels), mask.shape[1]])
        video_sizes, query_sizes = [s[0] for s in sizes], [s[1] for s in sizes]
        length = max(s[2] for s in sizes)
        video_start, query_start = offsets(video_sizes)[d.rank], offsets(query_sizes)[d.rank]
        layout = BatchLayout(
            labels=gather(d, labels + video_start, query_sizes),
            video_mask=gather(d, _pad_frames(mask, length), video_sizes),
            rows=slice(query_start, query_start + len(labels)),
            cols=slice(video_start, video_start + mask.shape[0]))
        frames = {k: gather(d, _pad_frames(f, length), video_sizes) for k, f in embeddings["frames"].items()}
        return cls(layout, embeddings["queries"], frames, d, query_sizes, video_sizes)

    @property
    def whole(self) -> bool:
        return not self.dist.enabled

    def branch_scores(self) -> dict[str, ScorePair]:
        """{branch: ScorePair} of the owned rows and columns (one matrix when this is the only process)."""
        lay, out = self.layout, {}
        for name, queries in self.queries.items():
            rows = score_branch(queries, self.frames[name], lay.video_mask)
            if self.whole:
                out[name] = ScorePair(rows, rows)
                continue
            cols = ScoreOutput(gather(self.dist, rows.video_scores, self.query_sizes)[:, lay.cols],
                               gather(self.dist, rows.video_scores_raw, self.query_sizes)[:, lay.cols], None)
            out[name] = ScorePair(rows, cols)
        return out

    def teacher_scores(self, teacher: PrecomputedTeacher, batch: dict, video_scores: bool) -> TeacherScores:
        """The teacher's scores of the owned rows (and columns, with ``video_scores``), float32, no gradient.

        ``frame_cos`` (R, L): each owned query against its own video's frames
        (its video is always in this process's share). ``video_scores``: the
        raw-dot video-level scores (DL-DKD++ soft targets) of the owned rows
        (R, V) and columns (Q, C).
        """
        lay = self.layout
        length = lay.video_mask.shape[1]
        text = batch["teacher_query_feat"].float()
        frames = _pad_frames(batch["teacher_video_feat"].float(), length)
        with torch.autocast(frames.device.type, enabled=False):
            frame_cos = teacher.frame_scores(text, frames, batch["query_labels"])
            if not video_scores:
                return TeacherScores(frame_cos)
            all_text = gather(self.dist, text, self.query_sizes)
            cols = teacher.video_scores_raw(all_text, frames, lay.video_mask[lay.cols])  # (Q, C)
            if self.whole:
                return TeacherScores(frame_cos, cols, cols)
            full = gather(self.dist, cols.t().contiguous(), self.video_sizes).t()  # (Q, V)
            return TeacherScores(frame_cos, full[lay.rows], cols)
