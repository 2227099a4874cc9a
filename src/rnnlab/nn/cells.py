"""One timestep of each recurrent cell, forward and backward: pure kernels, no loop over time.

Every kernel reads and writes arrays that the caller owns (views into the loop's preallocated
``(T, B, ...)`` buffers), so the time loop in :mod:`rnnlab.nn.recurrent` allocates nothing per
step. The loop hands each forward kernel the step's input projection ``a = W_xh x_t`` (``(B,
G*H)``, a view of the whole-sequence GEMM), the step's recurrent GEMM ``hh = W_hh h_{t-1}`` and
the bias ``b_h``; the kernel adds them (``a = W_xh x_t + b_h + W_hh h_{t-1}``, the GRU keeps its
recurrent term apart, see below), activates and writes the gates over ``a``.

**Backends.** :func:`kernels_for` is the one dispatch point: it returns the kernel set for an
array module and dtype. NumPy float32/float64 arrays get the numba-compiled fused kernels of
:mod:`rnnlab.nn.fused` (one pass per step, compiled lazily on first use and cached on disk) unless
``RNNLAB_NO_NUMBA`` is set; numba is a dependency of rnnlab, and where it cannot be loaded (a
platform without wheels, a broken install) one warning says so and every NumPy array gets
:class:`UfuncKernels`, the same kernels written with ``xp`` ufuncs, as CuPy and other dtypes do.
Both sets have identical signatures and semantics; the layers call ``K.lstm_forward(...)`` and
never know which one runs.

Optional arguments: ``b`` (bias) and ``b_hn`` may be ``None`` (a layer without bias); ``dy``
may be ``None`` (no gradient from the outputs); ``m (B,)`` is the row mask of a padded batch
(1.0 on real steps, 0.0 on padding) or ``None``. On a padded row the backward kernels pass ``dh``
through unchanged into ``dh_out`` and write zero pre-activation gradients (the LSTM's ``dc``
stays as it is); the loop then carries ``dh`` past the step (see ``recurrent.py``).

Shape legend: ``B`` batch, ``H`` hidden size, ``G`` gates (RNN 1, LSTM 4, GRU 3).

Vanilla RNN::

    h_t = act(a_t)                                   act = tanh | relu
    da_t = dh_t * act'(h_t)                          tanh' = 1 - h^2,  relu' = [h > 0]

LSTM (gate order i, f, g, o as in PyTorch)::

    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);   g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;      h_t = o * tanh(c_t)

    dc   = dc_t(from t+1) + dh_t * o * (1 - tanh(c_t)^2)
    da_i = dc * g * i(1-i);   da_f = dc * c_{t-1} * f(1-f)
    da_g = dc * i * (1-g^2);  da_o = dh_t * tanh(c_t) * o(1-o);   dc_{t-1} = dc * f

GRU (gate order r, z, n as in PyTorch; ``b_hn`` sits inside the reset product)::

    r = sigmoid(ax_r + hh_r);  z = sigmoid(ax_z + hh_z)        hh = W_hh h_{t-1}  (no bias)
    n = tanh(ax_n + r * (hh_n + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

    dn = dh * (1-z);   dz = dh * (h_{t-1} - n);   dan = dn * (1 - n^2)
    dar = dan * (hh_n + b_hn) * r(1-r);   daz = dz * z(1-z);   dhh_n = dan * r
    dh_{t-1} = [dar, daz, dhh_n] W_hh + dh * z

The sigmoid is computed as ``0.5 * tanh(x / 2) + 0.5``: exact, free of overflow warnings, and one
transcendental per element.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from ..errors import RnnlabWarning

_NUMBA = None  # the fused kernel set once imported, False when numba is unavailable
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def numba_enabled() -> bool:
    """True when the numba kernels are in use for NumPy arrays: numba imports and the
    environment variable ``RNNLAB_NO_NUMBA`` is unset (or ``0``/empty). Importing numba happens
    here, on first use, never at ``import rnnlab``; if it fails, one :class:`RnnlabWarning` says
    so and the NumPy kernels run."""
    global _NUMBA
    if os.environ.get("RNNLAB_NO_NUMBA", "") not in ("", "0"):
        return False
    if _NUMBA is None:
        try:
            from . import fused
        except Exception as exc:  # not installed, or installed but unable to load (llvmlite, platform)
            _NUMBA = False
            warnings.warn(f"numba could not be loaded ({type(exc).__name__}: {exc}); training runs the NumPy "
                          "kernels, several times slower: pip install numba (RNNLAB_NO_NUMBA=1 silences this)",
                          RnnlabWarning, stacklevel=2)
        else:
            _NUMBA = fused.KERNELS
    return _NUMBA is not False


def fused_kernels(xp, dtype):
    """The numba kernel set (:mod:`rnnlab.nn.fused`) for NumPy float32/float64 arrays when
    :func:`numba_enabled`, else ``None``. Besides the step kernels it holds ``softmax_xent``,
    ``scatter_add_rows`` and ``adam_step``, which losses, Embedding and Adam use when given;
    without it they run their NumPy/CuPy code."""
    if xp is np and dtype in _FLOATS and numba_enabled():
        return _NUMBA
    return None


def compiled_module(xp, dtype, name: str):
    """The numba kernel module ``rnnlab.nn.<name>`` (e.g. ``fused_minrnn``) for NumPy
    float32/float64 arrays when :func:`fused_kernels` applies, else ``None``; imported (and so
    compiled) on first use, never at ``import rnnlab``."""
    if fused_kernels(xp, np.dtype(dtype)) is None:
        return None
    import importlib

    return importlib.import_module(f".{name}", __package__)


def sequence_loops(xp, dtype):
    """The compiled whole-sequence loops of :mod:`rnnlab.nn.timeloop` (GEMM and step kernel of
    every time step in one call without the GIL) for NumPy float32/float64 arrays when the numba
    kernels are in use and NumPy's OpenBLAS was found; else ``None``, and the layers loop over
    time in Python, calling :func:`kernels_for`'s kernels."""
    if fused_kernels(xp, dtype) is None:
        return None
    from . import timeloop  # numba, compiled on first use

    return timeloop.loops_for(dtype)


