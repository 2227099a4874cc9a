"""minGRU and minLSTM: the scan, its adjoint, the layers in every mode, against PyTorch.

- the log-space parallel scan and the sequential scan equal a plain loop, forward and adjoint,
  including a negative initial state and a long sequence;
- every mode (compiled sequential scan, ufunc sequential scan, log-space scan, step by step)
  gives the same outputs and gradients;
- a PyTorch minGRU/minLSTM written step by step (autograd) agrees to 1e-9 in float64: outputs,
  final state, and the gradients of every parameter, the input and the initial state;
- central differences in float64 for every parameter and input;
- ``lengths``: zero outputs and a frozen state past a row's end, no gradient from padding;
- the fused token lookup (``embedding=``) equals looking the vectors up first.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import rnnlab.nn.minrnn as minrnn  # noqa: E402
from rnnlab.gradcheck import check_module  # noqa: E402
from rnnlab.nn.minrnn import MinGRU, MinLSTM  # noqa: E402
from rnnlab.nn.scan import log_scan, log_scan_adjoint, seq_scan, seq_scan_adjoint  # noqa: E402

CELLS = [MinGRU, MinLSTM]
MODES = [("scan", "auto"), ("scan", "log"), ("step", "auto")]
MODE_IDS = ["scan-sequential", "scan-log", "step"]


def rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-300))


@pytest.fixture(params=["compiled", "ufunc"])
def kernels(request, monkeypatch):
    """Run a test with the numba kernels (when available) and with the ufunc loop."""
    if request.param == "ufunc":
        monkeypatch.setattr(minrnn, "compiled_kernels", lambda xp, dtype: None)
    elif minrnn.compiled_kernels(np, np.dtype(np.float64)) is None:
        pytest.skip("numba is not installed")
    return request.param


# ------------------------------------------------------------------------------------- the scan
def _loop(a, b, h0):
    h, out = h0.copy(), []
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return np.stack(out)


def _loop_adjoint(a, g, dhn):
    lam, out = dhn.copy(), np.empty_like(g)
    for t in range(a.shape[0] - 1, -1, -1):
        lam = lam + g[t]
        out[t] = lam
        lam = lam * a[t]
    return out, lam


@pytest.mark.parametrize("T", [1, 7, 2000])
def test_scans_equal_the_plain_loop(T):
    rng = np.random.default_rng(T)
    B, H = 3, 4
    a = rng.uniform(0.05, 1.0, (T, B, H))  # long T: A_t = prod a underflows far below float64's range
    b = rng.uniform(0.01, 2.0, (T, B, H))
    h0 = rng.standard_normal((B, H))  # any sign: the h0 term is kept in linear space
    g = rng.standard_normal((T, B, H))
    dhn = rng.standard_normal((B, H))
    ref = _loop(a, b, h0)
    assert rel(log_scan(np.log(a), np.log(b), h0), ref) < 1e-11
    S = np.empty((T + 1, B, H))
    S[0] = h0
    assert rel(seq_scan(a, b, S)[1:], ref) < 1e-14
    lam_ref, dh0_ref = _loop_adjoint(a, g, dhn)
    lam, dh0 = log_scan_adjoint(np.log(a), g, dhn)
    assert rel(lam, lam_ref) < 1e-11 and rel(dh0, dh0_ref) < 1e-11
    lam2 = np.empty_like(g)
    assert rel(seq_scan_adjoint(a, g, dhn, lam2), dh0_ref) < 1e-14 and rel(lam2, lam_ref) < 1e-14


def test_log_scan_takes_padding_as_minus_infinity():
    """A padded step is log a = 0, log b = -inf: the state passes through, in both directions."""
    rng = np.random.default_rng(0)
    la, lb = np.log(rng.uniform(0.1, 1, (4, 1, 2))), np.log(rng.uniform(0.1, 1, (4, 1, 2)))
    la[2:], lb[2:] = 0.0, -np.inf
    h = log_scan(la, lb, np.ones((1, 2)))
    assert np.isfinite(h).all() and np.array_equal(h[3], h[1]) and np.array_equal(h[2], h[1])
    g = rng.standard_normal((4, 1, 2))
    g[2:] = 0
    lam, _ = log_scan_adjoint(la, g, None)
    assert np.isfinite(lam).all() and np.allclose(lam[2:], 0)


# ------------------------------------------------------------------------------------- PyTorch
def _torch_gates(cls, P, H):
    """``(a, b)`` of the recurrence from the pre-activations, written independently in torch."""
    def g(p):
        return torch.where(p >= 0, p + 0.5, torch.sigmoid(p))
    if cls is MinGRU:
        z = torch.sigmoid(P[..., :H])
        return 1 - z, z * g(P[..., H:])
    f, i = torch.sigmoid(P[..., :H]), torch.sigmoid(P[..., H:2 * H])
    return f / (f + i), i / (f + i) * g(P[..., 2 * H:])


def torch_minrnn(cls, params, x, h0, lengths, L, H):
    """A PyTorch minGRU/minLSTM, one step at a time (the textbook definition)."""
    T, B = x.shape[:2]
    valid = torch.tensor(np.arange(T)[:, None] < lengths[None, :])  # (T, B)
    inp, hn = x, []
    for k in range(L):
        W, b = params[f"W_xh_l{k}"], params[f"b_h_l{k}"]
        h, ys = h0[k], []
        for t in range(T):
            a, bb = _torch_gates(cls, inp[t] @ W.T + b, H)
            h = torch.where(valid[t][:, None], a * h + bb, h)
            ys.append(torch.where(valid[t][:, None], h, torch.zeros_like(h)))
        hn.append(h)
        inp = torch.stack(ys)
    return inp, torch.stack(hn)


def _case(seed, cls, mode, scan, dtype=np.float64, L=2):
    rng = np.random.default_rng(seed)
    T, B, I, H = 6, 4, 3, 5
    layer = cls(I, H, num_layers=L, dtype=dtype, rng=rng, mode=mode, scan=scan)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L, B, H)).astype(dtype)
    lengths = np.array([6, 2, 0, 5])
    gy = rng.standard_normal((T, B, H)).astype(dtype)
    gh = rng.standard_normal((L, B, H)).astype(dtype)
    return layer, x, h0, lengths, gy, gh


@pytest.mark.parametrize("mode, scan", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_matches_pytorch(cls, mode, scan, kernels):
    layer, x, h0, lengths, gy, gh = _case(0, cls, mode, scan)
    L, H = layer.num_layers, layer.hidden_size
    y, hn, cache = layer.forward(x, h0, lengths=lengths)
    dx, dh0 = layer.backward(gy, gh, cache)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in layer.params.items()}
    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    ty, thn = torch_minrnn(cls, tp, tx, th0, lengths, L, H)
    ((ty * torch.tensor(gy)).sum() + (thn * torch.tensor(gh)).sum()).backward()
    assert rel(y, ty.detach().numpy()) <= 1e-9
    assert rel(hn, thn.detach().numpy()) <= 1e-9
    assert rel(dx, tx.grad.numpy()) <= 1e-9
    assert rel(dh0, th0.grad.numpy()) <= 1e-9
    for k in layer.params:
        assert rel(layer.grads[k], tp[k].grad.numpy()) <= 1e-9, k


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_every_mode_gives_the_same_numbers(cls):
    """Scan (compiled, ufunc and log-space) and step mode: the same outputs and gradients; in
    float32 too (the compiled kernels' sigmoid is a rational approximation there)."""
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        results = []
        for mode, scan in MODES + [("scan", "ufunc")]:
            layer, x, h0, lengths, gy, gh = _case(3, cls, mode, "auto" if scan == "ufunc" else scan, dtype)
            if scan == "ufunc":
                layer._scan_impl = lambda xp: "loop"
            y, hn, cache = layer.forward(x, h0, lengths=lengths)
            dx, dh0 = layer.backward(gy, gh, cache)
            results.append([y, hn, dx, dh0, cache["dh"][0][0]] + [layer.grads[k] for k in sorted(layer.grads)])
        for other in results[1:]:
            for a, b in zip(other, results[0]):
                assert a.dtype == dtype and rel(a, b) <= tol


# ------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode, scan", [("scan", "auto"), ("scan", "log")], ids=["sequential", "log"])
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_gradcheck_every_parameter_and_input(cls, mode, scan):
    layer, x, h0, lengths, gy, gh = _case(1, cls, mode, scan)

    def run(backward):
        y, hn, cache = layer.forward(x, h0, lengths=lengths)
        loss = float((y * gy).sum() + (hn * gh).sum())
        if not backward:
            return loss, None
        dx, dh0 = layer.backward(gy, gh, cache)
        return loss, {"x": dx, "h0": dh0}

    errs = check_module(layer, run, inputs={"x": x, "h0": h0})
    assert set(errs) == set(layer.params) | {"x", "h0"}
    assert max(errs.values()) < 1e-7, errs


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_padding_freezes_the_state_and_sends_no_gradient(cls):
    layer, x, h0, lengths, gy, gh = _case(2, cls, "scan", "auto")
    y, hn, cache = layer.forward(x, h0, lengths=lengths)
    assert np.all(y[2:, 1] == 0) and np.all(y[:, 2] == 0)
    assert np.array_equal(hn[:, 2], h0[:, 2])  # length 0: the state is the initial one
    y1, hn1, _ = layer.forward(x[:2, 1:2], h0[:, 1:2])  # row 1 alone, unpadded
    assert rel(y1[:, 0], y[:2, 1]) < 1e-13 and rel(hn1[:, 0], hn[:, 1]) < 1e-13
    layer.zero_grad()
    dx, _ = layer.backward(gy, gh, cache)
    ref = {k: v.copy() for k, v in layer.grads.items()}
    gy2 = gy.copy()
    gy2[2:, 1] += 100.0  # gradient arriving at padded outputs must change nothing
    gy2[:, 2] -= 50.0
    layer.zero_grad()
    _, _, cache = layer.forward(x, h0, lengths=lengths)
    dx2, _ = layer.backward(gy2, gh, cache)
    assert np.array_equal(dx2, dx) and np.all(dx[2:, 1] == 0)
    for k in ref:
        assert np.array_equal(layer.grads[k], ref[k]), k


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["scan", "step"])
def test_fused_lookup_equals_looked_up_input(cls, mode):
    rng = np.random.default_rng(5)
    V, E, H, T, B = 7, 3, 4, 5, 3
    ids = rng.integers(0, V, (T, B))
    table = rng.standard_normal((V, E))
    gy = rng.standard_normal((T, B, H))
    a = cls(E, H, num_layers=2, dtype=np.float64, rng=np.random.default_rng(1), mode=mode)
    b = cls(E, H, num_layers=2, dtype=np.float64, rng=np.random.default_rng(1), mode=mode)
    ya, _, ca = a.forward(ids, embedding=table)
    yb, _, cb = b.forward(table[ids])
    assert rel(ya, yb) < 1e-13
    dtable, _ = a.backward(gy, None, ca)
    dx, _ = b.backward(gy, None, cb)
    ref = np.zeros_like(table)
    np.add.at(ref, ids.reshape(-1), dx.reshape(-1, E))
    assert rel(dtable, ref) < 1e-12
    for k in a.grads:
        assert rel(a.grads[k], b.grads[k]) < 1e-12, k


