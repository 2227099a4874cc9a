"""Two promises of the recurrent layers checked against references built from smaller pieces.

Dropout between layers (and before the language model's read-out) is inverted dropout: each
kept unit is scaled by ``1/(1-p)``, so its expectation is unchanged, and nothing is dropped in
eval mode. A stacked layer must equal its layers run one by one, with the mask it drew applied
in between.

Zero-length rows in a padded batch: the row's outputs are zero, its final state is its initial
state, the gradient reaching the final state passes to the initial state unchanged, and it adds
nothing to the parameter or input gradients; every other row equals the same row run alone.
"""
from __future__ import annotations

import numpy as np
import pytest

from rnnlab.models.recurrent_lm import RecurrentLM
from rnnlab.nn import GRU, LSTM, RNN

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def single_layers(stack, cls, I, H, bidir):
    """One-layer twins of each layer of ``stack`` (weights copied)."""
    D = 2 if bidir else 1
    out = []
    for k in range(stack.num_layers):
        one = cls(I if k == 0 else D * H, H, num_layers=1, bidirectional=bidir, dtype=np.float64,
                  rng=np.random.default_rng(0))
        for name in one.params:
            one.params[name][...] = stack.params[name.replace("_l0", f"_l{k}")]
        out.append(one)
    return out


def split_state(state, k, D):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[k * D:(k + 1) * D] for s in state)
    return state[k * D:(k + 1) * D]


@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_dropout_between_layers_is_inverted_and_equals_the_layers_run_one_by_one(cell, bidir):
    p, T, B, I, H, L = 0.3, 6, 5, 4, 7, 3
    D = 2 if bidir else 1
    rng = np.random.default_rng(5)
    cls = CELLS[cell]
    stack = cls(I, H, num_layers=L, dropout=p, bidirectional=bidir, dtype=np.float64, rng=rng)
    x = rng.standard_normal((T, B, I))
    y, _, cache = stack.forward(x, rng=np.random.default_rng(9))
    masks = [lc["drop"] for lc in cache["layers"]]
    assert masks[0] is None and all(m.shape == (T, B, D * H) for m in masks[1:])
    for m in masks[1:]:
        assert set(np.unique(m)) <= {0.0, 1.0 / (1.0 - p)}
    kept = np.concatenate([m.ravel() for m in masks[1:]]) > 0
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)  # binomial: within 4 standard errors
    inp = x
    for k, one in enumerate(single_layers(stack, cls, I, H, bidir)):
        if masks[k] is not None:
            inp = inp * masks[k]
        inp, _, _ = one.forward(inp)
    np.testing.assert_allclose(y, inp, rtol=1e-12, atol=1e-13)
    stack.eval()  # no dropout, no generator needed
    y_eval, _, cache = stack.forward(x)
    assert all(lc["drop"] is None for lc in cache["layers"])
    inp = x
    for one in single_layers(stack, cls, I, H, bidir):
        inp, _, _ = one.forward(inp)
    np.testing.assert_allclose(y_eval, inp, rtol=1e-12, atol=1e-13)


def test_dropout_keeps_the_expectation():
    """Averaged over many draws, a dropped-out layer input is the undropped one."""
    rng = np.random.default_rng(1)
    stack = RNN(3, 4, num_layers=2, dropout=0.5, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 3))
    draws = [stack.forward(x, rng=np.random.default_rng(s))[2]["layers"][1]["drop"] for s in range(2000)]
    mean = np.mean(draws, axis=0)
    assert np.all(np.abs(mean - 1.0) < 4 * np.sqrt(0.25 / 2000) * 2)  # each entry is 0 or 2: sd 1


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_read_out_dropout_of_the_language_model(cell):
    p = 0.25
    rng = np.random.default_rng(3)
    lm = RecurrentLM(11, cell=cell, hidden=8, layers=1, embed=5, dropout=p, dtype=np.float64, rng=rng)
    x = rng.integers(0, 11, size=(4, 3))
    logits, _, (rc, drop, _) = lm.forward(x, rng=np.random.default_rng(2))
    assert set(np.unique(drop)) <= {0.0, 1.0 / (1.0 - p)}
    lm.eval()
    h, _, _ = lm.rnn.forward(x, embedding=lm.embed.weight)
    want = (h * drop) @ lm.params["out.W_hy"].T + lm.params["out.b_y"]
    np.testing.assert_allclose(logits, want, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------------------ zero-length rows
def grads_of(layer):
    return {k: g.copy() for k, g in layer.grads.items()}


@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_zero_length_rows_against_rows_run_alone(cell, bidir):
    T, I, H, L = 5, 3, 4, 2
    lengths = np.array([5, 0, 3, 0, 1])
    B = len(lengths)
    D = 2 if bidir else 1
    rng = np.random.default_rng(11)
    layer = CELLS[cell](I, H, num_layers=L, bidirectional=bidir, dtype=np.float64, rng=rng)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((L * D, B, H))
    state0 = (h0, rng.standard_normal((L * D, B, H))) if cell == "lstm" else h0
    dy = rng.standard_normal((T, B, D * H))
    dh_n = rng.standard_normal((L * D, B, H))
    dstate_n = (dh_n, rng.standard_normal((L * D, B, H))) if cell == "lstm" else dh_n

    def rows(s, r):
        return None if s is None else tuple(a[:, r:r + 1] for a in s) if isinstance(s, tuple) else s[:, r:r + 1]

    layer.zero_grad()
    y, state_n, cache = layer.forward(x, state0, lengths=lengths)
    dx, dstate0 = layer.backward(dy, dstate_n, cache)
    whole = grads_of(layer)
    summed = {k: np.zeros_like(g) for k, g in whole.items()}
    as_tuple = (lambda s: s) if cell == "lstm" else (lambda s: (s,))
    for r, n in enumerate(lengths):
        if n == 0:
            np.testing.assert_array_equal(y[:, r], 0.0)
            np.testing.assert_array_equal(dx[:, r], 0.0)
            for a, b in zip(as_tuple(state_n), as_tuple(state0)):
                np.testing.assert_array_equal(a[:, r], b[:, r])  # the state passes through untouched
            for a, b in zip(as_tuple(dstate0), as_tuple(dstate_n)):
                np.testing.assert_array_equal(a[:, r], b[:, r])  # and so does its gradient
            continue
        layer.zero_grad()
        y_r, s_r, c_r = layer.forward(x[:n, r:r + 1], rows(state0, r))
        dx_r, ds_r = layer.backward(dy[:n, r:r + 1], rows(dstate_n, r), c_r)
        np.testing.assert_allclose(y[:n, r:r + 1], y_r, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(y[n:, r], 0.0)
        np.testing.assert_allclose(dx[:n, r:r + 1], dx_r, rtol=1e-10, atol=1e-12)
        for a, b in zip(as_tuple(state_n), as_tuple(s_r)):
            np.testing.assert_allclose(a[:, r:r + 1], b, rtol=1e-10, atol=1e-12)
        for a, b in zip(as_tuple(dstate0), as_tuple(ds_r)):
            np.testing.assert_allclose(a[:, r:r + 1], b, rtol=1e-10, atol=1e-12)
        for k, g in grads_of(layer).items():
            summed[k] += g
    for k in whole:
        np.testing.assert_allclose(whole[k], summed[k], rtol=1e-10, atol=1e-12, err_msg=k)