def loop_settings(gemm: str = "blas", team: int = 1):
    """A context manager under which this thread's layers run their compiled loops with the
    per-step GEMM ``gemm`` ("blas" | "packed") and each time step split over ``team`` threads
    (:func:`rnnlab.nn.timeloop.settings`). The default (``"blas"``, 1) needs nothing and is a
    no-op context without numba; anything else needs the numba kernels."""
    if gemm == "blas" and team == 1:
        if not numba_enabled():
            return contextlib.nullcontext()
    elif not numba_enabled():
        raise ValueError(f"loop settings {gemm!r} x {team} need numba, which is off here "
                         "(RNNLAB_NO_NUMBA, or it could not be loaded)")
    from . import timeloop

    return timeloop.settings(gemm, team)


def matmul(xp, a, b, out, add: bool = False):
    """``out = a @ b`` (``add``: ``out += a @ b``) for the recurrent layers' whole-sequence GEMMs:
    by the packed kernel of :mod:`rnnlab.nn.packed`, rows split over the team, when this thread's
    loop settings (:func:`loop_settings`) say ``"packed"`` for NumPy float arrays; else
    ``xp.matmul`` (``add`` through a pooled temporary, as NumPy has no ``beta = 1``)."""
    if xp is np and out.dtype in _FLOATS and a.dtype == b.dtype == out.dtype and numba_enabled():
        from . import timeloop

        gemm, team = timeloop.current()
        if gemm == "packed":
            from . import packed

            return packed.matmul(a, b, out, add, team)
    if not add:
        return xp.matmul(a, b, out=out)
    from .workspace import empty

    tmp = empty((a.shape[0], b.shape[1]), xp.result_type(a, b), xp)
    xp.matmul(a, b, out=tmp)
    out += tmp
    return out


def kernels_for(xp, dtype):
    """The step kernels for arrays of module ``xp`` and ``dtype``: the numba set for NumPy
    float32/float64 (when :func:`numba_enabled`), the fused CUDA set of :mod:`rnnlab.nn.cuda` for
    CuPy float32/float64, else the ufunc set."""
    k = fused_kernels(xp, dtype)
    if k is not None:
        return k
    if xp is not np and getattr(xp, "__name__", "") == "cupy":
        from . import cuda  # fused CUDA kernels, compiled on first use

        k = cuda.kernels(xp, dtype)
        if k is not None:
            return k
    k = _UFUNC.get(xp)
    if k is None:
        k = _UFUNC[xp] = UfuncKernels(xp)
    return k


def sigmoid_(x, xp):
    """In-place logistic sigmoid of ``x``."""
    x *= 0.5
    xp.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


