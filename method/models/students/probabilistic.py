"""RAL's probabilistic part (RAL.md 2.4-2.8), shared: the Gaussian heads, the support set and the poolings, and
``RobustAlignment``, the same part on any student (``--robust_alignment``, ours: docs/students.md).

RAL (``method.models.students.ral``) builds its text and video Gaussians from
these parts with the authors' quirks (R1 / R3: unmasked attention over a
fixed 26-caption support set and all 128 frame positions). ``RobustAlignment``
builds them on another student's own token-level caption features (its query
encoder's per-token outputs before pooling) and its frame-level video features,
with the masks (padded tokens, empty support slots and padded frames take no
part: in those students padded rows are not zero). MIL and VIB over the
Gaussians' samples are the objective's (``method.losses.ral.SampleTerms``).

Shapes: V videos, Q captions, L_t padded tokens, L padded frames, D hidden
size, C support capacity (captions per video).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from method.losses.ral import SampleTerms
from method.models.students.base import ConfigError, setting

# The keys of the Gaussians' means and log sigmas among a student's ``video_outputs`` (RAL's names and order).
GAUSSIAN_OUTPUTS = ("text_logsigma", "text_mean", "video_logsigma", "video_mean")


# --------------------------------------------------------------------------- #
# heads (RAL.md 2.4-2.6)
# --------------------------------------------------------------------------- #
def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


class AttentionPooling(nn.Module):
    """One-head additive attention without biases (``MultiHeadSelfAttention(1, D, D/2)``).

    ``s_l = w_2 tanh(w_1 x_l)``, softmax over l, ``r = sum_l a_l x_l``. No mask as
    released (a zero row scores exactly 0); ``mask`` (1 = kept) is the R1 / R3 fix.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden, bias=False)
        self.w_2 = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x: (N, L, D), mask: (N, L) or None -> (r (N, D), weights a (N, L, 1))."""
        scores = self.w_2(torch.tanh(self.w_1(x)))  # (N, L, 1)
        if mask is not None:
            scores = scores.masked_fill(mask[..., None] == 0, float("-inf"))
        attn = torch.softmax(scores, dim=1)
        return torch.einsum("nl,nld->nd", attn[..., 0], x), attn


class PIEHead(nn.Module):
    """``PIENet(1, D, D, D/2)``: ``LN(p + sigmoid(fc(r)))`` with r the attention pooling of X (RAL.md 2.5).

    Names ``attention.w_1``, ``attention.w_2``, ``fc``, ``layer_norm``; its dropout is p = 0 (none here).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.attention = AttentionPooling(dim, hidden)
        self.fc = nn.Linear(dim, dim)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, pooled: Tensor, x: Tensor, mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """pooled: (N, D), x: (N, L, D) -> {"out": (N, D), "residual": (N, D), "attn": (N, L, 1)}."""
        r, attn = self.attention(x, mask)
        residual = torch.sigmoid(self.fc(r))
        return {"out": self.layer_norm(pooled + residual), "residual": residual, "attn": attn}


class UncertaintyHead(nn.Module):
    """``UncertaintyModuleImage(D, D, D/2)``: ``log sigma = fc(r') + fc2(p)`` (RAL.md 2.6).

    Names ``attention.w_1``, ``attention.w_2``, ``fc``, ``fc2`` (its unused sigmoid has no parameters).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.attention = AttentionPooling(dim, hidden)
        self.fc = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, pooled: Tensor, x: Tensor, mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """pooled: (N, D), x: (N, L, D) -> {"logsigma": (N, D), "attn": (N, L, 1)}."""
        r, attn = self.attention(x, mask)
        return {"logsigma": self.fc(r) + self.fc2(pooled), "attn": attn}

# --------------------------------------------------------------------------- #
# support set and poolings (RAL.md 2.7)
# --------------------------------------------------------------------------- #
def caption_slots(labels: Tensor, n_videos: int) -> tuple[Tensor, Tensor]:
    """(slot (Q,), counts (V,)): each caption's rank among its video's captions (batch order); captions per video."""
    onehot = F.one_hot(labels, n_videos)  # (Q, V)
    slot = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1
    return slot, onehot.sum(dim=0)


def support_set(tokens: Tensor, token_mask: Tensor, labels: Tensor, n_videos: int, capacity: int = 26,
                grow: bool = False) -> tuple[Tensor, Tensor]:
    """Support sets (RAL.md 2.7): video v's captions' full (L_t, D) token blocks in caption order, zero slots up to
    ``capacity`` captions -> (S (V, capacity L_t, D), M (V, capacity L_t)).

    A video with more than ``capacity`` captions raises ValueError (R2), or widens
    the capacity to its count with ``grow``. A video without captions raises.
    """
    q, lt, d = tokens.shape
    slot, counts = caption_slots(labels, n_videos)
    if n_videos and int(counts.min()) == 0:
        raise ValueError("every video of a training batch needs at least one caption (support set)")
    most = int(counts.max()) if q else 0
    if most > capacity:
        if not grow:
            raise ValueError(f"a video has {most} captions in the batch, more than the support capacity {capacity} "
                             "(the authors' code crashes, RAL.md R2; support_overflow_grow widens it)")
        capacity = most
    support = tokens.new_zeros(n_videos, capacity, lt, d)
    mask = token_mask.new_zeros(n_videos, capacity, lt)
    support = support.index_put((labels, slot), tokens)
    mask = mask.index_put((labels, slot), token_mask)
    return support.view(n_videos, capacity * lt, d), mask.view(n_videos, capacity * lt)


def text_pooling(support: Tensor, mask: Tensor) -> Tensor:
    """``p_t[v] = sum_r M S / sum_r M``: the mean of every real token of the video's captions (V, D)."""
    return torch.einsum("vr,vrd->vd", mask, support) / mask.sum(dim=1, keepdim=True)


