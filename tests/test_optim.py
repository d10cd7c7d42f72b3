"""Tests of method/optim.py: golden BertAdam steps, a per-tensor oracle, a numpy hand computation, groups, state."""
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils._python_dispatch import TorchDispatchMode

from method.training.optim import BertAdam, build_optimizer, param_groups
from method.training.schedules import warmup_linear


class LoopBertAdam:
    """The released rule one tensor at a time: the oracle of the vectorised ``BertAdam.step``.

    For each parameter p with gradient g (skipped when g is None), in float32:
      g <- g * min(1, max_norm / (||g|| + 1e-6))
      m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
      p <- p - lr (m / (sqrt(v) + eps) + wd p)
    written with the same elementwise torch primitives (``add_(x, alpha=a)`` is
    one fused multiply-add, ``float / tensor`` is ``reciprocal() * float``), so
    that the two can be compared bit for bit. ``groups`` are dicts with
    'params', 'lr' and 'weight_decay', read at every step.
    """

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-6, max_norm=1.0):
        self.groups, self.betas, self.eps, self.max_norm = groups, betas, eps, max_norm
        self.state = {}  # p -> (m, v)

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for group in self.groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if self.max_norm > 0:
                    g = g * (self.max_norm / (torch.linalg.vector_norm(g) + 1e-6)).clamp(max=1.0)
                if p not in self.state:
                    self.state[p] = (torch.zeros_like(p), torch.zeros_like(p))
                m, v = self.state[p]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = m / (v.sqrt() + self.eps)
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])


def assert_same_as_oracle(opt, oracle, params, oracle_params):
    """Parameters and moments of the two optimisers are bit-identical (torch.equal)."""
    for i, (p, q) in enumerate(zip(params, oracle_params)):
        assert torch.equal(p, q), f"parameter {i}"
        if q in oracle.state:
            m, v = oracle.state[q]
            assert torch.equal(opt.state[p]["exp_avg"], m) and torch.equal(opt.state[p]["exp_avg_sq"], v), i
        else:
            assert len(opt.state[p]) == 0, f"parameter {i} has state but never had a gradient"


