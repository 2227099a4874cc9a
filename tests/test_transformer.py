"""The Transformer's pieces and the block models, against PyTorch and central differences.

- LayerNorm vs ``torch.nn.LayerNorm``, GELU vs ``F.gelu(approximate="tanh")``, causal attention
  vs ``torch.nn.MultiheadAttention`` with a causal mask, the pre-LN block vs a PyTorch block
  written from those modules, the bag-of-words model vs a PyTorch twin: values and every gradient
  within 1e-9 in float64 (1e-4 in float32 where checked);
- central differences in float64 for every parameter and input of each piece and of the two
  language models, including the windowed path past the block;
- causality, and nanoGPT's cropping rule for sequences longer than the position table.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from rnnlab.errors import RnnlabError  # noqa: E402
from rnnlab.gradcheck import check_module  # noqa: E402
from rnnlab.models import BoWLM, TransformerLM  # noqa: E402
from rnnlab.nn.attention import CausalSelfAttention  # noqa: E402
from rnnlab.nn.gelu import GELU  # noqa: E402
from rnnlab.nn.layernorm import LayerNorm  # noqa: E402
from rnnlab.nn.transformer import TransformerBlock  # noqa: E402

TOL = {np.float64: 1e-9, np.float32: 1e-4}


@pytest.fixture(params=["compiled", "ufunc"])
def kernels(request, monkeypatch):
    """Run a test with the numba kernels of GELU and LayerNorm (when available) and without."""
    import rnnlab.nn.gelu
    import rnnlab.nn.layernorm
    from rnnlab.nn.cells import compiled_module

    if request.param == "ufunc":
        for mod in (rnnlab.nn.gelu, rnnlab.nn.layernorm):
            monkeypatch.setattr(mod, "compiled_module", lambda xp, dtype, name: None)
    elif compiled_module(np, np.float64, "fused_transformer") is None:
        pytest.skip("numba is not installed")
    return request.param


def rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-300))


def tt(a, grad=False):
    return torch.tensor(np.array(a), requires_grad=grad)


def runner(module, x, g, **kw):
    """check_module closure for ``forward(x) -> (y, cache)`` layers with loss ``sum(y * g)``."""
    def run(backward):
        y, cache = module.forward(x, **kw)
        loss = float((y * g).sum())
        if not backward:
            return loss, None
        return loss, {"x": module.backward(g.copy(), cache)}
    return run


def assert_grads(errs, tol=1e-6):
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert errs and not bad, bad


# ------------------------------------------------------------------------------------- LayerNorm, GELU
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layernorm_matches_torch(dtype, kernels):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 3, 8)) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ln = LayerNorm(8, dtype=dtype)
    ln.params["weight"][...] = rng.standard_normal(8)
    ln.params["bias"][...] = rng.standard_normal(8)
    y, cache = ln.forward(x)
    dx = ln.backward(dy, cache)
    ref = torch.nn.LayerNorm(8).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        ref.weight.copy_(tt(ln.params["weight"]))
        ref.bias.copy_(tt(ln.params["bias"]))
    xt = tt(x, True)
    yt = ref(xt)
    yt.backward(tt(dy))
    assert y.dtype == dtype and dx.dtype == dtype
    for a, b in ((y, yt), (dx, xt.grad), (ln.grads["weight"], ref.weight.grad), (ln.grads["bias"], ref.bias.grad)):
        assert rel(a, b.detach().numpy()) <= TOL[dtype]


def test_layernorm_gradcheck(kernels):
    rng = np.random.default_rng(1)
    ln = LayerNorm(6, dtype=np.float64)
    ln.params["weight"][...] = rng.standard_normal(6)
    x, g = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    assert_grads(check_module(ln, runner(ln, x, g), inputs={"x": x}))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gelu_matches_torch_tanh_approximation(dtype, kernels):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((7, 9)) * 4).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    act = GELU()
    y, cache = act.forward(x)
    dx = act.backward(dy, cache)
    xt = tt(x, True)
    yt = F.gelu(xt, approximate="tanh")
    yt.backward(tt(dy))
    assert rel(y, yt.detach().numpy()) <= TOL[dtype] and rel(dx, xt.grad.numpy()) <= TOL[dtype]
    x64 = x.astype(np.float64)
    assert_grads(check_module(act, runner(act, x64, dy.astype(np.float64)), inputs={"x": x64}))


# ------------------------------------------------------------------------------------- attention
def _causal(T):
    return torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # True = not allowed


def _torch_mha(attn: CausalSelfAttention, dtype=torch.float64):
    m = torch.nn.MultiheadAttention(attn.C, attn.heads, dtype=dtype)
    with torch.no_grad():
        m.in_proj_weight.copy_(tt(attn.params["qkv.weight"]))
        m.in_proj_bias.copy_(tt(attn.params["qkv.bias"]))
        m.out_proj.weight.copy_(tt(attn.params["proj.weight"]))
        m.out_proj.bias.copy_(tt(attn.params["proj.bias"]))
    return m


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_attention_matches_torch_multihead_attention(dtype):
    rng = np.random.default_rng(3)
    T, B, C, nh = 7, 3, 12, 3
    attn = CausalSelfAttention(C, nh, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, C)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, cache = attn.forward(x)
    dx = attn.backward(dy, cache)
    m = _torch_mha(attn, torch.float64 if dtype == np.float64 else torch.float32)
    xt = tt(x, True)
    yt, _ = m(xt, xt, xt, attn_mask=_causal(T), need_weights=False)  # (L, N, E): time-major like ours
    yt.backward(tt(dy))
    tol = TOL[dtype]
    assert rel(y, yt.detach().numpy()) <= tol and rel(dx, xt.grad.numpy()) <= tol
    for ours, theirs in (("qkv.weight", m.in_proj_weight), ("qkv.bias", m.in_proj_bias),
                         ("proj.weight", m.out_proj.weight), ("proj.bias", m.out_proj.bias)):
        assert rel(attn.grads[ours], theirs.grad.numpy()) <= tol, ours


def test_attention_gradcheck_and_causality():
    rng = np.random.default_rng(4)
    attn = CausalSelfAttention(8, 2, dtype=np.float64, rng=rng)
    x, g = rng.standard_normal((5, 2, 8)), rng.standard_normal((5, 2, 8))
    assert_grads(check_module(attn, runner(attn, x, g), inputs={"x": x}))
    y, _ = attn.forward(x)
    x2 = x.copy()
    x2[3:] = rng.standard_normal(x2[3:].shape)  # the future changes; the past's outputs must not
    y2, _ = attn.forward(x2)
    assert np.array_equal(y[:3], y2[:3]) and not np.allclose(y[3:], y2[3:])


def test_heads_must_divide_the_width():
    with pytest.raises(RnnlabError, match="multiple of the number of heads"):
        CausalSelfAttention(10, 4)
    with pytest.raises(RnnlabError, match="--heads"):
        TransformerLM(5, hidden=10, heads=4)


# ------------------------------------------------------------------------------------- the block
class TorchBlock(torch.nn.Module):
    """A pre-LN GPT block written from torch modules, weights copied from ours."""

    def __init__(self, blk: TransformerBlock):
        super().__init__()
        C = blk.C
        self.ln1, self.ln2 = torch.nn.LayerNorm(C).double(), torch.nn.LayerNorm(C).double()
        self.attn = _torch_mha(blk.attn)
        self.fc, self.proj = torch.nn.Linear(C, 4 * C).double(), torch.nn.Linear(4 * C, C).double()
        names = {"ln1.weight": self.ln1.weight, "ln1.bias": self.ln1.bias, "ln2.weight": self.ln2.weight,
                 "ln2.bias": self.ln2.bias, "fc.weight": self.fc.weight, "fc.bias": self.fc.bias,
                 "proj.weight": self.proj.weight, "proj.bias": self.proj.bias,
                 "attn.qkv.weight": self.attn.in_proj_weight, "attn.qkv.bias": self.attn.in_proj_bias,
                 "attn.proj.weight": self.attn.out_proj.weight, "attn.proj.bias": self.attn.out_proj.bias}
        with torch.no_grad():
            for k, p in names.items():
                p.copy_(tt(blk.params[k]))
        self.names = names

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=_causal(x.shape[0]), need_weights=False)[0]
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


def _randomise(module, rng, scale=0.3):
    """Non-trivial values for every parameter (LayerNorm gains away from 1, biases non-zero)."""
    for k, p in module.params.items():
        p[...] = rng.standard_normal(p.shape) * scale + (1.0 if k.endswith("ln1.weight") or k.endswith("ln2.weight")
                                                         else 0.0)


def test_block_matches_a_torch_block(kernels):
    rng = np.random.default_rng(5)
    blk = TransformerBlock(8, 2, n_layers=2, dtype=np.float64, rng=rng)
    _randomise(blk, rng)
    x, dy = rng.standard_normal((6, 3, 8)), rng.standard_normal((6, 3, 8))
    y, cache = blk.forward(x)
    dx = blk.backward(dy, cache)
    ref = TorchBlock(blk)
    xt = tt(x, True)
    yt = ref(xt)
    yt.backward(tt(dy))
    assert rel(y, yt.detach().numpy()) <= 1e-9 and rel(dx, xt.grad.numpy()) <= 1e-9
    for k, p in ref.names.items():
        assert rel(blk.grads[k], p.grad.numpy()) <= 1e-9, k


def test_block_gradcheck_with_dropout():
    rng = np.random.default_rng(6)
    blk = TransformerBlock(8, 2, dropout=0.3, dtype=np.float64, rng=rng)
    _randomise(blk, rng)
    x, g = rng.standard_normal((4, 2, 8)), rng.standard_normal((4, 2, 8))

    def run(backward):  # the same dropout masks in every evaluation
        y, cache = blk.forward(x, rng=np.random.default_rng(0))
        loss = float((y * g).sum())
        return (loss, {"x": blk.backward(g.copy(), cache)}) if backward else (loss, None)

    assert_grads(check_module(blk, run, inputs={"x": x}))


# ------------------------------------------------------------------------------------- the models
def _lm_runner(model, ids, g, state=None):
    def run(backward):
        logits, _, cache = model.forward(ids, state, rng=np.random.default_rng(0))
        loss = float((logits * g).sum())
        if backward:
            model.backward(g.copy(), cache)
        return loss, {}
    return run


@pytest.mark.parametrize("T, carried", [(5, 0), (9, 0), (4, 3)], ids=["within-block", "past-block", "with-state"])
@pytest.mark.parametrize("kind", ["transformer", "bow"])
def test_language_models_gradcheck(kind, T, carried):
    """Every parameter of both block models, for input inside the block, past it (windows) and
    after carried context."""
    rng = np.random.default_rng(7)
    V, K, B = 5, 6, 2
    if kind == "transformer":
        model = TransformerLM(V, hidden=8, layers=2, heads=2, block=K, dropout=0.2, dtype=np.float64, rng=rng)
        _randomise(model, rng, 0.4)
    else:
        model = BoWLM(V, embed=6, hidden=7, block=K, dtype=np.float64, rng=rng)
    ids = rng.integers(0, V, (T, B))
    state = rng.integers(0, V, (carried, B)) if carried else None
    g = rng.standard_normal((T, B, V))
    errs = check_module(model, _lm_runner(model, ids, g, state), max_checks_per_array=12)
    assert set(errs) == set(model.params)
    assert_grads(errs)


@pytest.mark.parametrize("kind", ["transformer", "bow"])
def test_cropping_past_the_block(kind):
    """Past the position table each prediction sees exactly the last K characters (positions
    counted from the first of them), whether the text comes in one call, in chunks with the
    state carried, or one character at a time as the sampler feeds it."""
    rng = np.random.default_rng(8)
    V, K = 6, 5
    model = (TransformerLM(V, hidden=8, layers=1, heads=2, block=K, dtype=np.float64, rng=rng) if kind == "transformer"
             else BoWLM(V, embed=4, hidden=6, block=K, dtype=np.float64, rng=rng))
    model.eval()
    ids = rng.integers(0, V, (12, 2))
    whole, state, _ = model.forward(ids)
    assert np.array_equal(state, ids[-(K - 1):])
    for t in range(12):  # the definition: the window of the last min(K, t+1) ids
        window = ids[max(0, t - K + 1): t + 1]
        assert rel(whole[t], model.forward(window)[0][-1]) < 1e-12
    st, steps = None, []
    for t in range(12):
        logits, st, _ = model.forward(ids[t:t + 1], st)
        steps.append(logits[0])
    assert rel(np.stack(steps), whole) < 1e-12
    a, st, _ = model.forward(ids[:7])
    b, _, _ = model.forward(ids[7:], st)
    assert rel(np.concatenate([a, b]), whole) < 1e-12


def test_transformer_is_causal_and_decays_matrices_only():
    rng = np.random.default_rng(9)
    model = TransformerLM(7, hidden=8, layers=2, heads=2, block=8, rng=rng)
    model.eval()
    ids = rng.integers(0, 7, (8, 3))
    y, _, _ = model.forward(ids)
    ids2 = ids.copy()
    ids2[5:] = (ids2[5:] + 1) % 7
    y2, _, _ = model.forward(ids2)
    assert np.array_equal(y[:5], y2[:5]) and not np.allclose(y[5:], y2[5:])
    no = model.no_decay()
    assert no and all(model.params[k].ndim == 1 for k in no)
    assert {"wpe", "wte.weight", "head.weight", "h0.fc.weight"}.isdisjoint(no)
    assert {"ln_f.weight", "h0.fc.bias", "h1.attn.qkv.bias"} <= no


class TorchBoW(torch.nn.Module):
    """makemore's BoW, written in torch."""

    def __init__(self, m: BoWLM):
        super().__init__()
        self.p = {k: tt(v, True) for k, v in m.params.items()}

    def forward(self, ids):
        p = self.p
        L = ids.shape[0]
        e = p["wte.weight"][ids] + p["wpe"][:L, None, :]  # (L, B, C)
        att = torch.zeros(L, L, dtype=e.dtype).masked_fill(_causal(L), float("-inf")).softmax(-1)
        u = e + torch.einsum("ts,sbc->tbc", att, e)
        v = u + torch.tanh(u @ p["fc.weight"].T + p["fc.bias"]) @ p["proj.weight"].T + p["proj.bias"]
        return v @ p["head.weight"].T + p["head.bias"]


def test_bow_matches_torch():
    rng = np.random.default_rng(10)
    m = BoWLM(6, embed=5, hidden=7, block=8, dtype=np.float64, rng=rng)
    ids = rng.integers(0, 6, (8, 3))
    g = rng.standard_normal((8, 3, 6))
    logits, _, cache = m.forward(ids)
    m.backward(g, cache)
    ref = TorchBoW(m)
    lt = ref(torch.tensor(ids))
    (lt * tt(g)).sum().backward()
    assert rel(logits, lt.detach().numpy()) <= 1e-9
    for k, p in ref.p.items():
        assert rel(m.grads[k], p.grad.numpy()) <= 1e-9, k
