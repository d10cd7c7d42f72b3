"""Moment estimation and IoU metrics (method/analysis/moments.py) and the moments file (method/analysis/moment_file.py)."""
import math

import numpy as np
import pytest
import torch

from method.analysis.moments import estimate_moments, interval_iou, moment_metrics, random_span_iou
from method.data import DataError
from method.data.moment_file import check_known, moment_fractions, read_moments, write_moments


def loop_estimate(curve, n, threshold):
    """Oracle of the moment rule on one curve of n valid frames: walk out from the peak."""
    c = [float(x) for x in curve[:n]]
    peak = max(range(n), key=lambda i: (c[i], -i))  # first maximum, like argmax
    median = sorted(c)[(n - 1) // 2]  # torch's nanmedian: the lower middle of an even count
    tau = median + threshold * (c[peak] - median)
    start = peak
    while start > 0 and c[start - 1] >= tau:
        start -= 1
    end = peak + 1
    while end < n and c[end] >= tau:
        end += 1
    return start, end, peak


def loop_iou(a, b, c, d):
    inter = max(0.0, min(b, d) - max(a, c))
    return inter / ((b - a) + (d - c) - inter)


def test_estimate_matches_loop_oracle():
    g = torch.Generator().manual_seed(0)
    p, length = 200, 40
    curves = torch.randn(p, length, generator=g).cumsum(1)  # smooth-ish random walks with real runs
    n = torch.randint(1, length + 1, (p,), generator=g)
    mask = (torch.arange(length)[None] < n[:, None]).float()
    curves = torch.where(mask > 0, curves, torch.full_like(curves, 99.0))  # padding must never count
    for threshold in (0.0, 0.5, 0.9):
        start, end, peak = estimate_moments(curves, mask, threshold)
        for i in range(p):
            assert (int(start[i]), int(end[i]), int(peak[i])) == loop_estimate(curves[i], int(n[i]), threshold), i


def test_estimate_recovers_a_bump_and_edge_cases():
    curve = torch.full((1, 20), 0.1)
    curve[0, 6:11] = torch.tensor([0.5, 0.8, 0.9, 0.7, 0.6])
    start, end, peak = estimate_moments(curve, torch.ones(1, 20))
    assert (int(start), int(end), int(peak)) == (6, 11, 8)
    # a peak on the first / last valid frame, a constant curve (the whole video), a single frame
    curves = torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0], [0.3, 0.3, 0.3, 0.3], [0.5, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]]).float()
    start, end, _ = estimate_moments(curves, mask)
    assert start.tolist() == [0, 3, 0, 0] and end.tolist() == [2, 4, 3, 1]
    with pytest.raises(ValueError, match="valid frame"):
        estimate_moments(curves, torch.zeros_like(mask))


def test_interval_iou_and_metrics():
    a = torch.tensor([0.0, 0.0, 0.2, 0.0])
    b = torch.tensor([0.5, 0.5, 0.4, 1.0])
    c = torch.tensor([0.0, 0.25, 0.5, 0.25])
    d = torch.tensor([0.5, 0.75, 0.9, 0.5])
    iou = interval_iou(a, b, c, d)
    assert iou.tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.25])
    assert interval_iou(c, d, a, b).tolist() == pytest.approx(iou.tolist())
    m = moment_metrics(torch.tensor([1.0, 0.4, 0.6, 0.1]))
    assert m == pytest.approx({"miou": 52.5, "r1_iou0.3": 75.0, "r1_iou0.5": 50.0, "r1_iou0.7": 25.0, "n": 4})
    with pytest.raises(ValueError):
        moment_metrics(torch.zeros(0))


def test_random_span_iou_is_the_mean_over_placements():
    rng = np.random.default_rng(1)
    n = torch.from_numpy(rng.integers(1, 30, 50))
    length = torch.from_numpy(rng.integers(1, 30, 50)).minimum(n)
    gs = torch.from_numpy(rng.uniform(0, 0.8, 50))
    ge = gs + torch.from_numpy(rng.uniform(0.01, 0.2, 50))
    got = random_span_iou(length, n, gs, ge)
    for i in range(50):
        ni, li = int(n[i]), int(length[i])
        oracle = np.mean([loop_iou(a / ni, (a + li) / ni, float(gs[i]), float(ge[i])) for a in range(ni - li + 1)])
        assert float(got[i]) == pytest.approx(oracle, abs=1e-12), i


# --------------------------------------------------------------------------- moments file


def test_moments_file_round_trip_and_units(tmp_path):
    path = str(tmp_path / "m.txt")
    write_moments(path, {"v1#enc#0": (2, 5), "v2#enc#0": (1.5, 3.0, 6.0)}, "test")
    moments = read_moments(path)
    assert (moments["v1#enc#0"].start, moments["v1#enc#0"].end, moments["v1#enc#0"].duration) == (2, 5, None)
    assert moments["v2#enc#0"].duration == 6.0
    check_known(moments, ["v1#enc#0", "v2#enc#0", "v3#enc#0"], path)
    start, end, known = moment_fractions(moments, ["v1#enc#0", "v3#enc#0", "v2#enc#0"], np.array([10, 8, 99]), path)
    assert known.tolist() == [True, False, True]
    assert start[0] == pytest.approx(0.2) and end[0] == pytest.approx(0.5)  # frames / stored frames
    assert start[2] == pytest.approx(0.25) and end[2] == pytest.approx(0.5)  # seconds / duration
    assert math.isnan(start[1]) and math.isnan(end[1])


@pytest.mark.parametrize("body, message", [
    ("v1#enc#0 1\n", "line 1: expected"),
    ("v1#enc#0 a 2\n", "must be numbers"),
    ("v1#enc#0 3 2\n", "0 <= start < end"),
    ("v1#enc#0 1 8 5\n", "beyond the video's duration"),
    ("# comment\nv1#enc#0 1 2\nv1#enc#0 2 3\n", "line 3: caption 'v1#enc#0' already has a moment (line 2)"),
])
def test_moments_file_errors_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.txt"
    path.write_text(body)
    with pytest.raises(DataError, match=str(path)) as e:
        read_moments(str(path))
    assert message in str(e.value)


def test_moments_file_unknown_caption_and_frames_beyond_video(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("v1#enc#0 0 4\nghost#enc#0 1 2\n")
    moments = read_moments(str(path))
    with pytest.raises(DataError, match=r"1 of 2 cap_ids are no caption.*'ghost#enc#0' \(line 2\)"):
        check_known(moments, ["v1#enc#0"], str(path))
    with pytest.raises(DataError, match="line 1: moment of 'v1#enc#0' ends at frame 4, but its video has 3 frames"):
        moment_fractions(moments, ["v1#enc#0"], np.array([3]), str(path))
    with pytest.raises(DataError, match="not found"):
        read_moments(str(tmp_path / "absent.txt"))
