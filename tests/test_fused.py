"""The speed paths agree with the plain ones: numba kernels vs NumPy ufunc kernels
(``RNNLAB_NO_NUMBA=1``), the fused embedding input vs a dense input, the workspace pool, the
fused loss / scatter / Adam, lazy imports, and the benchmark's own plumbing."""
from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest

from rnnlab.models.recurrent_lm import RecurrentLM
from rnnlab.nn import cells, workspace
from rnnlab.nn.embedding import Embedding, scatter_add_rows
from rnnlab.nn.linear import Linear
from rnnlab.nn.losses import softmax_cross_entropy
from rnnlab.nn.recurrent import GRU, LSTM, RNN
from rnnlab.optim import make_optimizer

OURS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
HAVE_NUMBA = cells.numba_enabled()
needs_numba = pytest.mark.skipif(not HAVE_NUMBA,
                                 reason="numba cannot be loaded here (a dependency of rnnlab: pip install numba)")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)) if a.size else 0.0


def _run_layer(cell, cfg, dtype, seed):
    """Forward + backward of a fresh layer on fixed data; every output and gradient, copied."""
    rng = np.random.default_rng(seed)
    kw = dict(num_layers=cfg["L"], bias=cfg["bias"], batch_first=cfg["bf"], bidirectional=cfg["bidir"],
              dtype=dtype, rng=np.random.default_rng(seed + 1))
    if cell == "rnn":
        kw["nonlinearity"] = cfg["act"]
    layer = OURS[cell](cfg["I"], cfg["H"], **kw)
    T, B = cfg["T"], cfg["B"]
    x = rng.standard_normal((B, T, cfg["I"]) if cfg["bf"] else (T, B, cfg["I"])).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B) if cfg["lengths"] else None
    LD = cfg["L"] * (2 if cfg["bidir"] else 1)
    s = [rng.standard_normal((LD, B, cfg["H"])).astype(dtype) for _ in range(2 if cell == "lstm" else 1)]
    state = tuple(s) if cell == "lstm" else s[0]
    y, sn, cache = layer.forward(x, state, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dsn = tuple(rng.standard_normal(a.shape).astype(dtype) for a in (sn if cell == "lstm" else [sn]))
    dx, ds0 = layer.backward(dy, dsn if cell == "lstm" else dsn[0], cache)
    out = {"y": y.copy(), "dx": dx.copy()}
    for i, a in enumerate(sn if cell == "lstm" else [sn]):
        out[f"sn{i}"] = a.copy()
    for i, a in enumerate(ds0 if cell == "lstm" else [ds0]):
        out[f"ds0_{i}"] = a.copy()
    for k, v in layer.grads.items():
        out["grad:" + k] = v.copy()
    out["dh"] = np.concatenate([d.reshape(-1) for row in cache["dh"] for d in row])
    return out


def _config(rng, cell):
    return dict(I=int(rng.integers(1, 7)), H=int(rng.integers(1, 9)), L=int(rng.integers(1, 3)),
                T=int(rng.integers(1, 12)), B=int(rng.integers(1, 6)), bias=bool(rng.random() < 0.8),
                bf=bool(rng.random() < 0.3), bidir=bool(rng.random() < 0.4), lengths=bool(rng.random() < 0.5),
                act="relu" if (cell == "rnn" and rng.random() < 0.4) else "tanh")


# ----------------------------------------------------------------------------- kernel dispatch
def test_kernels_for_dispatch(monkeypatch):
    if HAVE_NUMBA:
        assert cells.kernels_for(np, np.float32).name == "numba"
        assert cells.kernels_for(np, np.float64).name == "numba"
    assert cells.kernels_for(np, np.float16).name == "ufunc"
    monkeypatch.setenv("RNNLAB_NO_NUMBA", "1")
    assert not cells.numba_enabled()
    k = cells.kernels_for(np, np.float32)
    assert k.name == "ufunc" and k.xp is np
    assert cells.fused_kernels(np, np.float32) is None


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@needs_numba
def test_numba_and_numpy_paths_agree(cell, dtype, monkeypatch):
    """Same layer, same data: the numba kernels and the NumPy ufunc kernels give the same
    outputs, states and gradients (float32 within the rational tanh's 3e-7)."""
    tol = 1e-12 if dtype == np.float64 else 2e-5
    rng = np.random.default_rng(zlib.crc32(f"{cell}-{np.dtype(dtype)}".encode()))  # its own draws per case
    for trial in range(8):
        cfg = _config(rng, cell)
        monkeypatch.delenv("RNNLAB_NO_NUMBA", raising=False)
        fast = _run_layer(cell, cfg, dtype, trial)
        monkeypatch.setenv("RNNLAB_NO_NUMBA", "1")
        slow = _run_layer(cell, cfg, dtype, trial)
        for key in slow:
            assert fast[key].dtype == slow[key].dtype == dtype
            assert rel(fast[key], slow[key]) < tol, (cfg, key)


@needs_numba
def test_numba_kernels_propagate_nan():
    """Fast-math without nnan: a NaN input reaches the output instead of being clamped away."""
    for cell in ("rnn", "lstm", "gru"):
        layer = OURS[cell](3, 4, rng=np.random.default_rng(0))
        x = np.ones((2, 2, 3), np.float32)
        x[0, 1, 0] = np.nan
        y, _, _ = layer.forward(x)
        assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, 0]).all()


