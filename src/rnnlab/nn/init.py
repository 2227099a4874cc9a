"""Weight initialisers. Each takes an explicit ``rng`` (``np.random.Generator``) and a dtype and
returns a host NumPy array; layers move it to the active backend.

- :func:`uniform_fan` — PyTorch's default for recurrent and linear layers,
  ``U(-1/sqrt(fan), +1/sqrt(fan))``.
- :func:`xavier_uniform` — Glorot & Bengio (2010), ``U(±sqrt(6 / (fan_in + fan_out)))``.
- :func:`orthogonal` — Saxe et al. (2014), a (semi-)orthogonal matrix from the QR decomposition
  of a Gaussian matrix, sign-corrected so that the distribution is uniform (Haar).
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
