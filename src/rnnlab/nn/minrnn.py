r"""Minimal gated RNNs — minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?") —
with their backward passes by hand.

Every gate and the candidate depend on the layer's input ``x_t`` only, never on ``h_{t-1}``, so
the recurrence is the linear scan ``h_t = a_t * h_{t-1} + b_t`` of :mod:`rnnlab.nn.scan`, and
all matrix products of a layer are one GEMM over the ``T*B`` steps. Per layer ``k``, with
``P_t = W_xh x_t + b_h`` (the gate pre-activations, ``(G*H,)``)::

    minGRU   (G = 2, P = [k | p]):
        z_t = sigmoid(k_t)                      update gate
        c_t = g(p_t)                            candidate
        h_t = (1 - z_t) h_{t-1} + z_t c_t       a_t = 1 - z_t,  b_t = z_t c_t

    minLSTM  (G = 3, P = [k_f | k_i | p]):
        f_t = sigmoid(k_f),  i_t = sigmoid(k_i)
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)     (normalised: f' + i' = 1)
        h_t = f'_t h_{t-1} + i'_t c_t           a_t = f'_t,  b_t = i'_t c_t,  c_t = g(p_t)

    g(p) = p + 1/2 (p >= 0),  sigmoid(p) (p < 0)      positive and continuous with its slope,
                                                       so log c exists for the log-space scan

In log space (the parallel scan), with ``softplus(x) = log(1 + e^x)``::

    minGRU:  log a = -softplus(k),   log b = -softplus(-k) + log g(p)
    minLSTM: u = softplus(-k_f) - softplus(-k_i) = log(i / f),
             log a = -softplus(u),   log b = -softplus(-u) + log g(p)
    log g(p) = log(p + 1/2) (p >= 0),  -softplus(-p) (p < 0)

Backward. The reverse scan gives ``lambda_t``, the total ``dL/dh_t`` (:mod:`rnnlab.nn.scan`);
then ``dL/da_t = lambda_t h_{t-1}``, ``dL/db_t = lambda_t`` and, through the gates::

    minGRU:   dk = lambda (c - h_{t-1}) z (1 - z),       dp = lambda z g'(p)
    minLSTM:  du = f' i' lambda (c - h_{t-1}),
              dk_f = -du (1 - f),  dk_i = du (1 - i),    dp = lambda i' g'(p)
    g'(p) = 1 (p >= 0),  sigmoid(p) (1 - sigmoid(p)) (p < 0)

    dW_xh = sum_t dP_t^T x_t,  db_h = sum_t dP_t,  dx_t = dP_t W_xh      (one GEMM each)
    dL/dh_0 = a_1 lambda_1

Shape legend: ``T`` time, ``B`` batch, ``I`` input size, ``H`` hidden size, ``G`` gates,
``L`` layers; ``x (T, B, I)``, ``y (T, B, H)``, ``state (L, B, H)``.

Modes (the same numbers either way, to rounding):

- ``mode="scan"`` (training): the input GEMM of all steps, then the scan over the whole
  sequence, evaluated as ``scan="log"`` (the parallel log-space form) or ``scan="sequential"``
  (the loop ``h_t = a_t h_{t-1} + b_t``: one compiled numba call per layer that also computes
  the gates, :mod:`rnnlab.nn.fused_minrnn`, or a ufunc loop without numba). ``scan="auto"``
  (default) is the sequential form, the fastest on a CPU (see docs/experiments.md).
- ``mode="step"``: one step at a time, ``x_t -> P_t -> h_t``, which is how generation runs; its
  backward walks the steps in reverse (``lambda``, ``dP_t``, ``dx_t = dP_t W_xh`` per step).

``lengths (B,)``: past a row's end the state is frozen (``a = 1, b = 0``), the output is zero
and no gradient flows from there. After ``backward``, ``cache["dh"][layer][0]`` holds
``lambda_t = dL/dh_t`` for every step, ``(T, B, H)``, as the other recurrent layers do.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from . import init as winit
from .activations import sigmoid
from .cells import compiled_module
from .embedding import gather_rows, scatter_add_rows
from .module import Module
from .recurrent import _Ids, _Recurrent, _gemm_add
from .scan import log_scan, log_scan_adjoint, seq_scan, seq_scan_adjoint
from .workspace import empty as _ws_empty

MODES = ("scan", "step")
SCANS = ("auto", "sequential", "log")


def compiled_kernels(xp, dtype):
    """:mod:`rnnlab.nn.fused_minrnn` for NumPy float32/float64 arrays when numba is in use
    (:func:`rnnlab.nn.cells.numba_enabled`), else None."""
    return compiled_module(xp, dtype, "fused_minrnn")


def _ws(xp, shape, dtype):
    return _ws_empty(shape, dtype, xp)


# ---------------------------------------------------------------------- element-wise helpers
def softplus(x):
    """``log(1 + exp(x))``, stable for any ``x``."""
    xp = backend.array_module(x)
    out = xp.exp(-xp.abs(x))
    xp.log1p(out, out=out)
    out += xp.maximum(x, 0)
    return out


def g(p):
    """The candidate activation ``p + 1/2`` (``p >= 0``), ``sigmoid(p)`` (``p < 0``)."""
    xp = backend.array_module(p)
    return xp.where(p >= 0, p + p.dtype.type(0.5), sigmoid(p))


def log_g(p):
    """``log g(p)``: ``log(p + 1/2)`` (``p >= 0``), ``-softplus(-p)`` (``p < 0``)."""
    xp = backend.array_module(p)
    return xp.where(p >= 0, xp.log(xp.maximum(p, 0) + p.dtype.type(0.5)), -softplus(-p))


def g_grad(p):
    """``g'(p)``: 1 (``p >= 0``), ``s (1 - s)`` with ``s = sigmoid(p)`` (``p < 0``)."""
    xp = backend.array_module(p)
    s = sigmoid(p)
    return xp.where(p >= 0, p.dtype.type(1), s * (1 - s))


