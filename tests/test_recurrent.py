"""The recurrent engine against PyTorch (same weights) and against central finite differences."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from rnnlab.gradcheck import gradcheck
from rnnlab.interop.torch import from_torch, grads_to_torch, recurrent_state_from_torch, to_torch_state_dict
from rnnlab.nn.recurrent import GRU, LSTM, RNN

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
OURS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def rel(a, b) -> float:
    """max |a - b| / max(max |b|, 1e-12): relative error in the max norm."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)) if a.size else 0.0


def case_rng(*key) -> np.random.Generator:
    """A generator seeded from a stable hash (CRC-32) of ``key``, the parameters in the test id:
    every process draws the same data for a case, so a failure reproduces from its id alone
    (Python's ``hash()`` of a string is salted per process), and no two cases share draws."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_config(rng: np.random.Generator, cell: str) -> dict:
    cfg = dict(
        I=int(rng.integers(1, 6)), H=int(rng.integers(1, 7)), L=int(rng.integers(1, 4)),
        B=int(rng.integers(1, 5)), T=int(rng.integers(1, 10)), bias=bool(rng.random() < 0.8),
        batch_first=bool(rng.random() < 0.3), bidirectional=bool(rng.random() < 0.4),
        use_lengths=bool(rng.random() < 0.5), give_state=bool(rng.random() < 0.6),
        give_dstate=bool(rng.random() < 0.6), nonlinearity="tanh",
    )
    if cell == "rnn" and rng.random() < 0.4:
        cfg["nonlinearity"] = "relu"
    return cfg


def torch_twin(cell, cfg, dtype):
    kw = dict(num_layers=cfg["L"], bias=cfg["bias"], batch_first=cfg["batch_first"],
              bidirectional=cfg["bidirectional"])
    if cell == "rnn":
        kw["nonlinearity"] = cfg["nonlinearity"]
    return TORCH[cell](cfg["I"], cfg["H"], **kw).to(dtype)


def run_pair(cell, cfg, np_dtype, torch_dtype, rng):
    """Forward + backward of a torch module and its rnnlab twin on identical data."""
    tm = torch_twin(cell, cfg, torch_dtype)
    ours = from_torch(tm)
    assert ours.param_dtype == np_dtype
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    LD = cfg["L"] * (2 if cfg["bidirectional"] else 1)
    x = rng.standard_normal((B, T, I) if cfg["batch_first"] else (T, B, I)).astype(np_dtype)
    lengths = rng.integers(1, T + 1, size=B) if cfg["use_lengths"] else None
    if lengths is not None:
        lengths[rng.integers(B)] = T  # pad_packed_sequence trims to the longest; keep it T
    nstate = 2 if cell == "lstm" else 1
    state = [rng.standard_normal((LD, B, H)).astype(np_dtype) for _ in range(nstate)] if cfg["give_state"] else None

    y, sn, cache = ours.forward(x, None if state is None else (tuple(state) if cell == "lstm" else state[0]),
                                lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(np_dtype)
    sn_list = list(sn) if cell == "lstm" else [sn]
    dsn = [rng.standard_normal(s.shape).astype(np_dtype) for s in sn_list] if cfg["give_dstate"] else None
    dx, ds0 = ours.backward(dy, None if dsn is None else (tuple(dsn) if cell == "lstm" else dsn[0]), cache)
    ds0 = list(ds0) if cell == "lstm" else [ds0]

    xt = torch.tensor(x, requires_grad=True)
    # without a given state ours starts from zeros, and its dstate0 is the gradient there
    zeros = [np.zeros((LD, B, H), np_dtype)] * nstate
    st = [torch.tensor(s, requires_grad=True) for s in (state if state is not None else zeros)]
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=cfg["batch_first"],
                                                      enforce_sorted=False)
    hx = tuple(st) if cell == "lstm" else st[0]
    yt, snt = tm(inp, hx)
    if lengths is not None:
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, batch_first=cfg["batch_first"], total_length=T)
    snt = list(snt) if cell == "lstm" else [snt]
    loss = (yt * torch.tensor(dy)).sum()
    if dsn is not None:
        loss = loss + sum((a * torch.tensor(b)).sum() for a, b in zip(snt, dsn))
    loss.backward()
    return dict(ours=ours, tm=tm, y=(y, yt), sn=(sn_list, snt), dx=(dx, xt.grad), ds0=(ds0, st))


CASES = [(cell, seed) for cell in ("rnn", "lstm", "gru") for seed in range(50)]
CASES_F32 = [(cell, seed) for cell in ("rnn", "lstm", "gru") for seed in range(12)]


def parity_case(precision, cell, seed):
    """The configuration and the generator of one parity case; torch's initialisation is seeded
    from the same stable hash, so the weights, too, differ from cell to cell and case to case."""
    rng = case_rng(precision, cell, seed)
    torch.manual_seed(int(rng.integers(2**31)))
    return random_config(rng, cell), rng


def _shape_and_flags(cfg):
    return tuple(sorted((k, v) for k, v in cfg.items() if k != "nonlinearity"))


@pytest.mark.parametrize("precision,cases", [("float64", CASES), ("float32", CASES_F32)])
def test_parity_cases_draw_distinct_configurations(precision, cases):
    """No case repeats another's sizes and flags (seeds built from len(cell) once gave the RNN and
    the GRU the same 50 draws): 150 distinct configurations in float64, 36 in float32."""
    configs = {_shape_and_flags(parity_case(precision, cell, seed)[0]) for cell, seed in cases}
    assert len(configs) == len(cases)


def assert_parity(r, tol):
    """Outputs, final states, and the gradients of the input, the initial states and every
    parameter agree with torch within ``tol`` (relative, max norm)."""
    assert rel(r["y"][0], r["y"][1].detach().numpy()) < tol
    assert len(r["sn"][0]) == len(r["sn"][1])
    for i, (a, b) in enumerate(zip(*r["sn"])):
        assert rel(a, b.detach().numpy()) < tol, f"state_n[{i}]"
    assert rel(r["dx"][0], r["dx"][1].numpy()) < tol
    assert len(r["ds0"][0]) == len(r["ds0"][1])
    for i, (a, b) in enumerate(zip(*r["ds0"])):
        assert rel(a, b.grad.numpy()) < tol, f"dstate0[{i}]"
    grads = grads_to_torch(r["ours"])
    names = [name for name, _ in r["tm"].named_parameters()]
    assert sorted(grads) == sorted(names)
    for name, p in r["tm"].named_parameters():
        assert rel(grads[name], p.grad.numpy()) < tol, name


@pytest.mark.parametrize("cell,seed", CASES)
def test_parity_with_torch_float64(cell, seed):
    cfg, rng = parity_case("float64", cell, seed)
    r = run_pair(cell, cfg, np.float64, torch.float64, rng)
    assert_parity(r, 1e-9)


@pytest.mark.parametrize("cell,seed", CASES_F32)
def test_parity_with_torch_float32(cell, seed):
    cfg, rng = parity_case("float32", cell, seed)
    r = run_pair(cell, cfg, np.float32, torch.float32, rng)
    arrays = [r["y"][0], r["dx"][0], *r["sn"][0], *r["ds0"][0]]
    assert all(a.dtype == np.float32 for a in arrays)
    assert_parity(r, 1e-4)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_state_dict_round_trip_through_torch(cell):
    layer = OURS[cell](3, 4, num_layers=2, bidirectional=True, dtype=np.float64, rng=np.random.default_rng(1))
    tm = TORCH[cell](3, 4, num_layers=2, bidirectional=True).double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(layer).items()})
    assert set(to_torch_state_dict(layer)) == {n for n, _ in tm.named_parameters()}
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    y, _, _ = layer.forward(x)
    yt, _ = tm(torch.from_numpy(x))
    assert rel(y, yt.detach().numpy()) < 1e-12
    back = recurrent_state_from_torch(layer, {k: v.numpy() for k, v in tm.state_dict().items()})
    for k, v in back.items():
        np.testing.assert_allclose(v, layer.params[k], rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- finite differences
def fd_check(layer, cell, T, B, lengths, rng, *, dropout_seed=None, eps=1e-6, max_entries=40):
    """Relative error (rnnlab.gradcheck) of BPTT against central differences for every parameter,
    the input and the initial state(s). The loss is a random linear functional of y and state_n."""
    I, H = layer.input_size, layer.hidden_size
    LD = layer.num_layers * layer.num_directions
    x = rng.standard_normal((T, B, I))
    states = [rng.standard_normal((LD, B, H)) for _ in range(2 if cell == "lstm" else 1)]
    DH = layer.num_directions * H
    wy = rng.standard_normal((T, B, DH))
    ws = [rng.standard_normal((LD, B, H)) for _ in states]

    def pack(s):
        return tuple(s) if cell == "lstm" else s[0]

    def loss():
        r = None if dropout_seed is None else np.random.default_rng(dropout_seed)
        y, sn, _ = layer.forward(x, pack(states), lengths=lengths, rng=r)
        sn = list(sn) if cell == "lstm" else [sn]
        return float(np.sum(y * wy) + sum(np.sum(a * b) for a, b in zip(sn, ws)))

    layer.zero_grad()
    r = None if dropout_seed is None else np.random.default_rng(dropout_seed)
    _, _, cache = layer.forward(x, pack(states), lengths=lengths, rng=r)
    dx, ds0 = layer.backward(wy, pack(ws), cache)
    ds0 = list(ds0) if cell == "lstm" else [ds0]
    arrays = {f"param:{k}": v for k, v in layer.params.items()}
    analytic = {f"param:{k}": layer.grads[k] for k in layer.params}
    arrays["x"], analytic["x"] = x, dx
    for i, s in enumerate(states):
        arrays[f"state{i}"], analytic[f"state{i}"] = s, ds0[i]
    return gradcheck(loss, arrays, analytic, eps=eps, max_checks_per_array=max_entries, rng=rng)


FD_CASES = [
    # cell, T, B, layers, bidirectional, bias, lengths?, nonlinearity, dropout
    ("rnn", 6, 3, 2, True, True, True, "tanh", 0.0),
    ("rnn", 5, 2, 1, False, False, False, "relu", 0.0),
    ("rnn", 50, 2, 1, False, True, True, "tanh", 0.0),
    ("lstm", 6, 3, 2, True, True, True, "tanh", 0.0),
    ("lstm", 5, 2, 1, False, False, False, "tanh", 0.0),
    ("lstm", 50, 2, 1, False, True, True, "tanh", 0.0),
    ("gru", 6, 3, 2, True, True, True, "tanh", 0.0),
    ("gru", 5, 2, 1, False, False, False, "tanh", 0.0),
    ("gru", 50, 2, 1, False, True, True, "tanh", 0.0),
    ("lstm", 5, 2, 3, False, True, False, "tanh", 0.3),
    ("gru", 5, 2, 2, True, True, True, "tanh", 0.5),
]


@pytest.mark.parametrize("cell,T,B,L,bidir,bias,use_len,act,dropout", FD_CASES)
def test_bptt_matches_finite_differences(cell, T, B, L, bidir, bias, use_len, act, dropout):
    rng = case_rng("fd", cell, T, B, L, bidir, bias, use_len, act, dropout)
    kw = dict(num_layers=L, bidirectional=bidir, bias=bias, dropout=dropout, dtype=np.float64,
              rng=np.random.default_rng(3))
    if cell == "rnn":
        kw["nonlinearity"] = act
    layer = OURS[cell](3, 4, **kw)
    lengths = None
    if use_len:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = max(1, T // 2)
    errors = fd_check(layer, cell, T, B, lengths, rng, dropout_seed=11 if dropout else None)
    bad = {k: v for k, v in errors.items() if not v <= 1e-6}
    assert not bad, bad


# --------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidir", [False, True])
def test_padded_batch_equals_each_sequence_alone(cell, bidir):
    rng = np.random.default_rng(5)
    T, B, I, H = 9, 4, 3, 5
    layer = OURS[cell](I, H, num_layers=2, bidirectional=bidir, dtype=np.float64, rng=np.random.default_rng(0))
    lengths = np.array([9, 2, 6, 1])
    x = rng.standard_normal((T, B, I))
    x[np.arange(T)[:, None] >= lengths[None, :]] = 1e3  # garbage in the padding must not matter
    y, sn, cache = layer.forward(x, lengths=lengths)
    dy = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx, _ = layer.backward(dy, None, cache)
    batch_grads = {k: v.copy() for k, v in layer.grads.items()}
    total = {k: np.zeros_like(v) for k, v in layer.grads.items()}
    hn = sn[0] if cell == "lstm" else sn
    for b in range(B):
        n = lengths[b]
        yb, snb, cb = layer.forward(x[:n, b : b + 1])
        np.testing.assert_allclose(y[:n, b : b + 1], yb, rtol=1e-12, atol=1e-12)
        assert np.all(y[n:, b] == 0)
        hb = snb[0] if cell == "lstm" else snb
        np.testing.assert_allclose(hn[:, b : b + 1], hb, rtol=1e-12, atol=1e-12)
        layer.zero_grad()
        dxb, _ = layer.backward(dy[:n, b : b + 1], None, cb)
        np.testing.assert_allclose(dx[:n, b : b + 1], dxb, rtol=1e-10, atol=1e-12)
        assert np.all(dx[n:, b] == 0)
        for k in total:
            total[k] += layer.grads[k]
    for k in total:
        np.testing.assert_allclose(batch_grads[k], total[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_truncated_bptt_chunks_equal_one_pass(cell):
    rng = np.random.default_rng(8)
    T, B, I, H, k = 24, 3, 2, 6, 4
    layer = OURS[cell](I, H, num_layers=2, dtype=np.float64, rng=np.random.default_rng(0))
    x = rng.standard_normal((T, B, I))
    y_full, sn_full, _ = layer.forward(x)
    state, ys = None, []
    for chunk in np.split(x, k):
        y, state, _ = layer.forward(chunk, state)
        ys.append(y)
    np.testing.assert_allclose(np.concatenate(ys), y_full, rtol=1e-13, atol=1e-13)
    for a, b in zip(state if cell == "lstm" else [state], sn_full if cell == "lstm" else [sn_full]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_dstate0_chains_chunks_into_the_full_gradient(cell):
    """Backward over two chunks, passing dstate0 of the second as dstate_n of the first, equals
    backward over the whole sequence."""
    rng = np.random.default_rng(9)
    T, B, I, H = 10, 2, 3, 4
    layer = OURS[cell](I, H, dtype=np.float64, rng=np.random.default_rng(0))
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, H))
    layer.zero_grad()
    _, _, c = layer.forward(x)
    dx_full, _ = layer.backward(dy, None, c)
    g_full = {k: v.copy() for k, v in layer.grads.items()}
    layer.zero_grad()
    _, s1, c1 = layer.forward(x[:6])
    _, _, c2 = layer.forward(x[6:], s1)
    dx2, ds = layer.backward(dy[6:], None, c2)
    dx1, _ = layer.backward(dy[:6], ds, c1)
    np.testing.assert_allclose(np.concatenate([dx1, dx2]), dx_full, rtol=1e-11, atol=1e-13)
    for k in g_full:
        np.testing.assert_allclose(layer.grads[k], g_full[k], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_per_timestep_hidden_gradients(cell):
    """cache['dh'][0][0][t] is dL/dh_t: dy_t plus what the rest of the sequence sends back,
    which is dstate0 of a backward pass over the suffix started from h_t."""
    rng = np.random.default_rng(10)
    T, B, I, H = 8, 2, 3, 4
    layer = OURS[cell](I, H, dtype=np.float64, rng=np.random.default_rng(0))
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, H))
    _, _, cache = layer.forward(x)
    layer.backward(dy, None, cache)
    DH = cache["dh"][0][0]
    assert DH.shape == (T, B, H)
    for t in range(T - 1):
        _, state_t, _ = layer.forward(x[: t + 1])
        _, _, c_suffix = layer.forward(x[t + 1 :], state_t)
        _, ds = layer.backward(dy[t + 1 :], None, c_suffix)
        dh_suffix = ds[0] if cell == "lstm" else ds
        np.testing.assert_allclose(DH[t], dy[t] + dh_suffix[0], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(DH[T - 1], dy[T - 1])


def test_backward_accumulates_and_zero_grad_clears():
    layer = LSTM(2, 3, dtype=np.float64, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((4, 2, 2))
    _, _, c = layer.forward(x)
    layer.backward(np.ones((4, 2, 3)), None, c)
    once = {k: v.copy() for k, v in layer.grads.items()}
    _, _, c = layer.forward(x)
    layer.backward(np.ones((4, 2, 3)), None, c)
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k])
    layer.zero_grad()
    assert all(not np.any(g) for g in layer.grads.values())
    assert set(layer.params) == set(layer.grads)


@pytest.mark.parametrize("cell", [RNN, LSTM, GRU])
def test_a_cache_serves_one_backward(cell):
    """The LSTM and GRU write the gate gradients over the saved gates, so a cache is used up by
    its backward; a second call is refused instead of returning wrong gradients (all cells alike)."""
    layer = cell(2, 3, num_layers=2, bidirectional=True, dtype=np.float64, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((5, 2, 2))
    y, _, c = layer.forward(x)
    with pytest.raises(ValueError, match="dy must have shape"):  # refused arguments leave the cache usable
        layer.backward(np.ones((5, 2, 1)), None, c)
    layer.backward(np.ones_like(y), None, c)
    with pytest.raises(ValueError, match="already used by backward.*run forward again"):
        layer.backward(np.ones_like(y), None, c)


def test_textbook_rnn_recurrence_and_names():
    rng = np.random.default_rng(0)
    layer = RNN(3, 4, dtype=np.float64, rng=rng)
    assert set(layer.params) == {"W_xh_l0", "W_hh_l0", "b_h_l0"}
    p = layer.params
    x = rng.standard_normal((5, 1, 3))
    y, hn, _ = layer.forward(x)
    h = np.zeros(4)
    for t in range(5):
        h = np.tanh(p["W_hh_l0"] @ h + p["W_xh_l0"] @ x[t, 0] + p["b_h_l0"])
        np.testing.assert_allclose(y[t, 0], h, rtol=1e-13)
    np.testing.assert_allclose(hn[0, 0], h, rtol=1e-13)


def test_default_dtype_rng_and_initialisers():
    a = GRU(3, 8, rng=np.random.default_rng(42))
    b = GRU(3, 8, rng=np.random.default_rng(42))
    assert all(v.dtype == np.float32 for v in a.params.values())
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    k = 1 / np.sqrt(8)
    assert all(np.abs(v).max() <= k for v in a.params.values())
    lstm = LSTM(3, 8, recurrent_init="orthogonal", forget_bias=1.0, rng=np.random.default_rng(0))
    w = lstm.params["W_hh_l0"].astype(np.float64)
    for g in range(4):
        blk = w[g * 8 : (g + 1) * 8]
        np.testing.assert_allclose(blk @ blk.T, np.eye(8), atol=1e-5)
    assert np.all(lstm.params["b_h_l0"][8:16] == 1.0)
    xavier = GRU(30, 20, init="xavier", dtype=np.float64, rng=np.random.default_rng(0))
    assert all(not v.any() for k, v in xavier.params.items() if k.startswith("b_"))
    for name, fan_in in (("W_xh_l0", 30), ("W_hh_l0", 20)):  # Glorot per gate block: fan_out = H
        a = np.sqrt(6 / (fan_in + 20))
        w = np.abs(xavier.params[name])
        assert w.shape == (3 * 20, fan_in)
        for g in range(3):
            assert 0.9 * a < w[g * 20 : (g + 1) * 20].max() <= a, (name, g)


def test_dropout_needs_rng_and_is_reproducible_and_off_in_eval():
    layer = LSTM(3, 4, num_layers=2, dropout=0.5, dtype=np.float64, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    with pytest.raises(ValueError, match="rng"):
        layer.forward(x)
    y1, _, _ = layer.forward(x, rng=np.random.default_rng(3))
    y2, _, _ = layer.forward(x, rng=np.random.default_rng(3))
    y3, _, _ = layer.forward(x, rng=np.random.default_rng(4))
    assert np.array_equal(y1, y2) and not np.allclose(y1, y3)
    layer.eval()
    e1, _, _ = layer.forward(x)
    layer.train()
    layer.dropout = 0.0
    e2, _, _ = layer.forward(x)
    np.testing.assert_array_equal(e1, e2)


@pytest.mark.parametrize("bad,match", [
    (dict(x=np.zeros((4, 2))), "3-D"),
    (dict(x=np.zeros((4, 2, 5))), "input size"),
    (dict(state=np.zeros((2, 2, 4))), "shape"),
    (dict(lengths=np.array([1, 2, 3])), "lengths"),
    (dict(lengths=np.array([5, 1])), "lengths"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    layer = GRU(3, 4, rng=np.random.default_rng(0))
    args = dict(x=np.zeros((4, 2, 3)), state=None, lengths=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        layer.forward(args["x"], args["state"], lengths=args["lengths"])
