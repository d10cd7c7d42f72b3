"""Tests of method/losses.py: golden numbers of the authors' ICCV and DL-DKD++ code, slow loop oracles."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from method.losses import (
    BatchLayout,
    DLDKDLoss,
    SoftNCEOptions,
    TeacherScores,
    kl_distill_loss,
    nce_loss,
    sample_t2v_negatives,
    sample_v2t_negatives,
    soft_nce_loss,
    triplet_loss,
)


# --------------------------------------------------------------------------- #
# oracles (slow, explicit loops over queries / videos)
# --------------------------------------------------------------------------- #
def loop_triplet(scores, labels, margin, t2v_neg, v2t_neg):
    """Triplet loss with given negatives: t2v_neg[q] a video, v2t_neg[v] a query.

    Videos without a query, or without a query of another video, contribute 0.
    """
    Q, V = scores.shape
    labels = labels.tolist()
    t2v = 0.0
    for q in range(Q):
        t2v = t2v + torch.clamp(margin + scores[q, int(t2v_neg[q])] - scores[q, labels[q]], min=0)
    t2v = t2v / Q
    v2t = 0.0
    for v in range(V):
        pos = [q for q in range(Q) if labels[q] == v]
        if not pos or len(pos) == Q:
            continue
        pos_mean = sum(scores[q, v] for q in pos) / len(pos)
        v2t = v2t + torch.clamp(margin + scores[int(v2t_neg[v]), v] - pos_mean, min=0)
    return t2v + v2t / V


def loop_hard_v2t_negatives(scores, labels):
    """For each video, the highest-scoring query of another video (explicit loop)."""
    scores = scores.detach()
    Q, V = scores.shape
    out = []
    for v in range(V):
        best, best_q = -float("inf"), 0
        for q in range(Q):
            if int(labels[q]) != v and float(scores[q, v]) > best:
                best, best_q = float(scores[q, v]), q
        out.append(best_q)
    return out


def loop_hardest_t2v_negatives(scores, labels):
    """For each query, the highest-scoring video other than its own (explicit loop)."""
    scores = scores.detach()
    Q, V = scores.shape
    out = []
    for q in range(Q):
        cands = [(float(scores[q, v]), v) for v in range(V) if v != int(labels[q])]
        out.append(max(cands)[1])
    return out


def loop_nce(U, labels):
    Q, V = U.shape
    labels = labels.tolist()
    t2v = 0.0
    for q in range(Q):
        t2v = t2v + torch.logsumexp(U[q], 0) - U[q, labels[q]]
    v2t = 0.0
    for v in range(V):
        pos = [q for q in range(Q) if labels[q] == v]
        if pos:
            v2t = v2t + torch.logsumexp(U[:, v], 0) - torch.logsumexp(U[pos, v], 0)
    return t2v / Q + v2t / V


def loop_kl(student, teacher, lengths, T=0.2):
    """Sum over queries of KL(softmax(t/T) || softmax(s/T)) over the first lengths[q] frames."""
    total = 0.0
    for q in range(student.shape[0]):
        n = int(lengths[q])
        log_ps = F.log_softmax(student[q, :n] / T, dim=0)
        log_pt = F.log_softmax(teacher[q, :n].detach() / T, dim=0)
        total = total + (log_pt.exp() * (log_pt - log_ps)).sum()
    return total


# --------------------------------------------------------------------------- #
# random batches
# --------------------------------------------------------------------------- #
CAPS_PER_VIDEO = [3, 1, 2, 4, 2]  # video 1 has one caption
VIDEO_LENGTHS = [7, 3, 5, 1, 6]  # different lengths, padded to 7, one single-frame video


def make_labels(caps=CAPS_PER_VIDEO, seed=0):
    labels = torch.cat([torch.full((c,), v, dtype=torch.long) for v, c in enumerate(caps)])
    g = torch.Generator().manual_seed(seed)
    return labels[torch.randperm(len(labels), generator=g)]  # queries in no particular order


def make_mask(lengths=VIDEO_LENGTHS):
    L = max(lengths)
    return (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).float()


def rand_scores(Q, V, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(Q, V, generator=g, dtype=dtype) * 2 - 1) * scale


# --------------------------------------------------------------------------- #
# golden numbers of the released code
# --------------------------------------------------------------------------- #
def test_nce_golden(golden):
    value = nce_loss(torch.from_numpy(golden["nce_scores"]), torch.from_numpy(golden["nce_labels"]))
    assert value.item() == pytest.approx(float(golden["nce_value"]), rel=1e-5)


def test_kl_golden(golden):
    student = torch.from_numpy(golden["kl_student"])  # (query, frame, video)
    teacher = torch.from_numpy(golden["kl_teacher"])
    labels = torch.from_numpy(golden["kl_labels"])
    lengths = torch.from_numpy(golden["kl_video_lengths"])
    q = torch.arange(len(labels))
    mask = (torch.arange(student.shape[1])[None] < lengths[:, None]).float()
    value = kl_distill_loss(student[q, :, labels], teacher[q, :, labels], mask[labels], 0.2)
    assert value.item() == pytest.approx(float(golden["kl_value"]), rel=1e-5)


def test_triplet_golden(golden):
    scores = torch.from_numpy(golden["trip_scores"])
    labels = torch.from_numpy(golden["trip_labels"])
    value = triplet_loss(scores, labels, margin=0.1, hard_negative=True, hard_pool_size=1)
    assert value.item() == pytest.approx(float(golden["trip_value_margin0.1_hardpool1"]), rel=1e-5)


# --------------------------------------------------------------------------- #
# triplet
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("hard_negative,pool", [(True, 1), (True, 2), (True, 20), (False, 20)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_loop_with_same_draws(hard_negative, pool, seed):
    labels = make_labels(seed=seed)
    scores = rand_scores(len(labels), len(CAPS_PER_VIDEO), seed).requires_grad_(True)
    g = torch.Generator().manual_seed(100 + seed)
    t2v_neg = sample_t2v_negatives(scores, labels, hard_negative, pool, g)
    v2t_neg = sample_v2t_negatives(scores, labels, hard_negative, g)
    ref = loop_triplet(scores, labels, 0.2, t2v_neg, v2t_neg)
    (ref_grad,) = torch.autograd.grad(ref, scores)
    out = triplet_loss(scores, labels, 0.2, hard_negative, pool, generator=torch.Generator().manual_seed(100 + seed))
    (out_grad,) = torch.autograd.grad(out, scores)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_grad, ref_grad)


def test_triplet_hard_pool1_is_released_hardest_negative():
    labels = make_labels(seed=3)
    scores = rand_scores(len(labels), 5, seed=3)
    t2v = loop_hardest_t2v_negatives(scores, labels)
    v2t = loop_hard_v2t_negatives(scores, labels)
    ref = loop_triplet(scores, labels, 0.1, t2v, v2t)
    torch.testing.assert_close(triplet_loss(scores, labels, 0.1, True, 1), ref)
    assert sample_t2v_negatives(scores, labels, True, 1).tolist() == t2v
    assert sample_v2t_negatives(scores, labels, True).tolist() == v2t


def test_t2v_hard_pool_draws_from_top_k_only():
    labels = make_labels(seed=4)
    Q, V, pool = len(labels), 5, 2
    scores = rand_scores(Q, V, seed=4)
    allowed = []
    for q in range(Q):
        negs = sorted((v for v in range(V) if v != int(labels[q])), key=lambda v: -float(scores[q, v]))
        allowed.append(set(negs[:pool]))
    g = torch.Generator().manual_seed(0)
    seen = [set() for _ in range(Q)]
    for _ in range(200):
        for q, v in enumerate(sample_t2v_negatives(scores, labels, True, pool, g).tolist()):
            seen[q].add(v)
    assert seen == allowed


@pytest.mark.parametrize("hard_negative,pool", [(True, 4), (True, 50), (False, 20)])
def test_t2v_large_pool_draws_every_negative_never_positive(hard_negative, pool):
    labels = make_labels(seed=5)
    Q, V = len(labels), 5
    scores = rand_scores(Q, V, seed=5)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_t2v_negatives(scores, labels, hard_negative, pool, g) for _ in range(4000)])  # (N, Q)
    for q in range(Q):
        counts = torch.bincount(draws[:, q], minlength=V).double()
        assert counts[labels[q]] == 0
        freq = counts[torch.arange(V) != labels[q]] / draws.shape[0]
        # uniform over the 4 negatives: 0.25 each, std ~ 0.007 at N = 4000
        assert torch.all((freq - 0.25).abs() < 0.04), freq


def test_v2t_random_negative_is_uniform_over_other_videos_queries():
    labels = make_labels(seed=6)
    Q, V = len(labels), 5
    scores = rand_scores(Q, V, seed=6)
    g = torch.Generator().manual_seed(2)
    draws = torch.stack([sample_v2t_negatives(scores, labels, False, g) for _ in range(6000)])  # (N, V)
    for v in range(V):
        counts = torch.bincount(draws[:, v], minlength=Q).double()
        own = labels == v
        assert torch.all(counts[own] == 0)
        freq = counts[~own] / draws.shape[0]
        expected = 1.0 / int((~own).sum())
        assert torch.all((freq - expected).abs() < 0.035), (v, freq)


def test_triplet_video_without_query_is_masked_out():
    labels = torch.tensor([0, 0, 2, 3, 3, 3])  # video 1 and 4 have no query
    scores = rand_scores(6, 5, seed=7).requires_grad_(True)
    out = triplet_loss(scores, labels, 0.2, True, 1)
    ref = loop_triplet(scores, labels, 0.2, loop_hardest_t2v_negatives(scores, labels),
                       loop_hard_v2t_negatives(scores, labels))
    torch.testing.assert_close(out, ref)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(scores.grad).all()


def test_triplet_two_videos_and_float32():
    labels = torch.tensor([1, 0, 1])
    scores = rand_scores(3, 2, seed=8, dtype=torch.float32)
    ref = loop_triplet(scores, labels, 0.2, [0, 1, 0], loop_hard_v2t_negatives(scores, labels))
    for hard in (True, False):  # with V = 2 the only negative is forced
        torch.testing.assert_close(triplet_loss(scores, labels, 0.2, hard, 20), ref)


def test_triplet_needs_two_videos_and_a_pool():
    with pytest.raises(ValueError):
        triplet_loss(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), 0.2, True, 20)
    with pytest.raises(ValueError):
        triplet_loss(torch.zeros(3, 2), torch.tensor([0, 1, 1]), 0.2, True, 0)


# --------------------------------------------------------------------------- #
# InfoNCE
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nce_matches_loop(seed):
    labels = make_labels(seed=seed)
    U = rand_scores(len(labels), 5, seed, scale=8.0).requires_grad_(True)
    ref = loop_nce(U, labels)
    (ref_grad,) = torch.autograd.grad(ref, U)
    out = nce_loss(U, labels)
    (out_grad,) = torch.autograd.grad(out, U)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_grad, ref_grad)


def test_nce_video_without_query_contributes_zero_but_counts():
    labels = torch.tensor([0, 2, 2, 3, 0])  # video 1 has no query
    U = rand_scores(5, 4, seed=9, scale=5.0).requires_grad_(True)
    out = nce_loss(U, labels)
    torch.testing.assert_close(out, loop_nce(U, labels))
    out.backward()
    assert torch.isfinite(U.grad).all()


# --------------------------------------------------------------------------- #
# KL distillation
# --------------------------------------------------------------------------- #
def kl_inputs(seed, requires_grad=True):
    labels = make_labels(seed=seed)
    mask = make_mask()[labels]  # (Q, L)
    lengths = mask.sum(1).long()
    g = torch.Generator().manual_seed(seed)
    student = torch.rand(mask.shape, generator=g, dtype=torch.float64) * 2 - 1
    teacher = torch.rand(mask.shape, generator=g, dtype=torch.float64) * 2 - 1
    student = student.masked_fill(mask == 0, -1e10)  # padded frames as the model emits them
    return student.requires_grad_(requires_grad), teacher.requires_grad_(requires_grad), mask, lengths


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("T", [0.2, 1.0])
def test_kl_matches_loop(seed, T):
    student, teacher, mask, lengths = kl_inputs(seed)
    ref = loop_kl(student, teacher, lengths, T)
    (ref_grad,) = torch.autograd.grad(ref, student)
    out = kl_distill_loss(student, teacher, mask, T)
    (out_grad,) = torch.autograd.grad(out, student)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_grad, ref_grad)


def test_kl_no_teacher_gradient_and_finite_student_gradient():
    student, teacher, mask, _ = kl_inputs(3)
    kl_distill_loss(student, teacher, mask).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all()
    assert torch.all(student.grad[mask == 0] == 0)


def test_kl_padded_frames_contribute_exactly_zero():
    student, teacher, mask, _ = kl_inputs(4, requires_grad=False)
    base = kl_distill_loss(student, teacher, mask)
    pad = mask == 0
    other = kl_distill_loss(student.masked_fill(pad, 0.7), teacher.masked_fill(pad, 123.0), mask)
    assert torch.equal(base, other)
    assert torch.isfinite(base)


def test_kl_is_zero_for_equal_distributions_and_sums_over_queries():
    student, _, mask, _ = kl_inputs(5, requires_grad=False)
    assert kl_distill_loss(student, student.clone(), mask).abs().item() < 1e-12
    s, t, m, _ = kl_inputs(6, requires_grad=False)
    per_query = [kl_distill_loss(s[i:i + 1], t[i:i + 1], m[i:i + 1]) for i in range(len(s))]
    torch.testing.assert_close(kl_distill_loss(s, t, m), torch.stack(per_query).sum())


# --------------------------------------------------------------------------- #
# DLDKDLoss
# --------------------------------------------------------------------------- #
def score_output(labels, frame_mask, seed):
    """A ScoreOutput-like object built the way the model builds one."""
    Q, (V, L) = len(labels), frame_mask.shape
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(Q, V, L, generator=g) * 2 - 1
    dot = cos * 7.0
    pad = (frame_mask == 0)[None]
    frame_scores = cos.masked_fill(pad, -1e10).requires_grad_(True)
    return SimpleNamespace(video_scores=frame_scores.max(dim=2).values,
                           video_scores_raw=dot.masked_fill(pad, -1e10).max(dim=2).values,
                           frame_scores=frame_scores)


def whole(out):
    return SimpleNamespace(rows=out, cols=out)


def dldkd_batch(seed=0, single_branch=False):
    labels = make_labels(seed=seed)
    frame_mask = make_mask()
    outputs = {"inheritance": score_output(labels, frame_mask, seed)}
    if not single_branch:
        outputs["exploration"] = score_output(labels, frame_mask, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    teacher = (torch.rand(len(labels), frame_mask.shape[1], generator=g) * 2 - 1).requires_grad_(True)
    return outputs, labels, frame_mask, teacher


def run_loss(loss_fn, outputs, labels, frame_mask, teacher=None, **kwargs):
    scores = {k: {"frame": whole(o)} for k, o in outputs.items()}
    return loss_fn(scores, BatchLayout.whole(labels, frame_mask),
                   None if teacher is None else TeacherScores(teacher, frame_mask[labels]), **kwargs)


def test_dldkd_terms_and_weights():
    outputs, labels, frame_mask, teacher = dldkd_batch()
    loss_fn = DLDKDLoss(margin=0.1, hard_pool_size=2, nce_weight=0.04, kd_temperature=0.2)
    terms = run_loss(loss_fn, outputs, labels, frame_mask, teacher, kd_factor=0.1, hard_negative=True,
                     generator=torch.Generator().manual_seed(11))
    assert list(terms) == ["trip_inh", "nce_inh", "kd", "trip_exp", "nce_exp"]
    g = torch.Generator().manual_seed(11)  # same draws, same order: inheritance first
    inh, exp = outputs["inheritance"], outputs["exploration"]
    torch.testing.assert_close(terms["trip_inh"], triplet_loss(inh.video_scores, labels, 0.1, True, 2, g))
    torch.testing.assert_close(terms["trip_exp"], triplet_loss(exp.video_scores, labels, 0.1, True, 2, g))
    torch.testing.assert_close(terms["nce_inh"], 0.04 * nce_loss(inh.video_scores_raw, labels))
    torch.testing.assert_close(terms["nce_exp"], 0.04 * nce_loss(exp.video_scores_raw, labels))
    q = torch.arange(len(labels))
    lengths = frame_mask.sum(1).long()[labels]
    torch.testing.assert_close(terms["kd"], 0.1 * loop_kl(inh.frame_scores[q, labels], teacher, lengths, 0.2))


def test_dldkd_kd_scales_linearly_and_backward_is_finite():
    outputs, labels, frame_mask, teacher = dldkd_batch(seed=1)
    loss_fn = DLDKDLoss(margin=0.2, hard_pool_size=20)
    kd1 = run_loss(loss_fn, outputs, labels, frame_mask, teacher, kd_factor=0.1)["kd"]
    kd3 = run_loss(loss_fn, outputs, labels, frame_mask, teacher, kd_factor=0.3)["kd"]
    kd0 = run_loss(loss_fn, outputs, labels, frame_mask, teacher, kd_factor=0.0)["kd"]
    torch.testing.assert_close(kd3, 3.0 * kd1)
    assert kd0.item() == 0.0 and kd1.item() > 0
    total = sum(run_loss(loss_fn, outputs, labels, frame_mask, teacher, kd_factor=0.5, hard_negative=True).values())
    total.backward()
    for out in outputs.values():
        assert torch.isfinite(out.frame_scores.grad).all()
    assert teacher.grad is None


def test_dldkd_without_teacher_and_single_branch():
    outputs, labels, frame_mask, teacher = dldkd_batch(seed=2, single_branch=True)
    loss_fn = DLDKDLoss(margin=0.2, hard_pool_size=20)
    assert list(run_loss(loss_fn, outputs, labels, frame_mask, teacher, kd_factor=0.1)) == ["trip_inh", "nce_inh",
                                                                                            "kd"]
    assert list(run_loss(loss_fn, outputs, labels, frame_mask)) == ["trip_inh", "nce_inh"]
    outputs2, *_ = dldkd_batch(seed=2)
    assert list(run_loss(loss_fn, outputs2, labels, frame_mask)) == ["trip_inh", "nce_inh", "trip_exp", "nce_exp"]


# --------------------------------------------------------------------------- #
# DL-DKD++ soft-target InfoNCE
# --------------------------------------------------------------------------- #
def loop_soft_nce(s, sims, labels, alpha, beta, leak=1e-12, keep_parts=False):
    """docs/method.md's soft-target InfoNCE rules written out caption by caption and video by video."""
    Q, V = s.shape
    labels = labels.tolist()
    hq, hv = math.floor(alpha * Q), math.floor(alpha * V)
    sums = {"t2v_hard": 0.0, "t2v_soft": 0.0, "v2t_hard": 0.0, "v2t_soft": 0.0}
    for q in range(Q):
        lse = torch.logsumexp(s[q], 0)
        if q < hq:
            sums["t2v_hard"] = sums["t2v_hard"] + lse - s[q, labels[q]]
        else:
            p = torch.softmax(sims[q], 0)
            for v in range(V):
                target = (1 - beta) * p[v] + beta * float(labels[q] == v)
                sums["t2v_soft"] = sums["t2v_soft"] + target * (lse - s[q, v])
    for v in range(V):
        if v not in labels:
            continue
        p = torch.softmax(sims[:, v], 0)
        weights = []
        for q in range(Q):
            onehot = float(labels[q] == v)
            w = onehot if v < hv else (1 - beta) * p[q] + beta * onehot
            weights.append(torch.log(torch.as_tensor(w, dtype=s.dtype) + leak) + s[q, v])
        term = torch.logsumexp(s[:, v], 0) - torch.logsumexp(torch.stack(weights), 0)
        sums["v2t_hard" if v < hv else "v2t_soft"] = sums["v2t_hard" if v < hv else "v2t_soft"] + term
    t2v_h = sums["t2v_hard"] / hq if hq else 0.0
    v2t_h = sums["v2t_hard"] / hv if hv else 0.0
    t2v_s = sums["t2v_soft"] / (Q - hq) if Q - hq else 0.0
    v2t_s = sums["v2t_soft"] / (V - hv) if V - hv else 0.0
    hard = t2v_h + v2t_h if (keep_parts or (hq and hv)) else 0.0
    soft = t2v_s + v2t_s if (keep_parts or (Q - hq and V - hv)) else 0.0
    return alpha * hard + (1 - alpha) * soft


