"""The options a user leaves out, chosen from the training text and the budget.

``rnnlab train TEXT --max-time S`` should give the best model the machine can train in ``S``
seconds on that text, without the user knowing what fits. The rule below fills in only the
options not given on the command line, prints what it chose, and the choices are saved in the
run's ``config.json`` like any other option, so ``--resume`` continues exactly.

The rule (recurrent models: rnn, lstm, gru)::

    N  = characters in the training split
    C  = characters the run will see:   steps x batch x seq_len          (a step budget)
                                         S x speed(model)                 (a time budget)
    e  = C / N                           epochs over the training text

    size     with --max-time, unless --layers or --hidden is given: 2 layers, and the widest
             hidden size in WIDTHS whose estimated speed still gives e >= MIN_EPOCHS (the
             narrowest if none does; with --max-steps too, e counts the limit reached first).
             Without a time budget, or on a GPU (the speed estimate is the CPU's): 2 x 256,
             the fixed default.
    dropout  unless given: 0 when the run sees its text fewer than DROPOUT_FREE_EPOCHS times;
             otherwise it grows with the logarithm of the epochs and the parameters per
             training character (a bigger model on less text needs more), capped at MAX_DROPOUT.
    seq_len  unless given (stream mode): 100, shortened for a small text so that one epoch
             holds at least MIN_BATCHES batches (never below 16).

``speed(model)`` is an estimate, not a measurement (a measurement at start-up would make the
choice depend on the machine's load at that moment): the training step's floating-point
operations per character (:func:`flops_per_char`) at :data:`FLOPS_PER_CORE` per usable core,
the rate the LSTM steps reach on the reference machine (docs/benchmarks.md). A faster machine
trains the chosen model for more epochs, a slower one for fewer; either way the choice is
printed and every part of it can be overridden.
"""
from __future__ import annotations

import math

WIDTHS = (128, 192, 256, 384, 512, 768, 1024)
"""Hidden sizes the size rule picks from (2 layers each)."""

MIN_EPOCHS = 8.0
"""The size rule's floor on the epochs a time budget must still allow."""

FLOPS_PER_CORE = 60e9
"""Floating-point operations per second one core sustains in an rnnlab training step (float32);
measured before the parallel plans (lm/plan.py): 2x384 LSTM at batch 32, 11.3k chars/s on 2 cores
= 2 x 63 GFLOP/s. With them the AVX-512 development machine runs that model at 15.7k chars/s
(2 x 89 GFLOP/s); the rule keeps the lower rate, so a slower machine (narrower vectors, a busy
one) still gets the epochs it counts on, and a faster one trains the chosen model for more epochs."""

MAX_CORES = 8
"""Cores beyond this are not counted on (the batch split stops paying)."""

DROPOUT_FREE_EPOCHS = 2.0
MAX_DROPOUT = 0.35
MIN_BATCHES = 8
"""A small text's epoch holds at least this many batches (the seq_len rule)."""

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def flops_per_char(cell: str, layers: int, hidden: int, embed: int, vocab: int) -> float:
    """Floating-point operations of one training step per character: forward 2, backward 4
    per multiply-add of the recurrent layers and the read-out (the embedding is a lookup)."""
    G, H = GATES[cell], hidden
    macs = H * vocab
    for k in range(layers):
        inp = (embed or vocab) if k == 0 else H
        macs += G * H * (inp + H)
    return 6.0 * macs


def recurrent_params(cell: str, layers: int, hidden: int, embed: int, vocab: int) -> int:
    G, H = GATES[cell], hidden
    n = vocab * embed + H * vocab + vocab
    for k in range(layers):
        inp = (embed or vocab) if k == 0 else H
        n += G * H * (inp + H + 1)
    return n


def estimated_speed(cell, layers, hidden, embed, vocab, cores) -> float:
    """Characters per second the rule expects (see the module docstring)."""
    rate = FLOPS_PER_CORE * max(1, min(cores, MAX_CORES))
    return rate / flops_per_char(cell, layers, hidden, embed, vocab)


def choose_dropout(epochs: float, params: int, chars: int) -> float:
    """Dropout for a run that sees its ``chars`` training characters ``epochs`` times with
    ``params`` parameters (see the module docstring); rounded to 0.05."""
    if epochs < DROPOUT_FREE_EPOCHS:
        return 0.0
    d = 0.1 * math.log2(epochs / DROPOUT_FREE_EPOCHS + 1) * min(2.0, max(0.5, params / max(chars, 1)) ** 0.5)
    return round(min(MAX_DROPOUT, d) * 20) / 20


def _amount(n: int) -> str:
    return f"{n / 1e6:.2g} M" if n >= 1e6 else f"{n / 1e3:.3g} k" if n >= 1e4 else f"{n:,}"


def apply_auto(cfg, given: set, corpus, cores: int | None = None) -> str:
    """Fill in ``cfg``'s options that are not in ``given`` (option names, e.g. ``"hidden"``) by the
    rule, in place; returns the line that says what was chosen (``""`` if nothing was)."""
    if cfg.model not in GATES:
        return ""
    if cores is None:
        from .shards import usable_cores

        cores = usable_cores()
    V = corpus.vocab.size
    N = max(1, corpus.split.char_counts[0])
    lines = corpus.mode == "lines"
    chosen = []
    if not lines and "seq_len" not in given:
        fit = N // (MIN_BATCHES * cfg.batch)
        seq = max(16, min(100, fit))
        if seq != cfg.seq_len:
            cfg.seq_len = seq
            chosen.append(f"seq-len {seq}")
    if lines:
        per_step = cfg.batch * (N / max(1, len(corpus.split.train)) + 1)
    else:
        per_step = cfg.batch * cfg.seq_len

    def epochs(hidden, layers):  # with both limits, the one reached first
        e = math.inf
        if cfg.max_time:
            e = estimated_speed(cfg.model, layers, hidden, cfg.embed, V, cores) * cfg.max_time / N
        steps = cfg.step_limit()
        if steps:
            e = min(e, steps * per_step / N)
        return e

    # the size rule's speed is the CPU's: on a GPU the sizes stay as given or default
    if cfg.max_time and not ({"layers", "hidden"} & given) and cfg.device != "cuda":
        fits = [h for h in WIDTHS if epochs(h, 2) >= MIN_EPOCHS]
        cfg.layers, cfg.hidden = 2, (fits[-1] if fits else WIDTHS[0])
        chosen.append(f"{cfg.layers}x{cfg.hidden} {cfg.model.upper()}")
    if "dropout" not in given:
        e = epochs(cfg.hidden, cfg.layers)
        cfg.dropout = choose_dropout(e, recurrent_params(cfg.model, cfg.layers, cfg.hidden, cfg.embed, V), N)
        if cfg.dropout or chosen:
            chosen.append(f"dropout {cfg.dropout:g}")
    if not chosen:
        return ""
    budget = f"{cfg.max_time:g} s" if cfg.max_time and not cfg.max_steps else f"{cfg.step_limit():,} steps"
    line = (f"auto: {', '.join(chosen)} for {_amount(N)} chars / {budget} "
            f"(~{epochs(cfg.hidden, cfg.layers):.1f} epochs; give any option to override it)")
    cfg.extra = {**cfg.extra, "auto": line}
    cfg.validate()
    return line
