"""Loss-weight schedules (manytask/weighting.py): values at their key epochs, bounds, sum, errors."""
from __future__ import annotations

import math

import pytest

from manytask.weighting import SCHEDULES, Schedule


def test_stairs_switches_at_t1():
    s = Schedule("stairs", epochs=300, t1=100)
    assert s(0) == (0.0, 1.0)
    assert s(99) == (0.0, 1.0)
    assert s(99.5) == (0.0, 1.0)
    assert s(100) == (1.0, 0.0)
    assert s(299) == (1.0, 0.0)


def test_lin_goes_from_0_at_the_first_epoch_to_1_at_the_last():
    s = Schedule("lin", epochs=11)
    assert s.main(0) == 0.0
    assert s.main(5) == pytest.approx(0.5)
    assert s.main(10) == 1.0
    assert s.main(3) == pytest.approx(0.3)


def test_lin_t1_is_linear_until_t1_then_saturated():
    s = Schedule("lin_t1", epochs=300, t1=100)
    assert s.main(0) == 0.0
    assert s.main(25) == pytest.approx(0.25)
    assert s.main(100) == 1.0
    assert s(250) == (1.0, 0.0)


def test_exp_aux_weight_is_exp_minus_t_over_sigma():
    s = Schedule("exp", epochs=300, sigma=40)
    assert s(0) == (0.0, 1.0)
    assert s(40)[1] == pytest.approx(math.exp(-1))
    assert s(80)[1] == pytest.approx(math.exp(-2))
    assert s(299)[0] > 0.999


def test_constant():
    assert Schedule("constant", value=0.3)(17) == pytest.approx((0.3, 0.7))
    assert Schedule("constant", value=1.0)(0) == (1.0, 0.0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_bounds_sum_and_monotone(name):
    s = Schedule(name, epochs=50, t1=12, sigma=7, value=0.4)
    prev = -1.0
    for i in range(0, 200):
        t = i / 4  # fractional epochs too, up to 50
        lam_s, lam_r = s(t)
        assert 0.0 <= lam_s <= 1.0 and 0.0 <= lam_r <= 1.0
        assert lam_s + lam_r == pytest.approx(1.0, abs=1e-12)
        assert lam_s >= prev - 1e-12, f"{name}: lambda_s decreased at t={t}"  # the main task only gains weight
        prev = lam_s


def test_every_evolving_schedule_starts_on_reconstruction_and_ends_on_the_main_task():
    for name in ("stairs", "lin", "lin_t1", "exp"):
        s = Schedule(name, epochs=500, t1=100, sigma=40)
        assert s(0) == (0.0, 1.0), name
        assert s(499)[0] > 0.99, name


def test_task_weights_and_labels():
    s = Schedule("lin_t1", epochs=10, t1=4)
    assert s.task_weights(2, ["digits"], ["rec1", "rec2"]) == pytest.approx({"digits": 0.5, "rec1": 0.5, "rec2": 0.5})
    assert s.task_weights(5, ["a"], ["b"]) == {"a": 1.0, "b": 0.0}
    assert [Schedule(n, t1=100, sigma=40).label for n in ("stairs", "lin_t1", "lin", "exp")] == \
        ["stairs_100", "lin_100", "lin", "exp_40"]


@pytest.mark.parametrize("kw,needle", [({"name": "cosine"}, "unknown schedule"), ({"sigma": 0}, "sigma"),
                                       ({"t1": -1}, "t1"), ({"epochs": 0}, "epochs"), ({"value": 1.5}, "value")])
def test_bad_schedules_are_value_errors(kw, needle):
    """Library errors: the settings users write are checked where they are declared (the method's and the
    schedules experiment's configs, tested with them)."""
    with pytest.raises(ValueError, match=needle):
        Schedule(**kw)


def test_negative_epoch_is_an_error():
    with pytest.raises(ValueError):
        Schedule("exp").main(-1)
