"""Experiments that measure how recurrent networks differ from feed-forward ones.

Each experiment is a module with ``run(out_dir, quick=False, seeds=3, **kw) -> Result`` that
writes ``NAME.md`` (tables), ``NAME.csv`` and ``NAME.png`` into ``out_dir``, averaging over
``seeds`` seeds (mean ± std). ``quick=True`` runs in seconds; the default in minutes, on the CPU.

=============  =====================================================================  ==========
name           question                                                               module
=============  =====================================================================  ==========
``length``     fixed input length (padding, truncation) vs lengths never seen          length.py
``memory``     long time lags (adding, copy, temporal order) at the papers' scale      memory.py
``gradients``  vanishing/exploding ``||dL/dh_t||`` vs distance; norm clipping          gradients.py
``sharing``    parameters and FLOPs as the sequence grows: sharing over time           sharing.py
``context``    bits/char of the window MLP (K = 1..16) vs RNN/LSTM/GRU on real text      context.py
``compare``    every model kind under the same time budget on real text               compare.py
``parallel``   training-step time and memory vs sequence length: recurrence vs scan   parallel.py
=============  =====================================================================  ==========

``rnnlab experiment NAME [--out DIR] [--quick] [--seeds N]`` is :func:`cli_main`; the experiments in
:data:`PARALLEL` run their trials on :mod:`rnnlab.trials` (``--workers``, ``--backend``,
``--address``, ``--resume``).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from ..errors import RnnlabError

IMPLEMENTED = ("length", "memory", "gradients", "sharing", "context", "compare", "parallel")
DEFAULT_OUT = "runs/experiments"  # runs/ is git-ignored
PARALLEL = {"memory", "gradients", "length", "context"}
"""Experiments whose trials run on :mod:`rnnlab.trials` (``--workers``, ``--backend``, ``--resume``)."""


def _loader(name: str):
    def run(out_dir, quick: bool = False, seeds: int = 3, **kw):
        module = importlib.import_module(f".{name}", __name__)
        return module.run(out_dir, quick=quick, seeds=seeds, **kw)

    run.__name__ = f"run_{name}"
    run.__doc__ = f"Run experiment {name!r} (see rnnlab.experiments.{name})."
    return run


REGISTRY = {name: _loader(name) for name in IMPLEMENTED}
"""NAME -> ``run(out_dir, quick=False, seeds=3, **kw)``."""


def run(name: str, out_dir=DEFAULT_OUT, quick: bool = False, seeds: int = 3, **kw):
    """Run one experiment by name (see :data:`REGISTRY`)."""
    if name not in REGISTRY:
        raise RnnlabError(f"unknown experiment {name!r}: choose from {', '.join(REGISTRY)} or all")
    return REGISTRY[name](out_dir, quick=quick, seeds=seeds, **kw)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a user error: one line, via RnnlabError
        raise RnnlabError(f"experiment: {message} (see rnnlab experiment --help)")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rnnlab experiment",
        description="Run an experiment; writes NAME.md, NAME.csv and NAME.png into --out.",
        epilog="experiments: " + ", ".join(IMPLEMENTED),
    )
    p.add_argument("name", metavar="NAME", help="one of " + ", ".join(list(REGISTRY) + ["all"]))
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="a tiny configuration that runs in seconds")
    p.add_argument("--text", default=None, metavar="PATH",
                   help="UTF-8 text for context and compare (default: the built-in corpus)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds to average over (default: 3)")
    t = p.add_argument_group("parallel trials (" + ", ".join(sorted(PARALLEL)) + ")")
    t.add_argument("--workers", type=int, default=0, metavar="N",
                   help="trials at a time (default: one per core; Ray: as the cluster allows)")
    t.add_argument("--backend", default="local", help="local (processes on this machine) | ray (default local)")
    t.add_argument("--address", default=None, metavar="HOST:PORT", help="join this Ray cluster (--backend ray)")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: ended trials are kept, the others resume")
    m = p.add_argument_group("memory")
    m.add_argument("--task", default=None, metavar="T1,T2",
                   help="tasks: adding, adding-hs, copy, temporal (default: all four)")
    m.add_argument("--lags", default=None, metavar="T1,T2", help="lags T (default: per task, see docs)")
    m.add_argument("--models", default=None, metavar="M1,M2",
                   help="rnn, irnn, lstm, lstm-chrono, gru, mlp, mlp-full, guess (default: all)")
    m.add_argument("--budget", type=int, default=None, metavar="N",
                   help="training sequences per run (default: max(200k, 3000 x T))")
    return p


def _csv(s: str | None, kind=str, what: str = ""):
    if s is None:
        return None
    try:
        vals = [kind(v.strip()) for v in s.split(",") if v.strip()]
    except ValueError:
        raise RnnlabError(f"{what} expects comma-separated {'integers' if kind is int else 'names'}, got {s!r}")
    if not vals:
        raise RnnlabError(f"{what} is empty")
    return vals


def cli_main(argv=None) -> int:
    """``rnnlab experiment NAME [--out DIR] [--quick] [--seeds N]``; returns the exit status.

    ``NAME`` ``all`` runs every implemented experiment. User errors raise RnnlabError.
    """
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if args.seeds < 1:
        raise RnnlabError(f"--seeds must be at least 1, got {args.seeds}")
    if args.name == "all":
        names = list(IMPLEMENTED)
    elif args.name in REGISTRY:
        names = [args.name]
    else:
        raise RnnlabError(f"unknown experiment {args.name!r}: choose from {', '.join(REGISTRY)} or all")
    memory_only = [f for f, v in (("--task", args.task), ("--lags", args.lags), ("--models", args.models),
                                  ("--budget", args.budget)) if v is not None]
    if memory_only and names != ["memory"]:
        raise RnnlabError(f"{memory_only[0]} applies to the memory experiment only")
    runner_opts = [f for f, v in (("--workers", args.workers), ("--backend", args.backend != "local"),
                                  ("--address", args.address), ("--resume", args.resume)) if v]
    if runner_opts and not set(names) & PARALLEL:
        raise RnnlabError(f"{runner_opts[0]} applies to experiments run as parallel trials: {', '.join(PARALLEL)}")
    if args.workers < 0:
        raise RnnlabError(f"--workers must be at least 1 (0 = one per core), got {args.workers}")
    if args.budget is not None and args.budget < 1:
        raise RnnlabError(f"--budget must be a positive number of sequences, got {args.budget}")
    from ..trials import check_backend

    check_backend(args.backend, args.address)
    out = Path(args.out)
    t0 = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        kw = {"text": args.text} if name in ("context", "compare") and args.text else {}
        if name in PARALLEL:
            kw.update(workers=args.workers, backend=args.backend, address=args.address, resume=args.resume)
        if name == "memory":
            kw.update(tasks=_csv(args.task, str, "--task"), lags=_csv(args.lags, int, "--lags"),
                      models=_csv(args.models, str, "--models"), budget=args.budget)
        res = run(name, out, quick=args.quick, seeds=args.seeds, **kw)
        files = ", ".join(str(res.paths[k]) for k in ("md", "csv", "png") if k in res.paths)
        print(f"{name}: {time.perf_counter() - t:.1f} s -> {files}", file=sys.stdout, flush=True)
    if len(names) > 1:
        print(f"all: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0