def golden_nce_case(dldkdpp_golden, case):
    g = dldkdpp_golden
    return (torch.from_numpy(g[f"nce{case}_scores"]), torch.from_numpy(g[f"nce{case}_teacher"]),
            torch.from_numpy(g[f"nce{case}_labels"]))


@pytest.mark.parametrize("case", ["A", "B", "C"])
@pytest.mark.parametrize("targets", ["teacher", "self", "selfdetached"])
def test_soft_nce_golden_values_and_gradients(dldkdpp_golden, case, targets):
    """The authors' clip_nce_soft: 9 (alpha, belta) rows, teacher targets and the exploration branch's own."""
    g = dldkdpp_golden
    scores, teacher, labels = golden_nce_case(g, case)
    for i, (alpha, beta) in enumerate(g["nce_alpha_belta"]):
        s = scores.clone().requires_grad_(True)
        sims = {"teacher": teacher, "self": s, "selfdetached": s.detach()}[targets]
        value = soft_nce_loss(s, sims, labels, float(alpha), float(beta))
        value.backward()
        if targets != "selfdetached":  # the authors' code never detaches: no value recorded
            ref = float(g[f"nce{case}_soft_{targets}_value"][i])
            assert value.item() == pytest.approx(ref, rel=1e-5), (i, alpha, beta)
        grad_ref = g[f"nce{case}_soft_{targets}_grad"][i]
        np.testing.assert_allclose(s.grad.numpy(), grad_ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(grad_ref).max()))


