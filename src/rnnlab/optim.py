"""Optimizers, gradient clipping and learning-rate schedules, written against ``torch.optim``.

Every optimizer holds a module's two dicts, ``params`` and ``grads`` (identical keys, qualified
names such as ``"rnn.W_hh_l0"``), and updates the parameter arrays *in place*: the arrays are
shared by reference with the modules, so they are never rebound. The update formulas follow
PyTorch's single-tensor implementations operation for operation (where ``eps`` is added, where
the bias corrections go, how running averages are interpolated), so a trajectory agrees with
``torch.optim`` to rounding in float64.

Contents, simplest first:

- :class:`Optimizer` — the bookkeeping every optimizer shares: the parameter dicts, the step
  counter, per-parameter state ("slots"), ``zero_grad``, ``state_dict`` / ``load_state_dict``.
  Subclasses only write the update of one parameter.
- :class:`SGD` (momentum, dampening, Nesterov, L2 weight decay), :class:`Adagrad`,
  :class:`RMSprop` (momentum, centred), :class:`Adam` (AMSGrad), :class:`AdamW`.
- :func:`clip_grad_norm`, :func:`clip_grad_value` — in place, ``torch.nn.utils`` semantics.
- Schedules that set ``optimizer.lr`` from a step count: :class:`ConstantLR`, :class:`StepLR`,
  :class:`ExponentialLR`, :class:`CosineWithWarmup`.
- Factories :func:`make_optimizer`, :func:`make_schedule`, and :func:`flatten_state` /
  :func:`unflatten_state`, which turn an optimizer state into named host arrays plus JSON
  metadata for a safetensors checkpoint.

Notation in the docstrings: ``θ`` a parameter, ``g`` its gradient, ``t`` the step number
(1 for the first step), ``η`` the learning rate, ``λ`` the weight decay.

All arithmetic runs in the parameters' own array module (NumPy or CuPy, asked of each array with
:func:`rnnlab.backend.array_module`) and dtype; hyper-parameters are Python floats, so a
float32 model stays float32.
"""
from __future__ import annotations

import inspect
import math

import numpy as np

from . import backend
from .errors import RnnlabError

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


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _lerp_(start, end, weight: float) -> None:
    """``start <- start + weight * (end - start)``, in place, rounded the way PyTorch does.

    ``torch.lerp`` evaluates ``start + w (end - start)`` for ``|w| < 0.5`` and
    ``end - (end - start)(1 - w)`` otherwise; both are the same number in exact arithmetic.
    """
    if abs(weight) < 0.5:
        start += weight * (end - start)
    else:
        start[...] = end - (end - start) * (1.0 - weight)


def _fused_kernels(xp, param, slots=()):
    """The numba kernel set for ``param`` (NumPy float32/float64; it and its slots contiguous, so
    flat views write through), else None."""
    if xp is not np or not param.flags.c_contiguous or not all(a.flags.c_contiguous for a in slots):
        return None
    from .nn.cells import fused_kernels

    return fused_kernels(xp, param.dtype)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RnnlabError(message)


