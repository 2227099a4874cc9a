r"""Finite-difference checks of hand-derived gradients.

Every backward pass in rnnlab is written by hand; this module compares it with central
differences of the loss, in float64:

.. math:: n_i = \frac{f(\theta + \epsilon e_i) - f(\theta - \epsilon e_i)}{2 \epsilon}
   \qquad (\text{truncation error } O(\epsilon^2))

and reports, per array, the **relative error**

.. math:: r(a, n) = \frac{\max_i |a_i - n_i|}{\max(\max_i |a_i| + \max_i |n_i|,\ \text{tiny})}

with ``tiny`` the smallest normal float64. Measuring the worst element against the largest
gradient of the *whole* array (not element by element) keeps entries whose true gradient is
zero or tiny from dominating through round-off. ``r`` lies in ``[0, 1]``; a correct float64
backward typically gives ``r < 1e-8`` with ``eps = 1e-6``; a wrong one ``r > 1e-3``.

Two entry points:

- :func:`gradcheck` — any scalar function ``f()`` that reads arrays which the checker perturbs in
  place;
- :func:`check_module` — a :class:`~rnnlab.nn.module.Module` plus a closure that runs forward,
  a scalar loss and (on request) backward; it checks every parameter and any extra inputs. It
  works for feed-forward layers (``forward(x) -> (y, cache)``) and recurrent ones
  (``forward(x, state) -> (y, state_n, cache)``) alike, because the closure does the calling.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import backend

_TINY = np.finfo(np.float64).tiny


def relative_error(a, b) -> float:
    """``max|a - b| / max(max|a| + max|b|, tiny)`` as a Python float (0 for empty arrays)."""
    xp = backend.array_module(a, b)
    a = xp.asarray(a, dtype=np.float64)
    b = xp.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_error: shapes {a.shape} and {b.shape} differ")
    if a.size == 0:
        return 0.0
    num = float(xp.abs(a - b).max())
    den = float(xp.abs(a).max()) + float(xp.abs(b).max())
    return num / max(den, _TINY)


def _pick_indices(size: int, max_checks: int | None, rng) -> np.ndarray:
    """Flat indices to check: all of them, or ``max_checks`` distinct ones drawn with ``rng``."""
    if max_checks is None or max_checks >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_checks, replace=False))


def numerical_gradient(f: Callable[[], object], array, eps: float = 1e-6,
                       indices=None) -> np.ndarray:
    """Central differences of ``f()`` with respect to ``array`` (perturbed in place, restored).

    Returns a float64 host array shaped like ``array`` (entries outside ``indices`` are 0).
    The divisor is the actual difference of the two perturbed values, which absorbs the
    rounding of ``x +- eps``. Each original value is restored by assignment, bit for bit.
    """
    if array.dtype != np.float64:
        raise TypeError(
            f"gradient checks need float64 arrays, got {array.dtype}: build the module with "
            "dtype=np.float64"
        )
    grad = np.zeros(array.shape, dtype=np.float64)
    flat = range(array.size) if indices is None else indices
    for i in flat:
        idx = np.unravel_index(int(i), array.shape)
        orig = array[idx].copy()  # a scalar (NumPy) or a detached 0-d array (CuPy)
        array[idx] = orig + eps
        x_plus = float(array[idx])
        f_plus = backend.to_float(f())
        array[idx] = orig - eps
        x_minus = float(array[idx])
        f_minus = backend.to_float(f())
        array[idx] = orig
        grad[idx] = (f_plus - f_minus) / (x_plus - x_minus)
    return grad


def gradcheck(
    f: Callable[[], object],
    arrays: dict,
    analytic: dict,
    eps: float = 1e-6,
    max_checks_per_array: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Compare ``analytic[name]`` with central differences of ``f`` w.r.t. ``arrays[name]``.

    Parameters
    ----------
    f : callable
        ``f()`` returns the scalar loss (float or 0-d array), reading the arrays in place.
    arrays : dict name -> float64 array
        The inputs to perturb; every one is restored exactly afterwards.
    analytic : dict name -> array
        The hand-derived gradients, same shapes (extra keys are ignored).
    eps : float
        Step of the central difference.
    max_checks_per_array : int, optional
        Check only this many randomly chosen elements of each array (all by default).
    rng : np.random.Generator, optional
        Chooses those elements; ``np.random.default_rng(0)`` when ``None``, so runs repeat.

    Returns
    -------
    dict name -> relative error :func:`relative_error` over the checked elements.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    out: dict[str, float] = {}
    for name, arr in arrays.items():
        if name not in analytic:
            raise KeyError(f"gradcheck: no analytic gradient for {name!r}")
        a = backend.to_numpy(analytic[name])
        if tuple(a.shape) != tuple(arr.shape):
            raise ValueError(f"gradcheck: {name}: analytic shape {a.shape} != array shape {arr.shape}")
        idx = _pick_indices(arr.size, max_checks_per_array, rng)
        num = numerical_gradient(f, arr, eps=eps, indices=idx)
        out[name] = relative_error(a.reshape(-1)[idx], num.reshape(-1)[idx])
    return out


def check_module(
    module,
    forward_loss_and_backward: Callable[[bool], tuple],
    inputs: dict | None = None,
    params: list[str] | None = None,
    eps: float = 1e-6,
    max_checks_per_array: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Gradient-check every parameter of ``module`` (and optional extra inputs).

    Parameters
    ----------
    module : Module
        Built with ``dtype=np.float64``.
    forward_loss_and_backward : callable ``(backward: bool) -> (loss, input_grads)``
        Runs the forward pass and a scalar loss. With ``backward=True`` it also runs the
        backward pass (which adds into ``module.grads``) and returns the gradients of the inputs
        as a dict keyed like ``inputs``; with ``False`` it may return ``(loss, None)``. A handy
        loss is ``sum(y * g)`` with a fixed random ``g``, whose ``dloss/dy`` is ``g``.
    inputs : dict name -> float64 array, optional
        Input arrays that the closure reads (``x``, an initial state, ...); checked too.
        Names must differ from the parameter names.
    params : list of str, optional
        Parameter names to check (all of ``module.params`` by default).
    eps, max_checks_per_array, rng
        As in :func:`gradcheck`.

    Returns
    -------
    dict name -> relative error, for the parameters and then the inputs.

    Example
    -------
    >>> g = rng.standard_normal((T, B, H))
    >>> def run(backward):
    ...     y, h_n, cache = rnn.forward(x, h0)
    ...     loss = (y * g).sum()
    ...     if not backward:
    ...         return loss, None
    ...     dx, dh0 = rnn.backward(g, None, cache)
    ...     return loss, {"x": dx, "h0": dh0}
    >>> errs = check_module(rnn, run, inputs={"x": x, "h0": h0})
    """
    inputs = dict(inputs or {})
    names = list(module.params) if params is None else list(params)
    clash = sorted(set(names) & set(inputs))
    if clash:
        raise ValueError(f"check_module: input names {clash} clash with parameter names")
    module.zero_grad()
    _, input_grads = forward_loss_and_backward(True)
    input_grads = input_grads or {}
    analytic = {k: np.array(backend.to_numpy(module.grads[k]), dtype=np.float64, copy=True) for k in names}
    for k in inputs:
        if k not in input_grads or input_grads[k] is None:
            raise KeyError(f"check_module: the closure returned no gradient for input {k!r}")
        analytic[k] = np.array(backend.to_numpy(input_grads[k]), dtype=np.float64, copy=True)
    arrays = {k: module.params[k] for k in names}
    arrays.update(inputs)

    def loss_only():
        return forward_loss_and_backward(False)[0]

    return gradcheck(loss_only, arrays, analytic, eps=eps,
                     max_checks_per_array=max_checks_per_array, rng=rng)
