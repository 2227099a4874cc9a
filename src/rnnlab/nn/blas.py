"""The address of the ``cblas_?gemm`` of the OpenBLAS that NumPy uses, for compiled loops that
call it directly (:mod:`rnnlab.nn.timeloop`).

NumPy's ``matmul`` ends in that same function; calling it from a numba loop skips the Python
call, the argument checks and the GIL hand-off that each ``np.matmul`` costs at every time step.
The library is found through threadpoolctl (which lists the BLAS libraries loaded in the process)
and ctypes, without loading anything new::

    gemm_address(np.float32) -> (address of cblas_sgemm, integer width 32 | 64) or None

Only OpenBLAS is looked up, in the builds NumPy ships or links: symbols with or without
``scipy_`` in front and ``64_``/``_64`` behind (the wheels' ILP64 build), and 64-bit integers when
``openblas_get_config()`` reports ``USE64BITINT``. Anything else (MKL, Accelerate, BLIS) gives
``None``, and the layers keep their NumPy loop.
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import os

import numpy as np

_PREFIXES = ("", "scipy_")
_SUFFIXES = ("", "64_", "_64")
_NAMES = {np.dtype(np.float32): "cblas_sgemm", np.dtype(np.float64): "cblas_dgemm"}


def _numpy_first(controllers):
    """The OpenBLAS controllers, the one inside NumPy's own installation first."""
    home = os.path.dirname(os.path.dirname(os.path.realpath(np.__file__)))
    ours = [c for c in controllers if os.path.realpath(c.filepath).startswith(home + os.sep)
            and "numpy" in os.path.relpath(os.path.realpath(c.filepath), home)]
    return ours + [c for c in controllers if c not in ours]


@functools.lru_cache(maxsize=None)
def _find() -> dict:
    """``{dtype: (address, bits)}`` for float32 and float64 from the first OpenBLAS that has both."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return {}
    libs = [c for c in ThreadpoolController().lib_controllers if c.internal_api == "openblas"]
    for ctl in _numpy_first(libs):
        lib = ctl.dynlib
        for prefix, suffix in itertools.product(_PREFIXES, _SUFFIXES):
            fns = {dt: getattr(lib, f"{prefix}{name}{suffix}", None) for dt, name in _NAMES.items()}
            config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
            if config is None or any(f is None for f in fns.values()):
                continue
            config.restype = ctypes.c_char_p
            bits = 64 if b"USE64BITINT" in (config() or b"") else 32
            return {dt: (ctypes.cast(f, ctypes.c_void_p).value, bits) for dt, f in fns.items()}
    return {}


def gemm_address(dtype) -> tuple[int, int] | None:
    """``(address, bits)`` of the row-major ``cblas_sgemm``/``cblas_dgemm`` for ``dtype``
    (float32/float64) of the OpenBLAS NumPy uses, ``bits`` its integer width; None when there is
    none to be found."""
    return _find().get(np.dtype(dtype))
