"""The global training batch as one process sees it: gathered embeddings and the scores it owns.

Shapes: Q queries and V videos of the global batch, P the positions of a
score level (frames, clips) of the global batch, R / C the queries / videos
of this process's share, d hidden size, Dt teacher dim.

Every process encodes only its share. Before the forward pass the shares'
sizes are exchanged and every share's frames are padded to the global batch's
longest video (``share_sizes``), so each video is encoded as in the
one-process batch (GMMFormer sizes its Gaussians by the padded length).
``GlobalBatch.build`` gathers the shares' embeddings of every level (with
gradient) and their masks, so every process sees every video. A process
scores the rows of its own queries against all V videos (per position: the
text-to-video and distillation terms); the video-level scores of all rows are
gathered (with gradient) for the columns of its own videos (the video-to-text
terms). Together the processes score each (Q, V, P) tensor once. Terms that
only involve a video and its own captions (the GMMFormer family's
query-diversity and matching losses) are computed from the share alone
(``LocalBatch``). With one process the rows and the columns are the whole
matrix and nothing is gathered.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from method.losses import BatchLayout, LocalBatch, TeacherScores
from method.losses.query import ot_pair_count
from method.models.model import ScoreOutput, score_level
from method.models.teacher import PrecomputedTeacher, mixture_scores
from method.parallel.distributed import Dist, gather, offsets


@dataclass
class ScorePair:
    """Scores of one level of one branch a process owns: ``rows`` (R queries x V videos), ``cols`` (Q x C).

    ``cols`` has video-level scores only (its ``frame_scores`` is None).
    """

    rows: ScoreOutput
    cols: ScoreOutput

    def float(self) -> "ScorePair":
        rows = self.rows.float()
        return ScorePair(rows, rows if self.cols is self.rows else self.cols.float())


@dataclass(frozen=True)
class ShareSizes:
    """Every process's share of the global batch: videos, queries, longest video and matched pairs (OT)."""

    videos: list
    queries: list
    length: int  # frames of the longest video of the global batch
    ot_pairs: int  # matched (caption, clip) pairs of the whole batch (GMMFormerV2's OT term)
    tokens: int = 0  # tokens of the longest caption of the global batch


def share_sizes(d: Dist, batch: dict, n_clips: Optional[int], counts: Optional[list] = None) -> ShareSizes:
    """Exchange the shares' sizes (one small collective; none with one process).

    ``n_clips``: the student's clips per video (None: it has none, so no matched pairs).
    ``counts``: each video's caption count as host ints (the feed's); without
    them they are read from the batch's labels (a device read when on the GPU).
    """
    if counts is None:
        counts = torch.bincount(batch["query_labels"], minlength=batch["video_mask"].shape[0]).tolist()
    local = [batch["video_mask"].shape[0], len(batch["query_labels"]), batch["video_mask"].shape[1],
             ot_pair_count(counts, n_clips) if n_clips else 0, batch["query_mask"].shape[1]]
    sizes = d.all_gather_ints(local)
    return ShareSizes([s[0] for s in sizes], [s[1] for s in sizes], max(s[2] for s in sizes),
                      sum(s[3] for s in sizes), max(s[4] for s in sizes))


