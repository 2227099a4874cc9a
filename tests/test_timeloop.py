"""The compiled loops over time (rnnlab.nn.timeloop) and the BLAS lookup behind them (rnnlab.nn.blas).

The layers run the compiled loops whenever they are available, so every other recurrent test
(finite differences, torch parity, padding) checks them too; these tests pin down that they are
the Python loop's exact twin and that the layers fall back to it when they are not available.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("numba")

from rnnlab.nn import blas, cells, timeloop  # noqa: E402
from rnnlab.nn.recurrent import GRU, LSTM, RNN  # noqa: E402
from layer_outputs import layer_outputs  # noqa: E402


def _openblas_loaded() -> bool:
    from threadpoolctl import threadpool_info

    return any(i["internal_api"] == "openblas" for i in threadpool_info())


needs_openblas = pytest.mark.skipif(not _openblas_loaded(), reason="NumPy does not use OpenBLAS here")
needs_loops = pytest.mark.skipif(not (_openblas_loaded() and cells.numba_enabled()),
                                 reason="no OpenBLAS, or the numba kernels are off (RNNLAB_NO_NUMBA)")


def _run(layer_cls, dtype, *, bidir, lengths, bias, dy_given, kw):
    """Forward and backward of a 2-layer stack with given initial states; every output."""
    rng = np.random.default_rng(1)
    layer = layer_cls(5, 6, num_layers=2, bidirectional=bidir, bias=bias, dtype=dtype,
                      rng=np.random.default_rng(0), **kw)
    T, B, LD = 7, 4, 2 * (2 if bidir else 1)
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    h0 = rng.standard_normal((LD, B, 6)).astype(dtype)
    state = (h0, rng.standard_normal((LD, B, 6)).astype(dtype)) if layer_cls is LSTM else h0
    y, state_n, cache = layer.forward(x, state, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(dtype) if dy_given else None
    dstate = tuple(np.ones_like(s) for s in state_n) if layer_cls is LSTM else np.ones_like(state_n)
    dx, dstate0 = layer.backward(dy, dstate, cache)
    return layer_outputs(layer, y, dx, state_n, dstate0, cache)


CASES = [
    (RNN, {}), (RNN, {"nonlinearity": "relu"}), (LSTM, {}), (GRU, {}),
]


@needs_loops
@pytest.mark.parametrize("layer_cls, kw", CASES, ids=["rnn", "rnn-relu", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidir, lengths, bias, dy_given", [
    (False, None, True, True),
    (True, None, True, True),
    (True, np.array([7, 3, 0, 5]), True, True),
    (False, np.array([2, 7, 7, 1]), False, True),
    (True, None, False, False),
])
def test_compiled_loops_equal_the_python_loop_bit_for_bit(layer_cls, kw, dtype, bidir, lengths, bias, dy_given,
                                                         monkeypatch):
    assert cells.sequence_loops(np, np.dtype(dtype)) is not None  # the layers do use them here
    args = dict(bidir=bidir, lengths=lengths, bias=bias, dy_given=dy_given, kw=kw)
    compiled = _run(layer_cls, dtype, **args)
    monkeypatch.setattr(cells, "sequence_loops", lambda xp, dt: None)
    python = _run(layer_cls, dtype, **args)
    assert compiled.keys() == python.keys()
    for name in compiled:
        assert compiled[name].dtype == dtype, name
        np.testing.assert_array_equal(compiled[name], python[name], err_msg=name)


@needs_openblas
def test_blas_lookup_finds_numpys_openblas():
    for dtype in (np.float32, np.float64):
        addr, bits = blas.gemm_address(dtype)
        assert addr > 0 and bits in (32, 64)
    assert blas.gemm_address(np.float32) != blas.gemm_address(np.float64)
    assert blas.gemm_address(np.int32) is None and blas.gemm_address(np.float16) is None


class _FakeLib:
    def __init__(self, api, path):
        self.internal_api, self.filepath, self.dynlib = api, path, None


def test_only_numpys_own_openblas_is_chosen(monkeypatch):
    """The library inside NumPy's installation wins; a NumPy on another BLAS gets nothing, even
    with some other package's OpenBLAS loaded; a system OpenBLAS counts only when it is the one."""
    import os

    site = os.path.dirname(os.path.dirname(os.path.realpath(np.__file__)))
    wheel = _FakeLib("openblas", os.path.join(site, "numpy.libs", "libscipy_openblas64_-x.so"))
    scipys = _FakeLib("openblas", os.path.join(site, "scipy.libs", "libscipy_openblas-y.so"))
    system = _FakeLib("openblas", "/usr/lib/libopenblas.so.0")
    mkl = _FakeLib("mkl", "/usr/lib/libmkl_rt.so")
    pick = blas._numpys_openblas
    monkeypatch.setattr(blas, "_numpy_blas_name", lambda: "scipy-openblas")
    assert pick([scipys, wheel]) is wheel
    assert pick([mkl]) is None and pick([]) is None
    assert pick([system]) is system
    assert pick([system, scipys]) is None  # two candidates, neither in NumPy's folder: unsure
    monkeypatch.setattr(blas, "_numpy_blas_name", lambda: "mkl")
    assert pick([mkl, scipys]) is None


