"""The step kernels as fused CUDA kernels, for CuPy arrays: one launch per step each way.

Same signatures and semantics as :class:`rnnlab.nn.cells.UfuncKernels` (see the equations in
:mod:`rnnlab.nn.cells`); :func:`rnnlab.nn.cells.kernels_for` hands this set out for CuPy arrays.
A straightforward CuPy cell costs one launch per ufunc, a dozen or more per step; here the bias,
the recurrent term, the gate non-linearities and the state update of a step are one kernel, so
the loop over time runs one cuBLAS GEMM and one fused kernel per step in each direction, with no
host-device synchronisation inside the loop.

Each kernel walks the ``(B, H)`` index space: thread ``k`` handles batch row ``b = k / H`` and
unit ``j = k % H`` and reads the gate columns ``j, H+j, 2H+j, ...`` of row ``b``. Arrays are
C-contiguous ``(B, H)`` or ``(B, G*H)`` rows, except ``dy``, which may be a column slice of a
bidirectional output (its row stride is passed). Compiled on first use for float32 and float64.
"""
from __future__ import annotations

import numpy as np

_SOURCE = r"""
__device__ __forceinline__ T sig(T x) { return (T)0.5 * tanh((T)0.5 * x) + (T)0.5; }

extern "C" __global__ void rnn_forward(const T* a, const T* hh, const T* b, int has_b, int relu,
                                       T* h_out, long long n, int H) {
  long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= n) return;
  int j = (int)(k % H);
  T v = a[k] + hh[k] + (has_b ? b[j] : (T)0);
  h_out[k] = relu ? (v > (T)0 ? v : (T)0) : tanh(v);
}

extern "C" __global__ void rnn_backward(const T* dy, long long dys, int has_dy, const T* dnext,
                                        const T* m, int has_m, const T* h, int relu,
                                        T* dh_out, T* da_out, long long n, int H) {
  long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= n) return;
  long long b = k / H; int j = (int)(k % H);
  T mm = has_m ? m[b] : (T)1;
  T dh = (has_dy ? dy[b * dys + j] * mm : (T)0) + dnext[k];
  dh_out[k] = dh;
  T hv = h[k];
  T d = relu ? (hv > (T)0 ? (T)1 : (T)0) : ((T)1 - hv * hv);
  da_out[k] = dh * d * mm;
}

extern "C" __global__ void lstm_forward(T* a, const T* hh, const T* b, int has_b, const T* c_prev,
                                        T* c_out, T* tc_out, T* h_out, long long n, int H) {
  long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= n) return;
  long long row = (k / H) * 4 * H; int j = (int)(k % H);
  T* ar = a + row; const T* hr = hh + row;
  T ai = ar[j] + hr[j], af = ar[H + j] + hr[H + j], ag = ar[2 * H + j] + hr[2 * H + j],
    ao = ar[3 * H + j] + hr[3 * H + j];
  if (has_b) { ai += b[j]; af += b[H + j]; ag += b[2 * H + j]; ao += b[3 * H + j]; }
  T i = sig(ai), f = sig(af), g = tanh(ag), o = sig(ao);
  ar[j] = i; ar[H + j] = f; ar[2 * H + j] = g; ar[3 * H + j] = o;
  T c = f * c_prev[k] + i * g;
  T tc = tanh(c);
  c_out[k] = c; tc_out[k] = tc; h_out[k] = o * tc;
}

extern "C" __global__ void lstm_backward(const T* dy, long long dys, int has_dy, const T* dnext,
                                         const T* m, int has_m, T* dc, const T* gates,
                                         const T* c_prev, const T* tc, T* dh_out, T* da_out,
                                         long long n, int H) {
  long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= n) return;
  long long b = k / H; int j = (int)(k % H);
  long long row = b * 4 * H;
  T mm = has_m ? m[b] : (T)1;
  T dh = (has_dy ? dy[b * dys + j] * mm : (T)0) + dnext[k];
  dh_out[k] = dh;
  T dhe = dh * mm;
  const T* gr = gates + row;
  T i = gr[j], f = gr[H + j], g = gr[2 * H + j], o = gr[3 * H + j];
  T t = tc[k];
  T dct = dc[k] + dhe * o * ((T)1 - t * t);
  T* dr = da_out + row;
  dr[j] = dct * g * i * ((T)1 - i) * mm;
  dr[H + j] = dct * c_prev[k] * f * ((T)1 - f) * mm;
  dr[2 * H + j] = dct * i * ((T)1 - g * g) * mm;
  dr[3 * H + j] = dhe * t * o * ((T)1 - o) * mm;
  if (mm != (T)0) dc[k] = dct * f;
}

extern "C" __global__ void gru_forward(T* ax, const T* hh, const T* b, int has_b, const T* b_hn,
                                       int has_bhn, const T* h_prev, T* hn_out, T* h_out,
                                       long long n, int H) {
  long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= n) return;
  long long row = (k / H) * 3 * H; int j = (int)(k % H);
  T* ar = ax + row; const T* hr = hh + row;
  T xr = ar[j], xz = ar[H + j], xn = ar[2 * H + j];
  if (has_b) { xr += b[j]; xz += b[H + j]; xn += b[2 * H + j]; }
  T r = sig(xr + hr[j]), z = sig(xz + hr[H + j]);
  T hn = hr[2 * H + j] + (has_bhn ? b_hn[j] : (T)0);
  T nn = tanh(xn + r * hn);
  ar[j] = r; ar[H + j] = z; ar[2 * H + j] = nn;
  hn_out[k] = hn;
  h_out[k] = nn + z * (h_prev[k] - nn);
}

extern "C" __global__ void gru_backward(const T* dy, long long dys, int has_dy, const T* dnext,
                                        T* direct, const T* m, int has_m, const T* gates,
                                        const T* hn, const T* h_prev, T* dh_out, T* dhh_out,
                                        T* dan_out, long long n, int H) {
  long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (k >= n) return;
  long long b = k / H; int j = (int)(k % H);
  long long row = b * 3 * H;
  T mm = has_m ? m[b] : (T)1;
  T dh = (has_dy ? dy[b * dys + j] * mm : (T)0) + dnext[k] + direct[k];
  dh_out[k] = dh;
  T dhe = dh * mm;
  const T* gr = gates + row;
  T r = gr[j], z = gr[H + j], nn = gr[2 * H + j];
  T dan = dhe * ((T)1 - z) * ((T)1 - nn * nn);
  T* dr = dhh_out + row;
  dr[H + j] = (h_prev[k] - nn) * dhe * z * ((T)1 - z);
  dr[j] = dan * hn[k] * r * ((T)1 - r);
  dr[2 * H + j] = dan * r;
  dan_out[k] = dan;
  direct[k] = dhe * z;
}
"""

