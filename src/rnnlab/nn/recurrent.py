"""Recurrent layers — vanilla RNN, LSTM, GRU — with backpropagation through time by hand.

The vanilla RNN is the textbook recurrence (applied per layer ``k`` and direction)::

    h_t = act(W_hh h_{t-1} + W_xh x_t + b_h)        act = tanh (default) | relu

with the output layer ``y_t = W_hy h_t + b_y`` left to a :class:`~rnnlab.nn.linear.Linear`
applied to every step. LSTM and GRU follow PyTorch's gate order (see :mod:`rnnlab.nn.cells`).

Shapes (time-major by default; ``batch_first=True`` swaps the first two axes of ``x`` and ``y``)::

    x        (T, B, I)          input sequence
    y        (T, B, D*H)        top layer's h_t for every step (both directions concatenated)
    state    (L*D, B, H)        h_0 per layer and direction; LSTM: the tuple (h_0, c_0)
    lengths  (B,)               optional true lengths of a padded batch

Backpropagation through time, per layer and direction, walking ``t = T-1 .. 0``::

    dL/dh_t     = dy_t + dL/dh_t (from step t+1)         -> kept in cache["dh"][layer][dir]
    da_t        = cell backward step (see cells.py)
    dL/dh_{t-1} = da_t W_hh
    dW_hh = sum_t da_t^T h_{t-1};  dW_xh = sum_t da_t^T x_t;  db_h = sum_t da_t;  dx_t = da_t W_xh

The three sums are single GEMMs over all ``T*B`` rows once the loop is done, so the loop itself
runs one ``(B, H) x (H, G*H)`` GEMM and one fused step kernel per step. For NumPy arrays with numba
and NumPy's OpenBLAS, the whole loop runs compiled in one call without the GIL
(:mod:`rnnlab.nn.timeloop`, the same GEMM and kernels); the Python loops below are the other path.

Plain reference loop of the forward pass (one layer, one direction, no padding)::

    h = h0
    for t in range(T):
        h = tanh(x[t] @ W_xh.T + b_h + h @ W_hh.T)
        y[t] = h
"""
from __future__ import annotations

import numpy as np

from .. import backend
from . import cells
from . import init as winit
from .embedding import check_ids, gather_rows, scatter_add_rows
from .module import Module
from .workspace import empty as _ws_empty


def _ws(xp, shape, dtype):
    """A pooled ``xp.empty`` (see :mod:`rnnlab.nn.workspace`)."""
    return _ws_empty(shape, dtype, xp)


