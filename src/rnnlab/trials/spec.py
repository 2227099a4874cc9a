"""What a trial is, where it lives on disk, and how it ends.

A *trial* is one independent unit of work — one training run of a sweep, one (task, model, lag,
seed) cell of an experiment — and the unit of randomness: everything it draws comes from its own
``params`` (seeds included), so its result does not depend on which worker runs it, in which
order, or whether it was interrupted and resumed.

::

    Trial(name, fn, params)       fn = "package.module:function", importable in a fresh process
    fn(params, ctx) -> dict       the trial's result (JSON-able); ctx is a TrialContext

Directory of a trial (``ROOT/<name>/``), the only place its state lives, so any backend can
resume any trial::

    trial.json     the spec (name, fn, params), written before the first attempt
    reports.jsonl  one line per ctx.report(...) (progress; early-stopping rungs are rebuilt from it)
    result.json    written once, atomically, when the trial has ended: status, result, error,
                   attempts, seconds
    ...            whatever the trial function keeps there (checkpoints, a run directory)

``status``: ``done`` (finished), ``stopped`` (ended early by the scheduler, with a result), or
``failed`` (its one-line error; a trial that raised :class:`~rnnlab.errors.RnnlabError`, or
that crashed or was killed more often than the retries allow).
"""
from __future__ import annotations

import importlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RnnlabError
from ..io import append_jsonl, atomic_write_json, read_json, read_jsonl

DONE, STOPPED, FAILED = "done", "stopped", "failed"
STATUSES = (DONE, STOPPED, FAILED)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]{0,199}$")


@dataclass(frozen=True)
class Trial:
    """One unit of work: ``fn(params, ctx)``; ``name`` is unique in its run and names its folder."""

    name: str
    fn: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        # params as JSON gives them back (tuples become lists), so a spec read from trial.json
        # compares equal to the one that wrote it
        object.__setattr__(self, "params", json.loads(json.dumps(self.params)))
        if not _NAME.match(self.name):
            raise ValueError(f"trial name {self.name!r}: letters, digits and . _ = + , - only (a folder name)")
        if ":" not in self.fn or self.fn.startswith("__main__"):
            raise ValueError(f"trial function {self.fn!r} must be 'package.module:function' in an importable module")

    def spec(self) -> dict:
        return {"name": self.name, "fn": self.fn, "params": self.params}


@dataclass
class TrialResult:
    """How a trial ended (``status`` in :data:`STATUSES`) and what it returned."""

    name: str
    status: str
    result: dict = field(default_factory=dict)
    error: str = ""
    attempts: int = 1
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "result": self.result, "error": self.error,
                "attempts": self.attempts, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrialResult":
        return cls(d["name"], d["status"], d.get("result") or {}, d.get("error") or "", int(d.get("attempts", 1)),
                   float(d.get("seconds", 0.0)))


def resolve(fn: str):
    """The callable named ``"package.module:function"``."""
    mod, _, attr = fn.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class TrialDir:
    """The files of one trial under ``root / name``."""

    def __init__(self, root, name: str) -> None:
        self.path = Path(root) / name
        self.spec = self.path / "trial.json"
        self.reports = self.path / "reports.jsonl"
        self.result = self.path / "result.json"

    def prepare(self, trial: Trial) -> None:
        """Create the folder and write ``trial.json``; a folder holding another trial is refused."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.spec.exists():
            old = read_json(self.spec, "trial spec")
            if old != trial.spec():
                diff = sorted(k for k in set(old.get("params", {})) | set(trial.params)
                              if old.get("params", {}).get(k) != trial.params.get(k))
                raise RnnlabError(f"{self.path} holds another trial (its {', '.join(diff) or 'function'} differ); "
                                  "use another output folder, or start over without --resume")
        else:
            atomic_write_json(self.spec, trial.spec())

    def ended(self) -> TrialResult | None:
        """The stored result of a trial that has ended, else ``None``."""
        if not self.result.is_file():
            return None
        d = read_json(self.result, "trial result")
        if not isinstance(d, dict) or d.get("status") not in STATUSES:
            raise RnnlabError(f"{self.result} is not a trial result; delete that trial's folder to run it again")
        return TrialResult.from_dict(d)

    def finish(self, res: TrialResult) -> None:
        atomic_write_json(self.result, res.to_dict())

    def report(self, metrics: dict) -> None:
        append_jsonl(self.reports, {"wall": round(time.time(), 3), **metrics})

    def read_reports(self) -> list:
        return read_jsonl(self.reports, "trial reports") if self.reports.is_file() else []


class TrialContext:
    """What a trial function gets besides its params: its folder, ``report``, ``should_stop``.

    ``report(**metrics)`` records progress (a line in ``reports.jsonl``) and hands it to the
    runner, which may ask the trial to stop early; it returns ``should_stop()``. A trial that is
    asked to stop ends cleanly (saves what it needs) and returns its result; the runner marks it
    ``stopped``. The base class runs a trial alone (no scheduler): nothing ever asks it to stop.
    """

    def __init__(self, tdir: TrialDir, attempt: int = 1) -> None:
        self.tdir = tdir
        self.dir = tdir.path
        self.attempt = attempt
        self._stop = False

    def report(self, **metrics) -> bool:
        self.tdir.report(metrics)
        self._send(metrics)
        return self.should_stop()

    def should_stop(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        self._stop = True

    def _send(self, metrics: dict) -> None:  # the runner's channel (none when run alone)
        pass


class TrialInterrupted(Exception):
    """Raised by a trial function that was told to end by a signal before it finished (its
    state is saved in its folder): the trial is neither done nor failed, and runs again later."""


def run_inline(trial: Trial, root, ctx_factory=TrialContext, attempt: int = 1) -> TrialResult:
    """Run ``trial`` in this process and store its result (the body of every backend's worker).

    :class:`RnnlabError` ends the trial as ``failed`` with its message (retrying cannot help);
    :class:`TrialInterrupted` and any other exception propagate (the runner decides whether to
    retry).
    """
    tdir = TrialDir(root, trial.name)
    tdir.prepare(trial)
    ctx = ctx_factory(tdir, attempt)
    t0 = time.perf_counter()
    try:
        out = resolve(trial.fn)(dict(trial.params), ctx)
        res = TrialResult(trial.name, STOPPED if ctx.should_stop() else DONE, dict(out or {}), "", attempt)
    except RnnlabError as exc:
        res = TrialResult(trial.name, FAILED, {}, " ".join(str(exc).split()), attempt)
    res.seconds = time.perf_counter() - t0
    tdir.finish(res)
    return res
