"""Feed-forward layers and losses: finite differences vs backward, and parity with PyTorch.

Every layer is checked three ways:

- central differences (float64) against the hand-written backward, relative error <= 1e-6 for
  every parameter and the input (see :mod:`rnnlab.gradcheck` for the definition);
- PyTorch on identical weights: forward values and all gradients, float64 within 1e-9 relative,
  float32 within 1e-4;
- behaviour that the formulas promise (causality, dropout's expectation, no NaN when every
  target is ignored, ...).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from rnnlab.errors import RnnlabError  # noqa: E402
from rnnlab.gradcheck import check_module, gradcheck  # noqa: E402
from rnnlab.nn.activations import ACTIVATIONS, Activation, get_activation, sigmoid  # noqa: E402
from rnnlab.nn.conv import Conv1d  # noqa: E402
from rnnlab.nn.embedding import Embedding, scatter_add_rows  # noqa: E402
from rnnlab.nn.linear import Linear  # noqa: E402
from rnnlab.nn.losses import log_softmax, mse, softmax, softmax_cross_entropy  # noqa: E402
from rnnlab.nn.mlp import MLP  # noqa: E402

GRAD_TOL = 1e-6
TOL = {np.float64: 1e-9, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}
SEEDS = range(4)


def rel(a, ref) -> float:
    """max|a - ref| / max|ref|: the error of ``a`` relative to the reference's scale."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-300))


def t(a, requires_grad=False):
    """A torch tensor copy of a NumPy array."""
    return torch.tensor(np.array(a), requires_grad=requires_grad)


def assert_grads_ok(errs: dict, tol=GRAD_TOL):
    assert errs, "nothing was checked"
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"gradient check failed: {bad}"


def sum_loss_runner(module, x, g, forward_kwargs=None):
    """The closure for check_module: loss = sum(y * g), so dL/dy = g."""
    forward_kwargs = forward_kwargs or {}

    def run(backward):
        y, cache = module.forward(x, **forward_kwargs)
        loss = float((y * g).sum())
        if not backward:
            return loss, None
        return loss, {"x": module.backward(g.copy(), cache)}

    return run


# ---------------------------------------------------------------------------------- activations
TORCH_ACT = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "identity": lambda x: x}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_matches_torch(name, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 5)) * 3).astype(dtype)
    act = Activation(name)
    y, cache = act.forward(x)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = act.backward(dy, cache)
    xt = t(x, requires_grad=True)
    yt = TORCH_ACT[name](xt)
    yt.backward(t(dy))
    assert y.dtype == dtype and dx.dtype == dtype
    assert rel(y, yt.detach().numpy()) <= TOL[dtype]
    assert rel(dx, xt.grad.numpy()) <= TOL[dtype]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gradcheck(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6))
    x[np.abs(x) < 1e-2] = 0.5  # keep away from relu's kink
    g = rng.standard_normal(x.shape)
    act = Activation(name)
    errs = check_module(act, sum_loss_runner(act, x, g), inputs={"x": x})
    assert_grads_ok(errs)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_out_buffers(name):
    rng = np.random.default_rng(2)
    f, df = ACTIVATIONS[name]
    x = rng.standard_normal((3, 4))
    y = f(x.copy())
    buf = np.empty_like(x)
    assert f(x, out=buf) is buf
    np.testing.assert_array_equal(buf, y)
    dbuf = np.empty_like(x)
    assert df(y, out=dbuf) is dbuf
    np.testing.assert_array_equal(dbuf, df(y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_stable_at_extremes(dtype):
    x = np.array([-1e4, -800.0, -40.0, 0.0, 40.0, 800.0, 1e4], dtype=dtype)
    with np.errstate(all="raise"):
        y = sigmoid(x)
    assert np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))
    # the tanh form's error is absolute (about one ulp of 1), so the far tail rounds to 0
    np.testing.assert_allclose(y, torch.sigmoid(t(x)).numpy(), rtol=TOL[dtype], atol=np.finfo(dtype).eps)
    assert y[3] == 0.5


def test_unknown_activation():
    with pytest.raises(RnnlabError, match="unknown activation"):
        get_activation("swishy")
    with pytest.raises(RnnlabError):
        MLP([2, 3, 1], activation="nope")