def test_batch_first_and_dropout():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 2))  # (B, T, I)
    a = MinGRU(2, 4, num_layers=2, batch_first=True, dropout=0.5, dtype=np.float64, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        a.forward(x)
    y1, _, c = a.forward(x, rng=np.random.default_rng(9))
    y2, _, _ = a.forward(x, rng=np.random.default_rng(9))
    assert y1.shape == (3, 5, 4) and np.array_equal(y1, y2)
    dx, _ = a.backward(np.ones_like(y1), None, c)
    assert dx.shape == x.shape
    a.eval()
    y3, _, _ = a.forward(x)
    b = MinGRU(2, 4, num_layers=2, dtype=np.float64, rng=np.random.default_rng(0))
    assert rel(y3, b.forward(x.transpose(1, 0, 2))[0].transpose(1, 0, 2)) < 1e-14


def test_torch_log_space_formula_is_the_paper_s():
    """Our log-space coefficients are those of the paper's log-space minGRU: the torch
    logcumsumexp scan over them reproduces the step-by-step layer (h0 = 0)."""
    rng = np.random.default_rng(7)
    layer = MinGRU(3, 4, dtype=np.float64, rng=rng, mode="step")
    x = rng.standard_normal((9, 2, 3))
    y, _, _ = layer.forward(x)
    P = torch.tensor(x @ layer.params["W_xh_l0"].T + layer.params["b_h_l0"])
    k, p = P[..., :4], P[..., 4:]
    log_coeffs = -F.softplus(k)
    log_values = -F.softplus(-k) + torch.where(p >= 0, torch.log(F.relu(p) + 0.5), -F.softplus(-p))
    a_star = log_coeffs.cumsum(0)
    h = torch.exp(a_star + torch.logcumsumexp(log_values - a_star, dim=0))
    assert rel(y, h.numpy()) < 1e-12