@needs_numba
def test_fast_tanh_and_exp_are_accurate():
    from rnnlab.nn import fused

    x = np.linspace(-20, 20, 100001).astype(np.float32)
    h = np.empty((1, x.size), np.float32)
    fused.rnn_forward(x[None, :], np.zeros((1, x.size), np.float32), None, False, h)
    assert np.max(np.abs(h[0].astype(np.float64) - np.tanh(x.astype(np.float64)))) < 5e-7
    z = np.stack([np.zeros_like(x), -np.abs(x)], axis=1)  # rows (0, -|x|): softmax = (1, e^-|x|)/(1+e^-|x|)
    grad = np.empty_like(z)
    fused.softmax_xent(z, np.zeros(x.size, np.int64), np.ones(x.size, np.float32), grad)
    e = np.exp(-np.abs(x.astype(np.float64)))
    np.testing.assert_allclose(grad[:, 1], e / (1 + e), rtol=1e-6, atol=1e-30)


# ----------------------------------------------------------------------------- fused embedding input
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("onehot", [False, True])
def test_token_id_input_equals_dense_input(cell, onehot):
    rng = np.random.default_rng(3 + onehot)
    for trial in range(6):
        V, I, H, T, B = 7, 5, 4, 6, 3
        if onehot:
            I = V
        bf, bidir, bias = trial % 3 == 1, trial % 2 == 1, trial != 4
        layer = OURS[cell](I, H, num_layers=1 + trial % 2, bidirectional=bidir, batch_first=bf, bias=bias,
                           dtype=np.float64, rng=np.random.default_rng(trial))
        ids = rng.integers(0, V, (B, T) if bf else (T, B))
        table = None if onehot else rng.standard_normal((V, I))
        x = np.eye(V)[ids] if onehot else table[ids]
        lengths = rng.integers(1, T + 1, B) if trial % 2 else None
        y1, s1, c1 = layer.forward(x, lengths=lengths)
        y1 = y1.copy()
        dy = rng.standard_normal(y1.shape)
        layer.zero_grad()
        dx, _ = layer.backward(dy, None, c1)
        g1 = {k: v.copy() for k, v in layer.grads.items()}
        y2, s2, c2 = layer.forward(ids, lengths=lengths, embedding="onehot" if onehot else table)
        layer.zero_grad()
        dtable, _ = layer.backward(dy, None, c2)
        assert rel(y2, y1) < 1e-12
        for k in g1:
            assert rel(layer.grads[k], g1[k]) < 1e-12, k
        if onehot:
            assert dtable is None
        else:
            want = np.zeros((V, I))
            np.add.at(want, ids.reshape(-1), dx.reshape(-1, I))
            assert rel(dtable, want) < 1e-12