def test_bertadam_golden_three_steps(golden):
    init = [golden["adam_p1_init"], golden["adam_p2_init"]]
    ps = [nn.Parameter(torch.from_numpy(x).clone()) for x in init]
    qs = [nn.Parameter(torch.from_numpy(x).clone()) for x in init]
    opt = BertAdam([{"params": [ps[0]], "weight_decay": 0.01}, {"params": [ps[1]], "weight_decay": 0.0}], lr=1e-3)
    sched = LambdaLR(opt, lambda s: warmup_linear(s / 100, 0.01))
    oracle = LoopBertAdam([{"params": [qs[0]], "weight_decay": 0.01}, {"params": [qs[1]], "weight_decay": 0.0}])
    for s in range(3):
        for group, oracle_group in zip(opt.param_groups, oracle.groups):
            oracle_group["lr"] = group["lr"]
        for i, (p, q) in enumerate(zip(ps, qs)):
            p.grad = torch.from_numpy(golden[f"adam_g{i + 1}_step{s}"]).clone()
            q.grad = p.grad.clone()
        opt.step()
        oracle.step()
        sched.step()
        assert_same_as_oracle(opt, oracle, ps, qs)
    np.testing.assert_allclose(ps[0].detach().numpy(), golden["adam_p1_after3"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ps[1].detach().numpy(), golden["adam_p2_after3"], rtol=1e-6, atol=1e-7)


SHAPES = [(7, 5), (13,), (3, 4, 2), (1,), (64, 33), (), (200,), (9, 9)]


@pytest.mark.parametrize("max_norm", [1.0, 0.7, 0.0])
def test_vectorised_step_is_bit_identical_to_the_per_tensor_loop(max_norm):
    """50 steps: mixed shapes, missing and zero gradients, clipped and unclipped tensors, two groups, LambdaLR."""
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(shape, generator=g) for shape in SHAPES]
    ps = [nn.Parameter(x.clone()) for x in init]
    qs = [nn.Parameter(x.clone()) for x in init]
    decayed = [0, 2, 4, 6]  # the others, and parameter 7 which never gets a gradient, are not decayed

    def groups(xs):
        return [{"params": [xs[i] for i in decayed], "weight_decay": 0.01},
                {"params": [x for i, x in enumerate(xs) if i not in decayed], "weight_decay": 0.0}]

    opt = BertAdam(groups(ps), lr=1e-2, max_grad_norm=max_norm)
    sched = LambdaLR(opt, lambda s: warmup_linear(s / 50, 0.1))
    oracle = LoopBertAdam(groups(qs), max_norm=max_norm)
    seen = {"clipped": 0, "unclipped": 0, "none": 0, "zero": 0}
    lrs = set()
    for step in range(50):
        for group, oracle_group in zip(opt.param_groups, oracle.groups):
            oracle_group["lr"] = group["lr"]
        lrs.add(opt.param_groups[0]["lr"])
        for i, (p, q) in enumerate(zip(ps, qs)):
            kind = torch.randint(0, 10, (), generator=g).item() if i != 7 else 0
            if kind == 0:  # no gradient this step (parameter 7: never)
                p.grad = q.grad = None
                seen["none"] += 1
                continue
            if kind == 1:
                grad = torch.zeros_like(p)
                seen["zero"] += 1
            else:  # large gradients are clipped (norm above max_norm), small ones are not
                grad = torch.randn(p.shape, generator=g) * (30.0 if kind < 5 else 0.01)
                seen["clipped" if grad.norm() > max_norm > 0 else "unclipped"] += 1
            p.grad, q.grad = grad, grad.clone()
        opt.step()
        oracle.step()
        sched.step()
        assert_same_as_oracle(opt, oracle, ps, qs)
    assert all(n > 0 for kind, n in seen.items() if not (kind == "clipped" and max_norm == 0)), seen
    assert len(lrs) > 10 and 0.0 in lrs  # the warm-up starts at 0, then the LR changes at every step
    assert not opt.state[ps[7]] and not torch.equal(ps[0], init[0])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_bertadam_gmmformer_golden_two_steps(gmmformer_golden, version):
    """The authors' GMMFormer BertAdam: 2 steps with the golden gradient, lr 1e-2, T = 100, warm-up 0.01."""
    z = gmmformer_golden
    prefix = f"{version}_model/"
    names = [k[len(prefix):] for k in z.files if k.startswith(prefix)]
    no_decay = set(z[f"{version}_tiny_no_decay_names"].tolist())
    assert no_decay < set(names)
    params = {n: nn.Parameter(torch.from_numpy(z[prefix + n]).clone()) for n in names}
    opt = BertAdam([{"params": [params[n] for n in names if n not in no_decay], "weight_decay": 0.01},
                    {"params": [params[n] for n in names if n in no_decay], "weight_decay": 0.0}], lr=1e-2)
    sched = LambdaLR(opt, lambda s: warmup_linear(s / 100, 0.01))
    assert opt.param_groups[0]["lr"] == 0.0  # the first step only fills the moments
    for _ in range(2):
        for n, p in params.items():
            p.grad = torch.from_numpy(z[f"{version}_tiny_grad/{n}"]).clone()
        opt.step()
        sched.step()
    worst = 0.0
    for n, p in params.items():
        ref = z[f"{version}_tiny_after2/{n}"]
        np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-6, atol=1e-6, err_msg=n)
        worst = max(worst, float(np.abs(p.detach().numpy() - ref).max()))
    moved = max(float(np.abs(z[f"{version}_tiny_after2/{n}"] - z[prefix + n]).max()) for n in names)
    assert moved > 100 * max(worst, 1e-7)  # the check sees the update, not just the initial values


class _CountOps(TorchDispatchMode):
    """Counts the aten calls made from Python (a foreach call counts once)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _ops_of_second_step(n_tensors: int) -> int:
    ps = [nn.Parameter(torch.randn(3, 2)) for _ in range(n_tensors)]
    opt = BertAdam([{"params": ps[::2], "weight_decay": 0.01}, {"params": ps[1::2], "weight_decay": 0.0}], lr=1e-3)
    for _ in range(2):  # the first step also creates the state
        for p in ps:
            p.grad = torch.randn(3, 2) * 10
        counter = _CountOps()
        with counter:
            opt.step()
    return counter.calls


def test_step_makes_a_fixed_number_of_calls_per_group():
    """No per-tensor work: 4 or 40 tensors per group, the same number of (foreach) calls."""
    assert _ops_of_second_step(8) == _ops_of_second_step(80) <= 2 * 16


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