# ---------------------------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------------------------
class Optimizer:
    """Bookkeeping shared by every optimizer; subclasses supply :meth:`_update`.

    Parameters
    ----------
    params, grads : dict[str, array]
        A module's ``params`` and ``grads`` (identical keys, same shapes). Held by reference;
        :meth:`step` writes into ``params`` in place and never modifies ``grads``.
    lr : float
        Learning rate ``η``. A plain attribute: schedules set ``optimizer.lr`` between steps.

    Attributes
    ----------
    step_count : int
        Number of :meth:`step` calls so far (the ``t`` of the update equations after the step).
    slots : dict[str, dict[str, array]]
        Per-parameter state, ``slots[slot_name][param_name]``, on the parameters' device and in
        their dtype (e.g. ``slots["exp_avg"]["rnn.W_hh_l0"]`` for Adam).

    Notes
    -----
    A subclass declares its hyper-parameters in ``hyper_names`` (stored as attributes and saved
    by :meth:`state_dict`), validates them in :meth:`_validate`, names its slots in
    :meth:`_slot_names` and initialises them in :meth:`_init_slot`.
    """

    name = "optimizer"
    """Registry name, written into the state dict as ``"type"``."""

    hyper_names: tuple[str, ...] = ()
    """Hyper-parameters other than ``lr``, saved and restored by the state dict."""

    def __init__(self, params: dict, grads: dict, lr: float) -> None:
        if set(params) != set(grads):
            missing = sorted(set(params) - set(grads))
            extra = sorted(set(grads) - set(params))
            raise ValueError(
                f"params and grads must have identical keys: no grad for {missing}, "
                f"no param for {extra}"
            )
        for key, p in params.items():
            if tuple(p.shape) != tuple(grads[key].shape):
                raise ValueError(
                    f"{key}: grad shape {tuple(grads[key].shape)} does not match "
                    f"param shape {tuple(p.shape)}"
                )
        self.params = params
        self.grads = grads
        self.lr = float(lr)
        self.step_count = 0
        self.slots: dict[str, dict] = {}
        self.no_decay: frozenset = frozenset()

    def exclude_from_decay(self, names) -> None:
        """Exempt the parameters ``names`` from weight decay (e.g. biases and LayerNorm gains, so
        that decay acts on matrices only). A property of the model, not saved in the state."""
        names = frozenset(names)
        unknown = sorted(names - set(self.params))
        if unknown:
            raise ValueError(f"exclude_from_decay: no parameters named {unknown}")
        self.no_decay = names

    def _finish_init(self) -> None:
        """Validate the hyper-parameters and allocate the slots (end of subclass ``__init__``)."""
        self._validate()
        self._allocate_slots()

    # -- what subclasses provide --------------------------------------------------------------
    def _validate(self) -> None:
        """Raise :class:`RnnlabError` for an impossible hyper-parameter."""
        _check(math.isfinite(self.lr) and self.lr >= 0.0, f"invalid learning rate {self.lr}: use lr >= 0")

    def _slot_names(self) -> tuple[str, ...]:
        """The per-parameter state this configuration needs."""
        return ()

    def _init_slot(self, slot: str, param):
        """The initial value of one slot for one parameter (zeros unless overridden)."""
        return backend.array_module(param).zeros_like(param)

    def _update(self, param, grad, state: dict, t: int, wd: float) -> None:
        """Update ``param`` in place from ``grad``; ``state`` maps slot names to this
        parameter's slot arrays; ``t`` is the step number (1 for the first step); ``wd`` is the
        weight decay for this parameter (the optimizer's, or 0 for one in :attr:`no_decay`)."""
        raise NotImplementedError

    # -- the loop ----------------------------------------------------------------------------
    def _allocate_slots(self) -> None:
        self.slots = {
            slot: {key: self._init_slot(slot, p) for key, p in self.params.items()}
            for slot in self._slot_names()
        }

    def step(self) -> None:
        """Apply one update to every parameter, in place, from the current gradients."""
        self.step_count += 1
        t = self.step_count
        for key, param in self.params.items():
            state = {slot: arrays[key] for slot, arrays in self.slots.items()}
            wd = 0.0 if key in self.no_decay else float(getattr(self, "weight_decay", 0.0))
            self._update(param, self.grads[key], state, t, wd)

    def zero_grad(self) -> None:
        """Set every gradient to zero, in place."""
        for g in self.grads.values():
            g.fill(0)

    # -- state -------------------------------------------------------------------------------
    def hyperparameters(self) -> dict:
        """The hyper-parameters other than ``lr`` as JSON-able Python values."""
        out = {}
        for key in self.hyper_names:
            value = getattr(self, key)
            if isinstance(value, tuple):
                value = [float(v) for v in value]
            elif isinstance(value, bool):
                value = bool(value)
            else:
                value = float(value)
            out[key] = value
        return out

    def state_dict(self) -> dict:
        """A copy of everything needed to continue training bit for bit.

        Returns
        -------
        dict
            ``{"type": name, "step": int, "lr": float, <hyper-parameters>...,
            "slots": {slot_name: {param_name: host numpy array}}}``; the arrays are copies.
        """
        state = {"type": self.name, "step": int(self.step_count), "lr": float(self.lr)}
        state.update(self.hyperparameters())
        state["slots"] = {
            slot: {key: np.array(backend.to_numpy(a), copy=True) for key, a in arrays.items()}
            for slot, arrays in self.slots.items()
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` exactly: step, lr, hyper-parameters and slots.

        Slot arrays are copied onto the parameters' device in the parameters' dtype. Raises
        :class:`RnnlabError` when the state belongs to another optimizer type or its parameter
        names or shapes do not match this optimizer's parameters; nothing is changed then.
        """
        if not isinstance(state, dict):
            raise RnnlabError(f"optimizer state must be a dict, got {type(state).__name__}")
        kind = state.get("type")
        if kind != self.name:
            raise RnnlabError(
                f"optimizer state is for {kind!r} but this optimizer is {self.name!r}: "
                f"build a {kind!r} optimizer or start the optimizer afresh"
            )
        needed = ("step", "lr", "slots") + self.hyper_names
        missing = [k for k in needed if k not in state]
        if missing:
            raise RnnlabError(f"optimizer state for {self.name!r} lacks {missing}: the checkpoint is incomplete")

        # hyper-parameters first (they decide which slots exist); roll back if invalid
        saved = {k: getattr(self, k) for k in ("lr",) + self.hyper_names}
        try:
            self.lr = float(state["lr"])
            for key in self.hyper_names:
                value = state[key]
                old = saved[key]
                if isinstance(old, tuple):
                    value = tuple(float(v) for v in value)
                elif isinstance(old, bool):
                    value = bool(value)
                else:
                    value = float(value)
                setattr(self, key, value)
            self._validate()
            new_slots = self._load_slots(state["slots"])
        except Exception:
            for key, value in saved.items():
                setattr(self, key, value)
            raise
        self.slots = new_slots
        self.step_count = int(state["step"])

    def _load_slots(self, saved_slots: dict) -> dict:
        expected = set(self._slot_names())
        if set(saved_slots) != expected:
            raise RnnlabError(
                f"optimizer state has slots {sorted(saved_slots)} but {self.name!r} with these "
                f"settings needs {sorted(expected)}: the checkpoint does not match"
            )
        out = {}
        for slot in self._slot_names():
            arrays = saved_slots[slot]
            missing = sorted(set(self.params) - set(arrays))
            extra = sorted(set(arrays) - set(self.params))
            if missing or extra:
                raise RnnlabError(
                    f"optimizer state {slot!r} does not match the model: missing {missing}, "
                    f"unexpected {extra}; load it into the model it was saved with"
                )
            out[slot] = {}
            for key, p in self.params.items():
                value = arrays[key]
                if tuple(value.shape) != tuple(p.shape):
                    raise RnnlabError(
                        f"optimizer state {slot}.{key}: shape {tuple(value.shape)} does not "
                        f"match the parameter's {tuple(p.shape)}"
                    )
                xp = backend.array_module(p)
                out[slot][key] = xp.array(value, dtype=p.dtype, copy=True)
        return out

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyper_names)
        return f"{type(self).__name__}(lr={self.lr!r}{', ' if hp else ''}{hp}, step={self.step_count})"


# ---------------------------------------------------------------------------------------------
# optimizers, simplest first
# ---------------------------------------------------------------------------------------------
class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 decay.

    Exactly ``torch.optim.SGD``::

        g   <- g + λ θ                                    (if λ != 0)
        b_1 =  g;   b_t <- μ b_{t-1} + (1 - τ) g          (if μ != 0; τ = dampening)
        g   <- g + μ b_t  (Nesterov)   or   g <- b_t       (if μ != 0)
        θ   <- θ - η g

    The momentum buffer starts as the first gradient itself (not as zeros), so dampening does
    not scale the first step.

    Parameters
    ----------
    lr : float
        ``η`` (PyTorch's default 1e-3).
    momentum : float
        ``μ`` (0 = plain SGD).
    dampening : float
        ``τ``; must be 0 with Nesterov.
    nesterov : bool
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    weight_decay : float
        ``λ``, L2 penalty added to the gradient.
    """

    name = "sgd"
    hyper_names = ("momentum", "dampening", "nesterov", "weight_decay")

    def __init__(self, params, grads, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(params, grads, lr)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self._finish_init()

    def _validate(self) -> None:
        super()._validate()
        _check(self.momentum >= 0.0, f"invalid momentum {self.momentum}: use momentum >= 0")
        _check(self.weight_decay >= 0.0, f"invalid weight_decay {self.weight_decay}: use weight_decay >= 0")
        _check(not self.nesterov or (self.momentum > 0.0 and self.dampening == 0.0),
               "Nesterov momentum needs momentum > 0 and dampening = 0")

    def _slot_names(self):
        return ("momentum_buffer",) if self.momentum != 0.0 else ()

    def _update(self, param, grad, state, t, wd):
        if wd != 0.0:
            grad = grad + wd * param
        if self.momentum != 0.0:
            buf = state["momentum_buffer"]
            if t == 1:
                buf[...] = grad
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.lr * grad


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011), exactly ``torch.optim.Adagrad`` for dense gradients::

        g   <- g + λ θ                          (if λ != 0)
        η_t =  η / (1 + (t - 1) δ)              (δ = lr_decay)
        s_t =  s_{t-1} + g²                     (s_0 = initial_accumulator_value)
        θ   <- θ - η_t g / (√s_t + ε)

    Parameters
    ----------
    lr : float
        ``η`` (default 1e-2).
    lr_decay : float
        ``δ``.
    weight_decay : float
        ``λ``, L2 penalty added to the gradient.
    initial_accumulator_value : float
        ``s_0``, the starting value of every accumulator entry.
    eps : float
        ``ε``, added *after* the square root (default 1e-10).
    """

    name = "adagrad"
    hyper_names = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, params, grads, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10) -> None:
        super().__init__(params, grads, lr)
        self.lr_decay = float(lr_decay)
        self.weight_decay = float(weight_decay)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.eps = float(eps)
        self._finish_init()

    def _validate(self) -> None:
        super()._validate()
        _check(self.lr_decay >= 0.0, f"invalid lr_decay {self.lr_decay}: use lr_decay >= 0")
        _check(self.weight_decay >= 0.0, f"invalid weight_decay {self.weight_decay}: use weight_decay >= 0")
        _check(self.initial_accumulator_value >= 0.0,
               f"invalid initial_accumulator_value {self.initial_accumulator_value}: use a value >= 0")
        _check(self.eps >= 0.0, f"invalid eps {self.eps}: use eps >= 0")

    def _slot_names(self):
        return ("sum",)

    def _init_slot(self, slot, param):
        return backend.array_module(param).full_like(param, self.initial_accumulator_value)

    def _update(self, param, grad, state, t, wd):
        xp = backend.array_module(param)
        if wd != 0.0:
            grad = grad + wd * param
        step_lr = self.lr / (1.0 + (t - 1) * self.lr_decay)
        accumulator = state["sum"]
        accumulator += grad * grad
        denom = xp.sqrt(accumulator)
        denom += self.eps
        param -= step_lr * (grad / denom)


class RMSprop(Optimizer):
    r"""RMSprop (Hinton, 2012), exactly ``torch.optim.RMSprop``::

        g   <- g + λ θ                                   (if λ != 0)
        v_t =  α v_{t-1} + (1 - α) g²                    (v_0 = 0)
        m_t =  lerp(m_{t-1}, g, 1 - α)                   (centred only; m_0 = 0)
        d   =  √(v_t - m_t²) + ε  (centred)   or   √v_t + ε
        b_t =  μ b_{t-1} + g / d;   θ <- θ - η b_t       (if μ > 0; b_0 = 0)
        θ   <- θ - η g / d                               (otherwise)

    Parameters
    ----------
    lr : float
        ``η`` (default 1e-2).
    alpha : float
        ``α``, the smoothing constant of the squared-gradient average (default 0.99).
    eps : float
        ``ε``, added after the square root (default 1e-8).
    weight_decay : float
        ``λ``, L2 penalty added to the gradient.
    momentum : float
        ``μ``; the momentum buffer starts at zero.
    centered : bool
        Normalise by the estimated variance ``v - m²`` instead of the raw second moment.
    """

    name = "rmsprop"
    hyper_names = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, grads, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False) -> None:
        super().__init__(params, grads, lr)
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.centered = bool(centered)
        self._finish_init()

    def _validate(self) -> None:
        super()._validate()
        _check(self.alpha >= 0.0, f"invalid alpha {self.alpha}: use alpha >= 0")
        _check(self.eps >= 0.0, f"invalid eps {self.eps}: use eps >= 0")
        _check(self.weight_decay >= 0.0, f"invalid weight_decay {self.weight_decay}: use weight_decay >= 0")
        _check(self.momentum >= 0.0, f"invalid momentum {self.momentum}: use momentum >= 0")

    def _slot_names(self):
        names = ("square_avg",)
        if self.momentum > 0.0:
            names += ("momentum_buffer",)
        if self.centered:
            names += ("grad_avg",)
        return names

    def _update(self, param, grad, state, t, wd):
        xp = backend.array_module(param)
        if wd != 0.0:
            grad = grad + wd * param
        square_avg = state["square_avg"]
        square_avg *= self.alpha
        square_avg += (1.0 - self.alpha) * grad * grad
        if self.centered:
            grad_avg = state["grad_avg"]
            _lerp_(grad_avg, grad, 1.0 - self.alpha)
            denom = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            denom = xp.sqrt(square_avg)
        denom += self.eps
        if self.momentum > 0.0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += grad / denom
            param -= self.lr * buf
        else:
            param -= self.lr * (grad / denom)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015) with L2 weight decay and AMSGrad, exactly ``torch.optim.Adam``::

        g   <- g + λ θ                          (if λ != 0; coupled L2, as in PyTorch's Adam)
        m_t =  lerp(m_{t-1}, g, 1 - β₁)         (m_0 = 0)
        v_t =  β₂ v_{t-1} + (1 - β₂) g²         (v_0 = 0)
        v̂_t =  max(v̂_{t-1}, v_t)  (AMSGrad)   or   v_t
        θ   <- θ - (η / (1 - β₁ᵗ)) · m_t / (√v̂_t / √(1 - β₂ᵗ) + ε)

    Note where the bias corrections and ``ε`` sit: the first correction scales the step size,
    the second divides the square root, and ``ε`` is added after that division.

    Parameters
    ----------
    lr : float
        ``η`` (default 1e-3).
    betas : tuple[float, float]
        ``(β₁, β₂)`` (default (0.9, 0.999)).
    eps : float
        ``ε`` (default 1e-8).
    weight_decay : float
        ``λ``, added to the gradient (use :class:`AdamW` for decoupled decay).
    amsgrad : bool
        Keep the running maximum of ``v`` and normalise by it.
    """

    name = "adam"
    hyper_names = ("betas", "eps", "weight_decay", "amsgrad")
    decoupled_weight_decay = False

    def __init__(self, params, grads, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params, grads, lr)
        self.betas = tuple(float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.amsgrad = bool(amsgrad)
        self._finish_init()

    def _validate(self) -> None:
        super()._validate()
        _check(len(self.betas) == 2, f"invalid betas {self.betas}: give two values (beta1, beta2)")
        for i, b in enumerate(self.betas):
            _check(0.0 <= b < 1.0, f"invalid beta{i + 1} {b}: use 0 <= beta < 1")
        _check(self.eps >= 0.0, f"invalid eps {self.eps}: use eps >= 0")
        _check(self.weight_decay >= 0.0, f"invalid weight_decay {self.weight_decay}: use weight_decay >= 0")

    def _slot_names(self):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def _update(self, param, grad, state, t, wd):
        xp = backend.array_module(param)
        beta1, beta2 = self.betas
        fk = _fused_kernels(xp, param, state.values())
        if fk is not None:  # the same update as below, one compiled pass (numba)
            self._fused_update(fk, param, grad, state, t, wd)
            return
        if wd != 0.0:
            if self.decoupled_weight_decay:
                param *= 1.0 - self.lr * wd
            else:
                grad = grad + wd * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(exp_avg, grad, 1.0 - beta1)
        exp_avg_sq *= beta2
        exp_avg_sq += (1.0 - beta2) * grad * grad

        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        step_size = self.lr / bias_correction1
        if self.amsgrad:
            second = state["max_exp_avg_sq"]
            xp.maximum(second, exp_avg_sq, out=second)
        else:
            second = exp_avg_sq
        denom = xp.sqrt(second)
        denom /= bias_correction2 ** 0.5
        denom += self.eps
        param -= step_size * (exp_avg / denom)

    def _fused_update(self, fk, param, grad, state, t, wd):
        """:meth:`_update` as one numba loop; scalars are cast to the parameter's dtype the way
        NumPy casts Python scalars, so both paths round alike."""
        beta1, beta2 = self.betas
        c = param.dtype.type
        decay = c(1.0 - self.lr * wd) if (wd != 0.0 and self.decoupled_weight_decay) else c(1.0)
        coupled = c(wd) if (wd != 0.0 and not self.decoupled_weight_decay) else c(0.0)
        w1 = 1.0 - beta1
        vmax = state["max_exp_avg_sq"].reshape(-1) if self.amsgrad else None
        fk.adam_step(param.reshape(-1), grad.reshape(-1), state["exp_avg"].reshape(-1),
                     state["exp_avg_sq"].reshape(-1), vmax, decay, coupled, c(w1), abs(w1) < 0.5,
                     c(1.0 - w1), c(beta2), c(1.0 - beta2), c((1.0 - beta2 ** t) ** 0.5), c(self.eps),
                     c(self.lr / (1.0 - beta1 ** t)))


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), exactly ``torch.optim.AdamW``.

    The parameter is first shrunk, ``θ <- θ (1 - η λ)``, using the current ``η``; then the
    Adam update of :class:`Adam` follows with the raw gradient (no ``λ θ`` term). The default
    ``weight_decay`` is PyTorch's 1e-2.
    """

    name = "adamw"
    decoupled_weight_decay = True

    def __init__(self, params, grads, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad)


# ---------------------------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------------------------
def clip_grad_norm(grads: dict, max_norm: float, norm_type: float = 2.0) -> float:
    r"""Rescale all gradients together so that their joint norm is at most ``max_norm``.

    ``torch.nn.utils.clip_grad_norm_`` semantics::

        N = ‖(‖g_1‖_p, ‖g_2‖_p, ...)‖_p        (the p-norm of all entries as one vector)
        c = min(max_norm / (N + 1e-6), 1)
        g_i <- c g_i                            (in place)

    Parameters
    ----------
    grads : dict[str, array]
        Gradient arrays, modified in place.
    max_norm : float
        Largest allowed total norm.
    norm_type : float
        ``p``; ``float("inf")`` (or ``"inf"``) for the max-abs norm.

    Returns
    -------
    float
        The total norm ``N`` *before* clipping. It is ``nan`` or ``inf`` when a gradient is
        not finite; the gradients are then scaled by ``nan`` or ``0`` as in PyTorch (so
        non-finite entries become ``nan``): check the returned value and skip such a step.
    """
    arrays = list(grads.values())
    if not arrays:
        return 0.0
    p = float(norm_type)
    if not p > 0.0:
        raise RnnlabError(f"invalid norm_type {norm_type}: use a p > 0 or 'inf'")
    max_norm = float(max_norm)
    xp = backend.array_module(*arrays)
    if math.isinf(p):
        per_array = xp.stack([xp.max(xp.abs(g)) if g.size else xp.zeros((), g.dtype) for g in arrays])
        total = backend.to_float(xp.max(per_array))
    elif p == 2.0:
        per_array = xp.stack([xp.sqrt(xp.sum(g * g)) for g in arrays])
        total = backend.to_float(xp.sqrt(xp.sum(per_array * per_array)))
    else:
        per_array = xp.stack([xp.sum(xp.abs(g) ** p) ** (1.0 / p) for g in arrays])
        total = backend.to_float(xp.sum(per_array ** p) ** (1.0 / p))
    coef = max_norm / (total + 1e-6)
    if math.isnan(coef):
        scale = coef
    else:
        scale = min(coef, 1.0)
    if scale != 1.0:
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 -> nan is intended
            for g in arrays:
                g *= scale
    return total


def clip_grad_value(grads: dict, clip_value: float) -> None:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``, in place.

    ``torch.nn.utils.clip_grad_value_`` semantics; ``nan`` entries stay ``nan``.
    """
    v = float(clip_value)
    for g in grads.values():
        backend.array_module(g).clip(g, -v, v, out=g)


# ---------------------------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------------------------
class LRSchedule:
    """Sets ``optimizer.lr = lr_at(step)`` from a step count.

    The base learning rate is ``optimizer.lr`` at construction, which immediately sets
    ``optimizer.lr = lr_at(0)`` (so give each optimizer one schedule: a second one built later
    would take the first one's current rate as its base). Call :meth:`step` once after every ``optimizer.step()``
    (as with ``torch.optim.lr_scheduler``); it advances the count and sets the next rate.
    """

    name = "schedule"
    hyper_names: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_step = 0
        self._validate()
        optimizer.lr = self.lr_at(0)

    def _validate(self) -> None:
        pass

    def lr_at(self, step: int) -> float:
        """The learning rate after ``step`` schedule steps (a pure function)."""
        raise NotImplementedError

    def step(self) -> float:
        """Advance one step and set ``optimizer.lr``; returns the new rate."""
        self.last_step += 1
        lr = self.lr_at(self.last_step)
        self.optimizer.lr = lr
        return lr

    def state_dict(self) -> dict:
        """JSON-able ``{"type", "base_lr", "last_step", <hyper-parameters>}``."""
        state = {"type": self.name, "base_lr": self.base_lr, "last_step": self.last_step}
        for key in self.hyper_names:
            state[key] = getattr(self, key)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` and set ``optimizer.lr`` to the restored step's rate."""
        if state.get("type") != self.name:
            raise RnnlabError(
                f"schedule state is for {state.get('type')!r} but this schedule is {self.name!r}"
            )
        missing = [k for k in ("base_lr", "last_step") + self.hyper_names if k not in state]
        if missing:
            raise RnnlabError(f"schedule state for {self.name!r} lacks {missing}: the checkpoint is incomplete")
        self.base_lr = float(state["base_lr"])
        self.last_step = int(state["last_step"])
        for key in self.hyper_names:
            setattr(self, key, type(getattr(self, key))(state[key]))
        self._validate()
        self.optimizer.lr = self.lr_at(self.last_step)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyper_names)
        return f"{type(self).__name__}(base_lr={self.base_lr!r}{', ' if hp else ''}{hp})"