def pad_positions(x: torch.Tensor, length: int) -> torch.Tensor:
    """(V, p, ...) -> (V, length, ...) with zeros after the p positions."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, extra))


def pad_share(batch: dict, length: int, tokens: int = 0) -> dict:
    """The share with its frames (and the teacher's) padded to the global batch's ``length`` frames, and its
    captions to its ``tokens`` tokens (when more than the share's own), so that every video and caption is
    encoded as in the one-process batch."""
    out = dict(batch)
    for key in ("video_feat", "video_mask", "teacher_video_feat"):
        if key in batch:
            out[key] = pad_positions(batch[key], length)
    if tokens > batch["query_mask"].shape[1]:
        for key in ("query_feat", "query_mask"):
            out[key] = pad_positions(batch[key], tokens)
    return out


# The batch's inputs of the teacher's scores (``GlobalBatch.teacher_scores``), gathered when replicated.
TEACHER_INPUTS = ("video_mask", "teacher_query_feat", "teacher_video_feat", "teacher_clip_feat")


def gather_outputs(d: Dist, tree, sizes: ShareSizes, query_keys: tuple, key: str = ""):
    """Every process's model output, concatenated in rank order (with gradient): the tensors under a top-level
    key of ``query_keys`` along the queries, the others along the videos."""
    if isinstance(tree, dict):
        return {k: gather_outputs(d, v, sizes, query_keys, key or k) for k, v in tree.items()}
    return gather(d, tree, sizes.queries if key in query_keys else sizes.videos)


@dataclass
class GlobalBatch:
    """Gathered embeddings of the global batch and the part of it this process owns."""

    layout: BatchLayout
    queries: dict  # {branch: (R, d)} this process's queries
    videos: dict  # {branch: {level: (V, P, d)}} every video
    local: LocalBatch  # this share's second query encodings and clips (query-diversity, OT)
    dist: Dist
    sizes: ShareSizes
    replicated: bool = False  # every process holds the whole batch (see the module's docstring)
    teacher_batch: Optional[dict] = None  # replicated: the whole batch's teacher inputs (else the share's)
    outputs: Optional[dict] = None  # the model's forward output: this share's, or (replicated) the whole batch's

    @classmethod
    def build(cls, d: Dist, embeddings: dict, batch: dict, sizes: ShareSizes, replicate: bool = False,
              query_keys: tuple = ()) -> "GlobalBatch":
        """Gather the shares: ``embeddings`` from the model's forward, ``batch`` this process's (padded) share.

        ``replicate``: every process gets the whole batch (see the module's docstring); ``query_keys``: the
        top-level keys of ``embeddings`` besides "queries" and "queries2" whose tensors are per query (the
        student's ``query_outputs``).
        """
        labels, mask = batch["query_labels"], batch["video_mask"]
        if replicate and d.enabled:
            whole = gather_outputs(d, embeddings, sizes, ("queries", "queries2", *query_keys))
            inputs = {k: v for k, v in batch.items() if k in TEACHER_INPUTS}
            inputs = gather_outputs(d, inputs, sizes, ("teacher_query_feat",))
            inputs["query_labels"] = gather(d, labels + offsets(sizes.videos)[d.rank], sizes.queries)
            view = cls.build(Dist(), whole, inputs, sizes)
            view.dist, view.replicated, view.teacher_batch = d, True, inputs
            return view
        # without a second encoding (--reuse_query_encoding) the terms read the first one
        local = LocalBatch(queries2=embeddings.get("queries2", embeddings["queries"]),
                           clips={b: lv["clip"] for b, lv in embeddings["videos"].items() if "clip" in lv},
                           labels=labels, num_queries=sum(sizes.queries), num_pairs=sizes.ot_pairs)
        if not d.enabled:
            layout = BatchLayout.whole(labels, mask, embeddings["masks"])
            return cls(layout, embeddings["queries"], embeddings["videos"], local, d, sizes, outputs=embeddings)
        video_start, query_start = offsets(sizes.videos)[d.rank], offsets(sizes.queries)[d.rank]
        layout = BatchLayout(
            labels=gather(d, labels + video_start, sizes.queries),
            video_mask=gather(d, mask, sizes.videos),
            rows=slice(query_start, query_start + len(labels)),
            cols=slice(video_start, video_start + mask.shape[0]),
            level_masks={level: gather(d, m, sizes.videos) for level, m in embeddings["masks"].items()})
        videos = {b: {level: gather(d, f, sizes.videos) for level, f in levels.items()}
                  for b, levels in embeddings["videos"].items()}
        return cls(layout, embeddings["queries"], videos, local, d, sizes, outputs=embeddings)

    @property
    def whole(self) -> bool:
        """Whether this process owns every row and column (one process, or a replicated objective)."""
        return not self.dist.enabled or self.replicated

    @property
    def scale(self) -> float:
        """The factor of this process's terms: 1, or 1 / processes when each holds the whole objective."""
        return 1.0 / self.dist.world if self.replicated else 1.0

    def branch_scores(self, score: Optional[Callable[..., ScoreOutput]] = None) -> dict[str, dict[str, ScorePair]]:
        """{branch: {level: ScorePair}} of the owned rows and columns (one matrix when this is the only process).

        ``score(branch, level, queries (R, d), feats (V, P, d), mask (V, P)) -> ScoreOutput`` scores the owned
        rows (``DLDKD.level_scorer``: the student's ``level_scores``); default ``score_level``.
        """
        lay, out = self.layout, {}
        for name, queries in self.queries.items():
            out[name] = {}
            for level, feats in self.videos[name].items():
                if score is None:
                    rows = score_level(queries, feats, lay.level_masks[level])
                else:
                    rows = score(name, level, queries, feats, lay.level_masks[level])
                if self.whole:
                    out[name][level] = ScorePair(rows, rows)
                    continue
                cols = ScoreOutput(gather(self.dist, rows.video_scores, self.sizes.queries)[:, lay.cols],
                                   gather(self.dist, rows.video_scores_raw, self.sizes.queries)[:, lay.cols], None)
                out[name][level] = ScorePair(rows, cols)
        return out

    def teacher_scores(self, teacher: PrecomputedTeacher, batch: dict, video_scores: bool,
                       kd_level: str = "frame") -> TeacherScores:
        """The teacher's scores of the owned rows (and columns, with ``video_scores``), float32, no gradient.

        ``frame_cos`` (R, P), or (K, R, P) for K teachers: each owned query against
        its own video's positions at ``kd_level`` (its video is always in this
        process's share): the teacher's frames aligned to the student's frames
        ("frame", positions beyond a video's frames masked), or the teacher's
        frames pooled to the clips ("clip", all counted). ``video_scores``: the
        raw-dot video-level scores over the frames (DL-DKD++ soft targets) of
        the owned rows (R, V) and columns (Q, C); several teachers give scores
        whose softmax is the mean of theirs (``mixture_scores``), over the
        videos for rows and over the queries for columns.
        """
        if self.replicated:  # the whole batch's inputs, scored as by one process
            one = dataclasses.replace(self, dist=Dist(), replicated=False, teacher_batch=None)
            return one.teacher_scores(teacher, self.teacher_batch, video_scores, kd_level)
        lay = self.layout
        length = lay.level_masks[kd_level].shape[1]
        text = batch["teacher_query_feat"].float()
        own = batch["query_labels"]
        if kd_level == "frame":
            positions = pad_positions(batch["teacher_video_feat"].float(), length)
            kd_mask = pad_positions(batch["video_mask"], length)[own]
        else:
            positions = batch["teacher_clip_feat"].float()
            kd_mask = torch.ones(len(own), length, device=positions.device)
        with torch.autocast(positions.device.type, enabled=False):
            frame_cos = teacher.frame_scores(text, positions, own)
            if not video_scores:
                return TeacherScores(frame_cos, kd_mask)
            frames = batch["teacher_video_feat"].float()
            all_text = gather(self.dist, text, self.sizes.queries)
            cols = teacher.video_scores_raw(all_text, frames, batch["video_mask"])  # ([K,] Q, C)
            if self.whole:
                return TeacherScores(frame_cos, kd_mask, mixture_scores(cols, 1), mixture_scores(cols, 0))
            # every process's columns: the video axis (last) gathered as the first
            full = gather(self.dist, cols.movedim(-1, 0).contiguous(), self.sizes.videos).movedim(0, -1)
            return TeacherScores(frame_cos, kd_mask, mixture_scores(full[..., lay.rows, :], 1),
                                 mixture_scores(cols, 0))
