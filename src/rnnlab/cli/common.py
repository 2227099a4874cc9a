"""What every ``rnnlab`` subcommand shares: the one-line argument parser, bounded number types,
quiet-aware printing and loading a trained run."""
from __future__ import annotations

import argparse
import math

from ..errors import RnnlabError

EXIT_USER = 2


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and raise :class:`RnnlabError`."""

    def error(self, message):
        raise RnnlabError(f"{message} (see '{self.prog} --help')")


def num(kind, lo=None, hi=None, lo_open=False):
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


def say(args, msg):
    """Print ``msg`` unless the command was given ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(msg, flush=True)


def load_run(path, which):
    """A finished run directory -> ``(run, cfg, data, vocab, model in eval mode, checkpoint meta)``."""
    from ..lm.rundir import RunDir
    from ..lm.trainer import load_model_weights, read_run
    from ..models import build_model

    run = RunDir(path)
    run.check_complete()
    cfg, data, vocab = read_run(run)
    import numpy as np  # checkpoints hold host arrays: a GPU-trained model loads on the CPU too

    model = build_model(cfg.model_config(vocab.size), rng=np.random.default_rng(0))
    meta = load_model_weights(model, run.find_checkpoint(which))
    model.eval()
    return run, cfg, data, vocab, model, meta

