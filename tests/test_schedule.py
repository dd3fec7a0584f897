import math

import pytest

from lottery.training.plan import LRSchedule


def test_step_schedule_drops_at_milestones():
    schedule = LRSchedule(0.1, 1000, milestones=(400, 600), gamma=0.1)
    assert schedule(0) == 0.1
    assert schedule(399) == 0.1
    assert schedule(400) == pytest.approx(0.01)
    assert schedule(600) == pytest.approx(0.001)


def test_warmup_is_linear_then_constant():
    schedule = LRSchedule(0.2, 100, warmup_steps=10, kind="constant")
    assert schedule(0) == pytest.approx(0.02)
    assert schedule(4) == pytest.approx(0.1)
    assert schedule(10) == 0.2


def test_cosine_reaches_zero_at_the_end():
    schedule = LRSchedule(1.0, 100, kind="cosine")
    assert schedule(0) == 1.0
    assert schedule(50) == pytest.approx(0.5)
    assert schedule(100) == pytest.approx(0.0, abs=1e-12)
    assert all(schedule(s) >= schedule(s + 1) for s in range(100))


def test_schedule_is_a_pure_function_of_the_step():
    schedule = LRSchedule(0.1, 500, milestones=(100,), warmup_steps=20)
    first = [schedule(s) for s in range(500)]
    resumed = [schedule(s) for s in range(250, 500)]
    assert first[250:] == resumed
    assert not any(math.isnan(v) for v in first)
