"""The ``rnnlab`` command: train, sample, eval, info, demo, gradcheck, bench, experiment, compare.

Every problem a user can cause ends in one line on stderr (``rnnlab: ...``) and exit status 2;
nothing prints a traceback unless ``RNNLAB_DEBUG=1`` is set.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .errors import RnnlabError

EXIT_USER = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and raise :class:`RnnlabError`."""

    def error(self, message):
        raise RnnlabError(f"{message} (see '{self.prog} --help')")


def _num(kind, lo=None, hi=None, lo_open=False):
    """An argparse type: ``kind`` within bounds, with a message that names the bound."""

    def conv(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {s!r}")
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {s}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}, got {s}")
        return v

    return conv


# ---------------------------------------------------------------------------------------- train
TRAIN_OPTIONS = [
    # flag, dest, type, help
    ("--model", "model", str, "rnn | lstm | gru | mlp | cnn | bigram (default lstm)"),
    ("--layers", "layers", _num(int, 1), "layers (default 2)"),
    ("--hidden", "hidden", _num(int, 1), "hidden units; CNN channels (default 256)"),
    ("--embed", "embed", _num(int, 0), "embedding size, 0 = one-hot input (default 64)"),
    ("--dropout", "dropout", _num(float, 0.0), "dropout between layers, in [0, 1) (default 0)"),
    ("--context", "context", _num(int, 1), "characters the mlp model sees (default 8)"),
    ("--kernel", "kernel", _num(int, 1), "cnn kernel size (default 2)"),
    ("--seq-len", "seq_len", _num(int, 1), "truncated-BPTT length in stream mode (default 100)"),
    ("--batch", "batch", _num(int, 1), "parallel streams or items per step (default 32)"),
    ("--optimizer", "optimizer", str, "sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw (default adam)"),
    ("--lr", "lr", _num(float, 0.0, lo_open=True), "learning rate (default 3e-3)"),
    ("--schedule", "schedule", str, "constant | step | exponential | cosine (default cosine, with warm-up)"),
    ("--warmup", "warmup", _num(int, 0), "warm-up steps of the cosine schedule (default 100)"),
    ("--min-lr", "min_lr", _num(float, 0.0), "final learning rate of the schedule (default 1e-4)"),
    ("--weight-decay", "weight_decay", _num(float, 0.0), "weight decay (default 0)"),
    ("--clip", "clip", _num(float, 0.0), "clip the global gradient norm, 0 = off (default 1.0)"),
    ("--max-steps", "max_steps", _num(int, 1), "stop after this many steps (default 3000)"),
    ("--max-time", "max_time", _num(float, 0.0), "stop after this many seconds, 0 = no limit (default 0)"),
    ("--eval-every", "eval_every", _num(int, 1), "steps between validation and checkpoints (default 250)"),
    ("--val-frac", "val_frac", _num(float, 0.0, 0.99), "validation fraction (default 0.05)"),
    ("--test-frac", "test_frac", _num(float, 0.0, 0.99), "test fraction (default 0.05)"),
    ("--seed", "seed", _num(int, 0), "random seed (default 1337)"),
    ("--dtype", "dtype", str, "float32 | float64 (default float32)"),
    ("--device", "device", str, "cpu | cuda (default cpu)"),
    ("--threads", "threads", _num(int, 0), "CPU threads, each training on a block of the batch's rows; "
                                           "0 = decide from the cores and the model's size (default 0)"),
]
RESUME_OVERRIDABLE = {"max_steps", "max_time", "eval_every", "device", "threads"}


def _add_train_options(p):
    for flag, dest, typ, help_ in TRAIN_OPTIONS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument("--lines", action="store_true", default=None,
                   help="each non-empty line is one item (names, words), with begin/end tokens")


def _train_config(args, base=None):
    from .lm.config import TrainConfig

    given = {dest: getattr(args, dest) for _, dest, _, _ in TRAIN_OPTIONS if getattr(args, dest) is not None}
    if args.lines:
        given["lines"] = True
    if base is None:
        cfg = TrainConfig(**given)
        if cfg.lines and "batch" not in given:
            cfg.batch = 64
        return cfg.validate()
    bad = sorted(set(given) - RESUME_OVERRIDABLE)
    if bad:
        flags = ", ".join("--" + b.replace("_", "-") for b in bad)
        raise RnnlabError(f"--resume continues with the run's saved options; drop {flags} (only --max-steps, "
                          "--max-time, --eval-every, --device, --threads may change) or start a new run")
    for k, v in given.items():
        setattr(base, k, v)
    return base.validate()


