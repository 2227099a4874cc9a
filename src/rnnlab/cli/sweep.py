"""``rnnlab sweep``: many training runs over a grid of options, on every core or a Ray cluster."""
from __future__ import annotations

import math
import os
import shlex
from pathlib import Path

from ..errors import RnnlabError
from .common import num as _num, say as _say
from .train import TRAIN_OPTIONS, _add_train_options, _train_config


def cmd_sweep(args) -> int:
    from ..lm.config import TrainConfig
    from ..lm.corpus import corpus_for, load_text, text_digest
    from ..trials import EarlyStop, check_backend, run_trials
    from ..trials.local import default_workers
    from ..trials.sweep import (check_resume, grid_points, make_trials, parse_grid, result_rows, sweep_spec,
                                sweepable, write_results, write_spec)

    check_backend(args.backend, args.address)
    grid = parse_grid(args.grid, sweepable(TRAIN_OPTIONS))
    if not grid:
        raise RnnlabError("a sweep needs at least one --grid OPTION=V1,V2,... (e.g. --grid lr=1e-3,3e-3)")
    both = sorted(k for k in grid if getattr(args, k, None) is not None)
    if both:
        raise RnnlabError(f"--{both[0].replace('_', '-')} is both a fixed option and swept by --grid; give it once")
    if args.lines and "batch" not in grid and args.batch is None:
        args.batch = 64  # as rnnlab train does in lines mode
    base = _train_config(args)
    workers = args.workers or (default_workers() if args.backend == "local" else 0)
    if base.threads == 0:  # the trials share the cores (on Ray each trial holds one CPU)
        base.threads = max(1, default_workers() // max(1, workers)) if args.backend == "local" else 1
    text, source = load_text(args.text)
    corpus_for(text, source, base)
    points = grid_points(grid, args.random, base.seed)
    text_path = str(Path(args.text).resolve())
    trials = make_trials(text_path, base, points, args.seeds)  # every point's options checked here
    early = None
    if args.early_stop:  # checked before anything is written
        if base.max_time:
            early = EarlyStop("val_loss", "time", grace=base.max_time / 9, max_t=base.max_time)
        else:
            early = EarlyStop("val_loss", "step", grace=base.eval_every, max_t=base.step_limit())
            if early.max_t <= early.grace:
                raise RnnlabError(f"--early-stop compares trials at every --eval-every steps: give --max-steps "
                                  f"above --eval-every ({base.eval_every}), got {early.max_t}")
    spec = sweep_spec(text_path, text_digest(text), base, grid, args.random, args.seeds)
    del text
    out = Path(args.out)
    if args.resume:
        check_resume(out, spec)
    elif (out / "sweep.json").exists() or (out / "trials").exists():
        raise RnnlabError(f"{out} already holds a sweep: add --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_spec(out, spec)
    _say(args, f"sweep: {len(trials)} trials ({len(points)} grid points x {args.seeds} seed(s)) on "
               f"{'Ray' if args.backend == 'ray' else f'{workers} local worker(s)'}"
               f"{', early stopping (ASHA)' if early else ''}; folder {out}")
    results = run_trials(trials, out / "trials", workers=workers, backend=args.backend, address=args.address,
                         resume=args.resume, early_stop=early, retries=args.retries, progress=not args.quiet,
                         desc="sweep")
    rows = result_rows(trials, results, grid)
    paths = write_results(out, rows, grid, out / "trials", f"Sweep over {', '.join(grid)} on {source}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "stopped", "failed")}
    print(f"{counts['done']} done, {counts['stopped']} stopped early, {counts['failed']} failed; "
          f"results: {paths['md']}, {paths['csv']}, {paths['png']}", flush=True)
    best = rows[0] if rows and rows[0]["best_val"] is not None else None
    if best is None:
        print("no trial reached a validation loss", flush=True)
        return 1 if counts["failed"] == len(rows) else 0
    cfg = TrainConfig.from_dict(next(t.params["train"] for t in trials if t.name == best["trial"]))
    print(f"best: {best['trial']}: validation loss {best['best_val']:.4f} nats/char "
          f"({best['best_val'] / math.log(2):.4f} bits/char); run directory {out / 'trials' / best['trial']}",
          flush=True)
    print("reproduce it with: " + reproduce_command(text_path, cfg), flush=True)
    return 0


def reproduce_command(text: str, cfg) -> str:
    """``rnnlab train`` with every option that differs from the default, and those the automatic
    rule (:mod:`rnnlab.lm.auto`) would otherwise choose anew (sizes, dropout, sequence length)."""
    from ..lm.config import TrainConfig

    default = TrainConfig()
    auto = {"layers", "hidden", "dropout", "seq_len"}
    parts = ["rnnlab", "train", shlex.quote(text), "--out", "runs/best"]
    for flag, dest, _, _ in TRAIN_OPTIONS:
        v = getattr(cfg, dest)
        if v != getattr(default, dest) or dest in auto:
            parts += [flag, shlex.quote(f"{v:g}" if isinstance(v, float) else str(v))]
    if cfg.lines:
        parts.append("--lines")
    return " ".join(parts)


def register(sub) -> None:
    w = sub.add_parser("sweep", help="train a grid of configurations in parallel (local cores or Ray); one table")
    w.add_argument("text", help="UTF-8 text file")
    w.add_argument("--out", required=True, help="sweep folder (trials/, results.md/csv, sweep.png)")
    w.add_argument("--grid", action="append", default=[], metavar="OPTION=V1,V2,...",
                   help="values of one train option to sweep; repeat for more options (all combinations)")
    w.add_argument("--random", type=_num(int, 1), default=0, metavar="N",
                   help="run N grid points drawn at random instead of all of them")
    w.add_argument("--seeds", type=_num(int, 1), default=1, help="seeds per grid point (default 1)")
    w.add_argument("--workers", type=_num(int, 1), default=0,
                   help=f"trials at a time (default: one per core, {os.cpu_count()} here; Ray: as the cluster allows)")
    w.add_argument("--backend", default="local", help="local (processes on this machine) | ray (default local)")
    w.add_argument("--address", default=None, metavar="HOST:PORT", help="join this Ray cluster (--backend ray)")
    w.add_argument("--early-stop", dest="early_stop", action="store_true",
                   help="stop trials whose validation loss is clearly behind at a rung (asynchronous successive "
                        "halving)")
    w.add_argument("--retries", type=_num(int, 0), default=2,
                   help="retries of a trial whose process crashed or was killed (default 2)")
    w.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out: ended trials are kept, the others continue from their checkpoint")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_train_options(w)
    w.set_defaults(func=cmd_sweep)
