"""``rnnlab train`` and ``rnnlab demo``: train a language model, report it."""
from __future__ import annotations

import math
import os
import sys

from ..errors import RnnlabError
from .common import num as _num, say as _say

TRAIN_OPTIONS = [
    # flag, dest, type, help
    ("--model", "model", str, "rnn | lstm | gru | mingru | minlstm | mlp | cnn | bigram | bow | transformer "
                              "(default lstm)"),
    ("--layers", "layers", _num(int, 1), "layers (default 2)"),
    ("--hidden", "hidden", _num(int, 1), "hidden units; CNN channels; transformer width (default 256; rnn, "
                                         "lstm and gru with --max-time and no --layers: the widest that fits "
                                         "the budget and the text, see the auto: line)"),
    ("--embed", "embed", _num(int, 0), "embedding size, 0 = one-hot input (default 64)"),
    ("--dropout", "dropout", _num(float, 0.0), "dropout between layers, in [0, 1) (default 0; rnn, lstm and "
                                               "gru: from the epochs the run makes over its text, 0 below two)"),
    ("--context", "context", _num(int, 1), "characters the mlp model sees (default 8)"),
    ("--kernel", "kernel", _num(int, 1), "cnn kernel size (default 2)"),
    ("--seq-len", "seq_len", _num(int, 1), "truncated-BPTT length in stream mode; for bow and transformer the "
                                           "block: the characters they see, their position table (default 100; "
                                           "rnn, lstm and gru: shorter for a small text)"),
    ("--heads", "heads", _num(int, 1), "attention heads of the transformer, must divide --hidden (default 4)"),
    ("--batch", "batch", _num(int, 1), "parallel streams or items per step (default 32)"),
    ("--optimizer", "optimizer", str, "sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw (default adam)"),
    ("--lr", "lr", _num(float, 0.0, lo_open=True), "learning rate (default 3e-3)"),
    ("--schedule", "schedule", str, "constant | step | exponential | cosine (default cosine, with warm-up)"),
    ("--warmup", "warmup", _num(int, 0), "warm-up steps of the cosine schedule (default 100)"),
    ("--min-lr", "min_lr", _num(float, 0.0), "final learning rate of the schedule (default 1e-4)"),
    ("--weight-decay", "weight_decay", _num(float, 0.0), "weight decay (default 0)"),
    ("--clip", "clip", _num(float, 0.0), "clip the global gradient norm, 0 = off (default 1.0)"),
    ("--max-steps", "max_steps", _num(int, 1), "stop after this many steps (default 3000, or none with --max-time)"),
    ("--max-time", "max_time", _num(float, 0.0), "train for this many seconds (the schedule follows the time; "
                                                 "compiling kernels is not counted), 0 = no limit (default 0)"),
    ("--eval-every", "eval_every", _num(int, 1), "steps between validation and checkpoints (default 250)"),
    ("--val-frac", "val_frac", _num(float, 0.0, 0.99), "validation fraction (default 0.05)"),
    ("--test-frac", "test_frac", _num(float, 0.0, 0.99), "test fraction (default 0.05)"),
    ("--split", "split", str, "where the validation and test characters come from: spread (pieces spread through "
                              "the text, so training covers all of it) | tail (the text's last characters) "
                              "(default spread; short texts keep tails)"),
    ("--seed", "seed", _num(int, 0), "random seed (default 1337)"),
    ("--dtype", "dtype", str, "float32 | float64 (default float32)"),
    ("--device", "device", str, "cpu | cuda (default cpu)"),
    ("--threads", "threads", _num(int, 0), "CPU threads a step uses, 0 = every usable core (default 0)"),
    ("--plan", "plan", str, "how a step uses the threads: auto = the fastest candidate, timed at the start of the "
                            "first run of this model shape on this machine and remembered; measure = time them "
                            "again; or one of blas, packed, split, split-packed (default auto)"),
]
RESUME_OVERRIDABLE = {"max_steps", "max_time", "eval_every", "device", "threads", "plan"}


def _add_train_options(p):
    for flag, dest, typ, help_ in TRAIN_OPTIONS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument("--lines", action="store_true", default=None,
                   help="each non-empty line is one item (names, words), with begin/end tokens")


def _given_options(args) -> dict:
    """The training options given on the command line (``dest -> value``)."""
    given = {dest: getattr(args, dest) for _, dest, _, _ in TRAIN_OPTIONS if getattr(args, dest) is not None}
    if args.lines:
        given["lines"] = True
    return given


def _train_config(args, base=None):
    """A new run's configuration from the options given (the others keep their defaults; the
    automatic choices come later, once the corpus is known), or, with ``base`` (a resumed
    run's saved configuration), ``base`` with the options that may change on resume applied.
    Giving any other option with its saved value is accepted; another value is refused."""
    from ..lm.config import TrainConfig

    given = _given_options(args)
    if base is None:
        cfg = TrainConfig(**given)
        if cfg.lines and "batch" not in given:
            cfg.batch = 64
        return cfg.validate()
    changed = [(k, v) for k, v in given.items() if k not in RESUME_OVERRIDABLE and getattr(base, k) != v]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {_show(v)} (the run has {_show(getattr(base, k))})"
                          for k, v in changed)
        raise RnnlabError(f"--resume continues the run with its saved options, and {diffs}; give the saved "
                          "value or leave the option out (only --max-steps, --max-time, --eval-every, --device, "
                          "--threads, --plan may change), or start a new run with --force")
    for k, v in given.items():
        setattr(base, k, v)
    return base.validate()