# --------------------------------------------------------------------------------------- Linear
def _linear_case(seed):
    rng = np.random.default_rng(seed)
    lead = tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 4))))
    i, o = (int(s) for s in rng.integers(1, 7, size=2))
    return rng, lead, i, o, bool(seed % 2 == 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_gradcheck(seed):
    rng, lead, i, o, bias = _linear_case(seed)
    lin = Linear(i, o, bias=bias, dtype=np.float64, rng=rng)
    x = rng.standard_normal(lead + (i,))
    g = rng.standard_normal(lead + (o,))
    errs = check_module(lin, sum_loss_runner(lin, x, g), inputs={"x": x})
    assert set(errs) == set(lin.params) | {"x"}
    assert_grads_ok(errs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_torch(seed, dtype):
    rng, lead, i, o, bias = _linear_case(seed)
    lin = Linear(i, o, bias=bias, dtype=dtype, rng=rng)
    x = rng.standard_normal(lead + (i,)).astype(dtype)
    dy = rng.standard_normal(lead + (o,)).astype(dtype)
    y, cache = lin.forward(x)
    dx = lin.backward(dy, cache)

    tl = torch.nn.Linear(i, o, bias=bias, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        tl.weight.copy_(t(lin.weight))
        if bias:
            tl.bias.copy_(t(lin.bias))
    xt = t(x, requires_grad=True)
    yt = tl(xt)
    yt.backward(t(dy))
    tol = TOL[dtype]
    assert y.shape == lead + (o,) and y.dtype == dtype
    assert rel(y, yt.detach().numpy()) <= tol
    assert rel(dx, xt.grad.numpy()) <= tol
    assert rel(lin.grads["weight"], tl.weight.grad.numpy()) <= tol
    if bias:
        assert rel(lin.grads["bias"], tl.bias.grad.numpy()) <= tol


def test_linear_grads_accumulate_and_zero():
    rng = np.random.default_rng(3)
    lin = Linear(3, 2, dtype=np.float64, rng=rng)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    _, cache = lin.forward(x)
    lin.backward(dy, cache)
    once = {k: v.copy() for k, v in lin.grads.items()}
    w_id = id(lin.grads["weight"])
    lin.backward(dy, cache)
    for k in once:
        np.testing.assert_allclose(lin.grads[k], 2 * once[k], rtol=1e-14)
    lin.zero_grad()
    assert id(lin.grads["weight"]) == w_id and not lin.grads["weight"].any()


def test_linear_names_and_init():
    rng = np.random.default_rng(4)
    lin = Linear(8, 3, rng=rng, name_w="W_hy", name_b="b_y")
    assert set(lin.params) == {"W_hy", "b_y"} and set(lin.grads) == {"W_hy", "b_y"}
    assert lin.params["W_hy"].shape == (3, 8) and lin.params["b_y"].shape == (3,)
    assert lin.params["W_hy"].dtype == np.float32
    k = 1 / np.sqrt(8)
    assert np.abs(lin.params["W_hy"]).max() <= k and np.abs(lin.params["b_y"]).max() <= k
    assert set(Linear(8, 3, bias=False, rng=rng).params) == {"weight"}

    xav = Linear(200, 100, init="xavier", dtype=np.float64, rng=rng)
    a = np.sqrt(6 / 300)
    assert np.abs(xav.weight).max() <= a and np.abs(xav.weight).max() > 0.9 * a
    assert not xav.bias.any()
    same = Linear(8, 3, rng=np.random.default_rng(9)).weight
    np.testing.assert_array_equal(same, Linear(8, 3, rng=np.random.default_rng(9)).weight)
    with pytest.raises(RnnlabError, match="init"):
        Linear(2, 2, init="kaiming")
    with pytest.raises(RnnlabError):
        Linear(0, 2)


# ------------------------------------------------------------------------------------ Embedding
def _embedding_case(seed):
    rng = np.random.default_rng(10 + seed)
    V, E = int(rng.integers(2, 12)), int(rng.integers(1, 6))
    shape = tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 3))))
    idx = rng.integers(0, V, size=shape)  # duplicates are likely
    return rng, V, E, idx


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch(seed, dtype):
    rng, V, E, idx = _embedding_case(seed)
    emb = Embedding(V, E, dtype=dtype, rng=rng)
    y, cache = emb.forward(idx)
    dy = rng.standard_normal(idx.shape + (E,)).astype(dtype)
    assert emb.backward(dy, cache) is None

    te = torch.nn.Embedding(V, E, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        te.weight.copy_(t(emb.weight))
    yt = te(torch.tensor(idx))
    yt.backward(t(dy))
    assert y.shape == idx.shape + (E,) and y.dtype == dtype
    np.testing.assert_array_equal(y, yt.detach().numpy())  # a lookup is exact
    assert rel(emb.grads["weight"], te.weight.grad.numpy()) <= TOL[dtype]


@pytest.mark.parametrize("seed", SEEDS)
def test_embedding_gradcheck(seed):
    rng, V, E, idx = _embedding_case(seed)
    emb = Embedding(V, E, dtype=np.float64, rng=rng)
    g = rng.standard_normal(idx.shape + (E,))

    def run(backward):
        y, cache = emb.forward(idx)
        loss = float((y * g).sum())
        if backward:
            emb.backward(g, cache)
        return loss, None

    assert_grads_ok(check_module(emb, run))


@pytest.mark.parametrize("method", ["reduceat", "bincount"])
@pytest.mark.parametrize("V,N", [(5, 40), (50, 7), (1, 3), (4, 0)])
def test_scatter_add_rows_equals_add_at(method, V, N):
    rng = np.random.default_rng(V * 100 + N)
    E = 3
    idx = rng.integers(0, V, size=N)
    rows = rng.standard_normal((N, E))
    start = rng.standard_normal((V, E))
    want = start.copy()
    np.add.at(want, idx, rows)
    got = scatter_add_rows(start.copy(), idx, rows, method=method)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_embedding_rejects_bad_ids():
    emb = Embedding(5, 2, rng=np.random.default_rng(0))
    with pytest.raises(RnnlabError, match="out of range"):
        emb.forward(np.array([0, 5]))
    with pytest.raises(RnnlabError, match="out of range"):
        emb.forward(np.array([-1, 2]))
    with pytest.raises(TypeError):
        emb.forward(np.array([0.0, 1.0]))


def test_embedding_init_is_standard_normal():
    w = Embedding(400, 50, dtype=np.float64, rng=np.random.default_rng(5)).weight
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02


# --------------------------------------------------------------------------------------- Conv1d
def _conv_case(seed):
    rng = np.random.default_rng(20 + seed)
    T, B = int(rng.integers(1, 9)), int(rng.integers(1, 4))
    cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    k, d = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    return rng, T, B, cin, cout, k, d, bool(seed % 3 != 2)


def _torch_conv(conv: Conv1d, x, dy, dtype):
    """torch.nn.Conv1d on (B, C, T): explicit left padding when causal, padding='same' otherwise."""
    k, d = conv.kernel_size, conv.dilation
    tc = torch.nn.Conv1d(conv.in_channels, conv.out_channels, k, dilation=d, bias=conv.has_bias,
                         padding=0 if conv.causal else "same", dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        tc.weight.copy_(t(conv.params["weight"]))
        if conv.has_bias:
            tc.bias.copy_(t(conv.params["bias"]))
    xt = t(x, requires_grad=True)
    xb = xt.permute(1, 2, 0)  # (B, C_in, T)
    if conv.causal:
        xb = F.pad(xb, (d * (k - 1), 0))
    yt = tc(xb).permute(2, 0, 1)  # (T, B, C_out)
    yt.backward(t(dy))
    return yt.detach().numpy(), xt.grad.numpy(), tc


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_matches_torch(seed, dtype):
    rng, T, B, cin, cout, k, d, causal = _conv_case(seed)
    conv = Conv1d(cin, cout, k, dilation=d, bias=seed % 2 == 0, causal=causal, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, cin)).astype(dtype)
    dy = rng.standard_normal((T, B, cout)).astype(dtype)
    y, cache = conv.forward(x)
    dx = conv.backward(dy, cache)
    yt, dxt, tc = _torch_conv(conv, x, dy, dtype)
    tol = TOL[dtype]
    assert y.shape == (T, B, cout) and y.dtype == dtype and dx.dtype == dtype
    assert rel(y, yt) <= tol
    assert rel(dx, dxt) <= tol
    assert rel(conv.grads["weight"], tc.weight.grad.numpy()) <= tol
    if conv.has_bias:
        assert rel(conv.grads["bias"], tc.bias.grad.numpy()) <= tol


@pytest.mark.parametrize("seed", range(6))
def test_conv1d_gradcheck(seed):
    rng, T, B, cin, cout, k, d, causal = _conv_case(seed)
    conv = Conv1d(cin, cout, k, dilation=d, causal=causal, dtype=np.float64, rng=rng)
    x = rng.standard_normal((T, B, cin))
    g = rng.standard_normal((T, B, cout))
    assert_grads_ok(check_module(conv, sum_loss_runner(conv, x, g), inputs={"x": x}))


def test_conv1d_is_causal_with_its_receptive_field():
    rng = np.random.default_rng(6)
    T, k, d = 20, 3, 2
    conv = Conv1d(2, 3, k, dilation=d, dtype=np.float64, rng=rng)
    assert conv.receptive_field == d * (k - 1) + 1
    x = rng.standard_normal((T, 1, 2))
    y0, _ = conv.forward(x)
    for s in (0, 7, T - 1):
        x1 = x.copy()
        x1[s] += 1.0
        changed = np.flatnonzero(np.abs(conv.forward(x1)[0] - y0).max(axis=(1, 2)) > 0)
        # output t sees x_t, x_{t-d}, ..., x_{t-(k-1)d}: exactly t = s, s+d, ..., s+(k-1)d
        assert set(changed) == {s + j * d for j in range(k) if s + j * d < T}


# ------------------------------------------------------------------------------------------ MLP
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_matches_torch(activation, dtype):
    rng = np.random.default_rng(7)
    sizes = [4, 6, 5, 3]
    mlp = MLP(sizes, activation=activation, dtype=dtype, rng=rng)
    assert list(mlp.children) == ["fc0", "fc1", "fc2"]
    assert set(mlp.params) == {f"fc{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    x = rng.standard_normal((2, 5, 4)).astype(dtype)
    dy = rng.standard_normal((2, 5, 3)).astype(dtype)
    y, cache = mlp.forward(x)
    dx = mlp.backward(dy, cache)

    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}[activation]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b, dtype=TORCH_DTYPE[dtype])
        with torch.no_grad():
            lin.weight.copy_(t(mlp.params[f"fc{i}.weight"]))
            lin.bias.copy_(t(mlp.params[f"fc{i}.bias"]))
        layers += [lin, act()]
    tm = torch.nn.Sequential(*layers[:-1])
    xt = t(x, requires_grad=True)
    yt = tm(xt)
    yt.backward(t(dy))
    tol = TOL[dtype]
    assert rel(y, yt.detach().numpy()) <= tol
    assert rel(dx, xt.grad.numpy()) <= tol
    for i in range(3):
        assert rel(mlp.grads[f"fc{i}.weight"], tm[2 * i].weight.grad.numpy()) <= tol
        assert rel(mlp.grads[f"fc{i}.bias"], tm[2 * i].bias.grad.numpy()) <= tol
        # the qualified names are the child's own arrays, by reference
        assert mlp.grads[f"fc{i}.weight"] is mlp.children[f"fc{i}"].grads["weight"]


