"""Holmes' evidential objective as pure functions of tensors (HOLMES.md sections 3.3-5, 10.4).

Evidential (Dirichlet) loss on a score matrix, Dempster-Shafer combination of
two views, query identification and label smoothing, the partial-OT
pseudo-labels of each video's captions over its clips (vectorised over the
videos; the Sinkhorn iterations are a loop), the intra-video evidential loss,
the dual-query consistency term, and the total loss by phase
(``holmes_loss``: warm-up vs after), returned as named terms.

Shapes: Q queries, V videos of the batch (K = V classes of the Dirichlets),
``labels[q]`` = query q's video (0..V-1), P = 32 clips, M = the most captions
of a video in the batch. All in the inputs' dtype (float32 as the authors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from method.losses.query import qdl_v2
from method.losses.ranking import nce_loss, triplet_loss

TERM_NAMES = ("clip_nce", "clip_trip", "frame_nce", "frame_trip", "qdl", "intra_edl", "frame_edl", "clip_edl",
              "combine_edl")  # the authors' order; the dual-query variant appends "dc"


# --------------------------------------------------------------------------- #
# evidential loss (5.2), Dempster-Shafer combination (5.3), consistency (10.4)
# --------------------------------------------------------------------------- #
def edl_evidence(scores: Tensor, tau: float) -> Tensor:
    """Evidence ``exp(tanh(S) / tau)`` of a (cosine) score matrix."""
    return torch.exp(torch.tanh(scores) / tau)


def edl_alpha(scores: Tensor, tau: float) -> Tensor:
    """Dirichlet parameters ``alpha = exp(tanh(S) / tau) + 1``, same shape as ``scores``."""
    return edl_evidence(scores, tau) + 1


def edl_variance(alpha: Tensor) -> Tensor:
    """Per row: the Dirichlet variance sum ``sum a (S - a) / (S^2 (S + 1))``, S = sum a (last axis = classes).

    As the authors compute it: ``S^2 (S + 1)`` overflows in float32 for S > 7e12 and the term becomes 0
    (quirk H9); its true value is below 1 / S < 1.5e-13 there, so this is kept (no fix).
    """
    strength = alpha.sum(dim=-1, keepdim=True)
    return (alpha * (strength - alpha) / (strength * strength * (strength + 1))).sum(dim=-1)


def edl_row_terms(targets: Tensor, alpha: Tensor) -> Tensor:
    """Per row (last axis = classes): ``sum (y - a/S)^2`` plus ``edl_variance``, S = sum a."""
    p = alpha / alpha.sum(dim=-1, keepdim=True)
    return ((targets - p) ** 2).sum(dim=-1) + edl_variance(alpha)


def edl_loss(targets: Tensor, alpha: Tensor) -> Tensor:
    """``EDL(Y', alpha)``: the mean over rows of ``edl_row_terms`` (targets (Q, V) one-hot or soft)."""
    return edl_row_terms(targets, alpha).mean()


def ds_combine(alpha0: Tensor, alpha1: Tensor) -> Dict[str, Tensor]:
    """Dempster-Shafer combination of two Dirichlets (Q, K) over K classes (5.3, ``DS_Combin_two``).

    Returns {"evidence" e^a, "alpha" e^a + 1, "belief" b^a (Q, K), "uncertainty" u^a (Q, 1)}. Computed
    in the form ``e^a = E0 + E1 + E0 E1 / K`` (the conflict 1 - C cancels), ``S^a = sum e^a + K``,
    ``b^a = e^a / S^a``, ``u^a = K / S^a``: the authors' quantities, without their float32
    cancellation when 1 - C is tiny (H9).
    """
    k = alpha0.shape[-1]
    e0, e1 = alpha0 - 1, alpha1 - 1
    evidence = e0 + e1 + e0 * e1 / k
    alpha = evidence + 1
    strength = alpha.sum(dim=-1, keepdim=True)
    return {"evidence": evidence, "alpha": alpha, "belief": evidence / strength, "uncertainty": k / strength}


def ds_combine_reference(alpha0: Tensor, alpha1: Tensor) -> Dict[str, Tensor]:
    """The combination as the authors write it (beliefs, conflict C, ``(1 - C)`` divisions); for comparison."""
    k = alpha0.shape[-1]
    s0, s1 = alpha0.sum(-1, keepdim=True), alpha1.sum(-1, keepdim=True)
    b0, b1 = (alpha0 - 1) / s0, (alpha1 - 1) / s1
    u0, u1 = k / s0, k / s1
    bb = b0[:, :, None] * b1[:, None, :]
    conflict = bb.sum(dim=(1, 2)) - torch.diagonal(bb, dim1=1, dim2=2).sum(-1)
    scale = (1 - conflict)[:, None]
    belief = (b0 * b1 + b0 * u1 + b1 * u0) / scale
    uncertainty = u0 * u1 / scale
    evidence = belief * (k / uncertainty)
    return {"evidence": evidence, "alpha": evidence + 1, "belief": belief, "uncertainty": uncertainty}


def dc_loss(alpha_frame: Tensor, alpha_clip: Tensor) -> Tensor:
    """Dual-query consistency (10.4): ``mean_q ||p_f - p_c||_1 (1 - u_f)(1 - u_c)``, ``p = a/S``, ``u = K/S``."""
    k = alpha_frame.shape[-1]
    s_f, s_c = alpha_frame.sum(-1, keepdim=True), alpha_clip.sum(-1, keepdim=True)
    dist = (alpha_frame / s_f - alpha_clip / s_c).abs().sum(dim=-1)
    return (dist * (1 - k / s_f[:, 0]) * (1 - k / s_c[:, 0])).mean()


# --------------------------------------------------------------------------- #
# query identification (5.4) and label smoothing (5.5)
# --------------------------------------------------------------------------- #
def expected_entropy(alpha: Tensor) -> Tensor:
    """(Q,) ``sum_v (a/S)(psi(S + 1) - psi(a + 1))``: the expected entropy of the Dirichlet's categorical."""
    strength = alpha.sum(dim=-1, keepdim=True)
    return (alpha / strength * (torch.digamma(strength + 1) - torch.digamma(alpha + 1))).sum(dim=-1)


def query_identification(scores: Tensor, alpha: Tensor, labels: Tensor, beta: float) -> Dict[str, Tensor]:
    """Split the queries of one view into consistent C, noisy N and uncertain U (``loss.pair_division``).

    scores: (Q, V) the view's cosine scores; alpha: (Q, V) its Dirichlet; labels: (Q,).
    Returns bool masks {"C", "N", "U", "moved"} (Q,) (``moved``: the high-entropy part of
    C0, now in N) and the authors' index lists {"C_idx" ascending, "N_idx" (N0 ascending then
    the moved ones ascending), "U_idx" ascending}. Thresholds in the scores' dtype (float32:
    1 - beta = 0.69999999). The median is torch's lower median (quirk H7).
    """
    with torch.no_grad():
        num_q, num_v = scores.shape
        rows = torch.arange(num_q, device=scores.device)
        correct = scores.argmax(dim=1) == labels
        consensus = scores[rows, labels]
        uncertainty = num_v / alpha.sum(dim=1)
        hi = torch.tensor(1 - beta, dtype=scores.dtype, device=scores.device)
        lo = torch.tensor(beta, dtype=scores.dtype, device=scores.device)
        if bool(correct.any()):
            u_bar = torch.minimum(uncertainty[correct].max(), hi)
            g_bar = torch.maximum(consensus[correct].min(), lo)
        else:
            u_bar, g_bar = hi, lo
        uncertain = uncertainty > u_bar
        c0 = ~uncertain & (consensus >= g_bar)
        n0 = ~uncertain & (consensus < g_bar)
        entropy = expected_entropy(alpha)
        median = entropy.sort().values[(num_q - 1) // 2]
        moved = c0 & (entropy > median)
        consistent = c0 & ~moved
        noisy = n0 | moved
        return {"C": consistent, "N": noisy, "U": uncertain, "moved": moved,
                "C_idx": rows[consistent], "N_idx": torch.cat([rows[n0], rows[moved]]), "U_idx": rows[uncertain]}


def smooth_labels(frame_scores: Tensor, clip_scores: Tensor, labels: Tensor, frame_sets: Dict[str, Tensor],
                  clip_sets: Dict[str, Tensor], beta: float) -> Tensor:
    """Post-warm-up labels (5.5): ambiguous rows ``(1 - b) Y + b (softmax S_f + softmax S_c) / 2``, others one-hot.

    Ambiguous = (C_f & N_c) | (N_f & C_c) | (N_f & N_c) (quirk H6: uncertain queries stay one-hot).
    A constant (no gradient).
    """
    with torch.no_grad():
        onehot = F.one_hot(labels, frame_scores.shape[1]).to(frame_scores.dtype)
        ambiguous = ((frame_sets["C"] & clip_sets["N"]) | (frame_sets["N"] & clip_sets["C"])
                     | (frame_sets["N"] & clip_sets["N"]))
        smooth_f = (1 - beta) * onehot + beta * torch.softmax(frame_scores, dim=1)
        smooth_c = (1 - beta) * onehot + beta * torch.softmax(clip_scores, dim=1)
        return torch.where(ambiguous[:, None], (smooth_f + smooth_c) / 2, onehot)


# --------------------------------------------------------------------------- #
# partial-OT pseudo-labels (section 4) and the intra-video loss (5.6)
# --------------------------------------------------------------------------- #
def pack_by_video(clips: Tensor, queries: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-video packing (section 3.3): videos in order of first appearance in ``labels``.

    clips: (V, P, d), queries: (Q, d) (q'), labels: (Q,) -> (clip_pack (V', P, d), text_pack (V', M, d)
    with each video's captions in batch order, zero rows beyond them, caption mask (V', M)).
    V' = the videos that have a caption (all of them in training).
    """
    num_q, device = labels.shape[0], labels.device
    order = torch.arange(num_q, device=device)
    first = torch.full((clips.shape[0],), num_q, dtype=torch.long, device=device).scatter_reduce(
        0, labels, order, reduce="amin")
    videos = torch.argsort(first)[: int((first < num_q).sum())]  # by first appearance
    slot = torch.empty_like(first).scatter_(0, videos, torch.arange(len(videos), device=device))[labels]  # (Q,)
    onehot = F.one_hot(slot, len(videos))
    rank = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1  # position of each caption within its video
    counts = onehot.sum(dim=0)
    width = int(counts.max()) if num_q else 0
    text = queries.new_zeros(len(videos), width, queries.shape[1]).index_put((slot, rank), queries)
    mask = queries.new_zeros(len(videos), width).index_put((slot, rank), queries.new_ones(num_q))
    return clips[videos], text, mask


def _kth_smallest_valid(values: Tensor, valid: Tensor, ratio: float) -> Tensor:
    """(V,) the k-th smallest valid entry of each row of ``values`` (V, n), ``k = max(1, floor(ratio * n_valid))``."""
    n_valid = valid.sum(dim=1)
    k = torch.floor(ratio * n_valid.double()).long().clamp(min=1)
    ordered = values.masked_fill(~valid, float("inf")).sort(dim=1).values
    return ordered.gather(1, (k - 1)[:, None])[:, 0]


def sinkhorn_log_plan(sim: Tensor, prompt: Tensor, mask: Tensor, scale: float, iters: int) -> Tensor:
    """Log plan (V, M, P) of the partial OT with a dustbin row (section 4 step 4), no gradient.

    sim: (V, M, P) Ŝ; prompt: (V,) dustbin values P_v; mask: (V, M) caption mask. Rows i < M are
    ``Ŝ / scale``, the dustbin row ``P_v / scale``; log marginals: real rows ``-log(P + n_v)``, padded
    rows -1e9, dustbin ``log P - log(P + n_v)``, columns ``-log P``. ``iters`` alternating updates
    from a = b = 0; the plan ``Z + a + b + log P`` without the dustbin row.
    """
    with torch.no_grad():
        v, m, p = sim.shape
        z = torch.cat([sim, prompt[:, None, None].expand(v, 1, p)], dim=1) / scale  # (V, M+1, P)
        n = mask.sum(dim=1, keepdim=True)  # (V, 1)
        norm = -torch.log(p + n)
        log_mu = torch.cat([torch.where(mask > 0, norm, torch.full_like(mask, -1e9)),
                            math.log(p) + norm], dim=1)  # (V, M+1)
        log_nu = torch.full((v, p), -math.log(p), dtype=sim.dtype, device=sim.device)
        a, b = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
        for _ in range(iters):
            a = log_mu - torch.logsumexp(z + b[:, None, :], dim=2)
            b = log_nu - torch.logsumexp(z + a[:, :, None], dim=1)
        return (z + a[:, :, None] + b[:, None, :] + math.log(p))[:, :m]


def batch_pot(clip_pack: Tensor, text_pack: Tensor, mask: Tensor, scale: float = 0.1, prompt_ratio: float = 0.3,
              iters: int = 50, minmax_valid_only: bool = False) -> Dict[str, Tensor]:
    """``BatchPOT``: intra-video similarities and partial-OT pseudo-labels of every video at once (section 4).

    clip_pack: (V, P, d), text_pack: (V, M, d) zero-padded, mask: (V, M).
    Returns {"sim" Ŝ (V, M, P) (carries gradient), "prompt" P_v (V,), "log_plan" (V, M, P),
    "plan" Γ (V, M, P) (rows of real captions sum to 1, padded rows 0; constant), "mass" (V,)}.
    Ŝ is the cosine min-max normalised per video over all M x P entries, padded columns
    included (quirk H3; ``minmax_valid_only`` over the real captions only). lo / hi are each one
    selected entry (its gradient goes to that entry alone).
    """
    v, m, p = text_pack.shape[0], text_pack.shape[1], clip_pack.shape[1]
    cos = torch.einsum("vmd,vpd->vmp", F.normalize(text_pack, dim=-1, eps=1e-12),
                       F.normalize(clip_pack, dim=-1, eps=1e-12))  # (V, M, P)
    flat = cos.reshape(v, m * p)
    valid = (mask > 0)[:, :, None].expand(v, m, p).reshape(v, m * p)
    if minmax_valid_only:
        lo = flat.masked_fill(~valid, float("inf")).min(dim=1).values
        hi = flat.masked_fill(~valid, float("-inf")).max(dim=1).values
    else:
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    sim = (cos - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
    with torch.no_grad():
        prompt = _kth_smallest_valid(sim.detach().reshape(v, m * p), valid, prompt_ratio)
        log_plan = sinkhorn_log_plan(sim.detach(), prompt, mask, scale, iters)
        weights = mask[:, :, None] * torch.exp(log_plan)
        plan = weights / (weights.sum(dim=2, keepdim=True) + 1e-8)
        mass = plan.sum(dim=(1, 2))
    return {"sim": sim, "prompt": prompt, "log_plan": log_plan, "plan": plan, "mass": mass}


def masked_edl_loss(sim: Tensor, plan: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Intra-video evidential loss (5.6, ``MaskedEDLLoss``): sim, plan (V, M, P), mask (V, M).

    ``alpha = exp(tanh(sim) / tau) + 1`` over the P clips of each caption row; the row terms
    of ``edl_row_terms`` against the pseudo-labels; a masked mean over each video's captions
    (count clamped at 1e-8), then the mean over the V videos.
    """
    rows = edl_row_terms(plan, edl_alpha(sim, tau))  # (V, M)
    return ((rows * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-8)).mean()


def _edl_part(clip_scores: Tensor, frame_scores: Tensor, labels: Tensor, s: Any, warmup_end: bool,
              intra_sim: Optional[Tensor], pot_plan: Optional[Tensor], caption_mask: Optional[Tensor]):
    """The evidential terms, unweighted, in the authors' order (intra_edl, frame_edl, clip_edl, combine_edl), the
    EDL targets, the query sets (after the warm-up) and the two views' Dirichlets. ``s``: any object with the
    fields edl_tau, edl_intra_video_tau, division_beta, smooth_beta."""
    alpha_f, alpha_c = edl_alpha(frame_scores, s.edl_tau), edl_alpha(clip_scores, s.edl_tau)
    alpha_a = ds_combine(alpha_f, alpha_c)["alpha"]
    raw: Dict[str, Tensor] = {}
    sets: Dict[str, Dict[str, Tensor]] = {}
    if warmup_end:
        if intra_sim is None or pot_plan is None or caption_mask is None:
            raise ValueError("after the warm-up the loss needs intra_sim, pot_plan and caption_mask")
        raw["intra_edl"] = masked_edl_loss(intra_sim, pot_plan.detach(), caption_mask, s.edl_intra_video_tau)
        sets = {"frame": query_identification(frame_scores.detach(), alpha_f.detach(), labels, s.division_beta),
                "clip": query_identification(clip_scores.detach(), alpha_c.detach(), labels, s.division_beta)}
        targets = smooth_labels(frame_scores.detach(), clip_scores.detach(), labels, sets["frame"], sets["clip"],
                                s.smooth_beta)
    else:
        raw["intra_edl"] = clip_scores.new_zeros(())
        targets = F.one_hot(labels, clip_scores.shape[1]).to(clip_scores.dtype)
    raw["frame_edl"] = edl_loss(targets, alpha_f)
    raw["clip_edl"] = edl_loss(targets, alpha_c)
    raw["combine_edl"] = edl_loss(targets, alpha_a)
    return raw, targets, sets, (alpha_f, alpha_c)


@dataclass(frozen=True)
class EvidentialTerms:
    """The settings of Holmes' evidential terms inside the training objective (``method.losses.Objective``);
    the student's ``Losses`` fills them (``HolmesLosses.evidential``)."""

    intra_edl_weight: float
    edl_weight: float
    edl_tau: float
    edl_intra_video_tau: float
    division_beta: float
    smooth_beta: float
    pot_scale: float
    pot_prompt_ratio: float
    pot_iters: int
    pot_minmax_valid_only: bool
    dc_weight: Optional[float] = None  # the dual-query consistency term's weight (None: no such term)


def evidential_terms(clip_scores: Tensor, frame_scores: Tensor, clips: Tensor, queries2: Tensor, labels: Tensor,
                     s: EvidentialTerms, warmup_end: bool) -> Dict[str, Tensor]:
    """Holmes' evidential terms of a whole batch, weighted: intra_edl (0 in the warm-up), frame_edl, clip_edl,
    combine_edl, and ``dc`` (the dual-query consistency term) when ``s.dc_weight`` is not None.

    clip_scores S_c, frame_scores S_f: (Q, V) cosine video scores; clips: (V, P, d) clip embeddings;
    queries2: q' (Q, d); labels: (Q,). After the warm-up the partial-OT pseudo-labels of each video's
    captions over its clips are computed here (``pack_by_video``, ``batch_pot``: what the authors'
    ``training_forward`` computes), the EDL targets are smoothed. The same numbers as ``holmes_loss``'s terms.
    """
    intra_sim = pot_plan = caption_mask = None
    if warmup_end:
        clip_pack, text_pack, caption_mask = pack_by_video(clips, queries2, labels)
        pot = batch_pot(clip_pack, text_pack, caption_mask, scale=s.pot_scale, prompt_ratio=s.pot_prompt_ratio,
                        iters=s.pot_iters, minmax_valid_only=s.pot_minmax_valid_only)
        intra_sim, pot_plan = pot["sim"], pot["plan"]
    raw, _, _, (alpha_f, alpha_c) = _edl_part(clip_scores, frame_scores, labels, s, warmup_end, intra_sim, pot_plan,
                                              caption_mask)
    weights = {"intra_edl": s.intra_edl_weight if warmup_end else 0.0, "frame_edl": s.edl_weight,
               "clip_edl": s.edl_weight, "combine_edl": s.edl_weight}
    if s.dc_weight is not None:
        raw["dc"], weights["dc"] = dc_loss(alpha_f, alpha_c), s.dc_weight
    return {name: weights[name] * value for name, value in raw.items()}


# --------------------------------------------------------------------------- #
# the total, by phase (5.7)
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class EvidentialSettings:
    """The loss settings of ``holmes_loss`` (the field names of ``HolmesConfig``)."""

    margin: float = 0.1
    hard_pool_size: int = 20
    clip_nce_weight: float = 0.05
    frame_nce_weight: float = 0.04
    qdl_weight: float = 8e-5
    qdl_margin: float = 0.15
    qdl_scale: float = 32.0
    qdl_focal: float = 1.0
    intra_edl_weight: float = 0.8
    edl_weight: float = 0.2
    dc_weight: float = 0.0
    edl_tau: float = 0.05
    edl_intra_video_tau: float = 0.06
    division_beta: float = 0.3
    smooth_beta: float = 0.2

    @classmethod
    def from_config(cls, cfg: Any) -> "EvidentialSettings":
        """The settings read from any object with these attribute names (a ``HolmesConfig``)."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


@dataclass
class HolmesLossOutput:
    """terms: weighted values by name (sum = the loss); unweighted, weights: the same names;
    edl_labels: (Q, V) the targets of the three EDL terms; sets: {"frame"|"clip": query_identification
    output} after the warm-up (empty before)."""

    terms: Dict[str, Tensor]
    unweighted: Dict[str, Tensor]
    weights: Dict[str, float]
    edl_labels: Tensor
    sets: Dict[str, Dict[str, Tensor]] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        return sum(self.terms.values())


def holmes_loss_details(clip_scores: Tensor, clip_dots: Tensor, frame_scores: Tensor, frame_dots: Tensor,
                        queries2: Tensor, labels: Tensor, settings: EvidentialSettings, warmup_end: bool,
                        hard_negative: bool, intra_sim: Optional[Tensor] = None, pot_plan: Optional[Tensor] = None,
                        caption_mask: Optional[Tensor] = None, with_dc: bool = False,
                        generator: Optional[torch.Generator] = None) -> HolmesLossOutput:
    """Every term of ``loss.forward`` (5.7), weighted and unweighted, with the EDL targets and the sets.

    S_c, U_c, S_f, U_f: (Q, V); queries2: q' (Q, d); labels: (Q,). Warm-up (``warmup_end`` False):
    NCE / triplet on both levels, QDL, and the three EDL terms on one-hot labels; the
    intra-video term is 0 and reads nothing. After: the intra-video EDL on
    ``intra_sim`` / ``pot_plan`` / ``caption_mask`` (``training_forward``) and the EDL terms on the
    smoothed labels. The triplet draws: clip, then frame (with ``generator``). ``with_dc``
    adds the dual-query consistency term ``dc`` (weight ``dc_weight``, 0 in the authors' config).
    """
    s = settings
    raw: Dict[str, Tensor] = {
        "clip_nce": nce_loss(clip_dots, labels),
        "clip_trip": triplet_loss(clip_scores, labels, s.margin, hard_negative, s.hard_pool_size, generator),
        "frame_nce": nce_loss(frame_dots, labels),
        "frame_trip": triplet_loss(frame_scores, labels, s.margin, hard_negative, s.hard_pool_size, generator),
        "qdl": qdl_v2(queries2, labels, s.qdl_margin, s.qdl_scale, s.qdl_focal),
    }
    edl, targets, sets, (alpha_f, alpha_c) = _edl_part(clip_scores, frame_scores, labels, s, warmup_end, intra_sim,
                                                       pot_plan, caption_mask)
    raw.update(edl)
    weights = {"clip_nce": s.clip_nce_weight, "clip_trip": 1.0, "frame_nce": s.frame_nce_weight, "frame_trip": 1.0,
               "qdl": s.qdl_weight, "intra_edl": s.intra_edl_weight if warmup_end else 0.0,
               "frame_edl": s.edl_weight, "clip_edl": s.edl_weight, "combine_edl": s.edl_weight}
    if with_dc:
        raw["dc"] = dc_loss(alpha_f, alpha_c)
        weights["dc"] = s.dc_weight
    terms = {name: weights[name] * value for name, value in raw.items()}
    return HolmesLossOutput(terms, raw, weights, targets, sets)


def holmes_loss(clip_scores: Tensor, clip_dots: Tensor, frame_scores: Tensor, frame_dots: Tensor, queries2: Tensor,
                labels: Tensor, settings: EvidentialSettings, warmup_end: bool, hard_negative: bool,
                intra_sim: Optional[Tensor] = None, pot_plan: Optional[Tensor] = None,
                caption_mask: Optional[Tensor] = None, with_dc: bool = False,
                generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
    """The weighted terms of ``holmes_loss_details`` by name (their sum is the training loss)."""
    return holmes_loss_details(clip_scores, clip_dots, frame_scores, frame_dots, queries2, labels, settings,
                               warmup_end, hard_negative, intra_sim, pot_plan, caption_mask, with_dc, generator).terms


__all__ = ["TERM_NAMES", "edl_evidence", "edl_alpha", "edl_variance", "edl_row_terms", "edl_loss", "ds_combine",
           "ds_combine_reference", "dc_loss", "expected_entropy", "query_identification", "smooth_labels",
           "pack_by_video", "sinkhorn_log_plan", "batch_pot", "masked_edl_loss", "EvidentialSettings",
           "HolmesLossOutput", "holmes_loss_details", "holmes_loss", "EvidentialTerms", "evidential_terms"]
