"""Learning-rate schedules: each sets ``optimizer.lr`` from a step count, as
``torch.optim.lr_scheduler`` does, or from the share of a time budget used. :class:`ConstantLR`,
:class:`StepLR`, :class:`ExponentialLR`, :class:`CosineWithWarmup`; :data:`SCHEDULES` names them
for :func:`make_schedule`."""
from __future__ import annotations

import inspect
import math

from ..errors import RnnlabError
from .base import Optimizer, _check, _check_keywords


class LRSchedule:
    """Sets ``optimizer.lr = lr_at(step)`` from a step count, or from the share of a time budget.

    The base learning rate is ``optimizer.lr`` at construction, which immediately sets
    ``optimizer.lr = lr_at(0)`` (so give each optimizer one schedule: a second one built later
    would take the first one's current rate as its base). Call :meth:`step` once after every
    ``optimizer.step()`` (as with ``torch.optim.lr_scheduler``); it advances the count and sets
    the next rate.

    **Time budgets.** A run limited by wall-clock time rather than by a number of steps passes
    ``progress`` to :meth:`step`: the share of its budget used so far, ``p`` in [0, 1]. The
    schedule then follows the budget instead of the step count (each subclass says how), so the
    same curve is traced over the budget whatever the speed of the machine. :meth:`update` sets
    the rate for a new ``p`` without counting a step (a resumed run whose budget changed).
    """

    name = "schedule"
    hyper_names: tuple[str, ...] = ()
    optional_hypers: dict = {}
    """Hyper-parameters a saved state may lack (written before they existed), with the value
    that reproduces the old behaviour."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_step = 0
        self.progress: float | None = None
        self._validate()
        optimizer.lr = self.lr_at(0)

    def _validate(self) -> None:
        pass

    def lr_at(self, step: int, progress: float | None = None) -> float:
        """The learning rate after ``step`` schedule steps, at budget share ``progress`` (None:
        by steps alone). A pure function."""
        raise NotImplementedError

    def step(self, progress: float | None = None) -> float:
        """Advance one step and set ``optimizer.lr``; returns the new rate."""
        self.last_step += 1
        return self.update(progress)

    def update(self, progress: float | None = None) -> float:
        """Set ``optimizer.lr`` for the current step at budget share ``progress``; returns it."""
        self.progress = None if progress is None else min(max(float(progress), 0.0), 1.0)
        lr = self.lr_at(self.last_step, self.progress)
        self.optimizer.lr = lr
        return lr

    def state_dict(self) -> dict:
        """JSON-able ``{"type", "base_lr", "last_step", "progress", <hyper-parameters>}``."""
        state = {"type": self.name, "base_lr": self.base_lr, "last_step": self.last_step,
                 "progress": self.progress}
        for key in self.hyper_names:
            state[key] = getattr(self, key)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` and set ``optimizer.lr`` to the restored step's rate."""
        if state.get("type") != self.name:
            raise RnnlabError(
                f"schedule state is for {state.get('type')!r} but this schedule is {self.name!r}"
            )
        state = {**self.optional_hypers, **state}
        missing = [k for k in ("base_lr", "last_step") + self.hyper_names if k not in state]
        if missing:
            raise RnnlabError(f"schedule state for {self.name!r} lacks {missing}: the checkpoint is incomplete")
        self.base_lr = float(state["base_lr"])
        self.last_step = int(state["last_step"])
        for key in self.hyper_names:
            setattr(self, key, type(getattr(self, key))(state[key]))
        self._validate()
        self.update(state.get("progress"))

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyper_names)
        return f"{type(self).__name__}(base_lr={self.base_lr!r}{', ' if hp else ''}{hp})"

    def _virtual_step(self, step: int, progress: float | None) -> float:
        """``step``, or in a time budget ``progress * horizon``: the step the budget share stands
        for (the schedules that count steps take their curve over ``horizon`` steps)."""
        if progress is None:
            return step
        _check(self.horizon > 0, f"the {self.name} schedule needs horizon > 0 to follow a time budget")
        return progress * self.horizon


