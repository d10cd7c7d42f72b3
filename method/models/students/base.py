"""What every student network shares: its configuration's common part and the interface the rest relies on.

A *student* is the network of one branch: a query encoder and a video
encoder into one space of size d. A video is scored at one or more *levels*
(DL-DKD: per frame; the GMMFormer family: 32 clips and the frames), each a
set of positions whose cosine with the query is maxed over. Shapes: V
videos, Q queries, L padded frames (<= max_ctx_l), N padded tokens
(<= max_desc_l), K clips (map_size), Dv / Dq input sizes, d hidden size.

Each student owns its configuration (timm-style): a dataclass derived from
``StudentConfig`` with its own fields, declared with ``setting`` (the help
text of the command-line flag that sets it), and its per-collection values
in ``collection_defaults``. The command line, the checkpoints and the docs
are built from these declarations, so a new student is one module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from method.models.students.blocks import MASK_VALUE

# Fields of a student's configuration that come from the data, not from a flag.
DATA_FIELDS = ("visual_input_size", "query_input_size")


@dataclass
class ScoreOutput:
    """Scores of one level of one branch for Q queries against V videos of P positions."""

    video_scores: torch.Tensor  # (Q, V) max over counted positions of the cosine
    video_scores_raw: torch.Tensor  # (Q, V) max over counted positions of the dot product
    frame_scores: torch.Tensor | None  # (Q, V, P) cosine, uncounted positions = MASK_VALUE (None: video level only)

    def float(self) -> "ScoreOutput":
        """float32 copies (after a bf16 autocast forward), so the losses run in float32."""
        frames = None if self.frame_scores is None else self.frame_scores.float()
        return ScoreOutput(self.video_scores.float(), self.video_scores_raw.float(), frames)


def frame_dot(query: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """query: (Q, d), frames: (V, P, d) -> dot products (Q, V, P), one matmul."""
    v, p, d = frames.shape
    return (query @ frames.reshape(v * p, d).t()).view(query.shape[0], v, p)


def score_level(query: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> ScoreOutput:
    """Cosine and dot-product scores of queries (Q, d) against positions (V, P, d) counted by ``mask`` (V, P).

    Two matmuls, as released: unit vectors for the cosine, raw vectors for the
    NCE scores; uncounted positions are masked in place on the fresh matmul outputs.
    """
    pad = (mask == 0)[None]  # (1, V, P)
    cos = frame_dot(F.normalize(query, dim=-1, eps=1e-12), F.normalize(frames, dim=-1, eps=1e-12))
    raw = frame_dot(query, frames)
    cos = cos.masked_fill_(pad, MASK_VALUE)
    raw = raw.masked_fill_(pad, MASK_VALUE)
    return ScoreOutput(cos.amax(dim=-1), raw.amax(dim=-1), cos)


def normalize_frames(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length positions (V, P, d) for inference, uncounted ones replaced by the video's first position.

    A repeated counted position never changes a max, so scoring needs no mask.
    """
    unit = F.normalize(frames, dim=-1, eps=1e-12)
    return torch.where(mask[..., None] > 0, unit, unit[:, :1])


def cosine_video_scores(query: torch.Tensor, frames_unit: torch.Tensor) -> torch.Tensor:
    """Inference: queries (Q, d) vs ``normalize_frames`` output (V, P, d) -> max cosine over positions (Q, V)."""
    return frame_dot(F.normalize(query, dim=-1, eps=1e-12), frames_unit).amax(dim=-1)


def setting(default: Any = MISSING, help: str = "", choices: Optional[tuple] = None):
    """A configuration field that is also a command-line flag ``--<name>`` with this help text."""
    return field(default=default, metadata={"help": help, "choices": choices})


class ConfigError(ValueError):
    """A stored configuration that cannot rebuild the model; the message names the key."""


