"""Run many independent trials — a sweep's training runs, an experiment's cells — on every local
core, or on a Ray cluster, and resume them after any interruption.

::

    results = run_trials(trials, root, workers=0, backend="local", resume=False,
                         early_stop=None, retries=2)

- ``backend="local"`` (default): worker processes on this machine, one per core, one BLAS
  thread each (:mod:`.local`); nothing to install or start. ``workers=1`` runs the same trials
  one after the other.
- ``backend="ray"``: Ray Tune (:mod:`.ray_backend`, ``pip install "rnnlab[ray]"``): a local Ray
  instance sized to the machine, or the cluster at ``address`` / ``RAY_ADDRESS``.

Every trial's state lives in its own folder under ``root`` (:mod:`.spec`), whichever backend ran
it, so a run interrupted anywhere — Ctrl-C, ``kill -9`` of the driver, a reboot — continues with
``resume=True``: ended trials are not run again, unfinished ones continue from what their folder
holds. A trial is the unit of randomness, so the results do not depend on the backend, the
number of workers or the order in which trials ran.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import RnnlabError
from .asha import ASHA
from .spec import DONE, FAILED, STOPPED, Trial, TrialContext, TrialDir, TrialInterrupted, TrialResult

BACKENDS = ("local", "ray")


@dataclass
class EarlyStop:
    """ASHA over the reports' ``metric`` against their progress ``time_attr`` (see :mod:`.asha`)."""

    metric: str
    time_attr: str
    grace: float
    max_t: float
    eta: float = 3.0
    mode: str = "min"

    def scheduler(self) -> ASHA:
        return ASHA(self.grace, self.max_t, self.eta, self.mode)


def check_backend(backend: str, address: str | None = None) -> None:
    """Fail early, in one line, on a backend that cannot run here."""
    if backend not in BACKENDS:
        raise RnnlabError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if address and backend != "ray":
        raise RnnlabError("--address names a Ray cluster: add --backend ray")
    if backend == "ray":
        from .ray_backend import require_ray

        require_ray()


def run_trials(trials: list[Trial], root, *, workers: int = 0, backend: str = "local", address: str | None = None,
               resume: bool = False, early_stop: EarlyStop | None = None, retries: int = 2, progress: bool = True,
               desc: str = "trials", log=None) -> list[TrialResult]:
    """Run every trial that has not ended yet; returns the results of all ``trials`` in order.

    Without ``resume`` the folders under ``root`` must not hold ended trials (the caller decides
    whether to clear them). ``log(line)`` gets one line per ended trial (default: stderr when it
    is not a terminal, where the progress bar is not drawn).
    """
    check_backend(backend, address)
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ValueError("trial names must be unique")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ended: dict[str, TrialResult] = {}
    todo: list[Trial] = []
    for t in trials:
        tdir = TrialDir(root, t.name)
        tdir.prepare(t)
        old = tdir.ended()
        if old is not None and not resume:
            raise RnnlabError(f"{tdir.path} already holds an ended trial: continue with --resume, or start over "
                              "in an empty folder")
        if old is not None:
            ended[t.name] = old
        else:
            todo.append(t)
    scheduler = early_stop.scheduler() if early_stop is not None else None
    if scheduler is not None:  # rebuild the rungs from what the trials reported before
        for t in trials:
            for rep in TrialDir(root, t.name).read_reports():
                _asha_report(scheduler, early_stop, t.name, rep)

    bar = _bar(progress, len(trials), len(ended), desc)
    log = log if log is not None else (_stderr_line if bar is None or bar.disable else None)
    t0 = time.perf_counter()

    def on_report(name, metrics):
        if scheduler is None:
            return False
        return _asha_report(scheduler, early_stop, name, metrics)

    def on_end(res: TrialResult):
        ended[res.name] = res
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{res.name}: {res.status}", refresh=True)
        if log is not None:
            log(f"[{len(ended)}/{len(trials)}, {time.perf_counter() - t0:.0f} s] {res.name}: {res.status}"
                + (f" ({res.error})" if res.error else ""))

    try:
        if not todo:
            pass
        elif backend == "ray":
            from .ray_backend import run_ray

            run_ray(todo, root, workers=workers, address=address, retries=retries, early_stop=early_stop,
                    on_end=on_end)
        else:
            from .local import run_local

            run_local(todo, root, workers=workers, retries=retries, on_report=on_report, on_end=on_end)
    finally:
        if bar is not None:
            bar.close()
    out = []
    for t in trials:  # a backend that lost track of a trial: its folder is the truth
        res = ended.get(t.name) or TrialDir(root, t.name).ended()
        if res is None:
            res = TrialResult(t.name, FAILED, {}, "the trial did not end (its backend lost track of it); run the "
                              "same command again with --resume", 0)
        out.append(res)
    return out


def _asha_report(scheduler: ASHA, es: EarlyStop, name: str, metrics: dict) -> bool:
    t, v = metrics.get(es.time_attr), metrics.get(es.metric)
    if t is None or v is None:
        return False
    return scheduler.on_report(name, float(t), float(v))


def _bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="trial", disable=None, file=sys.stderr,
                dynamic_ncols=True)


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


__all__ = ["Trial", "TrialResult", "TrialContext", "TrialInterrupted", "EarlyStop", "run_trials", "check_backend",
           "BACKENDS", "DONE", "STOPPED", "FAILED"]
