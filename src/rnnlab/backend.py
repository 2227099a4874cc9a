"""Array backend: NumPy on the CPU (default), CuPy on an NVIDIA GPU.

Every layer is written once against the NumPy API. Code that creates arrays calls
``backend.xp`` (the active module); code that computes on given arrays calls
:func:`array_module` on them, so it runs on whichever device its inputs live on.

>>> from rnnlab import backend
>>> backend.set_backend("cpu")   # or "cuda"
>>> backend.xp.zeros(3).dtype
dtype('float64')

Checkpoints always hold host (NumPy) arrays: :func:`to_numpy` and :func:`asarray` move data
between the host and the active device, so a model trained on the GPU samples on the CPU.
"""
from __future__ import annotations

import sys

import numpy as np

from .errors import RnnlabError

xp = np
"""The active array module (``numpy`` or ``cupy``)."""

device = "cpu"
"""The active device name: ``"cpu"`` or ``"cuda"``."""


def set_backend(name: str) -> None:
    """Choose the array backend once, before models are built.

    ``"cpu"`` selects NumPy; ``"cuda"`` selects CuPy and checks that a GPU answers. Raises
    :class:`RnnlabError` with what is missing when CuPy or a GPU is not there.
    """
    global xp, device
    if name == "cpu":
        xp, device = np, "cpu"
        return
    if name != "cuda":
        raise RnnlabError(f"unknown device {name!r}: use 'cpu' or 'cuda'")
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RnnlabError(
            "--device cuda needs CuPy, which is not installed: pip install 'rnnlab[gpu]' "
            f"on a machine with an NVIDIA GPU ({exc.__class__.__name__}: {exc})"
        ) from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RnnlabError(f"--device cuda: CuPy found no usable GPU ({exc})") from None
    if n < 1:  # pragma: no cover
        raise RnnlabError("--device cuda: CuPy found no GPU on this machine")
    xp, device = cupy, "cuda"


def array_module(*arrays):
    """The array module (numpy or cupy) that ``arrays`` live in; numpy for host arrays.

    CuPy is only consulted when it has already been imported, so the CPU path never imports it.
    """
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def asarray(a, dtype=None):
    """``a`` as an array of the active backend (copying host data to the GPU if needed)."""
    return xp.asarray(a, dtype=dtype)


def to_numpy(a) -> np.ndarray:
    """A host NumPy array of ``a`` (a copy from the GPU, the array itself on the CPU)."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    if get is not None:
        return get()
    return np.asarray(a)


def to_float(a) -> float:
    """A Python float from a 0-d array of either backend (one device sync on the GPU)."""
    return float(to_numpy(a))
