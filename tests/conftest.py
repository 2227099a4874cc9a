"""Shared test set-up."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _plan_cache(tmp_path_factory):
    """``rnnlab train`` remembers its parallel plan per machine and model shape (rnnlab.lm.plan):
    the tests keep that cache in a directory of their own (shared by the whole session and the
    processes it starts), never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("rnnlab-cache")))
    yield
    mp.undo()
