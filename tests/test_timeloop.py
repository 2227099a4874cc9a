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
    out = {"y": y, "dx": dx, **{f"grad {k}": g for k, g in layer.grads.items()}}
    for name, s in (("state_n", state_n), ("dstate0", dstate0)):
        for i, a in enumerate(s if isinstance(s, tuple) else (s,)):
            out[f"{name}[{i}]"] = a
    for k, dirs in enumerate(cache["dh"]):
        for d, dh in enumerate(dirs):
            out[f"dh[{k}][{d}]"] = dh
    return out


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


def test_no_openblas_means_no_compiled_loops_and_the_layer_still_runs(monkeypatch):
    """MKL, Accelerate or BLIS: nothing to call, so the layers run their Python loop."""
    from threadpoolctl import ThreadpoolController

    class FakeMKL:
        internal_api, filepath, dynlib = "mkl", "/nowhere/libmkl_rt.so", None

    class FakeController(ThreadpoolController):
        def __init__(self):
            self.lib_controllers = [FakeMKL()]

    monkeypatch.setattr("threadpoolctl.ThreadpoolController", FakeController)
    assert blas._find.__wrapped__() == {}
    monkeypatch.setattr(blas, "gemm_address", lambda dtype: None)
    monkeypatch.setattr(timeloop, "_LOOPS", {})
    assert timeloop.loops_for(np.float32) is None and cells.sequence_loops(np, np.dtype(np.float32)) is None
    lstm = LSTM(3, 4, dtype=np.float32, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    y, _, cache = lstm.forward(x)
    dx, _ = lstm.backward(np.ones_like(y), None, cache)
    assert np.isfinite(y).all() and np.abs(y).max() > 0 and np.abs(dx).max() > 0


def test_a_failed_self_check_disables_the_loops(monkeypatch):
    monkeypatch.setattr(timeloop, "_LOOPS", {})
    monkeypatch.setattr(blas, "gemm_address", lambda dtype: (1234, 64))
    monkeypatch.setattr(timeloop, "_self_check", lambda addr, bits, dtype: False)
    assert timeloop.loops_for(np.float64) is None


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
