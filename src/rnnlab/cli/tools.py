"""``rnnlab gradcheck``, ``compare``, ``bench`` and ``experiment``: checks, comparisons, benchmarks."""
from __future__ import annotations

from .common import num as _num

def cmd_gradcheck(args) -> int:
    import numpy as np

    from ..gradcheck import gradcheck
    from ..nn import GRU, LSTM, RNN

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

    from ..lm.compare import compare, parse_models, table_markdown
    from ..lm.config import TrainConfig
    from ..lm.corpus import corpus_for, load_text

    models = parse_models(args.models)
    base = TrainConfig(lines=args.lines, seed=args.seed, batch=args.batch or (64 if args.lines else 32),
                       seq_len=args.seq_len, lr=args.lr).validate()
    text, source = load_text(args.text)
    corpus = corpus_for(text, source, base)
    rows = compare(corpus, models, args.budget, Path(args.out), base, progress=False)
    print()
    print(table_markdown(rows, args.budget, corpus))
    print(f"table, CSV and plot of validation loss against time: {args.out}/compare.{{md,csv,png}}")
    return 0


def cmd_bench(args) -> int:
    from .. import bench

    return bench.main(args.rest)


def cmd_experiment(args) -> int:
    from .. import experiments

    return experiments.cli_main(args.rest)



def register(sub) -> None:
    g = sub.add_parser("gradcheck", help="check BPTT against finite differences on your machine")
    g.add_argument("--steps", type=_num(int, 1, 200), default=8, help="sequence length T (default 8)")
    g.add_argument("--seed", type=_num(int, 0), default=0)
    g.set_defaults(func=cmd_gradcheck)

    c = sub.add_parser("compare", help="train several model kinds under the same time budget; one table + plot")
    c.add_argument("text", nargs="?", default=None, help="UTF-8 text file (default: the built-in corpus)")
    c.add_argument("--models", default="bigram,mlp,cnn,bow,rnn,lstm,gru,mingru,minlstm,transformer",
                   help="comma-separated model kinds (default: all of them)")
    c.add_argument("--budget", type=_num(float, 1.0), default=60.0, help="seconds of training per model (default 60)")
    c.add_argument("--out", default="rnnlab-compare", help="output folder (one run directory per model)")
    c.add_argument("--lines", action="store_true", help="each non-empty line is one item")
    c.add_argument("--batch", type=_num(int, 1), default=None)
    c.add_argument("--seq-len", dest="seq_len", type=_num(int, 1), default=100)
    c.add_argument("--lr", type=_num(float, 0.0, lo_open=True), default=3e-3)
    c.add_argument("--seed", type=_num(int, 0), default=1337)
    c.set_defaults(func=cmd_compare)

    # these two parse their own arguments (see PASSTHROUGH)
    b = sub.add_parser("bench", help="training-step speed against PyTorch (see docs/benchmarks.md)", add_help=False)
    b.add_argument("rest", nargs="*")
    b.set_defaults(func=cmd_bench)
    x = sub.add_parser("experiment", help="RNN vs feed-forward experiments (see docs/experiments.md)", add_help=False)
    x.add_argument("rest", nargs="*")
    x.set_defaults(func=cmd_experiment)


PASSTHROUGH = {"bench": cmd_bench, "experiment": cmd_experiment}
"""Subcommands that take every argument after their name with a parser of their own."""
