"""Asynchronous successive halving (ASHA; Li et al. 2020, "A System for Massively Parallel
Hyperparameter Tuning"), the early-stopping rule of ``rnnlab sweep --early-stop``.

Rungs sit at ``r_k = grace * eta^k`` units of progress (training steps, or seconds of a
time-limited run) below ``max_t``. When a trial first reaches a rung it records its metric there
and goes on only if that value is within the best ``1/eta`` of all values recorded at that rung
so far (itself included)::

    cutoff_k = quantile(recorded_k, 1/eta)      (mode "min": lower is better)
    stop  <=>  value > cutoff_k

No trial waits for others (the rule is asynchronous), so the first trials at a rung always go
on; the later ones are compared with everything seen. The same rule with the same parameters is
Ray Tune's ``ASHAScheduler`` (used by the Ray backend).
"""
from __future__ import annotations

import math

import numpy as np


class ASHA:
    """``on_report(trial, t, value) -> bool`` (True: stop the trial)."""

    def __init__(self, grace: float, max_t: float, eta: float = 3.0, mode: str = "min") -> None:
        if not (grace > 0 and max_t > grace and eta > 1):
            raise ValueError(f"ASHA needs 0 < grace < max_t and eta > 1, got {grace}, {max_t}, {eta}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.grace, self.max_t, self.eta, self.mode = float(grace), float(max_t), float(eta), mode
        self.rungs = []
        r = self.grace
        while r < self.max_t:
            self.rungs.append(r)
            r *= self.eta
        self.recorded: dict[float, dict[str, float]] = {r: {} for r in self.rungs}

    def cutoff(self, rung: float) -> float | None:
        vals = [v for v in self.recorded[rung].values() if math.isfinite(v)]
        if not vals:
            return None
        q = 1.0 / self.eta if self.mode == "min" else 1.0 - 1.0 / self.eta
        return float(np.quantile(vals, q))

    def on_report(self, trial: str, t: float, value: float) -> bool:
        """Record ``value`` at the highest rung ``t`` has reached that this trial has not yet
        recorded; return True if it falls outside the best ``1/eta`` there. A non-finite value
        (a diverged trial) is always stopped."""
        if value is None or not math.isfinite(value):
            return True
        for rung in reversed(self.rungs):
            if t >= rung:
                if trial in self.recorded[rung]:
                    return False
                self.recorded[rung][trial] = float(value)
                c = self.cutoff(rung)
                return c is not None and (value > c if self.mode == "min" else value < c)
        return False