class _Recurrent(Module):
    """Layers, directions, padding masks, dropout and the weight-gradient GEMMs, shared by the
    three cells. Subclasses supply ``gates`` and the per-direction loops over time.

    Initialisation (explicit ``rng``):

    - ``init="uniform"`` (PyTorch's ``U(±1/sqrt(H))`` for every weight and bias), ``"xavier"``
      (Glorot weights, zero biases), or ``"chrono"`` (uniform weights; LSTM/GRU gate biases that
      spread the memory time constants over ``[1, chrono_tmax]``, Tallec & Ollivier 2018, see
      :func:`rnnlab.nn.init.chrono_biases`).
    - ``recurrent_init``: ``None`` (as ``init``), ``"orthogonal"`` (each gate block of ``W_hh``
      orthogonal), or ``"identity"`` (each block the identity and the bias zero: with
      ``RNN(nonlinearity="relu")`` this is the IRNN of Le, Jaitly & Hinton 2015).
    - ``forget_bias``: the LSTM's forget-gate bias (Gers et al. 2000; Jozefowicz et al. 2015
      recommend 1).
    """

    gates = 1
    has_cell_state = False
    mode = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
        init: str = "uniform",
        recurrent_init: str | None = None,
        forget_bias: float | None = None,
        chrono_tmax: float | None = None,
    ) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if init not in ("uniform", "xavier", "chrono"):
            raise ValueError(f"init must be 'uniform', 'xavier' or 'chrono', got {init!r}")
        if recurrent_init not in (None, "orthogonal", "identity"):
            raise ValueError(f"recurrent_init must be None, 'orthogonal' or 'identity', got {recurrent_init!r}")
        if init == "chrono" and (self.mode not in ("lstm", "gru") or chrono_tmax is None or chrono_tmax <= 2 or not bias):
            raise ValueError("init='chrono' needs an LSTM or GRU with biases and chrono_tmax > 2 (the longest "
                             f"dependency to expect, in steps), got mode {self.mode!r}, chrono_tmax {chrono_tmax!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.param_dtype = np.dtype(dtype)
        rng = rng if rng is not None else np.random.default_rng()
        H, G = hidden_size, self.gates
        self.names: list[list[dict[str, str]]] = []  # [layer][direction] -> role -> param name
        for k in range(num_layers):
            layer_names = []
            in_k = input_size if k == 0 else H * self.num_directions
            for d in range(self.num_directions):
                sfx = f"_l{k}" + ("_reverse" if d == 1 else "")
                n = {"W_xh": "W_xh" + sfx, "W_hh": "W_hh" + sfx}
                if init == "xavier":
                    w_xh = np.concatenate([winit.xavier_uniform(rng, (H, in_k), dtype) for _ in range(G)])
                else:
                    w_xh = winit.uniform_fan(rng, (G * H, in_k), H, dtype)
                if recurrent_init == "orthogonal":
                    w_hh = np.concatenate([winit.orthogonal(rng, (H, H), dtype) for _ in range(G)])
                elif recurrent_init == "identity":
                    w_hh = np.concatenate([np.eye(H, dtype=dtype)] * G)
                elif init == "xavier":
                    w_hh = np.concatenate([winit.xavier_uniform(rng, (H, H), dtype) for _ in range(G)])
                else:
                    w_hh = winit.uniform_fan(rng, (G * H, H), H, dtype)
                self.add_param(n["W_xh"], w_xh)
                self.add_param(n["W_hh"], w_hh)
                if bias:
                    n["b_h"] = "b_h" + sfx
                    if init == "xavier":
                        b = np.zeros(G * H, dtype)
                    else:
                        b = winit.uniform_fan(rng, (G * H,), H, dtype)
                    if recurrent_init == "identity":
                        b[:] = 0  # the IRNN recipe: identity recurrence, zero bias
                    if forget_bias is not None and self.mode == "lstm":
                        b[H : 2 * H] = forget_bias
                    if init == "chrono":
                        winit.chrono_biases(rng, b, H, self.mode, chrono_tmax)
                    self.add_param(n["b_h"], b)
                    if self.mode == "gru":
                        n["b_hn"] = "b_hn" + sfx
                        bn = np.zeros(H, dtype) if init == "xavier" else winit.uniform_fan(rng, (H,), H, dtype)
                        self.add_param(n["b_hn"], bn)
                layer_names.append(n)
            self.names.append(layer_names)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    # ------------------------------------------------------------------------- helpers
    def _zeros_state(self, xp, B):
        return xp.zeros((self.num_layers * self.num_directions, B, self.hidden_size), self.param_dtype)

    def _check_state(self, xp, s, B, what):
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        s = xp.asarray(s, dtype=self.param_dtype)
        if s.shape != (LD, B, H):
            raise ValueError(f"{what} must have shape {(LD, B, H)}, got {tuple(s.shape)}")
        return s

    def _split_state(self, xp, state, B):
        """``(h0, c0)`` as arrays (``c0`` is None for RNN/GRU)."""
        if self.has_cell_state:
            if state is None:
                return self._zeros_state(xp, B), self._zeros_state(xp, B)
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError("LSTM state must be the tuple (h, c)")
            return self._check_state(xp, state[0], B, "h0"), self._check_state(xp, state[1], B, "c0")
        if state is None:
            return self._zeros_state(xp, B), None
        return self._check_state(xp, state, B, "h0"), None

    def _masks(self, xp, lengths, T, B):
        """``(keep (T, B, 1) bool, mf (T, B, 1) float)``: ``keep`` marks padded steps (state is
        carried unchanged), ``mf`` is 1.0 on real steps and 0.0 on padding."""
        if lengths is None:
            return None, None
        lengths = backend.to_numpy(lengths)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if not np.issubdtype(lengths.dtype, np.integer):
            if not np.all(lengths == np.round(lengths)):
                raise ValueError("lengths must be integers")
            lengths = lengths.astype(np.int64)
        if lengths.min(initial=0) < 0 or lengths.max(initial=0) > T:
            raise ValueError(f"lengths must lie in [0, T={T}], got {lengths.min()}..{lengths.max()}")
        valid = np.arange(T)[:, None] < lengths[None, :]  # (T, B)
        keep = xp.asarray(~valid[:, :, None])
        mf = xp.asarray(valid[:, :, None].astype(self.param_dtype))
        return keep, mf

    # ------------------------------------------------------------------------- forward
    def forward(self, x, state=None, lengths=None, rng: np.random.Generator | None = None, embedding=None):
        """Run the whole sequence. Returns ``(y, state_n, cache)``; see the module docstring.

        ``rng`` is required when dropout is active (training mode, ``dropout > 0``, more than
        one layer).

        ``embedding`` fuses a token lookup into the first layer: ``x`` is then integer ids
        ``(T, B)`` (``(B, T)`` with ``batch_first``) and the first layer's input is
        ``embedding[x]`` for a table ``embedding (V, input_size)``, or the one-hot vector of
        ``x`` for ``embedding="onehot"`` (``V = input_size``). The result is the same as passing
        the looked-up ``(T, B, input_size)`` input, but the first layer's input-side GEMMs shrink
        from ``T*B`` rows to ``V`` rows: the input projection is a row gather from the ``(V,
        G*H)`` product ``embedding W_xh^T``, and its gradients are sums of ``da_t`` per token. In
        this mode :meth:`backward` returns the gradient with respect to the table, ``(V,
        input_size)`` (``None`` for one-hot), in place of ``dx``.
        """
        xp = backend.array_module(x)
        x, T, B = self._input(xp, x, embedding)
        h0, c0 = self._split_state(xp, state, B)
        keep, mf = self._masks(xp, lengths, T, B)
        D = self.num_directions
        hn = xp.empty_like(h0)
        cn = xp.empty_like(c0) if c0 is not None else None
        use_dropout = self.training and self.dropout > 0 and self.num_layers > 1
        if use_dropout and rng is None:
            raise ValueError("dropout is active: pass rng=np.random.Generator to forward")
        layers = []
        inp = x
        for k in range(self.num_layers):
            drop = None
            if k > 0 and use_dropout:
                keep_p = 1.0 - self.dropout
                drop = xp.asarray(rng.random(inp.shape) < keep_p).astype(self.param_dtype) / keep_p
                inp = inp * drop
            dirs, outs = [], []
            for d in range(D):
                idx = k * D + d
                dc = self._forward_dir(xp, inp, self._p(k, d), h0[idx], None if c0 is None else c0[idx], keep, d == 1)
                out = dc["S"][:-1] if d == 1 else dc["S"][1:]  # (T, B, H) view
                hn[idx] = dc["S"][0] if d == 1 else dc["S"][T]
                if cn is not None:
                    cn[idx] = dc["C"][0] if d == 1 else dc["C"][T]
                dirs.append(dc)
                outs.append(out)
            if D == 1:
                y = outs[0] if mf is None else outs[0] * mf
            else:
                y = xp.concatenate(outs, axis=2)  # (T, B, 2H)
                if mf is not None:
                    y *= mf
            layers.append({"input": inp, "drop": drop, "dirs": dirs})
            inp = y
        cache = {"layers": layers, "keep": keep, "mf": mf, "T": T, "B": B,
                 "dh": [[None] * D for _ in range(self.num_layers)]}
        state_n = (hn, cn) if self.has_cell_state else hn
        if self.batch_first:
            y = y.transpose(1, 0, 2)  # (T, B, D*H) -> (B, T, D*H)
        return y, state_n, cache

    __call__ = forward

    def _input(self, xp, x, embedding):
        """``(input, T, B)``: token ids and their table (:class:`_Ids`) with ``embedding=``, else
        the checked time-major ``(T, B, I)`` array."""
        if embedding is not None:
            x = self._ids_input(xp, x, embedding)
            return (x, *x.ids.shape)
        x = xp.asarray(x, dtype=self.param_dtype)
        if x.ndim != 3:
            raise ValueError(f"input must be 3-D ({'B, T' if self.batch_first else 'T, B'}, I), got shape {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(1, 0, 2)  # (B, T, I) -> (T, B, I)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"input size {I} does not match the layer's input_size {self.input_size}")
        return x, T, B

    def _ids_input(self, xp, x, embedding):
        """Validate token ids and their table for ``forward(..., embedding=)``."""
        x = xp.asarray(x)
        if x.dtype.kind not in "iu":
            raise TypeError(f"with embedding=, x must hold integer token ids, got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"with embedding=, x must have shape ({'B, T' if self.batch_first else 'T, B'}), "
                             f"got {tuple(x.shape)}")
        if self.batch_first:
            x = x.T  # (B, T) -> (T, B)
        if isinstance(embedding, str):
            if embedding != "onehot":
                raise ValueError(f"embedding must be an array (V, {self.input_size}) or 'onehot', got {embedding!r}")
            table, V = None, self.input_size
        else:
            table = xp.asarray(embedding, dtype=self.param_dtype)
            if table.ndim != 2 or table.shape[1] != self.input_size:
                raise ValueError(f"embedding table must have shape (V, {self.input_size}), got {tuple(table.shape)}")
            V = table.shape[0]
        check_ids(x, V)
        return _Ids(x, table, V, self.input_size)

    def _p(self, k, d):
        n = self.names[k][d]
        return {role: self.params[name] for role, name in n.items()}

    def _g(self, k, d):
        n = self.names[k][d]
        return {role: self.grads[name] for role, name in n.items()}

    def _input_projection(self, xp, inp, p, out):
        """``(T, B, I) -> (T, B, G*H)``: ``x W_xh^T`` for all steps as one GEMM, into ``out``, a
        C-contiguous ``(T, B, G*H)`` array. The bias ``b_h`` is added by the step kernels, which
        read this array anyway."""
        T, B, I = inp.shape
        out2 = out.reshape(T * B, -1)  # (T*B, G*H)
        if isinstance(inp, _Ids):  # a row gather from the (V, G*H) table of projections
            w_t = p["W_xh"].T  # (I, G*H)
            proj = xp.ascontiguousarray(w_t) if inp.table is None else xp.matmul(inp.table, w_t)  # (V, G*H)
            gather_rows(proj, inp.flat, out2)  # ids checked in forward
            return out
        cells.matmul(xp, inp.reshape(T * B, I), p["W_xh"].T, out2)
        return out

    def _gate_buffer(self, xp, inp, p, reverse):
        """The gates of every step in a ``(T+1, B, G*H)`` buffer with one spare row: ``A`` is rows
        ``0..T-1`` (``1..T`` for the reverse direction), filled with the input projection.

        The backward loop writes step ``t``'s pre-activation gradient one row over, into the
        row of the step it visited just before (whose gates it no longer needs) or the spare row
        (see :meth:`_grad_view`). So the gradients need no buffer of their own, and no kernel
        call reads and writes the same row. The price: ``backward`` consumes the cache."""
        T, B, _ = inp.shape
        buf = _ws(xp, (T + 1, B, p["W_xh"].shape[0]), self.param_dtype)
        A = buf[1:] if reverse else buf[:-1]  # (T, B, G*H) view
        self._input_projection(xp, inp, p, out=A)
        return buf, A

    @staticmethod
    def _grad_view(buf, reverse):
        """``dA (T, B, G*H)`` over the gate buffer: ``dA[t]`` is the row after ``A[t]`` (before it
        for the reverse direction), i.e. the row of the step the backward loop visited last."""
        return buf[:-1] if reverse else buf[1:]

    # ------------------------------------------------------------------------- backward
    def backward(self, dy, dstate_n, cache):
        """Backpropagate through time. Returns ``(dx, dstate0)`` and adds into ``grads``.

        ``dy`` is the gradient of the loss with respect to ``y`` (or None), ``dstate_n`` the
        gradient with respect to ``state_n`` (or None; a tuple for the LSTM). After the call
        ``cache["dh"][layer][direction]`` holds ``dL/dh_t`` for every step, ``(T, B, H)``.

        A cache serves one ``backward``: the LSTM and GRU write the gate gradients over the saved
        gates (saving a ``(T, B, G*H)`` buffer per step), so a second call raises ``ValueError``.
        """
        if cache.get("consumed"):
            raise ValueError("this cache was already used by backward (which overwrites the saved gates with "
                             "their gradients); run forward again")
        T, B = cache["T"], cache["B"]
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        first_in = cache["layers"][0]["input"]
        ids_mode = isinstance(first_in, _Ids)
        xp = backend.array_module(first_in.ids if ids_mode else first_in)
        if dy is not None:
            dy = xp.asarray(dy, dtype=self.param_dtype)
            if self.batch_first:
                dy = dy.transpose(1, 0, 2)  # (B, T, D*H) -> (T, B, D*H)
            if dy.shape != (T, B, D * H):
                raise ValueError(f"dy must have shape {(T, B, D * H)} (time-major), got {tuple(dy.shape)}")
        dh_n, dc_n = None, None
        if dstate_n is not None:
            if self.has_cell_state:
                dh_n, dc_n = dstate_n
            else:
                dh_n = dstate_n
        cache["consumed"] = True  # the arguments are checked: from here on the saved gates are overwritten
        dh0 = self._zeros_state(xp, B)
        dc0 = self._zeros_state(xp, B) if self.has_cell_state else None
        keep, mf = cache["keep"], cache["mf"]
        m = None if mf is None else mf[:, :, 0]  # (T, B) row masks for the kernels
        for k in reversed(range(L)):
            lc = cache["layers"][k]
            inp = lc["input"]
            if isinstance(inp, _Ids):  # the table's gradient (V, I), or nothing for one-hot
                dinp = None if inp.table is None else xp.zeros(inp.table.shape, self.param_dtype)
            else:
                dinp = _ws(xp, inp.shape, self.param_dtype)  # C-contiguous, so reshapes are views
            for d in range(D):
                idx = k * D + d
                dy_d = None if dy is None else dy[:, :, d * H : (d + 1) * H]
                dhn_d = None if dh_n is None else dh_n[idx]
                dcn_d = None if dc_n is None else dc_n[idx]
                DH, dh_first, dc_first = self._backward_dir(
                    xp, dy_d, dhn_d, dcn_d, lc["dirs"][d], inp, self._p(k, d), self._g(k, d), keep, m, d == 1,
                    dinp, d == 0,
                )
                cache["dh"][k][d] = DH
                dh0[idx] = dh_first
                if dc0 is not None:
                    dc0[idx] = dc_first
            if lc["drop"] is not None:
                dinp *= lc["drop"]
            dy = dinp
        dx = dy
        if self.batch_first and not ids_mode:
            dx = dx.transpose(1, 0, 2)  # (T, B, I) -> (B, T, I)
        return dx, ((dh0, dc0) if self.has_cell_state else dh0)

    def _weight_grads(self, xp, dA, inp, hprev, p, g, dinp, first):
        """The whole-sequence GEMMs: ``dW_hh += dA^T h_prev``, ``dW_xh += dA^T x``,
        ``db_h += sum dA``, ``dx (+)= dA W_xh`` with ``dA (T, B, G*H)``; ``first`` (the first
        direction of a layer) writes ``dx`` instead of adding to it."""
        T, B, GH = dA.shape
        dA2 = dA.reshape(T * B, GH)  # (T*B, G*H)
        _gemm_add(xp, dA2.T, hprev.reshape(T * B, -1), g["W_hh"])
        self._input_grads(xp, [(0, GH, dA2)], inp, p, g, dinp, first)

    def _input_grads(self, xp, parts, inp, p, g, dinp, first):
        """Input-side gradients from ``parts = [(lo, hi, dA2 (T*B, hi-lo))]``, the pre-activation
        gradients of rows ``lo:hi`` of ``W_xh``: ``dW_xh += dA^T x``, ``db_h += sum dA``,
        ``dx (+)= dA W_xh``.

        For token-id input (``forward(..., embedding=)``) the ``T*B`` rows collapse to ``V``
        first: ``Q[v] = sum of dA over the steps whose token is v`` (a scatter-add), then
        ``dW_xh += Q^T E``, ``db_h += sum_v Q[v]`` and ``dE += Q W_xh`` (one-hot: ``E = I``,
        no ``dE``)."""
        w = p["W_xh"]
        if isinstance(inp, _Ids):
            Q = xp.zeros((inp.V, w.shape[0]), self.param_dtype)  # (V, G*H) per-token sums of dA
            for lo, hi, dpart in parts:
                scatter_add_rows(Q[:, lo:hi], inp.flat, dpart)
            if inp.table is None:
                g["W_xh"] += Q.T
            else:
                _gemm_add(xp, Q.T, inp.table, g["W_xh"])
            if "b_h" in g:
                g["b_h"] += Q.sum(axis=0)
            if dinp is not None:
                dinp += Q @ w
            return
        N = parts[0][2].shape[0]
        x2 = inp.reshape(N, -1)  # (T*B, I)
        dx2 = dinp.reshape(N, -1)
        for j, (lo, hi, dpart) in enumerate(parts):
            _gemm_add(xp, dpart.T, x2, g["W_xh"][lo:hi])
            if "b_h" in g:
                g["b_h"][lo:hi] += dpart.sum(axis=0)
            _gemm_into(xp, dpart, w[lo:hi], dx2, first and j == 0)

    @staticmethod
    def _steps(T, reverse):
        """Indices ``(t, prev, cur)`` into the ``(T+1, B, H)`` state buffer ``S``: forward
        keeps ``h_t`` in ``S[t+1]`` (``S[0] = h0``), reverse keeps it in ``S[t]`` (``S[T] = h0``)."""
        if reverse:
            return [(t, t + 1, t) for t in range(T - 1, -1, -1)]
        return [(t, t, t + 1) for t in range(T)]

    def _kernels(self, xp):
        return cells.kernels_for(xp, self.param_dtype)

    def _loops(self, xp, w_hh):
        """The compiled loops over time (:func:`cells.sequence_loops`) when they apply to these
        arrays, else None (the Python loop below each call runs the same steps)."""
        loops = cells.sequence_loops(xp, self.param_dtype)
        return loops if loops is not None and w_hh.flags.c_contiguous else None

    def _dstate(self, xp, d_n, B):
        """A fresh ``(B, H)`` buffer holding ``d_n`` (zeros when None), updated by the loop."""
        if d_n is None:
            return xp.zeros((B, self.hidden_size), self.param_dtype)
        return xp.array(d_n, dtype=self.param_dtype, order="C")


class _Ids:
    """The first layer's input given as token ids (``forward(..., embedding=)``): the rows of
    ``table (V, I)``, or one-hot vectors when ``table`` is None (``V = I``)."""

    def __init__(self, ids, table, V, I):
        self.ids = ids  # (T, B) time-major
        self.flat = ids.reshape(-1)  # (T*B,)
        self.table = table
        self.V = V
        self.shape = tuple(ids.shape) + (I,)  # the (T, B, I) input it stands for


def _gemm_into(xp, a, b, out, overwrite):
    """``out = a @ b`` when ``overwrite``, else ``out += a @ b`` (:func:`cells.matmul`)."""
    cells.matmul(xp, a, b, out, add=not overwrite)


def _gemm_add(xp, a, b, out):
    """``out += a @ b`` (:func:`cells.matmul`: the packed kernel when the loop settings say so,
    else NumPy's GEMM into a pooled temporary and one add)."""
    cells.matmul(xp, a, b, out, add=True)


class RNN(_Recurrent):
    """Elman RNN, ``h_t = act(W_hh h_{t-1} + W_xh x_t + b_h)``, act = ``"tanh"`` or ``"relu"``.

    Parameters per layer ``k``: ``W_xh_l{k} (H, I_k)``, ``W_hh_l{k} (H, H)``, ``b_h_l{k} (H,)``
    (suffix ``_reverse`` for the second direction). PyTorch's ``bias_ih + bias_hh`` is ``b_h``.
    """

    gates = 1
    mode = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **kw):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, **kw)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")

    def _forward_dir(self, xp, inp, p, h0, c0, keep, reverse):
        T, B, _ = inp.shape
        H = self.hidden_size
        K = self._kernels(xp)
        S = _ws(xp, (T + 1, B, H), self.param_dtype)  # states; outputs are a view
        S[T if reverse else 0] = h0
        self._input_projection(xp, inp, p, out=S[:-1] if reverse else S[1:])  # W_xh x_t, in place
        whh_t, b = p["W_hh"].T, p.get("b_h")
        tmp = xp.empty((B, H), self.param_dtype)
        relu = self.nonlinearity == "relu"
        loops = self._loops(xp, p["W_hh"])
        if loops is not None:
            loops.rnn_forward(S, p["W_hh"], b, relu, keep, reverse, tmp)
        else:
            for t, ip, ic in self._steps(T, reverse):
                xp.matmul(S[ip], whh_t, out=tmp)
                cur = S[ic]
                K.rnn_forward(cur, tmp, b, relu, cur)
                if keep is not None:
                    xp.copyto(cur, S[ip], where=keep[t])
        return {"S": S}

    def _backward_dir(self, xp, dy, dh_n, dc_n, dc, inp, p, g, keep, m, reverse, dinp, first):
        S = dc["S"]
        T, B, H = S.shape[0] - 1, S.shape[1], S.shape[2]
        K = self._kernels(xp)
        DH = _ws(xp, (T, B, H), self.param_dtype)
        dA = _ws(xp, (T, B, H), self.param_dtype)
        dnext = self._dstate(xp, dh_n, B)
        w_hh = p["W_hh"]
        relu = self.nonlinearity == "relu"
        loops = self._loops(xp, w_hh)
        if loops is not None:
            loops.rnn_backward(dy, dnext, m, S, relu, w_hh, keep, reverse, DH, dA)
        else:
            for t, ip, ic in reversed(self._steps(T, reverse)):
                K.rnn_backward(None if dy is None else dy[t], dnext, None if m is None else m[t], S[ic], relu,
                               DH[t], dA[t])
                xp.matmul(dA[t], w_hh, out=dnext)
                if keep is not None:
                    xp.copyto(dnext, DH[t], where=keep[t])
        hprev = S[1:] if reverse else S[:-1]
        self._weight_grads(xp, dA, inp, hprev, p, g, dinp, first)
        return DH, dnext, None


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with forget gate), gates i, f, g, o.

    Parameters per layer ``k``: ``W_xh_l{k} (4H, I_k)``, ``W_hh_l{k} (4H, H)``, ``b_h_l{k} (4H,)``.
    State is the tuple ``(h, c)``. ``forget_bias=`` sets the forget gate's bias at init.
    """

    gates = 4
    has_cell_state = True
    mode = "lstm"

    def _forward_dir(self, xp, inp, p, h0, c0, keep, reverse):
        T, B, _ = inp.shape
        H = self.hidden_size
        K = self._kernels(xp)
        Abuf, A = self._gate_buffer(xp, inp, p, reverse)  # A (T, B, 4H): W_xh x_t, then the gates
        S = _ws(xp, (T + 1, B, H), self.param_dtype)
        C = _ws(xp, (T + 1, B, H), self.param_dtype)
        TC = _ws(xp, (T, B, H), self.param_dtype)  # tanh(c_t)
        S[T if reverse else 0] = h0
        C[T if reverse else 0] = c0
        whh_t, b = p["W_hh"].T, p.get("b_h")
        tmp = xp.empty((B, 4 * H), self.param_dtype)
        loops = self._loops(xp, p["W_hh"])
        if loops is not None:
            loops.lstm_forward(A, S, C, TC, p["W_hh"], b, keep, reverse, tmp)
        else:
            for t, ip, ic in self._steps(T, reverse):
                xp.matmul(S[ip], whh_t, out=tmp)
                K.lstm_forward(A[t], tmp, b, C[ip], C[ic], TC[t], S[ic])
                if keep is not None:
                    xp.copyto(S[ic], S[ip], where=keep[t])
                    xp.copyto(C[ic], C[ip], where=keep[t])
        return {"S": S, "C": C, "A": A, "Abuf": Abuf, "TC": TC}

    def _backward_dir(self, xp, dy, dh_n, dc_n, dc, inp, p, g, keep, m, reverse, dinp, first):
        S, C, A, TC = dc["S"], dc["C"], dc["A"], dc["TC"]
        T, B, H = TC.shape
        K = self._kernels(xp)
        DH = _ws(xp, (T, B, H), self.param_dtype)
        dA = self._grad_view(dc["Abuf"], reverse)  # (T, B, 4H), over the gates already used
        dnext = self._dstate(xp, dh_n, B)
        dcell = self._dstate(xp, dc_n, B)  # dL/dc_t, updated in place by the kernel
        w_hh = p["W_hh"]
        loops = self._loops(xp, w_hh)
        if loops is not None:
            loops.lstm_backward(dy, dnext, m, dcell, A, C, TC, w_hh, keep, reverse, DH, dA)
        else:
            for t, ip, ic in reversed(self._steps(T, reverse)):
                K.lstm_backward(None if dy is None else dy[t], dnext, None if m is None else m[t], dcell, A[t], C[ip],
                                TC[t], DH[t], dA[t])
                xp.matmul(dA[t], w_hh, out=dnext)
                if keep is not None:
                    xp.copyto(dnext, DH[t], where=keep[t])
        hprev = S[1:] if reverse else S[:-1]
        self._weight_grads(xp, dA, inp, hprev, p, g, dinp, first)
        return DH, dnext, dcell


class GRU(_Recurrent):
    """Gated recurrent unit (Cho et al. 2014), PyTorch's variant with ``b_hn`` inside the reset
    product; gates r, z, n.

    Parameters per layer ``k``: ``W_xh_l{k} (3H, I_k)``, ``W_hh_l{k} (3H, H)``, ``b_h_l{k} (3H,)``
    (PyTorch's ``b_ir + b_hr``, ``b_iz + b_hz``, ``b_in``) and ``b_hn_l{k} (H,)``.
    """

    gates = 3
    mode = "gru"

    def _forward_dir(self, xp, inp, p, h0, c0, keep, reverse):
        T, B, _ = inp.shape
        H = self.hidden_size
        K = self._kernels(xp)
        Abuf, A = self._gate_buffer(xp, inp, p, reverse)  # A (T, B, 3H): input parts, then gates r, z, n
        S = _ws(xp, (T + 1, B, H), self.param_dtype)
        HN = _ws(xp, (T, B, H), self.param_dtype)  # W_hn h_{t-1} + b_hn
        S[T if reverse else 0] = h0
        whh_t, b, b_hn = p["W_hh"].T, p.get("b_h"), p.get("b_hn")
        hh = xp.empty((B, 3 * H), self.param_dtype)
        loops = self._loops(xp, p["W_hh"])
        if loops is not None:
            loops.gru_forward(A, S, HN, p["W_hh"], b, b_hn, keep, reverse, hh)
        else:
            for t, ip, ic in self._steps(T, reverse):
                xp.matmul(S[ip], whh_t, out=hh)
                K.gru_forward(A[t], hh, b, b_hn, S[ip], HN[t], S[ic])
                if keep is not None:
                    xp.copyto(S[ic], S[ip], where=keep[t])
        return {"S": S, "A": A, "Abuf": Abuf, "HN": HN}

    def _backward_dir(self, xp, dy, dh_n, dc_n, dc, inp, p, g, keep, m, reverse, dinp, first):
        S, A, HN = dc["S"], dc["A"], dc["HN"]
        T, B, H = HN.shape
        K = self._kernels(xp)
        DH = _ws(xp, (T, B, H), self.param_dtype)
        dHH = self._grad_view(dc["Abuf"], reverse)  # (T, B, 3H) [dar, daz, dhh_n], over used gates
        dAn = _ws(xp, (T, B, H), self.param_dtype)  # candidate's input-side gradient
        dnext = self._dstate(xp, dh_n, B)  # dL/dh_t through W_hh (the GEMM's output)
        direct = xp.zeros((B, H), self.param_dtype)  # dL/dh_t that bypasses W_hh (dh * z)
        w_hh = p["W_hh"]
        loops = self._loops(xp, w_hh)
        if loops is not None:
            loops.gru_backward(dy, dnext, direct, m, A, HN, S, w_hh, keep, reverse, DH, dHH, dAn)
        else:
            for t, ip, ic in reversed(self._steps(T, reverse)):
                K.gru_backward(None if dy is None else dy[t], dnext, direct, None if m is None else m[t], A[t], HN[t],
                               S[ip], DH[t], dHH[t], dAn[t])
                xp.matmul(dHH[t], w_hh, out=dnext)
                if keep is not None:
                    xp.copyto(dnext, DH[t], where=keep[t])
        dnext += direct
        hprev = (S[1:] if reverse else S[:-1]).reshape(T * B, H)  # (T*B, H)
        dHH2 = dHH.reshape(T * B, 3 * H)  # (T*B, 3H)
        dAn2 = dAn.reshape(T * B, H)  # (T*B, H)
        _gemm_add(xp, dHH2.T, hprev, g["W_hh"])
        if "b_hn" in g:
            g["b_hn"] += dHH2[:, 2 * H :].sum(axis=0)
        self._input_grads(xp, [(0, 2 * H, dHH2[:, : 2 * H]), (2 * H, 3 * H, dAn2)], inp, p, g, dinp, first)
        return DH, dnext, None
