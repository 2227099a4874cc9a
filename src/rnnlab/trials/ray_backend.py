"""The Ray backend: the same trials as Ray Tune trials, on a local Ray instance or a cluster.

An adapter at the edge: nothing else in rnnlab imports Ray. Each Tune trial runs the trial's own
function through :func:`~rnnlab.trials.spec.run_inline`, so it reads and writes the same trial
folder as the local backend; that folder (not Ray's experiment state) is what a resumed run
continues from, so a sweep started on one backend can be resumed on the other. What Ray adds:

- placement over the cluster's CPUs (one CPU per trial) and ``FailureConfig(max_failures=retries)``
  — a trial whose worker dies is started again, and continues from its folder's checkpoint;
- ``--early-stop``: Ray Tune's ``ASHAScheduler`` with the same rungs as the local rule
  (:mod:`.asha`); a trial it stops is recorded as ``stopped`` with its last report;
- ``address`` (or ``RAY_ADDRESS``) joins an existing cluster (``ray start --head`` on one machine,
  ``ray start --address=HEAD:6379`` on the others); without it a local instance is started on
  127.0.0.1 and shut down again. On a cluster of several machines the trials' root folder must be on storage
  every machine sees (Ray >= 2.7 does not copy trial folders to the head node).
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from ..errors import RnnlabError
from .spec import STOPPED, Trial, TrialContext, TrialDir, TrialResult, run_inline

INSTALL = 'pip install "rnnlab[ray]"'


def require_ray(local: bool = False):
    """The ``ray`` module with Tune, or a one-line error that says how to install it.

    ``local``: a local instance will be started, which should listen on loopback only (Ray binds a
    Linux node to the machine's network address unless told otherwise, read at import).
    """
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise RnnlabError(f"--backend ray needs Ray Tune, which is not installed: {INSTALL}") from None
    return ray


class _RayContext(TrialContext):
    """Reports go to Tune too (numbers only); Tune's scheduler stops a trial by itself."""

    def _send(self, metrics):
        from ray import tune

        tune.report({k: v for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})


def _trainable(config: dict) -> None:
    trial = Trial(**config["trial"])
    run_inline(trial, config["root"], _RayContext)


def _connect(ray, address: str | None, workers: int) -> bool:
    """Join ``address`` / ``RAY_ADDRESS``, or start a local instance; True if we started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            _check_listening(address)  # Ray itself retries a dead address for many minutes
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=workers or None, **kw)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError, OSError, SystemExit,
            ray.exceptions.RayError) as exc:  # RayError: e.g. AuthenticationError, token auth without a token
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = ("check the address (ray start --head prints it); if the cluster uses token authentication, set "
                "RAY_AUTH_MODE=token and give its token (the head's ~/.ray/auth_token copied here, or "
                "RAY_AUTH_TOKEN); or drop --address to start a local instance") if address else \
            "see Ray's own messages above"
        raise RnnlabError(f"cannot reach {where}: {' '.join(str(exc).split())[:300]}; {hint}") from None
    return True


def _check_listening(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless something accepts TCP connections at ``host:port``
    (``auto`` and ``ray://`` addresses are left to Ray)."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


def run_ray(trials: list[Trial], root, *, workers: int = 0, address: str | None = None, retries: int = 2,
            early_stop=None, on_end=None) -> list[TrialResult]:
    """Run ``trials`` as Ray Tune trials; returns what each trial folder holds afterwards."""
    ray = require_ray(local=not (address or os.environ.get("RAY_ADDRESS")))
    from ray import tune

    root = Path(root).resolve()
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # not every report carries the metric
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = _connect(ray, address, workers)
    by_name = {t.name: t for t in trials}
    done: dict[str, TrialResult] = {}

    def finish(name: str) -> None:
        if name in done:
            return
        tdir = TrialDir(root, name)
        res = tdir.ended()
        if res is None:  # stopped by the scheduler before the function could end: its last report
            reports = tdir.read_reports()
            last = {k: v for k, v in (reports[-1] if reports else {}).items() if k != "wall"}
            res = TrialResult(name, STOPPED, last, "", 1)
            tdir.finish(res)
        done[name] = res
        if on_end is not None:
            on_end(res)

    class _Ended(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            finish(trial.config["trial"]["name"])

    scheduler = None
    if early_stop is not None:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr=early_stop.time_attr, metric=early_stop.metric, mode=early_stop.mode,
                                  max_t=early_stop.max_t, grace_period=early_stop.grace,
                                  reduction_factor=early_stop.eta, stop_last_trials=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": 1}),
            param_space={"trial": tune.grid_search([t.spec() for t in trials]), "root": str(root)},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=workers or None),
            run_config=tune.RunConfig(name="ray", storage_path=str(root / ".ray"), verbose=0, callbacks=[_Ended()],
                                      failure_config=tune.FailureConfig(max_failures=retries)),
        )
        grid = tuner.fit()
        for r in grid:
            name = r.config["trial"]["name"]
            if name in done:
                continue
            if TrialDir(root, name).ended() is None and r.error is not None:
                res = TrialResult(name, "failed", {}, " ".join(f"{type(r.error).__name__}: {r.error}".split())[:500],
                                  retries + 1)
                TrialDir(root, name).finish(res)
            finish(name)
    finally:
        if started:
            ray.shutdown()
    return [done[n] for n in by_name if n in done]
