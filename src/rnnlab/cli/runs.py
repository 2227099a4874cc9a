"""``rnnlab sample``, ``rnnlab eval`` and ``rnnlab info``: use a trained run."""
from __future__ import annotations

import json
import math
import sys

from ..errors import RnnlabError
from .common import load_run as _load_run, num as _num

def cmd_sample(args) -> int:
    import numpy as np

    from ..lm.sample import generate
    from .export import is_model_file, load_model_file  # an exported .onnx file samples like its run

    load = load_model_file if is_model_file(args.run_dir) else _load_run
    run, cfg, data, vocab, model, _ = load(args.run_dir, args.checkpoint)
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    if args.prime:
        vocab.encode(args.prime, what="--prime")  # characters the model never saw: fail before any output
    if cfg.lines:
        known = _training_lines(cfg, data, vocab)
        for _ in range(args.num):
            item = generate(model, vocab, prime=args.prime or "", length=args.length, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, rng=rng, lines=True, emit=lambda s: None)
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
                 top_p=args.top_p, rng=rng, lines=False, emit=emit)
        out.write("".join(buf) + "\n")
        out.flush()
    return 0


def _training_lines(cfg, data, vocab):
    """The training items of a lines-mode run (re-split from its source), or None."""
    from ..lm.corpus import rebuild_corpus

    corpus = rebuild_corpus(cfg, data, vocab)
    return None if corpus is None else set(corpus.train_lines)


def cmd_eval(args) -> int:
    from ..data import encode_lines, read_lines, read_text
    from ..lm.evaluate import evaluate
    from ..lm.plan import Plan
    from ..lm.shards import blas_limit, plan_shards, usable_cores
    from ..lm.trainer import saved_plan_of

    run, cfg, data, vocab, model, meta = _load_run(args.run_dir, args.checkpoint)
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
    # the parallel plan the run trained (and scored its test split) with, so the same text gives
    # the same bits; a checkpoint that names none (a best checkpoint from before) or one for more
    # cores than this machine has falls back to the shard rule for the run's --threads
    plan = saved_plan_of(meta) if meta.get("plan") is not None else None
    if plan is None or plan.threads > usable_cores():
        n = plan_shards(model, cfg.batch, cfg.threads)
        plan = Plan("split", n) if n > 1 else Plan("blas", usable_cores())
    with blas_limit(plan.blas_threads), plan.batch_shards(model) as shards:
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
    from ..lm.checkpoint import inspect_checkpoint
    from ..lm.rundir import RunDir
    from ..lm.trainer import read_run
    from ..models import build_model

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



def register(sub) -> None:
    s = sub.add_parser("sample", help="generate text from a trained run or an exported .onnx file")
    s.add_argument("run_dir", help="run directory, or a model file written by rnnlab export")
    s.add_argument("--prime", default=None, help="text to start from")
    s.add_argument("--length", type=_num(int, 1), default=500, help="characters to generate (default 500)")
    s.add_argument("--num", type=_num(int, 1), default=1, help="number of samples (default 1)")
    s.add_argument("--temperature", type=_num(float, 0.0), default=1.0, help="0 = greedy (default 1.0)")
    s.add_argument("--top-k", type=_num(int, 0), default=0, help="sample among the k likeliest, 0 = all")
    s.add_argument("--top-p", type=_num(float, 0.0, 1.0, lo_open=True), default=1.0,
                   help="sample from the nucleus: the fewest likeliest characters whose probabilities add up to at "
                        "least p, in (0, 1] (default 1 = all)")
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