class ConstantLR(LRSchedule):
    """A constant rate, optionally scaled by ``factor`` for the first ``total_iters`` steps::

        lr(s) = base · factor   if s < total_iters   else   base

    With the defaults (``factor=1``, ``total_iters=0``) the rate never changes. With other
    values it is ``torch.optim.lr_scheduler.ConstantLR`` (whose defaults are 1/3 and 5).
    """

    name = "constant"
    hyper_names = ("factor", "total_iters")

    def __init__(self, optimizer: Optimizer, factor: float = 1.0, total_iters: int = 0) -> None:
        self.factor = float(factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer)

    def _validate(self) -> None:
        _check(0.0 <= self.factor <= 1.0, f"invalid factor {self.factor}: use 0 <= factor <= 1")
        _check(self.total_iters >= 0, f"invalid total_iters {self.total_iters}: use total_iters >= 0")

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.factor if step < self.total_iters else self.base_lr


class StepLR(LRSchedule):
    """Multiply the rate by ``gamma`` every ``step_size`` steps::

        lr(s) = base · gamma^⌊s / step_size⌋
    """

    name = "step"
    hyper_names = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def _validate(self) -> None:
        _check(self.step_size >= 1, f"invalid step_size {self.step_size}: use step_size >= 1")
        _check(self.gamma > 0.0, f"invalid gamma {self.gamma}: use gamma > 0")

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class ExponentialLR(LRSchedule):
    """Multiply the rate by ``gamma`` every step: ``lr(s) = base · gamma^s``."""

    name = "exponential"
    hyper_names = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def _validate(self) -> None:
        _check(self.gamma > 0.0, f"invalid gamma {self.gamma}: use gamma > 0")

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** step