# ---------------------------------------------------------------------- the layers
class _MinRNN(Module):
    """Layers, padding, dropout, modes and the input-side GEMMs shared by minGRU and minLSTM;
    subclasses give the gates: :meth:`_coeffs`, :meth:`_log_coeffs`, :meth:`_gate_grads` and
    the names of their compiled kernels."""

    gates = 2
    kind = "min"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, *, mode: str = "scan", scan: str = "auto",
                 dtype=np.float32, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.mode, self.scan = mode, scan
        self.param_dtype = np.dtype(dtype)
        rng = rng if rng is not None else np.random.default_rng()
        G, H = self.gates, self.hidden_size
        for k in range(self.num_layers):
            in_k = self.input_size if k == 0 else H
            self.add_param(f"W_xh_l{k}", winit.uniform_fan(rng, (G * H, in_k), in_k, dtype))
            if self.bias:
                self.add_param(f"b_h_l{k}", winit.uniform_fan(rng, (G * H,), in_k, dtype))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s + f", mode={self.mode!r}, scan={self.scan!r}"

    # -------------------------------------------------------------------- helpers
    def _W(self, k):
        return self.params[f"W_xh_l{k}"]

    def _b(self, k):
        return self.params.get(f"b_h_l{k}")

    def _scan_impl(self, xp) -> str:
        """``"log"``, ``"compiled"`` (numba) or ``"loop"`` (ufuncs) for this call."""
        if self.scan == "log":
            return "log"
        return "compiled" if compiled_kernels(xp, self.param_dtype) is not None else "loop"

    # the same checks of the input, and of token ids and their table, as the classic cells
    _input, _ids_input = _Recurrent._input, _Recurrent._ids_input

    def _masks(self, xp, lengths, T, B):
        """``(pad (T, B) bool: True past a row's end, valid (T, B, 1) float)`` or ``(None, None)``."""
        if lengths is None:
            return None, None
        lengths = backend.to_numpy(lengths)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        lengths = lengths.astype(np.int64)
        if lengths.min(initial=0) < 0 or lengths.max(initial=0) > T:
            raise ValueError(f"lengths must lie in [0, T={T}], got {lengths.min()}..{lengths.max()}")
        valid = np.arange(T)[:, None] < lengths[None, :]  # (T, B)
        return xp.asarray(~valid), xp.asarray(valid[:, :, None].astype(self.param_dtype))

    def _projection_table(self, xp, inp, k):
        """For token-id input: the ``(V, G*H)`` table ``E W_xh^T`` (``W_xh^T`` for one-hot)."""
        w_t = self._W(k).T  # (I, G*H)
        return xp.ascontiguousarray(w_t) if inp.table is None else xp.matmul(inp.table, w_t)

    def _project(self, xp, inp, k, out):
        """``out (T', B, G*H) = x W_xh^T + b_h`` for the steps of ``inp`` (all of them, or one)."""
        n = out.shape[0] * out.shape[1]
        out2 = out.reshape(n, -1)  # (T'*B, G*H)
        if isinstance(inp, _Ids):
            gather_rows(self._projection_table(xp, inp, k), inp.flat, out2)  # ids checked in forward
        else:
            xp.matmul(inp.reshape(n, -1), self._W(k).T, out=out2)
        b = self._b(k)
        if b is not None:
            out += b
        return out

    # -------------------------------------------------------------------- forward
    def forward(self, x, state=None, lengths=None, rng: np.random.Generator | None = None, embedding=None):
        """Run the whole sequence: ``(y (T, B, H), h_n (L, B, H), cache)``.

        ``embedding`` fuses a token lookup into the first layer as in :class:`rnnlab.nn.RNN`:
        ``x`` holds ids ``(T, B)`` and the first layer's ``P`` is a row gather from the ``(V,
        G*H)`` table ``E W_xh^T``; :meth:`backward` then returns ``dE (V, I)`` (None for
        ``"onehot"``) in place of ``dx``. ``rng`` is needed for dropout between layers."""
        xp = backend.array_module(x)
        inp, T, B = self._input(xp, x, embedding)
        L, H = self.num_layers, self.hidden_size
        if state is None:
            h0 = xp.zeros((L, B, H), self.param_dtype)
        else:
            h0 = xp.asarray(state, dtype=self.param_dtype)
            if h0.shape != (L, B, H):
                raise ValueError(f"state must have shape {(L, B, H)}, got {tuple(h0.shape)}")
        pad, valid = self._masks(xp, lengths, T, B)
        use_dropout = self.training and self.dropout > 0 and L > 1
        if use_dropout and rng is None:
            raise ValueError("dropout is active: pass rng=np.random.Generator to forward")
        hn = xp.empty_like(h0)
        layers = []
        for k in range(L):
            drop = None
            if k > 0 and use_dropout:
                keep_p = 1.0 - self.dropout
                drop = xp.asarray(rng.random(inp.shape) < keep_p).astype(self.param_dtype) / keep_p
                inp = inp * drop
            P, S = self._layer_forward(xp, inp, k, h0[k], pad)
            hn[k] = S[T]
            layers.append({"input": inp, "drop": drop, "P": P, "S": S})
            inp = S[1:] if valid is None else S[1:] * valid  # (T, B, H)
        y = inp
        cache = {"layers": layers, "pad": pad, "valid": valid, "T": T, "B": B, "mode": self.mode,
                 "scan": self._scan_impl(xp), "dh": [[None] for _ in range(L)]}
        if self.batch_first:
            y = y.transpose(1, 0, 2)  # (T, B, H) -> (B, T, H)
        return y, hn, cache

    __call__ = forward

    def _layer_forward(self, xp, inp, k, h0, pad):
        """``P (T, B, G*H)`` and the states ``S (T+1, B, H)`` (``S[0] = h_0``) of layer ``k``."""
        T, B = inp.shape[0], inp.shape[1]
        H, GH = self.hidden_size, self.gates * self.hidden_size
        P = _ws(xp, (T, B, GH), self.param_dtype)
        S = _ws(xp, (T + 1, B, H), self.param_dtype)
        S[0] = h0
        if self.mode == "step":  # one step at a time, as generation runs
            table = self._projection_table(xp, inp, k) if isinstance(inp, _Ids) else None
            w_t, b = self._W(k).T, self._b(k)
            for t in range(T):
                if table is not None:
                    gather_rows(table, inp.ids[t], P[t])
                    if b is not None:
                        P[t] += b
                else:
                    xp.matmul(inp[t], w_t, out=P[t])  # (B, I) @ (I, G*H)
                    if b is not None:
                        P[t] += b
                a, bb = self._coeffs(xp, P[t])
                xp.multiply(a, S[t], out=S[t + 1])
                S[t + 1] += bb
                if pad is not None:
                    xp.copyto(S[t + 1], S[t], where=pad[t][:, None])
            return P, S
        self._project(xp, inp, k, P)
        impl = self._scan_impl(xp)
        if impl == "compiled":
            getattr(compiled_kernels(xp, self.param_dtype), f"{self.kind}_forward")(P, S, pad)
        elif impl == "loop":
            a, bb = self._coeffs(xp, P)  # (T, B, H) each
            if pad is not None:
                a[pad], bb[pad] = 1, 0
            seq_scan(a, bb, S)
        else:
            la, lb = self._log_coeffs(xp, P)
            if pad is not None:
                la[pad], lb[pad] = 0, -np.inf
            S[1:] = log_scan(la, lb, S[0])
        return P, S

    # -------------------------------------------------------------------- backward
    def backward(self, dy, dstate_n, cache):
        """``(dx (T, B, I), dh0 (L, B, H))`` from ``dy (T, B, H)`` and ``dstate_n (L, B, H)``
        (either may be None); adds into ``grads``. With token-id input ``dx`` is ``dE``."""
        T, B = cache["T"], cache["B"]
        L, H = self.num_layers, self.hidden_size
        first_in = cache["layers"][0]["input"]
        ids_mode = isinstance(first_in, _Ids)
        xp = backend.array_module(first_in.ids if ids_mode else first_in)
        if dy is not None:
            dy = xp.asarray(dy, dtype=self.param_dtype)
            if self.batch_first:
                dy = dy.transpose(1, 0, 2)  # (B, T, H) -> (T, B, H)
            if dy.shape != (T, B, H):
                raise ValueError(f"dy must have shape {(T, B, H)} (time-major), got {tuple(dy.shape)}")
        pad, valid = cache["pad"], cache["valid"]
        dh0 = xp.zeros((L, B, H), self.param_dtype)
        for k in reversed(range(L)):
            lc = cache["layers"][k]
            g = dy if dy is None or valid is None else dy * valid  # no gradient from padding
            dhn = None if dstate_n is None else dstate_n[k]
            dP, DH, dh0[k] = self._layer_backward(xp, g, dhn, lc, k, pad, cache["mode"], cache["scan"])
            cache["dh"][k][0] = DH
            dinp = self._input_grads(xp, dP, lc["input"], k, cache["mode"])
            if lc["drop"] is not None:
                dinp *= lc["drop"]
            dy = dinp
        dx = dy
        if self.batch_first and not ids_mode:
            dx = dx.transpose(1, 0, 2)  # (T, B, I) -> (B, T, I)
        return dx, dh0

    def _layer_backward(self, xp, g, dhn, lc, k, pad, mode, impl):
        """``(dP (T, B, G*H), lambda (T, B, H), dL/dh_0 (B, H))`` of layer ``k``."""
        P, S = lc["P"], lc["S"]
        T, B, GH = P.shape
        H = self.hidden_size
        if mode == "scan" and impl == "compiled":
            lam = xp.zeros((B, H), self.param_dtype) if dhn is None else xp.array(dhn, dtype=self.param_dtype)
            DH = _ws(xp, (T, B, H), self.param_dtype)
            dP = _ws(xp, (T, B, GH), self.param_dtype)
            getattr(compiled_kernels(xp, self.param_dtype), f"{self.kind}_backward")(g, lam, pad, P, S, DH, dP)
            return dP, DH, lam
        if mode == "step":
            DH = _ws(xp, (T, B, H), self.param_dtype)
            dP = _ws(xp, (T, B, GH), self.param_dtype)
            lam = xp.zeros((B, H), self.param_dtype) if dhn is None else xp.array(dhn, dtype=self.param_dtype)
            for t in range(T - 1, -1, -1):
                if g is not None:
                    lam += g[t]
                DH[t] = lam
                self._gate_grads(xp, P[t], lam, S[t], dP[t])
                a, _ = self._coeffs(xp, P[t])
                if pad is not None:
                    dP[t][pad[t]] = 0
                    a[pad[t]] = 1
                lam *= a
            return dP, DH, lam
        if impl == "loop":
            a, _ = self._coeffs(xp, P)
            if pad is not None:
                a[pad] = 1
            DH = _ws(xp, (T, B, H), self.param_dtype)
            dh0 = seq_scan_adjoint(a, g, dhn, DH)
        else:  # log
            la, _ = self._log_coeffs(xp, P)
            if pad is not None:
                la[pad] = 0
            DH, dh0 = log_scan_adjoint(la, xp.zeros((T, B, H), self.param_dtype) if g is None else g, dhn)
        dP = _ws(xp, (T, B, GH), self.param_dtype)
        self._gate_grads(xp, P, DH, S[:-1], dP)
        if pad is not None:
            dP[pad] = 0
        return dP, DH, dh0

    def _input_grads(self, xp, dP, inp, k, mode):
        """``dW_xh += dP^T x``, ``db_h += sum dP``, and ``dx = dP W_xh`` (``dE`` for ids: the
        per-token sums ``Q (V, G*H)`` of ``dP`` first, then ``dW += Q^T E``, ``dE = Q W``).
        In step mode ``dx_t`` and ``dW`` are computed step by step."""
        W = self._W(k)
        gw, gb = self.grads[f"W_xh_l{k}"], self.grads.get(f"b_h_l{k}")
        T, B, GH = dP.shape
        dP2 = dP.reshape(T * B, GH)  # (T*B, G*H)
        if gb is not None:
            gb += dP2.sum(axis=0)
        if isinstance(inp, _Ids):
            Q = xp.zeros((inp.V, GH), self.param_dtype)  # (V, G*H)
            scatter_add_rows(Q, inp.flat, dP2)
            if inp.table is None:
                gw += Q.T
                return None
            _gemm_add(xp, Q.T, inp.table, gw)  # (G*H, V) @ (V, I)
            return Q @ W  # (V, I)
        dx = _ws(xp, inp.shape, self.param_dtype)  # (T, B, I)
        if mode == "step":
            for t in range(T):
                xp.matmul(dP[t], W, out=dx[t])  # (B, G*H) @ (G*H, I)
                _gemm_add(xp, dP[t].T, inp[t], gw)
            return dx
        _gemm_add(xp, dP2.T, inp.reshape(T * B, -1), gw)  # (G*H, T*B) @ (T*B, I)
        xp.matmul(dP2, W, out=dx.reshape(T * B, -1))
        return dx


