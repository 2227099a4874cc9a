"""The address of the ``cblas_?gemm`` of the OpenBLAS that NumPy uses, for compiled loops that
call it directly (:mod:`rnnlab.nn.timeloop`).

NumPy's ``matmul`` ends in that same function; calling it from a numba loop skips the Python
call, the argument checks and the GIL hand-off that each ``np.matmul`` costs at every time step.
The library is found through threadpoolctl (which lists the BLAS libraries loaded in the process)
and ctypes, without loading anything new::

    gemm_address(np.float32) -> (address of cblas_sgemm, integer width 32 | 64) or None

Only NumPy's own OpenBLAS is used: the one inside NumPy's installation (the wheels ship it in
``numpy.libs`` or ``numpy/.dylibs``), else, for a NumPy built against a system OpenBLAS, the only
OpenBLAS loaded in the process. Its symbols may have ``scipy_`` in front and ``64_``/``_64``
behind (the wheels' ILP64 build); the integers are 64-bit when ``openblas_get_config()`` reports
``USE64BITINT``. Anything else (NumPy on MKL, Accelerate or BLIS, several OpenBLAS libraries and
none of them NumPy's, a failed lookup) gives ``None``, and the layers keep their NumPy loop.
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


def _numpy_blas_name() -> str:
    """The BLAS NumPy was built against, as its build configuration names it ('' if unknown)."""
    try:
        return str(np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]).lower()
    except Exception:  # an older NumPy without mode=, or another layout of the dict
        return ""


def _numpys_openblas(controllers):
    """threadpoolctl's controller of the OpenBLAS NumPy uses, or None when it is not certain."""
    openblas = [c for c in controllers if c.internal_api == "openblas"]
    home = os.path.dirname(os.path.dirname(os.path.realpath(np.__file__)))  # site-packages
    for c in openblas:
        rel = os.path.relpath(os.path.realpath(c.filepath), home)
        if rel.split(os.sep)[0] in ("numpy", "numpy.libs"):
            return c
    if "openblas" in _numpy_blas_name() and len(openblas) == 1:
        return openblas[0]
    return None


@functools.lru_cache(maxsize=None)
def _find() -> dict:
    """``{dtype: (address, bits)}`` for float32 and float64 from NumPy's OpenBLAS, or ``{}``."""
    from threadpoolctl import ThreadpoolController

    ctl = _numpys_openblas(ThreadpoolController().lib_controllers)
    if ctl is None:
        return {}
    for prefix, suffix in itertools.product(_PREFIXES, _SUFFIXES):
        fns = {dt: getattr(ctl.dynlib, f"{prefix}{name}{suffix}", None) for dt, name in _NAMES.items()}
        config = getattr(ctl.dynlib, f"{prefix}openblas_get_config{suffix}", None)
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
