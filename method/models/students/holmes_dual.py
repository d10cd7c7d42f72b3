"""Holmes' dual-query variant (the authors' ``multisrc/`` tree, TVR only; HOLMES.md section 10).

The Holmes network plus a frame-branch query encoder that keeps the caption's
tokens (``frame_branch_query_proj`` -> ``query_pos_embed`` (shared) ->
``frame_branch_query_encoder``, not pooled) and a token-weight head
``text_weight_fc``. The frame-level scores are a weighted token-wise
intersection (``token_wise_scores``); the clip level is Holmes'. Inference
``0.5 S_c + 0.5 S_f``. 319 tensors, TVR dims 34,345,121 parameters.

The frame level cannot be scored by the project's ``score_level`` (a pooled
query against positions): training uses ``training_forward`` (inherited; it
calls ``frame_level_scores``), evaluation ``holmes.eval_scores``.
Quirk H15 (token weights of S_f from the normalised tokens, of U_f from the
raw ones) is kept; ``shared_token_weights`` computes both from the raw tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from method.models.students.blocks import FFNAttentionLayer, LinearLayer
from method.models.students.base import setting
from method.models.students.holmes import HolmesConfig, HolmesStudent, holmes_config


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
                      weight_logits: torch.Tensor, query_chunk: Optional[int] = None) -> torch.Tensor:
    """Weighted token-wise intersection (10.3): (Q, V) scores.

    tokens A (Q, N, d), token_mask (Q, N), frames B (V, P, d), frame_mask (V, P), weight_logits g (Q, N):
    ``w = softmax_t(g masked -inf)``, ``s[a, b, t] = max_p <A[a,t], B[b,p]> m_t[a,t] m_v[b,p]`` (masked
    products are 0: the 0 floor), ``score = sum_t w s``. ``query_chunk`` bounds the (chunk, V, N, P)
    intermediate.
    """
    weights = torch.softmax(weight_logits.masked_fill(token_mask == 0, float("-inf")), dim=1)  # (Q, N)
    chunk = tokens.shape[0] if query_chunk is None else query_chunk
    out = []
    for start in range(0, tokens.shape[0], max(chunk, 1)):
        a, m = tokens[start:start + chunk], token_mask[start:start + chunk]
        dots = torch.einsum("and,bpd->abnp", a, frames) * m[:, None, :, None] * frame_mask[None, :, None, :]
        out.append(torch.einsum("an,abn->ab", weights[start:start + chunk], dots.amax(dim=-1)))
    return torch.cat(out) if out else tokens.new_zeros(0, frames.shape[0])


class HolmesDualStudent(HolmesStudent):
    """Holmes_Net of ``multisrc/``: Holmes plus the frame-branch token encoder and ``text_weight_fc``."""

    name = "holmes_dual"
    level_weights = {"clip": 0.5, "frame": 0.5}
    config_class = HolmesDualConfig

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
        unit_t, unit_f = F.normalize(tokens, dim=-1, eps=1e-12), F.normalize(frames, dim=-1, eps=1e-12)
        raw_logits = token_weight_logits(self.text_weight_fc, tokens)
        unit_logits = raw_logits if self.hcfg.shared_token_weights else token_weight_logits(self.text_weight_fc, unit_t)
        s_f = token_wise_scores(unit_t, token_mask, unit_f, frame_mask, unit_logits, query_chunk)
        u_f = token_wise_scores(tokens, token_mask, frames, frame_mask, raw_logits, query_chunk)
        return s_f, u_f

    def padded_frame_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(V, L) -> (V, 128): the ``multisrc`` collate pads frames and masks to exactly 128 (10.1)."""
        return F.pad(frame_mask, (0, self.hcfg.max_ctx_l - frame_mask.shape[1]))

    def frame_level_scores(self, queries, frames, frame_mask, text, text_mask):
        tokens = self.encode_frame_query(text, text_mask)
        return self.token_scores(tokens, text_mask, frames, self.padded_frame_mask(frame_mask))


__all__ = ["HolmesDualConfig", "COLLECTION_DEFAULTS", "holmes_dual_config", "token_weight_logits",
           "token_wise_scores", "HolmesDualStudent"]
