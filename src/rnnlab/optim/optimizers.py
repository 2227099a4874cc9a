"""The optimizers, simplest first, each exactly its ``torch.optim`` namesake (update formulas
operation for operation, so a float64 trajectory agrees with PyTorch to rounding):
:class:`SGD` (momentum, dampening, Nesterov, L2 weight decay), :class:`Adagrad`, :class:`RMSprop`
(momentum, centred), :class:`Adam` (AMSGrad) and :class:`AdamW`; :data:`OPTIMIZERS` names them
for :func:`make_optimizer`.

Each subclass of :class:`~rnnlab.optim.base.Optimizer` writes only the update of one parameter.
Notation: ``θ`` a parameter, ``g`` its gradient, ``t`` the step number, ``η`` the learning rate,
``λ`` the weight decay.
"""
from __future__ import annotations

from .. import backend
from ..errors import RnnlabError
from .base import Optimizer, _check, _check_keywords, _fused_kernels, _lerp_


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
