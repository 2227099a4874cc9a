"""The local backend: trials on this machine's cores, one worker process per core, no extra install.

Each worker is a fresh process (``spawn``: no state inherited from the driver) that runs one
trial at a time with one BLAS thread (the trials are the parallelism), talking to the driver
over its own pipe::

    driver -> worker    ("run", trial, root, attempt)  |  ("go",) or ("stop",), the answer to
                        every report                   |  None (exit)
    worker -> driver    ("report", name, metrics)      |  ("ended", name, result dict)
                        ("crashed", name, message)     |  ("interrupted", name)

The driver waits on every pipe and every process's sentinel at once. A worker that dies in the
middle of a trial (killed, out of memory, a crash in native code) is replaced, and the trial is
run again from whatever its folder holds (its last checkpoint) — up to ``retries`` times, then
it is marked failed. Workers die with the driver (``PR_SET_PDEATHSIG`` on Linux; elsewhere they
notice the closed pipe), so killing the driver leaves no orphans that would later race a
resumed run. Trials whose folder already holds ``result.json`` are not run again.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import wait

from .spec import FAILED, Trial, TrialContext, TrialDir, TrialInterrupted, TrialResult, run_inline


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------ worker side
class _PipeContext(TrialContext):
    """Each report goes to the driver, which answers at once whether the trial goes on, so an
    early stop lands at the report that caused it."""

    conn = None

    def _send(self, metrics):
        try:
            self.conn.send(("report", self.tdir.path.name, metrics))
            verdict = self.conn.recv()
        except (EOFError, OSError):  # the driver is gone: end the trial cleanly
            raise TrialInterrupted("the driver went away") from None
        if verdict == ("stop",):
            self.request_stop()


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when the driver exits (a trial then saves its
    state and ends, as it does on Ctrl-C)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover
        pass


def _worker_main(conn, blas_threads: int, env: dict) -> None:
    _die_with_parent()
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's; it tells the workers
    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=blas_threads)  # noqa: F841 - held for the process's life
    except ImportError:  # pragma: no cover - a dependency of rnnlab
        pass
    import numpy as np

    np.seterr(over="ignore", invalid="ignore", divide="ignore")  # divergence is detected, not warned
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] != "run":
            continue
        _, trial, root, attempt = msg

        def ctx_factory(tdir, att):
            ctx = _PipeContext(tdir, att)
            ctx.conn = conn
            return ctx

        try:
            res = run_inline(trial, root, ctx_factory, attempt)
            conn.send(("ended", trial.name, res.to_dict()))
        except TrialInterrupted:
            try:
                conn.send(("interrupted", trial.name))
            except (OSError, EOFError):
                pass
            return
        except (EOFError, OSError, BrokenPipeError):
            return
        except BaseException as exc:  # a bug or a crash in the trial: the driver may retry it
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" at {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
            try:
                conn.send(("crashed", trial.name, f"{type(exc).__name__}: {exc}{where}"))
            except (OSError, EOFError):
                return


# ------------------------------------------------------------------------------------ driver side
@contextlib.contextmanager
def _main_not_imported():
    """Keep a spawned worker from importing the driver's ``__main__`` (a script, ``-c`` or stdin):
    trial functions are named by module path, so workers never need it, and a script without an
    ``if __name__ == "__main__"`` guard would otherwise run again in every worker."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if hasattr(main, k)}
    try:
        for k in saved:
            if k == "__spec__":
                main.__spec__ = None
            else:
                delattr(main, k)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class _Worker:
    def __init__(self, ctx, blas_threads: int, env: dict) -> None:
        self.conn, child = mp.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, blas_threads, env), daemon=True)
        with _main_not_imported():
            self.proc.start()
        child.close()
        self.job = None  # (trial, attempt) while busy

    def send(self, msg) -> bool:
        try:
            self.conn.send(msg)
            return True
        except (OSError, EOFError):
            return False


def _exit_reason(proc) -> str:
    code = proc.exitcode
    if code is None:
        return "the worker stopped answering"
    if code < 0:
        try:
            return f"the worker was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the worker was killed by signal {-code}"
    return f"the worker exited with status {code}"


