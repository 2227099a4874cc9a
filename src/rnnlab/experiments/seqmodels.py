"""Sequence-to-output models for the synthetic tasks, all behind one interface.

::

    out, cache = model.forward(x, lengths=None)      x (T, B, I) float -> out (S, B, O)
    model.backward(dout, cache)                       adds into model.grads

``S`` output steps are read at the end of each sequence: ``S = 1`` for a sequence-level target
(read at each sequence's own last step when ``lengths`` is given), ``S = N`` for the copy task
(the last ``N`` steps; all sequences then have the same length).

- :class:`RecurrentSeq` — RNN | LSTM | GRU, then ``y = W h + b`` on the chosen steps. Its
  parameters do not depend on the sequence length.
- :class:`WindowMLPSeq` — a fixed-input-length MLP: the last ``W`` real steps, flattened
  (shorter sequences padded on the left with zero vectors, longer ones truncated to the last
  ``W``), ``(B, W*I) -> (B, S*O)``.
- :class:`CausalCNNSeq` — causal dilated convolutions (kernel ``k``, dilations 1, 2, 4, ...),
  read at the end: each output sees the last ``R = 1 + (k-1)(2^layers - 1)`` steps.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn.activations import Activation
from ..nn.conv import Conv1d
from ..nn.linear import Linear
from ..nn.mlp import MLP
from ..nn.module import Module
from ..nn.recurrent import GRU, LSTM, RNN

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def _last_index(T: int, B: int, lengths, S: int) -> np.ndarray:
    """``(S, B)`` time indices of the output steps: the last ``S`` real steps of each sequence."""
    ends = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    if S > 1 and lengths is not None and np.any(ends != T):
        raise ValueError("several output steps need equal-length sequences")
    return ends[None, :] - S + np.arange(S)[:, None]  # (S, B)


class RecurrentSeq(Module):
    """``RecurrentSeq(cell, input_size, hidden, out, out_steps=1)``: cell over the sequence, a
    linear read-out ``W_hy h_t + b_y`` on the last ``out_steps`` steps.

    With ``out_steps = 1`` the read-out takes the final state ``state_n``, which the engine
    freezes at each sequence's own last step, so a padded batch gives exactly the per-sequence
    results and backward enters through ``dstate_n`` (``dy = None``).
    """

    def __init__(self, cell: str, input_size: int, hidden: int, out: int, out_steps: int = 1,
                 nonlinearity: str = "tanh", dtype=np.float32, rng=None, **cell_kw) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        rng = rng if rng is not None else np.random.default_rng()
        self.cell, self.hidden, self.out_steps = cell, int(hidden), int(out_steps)
        kw = dict(dtype=dtype, rng=rng, **cell_kw)
        if cell == "rnn":
            kw["nonlinearity"] = nonlinearity
        self.rnn = self.add_child("rnn", CELLS[cell](input_size, hidden, **kw))
        self.out = self.add_child("out", Linear(hidden, out, dtype=dtype, rng=rng, name_w="W_hy", name_b="b_y"))

    def forward(self, x, lengths=None, rng=None):
        """``x (T, B, I) -> out (S, B, O)``; ``cache["rnn"]`` is the engine's cache."""
        y, state_n, rc = self.rnn.forward(x, lengths=lengths, rng=rng)  # y (T, B, H)
        S = self.out_steps
        if S == 1:
            h_n = state_n[0] if isinstance(state_n, tuple) else state_n  # (L*D, B, H)
            h = h_n[-1][None]  # (1, B, H): top layer at each sequence's last step
        else:
            _last_index(y.shape[0], y.shape[1], lengths, S)  # checks equal lengths
            h = y[-S:]  # (S, B, H)
        out, lc = self.out.forward(h)  # (S, B, O)
        return out, {"rnn": rc, "lin": lc, "T": y.shape[0]}

    def backward(self, dout, cache) -> None:
        dh = self.out.backward(dout, cache["lin"])  # (S, B, H)
        xp = backend.array_module(dh)
        rc = cache["rnn"]
        S = self.out_steps
        if S == 1:
            LD = self.rnn.num_layers * self.rnn.num_directions
            dhn = xp.zeros((LD,) + dh.shape[1:], dh.dtype)  # (L*D, B, H)
            dhn[-1] = dh[0]
            dstate = (dhn, None) if self.cell == "lstm" else dhn
            self.rnn.backward(None, dstate, rc)
        else:
            dy = xp.zeros((cache["T"],) + dh.shape[1:], dh.dtype)  # (T, B, H)
            dy[-S:] = dh
            self.rnn.backward(dy, None, rc)

    def window(self) -> float:
        """Steps of input one output can depend on: unbounded."""
        return float("inf")


