"""The model: DL-DKD's two branches (inheritance, exploration) around any student, and its scores.

Each branch is a student network (``method.models.students``, ``cfg.student``); with
``single_branch`` the model is one student (the ablation, and the GMMFormer
recipes). The model returns embeddings; scores are computed outside it
(``score_level``, ``method.parallel.global_batch``) so that the processes of a
distributed run can score every query against every video of the global
batch. Shapes: V videos, Q queries, L padded frames, P positions of a level
(frames, clips), N padded tokens, d hidden size. Parameter names below a
branch are the student's (for the DL-DKD student: the released names without
the ``B_`` / ``A_`` prefix).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from method.models.students import ConfigError, StudentConfig, build_student, student_class
from method.models.students.base import (
    ScoreOutput,
    cosine_video_scores,
    frame_dot,
    normalize_frames,
    score_level,
)
from method.models.students.blocks import MASK_VALUE

BRANCHES = ("inheritance", "exploration")

__all__ = ["BRANCHES", "MASK_VALUE", "ModelConfig", "DLDKD", "ScoreOutput", "frame_dot", "score_level",
           "normalize_frames", "cosine_video_scores"]


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; stored in every checkpoint.

    ``student_cfg`` is the student's own configuration (its module's
    dataclass); the model adds how its branches are put together.
    """

    student_cfg: StudentConfig
    student: str = "dldkd"  # the branch network (method.models.students registry)
    share_query_proj: bool = True  # released quirk: exploration uses the inheritance query projection
    single_branch: bool = False  # one branch only (the ablation, and the GMMFormer recipes)

    WRAPPER_KEYS = ("student", "share_query_proj", "single_branch")

    @classmethod
    def of(cls, visual_input_size: int = 0, query_input_size: int = 0, student: str = "dldkd",
           share_query_proj: bool = True, single_branch: bool = False, **settings) -> "ModelConfig":
        """Flat settings: the student's fields go to its ``Config`` (its defaults fill the rest; an unknown one is
        refused)."""
        config_cls = student_class(student).Config
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ValueError(f"the {student} student has no setting {unknown[0]!r}")
        student_cfg = config_cls(visual_input_size=visual_input_size, query_input_size=query_input_size, **settings)
        return cls(student_cfg, student, share_query_proj, single_branch)

    def with_inputs(self, visual_input_size: int, query_input_size: int) -> "ModelConfig":
        """The same configuration for inputs of these feature sizes."""
        return dataclasses.replace(self, student_cfg=dataclasses.replace(
            self.student_cfg, visual_input_size=visual_input_size, query_input_size=query_input_size))

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.WRAPPER_KEYS}, "student_config": self.student_cfg.to_dict()}

    @classmethod
    def from_dict(cls, d: dict, where: str = "the checkpoint's model_config") -> "ModelConfig":
        """Rebuild from ``to_dict``'s form (or the older flat form). Every value that changes the numbers must be
        there: a missing key is refused (ConfigError naming it), never filled with a default."""
        missing = [k for k in cls.WRAPPER_KEYS if k not in d]
        if missing:
            raise ConfigError(f"{where} lacks {missing[0]!r}")
        student = d["student"]
        try:
            config_cls = student_class(student).Config
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        settings = d["student_config"] if "student_config" in d else d  # older checkpoints: one flat dict
        return cls(config_cls.from_dict(settings, where), student, bool(d["share_query_proj"]),
                   bool(d["single_branch"]))


