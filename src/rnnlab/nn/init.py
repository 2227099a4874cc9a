"""Weight initialisers. Each takes an explicit ``rng`` (``np.random.Generator``) and a dtype and
returns a host NumPy array; layers move it to the active backend.

- :func:`uniform_fan` — PyTorch's default for recurrent and linear layers,
  ``U(-1/sqrt(fan), +1/sqrt(fan))``.
- :func:`xavier_uniform` — Glorot & Bengio (2010), ``U(±sqrt(6 / (fan_in + fan_out)))``.
- :func:`orthogonal` — Saxe et al. (2014), a (semi-)orthogonal matrix from the QR decomposition
  of a Gaussian matrix, sign-corrected so that the distribution is uniform (Haar).
- :func:`chrono_biases` — Tallec & Ollivier (2018), gate biases that spread the cells' memory
  time constants over ``[1, T_max]``.
"""
from __future__ import annotations

import numpy as np


def uniform_fan(rng: np.random.Generator, shape, fan: int, dtype=np.float32) -> np.ndarray:
    """``U(-k, k)`` with ``k = 1/sqrt(fan)``."""
    k = 1.0 / np.sqrt(max(fan, 1))
    return rng.uniform(-k, k, size=shape).astype(dtype)


def xavier_uniform(rng: np.random.Generator, shape, dtype=np.float32, gain: float = 1.0) -> np.ndarray:
    """Glorot uniform for a ``(fan_out, fan_in)`` matrix."""
    fan_out, fan_in = shape[0], int(np.prod(shape[1:]))
    a = gain * np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(dtype)


def orthogonal(rng: np.random.Generator, shape, dtype=np.float32, gain: float = 1.0) -> np.ndarray:
    """A ``(rows, cols)`` matrix with orthonormal rows or columns (whichever are fewer)."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)  # q: (max, min) orthonormal columns
    q *= np.sign(np.diag(r))  # Haar-uniform
    if rows < cols:
        q = q.T
    return (gain * q).astype(dtype)


def scale_spectral_radius(w: np.ndarray, radius: float) -> np.ndarray:
    """``w`` rescaled so that its largest absolute eigenvalue equals ``radius``."""
    rho = np.max(np.abs(np.linalg.eigvals(w.astype(np.float64))))
    return (w * (radius / rho)).astype(w.dtype)


def chrono_biases(rng: np.random.Generator, b: np.ndarray, H: int, mode: str, t_max: float) -> np.ndarray:
    """Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"),
    written into the gate bias ``b (G*H,)`` in place.

    A gate bias ``β`` makes a cell forget at rate about ``1 - σ(β)`` per step, i.e. remember for
    ``1 / (1 - σ(β)) ≈ 1 + e^β`` steps. Drawing ``e^β - 1`` uniformly between ``1`` and
    ``T_max - 1`` spreads those memory lengths over the range of dependencies to expect::

        LSTM (gates i, f, g, o):   b_f ~ log U(1, T_max - 1),   b_i = -b_f
        GRU  (gates r, z, n):      b_z ~ log U(1, T_max - 1)    (z is the fraction of h_{t-1} kept)

    The other gates' biases are left as they are.
    """
    tau = np.log(rng.uniform(1.0, t_max - 1.0, size=H)).astype(b.dtype)
    if mode == "lstm":
        b[H : 2 * H] = tau  # forget gate
        b[0:H] = -tau  # input gate
    elif mode == "gru":
        b[H : 2 * H] = tau  # update gate z: h_t = (1 - z) n_t + z h_{t-1}
    else:
        raise ValueError(f"chrono initialisation is for LSTM and GRU gates, not {mode!r}")
    return b