def test_token_id_input_errors():
    layer = LSTM(4, 3, rng=np.random.default_rng(0))
    from rnnlab.errors import RnnlabError

    with pytest.raises(RnnlabError, match="out of range"):
        layer.forward(np.array([[0, 9]]), embedding=np.zeros((5, 4), np.float32))
    with pytest.raises(TypeError):
        layer.forward(np.zeros((2, 2), np.float32), embedding=np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        layer.forward(np.zeros((2, 2), np.int64), embedding=np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError):
        layer.forward(np.zeros((2, 2), np.int64), embedding="twohot")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("embed", [0, 5])
def test_recurrent_lm_equals_the_unfused_composition(cell, embed):
    """RecurrentLM (lookup fused into the first layer) = Embedding/one-hot -> layer -> Linear."""
    V, H, T, B = 9, 6, 7, 3
    model = RecurrentLM(V, cell, hidden=H, layers=2, embed=embed, dtype=np.float64, rng=np.random.default_rng(1))
    rng = np.random.default_rng(2)
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    logits, _, cache = model.forward(x)
    _, dlogits = softmax_cross_entropy(logits, y)
    model.zero_grad()
    model.backward(dlogits, cache)
    got = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    e = model.embed.forward(x)[0] if embed else np.eye(V)[x]
    h, _, rc = model.rnn.forward(e)
    lg, lc = model.out.forward(h)
    assert rel(lg, logits) < 1e-12
    dh = model.out.backward(dlogits, lc)
    de, _ = model.rnn.backward(dh, None, rc)
    if embed:
        model.embed.backward(de, x)
    for k in got:
        assert rel(got[k], model.grads[k]) < 1e-12, k


# ----------------------------------------------------------------------------- loss, scatter, Adam
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@needs_numba
def test_fused_cross_entropy_matches_numpy_path(dtype, reduction, monkeypatch):
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((4, 6, 11)) * 4).astype(dtype)
    targets = rng.integers(-1, 11, (4, 6))
    mask = (rng.random((4, 6)) < 0.8).astype(dtype)
    for kw in (dict(), dict(mask=mask), dict(ignore_index=None, targets=np.abs(targets))):
        t = kw.pop("targets", targets)
        fast = softmax_cross_entropy(logits, t, reduction=reduction, **kw)
        monkeypatch.setenv("RNNLAB_NO_NUMBA", "1")
        slow = softmax_cross_entropy(logits, t, reduction=reduction, **kw)
        monkeypatch.delenv("RNNLAB_NO_NUMBA")
        tol = 1e-12 if dtype == np.float64 else 1e-5
        assert fast[0].dtype == slow[0].dtype == dtype and fast[1].dtype == dtype
        assert rel(fast[0], slow[0]) < tol and rel(fast[1], slow[1]) < tol
        assert not fast[1][t == -1].any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@needs_numba
def test_fused_scatter_equals_add_at_exactly(dtype):
    rng = np.random.default_rng(6)
    idx = rng.integers(0, 5, 300)
    rows = rng.standard_normal((300, 7)).astype(dtype)
    start = rng.standard_normal((5, 7)).astype(dtype)
    want = start.copy()
    np.add.at(want, idx, rows)
    got = scatter_add_rows(start.copy(), idx, rows)
    np.testing.assert_array_equal(got, want)  # same order of additions
    with pytest.raises(IndexError):
        scatter_add_rows(start.copy(), np.array([0, 5]), rows[:2])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kw", [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)),
    ("adam", dict(lr=0.01, amsgrad=True, eps=1e-6)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.5, 0.9))),
])
@needs_numba
def test_fused_adam_is_bit_identical_to_numpy_path(dtype, name, kw, monkeypatch):
    rng = np.random.default_rng(7)
    init = {"a": rng.standard_normal((5, 4)), "b": rng.standard_normal(6)}
    grads_seq = [{k: rng.standard_normal(v.shape) for k, v in init.items()} for _ in range(12)]

    def run(no_numba):
        if no_numba:
            monkeypatch.setenv("RNNLAB_NO_NUMBA", "1")
        else:
            monkeypatch.delenv("RNNLAB_NO_NUMBA", raising=False)
        params = {k: v.astype(dtype) for k, v in init.items()}
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        opt = make_optimizer(name, params, grads, **kw)
        for g in grads_seq:
            for k in grads:
                grads[k][...] = g[k]
            opt.step()
        return params, opt.slots

    p1, s1 = run(False)
    p2, s2 = run(True)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])
        for slot in s1:
            np.testing.assert_array_equal(s1[slot][k], s2[slot][k])


