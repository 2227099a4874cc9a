"""Settings for the whole test session."""
from __future__ import annotations

import os

import pytest

# Ray (the sweep tests' backend) listens on loopback only: by default a Linux Ray node binds to the
# machine's own network address, and these tests must not send traffic anywhere but 127.0.0.1.
# Set before any test imports ray (the setting is read when ray is imported); the subprocesses
# the tests start (`ray start`, `python -m rnnlab`) inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(autouse=True, scope="session")
def _plan_cache(tmp_path_factory):
    """``rnnlab train`` remembers its parallel plan per machine and model shape (rnnlab.lm.plan):
    the tests keep that cache in a directory of their own (shared by the whole session and the
    processes it starts), never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("rnnlab-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _quiet_so_far():
    """Each test starts as a fresh process would: no busy machine seen yet (rnnlab.lm.plan does
    not remember what a process timed after it found the machine busy)."""
    from rnnlab.lm import plan

    plan._BUSY_SEEN = False
    yield