@pytest.mark.parametrize("activation,dropout", [("tanh", 0.0), ("relu", 0.0), ("sigmoid", 0.3), ("tanh", 0.5)])
def test_mlp_gradcheck(activation, dropout):
    rng = np.random.default_rng(8)
    mlp = MLP([3, 5, 4, 2], activation=activation, dropout=dropout, dtype=np.float64, rng=rng)
    x = rng.standard_normal((6, 3))
    g = rng.standard_normal((6, 2))

    def run(backward):  # the same dropout masks on every call
        y, cache = mlp.forward(x, rng=np.random.default_rng(123))
        loss = float((y * g).sum())
        if not backward:
            return loss, None
        return loss, {"x": mlp.backward(g.copy(), cache)}

    assert_grads_ok(check_module(mlp, run, inputs={"x": x}))


def test_mlp_dropout_modes():
    rng = np.random.default_rng(9)
    mlp = MLP([3, 8, 2], dropout=0.5, dtype=np.float64, rng=rng)
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="rng"):
        mlp.forward(x)
    y1, _ = mlp.forward(x, rng=np.random.default_rng(1))
    y2, _ = mlp.forward(x, rng=np.random.default_rng(2))
    assert not np.allclose(y1, y2)  # masks differ between draws
    mlp.eval()
    assert not mlp.children["fc0"].training
    ye, _ = mlp.forward(x)  # no rng needed in eval mode
    ref = MLP([3, 8, 2], dropout=0.0, dtype=np.float64, rng=np.random.default_rng(0))
    ref.load_state_dict(mlp.state_dict())
    np.testing.assert_array_equal(ye, ref.forward(x)[0])
    with pytest.raises(RnnlabError):
        MLP([3, 2], dropout=1.0)