def test_soft_nce_hard_style_is_the_iccv_nce_golden(dldkdpp_golden):
    for case in "ABC":
        scores, _, labels = golden_nce_case(dldkdpp_golden, case)
        assert nce_loss(scores, labels).item() == pytest.approx(float(dldkdpp_golden[f"nce{case}_hard_value"]),
                                                                rel=1e-5)


@pytest.mark.parametrize("alpha,beta", [(0.8, 0.8), (0.5, 0.5), (0.2, 0.6), (0.05, 0.9), (0.0, 0.5), (1.0, 0.7)])
@pytest.mark.parametrize("keep_parts", [False, True])
def test_soft_nce_matches_loop(alpha, beta, keep_parts):
    labels = torch.sort(make_labels(seed=3)).values  # batch order: captions video by video
    s = rand_scores(len(labels), 5, seed=3, scale=6.0).requires_grad_(True)
    sims = rand_scores(len(labels), 5, seed=4, scale=4.0)
    for targets in (sims, s):
        ref = loop_soft_nce(s, targets, labels, alpha, beta, keep_parts=keep_parts)
        out = soft_nce_loss(s, targets, labels, alpha, beta, keep_parts=keep_parts)
        if not torch.is_tensor(ref):  # every part dropped
            assert out.item() == 0.0
            continue
        (ref_grad,) = torch.autograd.grad(ref, s)
        (out_grad,) = torch.autograd.grad(out, s)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(out_grad, ref_grad)