def video_pooling(frames: Tensor, frame_mask: Tensor) -> Tensor:
    """``p_v = norm(sum_l n norm(F_l) / max(1, sum_l n))`` (V, D)."""
    summed = torch.einsum("vl,vld->vd", frame_mask, _unit(frames))
    return _unit(summed / frame_mask.sum(dim=1, keepdim=True).clamp(min=1))



# --------------------------------------------------------------------------- #
# the same part on another student (--robust_alignment; ours, not a published configuration)
# --------------------------------------------------------------------------- #
@dataclass
class RobustAlignmentConfig:
    """The switch of RAL's probabilistic part on a student's own features (a mixin of its ``Config``)."""

    robust_alignment: bool = setting(False, "RAL's robust alignment on this student (ours, not a published "
                                            "configuration): text and video Gaussians from its own caption tokens "
                                            "and frames, MIL and VIB over their samples (--mil_weight, "
                                            "--vib_weight, --n_samples)")

    @classmethod
    def from_dict(cls, d: dict, where: str = "the configuration"):
        """A configuration stored before the switch existed has no Gaussian heads: it is off (exact, not a guess)."""
        if "robust_alignment" not in d:
            d = {**d, "robust_alignment": False}
        return super().from_dict(d, where)  # the StudentConfig after this mixin


@dataclass
class RobustAlignmentLosses:
    """MIL and VIB over the Gaussians' samples (RAL.md 5.2, 5.3): RAL's objective factors, and those of a student
    with ``--robust_alignment`` (a mixin of its ``Losses``; the defaults are the authors' TVR values)."""

    mil_weight: float = setting(4e-3, "RAL and --robust_alignment: weight of MIL, the multi-instance NCE between "
                                      "the text and video Gaussians' samples")
    vib_weight: float = setting(2.5e-4, "RAL and --robust_alignment: weight of VIB, the KL terms of the two "
                                        "Gaussians")
    vib_log_std: bool = setting(False, "RAL and --robust_alignment, fixes quirk R4: log sigma is a log-std in every "
                                       "KL term (the authors read it as a log-variance in two of them)")
    vib_use_mean: bool = setting(False, "RAL and --robust_alignment, fixes quirk R4: the KL terms use the "
                                        "Gaussians' means, not the mean of their samples")
    n_samples: int = setting(6, "RAL and --robust_alignment: samples K drawn from each Gaussian (text, video) for "
                                "MIL and VIB")

    def __post_init__(self):
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")

    def sample_terms(self) -> SampleTerms:
        """The MIL and VIB terms' settings (``method.losses.ral.SampleTerms``)."""
        return SampleTerms(self.n_samples, self.mil_weight, self.vib_weight, self.vib_log_std, self.vib_use_mean)


