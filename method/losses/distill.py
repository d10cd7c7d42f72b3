"""Frame-level distillation of the teachers' score distribution (docs/method.md, "Distillation").

With several teachers the target is the mixture (mean) of the teachers'
softmax distributions: each teacher keeps its own localisation, and a frame
that any teacher finds relevant keeps mass (``teacher_log_target``). One
teacher is exactly the ICCV term.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Finite stand-in for -inf on padded frames: exp() of it is exactly 0, and,
# unlike -inf, 0 * (it - x) is 0, so masked frames never produce NaN.
_MASK_FILL = -1e10


def mixture_log_softmax(scores: Tensor, dim: int) -> Tensor:
    """``log mean_k softmax(scores_k)`` over ``dim`` (>= 0, an axis of one teacher's scores) of K teachers'
    scores (K, ...) -> (...): the log of the mixture of their distributions."""
    return torch.logsumexp(F.log_softmax(scores, dim=dim + 1), dim=0) - math.log(scores.shape[0])


def teacher_log_target(teacher: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Log of the target distribution over the valid frames: ``log softmax(t / T)`` of one teacher (R, L),
    or ``log mean_k softmax(t_k / T)`` of several (K, R, L). No gradient."""
    logits = (teacher.detach() / temperature).masked_fill(~valid, _MASK_FILL)
    if teacher.dim() == 2:
        return F.log_softmax(logits, dim=-1)
    return mixture_log_softmax(logits, 1)


def kl_distill_loss(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float = 0.2) -> Tensor:
    """Frame-level distillation: ``sum_q KL(p_q || softmax(student_q / T))`` with p the teachers' target.

    Each row is one query against the frames of its own video; the softmaxes run
    over the valid frames only. The teacher side carries no gradient.

    Args:
        student: (Q, L) student per-frame cosine scores.
        teacher: (Q, L) teacher per-frame cosine scores, or (K, Q, L) of K teachers
            (target: the mean of their softmax distributions).
        mask: (Q, L) float, 1 = valid frame, 0 = padding.
        temperature: T.

    Returns:
        Scalar tensor, summed over frames and over queries.
    """
    valid = mask > 0
    log_p_student = F.log_softmax((student / temperature).masked_fill(~valid, _MASK_FILL), dim=1)
    log_p_teacher = teacher_log_target(teacher, valid, temperature)
    pointwise = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)  # (Q, L)
    return (pointwise * mask).sum()
