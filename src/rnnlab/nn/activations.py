"""Element-wise nonlinearities, their derivatives, and an :class:`Activation` layer.

Every derivative here is written in terms of the activation's *output* ``y = f(x)``, which is what
a layer keeps in its cache anyway:

=============  ==========================  ====================================
name           ``y = f(x)``                ``f'(x)`` from ``y``
=============  ==========================  ====================================
``tanh``       ``tanh(x)``                 ``1 - y**2``
``sigmoid``    ``0.5 * (1 + tanh(x/2))``   ``y * (1 - y)``
``relu``       ``max(x, 0)``               ``1[y > 0]``  (0 at the kink)
``identity``   ``x``                       ``1``
=============  ==========================  ====================================

The sigmoid is computed through ``tanh`` because ``1 / (1 + exp(-x))`` overflows ``exp`` for
large negative ``x`` (a warning in NumPy, ``inf`` in float32); the identity
``sigmoid(x) = (1 + tanh(x/2)) / 2`` is exact and bounded for every finite ``x``. Its rounding
error is *absolute* (about one ulp of 1: ~1e-16 in float64, ~6e-8 in float32), so far in the
left tail, where the true value is below that, it returns 0 rather than a tiny positive number.
That is what gates need; a log-sigmoid loss would want a different formula.

:data:`ACTIVATIONS` maps a name to the pair ``(f, df)``; both take an optional ``out=`` array so
that recurrent cells can evaluate them into preallocated buffers::

    f, df = ACTIVATIONS["tanh"]
    h = f(z, out=h)               # forward
    dz = df(h, out=dz); dz *= dh  # backward: dL/dz = f'(z) * dL/dh
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from .. import backend
from ..errors import RnnlabError
from .module import Module


# -- forward functions -------------------------------------------------------------------------
def tanh(x, out=None):
    """``y = tanh(x)``, element-wise."""
    xp = backend.array_module(x)
    return xp.tanh(x, out=out)


def sigmoid(x, out=None):
    """``y = 1 / (1 + exp(-x))``, computed stably as ``0.5 * (1 + tanh(x / 2))``."""
    xp = backend.array_module(x)
    out = xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out += 1
    out *= 0.5
    return out


def relu(x, out=None):
    """``y = max(x, 0)``, element-wise."""
    xp = backend.array_module(x)
    return xp.maximum(x, 0, out=out)


def identity(x, out=None):
    """``y = x``; with ``out`` the values are copied into it, otherwise ``x`` itself is returned."""
    if out is None:
        return x
    out[...] = x
    return out


# -- derivatives, from the output y = f(x) ------------------------------------------------------
def tanh_grad(y, out=None):
    """``f'(x) = 1 - y**2`` for ``y = tanh(x)``."""
    xp = backend.array_module(y)
    out = xp.multiply(y, y, out=out)
    return xp.subtract(1, out, out=out)


def sigmoid_grad(y, out=None):
    """``f'(x) = y * (1 - y)`` for ``y = sigmoid(x)``."""
    xp = backend.array_module(y)
    out = xp.subtract(1, y, out=out)
    out *= y
    return out


def relu_grad(y, out=None):
    """``f'(x) = 1[x > 0] = 1[y > 0]`` for ``y = relu(x)`` (the subgradient 0 at ``x = 0``)."""
    xp = backend.array_module(y)
    if out is None:
        return (y > 0).astype(y.dtype)
    return xp.greater(y, 0, out=out)


def identity_grad(y, out=None):
    """``f'(x) = 1``."""
    xp = backend.array_module(y)
    if out is None:
        return xp.ones_like(y)
    out.fill(1)
    return out


class ActivationFns(NamedTuple):
    """``f(x, out=None) -> y`` and ``df(y, out=None) -> f'(x)`` (the derivative from the output)."""

    f: Callable
    df: Callable


ACTIVATIONS: dict[str, ActivationFns] = {
    "tanh": ActivationFns(tanh, tanh_grad),
    "sigmoid": ActivationFns(sigmoid, sigmoid_grad),
    "relu": ActivationFns(relu, relu_grad),
    "identity": ActivationFns(identity, identity_grad),
}
"""Name -> ``(f, df)``; ``df`` takes the *output* ``y = f(x)``. See the module docstring."""


def get_activation(name: str) -> ActivationFns:
    """The ``(f, df)`` pair for ``name``; :class:`RnnlabError` for an unknown name."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise RnnlabError(
            f"unknown activation {name!r}: use one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class Activation(Module):
    """A parameter-free layer ``y = f(x)`` applied element-wise.

    Parameters
    ----------
    name : {"tanh", "relu", "sigmoid", "identity"}

    Shapes: ``x (...)`` -> ``y (...)``, any shape. ``forward(x) -> (y, cache)`` with ``cache = y``;
    ``backward(dy, cache) -> dx = f'(x) * dy`` (a new array; for ``identity`` it is ``dy``).
    """

    def __init__(self, name: str = "tanh") -> None:
        super().__init__()
        self.name = name
        self.fns = get_activation(name)

    def forward(self, x):
        y = self.fns.f(x)
        return y, y

    def backward(self, dy, cache):
        if self.name == "identity":
            return dy
        dx = self.fns.df(cache)
        dx *= dy
        return dx

    def extra_repr(self) -> str:
        return repr(self.name)