class RobustAlignment(nn.Module):
    """The text and video Gaussians of a batch from a student's caption tokens and frames (RAL.md 2.4-2.8).

    Names as RAL's: ``pie_net_text``, ``uncertain_net_text``, ``pie_net_video``,
    ``uncertain_net_video`` (PIE and uncertainty heads at D / 2). Unlike RAL's
    released code every attention is masked (the R1 / R3 fixes: padded tokens,
    empty support slots and padded frames take no part), so the support capacity
    is the batch's most captions of a video and changes no number.
    """

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.pie_net_text = PIEHead(dim, half)
        self.uncertain_net_text = UncertaintyHead(dim, half)
        self.pie_net_video = PIEHead(dim, half)
        self.uncertain_net_video = UncertaintyHead(dim, half)

    def forward(self, tokens: Tensor, token_mask: Tensor, labels: Tensor, frames: Tensor,
                frame_mask: Tensor) -> dict[str, Tensor]:
        """tokens: (Q, L_t, D), token_mask: (Q, L_t), labels: (Q,) each caption's video, frames: (V, L, D),
        frame_mask: (V, L) -> {"text_logsigma", "text_mean", "video_logsigma", "video_mean"} each (V, D); the
        means are unit vectors (mu = norm(PIE(p, X)), log sigma = Unc(p, X))."""
        support, support_mask = support_set(tokens, token_mask, labels, frames.shape[0], capacity=1, grow=True)
        frame_mask = frame_mask.to(frames.dtype)
        out = {}
        for name, pie, unc, pooled, x, mask in (
                ("text", self.pie_net_text, self.uncertain_net_text, text_pooling(support, support_mask), support,
                 support_mask),
                ("video", self.pie_net_video, self.uncertain_net_video, video_pooling(frames, frame_mask), frames,
                 frame_mask)):
            out[f"{name}_logsigma"] = unc(pooled, x, mask)["logsigma"]
            out[f"{name}_mean"] = _unit(pie(pooled, x, mask)["out"])
        return out


class RobustAlignmentHooks:
    """The ``Student`` hooks of ``--robust_alignment`` (a mixin before ``Student``): the student calls
    ``init_robust_alignment`` at the end of its ``__init__`` and hands its query encoder's per-token outputs and its
    frame-level features to ``keep_tokens`` / ``keep_frames`` as it encodes; ``train_outputs`` (the training
    forward's, after both encoders) turns the kept tensors into the Gaussians' means and log sigmas, its
    ``video_outputs`` (per instance: empty when the switch is off, so nothing changes then)."""

    def init_robust_alignment(self, cfg) -> None:
        if cfg.robust_alignment:
            if cfg.hidden_size % 2:
                raise ConfigError(f"--robust_alignment needs an even --hidden_size (its heads attend at d/2), got "
                                  f"{cfg.hidden_size}")
            self.robust_alignment = RobustAlignment(cfg.hidden_size)
            self.video_outputs = GAUSSIAN_OUTPUTS  # per instance: the outputs depend on the configuration
        self._kept: dict[str, Tensor] = {}

    def keep_tokens(self, tokens: Tensor) -> None:
        """The query encoder's per-token outputs (Q, N, d) before pooling (kept only with the switch on)."""
        if self.cfg.robust_alignment:
            self._kept["tokens"] = tokens

    def keep_frames(self, frames: Tensor) -> None:
        """The frame-level video features (V, L, d) (kept only with the switch on)."""
        if self.cfg.robust_alignment:
            self._kept["frames"] = frames

    def train_outputs(self, query_feat: Tensor, query_mask: Tensor, videos: dict[str, Tensor], video_mask: Tensor,
                      query_labels: Optional[Tensor]) -> dict[str, Tensor]:
        """{"text_logsigma", "text_mean", "video_logsigma", "video_mean"} (V, d) from the tokens and frames this
        forward encoded ({} with the switch off)."""
        if not self.cfg.robust_alignment:
            return {}
        if query_labels is None:
            raise ValueError("--robust_alignment's training forward needs each caption's video (query_labels)")
        if "tokens" not in self._kept or "frames" not in self._kept:
            raise RuntimeError("train_outputs reads the tokens and frames of this forward's encode_query / "
                               "encode_video: call them first")
        tokens, frames = self._kept.pop("tokens"), self._kept.pop("frames")
        return self.robust_alignment(tokens, query_mask, query_labels, frames, video_mask)


def robust_objective(terms: dict, cfg, losses: RobustAlignmentLosses) -> dict:
    """A student's ``objective_terms`` plus MIL and VIB as the objective's ``output_terms`` when ``cfg`` turns
    ``robust_alignment`` on (the objective then needs the whole batch, ``Objective.whole_batch``)."""
    return {**terms, "output_terms": losses.sample_terms()} if cfg.robust_alignment else terms


__all__ = ["GAUSSIAN_OUTPUTS", "AttentionPooling", "PIEHead", "UncertaintyHead", "caption_slots", "support_set",
           "text_pooling", "video_pooling", "RobustAlignmentConfig", "RobustAlignmentLosses", "RobustAlignment",
           "RobustAlignmentHooks", "robust_objective"]
