"""Holmes' dual-query variant (the authors' ``multisrc/`` tree, TVR only; HOLMES.md section 10).

The Holmes network plus a frame-branch query encoder that keeps the caption's
tokens (``frame_branch_query_proj`` -> ``query_pos_embed`` (shared) ->
``frame_branch_query_encoder``, not pooled) and a token-weight head
``text_weight_fc``. The frame-level scores are a weighted token-wise
intersection (``token_wise_scores``); the clip level is Holmes'. Inference
``0.5 S_c + 0.5 S_f``. 319 tensors, TVR dims 34,345,121 parameters.

Registered as ``--student holmes_dual`` (``--recipe holmes_dual``, TVR only:
the authors' ``multisrc/`` config builder knows only TVR). The frame level
cannot be scored by the project's ``score_level`` (a pooled query against
positions): the student's scoring hooks (``Student.train_outputs`` ->
``query_outputs``: the tokens, their mask and the token-weight logits;
``level_scores``, ``query_encodings``, ``eval_level_scores``,
``eval_positive_scores``) give the token-wise scores to the training loop and
the evaluator; the authors' ``training_forward`` (inherited; it calls
``frame_level_scores``) and ``holmes.eval_scores`` remain for the golden
tests. Its objective is Holmes' plus the dual-query consistency term ``dc``
(weight ``dc_weight``, 0 as released). Quirk H15 (token weights of S_f from
the normalised tokens, of U_f from the raw ones) is kept;
``shared_token_weights`` computes both from the raw tokens. The token-wise
score multiplies the frame mask as released (padded frames are 0 candidates),
so ``mask_padded_frames`` (GMMFormerV2's Q3 fix) is refused for it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from method.losses.evidential import EvidentialTerms
from method.models.students import register
from method.models.students.base import ScoreOutput, setting
from method.models.students.blocks import FFNAttentionLayer, LinearLayer, cut_masked_tail
from method.models.students.holmes import (
    HolmesConfig,
    HolmesLosses,
    HolmesNetConfig,
    HolmesStudent,
    holmes_config,
    student_collection_values,
)


@dataclass
class HolmesDualNetConfig(HolmesNetConfig):
    """The dual-query network's settings (the registered student's ``Config``): Holmes' and the H15 fix."""

    shared_token_weights: bool = setting(False, "Holmes dual-query, fixes quirk H15: the token weights of S_f and U_f "
                                                "both from the raw tokens (the authors' S_f weights come from the "
                                                "normalised ones)")


@dataclass
class HolmesDualLosses(HolmesLosses):
    """The dual-query objective's factors: Holmes' and the dual-query consistency weight."""

    dc_weight: float = setting(0.0, "Holmes dual-query: weight of the dual-query consistency term dc "
                                    "(loss_factor[5]; 0 in the authors' config)")

    def evidential(self) -> EvidentialTerms:
        """Holmes' evidential terms plus ``dc``."""
        return dataclasses.replace(super().evidential(), dc_weight=self.dc_weight)


@dataclass
class HolmesDualConfig(HolmesConfig):
    """Every setting of a dual-query Holmes run (``multisrc/Configs/tvr.py``); HolmesConfig's fields, these defaults."""

    n_epoch: int = setting(150, "epochs (also the horizon of the LR schedule)")
    intra_edl_weight: float = setting(0.1, "weight of the intra-video evidential loss (loss_factor[3])")
    edl_weight: float = setting(0.01, "weight of each of the three inter-video evidential terms (loss_factor[4])")
    dc_weight: float = setting(0.0, "weight of the dual-query consistency term (loss_factor[5])")
    edl_tau: float = setting(0.2, "evidence temperature of the inter-video EDL")
    edl_intra_video_tau: float = setting(0.04, "evidence temperature of the intra-video EDL")
    clip_scale_w: float = setting(0.5, "inference weight of the clip-level score")
    frame_scale_w: float = setting(0.5, "inference weight of the frame-level (token-wise) score")
    shared_token_weights: bool = setting(False, "fix H15: token weights of S_f and U_f both from the raw tokens")


