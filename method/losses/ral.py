"""RAL's losses (RAL.md 5): MIL over the Gaussian samples, the VIB KL terms, and the whole objective, named.

Pure functions of tensors, vectorised (no loop over videos or captions).
Shapes: V videos, Q captions, K samples per Gaussian, D embedding size.
The terms shared with GMMFormerV2 (InfoNCE, triplet, QDL v2, OT) are
``method.losses.ranking`` / ``method.losses.query``; the frame-level ones take
RAL's word-frame scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from method.losses.query import ot_loss, qdl_v2
from method.losses.ranking import nce_loss, triplet_loss

LOSS_TERMS = ("clip_nce", "clip_trip", "frame_nce", "frame_trip", "qdl", "ot", "mil", "vib")  # RAL.md 5.4 order
# The authors' log dict (``loss.forward``): loss_overall and six weighted terms (QDL and OT are not in it).
AUTHORS_LOG_NAMES = {"clip_nce": "clip_nce_loss", "clip_trip": "clip_trip_loss", "frame_nce": "frame_nce_loss",
                     "frame_trip": "frame_trip_loss", "mil": "MiL_loss", "vib": "Vib_loss"}


# --------------------------------------------------------------------------- #
# MIL (RAL.md 5.2, ``MILNCELoss_BoF``)
# --------------------------------------------------------------------------- #
def mil_nce(sim: Tensor, n_videos: int) -> Tensor:
    """One direction: ``mean_r [ -(1/k_c) sum_c P[r, c] log_softmax(sim[r])_c ]``.

    sim: (V k_r, V k_c) logits, rows and columns video-major (row ``k_r v + i`` =
    sample i of video v); ``P[r, c] = 1`` iff row and column belong to the same
    video. No temperature (R9).
    """
    rows, cols = sim.shape
    if n_videos < 1 or rows % n_videos or cols % n_videos:
        raise ValueError(f"MIL logits {tuple(sim.shape)} do not split into {n_videos} videos")
    kr, kc = rows // n_videos, cols // n_videos
    same = (torch.arange(rows, device=sim.device) // kr)[:, None] == (torch.arange(cols, device=sim.device) // kc)[None]
    logp = F.log_softmax(sim, dim=1)
    return -(torch.where(same, logp, torch.zeros_like(logp)).sum(dim=1) / kc).mean()


def mil_loss(text_samples: Tensor, video_samples: Tensor) -> Tensor:
    """``(MIL(A B^T) + MIL(B A^T)) / 2`` with A = video samples, B = text samples, each (V, K, D) -> (V K, D)."""
    v = video_samples.shape[0]
    a = video_samples.reshape(-1, video_samples.shape[-1])
    b = text_samples.reshape(-1, text_samples.shape[-1])
    return (mil_nce(a @ b.t(), v) + mil_nce(b @ a.t(), v)) / 2


# --------------------------------------------------------------------------- #
# VIB (RAL.md 5.3, ``KLdivergence``)
# --------------------------------------------------------------------------- #
def vib_terms(video_samples: Tensor, video_logsigma: Tensor, text_samples: Tensor, text_logsigma: Tensor,
              video_mean: Optional[Tensor] = None, text_mean: Optional[Tensor] = None,
              log_std: bool = False) -> dict[str, Tensor]:
    """{"kl_video", "kl_text", "kl_cross", "vib"} (each a mean over videos of a sum over D).

    As released (R4): m = the mean of the K samples (``video_mean`` / ``text_mean``
    replace it: the fix), KL_v / KL_t = ``-0.5 (1 + ls - m^2 - exp(ls))`` (ls read
    as a log-variance; ``log_std`` reads it as a log-std: ``-0.5 (1 + 2 ls - m^2 - exp(2 ls))``),
    KL_tv = ``ls_v - ls_t + (s_t^2 + (m_t - m_v)^2) / (2 s_v^2) - 0.5`` with s = exp(ls).
    samples: (V, K, D), logsigma: (V, D).
    """
    m_v = video_samples.mean(dim=1) if video_mean is None else video_mean
    m_t = text_samples.mean(dim=1) if text_mean is None else text_mean

    def unimodal(ls: Tensor, m: Tensor) -> Tensor:
        var_log = 2 * ls if log_std else ls
        return (-0.5 * (1 + var_log - m ** 2 - torch.exp(var_log))).sum(dim=1).mean()

    kl_video, kl_text = unimodal(video_logsigma, m_v), unimodal(text_logsigma, m_t)
    cross = (video_logsigma - text_logsigma
             + (torch.exp(2 * text_logsigma) + (m_t - m_v) ** 2) / (2 * torch.exp(2 * video_logsigma)) - 0.5)
    kl_cross = cross.sum(dim=1).mean()
    return {"kl_video": kl_video, "kl_text": kl_text, "kl_cross": kl_cross, "vib": kl_video + kl_text + kl_cross}


# --------------------------------------------------------------------------- #
# the objective (RAL.md 5.4)
# --------------------------------------------------------------------------- #
def ral_loss_components(clip_cos: Tensor, clip_raw: Tensor, frame_cos: Tensor, frame_raw: Tensor, query2: Tensor,
                        clip_feat: Tensor, labels: Tensor, text_samples: Tensor, text_logsigma: Tensor,
                        video_samples: Tensor, video_logsigma: Tensor, *, margin: float,
                        neg_factor: tuple[float, float, float], hard_negative: bool, hard_pool_size: int,
                        generator: Optional[torch.Generator] = None, text_mean: Optional[Tensor] = None,
                        video_mean: Optional[Tensor] = None, vib_log_std: bool = False) -> dict[str, Tensor]:
    """The unweighted terms, ``LOSS_TERMS`` order (one process, the whole batch).

    clip_cos / clip_raw / frame_cos / frame_raw: S_c, U_c, S_f, U_f (Q, V);
    query2: q' (Q, D); clip_feat: C (V, 32, D); labels: (Q,); samples (V, K, D),
    log sigmas (V, D). The triplet draws: clip, then frame (t2v then v2t each).
    ``text_mean`` / ``video_mean``: the R4 fix (VIB on mu).
    """
    trip = dict(margin=margin, hard_negative=hard_negative, hard_pool_size=hard_pool_size, generator=generator)
    out = {"clip_nce": nce_loss(clip_raw, labels), "clip_trip": triplet_loss(clip_cos, labels, **trip),
           "frame_nce": nce_loss(frame_raw, labels), "frame_trip": triplet_loss(frame_cos, labels, **trip),
           "qdl": qdl_v2(query2, labels, *neg_factor), "ot": ot_loss(query2, clip_feat, labels),
           "mil": mil_loss(text_samples, video_samples)}
    out["vib"] = vib_terms(video_samples, video_logsigma, text_samples, text_logsigma, video_mean, text_mean,
                           vib_log_std)["vib"]
    return out


def weighted_terms(components: Mapping[str, Tensor], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """{term: weight x value}; the training loss is the sum of the values."""
    return {name: weights[name] * value for name, value in components.items()}


def _full(x: Tensor) -> Tensor:
    """float32 copies of half-precision tensors (after a bf16 autocast forward): the losses run in float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def ral_objective(out: Mapping[str, Any], labels: Tensor, cfg: Any, hard_negative: bool,
                  generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """The weighted terms of a training step from ``RALStudent.train_forward``'s output and a ``RALConfig``.

    Returns {name: weighted scalar} in ``LOSS_TERMS`` order; backpropagate their sum.
    """
    s, prob = out["scores"], out["prob"]
    text, video = prob["text"], prob["video"]
    comps = ral_loss_components(
        *(_full(x) for x in (s["clip_cos"], s["clip_raw"], s["frame_cos"], s["frame_raw"], out["query2"],
                             out["clip_feat"])), labels,
        *(_full(x) for x in (text["samples"], text["logsigma"], video["samples"], video["logsigma"])),
        margin=cfg.margin, neg_factor=(cfg.qdl_margin, cfg.qdl_scale, cfg.qdl_focal), hard_negative=hard_negative,
        hard_pool_size=cfg.hard_pool_size, generator=generator,
        text_mean=_full(text["mean"]) if cfg.vib_use_mean else None,
        video_mean=_full(video["mean"]) if cfg.vib_use_mean else None, vib_log_std=cfg.vib_log_std)
    return weighted_terms(comps, cfg.loss_weights())


def sample_gaussian(mean: Tensor, logsigma: Tensor, n_samples: int, generator: Optional[torch.Generator] = None,
                    eps: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``z_k = mu + eps_k exp(log sigma)`` with eps ~ N(0, 1) (V, K, D) drawn from ``generator`` unless given.

    Returns (samples (V, K, D), eps). exp(log sigma) is the standard deviation here (R4).
    """
    if eps is None:
        eps = torch.randn(mean.shape[0], n_samples, mean.shape[1], generator=generator, device=mean.device,
                          dtype=mean.dtype)
    eps = eps.to(mean.dtype)
    return mean[:, None] + eps * torch.exp(logsigma)[:, None], eps


@dataclass(frozen=True)
class SampleTerms:
    """RAL's MIL and VIB terms in the project's objective (``Objective.output_terms``): weights and the R4 fixes."""

    n_samples: int
    mil_weight: float
    vib_weight: float
    vib_log_std: bool = False
    vib_use_mean: bool = False

    def __call__(self, outputs: Mapping[str, Tensor], labels: Tensor,
                 generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """{"mil", "vib"} weighted, from one branch's outputs of the whole batch: "text_mean" / "video_mean" and
        "text_logsigma" / "video_logsigma" (V, D). The K samples of each Gaussian are drawn here, text first,
        from ``generator`` (None: torch's global generator)."""
        text, _ = sample_gaussian(outputs["text_mean"], outputs["text_logsigma"], self.n_samples, generator)
        video, _ = sample_gaussian(outputs["video_mean"], outputs["video_logsigma"], self.n_samples, generator)
        vib = vib_terms(video, outputs["video_logsigma"], text, outputs["text_logsigma"],
                        outputs["video_mean"] if self.vib_use_mean else None,
                        outputs["text_mean"] if self.vib_use_mean else None, self.vib_log_std)["vib"]
        return {"mil": self.mil_weight * mil_loss(text, video), "vib": self.vib_weight * vib}


def authors_log(terms: Mapping[str, Tensor]) -> dict[str, float]:
    """The authors' per-step dict (``loss.forward``): ``loss_overall`` (the sum of all terms), then the six logged."""
    log = {"loss_overall": float(sum(v.detach() for v in terms.values()))}
    log.update({AUTHORS_LOG_NAMES[k]: float(terms[k].detach()) for k in AUTHORS_LOG_NAMES})
    return log


__all__ = ["LOSS_TERMS", "AUTHORS_LOG_NAMES", "mil_nce", "mil_loss", "vib_terms", "ral_loss_components",
           "weighted_terms", "ral_objective", "sample_gaussian", "SampleTerms", "authors_log"]
