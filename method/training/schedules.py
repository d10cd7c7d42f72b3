"""Distillation-weight schedules and the learning-rate multiplier, pure functions.

The distillation term at epoch e (0-based) is multiplied by ``scale * w(e) + init``
(docs/method.md, "Distillation schedules"). The released code selects ``w`` with an integer
``decay_way``; here each has a readable name (``DECAY_WAY_NAMES``) and
``resolve_schedule`` accepts either form. ``init`` is added only by the rising
schedules (released 4, 5, 6); the others add 0. The golden multipliers of the
released code (scale 0.1, init 0.1) confirm that 7 and 8 are ``scale * w(e)``
with no init, e.g. way 7 at epoch 0 is 0.1 * 0.001 = 1e-4 and way 8 at epoch 0 is
0.1 * 0.001 (its floor) = 1e-4.
"""
import math
from dataclasses import dataclass
from typing import Optional, Union

DECAY_WAY_NAMES = {
    0: "fixed",
    1: "exp_decay",
    2: "linear_decay",
    3: "sigmoid_decay",
    4: "exp_rise",
    5: "linear_rise",
    6: "sigmoid_rise",
    7: "capped_exp_growth",
    8: "capped_saturating",
}
SCHEDULES = tuple(DECAY_WAY_NAMES.values()) + ("none",)

# Default k (and b) of the parametrised schedules, from the released config.
_EXP_K = 0.95
_LINEAR_K = -0.01
_LINEAR_B = 1.0
_LINEAR_FLOOR = 0.05
_SIGMOID_K = 800.0

_USES_K = {"exp_decay", "linear_decay", "sigmoid_decay", "exp_rise", "linear_rise", "sigmoid_rise"}
_USES_B = {"linear_decay", "linear_rise"}
_RISING = {"exp_rise", "linear_rise", "sigmoid_rise"}


def resolve_schedule(schedule: Union[str, int]) -> str:
    """Map a schedule name, or a released ``decay_way`` (int or digit string), to its name.

    Raises:
        ValueError: for an unknown name or integer.
    """
    if isinstance(schedule, int) or (isinstance(schedule, str) and schedule.strip().lstrip("-").isdigit()):
        way = int(schedule)
        if way not in DECAY_WAY_NAMES:
            raise ValueError(f"unknown decay_way {way}; expected one of {sorted(DECAY_WAY_NAMES)}")
        return DECAY_WAY_NAMES[way]
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown distillation schedule {schedule!r}; expected one of {SCHEDULES} or 0..8")
    return schedule


def _decay(kind: str, epoch: int, k: Optional[float], b: Optional[float]) -> float:
    """The decaying weight w(e) of 'exp', 'linear' or 'sigmoid' (released 1, 2, 3)."""
    if kind == "exp":
        return (_EXP_K if k is None else k) ** epoch
    if kind == "linear":
        k = _LINEAR_K if k is None else k
        b = _LINEAR_B if b is None else b
        return max(b + k * epoch, _LINEAR_FLOOR)
    k = _SIGMOID_K if k is None else k
    return k / (k + math.exp(100.0 * epoch / k))


def kd_factor(epoch: int, schedule: Union[str, int], scale: float = 0.1, init: float = 0.1,
              k: Optional[float] = None, b: Optional[float] = None) -> float:
    """Multiplier of the distillation term at 0-based ``epoch``: ``scale * w(epoch) + init_used``.

    Schedules (released ``decay_way`` in brackets; k, b default to the released values):
      - 'fixed' [0]: w = 1;
      - 'exp_decay' [1]: w = k^e, k = 0.95;
      - 'linear_decay' [2]: w = max(b + k e, 0.05), b = 1, k = -0.01;
      - 'sigmoid_decay' [3]: w = k / (k + exp(100 e / k)), k = 800;
      - 'exp_rise', 'linear_rise', 'sigmoid_rise' [4, 5, 6]: w = 1 - (the decay of 1, 2, 3),
        and only these add ``init``;
      - 'capped_exp_growth' [7]: w = min(0.001 * 1.05^e, 0.1);
      - 'capped_saturating' [8]: w = max(min(0.1 (1 - 0.95^e), 0.1), 0.001);
      - 'none': the factor is 0 (no distillation).

    Args:
        epoch: 0-based epoch.
        schedule: name or released integer (see ``resolve_schedule``).
        scale: ``loss_scale_weight``.
        init: ``loss_init_weight``, added by the rising schedules only.
        k: rate of the exp / linear / sigmoid schedules (None = default).
        b: intercept of the linear schedules (None = default).

    Raises:
        ValueError: unknown schedule, or k / b given to a schedule that does not use it.
    """
    name = resolve_schedule(schedule)
    if k is not None and name not in _USES_K:
        raise ValueError(f"schedule {name!r} takes no k")
    if b is not None and name not in _USES_B:
        raise ValueError(f"schedule {name!r} takes no b")
    if name == "none":
        return 0.0
    if name == "fixed":
        return scale * 1.0
    if name == "capped_exp_growth":
        return scale * min(0.001 * 1.05 ** epoch, 0.1)
    if name == "capped_saturating":
        return scale * max(min(0.1 * (1.0 - 0.95 ** epoch), 0.1), 0.001)
    kind, direction = name.split("_")
    w = _decay(kind, epoch, k, b)
    if direction == "rise":
        return scale * (1.0 - w) + init
    return scale * w