_THREADS = 256
_MODULES: dict = {}


def _module(cp, dtype):
    key = np.dtype(dtype).name
    mod = _MODULES.get(key)
    if mod is None:
        ctype = {"float32": "float", "float64": "double"}[key]
        mod = _MODULES[key] = cp.RawModule(code=f"typedef {ctype} T;\n" + _SOURCE, options=("--std=c++14",))
    return mod


class CupyKernels:
    """The kernel set for CuPy arrays of one dtype (float32 or float64)."""

    name = "cuda"

    def __init__(self, cp, dtype):
        self.cp = cp
        self.dtype = np.dtype(dtype)
        mod = _module(cp, dtype)
        self._k = {n: mod.get_function(n) for n in
                   ("rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward")}
        self._dummy = cp.zeros(1, dtype)

    # -------------------------------------------------------------------------- helpers
    def _launch(self, name, n, args):
        blocks = (n + _THREADS - 1) // _THREADS
        if blocks:
            self._k[name]((blocks,), (_THREADS,), args)

    def _opt(self, x):
        return (self._dummy, np.int32(0)) if x is None else (self._c(x), np.int32(1))

    def _c(self, x):
        if not x.flags.c_contiguous or x.dtype != self.dtype:
            raise ValueError(f"fused CUDA kernels need C-contiguous {self.dtype} arrays, got {x.dtype} "
                             f"strides {x.strides}")
        return x

    def _dy(self, dy, H):
        """``(dy, row stride in elements, has_dy)``; ``dy (B, H)`` may be a column slice."""
        if dy is None:
            return self._dummy, np.int64(0), np.int32(0)
        if dy.dtype != self.dtype or dy.strides[-1] != dy.itemsize:
            dy = self.cp.ascontiguousarray(dy, dtype=self.dtype)
        return dy, np.int64(dy.strides[0] // dy.itemsize), np.int32(1)

    # -------------------------------------------------------------------------- vanilla RNN
    def rnn_forward(self, a, hh, b, relu, h_out):
        B, H = h_out.shape
        bb, has_b = self._opt(b)
        self._launch("rnn_forward", B * H, (self._c(a), self._c(hh), bb, has_b, np.int32(bool(relu)),
                                            self._c(h_out), np.int64(B * H), np.int32(H)))

    def rnn_backward(self, dy, dnext, m, h, relu, dh_out, da_out):
        B, H = h.shape
        d, dys, has_dy = self._dy(dy, H)
        mm, has_m = self._opt(m)
        self._launch("rnn_backward", B * H, (d, dys, has_dy, self._c(dnext), mm, has_m, self._c(h),
                                             np.int32(bool(relu)), self._c(dh_out), self._c(da_out),
                                             np.int64(B * H), np.int32(H)))

    # -------------------------------------------------------------------------- LSTM
    def lstm_forward(self, a, hh, b, c_prev, c_out, tc_out, h_out):
        B, H = c_prev.shape
        bb, has_b = self._opt(b)
        self._launch("lstm_forward", B * H, (self._c(a), self._c(hh), bb, has_b, self._c(c_prev), self._c(c_out),
                                             self._c(tc_out), self._c(h_out), np.int64(B * H), np.int32(H)))

    def lstm_backward(self, dy, dnext, m, dc, gates, c_prev, tc, dh_out, da_out):
        B, H = c_prev.shape
        d, dys, has_dy = self._dy(dy, H)
        mm, has_m = self._opt(m)
        self._launch("lstm_backward", B * H, (d, dys, has_dy, self._c(dnext), mm, has_m, self._c(dc),
                                              self._c(gates), self._c(c_prev), self._c(tc), self._c(dh_out),
                                              self._c(da_out), np.int64(B * H), np.int32(H)))

    # -------------------------------------------------------------------------- GRU
    def gru_forward(self, ax, hh, b, b_hn, h_prev, hn_out, h_out):
        B, H = h_prev.shape
        bb, has_b = self._opt(b)
        bn, has_bn = self._opt(b_hn)
        self._launch("gru_forward", B * H, (self._c(ax), self._c(hh), bb, has_b, bn, has_bn, self._c(h_prev),
                                            self._c(hn_out), self._c(h_out), np.int64(B * H), np.int32(H)))

    def gru_backward(self, dy, dnext, direct, m, gates, hn, h_prev, dh_out, dhh_out, dan_out):
        B, H = h_prev.shape
        d, dys, has_dy = self._dy(dy, H)
        mm, has_m = self._opt(m)
        self._launch("gru_backward", B * H, (d, dys, has_dy, self._c(dnext), self._c(direct), mm, has_m,
                                             self._c(gates), self._c(hn), self._c(h_prev), self._c(dh_out),
                                             self._c(dhh_out), self._c(dan_out), np.int64(B * H), np.int32(H)))


_SETS: dict = {}


def kernels(cp, dtype):
    """The cached :class:`CupyKernels` for ``dtype`` (float32/float64), else None."""
    key = np.dtype(dtype).name
    if key not in ("float32", "float64"):
        return None
    if key not in _SETS:
        _SETS[key] = CupyKernels(cp, dtype)
    return _SETS[key]
