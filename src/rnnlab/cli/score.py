"""``rnnlab score``: the log-probability and surprisal of each character of a text."""
from __future__ import annotations

import json
import math
import sys

from ..errors import RnnlabError
from .common import load_run as _load_run


def cmd_score(args) -> int:
    from ..data import read_text
    from ..lm.score import score_text, summary

    if (args.text is None) == (args.file is None):
        raise RnnlabError("rnnlab score takes the text to score either as an argument or with --file FILE "
                          "(one of the two)")
    run, cfg, data, vocab, model, _ = _load_run(args.run_dir, args.checkpoint)
    text, what = (args.text, "the text") if args.file is None else (read_text(args.file), args.file)
    scored = score_text(model, vocab, text, lines=cfg.lines, what=what)
    total = summary(scored)
    out = sys.stdout
    if args.json:
        rows = [{"char": s.char, "logp": s.logp, "surprisal_bits": None if s.logp is None else -s.logp / math.log(2),
                 **({"line": s.line} if cfg.lines else {})} for s in scored]
        out.write(json.dumps({"chars": rows, **total}) + "\n")
        return 0
    out.write(f"{'pos':>6}  {'char':<7} {'log p (nats)':>12}  {'surprisal (bits)':>16}\n")
    for i, s in enumerate(scored, 1):
        shown = s.char if s.char == "<eos>" else repr(s.char)
        if s.logp is None:
            out.write(f"{i:>6}  {shown:<7} {'-':>12}  {'-':>16}   (no context)\n")
        else:
            out.write(f"{i:>6}  {shown:<7} {s.logp:>12.4f}  {-s.logp / math.log(2):>16.4f}\n")
    if total["scored"]:
        n = total["scored"]
        out.write(f"{n:,} character{'' if n == 1 else 's'} scored: {total['loss_nats']:.4f} nats/char, "
                  f"{total['bits_per_char']:.4f} bits/char, perplexity {total['perplexity']:.3f}\n")
    return 0


def _parser():
    from .common import Parser

    s = Parser(prog="rnnlab score", description="The log-probability and surprisal of each character of a text "
                                                "under a run's model: a table, or JSON.")
    s.add_argument("run_dir")
    s.add_argument("text", nargs="?", default=None, help="the text to score (or --file)")
    s.add_argument("--file", default=None, help="score this UTF-8 file instead")
    s.add_argument("--json", action="store_true", help="one JSON object: chars (char, logp, surprisal_bits) and "
                                                       "the means")
    s.add_argument("--checkpoint", choices=["best", "last"], default="best")
    return s


def _score_argv(args) -> int:
    # intermixed: the text may follow the options (`rnnlab score RUN --json "some text"`), which
    # a subcommand parser with an optional positional cannot take
    return cmd_score(_parser().parse_intermixed_args(args.rest))


def register(sub) -> None:
    s = sub.add_parser("score", help="log-probability and surprisal of each character of a text under a run's model",
                       add_help=False)  # parsed by _parser (see PASSTHROUGH)
    s.add_argument("rest", nargs="*")
    s.set_defaults(func=_score_argv)


PASSTHROUGH = {"score": _score_argv}
"""``score`` parses its arguments itself, intermixed."""