# ----------------------------------------------------------------------------- workspace pool
def test_workspace_reuses_only_unreferenced_arrays():
    workspace.release()
    shape = (64, 1024)  # 256 KiB of float32: pooled
    a = workspace.empty(shape, np.float32)
    addr = a.ctypes.data
    b = workspace.empty(shape, np.float32)
    assert b.ctypes.data != addr  # a is still held
    view = a[3:]
    del a
    c = workspace.empty(shape, np.float32)
    assert c.ctypes.data not in (addr, b.ctypes.data)  # a view keeps a alive
    del view
    d = workspace.empty(shape, np.float32)
    assert d.ctypes.data == addr  # now free: reused
    small = workspace.empty((3,), np.float32)
    assert small.shape == (3,) and workspace.pooled_bytes() == 3 * 64 * 1024 * 4
    del b, c, d
    workspace.release()
    assert workspace.pooled_bytes() == 0


def test_layers_do_not_hand_out_arrays_the_caller_holds():
    """Two forwards without dropping the first result: the first stays intact."""
    layer = LSTM(8, 64, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((50, 32, 8)).astype(np.float32)
    y1, _, c1 = layer.forward(x)
    keep = y1.copy()
    y2, _, c2 = layer.forward(x[::-1].copy())
    np.testing.assert_array_equal(y1, keep)
    assert not np.shares_memory(y1, y2)
    lin = Linear(64, 65, rng=np.random.default_rng(2))
    o1, _ = lin.forward(y1)
    o1c = o1.copy()
    lin.forward(y2)
    np.testing.assert_array_equal(o1, o1c)
    emb = Embedding(10, 128, rng=np.random.default_rng(3))
    e1, _ = emb.forward(np.arange(10).repeat(60).reshape(60, 10))
    e1c = e1.copy()
    emb.forward(np.zeros((60, 10), np.int64))
    np.testing.assert_array_equal(e1, e1c)


# ----------------------------------------------------------------------------- imports, benchmark
def test_import_rnnlab_leaves_the_heavy_libraries_alone():
    """``import rnnlab`` (and its engine modules) stays light: numba is imported on the first
    kernel call only, matplotlib when a plot is drawn, torch and CuPy never unless asked for. The
    import time itself is measured by the benchmark (docs/benchmarks.md)."""
    heavy = ("numba", "matplotlib", "torch", "cupy", "threadpoolctl")
    code = ("import sys; import rnnlab, rnnlab.models, rnnlab.optim, rnnlab.nn, rnnlab.lm.trainer; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == []


def test_bench_flop_counts():
    from rnnlab import bench

    # one RNN layer, B=T=1, H=2, E=3, V=65: forward 2*2*(3+2), backward 2*2*(2*3+2*2), read-out 6*2*65
    assert bench.model_flops("rnn", 1, 1, 1, 2, 3) == 2 * 2 * 5 + 2 * 2 * 10 + 6 * 2 * 65
    # one-hot input: no input gradient for the first layer
    assert bench.model_flops("lstm", 1, 1, 1, 2, 0) == 2 * 8 * (65 + 2) + 2 * 8 * (65 + 4) + 6 * 2 * 65
    assert bench.executed_flops("lstm", 1, 1, 1, 2, 0) == bench.model_flops("lstm", 1, 1, 1, 2, 0) - 2 * 8 * 65 * 2


def test_bench_runs_end_to_end(tmp_path):
    pytest.importorskip("torch")
    from rnnlab import bench

    md, js = tmp_path / "b.md", tmp_path / "b.json"
    rc = bench.main(["--cells", "gru", "--layers", "1", "--threads", "1", "--configs", "D", "--steps", "1",
                     "--warmup", "0", "--no-forced", "--no-memory", "--markdown", str(md), "--json", str(js)])
    assert rc == 0
    text = md.read_text()
    assert "| gru | 1 | D | 1 |" in text and "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset" in text