EVAL_QUERY_CHUNK = 64  # queries per token-wise scoring chunk at evaluation (no effect on the numbers)

# The authors' dual-query config builder knows only TVR.
COLLECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "tvr": {
        "visual_feature": "i3d_resnet", "visual_input_size": 3072, "query_input_size": 768,
        "lr": 3e-4, "input_drop": 0.2, "drop": 0.2, "margin": 0.1, "sft_factor": 0.09,
        "n_epoch": 150, "max_es_cnt": 20,
        "clip_nce_weight": 0.05, "frame_nce_weight": 0.04, "qdl_weight": 8e-5,
        "intra_edl_weight": 0.1, "edl_weight": 0.01, "dc_weight": 0.0,
        "qdl_margin": 0.15, "qdl_scale": 32.0, "qdl_focal": 1.0,
        "edl_tau": 0.2, "edl_intra_video_tau": 0.04,
        "clip_scale_w": 0.5, "frame_scale_w": 0.5,
        "warmup_epoch": 20, "hard_negative_start_epoch": 20, "seed": 0,
    },
}


def holmes_dual_config(collection: str = "tvr", **overrides) -> HolmesDualConfig:
    """The dual-query config of ``collection`` (TVR only) with ``overrides``."""
    return holmes_config(collection, HolmesDualConfig, COLLECTION_DEFAULTS, **overrides)


