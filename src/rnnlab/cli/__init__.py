"""The ``rnnlab`` command.

One module per group of subcommands; each has ``register(sub)``, which adds its parsers, and may
name in ``PASSTHROUGH`` the subcommands that parse their own arguments. Adding a command means
adding its module to :data:`COMMAND_MODULES`.

Every problem a user can cause ends in one line on stderr (``rnnlab: ...``) and exit status 2;
nothing prints a traceback unless ``RNNLAB_DEBUG=1`` is set. A :class:`~rnnlab.errors.RnnlabWarning`
is one line too (``rnnlab: warning: ...``).
"""
from __future__ import annotations

import importlib
import os
import sys

from ..errors import RnnlabError, RnnlabWarning
from .common import EXIT_USER, Parser

COMMAND_MODULES = ("train", "runs", "score", "export", "sweep", "viz", "tools")
"""Modules of this package that define subcommands, in the order ``--help`` lists them."""


def _modules():
    return [importlib.import_module(f".{name}", __name__) for name in COMMAND_MODULES]


def build_parser() -> Parser:
    p = Parser(prog="rnnlab", description="Recurrent neural networks from first principles: train, sample and "
                                          "evaluate character-level language models; run experiments.")
    from .. import __version__

    p.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for m in _modules():
        m.register(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=None):
    if issubclass(category, RnnlabWarning):
        print(f"rnnlab: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import functools
    import warnings

    shown = warnings.showwarning
    warnings.showwarning = functools.partial(_show_warning, _default=shown)
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown


def _main(argv) -> int:
    args = None  # a MemoryError before the arguments are parsed still gets its one line
    try:
        passthrough = {name: f for m in _modules() for name, f in getattr(m, "PASSTHROUGH", {}).items()}
        parser = build_parser()
        if argv and argv[0] in passthrough:  # their own parsers take every argument
            import argparse

            args = argparse.Namespace(command=argv[0], rest=argv[1:], func=passthrough[argv[0]])
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
        sizes = [f"--{name.replace('_', '-')}" for name in ("batch", "hidden", "seq_len") if hasattr(args, name)]
        what = f"use a smaller {' or '.join(sizes)}" if sizes else "use a shorter text, or free memory"
        print(f"rnnlab: out of memory: {what}", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:  # a bug: say so in one line, keep the traceback for developers
        if os.environ.get("RNNLAB_DEBUG"):
            raise
        print(f"rnnlab: internal error ({type(exc).__name__}: {exc}); rerun with RNNLAB_DEBUG=1 for the traceback "
              "and report it", file=sys.stderr)
        return 1
