"""The gradient checker itself: it must accept right gradients and catch wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

from rnnlab.gradcheck import check_module, gradcheck, numerical_gradient, relative_error
from rnnlab.nn.linear import Linear
from rnnlab.nn.module import Module


def _quadratic(seed=0):
    """f(x, A) = sum(sin(x) * (A @ x)) with its analytic gradients."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(5)
    A = rng.standard_normal((5, 5))

    def f():
        return float(np.sum(np.sin(x) * (A @ x)))

    def grads():
        Ax = A @ x
        dx = np.cos(x) * Ax + A.T @ np.sin(x)
        dA = np.outer(np.sin(x), x)
        return {"x": dx, "A": dA}

    return f, {"x": x, "A": A}, grads


def test_relative_error_definition():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 3.0])
    assert relative_error(a, b) == pytest.approx(1.0 / (2.0 + 3.0))
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.ones(2), -np.ones(2)) == pytest.approx(1.0)  # the maximum
    assert relative_error(np.empty(0), np.empty(0)) == 0.0
    with pytest.raises(ValueError):
        relative_error(np.zeros(2), np.zeros(3))


def test_accepts_right_gradient_and_restores_arrays():
    f, arrays, grads = _quadratic()
    before = {k: v.copy() for k, v in arrays.items()}
    errs = gradcheck(f, arrays, grads())
    assert set(errs) == {"x", "A"}
    assert max(errs.values()) < 1e-8
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], before[k])  # bit-for-bit restored


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda g: g * 1.01,  # 1% scale error
        lambda g: g.T.copy(),  # transposed (a classic)
        lambda g: np.where(np.arange(g.size).reshape(g.shape) == 3, g + 1e-3 * np.abs(g).max(), g),  # one entry
        lambda g: np.zeros_like(g),  # forgot to compute it
    ],
)
def test_detects_wrong_gradient(corrupt):
    f, arrays, grads = _quadratic(1)
    g = grads()
    g["A"] = corrupt(g["A"])
    errs = gradcheck(f, arrays, g)
    assert errs["x"] < 1e-8  # the right one still passes
    assert errs["A"] > 1e-5  # the wrong one is caught


def test_subset_of_elements():
    f, arrays, grads = _quadratic(2)
    g = grads()
    errs = gradcheck(f, arrays, g, max_checks_per_array=4, rng=np.random.default_rng(0))
    assert max(errs.values()) < 1e-8
    # a corrupted element is found when it is among the checked ones: check them all
    g["x"][2] += 1.0
    assert gradcheck(f, arrays, g, max_checks_per_array=5)["x"] > 1e-2
    # the numerical gradient leaves unchecked entries at zero
    num = numerical_gradient(f, arrays["x"], indices=[0, 4])
    assert num[1] == num[2] == num[3] == 0.0 and num[0] != 0.0


def test_rejects_float32_and_missing_names():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda: float(x.sum()), {"x": x}, {"x": np.ones(3)})
    y = np.ones(3)
    with pytest.raises(KeyError):
        gradcheck(lambda: float(y.sum()), {"y": y}, {})
    with pytest.raises(ValueError):
        gradcheck(lambda: float(y.sum()), {"y": y}, {"y": np.ones(4)})


class _Scale(Module):
    """y = w * x with a switchable bug in the backward pass."""

    def __init__(self, n, buggy=False):
        super().__init__()
        self.add_param("w", np.linspace(0.5, 1.5, n))
        self.buggy = buggy

    def forward(self, x):
        return self.params["w"] * x, x

    def backward(self, dy, x):
        self.grads["w"] += dy * x * (1.1 if self.buggy else 1.0)
        return dy * self.params["w"]


@pytest.mark.parametrize("buggy", [False, True])
def test_check_module_finds_a_buggy_backward(buggy):
    rng = np.random.default_rng(3)
    m = _Scale(4, buggy=buggy)
    x, g = rng.standard_normal(4), rng.standard_normal(4)

    def run(backward):
        y, cache = m.forward(x)
        loss = float(np.sum(np.tanh(y) * g))
        if not backward:
            return loss, None
        return loss, {"x": m.backward(g * (1 - np.tanh(y) ** 2), cache)}

    errs = check_module(m, run, inputs={"x": x})
    assert set(errs) == {"w", "x"}
    assert errs["x"] < 1e-8
    assert (errs["w"] > 1e-3) if buggy else (errs["w"] < 1e-8)


def test_check_module_zeroes_grads_first_and_checks_a_linear():
    rng = np.random.default_rng(4)
    lin = Linear(3, 2, dtype=np.float64, rng=rng)
    lin.grads["weight"] += 100.0  # stale gradient from an earlier step must not leak in
    x, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))

    def run(backward):
        y, cache = lin.forward(x)
        loss = float((y * g).sum())
        return (loss, {"x": lin.backward(g, cache)}) if backward else (loss, None)

    errs = check_module(lin, run, inputs={"x": x})
    assert max(errs.values()) < 1e-8
    with pytest.raises(ValueError, match="clash"):
        check_module(lin, run, inputs={"weight": x})
    with pytest.raises(KeyError, match="no gradient"):
        check_module(lin, lambda backward: (run(False)[0], {}), inputs={"x": x})