def token_weight_logits(weight_fc: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``text_weight_fc`` on tokens (Q, N, d) -> (Q, N) logits, before masking."""
    return weight_fc(tokens).squeeze(-1)


def token_wise_scores(tokens: torch.Tensor, token_mask: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor,
                      weight_logits: torch.Tensor, query_chunk: Optional[int] = None,
                      cut: Optional[bool] = None) -> torch.Tensor:
    """Weighted token-wise intersection (10.3): (Q, V) scores.

    tokens A (Q, N, d), token_mask (Q, N), frames B (V, P, d), frame_mask (V, P), weight_logits g (Q, N):
    ``w = softmax_t(g masked -inf)``, ``s[a, b, t] = max_p <A[a,t], B[b,p]> m_t[a,t] m_v[b,p]`` (masked
    products are 0: the 0 floor), ``score = sum_t w s``. ``query_chunk`` bounds the (chunk, V, N, P)
    intermediate. On the fast path the positions masked in every video are not computed
    (``blocks.cut_masked_tail``: the 0 floor is put back), the same numbers. ``cut`` given: the caller has cut
    ``frames`` and ``frame_mask`` already, True when it cut something (S_f and U_f of a level share one cut).
    """
    weights = torch.softmax(weight_logits.masked_fill(token_mask == 0, float("-inf")), dim=1)  # (Q, N)
    if cut is None:
        frames, frame_mask, cut = cut_masked_tail(frames, frame_mask, zero_rows=True)
    chunk = tokens.shape[0] if query_chunk is None else query_chunk
    out = []
    for start in range(0, tokens.shape[0], max(chunk, 1)):
        a, m = tokens[start:start + chunk], token_mask[start:start + chunk]
        dots = torch.einsum("and,bpd->abnp", a, frames) * m[:, None, :, None] * frame_mask[None, :, None, :]
        best = dots.amax(dim=-1)
        out.append(torch.einsum("an,abn->ab", weights[start:start + chunk], best.clamp_min(0.0) if cut else best))
    return torch.cat(out) if out else tokens.new_zeros(0, frames.shape[0])


@register
class HolmesDualStudent(HolmesStudent):
    """Holmes_Net of ``multisrc/``: Holmes plus the frame-branch token encoder and ``text_weight_fc``."""

    name = "holmes_dual"
    Config = HolmesDualNetConfig
    Losses = HolmesDualLosses
    collection_defaults = {c: student_collection_values(c, HolmesDualConfig, COLLECTION_DEFAULTS,
                                                        HolmesDualNetConfig, HolmesDualLosses)
                           for c in COLLECTION_DEFAULTS}
    level_weights = {"clip": 0.5, "frame": 0.5}
    config_class = HolmesDualConfig
    kd_levels = ("clip",)  # the token-wise score has no per-frame score of a query
    kd_levels_note = " (its frame level, the token-wise score, has no per-frame score of a query)"
    query_outputs = ("tokens", "token_mask", "token_logits", "token_logits_raw")

    def __init__(self, cfg, with_query_proj: bool = True):
        super().__init__(cfg, with_query_proj)
        d, hcfg = self.hcfg.hidden_size, self.hcfg
        self.frame_branch_query_proj = LinearLayer(hcfg.query_input_size, d, hcfg.input_drop)
        self.frame_branch_query_encoder = FFNAttentionLayer(d, hcfg.n_heads, hcfg.drop, 4 * d)
        self.text_weight_fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))

    def encode_frame_query(self, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feat: (Q, N, Dq), mask: (Q, N) -> the frame-branch tokens W (Q, N, d), not pooled."""
        x = self.query_pos_embed(self.frame_branch_query_proj(feat))
        return self.frame_branch_query_encoder(x, mask)

    def token_scores(self, tokens: torch.Tensor, token_mask: torch.Tensor, frames: torch.Tensor,
                     frame_mask: torch.Tensor, query_chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_f, U_f) (Q, V): tokens (Q, N, d), frames (V, 128, d) with the (V, 128) frame mask.

        S_f on unit tokens and frames with weights from the unit tokens; U_f on the raw ones with weights
        from the raw tokens (H15; ``shared_token_weights``: both from the raw tokens).
        """
        frames, frame_mask, cut = cut_masked_tail(frames, frame_mask, zero_rows=True)  # unit rows: the same cut
        unit_t, unit_f = F.normalize(tokens, dim=-1, eps=1e-12), F.normalize(frames, dim=-1, eps=1e-12)
        raw_logits = token_weight_logits(self.text_weight_fc, tokens)
        unit_logits = raw_logits if self.hcfg.shared_token_weights else token_weight_logits(self.text_weight_fc, unit_t)
        s_f = token_wise_scores(unit_t, token_mask, unit_f, frame_mask, unit_logits, query_chunk, cut)
        u_f = token_wise_scores(tokens, token_mask, frames, frame_mask, raw_logits, query_chunk, cut)
        return s_f, u_f

    def padded_frame_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(V, L) -> (V, 128): the ``multisrc`` collate pads frames and masks to exactly 128 (10.1)."""
        return F.pad(frame_mask, (0, self.hcfg.max_ctx_l - frame_mask.shape[1]))

    def frame_level_scores(self, queries, frames, frame_mask, text, text_mask):
        tokens = self.encode_frame_query(text, text_mask)
        return self.token_scores(tokens, text_mask, frames, self.padded_frame_mask(frame_mask))

    # ---- the project's training loop and evaluator (Student hooks)
    def weight_logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of S_f's token weights, of U_f's), each (Q, N): from the unit and the raw tokens (H15)."""
        raw = token_weight_logits(self.text_weight_fc, tokens)
        unit = raw if self.hcfg.shared_token_weights else token_weight_logits(
            self.text_weight_fc, F.normalize(tokens, dim=-1, eps=1e-12))
        return unit, raw

    def train_outputs(self, query_feat: torch.Tensor, query_mask: torch.Tensor, videos: dict, video_mask: torch.Tensor,
                      query_labels: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"tokens" W (Q, N, d), "token_mask" (Q, N), "token_logits" (S_f's), "token_logits_raw" (U_f's) (Q, N)}."""
        tokens = self.encode_frame_query(query_feat, query_mask)
        unit, raw = self.weight_logits(tokens)
        return {"tokens": tokens, "token_mask": query_mask, "token_logits": unit, "token_logits_raw": raw}

    def level_scores(self, level: str, queries: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor,
                     outputs: Mapping[str, torch.Tensor]) -> ScoreOutput:
        """The clip level as Holmes'; the frame level the token-wise S_f and U_f (R, V) of the R queries' tokens
        (``mask``: ones, the padded rows are 0, as the authors' multiplied 128-frame mask)."""
        if level != "frame":
            return super().level_scores(level, queries, feats, mask, outputs)
        tokens, token_mask = outputs["tokens"], outputs["token_mask"]
        feats, mask, cut = cut_masked_tail(feats, mask, zero_rows=True)  # one cut for both (unit rows: the same)
        unit_t, unit_f = F.normalize(tokens, dim=-1, eps=1e-12), F.normalize(feats, dim=-1, eps=1e-12)
        s_f = token_wise_scores(unit_t, token_mask, unit_f, mask, outputs["token_logits"], cut=cut)
        u_f = token_wise_scores(tokens, token_mask, feats, mask, outputs["token_logits_raw"], cut=cut)
        return ScoreOutput(s_f, u_f, None)

    def query_encodings(self, feat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation: {"tokens" (Q, max_desc_l, d), "token_mask", "token_logits" (S_f's)}, zero-padded beyond the
        batch's N tokens (masked: the scores do not change)."""
        tokens = self.encode_frame_query(feat, mask)
        unit, _ = self.weight_logits(tokens)
        extra = self.hcfg.max_desc_l - tokens.shape[1]
        return {"tokens": F.pad(tokens, (0, 0, 0, extra)), "token_mask": F.pad(mask, (0, extra)),
                "token_logits": F.pad(unit, (0, extra))}

    def eval_level_scores(self, level: str, queries: torch.Tensor, encodings: Mapping[str, torch.Tensor],
                          feats_unit: torch.Tensor) -> torch.Tensor:
        """Inference scores (Q, V): the frame level is the token-wise S_f against the unit positions (in chunks of
        ``EVAL_QUERY_CHUNK`` queries: the (chunk, V, N, P) intermediate)."""
        if level != "frame":
            return super().eval_level_scores(level, queries, encodings, feats_unit)
        return token_wise_scores(F.normalize(encodings["tokens"], dim=-1, eps=1e-12), encodings["token_mask"],
                                 feats_unit, feats_unit.new_ones(feats_unit.shape[:2]), encodings["token_logits"],
                                 query_chunk=EVAL_QUERY_CHUNK)

    def eval_positive_scores(self, level: str, queries: torch.Tensor, encodings: Mapping[str, torch.Tensor],
                             own_unit: torch.Tensor) -> torch.Tensor:
        """Each query's inference score (Q,) with its own video's positions ``own_unit`` (Q, P, d)."""
        if level != "frame":
            return super().eval_positive_scores(level, queries, encodings, own_unit)
        token_mask = encodings["token_mask"]
        tokens = F.normalize(encodings["tokens"], dim=-1, eps=1e-12)
        best = torch.bmm(tokens, own_unit.transpose(1, 2)).amax(dim=-1) * token_mask  # (Q, N)
        weights = torch.softmax(encodings["token_logits"].masked_fill(token_mask == 0, float("-inf")), dim=1)
        return (weights * best).sum(dim=1)

    @staticmethod
    def check_config(cfg) -> None:
        HolmesStudent.check_config(cfg)
        if cfg.mask_padded_frames:
            raise ValueError("--mask_padded_frames is not available for holmes_dual: its token-wise frame score "
                             "multiplies the frame mask as released (padded frames are 0 candidates)")


__all__ = ["HolmesDualNetConfig", "HolmesDualLosses", "HolmesDualConfig", "COLLECTION_DEFAULTS", "holmes_dual_config",
           "token_weight_logits", "token_wise_scores", "HolmesDualStudent"]