def run_local(trials: list[Trial], root, *, workers: int = 0, retries: int = 2, on_report=None, on_end=None,
              blas_threads: int = 1, env: dict | None = None, poll: float = 0.5) -> list[TrialResult]:
    """Run ``trials`` (none of them ended yet) on ``workers`` processes; returns their results in
    the order given.

    ``on_report(name, metrics) -> bool`` is called for every report (True: ask that trial to
    stop early); ``on_end(result)`` when a trial ends. Ctrl-C (KeyboardInterrupt) tells every
    worker to save and stop, waits for them, and re-raises; the trials' folders hold their state.
    """
    if not trials:
        return []
    workers = max(1, min(workers or default_workers(), len(trials)))
    ctx = mp.get_context("spawn")
    env = dict(env or {})
    queue = [(t, 1) for t in trials]  # (trial, attempt), taken from the front
    done: dict[str, TrialResult] = {}
    pool: list[_Worker] = []
    t_start: dict[str, float] = {}

    def ended(res: TrialResult) -> None:
        done[res.name] = res
        if on_end is not None:
            on_end(res)

    def fail(trial: Trial, attempt: int, why: str) -> None:
        if attempt <= retries:
            queue.insert(0, (trial, attempt + 1))
            return
        res = TrialResult(trial.name, FAILED, {}, f"{why} (attempt {attempt} of {retries + 1})", attempt,
                          time.perf_counter() - t_start.get(trial.name, time.perf_counter()))
        TrialDir(root, trial.name).finish(res)
        ended(res)

    try:
        while queue or any(w.job for w in pool):
            pool = [w for w in pool if w.job or w.proc.is_alive()]
            while queue:  # hand out work; a worker that died is replaced
                idle = next((w for w in pool if w.job is None and w.proc.is_alive()), None)
                if idle is None:
                    if len(pool) >= workers:
                        break
                    idle = _Worker(ctx, blas_threads, env)
                    pool.append(idle)
                trial, attempt = queue.pop(0)
                t_start.setdefault(trial.name, time.perf_counter())
                idle.job = (trial, attempt)
                if not idle.send(("run", trial, str(root), attempt)):
                    idle.job = None
                    queue.insert(0, (trial, attempt))
                    idle.proc.kill()
                    idle.proc.join()
            busy = [w for w in pool if w.job]
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=poll)
            for w in busy:
                while w.job and _readable(w.conn):
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        break
                    trial, attempt = w.job
                    if msg[0] == "report":
                        stop = on_report is not None and on_report(msg[1], msg[2])
                        w.send(("stop",) if stop else ("go",))
                        continue
                    w.job = None
                    if msg[0] == "ended":
                        ended(TrialResult.from_dict(msg[2]))
                    elif msg[0] == "crashed":
                        fail(trial, attempt, f"crashed: {msg[2]}")
                    else:  # "interrupted"
                        fail(trial, attempt, "interrupted")
                if w.job and not w.proc.is_alive():  # died in the middle of a trial
                    w.proc.join()
                    trial, attempt = w.job
                    w.job = None
                    fail(trial, attempt, _exit_reason(w.proc))
    except KeyboardInterrupt:
        _stop_all(pool)
        raise
    finally:
        for w in pool:
            w.send(None)
        for w in pool:
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
    return [done[t.name] for t in trials if t.name in done]


def _readable(conn) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def _stop_all(pool, grace: float = 60.0) -> None:
    """SIGTERM every busy worker (its trial saves and ends) and wait for them."""
    for w in pool:
        if w.job and w.proc.is_alive():
            try:
                os.kill(w.proc.pid, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for w in pool:
        if w.job:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))


class _InlineContext(TrialContext):
    """A trial run in the driver's own process: reports go straight to the scheduler."""

    on_report = None

    def _send(self, metrics):
        if self.on_report is not None and self.on_report(self.tdir.path.name, metrics):
            self.request_stop()


def run_serial(trials: list[Trial], root, *, on_report=None, on_end=None) -> list[TrialResult]:
    """The same trials in this process, one after the other (no retries: a crash is raised)."""
    out = []
    for trial in trials:
        def ctx_factory(tdir, attempt):
            ctx = _InlineContext(tdir, attempt)
            ctx.on_report = on_report
            return ctx

        res = run_inline(trial, root, ctx_factory)
        if on_end is not None:
            on_end(res)
        out.append(res)
    return out
