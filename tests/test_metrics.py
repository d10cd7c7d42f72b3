"""Tests of method/metrics.py against slow per-query / per-video oracles."""

import numpy as np
import pytest
import torch

from method.evaluation.metrics import (
    format_table,
    summarize_t2v,
    summarize_v2t,
    t2v_metrics,
    t2v_ranks,
    v2t_metrics,
    v2t_rank_counts,
)

KEYS = ("r1", "r5", "r10", "r100", "sumr", "medr", "meanr", "map")


# --------------------------------------------------------------------------- #
# oracles (slow, explicit loops)
# --------------------------------------------------------------------------- #
def _summary_from_ranks(ranks, ap=None):
    ranks = np.asarray(ranks, dtype=np.int64)
    n = len(ranks)
    out = {}
    for k in (1, 5, 10, 100):
        out[f"r{k}"] = 100.0 * len(np.where(ranks <= k)[0]) / n
    out["sumr"] = out["r1"] + out["r5"] + out["r10"] + out["r100"]
    out["medr"] = float(np.median(ranks))
    out["meanr"] = float(ranks.mean())
    out["map"] = float(np.mean(1.0 / ranks)) if ap is None else float(np.mean(ap))
    return out


def oracle_t2v_count(S, qv):
    """rank = 1 + #{v != gt: S[q, v] >= S[q, gt]}, by explicit counting."""
    S = np.asarray(S, dtype=np.float64).tolist()
    ranks = []
    for q, row in enumerate(S):
        gt = int(qv[q])
        r = 1
        for v, s in enumerate(row):
            if v != gt and s >= row[gt]:
                r += 1
        ranks.append(r)
    return np.array(ranks), _summary_from_ranks(ranks)


def oracle_t2v_released(S, qv):
    """Released-evaluator style (tie-free scores only): argsort of negated scores."""
    S = np.asarray(S)
    n_q = S.shape[0]
    ranks = np.zeros(n_q, np.int32)
    for i in range(n_q):
        sorted_idxs = np.argsort(-S[i])
        ranks[i] = np.where(sorted_idxs == qv[i])[0][0] + 1
    out = {
        "r1": 100.0 * len(np.where(ranks <= 1)[0]) / n_q,
        "r5": 100.0 * len(np.where(ranks <= 5)[0]) / n_q,
        "r10": 100.0 * len(np.where(ranks <= 10)[0]) / n_q,
        "r100": 100.0 * len(np.where(ranks <= 100)[0]) / n_q,
        "medr": np.median(ranks),
        "meanr": ranks.mean(),
    }
    out["sumr"] = out["r1"] + out["r5"] + out["r10"] + out["r100"]
    return ranks, out


def oracle_v2t_count(S, qv, n_v):
    """Per video: each caption's rank by counting in the column, textbook AP loop."""
    S = np.asarray(S, dtype=np.float64).tolist()
    n_q = len(S)
    best, aps = [], []
    cap_ranks = [0] * n_q
    for l in range(n_v):
        caps = [j for j in range(n_q) if int(qv[j]) == l]
        if not caps:
            continue
        rks = []
        for j in caps:
            r = 1
            for q in range(n_q):
                if q != j and S[q][l] >= S[j][l]:
                    r += 1
            rks.append(r)
            cap_ranks[j] = r
        best.append(min(rks))
        rks.sort()
        ap = 0.0
        for i, r in enumerate(rks, start=1):
            ap += i / r
        aps.append(ap / len(rks))
    return np.array(cap_ranks), _summary_from_ranks(best, aps)


def oracle_v2t_argsort(S, qv, n_v):
    """Tie-free: per video, sort all captions by descending score and walk the list."""
    S = np.asarray(S)
    qv = np.asarray(qv)
    best, aps = [], []
    for l in range(n_v):
        if not (qv == l).any():
            continue
        order = np.argsort(-S[:, l])
        hits, ap, first = 0, 0.0, None
        for pos, j in enumerate(order, start=1):
            if qv[j] == l:
                hits += 1
                ap += hits / pos
                if first is None:
                    first = pos
        best.append(first)
        aps.append(ap / hits)
    return _summary_from_ranks(best, aps)


def assert_metrics_equal(got, exp, map_rel=1e-12):
    assert set(got) == set(KEYS)
    for k in KEYS:
        assert isinstance(got[k], float), k
        if k == "map":
            assert got[k] == pytest.approx(exp[k], rel=map_rel, abs=1e-15), k
        else:
            assert got[k] == exp[k], (k, got[k], exp[k])


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
def make_query_video(seed=0, n_v=12):
    """Video 0 has one caption, videos 1..n_v-2 have 1-6, the last video none; shuffled."""
    g = np.random.default_rng(seed)
    qv = [0]
    for v in range(1, n_v - 1):
        qv += [v] * int(g.integers(1, 7))
    qv = np.array(qv, dtype=np.int64)
    g.shuffle(qv)
    return torch.from_numpy(qv)