def test_without_numpys_openblas_the_layers_run_the_python_loop(monkeypatch):
    monkeypatch.setattr(blas, "gemm_address", lambda dtype: None)
    monkeypatch.setattr(timeloop, "_LOOPS", {})
    assert timeloop.loops_for(np.float32) is None and cells.sequence_loops(np, np.dtype(np.float32)) is None
    calls = []
    real = cells.kernels_for

    def counting(xp, dtype):  # the Python loop asks for the step kernels; the compiled one does not
        calls.append(dtype)
        return real(xp, dtype)

    monkeypatch.setattr(cells, "kernels_for", counting)
    lstm = LSTM(3, 4, dtype=np.float32, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    y, _, cache = lstm.forward(x)
    dx, _ = lstm.backward(np.ones_like(y), None, cache)
    assert calls and np.isfinite(y).all() and np.abs(dx).max() > 0


def test_a_lookup_that_raises_falls_back_with_one_warning(monkeypatch):
    def broken(dtype):
        raise OSError("no such symbol")

    monkeypatch.setattr(timeloop, "_LOOPS", {})
    monkeypatch.setattr(blas, "gemm_address", broken)
    with pytest.warns(RuntimeWarning, match="using the Python loop"):
        assert timeloop.loops_for(np.float32) is None
    assert timeloop.loops_for(np.float32) is None  # decided once: no second warning, no second try


@needs_loops
def test_mismatched_gemm_shapes_raise_instead_of_overrunning():
    loops = timeloop.loops_for(np.float32)
    T, B, H = 3, 2, 4
    A = np.zeros((T, B, 4 * H), np.float32)
    S, C = np.zeros((T + 1, B, H), np.float32), np.zeros((T + 1, B, H), np.float32)
    TC, tmp = np.zeros((T, B, H), np.float32), np.zeros((B, 4 * H), np.float32)
    with pytest.raises(ValueError, match="mismatched shapes"):
        loops.lstm_forward(A, S, C, TC, np.zeros((4 * H, H + 1), np.float32), None, None, False, tmp)


@needs_loops
@pytest.mark.parametrize("layer_cls", [RNN, LSTM, GRU])
@pytest.mark.parametrize("B", [1, 3])
def test_one_row_and_fortran_ordered_state_gradients(layer_cls, B, monkeypatch):
    """A state gradient in Fortran order is accepted like any other. With one row NumPy's matmul
    is a matrix-vector product, so there the two paths agree to rounding only."""
    H, T = 16, 6

    def run():
        layer = layer_cls(3, H, dtype=np.float64, rng=np.random.default_rng(0))
        x = np.random.default_rng(1).standard_normal((T, B, 3))
        y, state_n, cache = layer.forward(x)
        d = np.asfortranarray(np.random.default_rng(2).standard_normal((1, B, H)))
        assert B == 1 or not d.flags.c_contiguous
        dstate = (d, d) if layer_cls is LSTM else d
        dx, dstate0 = layer.backward(np.ones_like(y), dstate, cache)
        return [y, dx, layer.grads["W_hh_l0"].copy(), *(dstate0 if layer_cls is LSTM else [dstate0])]

    compiled = run()
    monkeypatch.setattr(cells, "sequence_loops", lambda xp, dt: None)
    for a, b in zip(compiled, run()):
        if B == 1:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        else:
            np.testing.assert_array_equal(a, b)


def _spy_on_self_check(monkeypatch):
    """Record each call of the real ``_self_check`` and its answer."""
    calls, real = [], timeloop._self_check

    def spy(addr, bits, dtype):
        calls.append((addr, bits, np.dtype(dtype), real(addr, bits, dtype)))
        return calls[-1][-1]

    monkeypatch.setattr(timeloop, "_self_check", spy)
    return calls


@needs_loops
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_real_lookup_passes_the_self_check_and_the_loops_compute(dtype, monkeypatch):
    """Nothing faked: loops_for finds NumPy's GEMM, runs the self-check on it (which passes), and
    the loops it returns compute a layer's forward pass as NumPy's matmul does."""
    monkeypatch.setattr(timeloop, "_LOOPS", {})  # undecided, as in a fresh process
    calls = _spy_on_self_check(monkeypatch)
    loops = timeloop.loops_for(dtype)
    assert isinstance(loops, timeloop.Loops)
    assert calls == [(*blas.gemm_address(dtype), np.dtype(dtype), True)]
    assert timeloop.loops_for(dtype) is loops and len(calls) == 1  # decided once
    T, B, H = 5, 3, 4
    rng = np.random.default_rng(0)
    W = rng.standard_normal((H, H)).astype(dtype)
    S = np.zeros((T + 1, B, H), dtype)
    S[0] = rng.standard_normal((B, H))
    x = rng.standard_normal((T, B, H)).astype(dtype)
    S[1:] = x  # the loop adds S[t] @ W^T to the input projection stored in S[t + 1]
    loops.rnn_forward(S, W, None, False, None, False, np.empty((B, H), dtype))
    h = S[0].astype(np.float64)
    for t in range(T):
        h = np.tanh(x[t] + h @ W.T.astype(np.float64))
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(S[t + 1], h, rtol=tol, atol=tol)


@needs_loops
def test_a_gemm_that_computes_wrongly_fails_the_real_self_check(monkeypatch):
    """The real failure path: hand loops_for the real float32 GEMM for float64 arrays (sgemm reads
    the doubles' bytes as floats, within the arrays' bounds, and computes nonsense). The real
    self-check catches it, and the layers keep the Python loop for float64."""
    sgemm, bits = blas.gemm_address(np.float32)
    assert not timeloop._self_check(sgemm, bits, np.float64)
    assert timeloop._self_check(*blas.gemm_address(np.float64), np.float64)
    monkeypatch.setattr(timeloop, "_LOOPS", {})
    monkeypatch.setattr(blas, "gemm_address", lambda dtype: (sgemm, bits))
    calls = _spy_on_self_check(monkeypatch)
    assert timeloop.loops_for(np.float64) is None
    assert calls == [(sgemm, bits, np.dtype(np.float64), False)]
    assert cells.sequence_loops(np, np.dtype(np.float64)) is None  # what the layers ask
    assert isinstance(timeloop.loops_for(np.float32), timeloop.Loops)  # float32's own GEMM passes


@needs_loops
def test_loops_run_in_parallel_threads_without_interference():
    """Each loop holds no GIL; two threads running separate layers at once get what each gets
    alone (what the batch split over threads relies on)."""
    def job(seed, out):
        layer = GRU(4, 8, num_layers=2, dtype=np.float32, rng=np.random.default_rng(seed))
        x = np.random.default_rng(seed + 10).standard_normal((30, 6, 4)).astype(np.float32)
        y, _, cache = layer.forward(x)
        dx, _ = layer.backward(np.ones_like(y), None, cache)
        out[seed] = (y, dx, layer.grads["W_hh_l0"].copy())

    alone, together = {}, {}
    for s in (0, 1):
        job(s, alone)
    threads = [threading.Thread(target=job, args=(s, together)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in (0, 1):
        for a, b in zip(alone[s], together[s]):
            np.testing.assert_array_equal(a, b)