class ConstantLR(LRSchedule):
    """A constant rate, optionally scaled by ``factor`` for the first ``total_iters`` steps::

        lr(s) = base · factor   if s < total_iters   else   base

    With the defaults (``factor=1``, ``total_iters=0``) the rate never changes. With other
    values it is ``torch.optim.lr_scheduler.ConstantLR`` (whose defaults are 1/3 and 5). A time
    budget changes nothing (``total_iters`` counts steps).
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

    def lr_at(self, step: int, progress: float | None = None) -> float:
        return self.base_lr * self.factor if step < self.total_iters else self.base_lr


class StepLR(LRSchedule):
    """Multiply the rate by ``gamma`` every ``step_size`` steps::

        lr(s) = base · gamma^⌊v / step_size⌋        v = s,  or  p · horizon  in a time budget

    so in a budget the rate drops ``horizon / step_size`` times, evenly spread over it.
    """

    name = "step"
    hyper_names = ("step_size", "gamma", "horizon")
    optional_hypers = {"horizon": 0}

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, horizon: int = 0) -> None:
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self.horizon = int(horizon)
        super().__init__(optimizer)

    def _validate(self) -> None:
        _check(self.step_size >= 1, f"invalid step_size {self.step_size}: use step_size >= 1")
        _check(self.gamma > 0.0, f"invalid gamma {self.gamma}: use gamma > 0")
        _check(self.horizon >= 0, f"invalid horizon {self.horizon}: use horizon >= 0")

    def lr_at(self, step: int, progress: float | None = None) -> float:
        return self.base_lr * self.gamma ** (int(self._virtual_step(step, progress)) // self.step_size)


class ExponentialLR(LRSchedule):
    """Multiply the rate by ``gamma`` every step: ``lr(s) = base · gamma^v`` with ``v = s``, or
    ``v = p · horizon`` in a time budget (the rate at the budget's end is ``base · gamma^horizon``)."""

    name = "exponential"
    hyper_names = ("gamma", "horizon")
    optional_hypers = {"horizon": 0}

    def __init__(self, optimizer: Optimizer, gamma: float, horizon: int = 0) -> None:
        self.gamma = float(gamma)
        self.horizon = int(horizon)
        super().__init__(optimizer)

    def _validate(self) -> None:
        _check(self.gamma > 0.0, f"invalid gamma {self.gamma}: use gamma > 0")
        _check(self.horizon >= 0, f"invalid horizon {self.horizon}: use horizon >= 0")

    def lr_at(self, step: int, progress: float | None = None) -> float:
        return self.base_lr * self.gamma ** self._virtual_step(step, progress)


class CosineWithWarmup(LRSchedule):
    """Linear warm-up from 0 to the base rate, then a half cosine down to ``min_lr``::

        lr(s) = base · s / W                                   for s < W
        lr(s) = min_lr + (base - min_lr) · (1 + cos(π q)) / 2   for s >= W,
                q = min((s - W) / max(1, S - W), 1),   or  q = p  in a time budget

    with ``W = warmup_steps`` and ``S = total_steps``: the peak ``lr(W) = base``, the end
    ``lr(S) = min_lr`` (in a budget: at its end), and the rate stays at ``min_lr`` after that.
    Note ``lr(0) = 0`` when ``W > 0``, so the very first update does nothing (the usual
    convention). In a budget the warm-up still counts steps, and the cosine starts from the
    budget's beginning (its first ``W`` steps are a small share of any budget worth the name, so
    the peak is within a fraction of a percent of ``base``).
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

    def lr_at(self, step: int, progress: float | None = None) -> float:
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        if progress is None:
            progress = min((step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, type] = {
    "constant": ConstantLR,
    "step": StepLR,
    "exponential": ExponentialLR,
    "cosine": CosineWithWarmup,
}
"""Schedule names for :func:`make_schedule`."""


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
