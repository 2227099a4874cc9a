"""One timestep of each recurrent cell, forward and backward: pure kernels, no loop over time.

Every kernel reads and writes arrays that the caller owns (views into the loop's preallocated
``(T, B, ...)`` buffers), so the time loop in :mod:`rnnlab.nn.recurrent` allocates nothing per
step. ``a`` is the pre-activation of all gates for one step, ``(B, G*H)``, already holding
``W_xh x_t + b_h + W_hh h_{t-1}`` (the GRU keeps its recurrent term apart, see below).

Shape legend: ``B`` batch, ``H`` hidden size, ``G`` gates (RNN 1, LSTM 4, GRU 3).

Vanilla RNN::

    h_t = act(a_t)                                   act = tanh | relu
    da_t = dh_t * act'(h_t)                          tanh' = 1 - h^2,  relu' = [h > 0]

LSTM (gate order i, f, g, o as in PyTorch)::

    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);   g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;      h_t = o * tanh(c_t)

    dc   = dc_t(from t+1) + dh_t * o * (1 - tanh(c_t)^2)
    da_i = dc * g * i(1-i);   da_f = dc * c_{t-1} * f(1-f)
    da_g = dc * i * (1-g^2);  da_o = dh_t * tanh(c_t) * o(1-o);   dc_{t-1} = dc * f

GRU (gate order r, z, n as in PyTorch; ``b_hn`` sits inside the reset product)::

    r = sigmoid(ax_r + hh_r);  z = sigmoid(ax_z + hh_z)        hh = W_hh h_{t-1}  (no bias)
    n = tanh(ax_n + r * (hh_n + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

    dn = dh * (1-z);   dz = dh * (h_{t-1} - n);   dan = dn * (1 - n^2)
    dar = dan * (hh_n + b_hn) * r(1-r);   daz = dz * z(1-z);   dhh_n = dan * r
    dh_{t-1} = [dar, daz, dhh_n] W_hh + dh * z

The sigmoid is computed as ``0.5 * tanh(x / 2) + 0.5``: exact, free of overflow warnings, and one
transcendental per element.
"""
from __future__ import annotations


def sigmoid_(x, xp):
    """In-place logistic sigmoid of ``x``."""
    x *= 0.5
    xp.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


# ------------------------------------------------------------------------------ vanilla RNN
def rnn_forward_step(a, act: str, xp):
    """``a (B, H)`` pre-activation -> ``h_t`` written over ``a``."""
    if act == "tanh":
        xp.tanh(a, out=a)
    else:  # relu
        xp.maximum(a, 0, out=a)
    return a


def rnn_backward_step(dh, h, act: str, out, xp):
    """``da = dh * act'(h)`` into ``out (B, H)``; ``h`` is the step's output."""
    if act == "tanh":
        xp.multiply(h, h, out=out)
        xp.subtract(1, out, out=out)
        out *= dh
    else:
        xp.greater(h, 0, out=out)  # bool -> float cast
        out *= dh
    return out


# ------------------------------------------------------------------------------ LSTM
def lstm_forward_step(a, c_prev, c_out, tc_out, h_out, xp):
    """Gates from ``a (B, 4H)`` (activated in place), then ``c_t``, ``tanh(c_t)``, ``h_t``."""
    H = c_prev.shape[-1]
    sigmoid_(a[:, : 2 * H], xp)           # i, f
    xp.tanh(a[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])  # g
    sigmoid_(a[:, 3 * H :], xp)            # o
    i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    xp.multiply(f, c_prev, out=c_out)
    c_out += i * g
    xp.tanh(c_out, out=tc_out)
    xp.multiply(o, tc_out, out=h_out)


def lstm_backward_step(dh, dc, gates, c_prev, tc, da, xp):
    """Pre-activation gradient ``da (B, 4H)`` from ``dh`` and ``dc`` (the gradient reaching
    ``c_t`` from step t+1, updated in place to the total ``dL/dc_t``). Returns ``dc_{t-1}``."""
    H = c_prev.shape[-1]
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    da_i, da_f, da_g, da_o = da[:, :H], da[:, H : 2 * H], da[:, 2 * H : 3 * H], da[:, 3 * H :]
    # da_o = dh * tanh(c) * o (1 - o)
    xp.multiply(dh, tc, out=da_o)
    da_o *= o * (1 - o)
    # dc += dh * o * (1 - tanh(c)^2)
    dc += dh * o * (1 - tc * tc)
    xp.multiply(dc, g, out=da_i)
    da_i *= i * (1 - i)
    xp.multiply(dc, c_prev, out=da_f)
    da_f *= f * (1 - f)
    xp.multiply(dc, i, out=da_g)
    da_g *= 1 - g * g
    return dc * f


# ------------------------------------------------------------------------------ GRU
def gru_forward_step(ax, hh, b_hn, h_prev, hn_out, h_out, xp):
    """``ax (B, 3H)`` input part (bias included), ``hh (B, 3H) = h_prev W_hh^T``.

    Writes the gates ``r, z, n`` over ``ax``, ``hh_n + b_hn`` into ``hn_out`` and ``h_t`` into
    ``h_out``.
    """
    H = h_prev.shape[-1]
    rz = ax[:, : 2 * H]
    rz += hh[:, : 2 * H]
    sigmoid_(rz, xp)
    r, z, n = ax[:, :H], ax[:, H : 2 * H], ax[:, 2 * H :]
    if b_hn is None:
        hn_out[...] = hh[:, 2 * H :]
    else:
        xp.add(hh[:, 2 * H :], b_hn, out=hn_out)
    n += r * hn_out
    xp.tanh(n, out=n)
    # h = n + z * (h_prev - n)
    xp.subtract(h_prev, n, out=h_out)
    h_out *= z
    h_out += n


def gru_backward_step(dh, gates, hn, h_prev, dhh, dan, xp):
    """From ``dh (B, H)``: ``dhh (B, 3H) = [dar, daz, dhh_n]`` (the recurrent GEMM's input) and
    ``dan (B, H)`` (the candidate's input-side pre-activation gradient). Returns ``dh * z``,
    the part of ``dh_{t-1}`` that bypasses ``W_hh``."""
    H = h_prev.shape[-1]
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    dar, daz, dhn = dhh[:, :H], dhh[:, H : 2 * H], dhh[:, 2 * H :]
    # dan = dh * (1 - z) * (1 - n^2)
    xp.multiply(dh, 1 - z, out=dan)
    dan *= 1 - n * n
    # daz = dh * (h_prev - n) * z (1 - z)
    xp.subtract(h_prev, n, out=daz)
    daz *= dh
    daz *= z * (1 - z)
    # dar = dan * hn * r (1 - r);  dhh_n = dan * r
    xp.multiply(dan, hn, out=dar)
    dar *= r * (1 - r)
    xp.multiply(dan, r, out=dhn)
    return dh * z
