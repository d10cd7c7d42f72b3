"""Tests of method/training/schedules.py: golden multipliers of the released code and the formulas of docs/method.md."""
import math

import numpy as np
import pytest

from method.training.schedules import (
    DECAY_WAY_NAMES,
    SCHEDULES,
    alpha_schedule,
    beta_schedule,
    kd_factor,
    resolve_schedule,
    warmup_linear,
)


@pytest.mark.parametrize("way", range(9))
def test_kd_factor_matches_golden_row(golden, way):
    row = golden["kd_multiplier_decay_way_0to8_epoch_0to60"][way]
    ours = np.array([kd_factor(e, way, scale=0.1, init=0.1) for e in range(61)])
    np.testing.assert_allclose(ours, row, rtol=1e-12, atol=0)


# Expected values written from the formulas of docs/method.md, "Distillation schedules" (scale 0.1, init 0.1).
EXPLICIT = {
    "fixed": lambda e: 0.1,
    "exp_decay": lambda e: 0.1 * 0.95 ** e,
    "linear_decay": lambda e: 0.1 * max(1 - 0.01 * e, 0.05),
    "sigmoid_decay": lambda e: 0.1 * 800 / (800 + math.exp(100 * e / 800)),
    "exp_rise": lambda e: 0.1 * (1 - 0.95 ** e) + 0.1,
    "linear_rise": lambda e: 0.1 * (1 - max(1 - 0.01 * e, 0.05)) + 0.1,
    "sigmoid_rise": lambda e: 0.1 * (1 - 800 / (800 + math.exp(100 * e / 800))) + 0.1,
    "capped_exp_growth": lambda e: 0.1 * min(0.001 * 1.05 ** e, 0.1),
    "capped_saturating": lambda e: 0.1 * max(min(0.1 * (1 - 0.95 ** e), 0.1), 0.001),
}


@pytest.mark.parametrize("name", list(EXPLICIT))
@pytest.mark.parametrize("epoch", [0, 20, 50, 99, 150])
def test_kd_factor_explicit_formula(name, epoch):
    assert kd_factor(epoch, name) == pytest.approx(EXPLICIT[name](epoch), rel=1e-12)


def test_kd_factor_spot_values():
    assert kd_factor(0, "exp_decay") == pytest.approx(0.1)
    assert kd_factor(20, "exp_decay") == pytest.approx(0.1 * 0.3584859224, rel=1e-9)
    assert kd_factor(50, "linear_decay") == pytest.approx(0.05)
    assert kd_factor(120, "linear_decay") == pytest.approx(0.005)  # floor 0.05 of w
    assert kd_factor(0, "exp_rise") == pytest.approx(0.1)  # init only
    assert kd_factor(0, "capped_exp_growth") == pytest.approx(1e-4)
    assert kd_factor(200, "capped_exp_growth") == pytest.approx(0.01)  # cap 0.1 of w
    assert kd_factor(0, "capped_saturating") == pytest.approx(1e-4)  # floor 0.001 of w


def test_scale_and_init_enter_only_where_released():
    for e in (0, 7, 33):
        for name in ("fixed", "exp_decay", "linear_decay", "sigmoid_decay", "capped_exp_growth", "capped_saturating"):
            expected = 10 * kd_factor(e, name, scale=0.1, init=0.0)
            assert kd_factor(e, name, scale=1.0, init=0.5) == pytest.approx(expected)
        for name in ("exp_rise", "linear_rise", "sigmoid_rise"):
            diff = kd_factor(e, name, scale=0.1, init=0.5) - kd_factor(e, name, scale=0.1, init=0.0)
            assert diff == pytest.approx(0.5)


def test_k_and_b_overrides():
    assert kd_factor(10, "exp_decay", k=0.9) == pytest.approx(0.1 * 0.9 ** 10)
    assert kd_factor(10, "linear_rise", k=-0.02, b=0.8) == pytest.approx(0.1 * (1 - 0.6) + 0.1)
    assert kd_factor(10, "sigmoid_decay", k=100) == pytest.approx(0.1 * 100 / (100 + math.exp(10)))
    with pytest.raises(ValueError):
        kd_factor(1, "fixed", k=0.9)
    with pytest.raises(ValueError):
        kd_factor(1, "exp_decay", b=1.0)


def test_none_is_zero():
    assert all(kd_factor(e, "none", scale=1.0, init=1.0) == 0.0 for e in range(100))


def test_resolve_schedule_names_and_integers():
    assert DECAY_WAY_NAMES == {0: "fixed", 1: "exp_decay", 2: "linear_decay", 3: "sigmoid_decay", 4: "exp_rise",
                               5: "linear_rise", 6: "sigmoid_rise", 7: "capped_exp_growth", 8: "capped_saturating"}
    for way, name in DECAY_WAY_NAMES.items():
        assert resolve_schedule(way) == name
        assert resolve_schedule(str(way)) == name
        assert resolve_schedule(name) == name
        assert kd_factor(13, way) == kd_factor(13, name) == kd_factor(13, str(way))
    assert resolve_schedule("none") == "none"
    assert set(SCHEDULES) == set(DECAY_WAY_NAMES.values()) | {"none"}
    for bad in (9, -1, "10", "exp", "Fixed"):
        with pytest.raises(ValueError):
            resolve_schedule(bad)


def test_warmup_linear_matches_golden_exactly(golden):
    ours = np.array([warmup_linear(s / 1000) for s in range(1000)])
    np.testing.assert_array_equal(ours, golden["lr_multiplier_T1000"])


def test_warmup_linear_formula():
    assert warmup_linear(0.0) == 0.0
    assert warmup_linear(0.005) == pytest.approx(0.5)
    assert warmup_linear(0.01) == pytest.approx(1.0)
    assert warmup_linear(0.5) == pytest.approx(0.5 / 0.99)
    assert warmup_linear(1.0) == 0.0
    assert warmup_linear(0.05, warmup=0.1) == pytest.approx(0.5)
    assert warmup_linear(0.55, warmup=0.1) == pytest.approx(0.5)


def test_dldkdpp_schedules_match_golden_exactly(dldkdpp_golden):
    """alpha / beta for every --alpha_decay / --belta_decay mode and the KL weight w(e) for every
    --distill_loss_decay (its 'None' and no option are w = 1: the ICCV 'fixed'), 120 epochs, bit for bit."""
    g = dldkdpp_golden
    epochs = g["sched_epochs"].tolist()
    assert epochs == list(range(120))
    modes = ("exp", "linear", "sigmoid", "cosine", "none")
    for row, mode in zip(g["sched_alpha_modes_exp_linear_sigmoid_cosine_None"], modes):
        assert [alpha_schedule(e, mode=mode, n_epoch=120) for e in epochs] == row.tolist(), mode
    for row, mode in zip(g["sched_belta_modes_exp_linear_sigmoid_cosine_None"], modes):
        assert [beta_schedule(e, mode=mode, n_epoch=120) for e in epochs] == row.tolist(), mode
    kl = ("exp_decay", "linear_decay", "sigmoid_decay", "fixed", "fixed")
    for row, name in zip(g["sched_klweight_modes_exp_linear_sigmoid_None_unset"], kl):
        np.testing.assert_array_equal([kd_factor(e, name, scale=1.0, init=0.0) for e in epochs], row, err_msg=name)
    assert [alpha_schedule(e) for e in epochs] == g["default_alpha"].tolist()
    assert [beta_schedule(e) for e in epochs] == g["default_belta"].tolist()
    np.testing.assert_allclose([kd_factor(e, "exp_decay") for e in epochs], g["default_kl_factor"], rtol=1e-15)