def cmd_train(args) -> int:
    from . import backend
    from .lm.corpus import build_corpus, load_text
    from .lm.rundir import RunDir
    from .lm.trainer import Trainer, read_run, write_run_files

    cfg = _train_config(args) if not args.resume else None
    if cfg is not None:
        backend.set_backend(cfg.device)
    if args.resume and not os.path.lexists(args.out):  # do not create a directory only to find nothing there
        raise RnnlabError(f"nothing to resume: run directory {args.out} does not exist; check the path, or start "
                          "a new run without --resume")
    text, source = load_text(args.text)
    if not args.resume:
        # Everything that can fail on the data or the options (too short a text, a split too small
        # for --batch/--seq-len) fails here, before the run directory is created or touched.
        corpus = build_corpus(text, source, lines=cfg.lines, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                              seed=cfg.seed)
        del text
        trainer = Trainer(cfg, corpus, RunDir(args.out), progress=not args.quiet)
    with RunDir.create(args.out, force=args.force, resume=args.resume) as run:
        if args.resume:
            saved, data, vocab = read_run(run)
            cfg = _train_config(args, saved)
            backend.set_backend(cfg.device)
            from .lm.corpus import text_digest

            if text_digest(text) != data.get("sha256"):
                raise RnnlabError(f"{source} is not the text this run was trained on ({data.get('source')}); "
                                  "resume with the same file or start a new run")
            corpus = build_corpus(text, source, lines=cfg.lines, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                                  seed=cfg.seed, vocab=vocab)
            del text
            trainer = Trainer(cfg, corpus, run, progress=not args.quiet)
            saved_shards = trainer.restore(keep_shards=args.threads is None)
        else:
            trainer.run = run  # the locked run directory
            write_run_files(run, cfg, corpus)
        _say(args, f"data: {source} ({'lines' if cfg.lines else 'stream'} mode, vocabulary {corpus.vocab.size}): "
                   f"{corpus.describe()}")
        _say(args, f"model: {cfg.model}, {trainer.model.num_params():,} parameters, {cfg.dtype} on {cfg.device}; "
                   f"run directory {run.path}" + (f" (resuming at step {trainer.step})" if args.resume else ""))
        if args.resume and trainer.shards != saved_shards and cfg.device == "cpu":  # CuPy always runs one shard
            _say(args, f"threads: {trainer.shards} (the checkpoint trained on {saved_shards}; gradients are summed "
                       "in another order, so this run is no longer bit-identical to an uninterrupted one)")
        result = trainer.fit()
        _report_training(args, trainer, result)
    return 0


def _say(args, msg):
    if not getattr(args, "quiet", False):
        print(msg, flush=True)


def _report_training(args, trainer, result):
    from .lm.evaluate import evaluate
    from .lm.shards import BatchShards
    from .lm.trainer import load_model_weights

    run = trainer.run
    if result.interrupted:
        from shlex import quote

        print(f"interrupted at step {result.step}: checkpoint saved in {run.checkpoint_path('last')}; "
              f"continue with: rnnlab train {quote(str(trainer.corpus.source))} --out {quote(str(run.path))} --resume",
              flush=True)
        return
    cfg = trainer.cfg
    lines = [f"trained {result.step} step{'' if result.step == 1 else 's'} in {result.elapsed:.0f} s "
             f"({result.chars_per_s:,.0f} chars/s)"]
    if math.isfinite(result.best_val):
        lines.append(f"best validation loss {result.best_val:.4f} nats/char = {result.best_val / math.log(2):.4f} bits/char")
    if len(trainer.corpus.split.test):
        best = run.checkpoint_path("best")
        if best.is_file():
            load_model_weights(trainer.model, best)
        with BatchShards(trainer.model, trainer.shards) as shards:  # the rows over the training's threads
            t = evaluate(trainer.model, trainer.corpus.split.test, trainer.corpus.mode, cfg.batch, cfg.seq_len,
                         shards=shards)
        lines.append(f"test loss {t['loss_nats']:.4f} nats/char, {t['bits_per_char']:.4f} bits/char, "
                     f"perplexity {t['perplexity']:.2f} ({t['chars']:,} characters, best checkpoint)")
        from .io import append_jsonl

        append_jsonl(run.metrics, {"step": result.step, "test_loss": t["loss_nats"], "test_chars": t["chars"]})
    lines.append(f"sample with: rnnlab sample {run.path}")
    for line in lines:
        print(line, flush=True)


