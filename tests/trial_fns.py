"""Trial functions for the runner's tests (importable by the worker processes the tests spawn).

Each draws from its own seed only, so its result does not depend on where or when it runs.
"""
from __future__ import annotations

import os
import time

import numpy as np

from rnnlab.errors import RnnlabError


def noisy_quadratic(params, ctx):
    """Reports a decreasing loss for ``steps`` steps; the result is a seeded draw."""
    rng = np.random.default_rng(params["seed"])
    x = float(params["x"])
    for step in range(1, params.get("steps", 3) + 1):
        if ctx.report(step=step, loss=x * x / step):
            return {"value": float(rng.standard_normal()) + x, "steps": step}
        time.sleep(params.get("sleep", 0.0))
    return {"value": float(rng.standard_normal()) + x, "steps": params.get("steps", 3)}


def crash_first(params, ctx):
    """Dies (exit status 3, no cleanup) on its first ``crashes`` attempts, then succeeds."""
    marks = sorted(ctx.dir.glob("attempt-*"))
    if len(marks) < params["crashes"]:
        (ctx.dir / f"attempt-{len(marks)}").write_text("x")
        os._exit(3)
    return {"attempts_seen": len(marks) + 1, "pid": os.getpid()}


def user_error(params, ctx):
    raise RnnlabError("this configuration cannot work: lower --lr")


def bug(params, ctx):
    return {"value": 1 / 0}
