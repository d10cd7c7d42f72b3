"""Frame-level distillation of the teacher's score distribution (METHOD.md loss 3)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

# Finite stand-in for -inf on padded frames: exp() of it is exactly 0, and,
# unlike -inf, 0 * (it - x) is 0, so masked frames never produce NaN.
_MASK_FILL = -1e10


def kl_distill_loss(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float = 0.2) -> Tensor:
    """Frame-level distillation: ``sum_q KL(softmax(teacher_q / T) || softmax(student_q / T))``.

    Each row is one query against the frames of its own video; the softmaxes run
    over the valid frames only. The teacher side carries no gradient.

    Args:
        student: (Q, L) student per-frame cosine scores.
        teacher: (Q, L) teacher per-frame cosine scores.
        mask: (Q, L) float, 1 = valid frame, 0 = padding.
        temperature: T.

    Returns:
        Scalar tensor, summed over frames and over queries.
    """
    valid = mask > 0
    log_p_student = F.log_softmax((student / temperature).masked_fill(~valid, _MASK_FILL), dim=1)
    log_p_teacher = F.log_softmax((teacher.detach() / temperature).masked_fill(~valid, _MASK_FILL), dim=1)
    pointwise = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)  # (Q, L)
    return (pointwise * mask).sum()