# ---------------------------------------------------------------------------------------- load a run
def _load_run(path, which):
    from .lm.rundir import RunDir
    from .lm.trainer import load_model_weights, read_run
    from .models import build_model

    run = RunDir(path)
    run.check_complete()
    cfg, data, vocab = read_run(run)
    import numpy as np  # checkpoints hold host arrays: a GPU-trained model loads on the CPU too

    model = build_model(cfg.model_config(vocab.size), rng=np.random.default_rng(0))
    meta = load_model_weights(model, run.find_checkpoint(which))
    model.eval()
    return run, cfg, data, vocab, model, meta


def cmd_sample(args) -> int:
    import numpy as np

    from .lm.sample import generate

    run, cfg, data, vocab, model, _ = _load_run(args.run_dir, args.checkpoint)
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    if args.prime:
        vocab.encode(args.prime, what="--prime")  # characters the model never saw: fail before any output
    if cfg.lines:
        known = _training_lines(cfg, data)
        for _ in range(args.num):
            item = generate(model, vocab, prime=args.prime or "", length=args.length, temperature=args.temperature,
                            top_k=args.top_k, rng=rng, lines=True, emit=lambda s: None)
            mark = "" if known is None else ("  (in training data)" if item in known else "")
            out.write(item + mark + "\n")
            out.flush()
        if known is None:
            print(f"note: the training text {data.get('source')} was not found, so samples are not checked against it",
                  file=sys.stderr)
        return 0
    prime = args.prime if args.prime else ("\n" if "\n" in vocab.chars else vocab.chars[0])
    for k in range(args.num):
        if args.num > 1:
            out.write(f"--- sample {k + 1} ---\n")
        out.write(prime)
        buf = []

        def emit(s):
            buf.append(s)
            if len(buf) >= 64:
                out.write("".join(buf))
                out.flush()
                buf.clear()

        generate(model, vocab, prime=prime, length=args.length, temperature=args.temperature, top_k=args.top_k,
                 rng=rng, lines=False, emit=emit)
        out.write("".join(buf) + "\n")
        out.flush()
    return 0


def _training_lines(cfg, data):
    """The training items of a lines-mode run (re-split from its source), or None."""
    from .lm.corpus import build_corpus, text_digest

    src = data.get("source")
    try:
        from .data import read_text

        text = read_text(src)
    except (RnnlabError, TypeError):
        return None
    if text_digest(text) != data.get("sha256"):
        return None
    corpus = build_corpus(text, src, lines=True, val_frac=cfg.val_frac, test_frac=cfg.test_frac, seed=cfg.seed)
    return set(corpus.train_lines)


def cmd_eval(args) -> int:
    from .data import encode_lines, read_lines, read_text
    from .lm.evaluate import evaluate
    from .lm.shards import BatchShards, plan_shards

    run, cfg, data, vocab, model, _ = _load_run(args.run_dir, args.checkpoint)
    text = read_text(args.text)
    if cfg.lines:
        items, unknown = encode_lines(vocab, read_lines(text), unknown="count", what=args.text)
        if len(items) == 0:
            raise RnnlabError(f"{args.text} has no non-empty lines to evaluate")
        inputs, mode = items, "lines"
    else:
        ids, unknown = vocab.encode(text, unknown="count", what=args.text)
        if len(ids) < 2:
            raise RnnlabError(f"{args.text} has fewer than 2 known characters: nothing to evaluate")
        inputs, mode = ids, "stream"
    # each batch's rows over threads, planned from the run's --threads as training plans them
    with BatchShards(model, plan_shards(model, cfg.batch, cfg.threads)) as shards:
        res = evaluate(model, inputs, mode, cfg.batch, cfg.seq_len, shards=shards)
    res["unknown_chars"] = int(unknown)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.text}: {res['loss_nats']:.4f} nats/char, {res['bits_per_char']:.4f} bits/char, "
              f"perplexity {res['perplexity']:.3f}, {res['chars']:,} characters evaluated")
        if unknown:
            print(f"{unknown:,} characters outside the model's vocabulary were skipped")
    return 0