class DLDKD(nn.Module):
    """Two branches of one student architecture (or one, ``single_branch``). Returns embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inheritance = build_student(cfg.student, cfg.student_cfg)
        if not cfg.single_branch:
            self.exploration = build_student(cfg.student, cfg.student_cfg, with_query_proj=not cfg.share_query_proj)
        self.apply(self._init_weights)

    @property
    def branch_names(self) -> tuple[str, ...]:
        return BRANCHES[:1] if self.cfg.single_branch else BRANCHES

    @property
    def levels(self) -> tuple[str, ...]:
        """The student's score levels, e.g. ("frame",) or ("clip", "frame")."""
        return student_class(self.cfg.student).levels

    @property
    def needs_clips(self) -> bool:
        return student_class(self.cfg.student).needs_clips

    @property
    def unused_parameters(self) -> list[str]:
        """Names of the parameters that never get a gradient (the student's ``unused_parameters``, per branch)."""
        names = student_class(self.cfg.student).unused_parameters
        return [f"{branch}.{name}" for branch in self.branch_names for name in names]

    @property
    def query_outputs(self) -> tuple[str, ...]:
        """Top-level keys of the forward's output, besides "queries" / "queries2", whose tensors are per query
        (the branch student's ``query_outputs``: an instance's, they may depend on its configuration)."""
        return self.inheritance.query_outputs

    @property
    def n_clips(self) -> Optional[int]:
        """Clips per video the student reads (``map_size``), or None."""
        return student_class(self.cfg.student).n_clips(self.cfg.student_cfg)

    @property
    def position_level(self) -> str:
        """The level whose positions follow the video's time (frames; GMMFormer: its clips), for curves and moments."""
        return student_class(self.cfg.student).kd_levels[0]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def encode_queries(self, feat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """feat: (Q, N, Dq), mask: (Q, N) -> {branch: (Q, d)}."""
        out = {"inheritance": self.inheritance.encode_query(feat, mask)}
        if not self.cfg.single_branch:
            shared = self.inheritance.query_input_proj if self.cfg.share_query_proj else None
            out["exploration"] = self.exploration.encode_query(feat, mask, shared)
        return out

    def encode_videos(self, feat: torch.Tensor, mask: torch.Tensor,
                      clips: Optional[torch.Tensor] = None) -> dict[str, dict[str, torch.Tensor]]:
        """feat: (V, L, Dv), mask: (V, L), clips: (V, K, Dv) or None -> {branch: {level: (V, P, d)}}."""
        return {name: getattr(self, name).encode_video(feat, mask, clips) for name in self.branch_names}

    def score_masks(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{level: (V, P)} positions counted by the video-level max, from the frame mask (V, L)."""
        return self.inheritance.score_masks(mask)

    def eval_video_group(self) -> Optional[int]:
        """Videos that must be encoded together at evaluation (GMMFormer's quirk Q1), or None."""
        return self.inheritance.eval_video_group()

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The student's extra forward outputs: its ``query_outputs`` (first dimension Q), then ``video_outputs`` (V)."""
        student = self.inheritance  # the instance's: they may depend on the configuration (--robust_alignment)
        return (*student.query_outputs, *student.video_outputs)

    def forward(self, video_feat: torch.Tensor, video_mask: torch.Tensor, query_feat: torch.Tensor,
                query_mask: torch.Tensor, clip_feat: Optional[torch.Tensor] = None,
                second_queries: bool = False, query_labels: Optional[torch.Tensor] = None) -> dict:
        """Training embeddings of a batch.

        Returns {"queries": {branch: (Q, d)}, "videos": {branch: {level: (V, P, d)}},
        "masks": {level: (V, P)}} and, with ``second_queries``, "queries2": a
        second encoding of the queries (another dropout sample; the GMMFormer
        family's query-diversity and matching losses read it); plus the student's
        extra outputs (``output_keys``, ``Student.train_outputs``), each
        {branch: tensor} with first dimension Q (``query_outputs``) or V
        (``video_outputs``). ``query_labels`` (Q,): each caption's video (students
        with extra outputs may need it).
        """
        out = {"queries": self.encode_queries(query_feat, query_mask),
               "videos": self.encode_videos(video_feat, video_mask, clip_feat),
               "masks": self.score_masks(video_mask)}
        if self.output_keys:
            for name in self.branch_names:
                extra = getattr(self, name).train_outputs(query_feat, query_mask, out["videos"][name], video_mask,
                                                          query_labels)
                for key in self.output_keys:
                    out.setdefault(key, {})[name] = extra[key]
        if second_queries:
            out["queries2"] = self.encode_queries(query_feat, query_mask)
        return out

    def level_scorer(self, outputs: dict):
        """The training scores ``(branch, level, queries (R, d), feats (V, P, d), mask (V, P)) -> ScoreOutput``
        of the student (``Student.level_scores``), reading the branch's ``query_outputs`` of the same R
        queries from ``outputs`` (``forward``'s dict, or the R owned rows' part of it)."""
        keys = self.query_outputs

        def score(name: str, level: str, queries: torch.Tensor, feats: torch.Tensor,
                  mask: torch.Tensor) -> ScoreOutput:
            return getattr(self, name).level_scores(level, queries, feats, mask,
                                                    {k: outputs[k][name] for k in keys})
        return score

    def encode_query_encodings(self, feat: torch.Tensor, mask: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Evaluation: {branch: the student's ``query_encodings`` {key: (Q, ...)}} ({} per branch for most)."""
        return {name: getattr(self, name).query_encodings(feat, mask) for name in self.branch_names}

    def score(self, video_feat: torch.Tensor, video_mask: torch.Tensor, query_feat: torch.Tensor,
              query_mask: torch.Tensor, clip_feat: Optional[torch.Tensor] = None,
              query_labels: Optional[torch.Tensor] = None) -> dict[str, dict[str, ScoreOutput]]:
        """Scores of every query against every video of one batch, per branch and level (one process)."""
        emb = self(video_feat, video_mask, query_feat, query_mask, clip_feat, query_labels=query_labels)
        score = self.level_scorer(emb)
        return {name: {level: score(name, level, emb["queries"][name], feats, emb["masks"][level])
                       for level, feats in emb["videos"][name].items()} for name in self.branch_names}

    def branch_score(self, levels: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
        """A branch's inference score from its level scores: e.g. 0.7 clip + 0.3 frame (one level: itself)."""
        if len(self.levels) == 1:
            return levels[self.levels[0]]
        return sum(weights[level] * levels[level] for level in self.levels)

    def fuse(self, scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
        """Fused inference score of the branches, e.g. 0.3 exploration + 0.7 inheritance (one branch: itself)."""
        if self.cfg.single_branch:
            return scores["inheritance"]
        return weights["exploration"] * scores["exploration"] + weights["inheritance"] * scores["inheritance"]

    def named_scores(self, level_scores: dict[str, dict[str, torch.Tensor]],
                     weights: dict[str, float]) -> dict[str, torch.Tensor]:
        """Every reported score from {branch: {level: scores}}: "fused" first, then branches, then levels.

        One-level students report the branches (DL-DKD: fused, inheritance,
        exploration). Several levels add ``<level>`` (one branch) or
        ``<branch>_<level>`` (two branches); a single branch is then not
        repeated beside "fused".
        """
        branches = {name: self.branch_score(levels, weights) for name, levels in level_scores.items()}
        out = {"fused": self.fuse(branches, weights)}
        if len(self.levels) == 1 or not self.cfg.single_branch:
            out.update(branches)
        if len(self.levels) > 1:
            for name, levels in level_scores.items():
                for level, s in levels.items():
                    out[level if self.cfg.single_branch else f"{name}_{level}"] = s
        return out

    def score_names(self) -> list[str]:
        """The keys of ``named_scores``, in its order."""
        dummy = {name: {level: torch.zeros(()) for level in self.levels} for name in self.branch_names}
        weights = {"exploration": 0.0, "inheritance": 0.0, **{level: 0.0 for level in self.levels}}
        return list(self.named_scores(dummy, weights))