class CosineWithWarmup(LRSchedule):
    """Linear warm-up from 0 to the base rate, then a half cosine down to ``min_lr``::

        lr(s) = base · s / W                                   for s < W
        lr(s) = min_lr + (base - min_lr) · (1 + cos(π q)) / 2   for s >= W,
                q = min((s - W) / max(1, S - W), 1)

    with ``W = warmup_steps`` and ``S = total_steps``: the peak ``lr(W) = base``, the end
    ``lr(S) = min_lr``, and the rate stays at ``min_lr`` after ``S``. Note ``lr(0) = 0`` when
    ``W > 0``, so the very first update does nothing (the usual convention).
    """

    name = "cosine"
    hyper_names = ("warmup_steps", "total_steps", "min_lr")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 min_lr: float = 0.0) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        super().__init__(optimizer)

    def _validate(self) -> None:
        _check(self.warmup_steps >= 0, f"invalid warmup_steps {self.warmup_steps}: use warmup_steps >= 0")
        _check(self.total_steps >= self.warmup_steps,
               f"total_steps {self.total_steps} is below warmup_steps {self.warmup_steps}: "
               "use total_steps >= warmup_steps")
        _check(self.min_lr >= 0.0, f"invalid min_lr {self.min_lr}: use min_lr >= 0")

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------------------------
OPTIMIZERS: dict[str, tuple[type, dict]] = {
    "sgd": (SGD, {}),
    "momentum": (SGD, {"momentum": 0.9}),
    "nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (Adagrad, {}),
    "rmsprop": (RMSprop, {}),
    "adam": (Adam, {}),
    "adamw": (AdamW, {}),
}
"""Optimizer names for :func:`make_optimizer`: ``name -> (class, preset keyword arguments)``."""