def warmup_linear(x: float, warmup: float = 0.01) -> float:
    """Learning-rate multiplier at training progress ``x = step / total_steps``.

    Linear warm-up ``x / warmup`` for ``x < warmup``, then linear decay
    ``(1 - x) / (1 - warmup)`` (1 at the end of warm-up, 0 at x = 1). Bit-identical
    to the released multiplier for warmup 0.01 (golden ``lr_multiplier_T1000``).
    """
    if x < warmup:
        return x / warmup
    return (1.0 - x) / (1.0 - warmup)


# DL-DKD++ soft-alignment schedules (docs/method.md, "Soft-alignment schedules").
SOFT_SCHEDULES = ("sigmoid", "exp", "linear", "cosine", "none")


def _soft_schedule(epoch: int, x0: float, floor: float, mode: str, n_epoch: int, exp_k: float,
                   sigmoid_k: float) -> float:
    if mode == "none":
        return x0
    # The operation orders below are bit-exact to the authors' (golden sched_* tables).
    if mode == "sigmoid":
        value = x0 * (sigmoid_k / (sigmoid_k + math.exp(100.0 * epoch / sigmoid_k)))
    elif mode == "exp":
        value = x0 * exp_k ** epoch
    elif mode == "linear":
        value = x0 + (floor - x0) / n_epoch * epoch
    elif mode == "cosine":
        value = floor + 0.5 * (x0 - floor) * (1.0 + math.cos(math.pi * epoch / n_epoch))
    else:
        raise ValueError(f"unknown soft-alignment schedule {mode!r}; expected one of {SOFT_SCHEDULES}")
    return max(value, floor)


def alpha_schedule(epoch: int, alpha0: float = 0.8, mode: str = "sigmoid", n_epoch: int = 120,
                   exp_k: float = 0.95, sigmoid_k: float = 800.0) -> float:
    """Share of the batch that keeps one-hot InfoNCE targets at 0-based ``epoch`` (floor 0).

    'sigmoid' (default): ``alpha0 K / (K + exp(100 e / K))``; 'exp': ``alpha0 k^e``;
    'linear': ``alpha0 (1 - e / N)``; 'cosine': ``alpha0 (1 + cos(pi e / N)) / 2``;
    'none': ``alpha0``. ``N = n_epoch``.
    """
    return _soft_schedule(epoch, alpha0, 0.0, mode, n_epoch, exp_k, sigmoid_k)


def beta_schedule(epoch: int, beta0: float = 0.8, mode: str = "sigmoid", n_epoch: int = 120,
                  exp_k: float = 0.95, sigmoid_k: float = 800.0) -> float:
    """Weight of the one-hot label inside a soft target (the authors' ``belta``).

    The forms of ``alpha_schedule``, decaying towards the floor 0.5 when
    ``beta0 >= 0.5`` (else 0): 'linear' is ``beta0 + (floor - beta0) e / N`` and
    'cosine' ``floor + (beta0 - floor)(1 + cos(pi e / N)) / 2``.
    """
    return _soft_schedule(epoch, beta0, 0.5 if beta0 >= 0.5 else 0.0, mode, n_epoch, exp_k, sigmoid_k)


@dataclass(frozen=True)
class EpochSchedule:
    """The per-epoch settings' parameters: distillation weight, hard negatives, DL-DKD++'s alpha and beta."""

    use_teacher: bool = True
    kd_schedule: Union[str, int] = "exp_decay"
    loss_scale_weight: float = 0.1
    loss_init_weight: float = 0.1
    kd_k: Optional[float] = None
    kd_b: Optional[float] = None
    hard_negative_start_epoch: int = 0
    label_style: str = "hard"
    n_epoch: int = 100
    alpha: float = 0.8
    beta: float = 0.8
    alpha_decay: str = "sigmoid"
    beta_decay: str = "sigmoid"
    soft_exp_k: float = 0.95
    soft_sigmoid_k: float = 800.0
    warmup_epoch: Optional[int] = None  # the objective's warm-up ends at this epoch (Holmes), None: it has none


def epoch_settings(s: EpochSchedule, epoch: int) -> dict:
    """Everything the training step needs that depends on the epoch: a pure function of (schedule, epoch).

    Returns ``kd_factor`` (0 without a teacher), ``hard_negative``, with
    ``label_style == 'soft'`` ``alpha`` and ``beta``, and with a ``warmup_epoch``
    ``warmup_end`` (the epoch is past the objective's warm-up).
    """
    settings = {
        "kd_factor": kd_factor(epoch, s.kd_schedule, s.loss_scale_weight, s.loss_init_weight, s.kd_k,
                               s.kd_b) if s.use_teacher else 0.0,
        "hard_negative": epoch >= s.hard_negative_start_epoch,
    }
    if s.label_style == "soft":
        common = {"n_epoch": s.n_epoch, "exp_k": s.soft_exp_k, "sigmoid_k": s.soft_sigmoid_k}
        settings["alpha"] = alpha_schedule(epoch, s.alpha, s.alpha_decay, **common)
        settings["beta"] = beta_schedule(epoch, s.beta, s.beta_decay, **common)
    if s.warmup_epoch is not None:
        settings["warmup_end"] = epoch >= s.warmup_epoch
    return settings
