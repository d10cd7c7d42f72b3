"""The released optimiser (BertAdam), its parameter groups, and the LR schedule."""
import functools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from method.training.schedules import warmup_linear

# A parameter whose name contains any of these is not weight-decayed (released rule).
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


class BertAdam(torch.optim.Optimizer):
    """Adam of the released recipe: per-tensor gradient clipping, no bias correction, decoupled decay.

    For each parameter p with gradient g (skipped when g is None):
      g <- g * min(1, max_grad_norm / (||g|| + 1e-6))   (each tensor on its own)
      m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
      p <- p - lr * (m / (sqrt(v) + eps) + weight_decay * p)
    ``lr`` is the group's current value; the schedule lives outside, in a
    ``LambdaLR`` (see ``build_optimizer``). State per parameter: 'exp_avg' (m),
    'exp_avg_sq' (v).
    """

    def __init__(self, params: Iterable, lr: float, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one update; ``closure`` (optional) re-evaluates the loss and returns it.

        Each parameter group is updated by a fixed number of ``torch._foreach_*``
        calls, however many tensors it holds; the only per-tensor Python work is
        building the lists (and the state of a parameter's first update).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: List[torch.Tensor]) -> None:
        """The released update of ``params`` (the tensors of ``group`` that have a gradient)."""
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("BertAdam does not support sparse gradients")
        for p in [p for p in params if not self.state[p]]:  # a parameter's first update
            self.state[p]["exp_avg"] = torch.zeros_like(p)
            self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
        if group["max_grad_norm"] > 0:
            grads = _clipped_per_tensor(grads, group["max_grad_norm"])
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        beta1, beta2 = group["betas"]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        del grads  # the clipped copies are no longer needed: a smaller peak below
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, group["eps"])
        updates = torch._foreach_div(exp_avgs, denom)
        del denom
        if group["weight_decay"] > 0.0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-group["lr"])


def _clipped_per_tensor(grads: List[torch.Tensor], max_norm: float) -> List[torch.Tensor]:
    """New tensors ``g * min(1, max_norm / (||g|| + 1e-6))``, each gradient clipped on its own.

    The factor of ``torch.nn.utils.clip_grad_norm_`` applied to one tensor. The
    norms and factors are 0-d device tensors (no host sync). ``max_norm / x``
    of a Python float and a tensor is ``x.reciprocal() * max_norm`` in torch,
    so the factors are computed in that order (bit-identical to the per-tensor
    expression). The caller's gradients are left unchanged.
    """
    factors = torch._foreach_add(torch._foreach_norm(grads), 1e-6)
    torch._foreach_reciprocal_(factors)
    torch._foreach_mul_(factors, max_norm)
    torch._foreach_clamp_max_(factors, 1.0)
    return torch._foreach_mul(grads, factors)


def param_groups(model: nn.Module, weight_decay: float, exclude_all_norms: bool = False) -> List[Dict]:
    """Split the trainable parameters into a decayed and a non-decayed group.

    A parameter is not decayed when its name contains any of ``NO_DECAY``
    ("bias", "LayerNorm.bias", "LayerNorm.weight"); everything else, positional
    embeddings and the pooling vector included, gets ``weight_decay``. So a
    LayerNorm under another name (GMMFormerV2's ``norm1`` / ``norm2``) is
    decayed, as released; ``exclude_all_norms`` exempts every LayerNorm
    module's parameters. Parameters with ``requires_grad=False`` are left out.
    """
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}

    def no_decay(name: str, p: nn.Parameter) -> bool:
        return any(nd in name for nd in NO_DECAY) or (exclude_all_norms and id(p) in norms)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
    ]


def _lr_lambda(step: int, total_steps: int, warmup: float) -> float:
    """LambdaLR multiplier of 0-based update ``step``: ``warmup_linear(step / total_steps)``."""
    return warmup_linear(step / total_steps, warmup)


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, total_steps: int,
                    warmup: float = 0.01, exclude_all_norms: bool = False) -> Tuple[torch.optim.Optimizer, LambdaLR]:
    """Optimiser and LR scheduler of a training run.

    Args:
        model: the module to train.
        name: 'bertadam' (released recipe) or 'adamw' (torch AdamW, eps 1e-6, same groups).
        lr: peak learning rate.
        weight_decay: decay of the decayed group.
        total_steps: T = steps per epoch * number of epochs.
        warmup: warm-up fraction of T.
        exclude_all_norms: no decay on any LayerNorm (see ``param_groups``).

    Returns:
        (optimizer, scheduler); call ``scheduler.step()`` after every ``optimizer.step()``
        so that update s uses ``lr * warmup_linear(s / T)``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    groups = param_groups(model, weight_decay, exclude_all_norms)
    if name == "bertadam":
        optimizer = BertAdam(groups, lr=lr, weight_decay=weight_decay)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, eps=1e-6, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected 'bertadam' or 'adamw'")
    scheduler = LambdaLR(optimizer, functools.partial(_lr_lambda, total_steps=total_steps, warmup=warmup))
    return optimizer, scheduler


@dataclass(frozen=True)
class OptimSettings:
    """The optimiser of a run: ``build_optimizer``'s arguments but the model and the step count."""

    name: str = "bertadam"
    lr: float = 2.5e-4
    weight_decay: float = 0.01
    warmup: float = 0.01
    exclude_all_norms: bool = False

    def build(self, model: nn.Module, total_steps: int) -> Tuple[torch.optim.Optimizer, LambdaLR]:
        return build_optimizer(model, self.name, self.lr, self.weight_decay, total_steps, self.warmup,
                               self.exclude_all_norms)
