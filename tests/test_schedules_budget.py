"""Learning-rate schedules that follow a time budget (``progress=``, the share of the budget used)
instead of a step count, their saved state, and states saved before the budget existed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnnlab import optim
from rnnlab.errors import RnnlabError


def opt(lr=0.1):
    p = {"w": np.zeros(3)}
    return optim.SGD(p, {"w": np.zeros(3)}, lr=lr)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_cosine_follows_the_share_after_the_warm_up(share):
    s = optim.CosineWithWarmup(opt(), warmup_steps=10, total_steps=1000, min_lr=0.01)
    assert s.lr_at(5, share) == pytest.approx(0.05)  # warm-up counts steps, whatever the share
    assert s.lr_at(50, share) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * share)), rel=1e-15)


def test_step_and_exponential_spread_their_horizon_over_the_budget():
    step = optim.StepLR(opt(), step_size=100, gamma=0.5, horizon=300)
    assert [step.lr_at(1, p) for p in (0.0, 0.32, 0.34, 0.66, 0.67, 1.0)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125]
    exp = optim.ExponentialLR(opt(), gamma=0.99, horizon=200)
    assert exp.lr_at(7, 0.5) == pytest.approx(0.1 * 0.99 ** 100, rel=1e-15)
    assert exp.lr_at(7, None) == pytest.approx(0.1 * 0.99 ** 7, rel=1e-15)
    with pytest.raises(RnnlabError, match="horizon"):
        optim.ExponentialLR(opt(), gamma=0.99).lr_at(3, 0.5)


def test_constant_ignores_the_budget():
    s = optim.ConstantLR(opt(), factor=0.5, total_iters=3)
    assert [s.lr_at(k, 0.9) for k in (0, 2, 3)] == [0.05, 0.05, 0.1]


def test_step_with_progress_sets_the_rate_and_the_state_keeps_it():
    o = opt()
    s = optim.CosineWithWarmup(o, warmup_steps=0, total_steps=100, min_lr=0.0)
    s.step(0.25)
    assert o.lr == pytest.approx(s.lr_at(1, 0.25)) and s.progress == 0.25
    s.step(1.7)  # clipped to the budget
    assert s.progress == 1.0 and o.lr == pytest.approx(0.0, abs=1e-18)
    state = s.state_dict()
    o2 = opt()
    s2 = optim.CosineWithWarmup(o2, warmup_steps=0, total_steps=100, min_lr=0.0)
    s2.load_state_dict(state)
    assert (s2.last_step, s2.progress, o2.lr) == (2, 1.0, o.lr)
    assert s2.update(0.5) == o2.lr == pytest.approx(0.05)  # a new budget: the rate at its share
    assert s2.last_step == 2


def test_states_saved_before_budgets_load_unchanged():
    """A checkpoint written before ``progress`` and ``horizon`` existed resumes by steps."""
    old = {"type": "step", "base_lr": 0.1, "last_step": 7, "step_size": 3, "gamma": 0.5}
    o = opt()
    s = optim.StepLR(o, step_size=1, gamma=0.9)
    s.load_state_dict(old)
    assert (s.horizon, s.progress, s.step_size) == (0, None, 3)
    assert o.lr == pytest.approx(0.1 * 0.5 ** 2)