def _show(v) -> str:
    return "on" if v is True else "off" if v is False else f"{v:g}" if isinstance(v, float) else str(v)


def _resuming(args) -> bool:
    """Whether this command continues a run: ``--resume``, or ``--resume-or-start`` where the run
    directory holds a run with a checkpoint to continue from."""
    if args.resume_or_start:
        if args.resume or args.force:
            raise RnnlabError("--resume-or-start excludes --resume and --force: it resumes the run in --out if "
                              "there is one and starts it otherwise")
        from ..lm.rundir import RunDir

        run = RunDir(args.out)
        if run.last.is_file():
            return True
        if run.available_checkpoints():  # a best checkpoint only: an imported model, or a damaged run
            raise RnnlabError(f"{args.out} holds a trained model but no checkpoint to continue training from "
                              f"({run.last.name}); --resume-or-start will not replace it: choose another --out, or "
                              "move it away yourself")
        return False
    return bool(args.resume)


def cmd_train(args) -> int:
    from .. import backend
    from ..lm.auto import apply_auto
    from ..lm.corpus import corpus_for, load_text
    from ..lm.rundir import RunDir
    from ..lm.trainer import Trainer, read_run, write_run_files

    resume = _resuming(args)
    # --resume-or-start with no checkpoint: a run killed before its first one left at most its
    # config and vocabulary, which the new run moves aside (as --force does)
    force = args.force or (args.resume_or_start and not resume and RunDir(args.out).has_run())
    cfg = _train_config(args) if not resume else None
    if cfg is not None:
        backend.set_backend(cfg.device)
    if resume and not os.path.lexists(args.out):  # do not create a directory only to find nothing there
        raise RnnlabError(f"nothing to resume: run directory {args.out} does not exist; check the path, start "
                          "a new run without --resume, or use --resume-or-start, which starts one when none is there")
    text, source = load_text(args.text)
    auto_line = ""
    if not resume:
        # Everything that can fail on the data or the options (too short a text, a split too small
        # for --batch/--seq-len) fails here, before the run directory is created or touched.
        corpus = corpus_for(text, source, cfg)
        del text
        auto_line = apply_auto(cfg, set(_given_options(args)), corpus)
        trainer = Trainer(cfg, corpus, RunDir(args.out), progress=not args.quiet)
    with RunDir.create(args.out, force=force, resume=resume) as run:
        if resume:
            saved, data, vocab = read_run(run)
            cfg = _train_config(args, saved)
            backend.set_backend(cfg.device)
            from ..lm.corpus import text_digest

            if text_digest(text) != data.get("sha256"):
                raise RnnlabError(f"{source} is not the text this run was trained on ({data.get('source')}); "
                                  "resume with the same file or start a new run")
            corpus = corpus_for(text, source, cfg, vocab)
            del text
            trainer = Trainer(cfg, corpus, run, progress=not args.quiet)
            saved_plan = trainer.restore(keep_plan=args.threads is None and args.plan is None)
        else:
            trainer.run = run  # the locked run directory
            write_run_files(run, cfg, corpus)
        _say(args, f"data: {source} ({'lines' if cfg.lines else 'stream'} mode, vocabulary {corpus.vocab.size}): "
                   f"{corpus.describe()}")
        if auto_line:
            _say(args, auto_line)
        _say(args, f"model: {cfg.model}, {trainer.model.num_params():,} parameters, {cfg.dtype} on {cfg.device}; "
                   f"run directory {run.path}" + (f" (resuming at step {trainer.step})" if resume else
                                                  " (new run: nothing to resume)" if args.resume_or_start else ""))
        trainer.log = lambda line: _say(args, line)  # the plan's line among the others
        if resume and trainer.plan is not None:
            _say(args, f"plan: {trainer.plan.describe()}, as the checkpoint trained")
        elif (resume and cfg.device == "cpu" and not trainer.limit_reached()
              and trainer.make_plan().bits != saved_plan.bits):
            _say(args, f"(the checkpoint trained with {saved_plan.describe()}, which sums in another order: this run "
                       "is no longer bit-identical to an uninterrupted one)")
        result = trainer.fit()
        _report_training(args, trainer, result)
    return 0