class UfuncKernels:
    """The step kernels written with ``xp`` ufuncs, for any array module (NumPy, CuPy).

    Same signatures and semantics as the numba kernels in :mod:`rnnlab.nn.fused`.
    """

    name = "ufunc"

    def __init__(self, xp):
        self.xp = xp

    # -------------------------------------------------------------------------- vanilla RNN
    def rnn_forward(self, a, hh, b, relu, h_out):
        """``h_out = act(a + hh + b)``; ``a`` may be ``h_out`` itself; ``hh`` may be used as
        scratch (its content is undefined afterwards)."""
        xp = self.xp
        xp.add(a, hh, out=h_out)
        if b is not None:
            h_out += b
        if relu:
            xp.maximum(h_out, 0, out=h_out)
        else:
            xp.tanh(h_out, out=h_out)

    def rnn_backward(self, dy, dnext, m, h, relu, dh_out, da_out):
        """``dh_out = dy m + dnext``; ``da_out = dh_out act'(h) m``."""
        xp = self.xp
        _dh(xp, dy, dnext, m, dh_out)
        if relu:
            xp.greater(h, 0, out=da_out)  # bool -> float cast
        else:
            xp.multiply(h, h, out=da_out)
            xp.subtract(1, da_out, out=da_out)
        da_out *= dh_out
        if m is not None:
            da_out *= m[:, None]

    # -------------------------------------------------------------------------- LSTM
    def lstm_forward(self, a, hh, b, c_prev, c_out, tc_out, h_out):
        """Gates ``i, f, g, o`` of ``a + hh + b`` written over ``a``; ``c_t``, ``tanh(c_t)``, ``h_t``."""
        xp = self.xp
        H = c_prev.shape[-1]
        a += hh
        if b is not None:
            a += b
        sigmoid_(a[:, : 2 * H], xp)  # i, f
        xp.tanh(a[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])  # g
        sigmoid_(a[:, 3 * H :], xp)  # o
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        xp.multiply(f, c_prev, out=c_out)
        c_out += i * g
        xp.tanh(c_out, out=tc_out)
        xp.multiply(o, tc_out, out=h_out)

    def lstm_backward(self, dy, dnext, m, dc, gates, c_prev, tc, dh_out, da_out):
        """``dh_out = dy m + dnext``; pre-activation gradient into ``da_out``; ``dc`` (the gradient
        reaching ``c_t`` from step t+1) becomes ``dL/dc_{t-1}`` in place (unchanged where ``m``
        is 0)."""
        xp = self.xp
        H = c_prev.shape[-1]
        dh = _dh(xp, dy, dnext, m, dh_out)
        if m is not None:
            dh = dh * m[:, None]
        i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        da_i, da_f, da_g, da_o = da_out[:, :H], da_out[:, H : 2 * H], da_out[:, 2 * H : 3 * H], da_out[:, 3 * H :]
        # da_o = dh * tanh(c) * o (1 - o)
        xp.multiply(dh, tc, out=da_o)
        da_o *= o * (1 - o)
        # dc_t = dc + dh * o * (1 - tanh(c)^2)
        dct = dc + dh * o * (1 - tc * tc)
        xp.multiply(dct, g, out=da_i)
        da_i *= i * (1 - i)
        xp.multiply(dct, c_prev, out=da_f)
        da_f *= f * (1 - f)
        xp.multiply(dct, i, out=da_g)
        da_g *= 1 - g * g
        dct *= f  # dc_{t-1}
        if m is None:
            dc[...] = dct
        else:
            xp.copyto(dc, dct, where=m[:, None] != 0)
            da_out *= m[:, None]

    # -------------------------------------------------------------------------- GRU
    def gru_forward(self, ax, hh, b, b_hn, h_prev, hn_out, h_out):
        """Gates ``r, z, n`` written over ``ax``; ``hh_n + b_hn`` into ``hn_out``; ``h_t`` into
        ``h_out``."""
        xp = self.xp
        H = h_prev.shape[-1]
        if b is not None:
            ax += b
        rz = ax[:, : 2 * H]
        rz += hh[:, : 2 * H]
        sigmoid_(rz, xp)
        r, z, n = ax[:, :H], ax[:, H : 2 * H], ax[:, 2 * H :]
        if b_hn is None:
            hn_out[...] = hh[:, 2 * H :]
        else:
            xp.add(hh[:, 2 * H :], b_hn, out=hn_out)
        n += r * hn_out
        xp.tanh(n, out=n)
        # h = n + z * (h_prev - n)
        xp.subtract(h_prev, n, out=h_out)
        h_out *= z
        h_out += n

    def gru_backward(self, dy, dnext, direct, m, gates, hn, h_prev, dh_out, dhh_out, dan_out):
        """``dh_out = dy m + dnext + direct``; ``dhh_out = [dar, daz, dhh_n]``, ``dan_out``;
        ``direct`` becomes ``dh m z``, the part of ``dh_{t-1}`` that bypasses ``W_hh``."""
        xp = self.xp
        H = h_prev.shape[-1]
        dh = _dh(xp, dy, dnext, m, dh_out)
        dh_out += direct
        if m is not None:
            dh = dh * m[:, None]
        r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
        dar, daz, dhn = dhh_out[:, :H], dhh_out[:, H : 2 * H], dhh_out[:, 2 * H :]
        # dan = dh * (1 - z) * (1 - n^2)
        xp.multiply(dh, 1 - z, out=dan_out)
        dan_out *= 1 - n * n
        # daz = dh * (h_prev - n) * z (1 - z)
        xp.subtract(h_prev, n, out=daz)
        daz *= dh
        daz *= z * (1 - z)
        # dar = dan * hn * r (1 - r);  dhh_n = dan * r
        xp.multiply(dan_out, hn, out=dar)
        dar *= r * (1 - r)
        xp.multiply(dan_out, r, out=dhn)
        xp.multiply(dh, z, out=direct)


def _dh(xp, dy, dnext, m, out):
    """``out = dy m + dnext`` (``dy``, ``m`` optional); returns ``out``."""
    if dy is None:
        out[...] = dnext
    elif m is None:
        xp.add(dy, dnext, out=out)
    else:
        xp.multiply(dy, m[:, None], out=out)
        out += dnext
    return out


_UFUNC: dict = {}
