"""What every experiment shares: seeding, the result record, BLAS threads, progress bars."""
from __future__ import annotations

import contextlib
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RnnlabError


def rng_for(seed: int, *keys) -> np.random.Generator:
    """A generator determined by ``seed`` and string/int ``keys`` (e.g. task, model, purpose), so
    that every run draws its own independent stream and adding a model changes no other run."""
    words = [int(seed)] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


def check_seeds(seeds: int) -> int:
    if int(seeds) < 1:
        raise RnnlabError(f"--seeds must be at least 1, got {seeds}")
    return int(seeds)


@dataclass
class Result:
    """What ``run`` returns: the written files, the report (tables as row dicts), raw data for
    tests and plots, and the wall time in seconds."""

    name: str
    paths: dict
    tables: dict
    data: dict = field(default_factory=dict)
    seconds: float = 0.0


@contextlib.contextmanager
def single_blas_thread():
    """Limit BLAS to one thread while an experiment runs.

    The matrices here are tiny ((32, 128) and the like); on a shared machine a multi-threaded
    BLAS spends most of its time synchronising threads (measured 4-10x slower on 2 busy cores).
    Uses ``threadpoolctl`` when installed, and does nothing otherwise.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def progress(total: int, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", leave=False, disable=None, file=sys.stderr)


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def out_path(out_dir) -> Path:
    p = Path(out_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RnnlabError(f"cannot create output folder {str(p)!r}: {exc.strerror}") from None
    return p


# ------------------------------------------------------------------------------------ cells as trials
CELL_FN = "rnnlab.experiments.common:run_cell"


def run_cell(params: dict, ctx) -> dict:
    """The trial function of every experiment's cells: ``module.cell(params["cell"])``, where
    ``module`` is ``rnnlab.experiments.<params["experiment"]>``. A cell is a pure function of
    its parameters (its seeds included), so it gives the same result in any worker."""
    import importlib

    module = importlib.import_module(f"{__package__}.{params['experiment']}")
    return module.cell(params["cell"])


def run_cells(name: str, cells: dict, out_dir: Path, *, workers: int = 0, backend: str = "local", address=None,
              resume: bool = False, progress: bool = True) -> dict:
    """Run ``{cell name: cell params}`` of experiment ``name`` on :mod:`rnnlab.trials` (in
    parallel, resumable); returns ``{cell name: result}``.

    The cells' folders are ``out_dir/<name>-trials/``; a run without ``resume`` replaces them,
    as it replaces ``<name>.md``. A cell that fails ends the experiment with its message.
    """
    from ..trials import Trial

    trials = [Trial(key, CELL_FN, {"experiment": name, "cell": p}) for key, p in cells.items()]
    results = run_experiment_trials(name, trials, out_dir, workers=workers, backend=backend, address=address,
                                    resume=resume, progress=progress)
    return {r.name: r.result for r in results}


def run_experiment_trials(name: str, trials: list, out_dir, workers: int = 0, backend: str = "local",
                          address=None, resume: bool = False, progress: bool = True) -> list:
    """Run experiment ``name``'s ``trials`` in ``out_dir/<name>-trials/`` (replaced unless
    ``resume``, as the run replaces ``<name>.md``); returns their results in order. A trial that
    failed ends the experiment with its message."""
    import shutil

    from ..trials import run_trials

    root = Path(out_dir) / f"{name}-trials"
    if not resume and root.exists():
        shutil.rmtree(root)
    results = run_trials(trials, root, workers=workers, backend=backend, address=address, resume=resume,
                         progress=progress, desc=name)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RnnlabError(f"{len(failed)} {name} trial(s) failed, e.g. {failed[0].name}: {failed[0].error}; fix the "
                          f"cause and continue with --resume (their folders are in {root})")
    return results