SCHEDULES: dict[str, type] = {
    "constant": ConstantLR,
    "step": StepLR,
    "exponential": ExponentialLR,
    "cosine": CosineWithWarmup,
}
"""Schedule names for :func:`make_schedule`."""


def _accepted_keywords(cls) -> list[str]:
    sig = inspect.signature(cls.__init__)
    skip = {"self", "params", "grads", "optimizer"}
    return [k for k in sig.parameters if k not in skip]


def _check_keywords(kind: str, name: str, cls, kw: dict) -> None:
    accepted = _accepted_keywords(cls)
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise RnnlabError(f"{kind} {name!r} does not take {unknown}: it accepts {accepted}")


def make_optimizer(name: str, params: dict, grads: dict, **kw) -> Optimizer:
    """Build an optimizer by name: one of ``sgd``, ``momentum`` (SGD with momentum 0.9),
    ``nesterov`` (SGD with Nesterov momentum 0.9), ``adagrad``, ``rmsprop``, ``adam``,
    ``adamw``. Keyword arguments override the presets (e.g. ``lr=0.1``).

    Raises :class:`RnnlabError` for an unknown name or keyword.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise RnnlabError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    cls, preset = OPTIMIZERS[key]
    _check_keywords("optimizer", key, cls, kw)
    return cls(params, grads, **{**preset, **kw})


def make_schedule(name: str, optimizer: Optimizer, **kw) -> LRSchedule:
    """Build a schedule by name: ``constant``, ``step`` (``step_size``, ``gamma``),
    ``exponential`` (``gamma``), ``cosine`` (``warmup_steps``, ``total_steps``, ``min_lr``).

    Raises :class:`RnnlabError` for an unknown name, an unknown keyword or a missing one.
    """
    key = str(name).lower()
    if key not in SCHEDULES:
        raise RnnlabError(f"unknown schedule {name!r}: use one of {', '.join(SCHEDULES)}")
    cls = SCHEDULES[key]
    _check_keywords("schedule", key, cls, kw)
    sig = inspect.signature(cls.__init__)
    required = [k for k, p in sig.parameters.items()
                if k not in ("self", "optimizer") and p.default is inspect.Parameter.empty]
    missing = [k for k in required if k not in kw]
    if missing:
        raise RnnlabError(f"schedule {key!r} needs {missing}")
    return cls(optimizer, **kw)


# ---------------------------------------------------------------------------------------------
# checkpoint helpers
# ---------------------------------------------------------------------------------------------
def flatten_state(state: dict, prefix: str = "optim") -> tuple[dict[str, np.ndarray], dict]:
    """Split an optimizer :meth:`~Optimizer.state_dict` into named arrays and JSON metadata.

    Parameters
    ----------
    state : dict
        As returned by :meth:`Optimizer.state_dict`.
    prefix : str
        First component of every tensor name.

    Returns
    -------
    tensors : dict[str, np.ndarray]
        ``"{prefix}.{slot}.{param}"`` -> contiguous host array, e.g.
        ``"optim.exp_avg.rnn.W_hh_l0"`` (ready for ``safetensors.numpy.save_file``).
    meta : dict
        Everything else (type, step, lr, hyper-parameters) plus ``"slots"``, the list of slot
        names; JSON-able (``json.dumps`` it for safetensors' string metadata).
    """
    tensors: dict[str, np.ndarray] = {}
    slots = state.get("slots", {})
    for slot, arrays in slots.items():
        if "." in slot:
            raise ValueError(f"slot name {slot!r} must not contain '.'")
        for key, value in arrays.items():
            tensors[f"{prefix}.{slot}.{key}"] = np.ascontiguousarray(backend.to_numpy(value))
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in state.items() if k != "slots"}
    meta["slots"] = list(slots)
    return tensors, meta


def unflatten_state(tensors: dict, meta: dict, prefix: str = "optim") -> dict:
    """Rebuild a state dict from :func:`flatten_state`'s output.

    ``tensors`` may hold other arrays too (a whole checkpoint file): only names beginning with
    ``"{prefix}."`` are used. Raises :class:`RnnlabError` for a tensor of an unknown slot.
    """
    slot_names = list(meta.get("slots", []))
    state = {k: v for k, v in meta.items() if k != "slots"}
    slots: dict[str, dict] = {slot: {} for slot in slot_names}
    head = prefix + "."
    for name, value in tensors.items():
        if not name.startswith(head):
            continue
        slot, _, key = name[len(head):].partition(".")
        if slot not in slots or not key:
            raise RnnlabError(
                f"checkpoint tensor {name!r} is not a slot of the saved optimizer "
                f"(slots {slot_names}): the checkpoint is corrupt"
            )
        slots[slot][key] = value
    state["slots"] = slots
    return state