def _report_training(args, trainer, result):
    from ..lm.evaluate import evaluate
    from ..lm.trainer import load_model_weights

    run = trainer.run
    if result.already_done:
        print(f"nothing to train: the run has already reached its limit ({result.already_done}); raise "
              "--max-steps or --max-time to continue it", flush=True)
    if result.interrupted:
        from shlex import quote

        print(f"interrupted at step {result.step}: checkpoint saved in {run.checkpoint_path('last')}; "
              f"continue with: rnnlab train {quote(str(trainer.corpus.source))} --out {quote(str(run.path))} --resume",
              flush=True)
        return
    cfg = trainer.cfg
    lines = [] if result.already_done else [
        f"trained {result.step} step{'' if result.step == 1 else 's'} in {result.elapsed:.0f} s "
        f"({result.chars_per_s:,.0f} chars/s)"
        + (f"; compiling the kernels took {result.compile_seconds:.1f} s before that (not counted)"
           if result.compile_seconds else "")]
    if math.isfinite(result.best_val):
        lines.append(f"best validation loss {result.best_val:.4f} nats/char = {result.best_val / math.log(2):.4f} bits/char")
    if len(trainer.corpus.split.test):
        best = run.checkpoint_path("best")
        if best.is_file():
            load_model_weights(trainer.model, best)
        with trainer.make_plan().batch_shards(trainer.model) as shards:  # the run's plan (made here if it trained none)
            t = evaluate(trainer.model, trainer.corpus.split.test, trainer.corpus.mode, cfg.batch, cfg.seq_len,
                         shards=shards)
        lines.append(f"test loss {t['loss_nats']:.4f} nats/char, {t['bits_per_char']:.4f} bits/char, "
                     f"perplexity {t['perplexity']:.2f} ({t['chars']:,} characters, best checkpoint)")
        if not result.already_done:  # the run's own test record is in metrics.jsonl already
            from ..io import append_jsonl

            append_jsonl(run.metrics, {"step": result.step, "test_loss": t["loss_nats"], "test_chars": t["chars"]})
    lines.append(f"sample with: rnnlab sample {run.path}")
    for line in lines:
        print(line, flush=True)



def cmd_demo(args) -> int:
    import numpy as np

    from ..lm.config import TrainConfig
    from ..lm.corpus import corpus_for, load_text
    from ..lm.rundir import RunDir
    from ..lm.sample import generate
    from ..lm.trainer import Trainer, load_model_weights, write_run_files

    text, source = load_text(None)
    # trained to the time budget: the cosine schedule runs over the seconds, which the kernels'
    # compilation (on a fresh install) does not eat into
    cfg = TrainConfig(model="lstm", layers=1, hidden=256, embed=64, seq_len=64, batch=32, lr=3e-3,
                      max_time=float(args.seconds), eval_every=100, warmup=50, schedule="cosine",
                      extra={"demo": True}).validate()
    print(f"rnnlab demo: training a {cfg.layers}-layer LSTM ({cfg.hidden} units) for {args.seconds:.0f} s on "
          f"{source}", flush=True)
    corpus = corpus_for(text, source, cfg)
    _clear_old_demo(args.out)
    with RunDir.create(args.out, force=True) as run:
        write_run_files(run, cfg, corpus)
        trainer = Trainer(cfg, corpus, run, progress=not args.quiet)
        print(f"data: {corpus.describe()}, vocabulary {corpus.vocab.size}; model: {trainer.model.num_params():,} "
              f"parameters", flush=True)
        result = trainer.fit()
        _report_training(args, trainer, result)
        if result.interrupted:
            return 0
        load_model_weights(trainer.model, run.checkpoint_path("best"))
    print("\nsamples (temperature 0.8):", flush=True)
    rng = np.random.default_rng(0)
    for prime in ("def ", "class ", "import "):
        sys.stdout.write(prime)
        generate(trainer.model, corpus.vocab, prime=prime, length=240, temperature=0.8, rng=rng,
                 emit=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        sys.stdout.write("\n" + "-" * 60 + "\n")
    return 0


def _clear_old_demo(path) -> None:
    """Delete an earlier *demo* run in ``path`` (and only that), so demo runs do not pile up."""
    import shutil

    from ..io import read_json
    from ..lm.rundir import RunDir

    run = RunDir(path)
    if not run.config.is_file():
        return
    try:
        old = read_json(run.config, "demo configuration")
    except RnnlabError:
        return
    if isinstance(old, dict) and isinstance(old.get("train"), dict) and old["train"].get("extra", {}).get("demo"):
        for f in (run.config, run.vocab, run.metrics, run.loss_plot):
            f.unlink(missing_ok=True)
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)



def register(sub) -> None:
    t = sub.add_parser("train", help="train a language model on a UTF-8 text file")
    t.add_argument("text", help="UTF-8 text file")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--resume-or-start", action="store_true",
                   help="resume the run in --out if it has a checkpoint, else start it: one command line for a job "
                        "script's first start and every restart")
    t.add_argument("--force", action="store_true", help="start a new run in --out (old files are moved aside)")
    t.add_argument("--quiet", action="store_true",
                   help="no progress (a bar on a terminal, else a line every 30 s) and no notes")
    _add_train_options(t)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="train a small LSTM for about a minute on Python's own source, then sample")
    d.add_argument("--seconds", type=_num(float, 1.0), default=60.0, help="training time (default 60)")
    d.add_argument("--out", default="rnnlab-demo", help="run directory (default ./rnnlab-demo, replaced each time)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