class MinGRU(_MinRNN):
    """minGRU: ``h_t = (1 - z_t) h_{t-1} + z_t g(p_t)``, ``z_t = sigmoid(k_t)``, ``[k | p] =
    W_xh x_t + b_h``. Parameters per layer ``k``: ``W_xh_l{k} (2H, I_k)``, ``b_h_l{k} (2H,)``
    (rows: update gate, candidate). See the module docstring."""

    gates = 2
    kind = "mingru"

    def _coeffs(self, xp, P):
        H = self.hidden_size
        z = sigmoid(P[..., :H])
        b = g(P[..., H:])
        b *= z
        a = 1 - z
        return a, b

    def _log_coeffs(self, xp, P):
        H = self.hidden_size
        k = P[..., :H]
        la = -softplus(k)
        lb = log_g(P[..., H:])
        lb -= softplus(-k)
        return la, lb

    def _gate_grads(self, xp, P, lam, hprev, out):
        """``out = [dk | dp]`` from ``lambda`` and ``h_{t-1}`` (any leading shape)."""
        H = self.hidden_size
        k, p = P[..., :H], P[..., H:]
        z = sigmoid(k)
        dz = lam * (g(p) - hprev)
        out[..., :H] = dz * z * (1 - z)
        out[..., H:] = lam * z * g_grad(p)