def test_mlp_inverted_dropout_is_unbiased():
    """With the identity activation E[y] over masks equals the eval-mode output."""
    rng = np.random.default_rng(10)
    mlp = MLP([2, 16, 1], activation="identity", dropout=0.4, dtype=np.float64, rng=rng)
    x = np.repeat(rng.standard_normal((1, 2)), 40000, axis=0)  # (N, 2): one input, N masks
    y, cache = mlp.forward(x, rng=np.random.default_rng(11))
    kept = np.mean(cache[0][2] > 0)
    assert abs(kept - 0.6) < 0.01
    assert np.allclose(cache[0][2][cache[0][2] > 0], 1 / 0.6)
    mlp.eval()
    y_eval = mlp.forward(x[:1])[0]
    assert abs(y.mean() - y_eval[0, 0]) < 5 * y.std() / np.sqrt(len(y))


# --------------------------------------------------------------------------------------- losses
def _ce_case(seed, dtype, lead=None):
    rng = np.random.default_rng(30 + seed)
    lead = lead or tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 3))))
    V = int(rng.integers(2, 9))
    logits = (rng.standard_normal(lead + (V,)) * 3).astype(dtype)
    targets = rng.integers(0, V, size=lead)
    targets[rng.random(lead) < 0.3] = -1
    if (targets == -1).all():
        targets.reshape(-1)[0] = 0
    return rng, logits, targets


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_torch(seed, dtype, reduction):
    _, logits, targets = _ce_case(seed, dtype)
    loss, dlogits = softmax_cross_entropy(logits, targets, ignore_index=-1, reduction=reduction)
    V = logits.shape[-1]
    lt = t(logits, requires_grad=True)
    lt_loss = F.cross_entropy(lt.reshape(-1, V), torch.tensor(targets.reshape(-1)),
                              ignore_index=-1, reduction=reduction)
    lt_loss.backward()
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    assert dlogits.dtype == dtype
    assert dlogits.shape == logits.shape
    assert rel(loss, lt_loss.item()) <= TOL[dtype]
    assert rel(dlogits, lt.grad.numpy()) <= TOL[dtype]
    assert not dlogits[targets == -1].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_mask_equals_ignore_index(dtype):
    _, logits, targets = _ce_case(0, dtype, lead=(5, 3))
    keep = targets != -1
    a = softmax_cross_entropy(logits, targets, ignore_index=-1)
    b = softmax_cross_entropy(logits, np.where(keep, targets, 0), ignore_index=None, mask=keep)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_cross_entropy_weighted_mask_matches_torch():
    rng, logits, targets = _ce_case(1, np.float64, lead=(4, 6))
    w = rng.random(targets.shape)
    loss, d = softmax_cross_entropy(logits, targets, mask=w)
    lt = t(logits, requires_grad=True)
    per = F.cross_entropy(lt.reshape(-1, logits.shape[-1]), torch.tensor(targets.reshape(-1)),
                          ignore_index=-1, reduction="none")
    wt = t(w.reshape(-1)) * torch.tensor(targets.reshape(-1) != -1)
    ref = (per * wt).sum() / wt.sum()
    ref.backward()
    assert rel(loss, ref.item()) <= 1e-9 and rel(d, lt.grad.numpy()) <= 1e-9


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("how", ["ignore_index", "mask"])
def test_cross_entropy_all_ignored_is_zero_not_nan(dtype, how):
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((3, 4, 5)).astype(dtype)
    if how == "ignore_index":
        kw = dict(targets=np.full((3, 4), -1))
    else:
        kw = dict(targets=np.zeros((3, 4), dtype=np.int64), mask=np.zeros((3, 4)))
    with np.errstate(all="raise"):
        loss, d = softmax_cross_entropy(logits, **kw)
    assert float(loss) == 0.0 and d.shape == logits.shape and not d.any()
    assert np.isnan(F.cross_entropy(t(logits).reshape(-1, 5), torch.full((12,), -1), ignore_index=-1).item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_huge_logits_stay_finite(dtype):
    rng = np.random.default_rng(13)
    logits = (rng.standard_normal((6, 7)) * 1e4).astype(dtype)
    targets = rng.integers(0, 7, size=6)
    with np.errstate(over="raise", invalid="raise"):
        loss, d = softmax_cross_entropy(logits, targets)
    lt = t(logits, requires_grad=True)
    ref = F.cross_entropy(lt, torch.tensor(targets))
    ref.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert rel(loss, ref.item()) <= TOL[dtype] and rel(d, lt.grad.numpy()) <= TOL[dtype]


@pytest.mark.parametrize("seed", SEEDS)
def test_cross_entropy_gradcheck(seed):
    _, logits, targets = _ce_case(seed, np.float64)
    _, d = softmax_cross_entropy(logits, targets)
    errs = gradcheck(lambda: softmax_cross_entropy(logits, targets)[0], {"logits": logits}, {"logits": d})
    assert_grads_ok(errs)


def test_cross_entropy_rejects_bad_targets():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError):
        softmax_cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError):
        softmax_cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        softmax_cross_entropy(logits, np.array([0, 1]), reduction="none")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_log_softmax_match_torch(dtype):
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((3, 4, 6)) * 20).astype(dtype)
    for axis in (-1, 1):
        assert rel(softmax(x, axis=axis), torch.softmax(t(x), dim=axis).numpy()) <= TOL[dtype]
        assert rel(log_softmax(x, axis=axis), torch.log_softmax(t(x), dim=axis).numpy()) <= TOL[dtype]
    np.testing.assert_allclose(softmax(x).sum(-1), 1, rtol=TOL[dtype])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch(seed, dtype, reduction):
    rng = np.random.default_rng(40 + seed)
    shape = tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 4))))
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss, d = mse(pred, target, reduction=reduction)
    pt = t(pred, requires_grad=True)
    ref = torch.nn.MSELoss(reduction=reduction)(pt, t(target))
    ref.backward()
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype and d.dtype == dtype
    assert rel(loss, ref.item()) <= TOL[dtype] and rel(d, pt.grad.numpy()) <= TOL[dtype]


def test_mse_mask():
    rng = np.random.default_rng(15)
    pred, target = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 3, 2))
    keep = rng.random((5, 3, 1)) < 0.6  # a per-step mask broadcast over the last axis
    keep[0, 0] = True
    loss, d = mse(pred, target, mask=keep)
    sel = np.broadcast_to(keep, pred.shape)
    pt = t(pred, requires_grad=True)
    ref = torch.nn.MSELoss()(pt[torch.tensor(sel)], t(target[sel]))
    ref.backward()
    assert rel(loss, ref.item()) <= 1e-9 and rel(d, pt.grad.numpy()) <= 1e-9
    errs = gradcheck(lambda: mse(pred, target, mask=keep)[0], {"pred": pred}, {"pred": d})
    assert_grads_ok(errs)
    with np.errstate(all="raise"):
        loss0, d0 = mse(pred, target, mask=np.zeros((5, 3, 1)))
    assert float(loss0) == 0.0 and not d0.any()
