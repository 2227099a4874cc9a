"""Experiment ``compare``: every model kind under the same time budget (see :mod:`.context`)."""
from .context import run_compare as run

__all__ = ["run"]