def cmd_info(args) -> int:
    from .lm.checkpoint import inspect_checkpoint
    from .lm.rundir import RunDir
    from .lm.trainer import read_run
    from .models import build_model

    run = RunDir(args.run_dir)
    run.check_complete()
    cfg, data, vocab = read_run(run)
    model = build_model(cfg.model_config(vocab.size))
    info = {"run": str(run.path), "model": cfg.model, "parameters": model.num_params(),
            "config": cfg.model_config(vocab.size), "mode": data.get("mode"), "source": data.get("source"),
            "vocabulary": vocab.size, "split_chars": data.get("split_chars")}
    for which in ("last", "best"):
        p = run.checkpoint_path(which)
        if p.is_file():
            _, meta = inspect_checkpoint(p)
            info[f"{which}_step"] = meta.get("step")
            if which == "last":
                info["best_val_loss"] = meta.get("best_val")
                info["train_seconds"] = meta.get("elapsed")
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"run:         {info['run']}")
    print(f"model:       {cfg.model} ({', '.join(f'{k}={v}' for k, v in info['config'].items() if k not in ('model',))})")
    print(f"parameters:  {info['parameters']:,}")
    print(f"data:        {info['source']} ({info['mode']} mode, vocabulary {vocab.size})")
    if info["split_chars"]:
        tr, va, te = info["split_chars"]
        print(f"split:       train {tr:,} / val {va:,} / test {te:,} characters")
    print(f"steps:       {info.get('last_step')} (best checkpoint at step {info.get('best_step')})")
    bv = info.get("best_val_loss")
    print(f"best val:    {bv:.4f} nats/char ({bv / math.log(2):.4f} bits/char)" if isinstance(bv, (int, float))
          else "best val:    -")
    return 0


def cmd_demo(args) -> int:
    import numpy as np

    from .lm.config import TrainConfig
    from .lm.corpus import build_corpus, load_text
    from .lm.rundir import RunDir
    from .lm.sample import generate
    from .lm.trainer import Trainer, load_model_weights, write_run_files

    text, source = load_text(None)
    cfg = TrainConfig(model="lstm", layers=1, hidden=256, embed=64, seq_len=64, batch=32, lr=3e-3,
                      max_steps=100000, max_time=float(args.seconds), eval_every=100, warmup=50,
                      schedule="constant", extra={"demo": True}).validate()
    print(f"rnnlab demo: training a {cfg.layers}-layer LSTM ({cfg.hidden} units) for {args.seconds:.0f} s on "
          f"{source}", flush=True)
    corpus = build_corpus(text, source, lines=False, val_frac=cfg.val_frac, test_frac=cfg.test_frac, seed=cfg.seed)
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

    from .io import read_json
    from .lm.rundir import RunDir

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


def cmd_gradcheck(args) -> int:
    import numpy as np

    from .gradcheck import gradcheck
    from .nn import GRU, LSTM, RNN

    rng = np.random.default_rng(args.seed)
    T, B, I, H = args.steps, 3, 4, 5
    worst = 0.0
    print(f"BPTT vs central differences (float64, T={T}, B={B}, I={I}, H={H}); relative error per parameter")
    for cls in (RNN, LSTM, GRU):
        layer = cls(I, H, num_layers=2, dtype=np.float64, rng=rng)
        x = rng.standard_normal((T, B, I))
        w = rng.standard_normal((T, B, H))

        def loss():
            y, _, _ = layer.forward(x)
            return float(np.sum(y * w))

        layer.zero_grad()
        _, _, cache = layer.forward(x)
        dx, _ = layer.backward(w, None, cache)
        errs = gradcheck(loss, {**layer.params, "x (input)": x}, {**layer.grads, "x (input)": dx})
        print(f"{cls.__name__}:")
        for name, e in errs.items():
            print(f"  {name:18s} {e:.2e}  {'ok' if e < 1e-6 else 'MISMATCH'}")
            worst = max(worst, e)
    print(f"worst relative error {worst:.2e}: " + ("backpropagation through time agrees with finite differences"
                                                   if worst < 1e-6 else "MISMATCH"))
    return 0 if worst < 1e-6 else 1


def cmd_compare(args) -> int:
    from pathlib import Path

    from .lm.compare import compare, parse_models, table_markdown
    from .lm.config import TrainConfig
    from .lm.corpus import build_corpus, load_text

    models = parse_models(args.models)
    base = TrainConfig(lines=args.lines, seed=args.seed, batch=args.batch or (64 if args.lines else 32),
                       seq_len=args.seq_len, lr=args.lr).validate()
    text, source = load_text(args.text)
    corpus = build_corpus(text, source, lines=base.lines, val_frac=base.val_frac, test_frac=base.test_frac,
                          seed=base.seed)
    rows = compare(corpus, models, args.budget, Path(args.out), base, progress=False)
    print()
    print(table_markdown(rows, args.budget, corpus))
    print(f"table, CSV and plot of validation loss against time: {args.out}/compare.{{md,csv,png}}")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.main(args.rest)