class MinLSTM(_MinRNN):
    """minLSTM: ``h_t = f'_t h_{t-1} + i'_t g(p_t)`` with the normalised gates ``f' = f/(f+i)``,
    ``i' = i/(f+i)``, ``f = sigmoid(k_f)``, ``i = sigmoid(k_i)``. Parameters per layer ``k``:
    ``W_xh_l{k} (3H, I_k)``, ``b_h_l{k} (3H,)`` (rows: forget, input, candidate)."""

    gates = 3
    kind = "minlstm"

    def _u(self, P):
        """``u = log(i / f) = softplus(-k_f) - softplus(-k_i)``; ``f' = sigmoid(-u)``, ``i' = sigmoid(u)``."""
        H = self.hidden_size
        u = softplus(-P[..., :H])
        u -= softplus(-P[..., H : 2 * H])
        return u

    def _coeffs(self, xp, P):
        H = self.hidden_size
        u = self._u(P)
        b = g(P[..., 2 * H :])
        b *= sigmoid(u)
        return sigmoid(-u), b

    def _log_coeffs(self, xp, P):
        H = self.hidden_size
        u = self._u(P)
        la = -softplus(u)
        lb = log_g(P[..., 2 * H :])
        lb -= softplus(-u)
        return la, lb

    def _gate_grads(self, xp, P, lam, hprev, out):
        H = self.hidden_size
        kf, ki, p = P[..., :H], P[..., H : 2 * H], P[..., 2 * H :]
        u = self._u(P)
        fn, inn = sigmoid(-u), sigmoid(u)
        du = fn * inn * lam * (g(p) - hprev)
        out[..., :H] = -du * (1 - sigmoid(kf))
        out[..., H : 2 * H] = du * (1 - sigmoid(ki))
        out[..., 2 * H :] = lam * inn * g_grad(p)