def float_scores(n_q, n_v, seed=0):
    s = torch.rand(n_q, n_v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert s.unique().numel() == s.numel()  # tie-free
    return s


def tied_scores(n_q, n_v, seed=0, high=3):
    s = torch.randint(0, high, (n_q, n_v), generator=torch.Generator().manual_seed(seed))
    s = s.float()
    s[1] = 1.0  # a constant row
    return s


# --------------------------------------------------------------------------- #
# hand-made 3 x 4 case
# --------------------------------------------------------------------------- #
# query_video = [0, 0, 2]: video 0 has captions q0, q1; video 2 has q2; videos 1, 3 none.
HAND_S = torch.tensor(
    [
        [0.9, 0.5, 0.9, 0.1],  # q0 -> v0
        [0.2, 0.8, 0.7, 0.1],  # q1 -> v0
        [0.4, 0.4, 0.7, 0.6],  # q2 -> v2
    ],
    dtype=torch.float64,
)
HAND_QV = torch.tensor([0, 0, 2])


def test_hand_t2v():
    # q0: pos 0.9; others >= 0.9: v2 (0.9, tie -> counted above)      -> rank 2
    # q1: pos 0.2; others >= 0.2: v1 (0.8), v2 (0.7); v3 0.1 is below -> rank 3
    # q2: pos 0.7; others >= 0.7: none (0.4, 0.4, 0.6)                -> rank 1
    ranks = t2v_ranks(HAND_S, HAND_QV)
    assert ranks.dtype == torch.int64
    assert ranks.tolist() == [2, 3, 1]
    m = t2v_metrics(HAND_S, HAND_QV)
    # R@1 = 1/3 -> 33.33..; R@5 = R@10 = R@100 = 100; medr = median(1,2,3) = 2;
    # meanr = 6/3 = 2; mAP = (1/2 + 1/3 + 1)/3 = (11/6)/3 = 11/18
    assert m["r1"] == pytest.approx(100 / 3)
    assert m["r5"] == m["r10"] == m["r100"] == 100.0
    assert m["sumr"] == pytest.approx(100 / 3 + 300)
    assert m["medr"] == 2.0
    assert m["meanr"] == 2.0
    assert m["map"] == pytest.approx(11 / 18)


def test_hand_v2t():
    # column v0 = (q0 0.9, q1 0.2, q2 0.4); column v2 = (q0 0.9, q1 0.7, q2 0.7)
    # caption q0 (v0, pos 0.9): others >= 0.9 in col v0: none                    -> 1
    # caption q1 (v0, pos 0.2): others >= 0.2 in col v0: q0 0.9, q2 0.4          -> 3
    # caption q2 (v2, pos 0.7): others >= 0.7 in col v2: q0 0.9, q1 0.7 (tie)    -> 3
    pos = HAND_S[torch.arange(3), HAND_QV]
    counts = v2t_rank_counts(HAND_S, torch.arange(3), HAND_QV, pos)
    assert counts.dtype == torch.int64
    assert (counts + 1).tolist() == [1, 3, 3]
    m = v2t_metrics(HAND_S, HAND_QV)
    # videos 1 and 3 have no caption -> excluded; per-video best: v0 -> 1, v2 -> 3
    # R@1 = 1/2 = 50; R@5 = R@10 = R@100 = 100; medr = (1 + 3)/2 = 2; meanr = 2
    # AP(v0) = mean(1/1, 2/3) = 5/6; AP(v2) = mean(1/3) = 1/3; mAP = (5/6 + 1/3)/2 = 7/12
    assert m["r1"] == 50.0
    assert m["r5"] == m["r10"] == m["r100"] == 100.0
    assert m["sumr"] == 350.0
    assert m["medr"] == 2.0
    assert m["meanr"] == 2.0
    assert m["map"] == pytest.approx(7 / 12)


# --------------------------------------------------------------------------- #
# oracle comparisons
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", [0, 1])
def test_t2v_random_float_matches_both_oracles(seed):
    qv = make_query_video(seed, n_v=150)  # n_v > 100 so R@100 is informative
    s = float_scores(qv.numel(), 150, seed)
    ranks = t2v_ranks(s, qv)
    c_ranks, c_m = oracle_t2v_count(s.numpy(), qv.numpy())
    r_ranks, r_m = oracle_t2v_released(s.numpy(), qv.numpy())
    assert ranks.tolist() == c_ranks.tolist() == r_ranks.tolist()
    m = t2v_metrics(s, qv, chunk_size=7)
    assert_metrics_equal(m, c_m)
    for k in ("r1", "r5", "r10", "r100", "sumr", "medr", "meanr"):
        assert m[k] == r_m[k], k  # to the last digit
    assert 0 < m["r1"] < m["r100"] < 100  # not a degenerate case


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("high", [2, 4])
def test_t2v_ties_match_count_oracle(seed, high):
    qv = make_query_video(seed)
    s = tied_scores(qv.numel(), 12, seed, high)
    ranks, exp = oracle_t2v_count(s.numpy(), qv.numpy())
    assert t2v_ranks(s, qv).tolist() == ranks.tolist()
    assert_metrics_equal(t2v_metrics(s, qv, chunk_size=5), exp)


@pytest.mark.parametrize("seed", [0, 1])
def test_v2t_random_float_matches_both_oracles(seed):
    qv = make_query_video(seed)
    s = float_scores(qv.numel(), 12, seed)
    _, c_m = oracle_v2t_count(s.numpy(), qv.numpy(), 12)
    a_m = oracle_v2t_argsort(s.numpy(), qv.numpy(), 12)
    assert_metrics_equal(c_m, a_m)  # the two oracles agree on tie-free scores
    assert_metrics_equal(v2t_metrics(s, qv, chunk_size=4), c_m)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("high", [2, 4])
def test_v2t_ties_match_count_oracle(seed, high):
    qv = make_query_video(seed)
    n_q = qv.numel()
    s = tied_scores(n_q, 12, seed, high)
    cap_ranks, exp = oracle_v2t_count(s.numpy(), qv.numpy(), 12)
    pos = s[torch.arange(n_q), qv]
    counts = v2t_rank_counts(s, torch.arange(n_q), qv, pos)
    assert (counts + 1).tolist() == cap_ranks.tolist()
    assert_metrics_equal(v2t_metrics(s, qv, chunk_size=3), exp)


def test_summarize_v2t_matches_oracle_ap_on_given_ranks():
    # summarize_v2t alone, with arbitrary (tied, unsorted) caption ranks
    g = np.random.default_rng(5)
    qv = make_query_video(5).numpy()
    ranks = g.integers(1, 9, size=qv.size)
    best, aps = {}, {}
    for l in range(12):
        rk = sorted(int(r) for r, v in zip(ranks, qv) if v == l)
        if rk:
            best[l] = rk[0]
            aps[l] = sum(i / r for i, r in enumerate(rk, start=1)) / len(rk)
    exp = _summary_from_ranks(list(best.values()), list(aps.values()))
    assert_metrics_equal(summarize_v2t(ranks, qv, 12), exp)
    assert_metrics_equal(summarize_v2t(torch.from_numpy(ranks), torch.from_numpy(qv), 12), exp)


# --------------------------------------------------------------------------- #
# chunking
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("tied", [False, True])
def test_chunked_equals_unchunked(tied):
    qv = make_query_video(3)
    n_q = qv.numel()
    s = tied_scores(n_q, 12, 3) if tied else float_scores(n_q, 12, 3)
    full_t2v = t2v_metrics(s, qv, chunk_size=n_q)
    full_v2t = v2t_metrics(s, qv, chunk_size=n_q)
    full_ranks = t2v_ranks(s, qv)
    pos = s[torch.arange(n_q), qv]
    full_counts = v2t_rank_counts(s, torch.arange(n_q), qv, pos)
    for cs in (1, 2, 7, n_q):
        assert t2v_metrics(s, qv, chunk_size=cs) == full_t2v
        assert v2t_metrics(s, qv, chunk_size=cs) == full_v2t
        # primitives, streamed by hand
        ranks = torch.cat([t2v_ranks(s[a:a + cs], qv[a:a + cs]) for a in range(0, n_q, cs)])
        assert torch.equal(ranks, full_ranks)
        counts = sum(
            v2t_rank_counts(s[a:a + cs], torch.arange(a, min(a + cs, n_q)), qv, pos)
            for a in range(0, n_q, cs)
        )
        assert torch.equal(counts, full_counts)


def test_chunk_order_irrelevant_for_v2t_counts():
    # chunks need not be contiguous: a permuted set of rows gives the same counts
    qv = make_query_video(4)
    n_q = qv.numel()
    s = tied_scores(n_q, 12, 4)
    pos = s[torch.arange(n_q), qv]
    perm = torch.randperm(n_q, generator=torch.Generator().manual_seed(0))
    a, b = perm[: n_q // 3], perm[n_q // 3:]
    got = v2t_rank_counts(s[a], a, qv, pos) + v2t_rank_counts(s[b], b, qv, pos)
    assert torch.equal(got, v2t_rank_counts(s, torch.arange(n_q), qv, pos))


# --------------------------------------------------------------------------- #
# pessimistic ties, exclusion by index
# --------------------------------------------------------------------------- #
def test_constant_scores_give_worst_rank():
    n_q, n_v = 6, 5
    qv = torch.tensor([0, 0, 1, 2, 3, 4])
    s = torch.full((n_q, n_v), 0.25)
    assert t2v_ranks(s, qv).tolist() == [n_v] * n_q
    m = t2v_metrics(s, qv)
    assert m["r1"] == 0.0 and m["medr"] == n_v and m["meanr"] == n_v
    assert m["map"] == pytest.approx(1 / n_v)
    pos = s[torch.arange(n_q), qv]
    assert (v2t_rank_counts(s, torch.arange(n_q), qv, pos) + 1).tolist() == [n_q] * n_q
    mv = v2t_metrics(s, qv)
    assert mv["r1"] == 0.0 and mv["medr"] == n_q and mv["meanr"] == n_q
    # v0 has two captions, both at rank 6: AP = (1/6 + 2/6)/2 = 1/4; others 1/6
    assert mv["map"] == pytest.approx((1 / 4 + 4 / 6) / 5)


def test_single_tie_counts_above():
    s = torch.tensor([[0.5, 0.5, 0.1]])
    assert t2v_ranks(s, torch.tensor([0])).tolist() == [2]
    assert t2v_ranks(s, torch.tensor([1])).tolist() == [2]
    assert t2v_ranks(s, torch.tensor([2])).tolist() == [3]


def test_explicit_pos_and_exclusion_by_index():
    s = torch.tensor([[0.3, 0.6, 0.9, 0.6]])
    gt = torch.tensor([1])
    assert t2v_ranks(s, gt).tolist() == [3]  # v2 and v3 (tie) above
    # pos below every score: all OTHER videos count, never the gt column itself
    assert t2v_ranks(s, gt, pos=torch.tensor([-1.0])).tolist() == [4]
    # pos above every score: rank 1
    assert t2v_ranks(s, gt, pos=torch.tensor([2.0])).tolist() == [1]


def test_nan_is_pessimistic():
    s = torch.tensor([[0.2, float("nan"), 0.1], [float("nan"), 0.5, 0.4]])
    assert t2v_ranks(s, torch.tensor([0, 0])).tolist() == [2, 3]


# --------------------------------------------------------------------------- #
# summaries
# --------------------------------------------------------------------------- #
def test_sumr_is_sum_of_unrounded_recalls():
    m = summarize_t2v(torch.tensor([1, 2, 200]))
    assert m["r1"] == 100.0 / 3 and m["r5"] == 200.0 / 3
    assert m["sumr"] == m["r1"] + m["r5"] + m["r10"] + m["r100"]
    assert round(m["sumr"], 1) == 233.3
    # the rounded recalls would add to 233.4
    assert round(sum(round(m[k], 1) for k in ("r1", "r5", "r10", "r100")), 1) == 233.4


def test_median_even_count_and_numpy_input():
    m = summarize_t2v(np.array([1, 2, 3, 10], dtype=np.int32))
    assert m["medr"] == 2.5 and m["meanr"] == 4.0
    assert m["r1"] == 25.0 and m["r5"] == 75.0 and m["r10"] == 100.0


def test_numpy_scores_accepted():
    qv = make_query_video(7)
    s = tied_scores(qv.numel(), 12, 7)
    assert t2v_metrics(s.numpy(), qv.numpy(), chunk_size=4) == t2v_metrics(s, qv)
    assert v2t_metrics(s.numpy(), qv.numpy(), chunk_size=4) == v2t_metrics(s, qv)


def test_bad_query_video_rejected():
    s = torch.rand(3, 4)
    with pytest.raises(ValueError):
        t2v_metrics(s, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError):
        v2t_metrics(s, torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        summarize_v2t(torch.tensor([1, 1]), torch.tensor([0, 5]), 3)


def test_format_table():
    rows = {
        "fused": {"r1": 12.345, "r5": 30.0, "r10": 41.26, "r100": 80.0, "sumr": 163.605},
        "inheritance": {"r1": 1.0, "r5": 2.0, "r10": 3.0, "r100": 100.0, "sumr": 106.0},
    }
    out = format_table(rows).splitlines()
    assert len(out) == 3
    assert out[0].split() == ["R@1", "R@5", "R@10", "R@100", "SumR"]
    assert out[1].split() == ["fused", "12.3", "30.0", "41.3", "80.0", "163.6"]
    assert out[2].split() == ["inheritance", "1.0", "2.0", "3.0", "100.0", "106.0"]
    assert len({len(line) for line in out}) == 1  # aligned
