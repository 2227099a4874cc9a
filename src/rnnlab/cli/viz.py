"""``rnnlab visualize`` and ``rnnlab serve``: look inside a trained recurrent run.

Both hold BLAS at one thread: they run the model one sequence at a time (``B = 1``), whose GEMMs
are matrix-vector products too small to split, and threads that wait on each other cost far more
than they give (a 2-layer, 256-unit LSTM samples ~18x faster with one thread on a busy 2-core
machine; a report takes a third of the time)."""
from __future__ import annotations

import os

from .common import load_run, num as _num, say as _say


def _explorer(args):
    from ..viz.explore import Explorer

    run, cfg, data, vocab, model, meta = load_run(args.run_dir, args.checkpoint)
    return Explorer(model, vocab, cfg, data, ngram=args.ngram,
                    meta={"run": str(run.path), "checkpoint": args.checkpoint, "step": meta.get("step")})


def cmd_visualize(args) -> int:
    from ..data import read_text
    from ..io import atomic_write_text, human_bytes

    from ..lm.shards import blas_limit

    explorer = _explorer(args)
    text = read_text(args.text)
    with blas_limit(1):
        html, payload = explorer.report(text, chars=args.chars, seed=args.seed, warmup=args.warmup,
                                        max_mb=args.max_mb, text_file=os.path.basename(str(args.text)))
    atomic_write_text(args.out, html)
    m = payload["meta"]
    shown = m["end"] - m["start"]
    where = (f"{m['unit']} {m['start'] + 1:,}-{m['end']:,} of {m['total']:,} (a window; --chars, --seed)"
             if m["sampled"] else f"all {shown:,} {m['unit']}")
    _say(args, f"wrote {args.out} ({human_bytes(len(html.encode('utf-8')))}): {where}; "
               f"{m['stored_units']:,} of {m['all_units']:,} unit traces stored")
    if m["unknown_chars"]:
        _say(args, f"{m['unknown_chars']:,} characters outside the model's vocabulary were left out")
    ml = payload["mean_loss"]
    if ml.get("ngram") is not None:
        o = m["baseline"]["orders"]
        _say(args, f"loss (nats/char): RNN {ml['rnn']:.3f}, {o[1]}-gram {ml['ngram']:.3f}, bigram {ml['bigram']:.3f}"
                   f"{' (n-grams fitted on this text itself)' if m['baseline']['in_sample'] else ''}")
    _say(args, "units that track the text best (|r|):")
    for name in payload["present"]:
        best = payload["ranking"][name][:3]
        _say(args, f"  {name:14s} " + "  ".join(f"L{r['layer']} {r['q']} {r['unit']} (r={r['r']:+.2f})" for r in best))
    absent = [n for n in payload["properties"] if n not in payload["present"]]
    if absent:
        _say(args, f"  (not in this text: {', '.join(absent)})")
    return 0


def cmd_serve(args) -> int:
    from ..lm.shards import blas_limit
    from ..viz.serve import Limits, run

    limits = Limits(max_length=args.max_length, max_text=args.max_text, max_generations=args.max_generations)
    explorer = _explorer(args)
    with blas_limit(1):
        run(explorer, host=args.host, port=args.port, limits=limits, say=lambda s: _say(args, s))
    return 0


def _common(p):
    p.add_argument("run_dir", help="a run directory written by rnnlab train (rnn, lstm or gru)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--ngram", type=_num(int, 0, 12), default=5,
                   help="order of the Kneser-Ney n-gram baseline (also shows the bigram); 0 = none (default 5)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def register(sub) -> None:
    v = sub.add_parser("visualize", help="a self-contained HTML report of what the hidden units do on a text")
    _common(v)
    v.add_argument("--text", required=True, help="UTF-8 text file to look at")
    v.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    v.add_argument("--chars", type=_num(int, 1, 100_000), default=4000,
                   help="characters shown; a longer text is shown through a window (default 4000)")
    v.add_argument("--seed", type=_num(int, 0), default=0, help="where the window of a long text starts (default 0)")
    v.add_argument("--warmup", type=_num(int, 0), default=1000,
                   help="characters before the window the model reads first (default 1000)")
    v.add_argument("--max-mb", type=_num(float, 0.0), default=3.0,
                   help="budget in MB for stored activations (4 bits each); units beyond it are left out (default 3)")
    v.set_defaults(func=cmd_visualize)

    s = sub.add_parser("serve", help="a local web page: watch samples stream with their hidden states; reports")
    _common(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_num(int, 0, 65535), default=8000, help="port (default 8000; 0 = a free one)")
    s.add_argument("--max-length", type=_num(int, 1, 100_000), default=2000,
                   help="most characters one sample may ask for (default 2000)")
    s.add_argument("--max-text", type=_num(int, 1, 1_000_000), default=20_000,
                   help="most characters of a pasted text (default 20000)")
    s.add_argument("--max-generations", type=_num(int, 1, 64), default=4,
                   help="samples streaming at once; more get 429 (default 4)")
    s.set_defaults(func=cmd_serve)