def test_soft_nce_quirks_change_the_numbers(dldkdpp_golden):
    """Negative controls: each kept quirk of the authors' code moves the value, so each flag matters."""
    g = dldkdpp_golden
    scores, teacher, labels = golden_nce_case(g, "C")  # spread scores: the leak matters
    base = soft_nce_loss(scores, teacher, labels, 0.8, 0.8).item()
    assert base == pytest.approx(float(g["nceC_soft_teacher_value"][8]), rel=1e-5)
    assert abs(soft_nce_loss(scores, teacher, labels, 0.8, 0.8, leak=0.0).item() - base) > 1.0
    # (0.2, 0.6) on Q = 9, V = 4: hV = 0 < hQ = 1, so the authors drop the whole hard part.
    scores, teacher, labels = golden_nce_case(g, "A")
    dropped = soft_nce_loss(scores, teacher, labels, 0.2, 0.6).item()
    assert dropped == pytest.approx(float(g["nceA_soft_teacher_value"][5]), rel=1e-5)
    assert abs(soft_nce_loss(scores, teacher, labels, 0.2, 0.6, keep_parts=True).item() - dropped) > 1e-2


# --------------------------------------------------------------------------- #
# sharding: the parts of several processes add up to the one-process loss
# --------------------------------------------------------------------------- #
SHARD_CAPS = [3, 1, 2, 4, 2, 2]  # captions per video, in batch order


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("hard_negative", [True, False])
def test_sharded_terms_add_up_to_the_whole_batch(soft, hard_negative):
    """Process k owns the rows of its videos' captions and the columns of its videos (one share empty)."""
    labels = torch.repeat_interleave(torch.arange(len(SHARD_CAPS)), torch.tensor(SHARD_CAPS))
    frame_mask = make_mask([7, 3, 5, 1, 6, 4])
    Q, V = len(labels), len(SHARD_CAPS)
    outputs = {"inheritance": score_output(labels, frame_mask, 20), "exploration": score_output(labels, frame_mask, 21)}
    g = torch.Generator().manual_seed(22)
    teacher_frames = torch.rand(Q, frame_mask.shape[1], generator=g) * 2 - 1
    teacher_raw = torch.rand(Q, V, generator=g) * 8 - 4
    loss_fn = DLDKDLoss(margin=0.1, hard_pool_size=2, soft=SoftNCEOptions() if soft else None)
    settings = {"kd_factor": 0.1, "hard_negative": hard_negative, "alpha": 0.5, "beta": 0.7}

    def terms_of(rows, cols):
        scores = {k: {"frame": SimpleNamespace(rows=SimpleNamespace(video_scores=o.video_scores[rows],
                                                                    video_scores_raw=o.video_scores_raw[rows],
                                                                    frame_scores=o.frame_scores[rows]),
                                               cols=SimpleNamespace(video_scores=o.video_scores[:, cols],
                                                                    video_scores_raw=o.video_scores_raw[:, cols]))}
                  for k, o in outputs.items()}
        teacher = TeacherScores(teacher_frames[rows], frame_mask[labels[rows]], teacher_raw[rows], teacher_raw[:, cols])
        return loss_fn(scores, BatchLayout(labels, frame_mask, rows, cols), teacher,
                       generator=torch.Generator().manual_seed(5), **settings)

    whole_terms = terms_of(slice(0, Q), slice(0, V))
    (whole_grad,) = torch.autograd.grad(sum(whole_terms.values()), outputs["exploration"].frame_scores,
                                        retain_graph=True)
    video_shares = [(0, 2), (2, 2), (2, 3), (3, 6)]  # the second share is empty
    starts = torch.cumsum(torch.tensor([0] + SHARD_CAPS), 0).tolist()
    parts = [terms_of(slice(starts[a], starts[b]), slice(a, b)) for a, b in video_shares]
    for name, value in whole_terms.items():
        torch.testing.assert_close(sum(p[name] for p in parts), value)
    (shard_grad,) = torch.autograd.grad(sum(sum(p.values()) for p in parts), outputs["exploration"].frame_scores)
    torch.testing.assert_close(shard_grad, whole_grad)
