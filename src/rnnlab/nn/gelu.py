r"""GELU (Hendrycks & Gimpel 2016) in the tanh approximation that GPT-2 and nanoGPT use
(``torch.nn.functional.gelu(x, approximate="tanh")``), with its derivative.

::

    u  = sqrt(2/pi) (x + 0.044715 x^3)
    th = tanh(u)
    y  = x (1 + th) / 2

    dy/dx = (1 + th) / 2 + x (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2

The exact GELU, ``x Phi(x)`` with the normal CDF, needs ``erf``, which NumPy lacks; the
approximation differs from it by less than 5e-4 everywhere (about 1e-3 relative), and the
tests compare against PyTorch's tanh variant.
"""
from __future__ import annotations

import math

from .. import backend
from .cells import compiled_module
from .module import Module

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


class GELU(Module):
    """Parameter-free ``y = gelu(x)`` (tanh form). ``forward(x) -> (y, cache = (x, th))``,
    ``backward(dy, cache) -> dx``. Shapes: any, element-wise."""

    def forward(self, x):
        xp = backend.array_module(x)
        fk = compiled_module(xp, x.dtype, "fused_transformer")
        if fk is not None and x.flags.c_contiguous:  # the same formula in one pass (numba)
            x2 = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)  # (N, C)
            y, th = xp.empty_like(x), xp.empty_like(x)
            k, a, _ = fk.gelu_constants(x.dtype)
            fk.gelu_forward(x2, y.reshape(x2.shape), th.reshape(x2.shape), k, a)
            return y, (x, th)
        c = x.dtype.type
        x2 = x * x
        th = x2 * c(_A)
        th += 1
        th *= x
        th *= c(_K)
        xp.tanh(th, out=th)  # tanh(sqrt(2/pi) (x + a x^3))
        y = th + 1
        y *= x
        y *= c(0.5)
        return y, (x, th)

    def backward(self, dy, cache):
        x, th = cache
        xp = backend.array_module(dy)
        fk = compiled_module(xp, x.dtype, "fused_transformer")
        if fk is not None and x.flags.c_contiguous and th.flags.c_contiguous and dy.dtype == x.dtype:
            x2 = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)  # (N, C)
            dx = xp.empty_like(x)
            k, _, a3 = fk.gelu_constants(x.dtype)
            fk.gelu_backward(x2, th.reshape(x2.shape), xp.ascontiguousarray(dy).reshape(x2.shape),
                             dx.reshape(x2.shape), k, a3)
            return dx
        c = x.dtype.type
        inner = x * x
        inner *= c(3 * _A)
        inner += 1
        inner *= c(_K)  # du/dx
        sech2 = th * th
        sech2 -= 1  # -(1 - th^2)
        inner *= sech2
        inner *= x
        dx = th + 1
        dx -= inner  # (1 + th) + x (1 - th^2) du/dx
        dx *= c(0.5)
        dx *= dy
        return dx
