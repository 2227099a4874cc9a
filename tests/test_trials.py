"""The trial runner (rnnlab.trials): the local process backend, retries, early stopping, resume.

The worker processes are real (spawned) processes running the functions in tests/trial_fns.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnnlab.errors import RnnlabError
from rnnlab.trials import EarlyStop, Trial, run_trials
from rnnlab.trials.asha import ASHA
from rnnlab.trials.local import run_serial
from rnnlab.trials.spec import TrialDir


def quad_trials(n, steps=3, sleep=0.0):
    return [Trial(f"x={x}", "trial_fns:noisy_quadratic", {"x": x, "seed": 100 + x, "steps": steps, "sleep": sleep})
            for x in range(n)]


# ------------------------------------------------------------------------------------ ASHA
def test_asha_stops_what_falls_outside_the_best_third_at_each_rung():
    a = ASHA(grace=1, max_t=9, eta=3)
    assert a.rungs == [1, 3]
    # the first trials at a rung always go on; later ones are judged against all recorded values
    assert [a.on_report(f"t{i}", 1, v) for i, v in enumerate([5.0, 4.0, 3.0])] == [False, False, False]
    assert a.on_report("bad", 1, 4.5) is True  # worse than the 1/3 quantile of [5, 4, 3, 4.5] = 3.67
    assert a.on_report("good", 1, 1.0) is False
    assert a.on_report("good", 2, 100.0) is False  # between rungs: nothing to judge
    assert a.on_report("t2", 3, 2.0) is False  # first at rung 3
    assert a.on_report("t1", 3, 9.0) is True
    assert a.on_report("t1", 3, 0.0) is False  # already judged at this rung
    assert a.on_report("nan", 1, math.nan) is True  # a diverged trial
    assert ASHA(grace=1, max_t=9, eta=3, mode="max").on_report("x", 1, 1.0) is False


def test_asha_cutoff_is_ray_tunes():
    """The same rule as Ray Tune's ASHAScheduler (its bracket's cutoff on the same recorded values)."""
    bracket_mod = pytest.importorskip("ray.tune.schedulers.async_hyperband")
    rng = np.random.default_rng(0)
    vals = rng.uniform(0, 10, size=17)
    mine = ASHA(grace=1, max_t=9, eta=3, mode="min")
    for i, v in enumerate(vals):
        mine.recorded[1.0][f"t{i}"] = float(v)
    b = bracket_mod._Bracket(min_t=1, max_t=9, reduction_factor=3, s=0)
    recorded = {f"t{i}": -float(v) for i, v in enumerate(vals)}  # Ray negates a metric that is minimised
    assert mine.cutoff(1.0) == pytest.approx(-b.cutoff(recorded))


# ------------------------------------------------------------------------------------ local backend
def test_parallel_results_equal_serial(tmp_path):
    trials = quad_trials(5)
    par = run_trials(trials, tmp_path / "par", workers=2, progress=False, log=lambda s: None)
    ser = run_serial(trials, tmp_path / "ser")
    assert [r.status for r in par] == ["done"] * 5
    assert [r.result for r in par] == [r.result for r in ser]
    assert [r.name for r in par] == [t.name for t in trials]  # results in the order given
    assert len({r.result["value"] for r in par}) == 5
    reports = TrialDir(tmp_path / "par", "x=2").read_reports()
    assert [(r["step"], r["loss"]) for r in reports] == [(1, 4.0), (2, 2.0), (3, 4 / 3)]


def test_a_killed_worker_is_replaced_and_its_trial_retried(tmp_path):
    t = [Trial("once", "trial_fns:crash_first", {"crashes": 1}), Trial("twice", "trial_fns:crash_first", {"crashes": 2}),
         Trial("always", "trial_fns:crash_first", {"crashes": 99})]
    res = {r.name: r for r in run_trials(t, tmp_path, workers=2, retries=2, progress=False, log=lambda s: None)}
    assert (res["once"].status, res["once"].result["attempts_seen"], res["once"].attempts) == ("done", 2, 2)
    assert (res["twice"].status, res["twice"].attempts) == ("done", 3)
    assert res["always"].status == "failed" and res["always"].attempts == 3
    assert "exited with status 3" in res["always"].error and "attempt 3 of 3" in res["always"].error
    assert len(list((tmp_path / "always").glob("attempt-*"))) == 3  # ran exactly 1 + retries times


def test_user_errors_fail_at_once_and_bugs_are_retried(tmp_path):
    t = [Trial("user", "trial_fns:user_error", {}), Trial("bug", "trial_fns:bug", {})]
    res = {r.name: r for r in run_trials(t, tmp_path, workers=2, retries=1, progress=False, log=lambda s: None)}
    assert (res["user"].status, res["user"].attempts) == ("failed", 1)
    assert res["user"].error == "this configuration cannot work: lower --lr"
    assert (res["bug"].status, res["bug"].attempts) == ("failed", 2)
    assert "ZeroDivisionError" in res["bug"].error


def test_resume_skips_ended_trials_and_refuses_without_it(tmp_path):
    trials = quad_trials(3)
    first = run_trials(trials, tmp_path, workers=2, progress=False, log=lambda s: None)
    with pytest.raises(RnnlabError, match="--resume"):
        run_trials(trials, tmp_path, workers=2, progress=False, log=lambda s: None)
    seen = []
    again = run_trials(trials, tmp_path, workers=2, progress=False, resume=True, log=seen.append)
    assert [r.result for r in again] == [r.result for r in first]
    assert seen == []  # nothing ran
    other = [Trial("x=0", "trial_fns:noisy_quadratic", {"x": 0, "seed": 7})]
    with pytest.raises(RnnlabError, match="holds another trial"):
        run_trials(other, tmp_path, resume=True, progress=False)


def test_early_stopping_stops_the_trials_behind(tmp_path):
    es = EarlyStop(metric="loss", time_attr="step", grace=1, max_t=6, eta=3)
    # one worker: a fixed order, so every decision is known (rungs at steps 1 and 3)
    res = run_trials(quad_trials(4, steps=6), tmp_path / "one", workers=1, early_stop=es, progress=False,
                     log=lambda s: None)
    assert [(r.status, r.result["steps"]) for r in res] == [("done", 6)] + [("stopped", 1)] * 3
    # two workers: the order varies, but the best trial always finishes and the worst is cut at once
    res = run_trials(quad_trials(6, steps=6, sleep=0.02), tmp_path / "two", workers=2, early_stop=es,
                     progress=False, log=lambda s: None)
    status = {r.name: (r.status, r.result["steps"]) for r in res}
    assert status["x=0"] == ("done", 6) and status["x=5"] == ("stopped", 1)


def test_bad_trial_specs_are_refused():
    with pytest.raises(ValueError, match="folder name"):
        Trial("a/b", "trial_fns:bug", {})
    with pytest.raises(ValueError, match="importable"):
        Trial("a", "__main__:f", {})
    with pytest.raises(RnnlabError, match="backend"):
        run_trials(quad_trials(1), "unused", backend="spark")
    with pytest.raises(RnnlabError, match="--backend ray"):
        run_trials(quad_trials(1), "unused", address="127.0.0.1:6379")