@dataclass
class StudentConfig:
    """The settings every student has. Subclasses add their own (``setting(...)`` fields)."""

    visual_input_size: int = setting(0, "frame feature size Dv (read from the data)")
    query_input_size: int = setting(0, "token feature size Dq (read from the data)")
    hidden_size: int = setting(384, "hidden size d of the student's encoders")
    n_heads: int = setting(4, "attention heads")
    max_ctx_l: int = setting(128, "max frames; longer videos are mean-pooled to it")
    max_desc_l: int = setting(30, "max tokens of a caption; longer ones are truncated")
    input_drop: float = setting(0.1, "dropout on the inputs and positional encodings")
    drop: float = setting(0.1, "dropout in the attention blocks")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "the configuration") -> "StudentConfig":
        """Every field from ``d``: a missing one is refused (its default could change the numbers)."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ConfigError(f"{where} lacks {missing[0]!r}" + (f" (and {len(missing) - 1} more: {missing[1:]})"
                                                                  if len(missing) > 1 else "")
                              + f", a setting of the {cls.__name__}")
        return cls(**{n: d[n] for n in names})

    @classmethod
    def flag_fields(cls) -> list[dataclasses.Field]:
        """The fields set by command-line flags (all but the data's sizes)."""
        return [f for f in fields(cls) if f.name not in DATA_FIELDS]


class Student(nn.Module):
    """Base class of a branch network; subclasses register in ``method.models.students``.

    Class attributes:
        name: registry name (``--student``).
        Config: the student's configuration dataclass (``StudentConfig`` or a subclass).
        collection_defaults: {collection: {field: value}}: values of its settings (and of its
            objective's, ``Losses``) that differ per collection, as its authors' configs have them.
        Losses: dataclass of its objective's own factors (flags too), or None.
        levels: score levels in loss order, e.g. ``("frame",)`` or ``("clip", "frame")``.
        needs_clips: whether ``encode_video`` reads the (V, K, Dv) mean-pooled clips.
        kd_levels: levels whose positions the teacher's features can be pooled onto
            (distillation over their per-position scores); the first is the default.
        kd_levels_note: why a level is missing from ``kd_levels`` (for the error message).
        shares_query_proj: whether DL-DKD's exploration branch borrows the inheritance branch's
            query projection by default (the released ICCV model's quirk, for its student).
        level_weights: inference weight of each level in the branch's score.
        query_outputs / video_outputs: the keys of ``train_outputs``, the training forward's extra
            outputs, whose tensors' first dimension is the batch's captions (Q) / videos (V); ``DLDKD.forward``
            returns each as a top-level key ``{branch: tensor}`` (a distributed run gathers them along that
            dimension). Empty for students whose levels score a pooled query (``score_level``). A student whose
            outputs depend on its configuration sets them per instance in ``__init__`` (``DLDKD`` reads its
            branches' instances; ``--robust_alignment``: ``probabilistic.RobustAlignmentHooks``).
        unused_parameters: names of parameters that exist (the authors' state dicts) but never get a gradient;
            several processes leave them out of the gradient exchange.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = StudentConfig
    Losses: ClassVar[Optional[type]] = None
    collection_defaults: ClassVar[dict] = {}
    levels: ClassVar[tuple[str, ...]] = ("frame",)
    needs_clips: ClassVar[bool] = False
    kd_levels: ClassVar[tuple[str, ...]] = ("frame",)
    kd_levels_note: ClassVar[str] = ""
    shares_query_proj: ClassVar[bool] = False
    level_weights: ClassVar[dict[str, float]] = {"frame": 1.0}
    query_outputs: ClassVar[tuple[str, ...]] = ()
    unused_parameters: ClassVar[tuple[str, ...]] = ()
    video_outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: StudentConfig, with_query_proj: bool = True):
        super().__init__()
        self.cfg = cfg

    @classmethod
    def defaults(cls, collection: Optional[str]) -> dict:
        """The student's own values (configuration and objective) for ``collection``."""
        out = {f.name: f.default for f in cls.Config.flag_fields()}
        if cls.Losses is not None:
            out.update({f.name: f.default for f in fields(cls.Losses)})
        return {**out, **cls.collection_defaults.get(collection, {})}

    @classmethod
    def n_clips(cls, cfg: StudentConfig) -> Optional[int]:
        """Clips per video that ``encode_video`` reads, or None."""
        return None

    @classmethod
    def objective_terms(cls, losses: Any, nce_weight: float) -> dict:
        """Keyword arguments of ``method.losses.Objective`` for this student's retrieval terms.

        ``losses``: an instance of ``Losses`` (None when the student has none);
        ``nce_weight``: the InfoNCE weight of the frame level.
        """
        return {"nce_weights": {level: nce_weight for level in cls.levels}}

    @classmethod
    def objective_for(cls, cfg: StudentConfig, losses: Any, nce_weight: float) -> dict:
        """``objective_terms`` given the student's configuration too, for terms a setting of the network turns on
        (``--robust_alignment``'s MIL and VIB); ``method.config.settings`` calls this. Default: ``objective_terms``."""
        return cls.objective_terms(losses, nce_weight)

    @classmethod
    def padding_changes_numbers(cls, cfg: StudentConfig) -> bool:
        """Whether padding a batch's videos further changes their encodings (then ``--compile``'s buckets cannot
        be used)."""
        return False

    def encode_query(self, feat: torch.Tensor, mask: torch.Tensor,
                     input_proj: Optional[nn.Module] = None) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> one vector per query (Q, d).

        ``input_proj`` replaces the branch's own query input projection (the
        released ICCV model's sharing between branches).
        """
        raise NotImplementedError

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                     clips: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """frames: (V, L, Dv), frame_mask: (V, L), clips: (V, K, Dv) or None -> {level: (V, P_level, d)}."""
        raise NotImplementedError

    def score_masks(self, frame_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{level: (V, P_level) float mask} of the positions the video-level max runs over (1 = counted)."""
        return {"frame": frame_mask}

    # ---- scoring hooks: a level scored from more than the pooled query (e.g. the caption tokens) ---------- #
    def train_outputs(self, query_feat: torch.Tensor, query_mask: torch.Tensor, videos: dict[str, torch.Tensor],
                      video_mask: torch.Tensor, query_labels: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training forward's extra outputs {key: tensor}, keys ``query_outputs`` (first dimension Q) and
        ``video_outputs`` (first dimension V): what ``level_scores`` and the objective's ``output_terms`` read.

        query_feat: (Q, N, Dq), query_mask: (Q, N), videos: ``encode_video``'s {level: (V, P, d)},
        video_mask: (V, L), query_labels: (Q,) each caption's video in the batch (None outside training).
        """
        return {}

    def level_scores(self, level: str, queries: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor,
                     outputs: Mapping[str, torch.Tensor]) -> ScoreOutput:
        """Training scores of ``level``: queries (R, d) against every video's positions feats (V, P, d), counted
        by mask (V, P); ``outputs``: the R queries' ``query_outputs`` of this branch. Default ``score_level``."""
        return score_level(queries, feats, mask)

    def query_encodings(self, feat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation: per-query encodings besides the pooled vector that ``eval_level_scores`` reads,
        {key: (Q, ...)}, any token axis padded to ``max_desc_l`` (blocks and processes concatenate them)."""
        return {}

    def eval_level_scores(self, level: str, queries: torch.Tensor, encodings: Mapping[str, torch.Tensor],
                          feats_unit: torch.Tensor) -> torch.Tensor:
        """Inference scores (Q, V) of queries (Q, d) with their ``query_encodings`` against ``normalize_frames``'
        positions (V, P, d). Default: the max cosine (``cosine_video_scores``)."""
        return cosine_video_scores(queries, feats_unit)

    def eval_positive_scores(self, level: str, queries: torch.Tensor, encodings: Mapping[str, torch.Tensor],
                             own_unit: torch.Tensor) -> torch.Tensor:
        """Each query's inference score (Q,) with its own video's positions ``own_unit`` (Q, P, d)."""
        q_unit = F.normalize(queries, dim=-1, eps=1e-12)
        return torch.bmm(own_unit, q_unit[:, :, None]).squeeze(-1).amax(dim=-1)

    def eval_video_group(self) -> Optional[int]:
        """Videos whose encodings depend on each other at evaluation (they must be encoded as one batch), or None."""
        return None

    @classmethod
    def check_config(cls, cfg: StudentConfig) -> None:
        """Raise ValueError naming the flag when ``cfg`` cannot build this student."""
        if cfg.hidden_size % cfg.n_heads:
            raise ValueError(f"--hidden_size {cfg.hidden_size} is not a multiple of --n_heads {cfg.n_heads}")
