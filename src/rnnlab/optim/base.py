"""What every optimizer shares: the :class:`Optimizer` base class (parameter dicts, step counter,
per-parameter slots, ``zero_grad``, ``state_dict`` / ``load_state_dict``) and the small helpers the
optimizers and schedules use (PyTorch-rounded ``lerp``, the numba kernel lookup, argument checks).

Notation: ``θ`` a parameter, ``g`` its gradient, ``t`` the step number (1 for the first step),
``η`` the learning rate, ``λ`` the weight decay.
"""
from __future__ import annotations

import inspect
import math

import numpy as np

from .. import backend
from ..errors import RnnlabError


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
    from ..nn.cells import fused_kernels

    return fused_kernels(xp, param.dtype)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RnnlabError(message)



def _accepted_keywords(cls) -> list[str]:
    sig = inspect.signature(cls.__init__)
    skip = {"self", "params", "grads", "optimizer"}
    return [k for k in sig.parameters if k not in skip]


def _check_keywords(kind: str, name: str, cls, kw: dict) -> None:
    accepted = _accepted_keywords(cls)
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise RnnlabError(f"{kind} {name!r} does not take {unknown}: it accepts {accepted}")


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
