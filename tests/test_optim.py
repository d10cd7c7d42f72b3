"""Tests of method/optim.py: golden BertAdam steps, a numpy hand computation, groups, state round trip."""
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from method.optim import BertAdam, build_optimizer, param_groups
from method.schedules import warmup_linear


def test_bertadam_golden_three_steps(golden):
    p1 = nn.Parameter(torch.from_numpy(golden["adam_p1_init"]).clone())
    p2 = nn.Parameter(torch.from_numpy(golden["adam_p2_init"]).clone())
    opt = BertAdam([{"params": [p1], "weight_decay": 0.01}, {"params": [p2], "weight_decay": 0.0}], lr=1e-3)
    sched = LambdaLR(opt, lambda s: warmup_linear(s / 100, 0.01))
    for s in range(3):
        p1.grad = torch.from_numpy(golden[f"adam_g1_step{s}"]).clone()
        p2.grad = torch.from_numpy(golden[f"adam_g2_step{s}"]).clone()
        opt.step()
        sched.step()
    np.testing.assert_allclose(p1.detach().numpy(), golden["adam_p1_after3"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p2.detach().numpy(), golden["adam_p2_after3"], rtol=1e-6, atol=1e-7)


def numpy_bertadam(params, grads_per_step, lrs, wds, b1=0.9, b2=0.999, eps=1e-6, max_norm=1.0):
    """The released update rule, written out in float64 numpy."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for grads, lr in zip(grads_per_step, lrs):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            norm = np.sqrt((g ** 2).sum())
            g = g * min(1.0, max_norm / (norm + 1e-6))  # each tensor clipped on its own
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] = params[i] - lr * (m[i] / (np.sqrt(v[i]) + eps) + wds[i] * params[i])
    return params


def test_bertadam_matches_hand_computation_and_clips_per_tensor():
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    grads = []
    for s in range(4):
        big = rng.normal(size=(4, 3)) * (50.0 if s == 0 else 0.3)  # norm >> 1 at step 0
        small = rng.normal(size=(5,)) * 0.1  # norm < 1: must not be shrunk by the other tensor
        grads.append([big.astype(np.float32), small.astype(np.float32)])
    lrs = [1e-2, 5e-3, 5e-3, 2e-3]
    ps = [nn.Parameter(torch.from_numpy(x.copy())) for x in init]
    opt = BertAdam([{"params": [ps[0]], "weight_decay": 0.01}, {"params": [ps[1]], "weight_decay": 0.0}], lr=lrs[0])
    for s, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(ps, grads[s]):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
        ref = numpy_bertadam(init, grads[:s + 1], lrs[:s + 1], [0.01, 0.0])
        for p, r in zip(ps, ref):
            np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-5, atol=1e-7)
    # No bias correction: after one step with a small gradient, |update| = lr * 0.1|g| / (sqrt(0.001)|g| + eps).
    p = nn.Parameter(torch.zeros(3))
    one = BertAdam([p], lr=1.0, weight_decay=0.0)
    p.grad = torch.tensor([0.2, -0.1, 0.05])
    one.step()
    expected = -0.1 * p.grad.double() / (np.sqrt(0.001) * p.grad.double().abs() + 1e-6)
    torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=0)


def test_bertadam_zero_lr_step_updates_moments_only_and_skips_missing_grads():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = BertAdam([a, b], lr=0.0)
    a.grad = torch.tensor([3.0, 4.0])  # norm 5: clipped to norm 1
    opt.step()
    assert torch.equal(a.detach(), torch.ones(2)) and torch.equal(b.detach(), torch.ones(2))
    torch.testing.assert_close(opt.state[a]["exp_avg"], 0.1 * torch.tensor([3.0, 4.0]) / (5.0 + 1e-6))
    assert len(opt.state[b]) == 0
    assert torch.equal(a.grad, torch.tensor([3.0, 4.0]))  # the caller's gradient is left alone


class _Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.position_embeddings = nn.Embedding(6, 4)
        self.LayerNorm = nn.LayerNorm(4)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = _Embeddings()
        self.dense = nn.Linear(4, 4)
        self.modular_vector_mapping = nn.Linear(4, 1, bias=False)
        self.frozen = nn.Linear(4, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_no_decay_rule():
    model = _Tiny()
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "dense.weight", "modular_vector_mapping.weight", "pos_embed.position_embeddings.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "dense.bias", "pos_embed.LayerNorm.bias", "pos_embed.LayerNorm.weight"]


@pytest.mark.parametrize("name", ["bertadam", "adamw"])
def test_build_optimizer_schedule(name):
    model = _Tiny()
    opt, sched = build_optimizer(model, name, lr=2.5e-4, weight_decay=0.01, total_steps=200, warmup=0.01)
    assert isinstance(opt, BertAdam if name == "bertadam" else torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    if name == "adamw":
        assert opt.param_groups[0]["eps"] == 1e-6
    for s in range(5):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(2.5e-4 * warmup_linear(s / 200, 0.01))
        loss = model.dense(torch.randn(3, 4)).pow(2).sum() + model.pos_embed.position_embeddings.weight.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    with pytest.raises(ValueError):
        build_optimizer(model, "sgd", lr=1e-3, weight_decay=0.01, total_steps=10)


def test_state_dict_round_trip_gives_identical_steps():
    torch.manual_seed(0)
    model = _Tiny()
    opt, sched = build_optimizer(model, "bertadam", lr=1e-2, weight_decay=0.01, total_steps=50)
    x = torch.randn(6, 4)

    def step(m, o, s, seed):
        g = torch.Generator().manual_seed(seed)
        loss = (m.dense(x) * torch.randn(6, 4, generator=g)).sum() + m.pos_embed.LayerNorm(x).pow(2).mean()
        loss.backward()
        o.step()
        o.zero_grad()
        s.step()

    for i in range(3):
        step(model, opt, sched, i)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    clone = _Tiny()
    clone.load_state_dict(saved["model"])
    opt2, sched2 = build_optimizer(clone, "bertadam", lr=1e-2, weight_decay=0.01, total_steps=50)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert set(opt2.state[clone.dense.weight]) == {"exp_avg", "exp_avg_sq"}
    for i in range(3, 6):
        step(model, opt, sched, i)
        step(clone, opt2, sched2, i)
    for (n, p), (_, q) in zip(model.named_parameters(), clone.named_parameters()):
        assert torch.equal(p, q), n
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