class WindowMLPSeq(Module):
    """``WindowMLPSeq(input_size, window, hidden, out, out_steps=1, layers=1)``.

    ``z = [x_{n-W+1}, ..., x_n]`` (the last ``W`` real steps of a sequence of length ``n``;
    zero vectors stand for the ``W - n`` missing steps when ``n < W``, and the first ``n - W``
    steps are dropped when ``n > W``), then ``MLP(z) (S*O,)`` reshaped to ``S`` outputs.
    Its first layer has ``W * I * hidden`` weights: the parameters grow with the window.
    """

    def __init__(self, input_size: int, window: int, hidden: int, out: int, out_steps: int = 1,
                 layers: int = 1, activation: str = "tanh", dtype=np.float32, rng=None) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.input_size, self.window_size = int(input_size), int(window)
        self.out_size, self.out_steps = int(out), int(out_steps)
        sizes = [self.window_size * self.input_size] + [int(hidden)] * int(layers) + [self.out_size * self.out_steps]
        self.mlp = self.add_child("mlp", MLP(sizes, activation=activation, dtype=dtype, rng=rng))

    def windowed(self, x, lengths=None) -> np.ndarray:
        """``x (T, B, I)`` -> ``(B, W*I)``: the last ``W`` real steps, left-padded with zeros."""
        T, B, I = x.shape
        W = self.window_size
        ends = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        idx = ends[None, :] - W + np.arange(W)[:, None]  # (W, B) source step of each slot
        valid = idx >= 0
        z = x[np.clip(idx, 0, max(T - 1, 0)), np.arange(B)[None, :]]  # (W, B, I)
        z = z * valid[:, :, None]
        return np.ascontiguousarray(z.transpose(1, 0, 2)).reshape(B, W * I)  # (W, B, I) -> (B, W*I)

    def forward(self, x, lengths=None, rng=None):
        """``x (T, B, I) -> out (S, B, O)``."""
        B = x.shape[1]
        z = self.windowed(x, lengths).astype(self.dtype, copy=False)  # (B, W*I)
        o, mc = self.mlp.forward(z, rng=rng)  # (B, S*O)
        out = o.reshape(B, self.out_steps, self.out_size).transpose(1, 0, 2)  # (B, S, O) -> (S, B, O)
        return out, mc

    def backward(self, dout, cache) -> None:
        S, B, O = dout.shape
        do = np.ascontiguousarray(dout.transpose(1, 0, 2)).reshape(B, S * O)  # (S, B, O) -> (B, S*O)
        self.mlp.backward(do, cache)

    def window(self) -> float:
        return float(self.window_size)


class CausalCNNSeq(Module):
    """``CausalCNNSeq(input_size, channels, out, layers=4, kernel=2)``: ``layers`` causal
    convolutions with dilations ``1, 2, ..., 2^(layers-1)`` and tanh, then ``W h + b`` at the
    output steps. Each output sees the last ``R = 1 + (k-1)(2^layers - 1)`` input steps; the
    parameters do not depend on the sequence length, but ``R`` is fixed by the depth.
    """

    def __init__(self, input_size: int, channels: int, out: int, out_steps: int = 1, layers: int = 4,
                 kernel: int = 2, activation: str = "tanh", dtype=np.float32, rng=None) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.out_steps, self.kernel, self.layers = int(out_steps), int(kernel), int(layers)
        self.convs, self.acts = [], []
        c_in = input_size
        for i in range(self.layers):
            self.convs.append(self.add_child(f"conv{i}", Conv1d(c_in, channels, kernel, dilation=2**i,
                                                                dtype=dtype, rng=rng)))
            self.acts.append(Activation(activation))
            c_in = channels
        self.out = self.add_child("out", Linear(channels, out, dtype=dtype, rng=rng))

    def forward(self, x, lengths=None, rng=None):
        """``x (T, B, I) -> out (S, B, O)``."""
        T, B, _ = x.shape
        h = x.astype(self.dtype, copy=False)
        caches = []
        for conv, act in zip(self.convs, self.acts):
            h, cc = conv.forward(h)  # (T, B, C)
            h, ac = act.forward(h)
            caches.append((cc, ac))
        idx = _last_index(T, B, lengths, self.out_steps)  # (S, B)
        hs = h[idx, np.arange(B)[None, :]]  # (S, B, C)
        out, lc = self.out.forward(hs)  # (S, B, O)
        return out, (caches, lc, idx, h.shape)

    def backward(self, dout, cache) -> None:
        caches, lc, idx, hshape = cache
        dhs = self.out.backward(dout, lc)  # (S, B, C)
        dh = backend.array_module(dhs).zeros(hshape, dhs.dtype)  # (T, B, C)
        dh[idx, np.arange(hshape[1])[None, :]] = dhs  # the (t, b) pairs are distinct: no sums needed
        for conv, act, (cc, ac) in reversed(list(zip(self.convs, self.acts, caches))):
            dh = act.backward(dh, ac)
            dh = conv.backward(dh, cc)

    def window(self) -> float:
        return float(1 + (self.kernel - 1) * (2**self.layers - 1))


def build(kind: str, input_size: int, out: int, *, hidden: int, window: int | None = None,
          out_steps: int = 1, cnn_layers: int = 4, dtype=np.float32, rng=None, **kw) -> Module:
    """A model by name: ``mlp`` (needs ``window``), ``cnn``, ``rnn``, ``lstm``, ``gru``."""
    if kind in CELLS:
        return RecurrentSeq(kind, input_size, hidden, out, out_steps=out_steps, dtype=dtype, rng=rng, **kw)
    if kind == "mlp":
        if window is None:
            raise ValueError("the MLP needs a window")
        return WindowMLPSeq(input_size, window, hidden, out, out_steps=out_steps, dtype=dtype, rng=rng, **kw)
    if kind == "cnn":
        return CausalCNNSeq(input_size, hidden, out, out_steps=out_steps, layers=cnn_layers, dtype=dtype,
                            rng=rng, **kw)
    raise ValueError(f"unknown model kind {kind!r}")
