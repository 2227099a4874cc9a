"""Optimizers, gradient clipping and learning-rate schedules, written against ``torch.optim``.

Every optimizer holds a module's two dicts, ``params`` and ``grads`` (identical keys, qualified
names such as ``"rnn.W_hh_l0"``), and updates the parameter arrays *in place*: the arrays are
shared by reference with the modules, so they are never rebound. The update formulas follow
PyTorch's single-tensor implementations operation for operation (where ``eps`` is added, where
the bias corrections go, how running averages are interpolated), so a trajectory agrees with
``torch.optim`` to rounding in float64.

One module per job; every public name is importable from ``rnnlab.optim``:

- ``base`` — :class:`Optimizer`, the bookkeeping every optimizer shares: the parameter dicts,
  the step counter, per-parameter state ("slots"), ``zero_grad``, ``state_dict`` /
  ``load_state_dict``. Subclasses only write the update of one parameter.
- ``optimizers`` — :class:`SGD` (momentum, dampening, Nesterov, L2 weight decay),
  :class:`Adagrad`, :class:`RMSprop` (momentum, centred), :class:`Adam` (AMSGrad),
  :class:`AdamW`; :data:`OPTIMIZERS` and :func:`make_optimizer`.
- ``clipping`` — :func:`clip_grad_norm`, :func:`clip_grad_value`: in place, ``torch.nn.utils``
  semantics.
- ``schedules`` — rates set from a step count (:class:`ConstantLR`, :class:`StepLR`,
  :class:`ExponentialLR`, :class:`CosineWithWarmup`) or from the elapsed share of a time budget
  (``progress=``); :data:`SCHEDULES` and :func:`make_schedule`.
- ``state`` — :func:`flatten_state` / :func:`unflatten_state`, which turn an optimizer state into
  named host arrays plus JSON metadata for a safetensors checkpoint.

Notation in the docstrings: ``θ`` a parameter, ``g`` its gradient, ``t`` the step number
(1 for the first step), ``η`` the learning rate, ``λ`` the weight decay.

All arithmetic runs in the parameters' own array module (NumPy or CuPy, asked of each array with
:func:`rnnlab.backend.array_module`) and dtype; hyper-parameters are Python floats, so a
float32 model stays float32.
"""
from __future__ import annotations

from .base import Optimizer
from .clipping import clip_grad_norm, clip_grad_value
from .optimizers import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, RMSprop, make_optimizer
from .schedules import SCHEDULES, ConstantLR, CosineWithWarmup, ExponentialLR, LRSchedule, StepLR, make_schedule
from .state import flatten_state, unflatten_state

__all__ = [
    "Optimizer",
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "clip_grad_norm",
    "clip_grad_value",
    "LRSchedule",
    "ConstantLR",
    "StepLR",
    "ExponentialLR",
    "CosineWithWarmup",
    "OPTIMIZERS",
    "SCHEDULES",
    "make_optimizer",
    "make_schedule",
    "flatten_state",
    "unflatten_state",
]