def cmd_experiment(args) -> int:
    from . import experiments

    return experiments.cli_main(args.rest)


# ---------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rnnlab", description="Recurrent neural networks from first principles: train, sample and "
                                            "evaluate character-level language models; run experiments.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a language model on a UTF-8 text file")
    t.add_argument("text", help="UTF-8 text file")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--force", action="store_true", help="start a new run in --out (old files are moved aside)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_train_options(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--prime", default=None, help="text to start from")
    s.add_argument("--length", type=_num(int, 1), default=500, help="characters to generate (default 500)")
    s.add_argument("--num", type=_num(int, 1), default=1, help="number of samples (default 1)")
    s.add_argument("--temperature", type=_num(float, 0.0), default=1.0, help="0 = greedy (default 1.0)")
    s.add_argument("--top-k", type=_num(int, 0), default=0, help="sample among the k likeliest, 0 = all")
    s.add_argument("--seed", type=_num(int, 0), default=None, help="random seed")
    s.add_argument("--checkpoint", choices=["best", "last"], default="best")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="loss, bits per character and perplexity of a run on a text")
    e.add_argument("run_dir")
    e.add_argument("text")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="what a run holds")
    i.add_argument("run_dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="train a small LSTM for about a minute on Python's own source, then sample")
    d.add_argument("--seconds", type=_num(float, 1.0), default=60.0, help="training time (default 60)")
    d.add_argument("--out", default="rnnlab-demo", help="run directory (default ./rnnlab-demo, replaced each time)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    g = sub.add_parser("gradcheck", help="check BPTT against finite differences on your machine")
    g.add_argument("--steps", type=_num(int, 1, 200), default=8, help="sequence length T (default 8)")
    g.add_argument("--seed", type=_num(int, 0), default=0)
    g.set_defaults(func=cmd_gradcheck)

    c = sub.add_parser("compare", help="train several model kinds under the same time budget; one table + plot")
    c.add_argument("text", nargs="?", default=None, help="UTF-8 text file (default: the built-in corpus)")
    c.add_argument("--models", default="bigram,mlp,cnn,rnn,lstm,gru", help="comma-separated model kinds")
    c.add_argument("--budget", type=_num(float, 1.0), default=60.0, help="seconds of training per model (default 60)")
    c.add_argument("--out", default="rnnlab-compare", help="output folder (one run directory per model)")
    c.add_argument("--lines", action="store_true", help="each non-empty line is one item")
    c.add_argument("--batch", type=_num(int, 1), default=None)
    c.add_argument("--seq-len", dest="seq_len", type=_num(int, 1), default=100)
    c.add_argument("--lr", type=_num(float, 0.0, lo_open=True), default=3e-3)
    c.add_argument("--seed", type=_num(int, 0), default=1337)
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="training-step speed against PyTorch (see docs/benchmarks.md)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)

    x = sub.add_parser("experiment", help="RNN vs feed-forward experiments (see docs/experiments.md)", add_help=False)
    x.add_argument("rest", nargs=argparse.REMAINDER)
    x.set_defaults(func=cmd_experiment)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("experiment", "bench"):  # their own parsers take every argument
            args = argparse.Namespace(command=argv[0], rest=argv[1:],
                                      func=cmd_experiment if argv[0] == "experiment" else cmd_bench)
        else:
            args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USER
        import numpy as np

        # Overflow in a diverging model is detected and reported in one line (NaN/Inf checks in the
        # trainer and the sampler); NumPy's RuntimeWarnings would only add noise to stderr.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return int(args.func(args) or 0)
    except RnnlabError as exc:
        print(f"rnnlab: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `rnnlab sample RUN | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except MemoryError:
        print("rnnlab: out of memory: use a smaller --batch, --hidden or --seq-len", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:  # a bug: say so in one line, keep the traceback for developers
        if os.environ.get("RNNLAB_DEBUG"):
            raise
        print(f"rnnlab: internal error ({type(exc).__name__}: {exc}); rerun with RNNLAB_DEBUG=1 for the traceback "
              "and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
