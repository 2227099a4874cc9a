"""The base class of every layer: parameters, gradients and state dicts, nothing hidden.

A :class:`Module` owns two dicts with identical keys:

- ``params[name]`` — the parameter arrays;
- ``grads[name]``  — arrays of the same shape, into which ``backward`` *adds*.

Arrays are never rebound after construction: optimizers, ``load_state_dict`` and
``zero_grad`` all write in place. That is what lets a composite module expose its children's
arrays under qualified names (``"rnn.W_hh_l0"``) by reference, and lets an optimizer hold the
same dicts for the whole of training.

Layers are stateless between calls: ``forward`` returns a ``cache`` that the caller hands back to
``backward``. Nothing about a particular forward pass is kept on ``self``.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import backend


class Module:
    """Parameters + gradients + train/eval flag; children registered by name."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.children: dict[str, Module] = {}
        self.training = True

    # -- construction -------------------------------------------------------------------
    def add_param(self, name: str, value: np.ndarray):
        """Register a parameter (host array, moved to the active backend) and its gradient."""
        if name in self.params:
            raise KeyError(f"parameter {name!r} already registered")
        arr = backend.asarray(value)
        self.params[name] = arr
        self.grads[name] = backend.xp.zeros_like(arr)
        return arr

    def add_child(self, name: str, module: "Module") -> "Module":
        """Register a fully built child; its parameters appear here as ``name.param``."""
        if name in self.children:
            raise KeyError(f"child {name!r} already registered")
        self.children[name] = module
        for k, v in module.params.items():
            self.params[f"{name}.{k}"] = v
            self.grads[f"{name}.{k}"] = module.grads[k]
        return module

    def replica(self) -> "Module":
        """A twin that shares every parameter array with this module but owns zeroed gradient
        arrays of its own (children replicated the same way), so that two threads can run
        ``forward``/``backward`` at once, each adding into its own ``grads``. Used by
        :mod:`rnnlab.lm.shards`; an optimizer updating ``params`` updates both."""
        return self._replica({})

    def _replica(self, memo: dict) -> "Module":
        new = copy.copy(self)  # the same attribute values, parameter arrays included
        memo[id(self)] = new
        new.children = {name: c._replica(memo) for name, c in self.children.items()}
        for k, v in vars(self).items():  # attributes naming a child (or a list of them) follow it
            if isinstance(v, Module) and id(v) in memo:
                setattr(new, k, memo[id(v)])
            elif isinstance(v, (list, tuple)) and any(isinstance(e, Module) for e in v):
                setattr(new, k, type(v)(memo.get(id(e), e) for e in v))
        new.params = dict(self.params)
        from_children = {f"{name}.{k}": g for name, c in new.children.items() for k, g in c.grads.items()}
        new.grads = {k: from_children[k] if k in from_children else backend.xp.zeros_like(g)
                     for k, g in self.grads.items()}
        return new

    # -- bookkeeping ----------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Set every gradient to zero, in place."""
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        for c in self.children.values():
            c.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    @property
    def dtype(self):
        for p in self.params.values():
            return p.dtype
        return np.dtype(np.float32)

    # -- state dicts --------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter as a host NumPy array, keyed like ``params``."""
        return {k: np.array(backend.to_numpy(v), copy=True) for k, v in self.params.items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters in place, checking names and shapes.

        With ``strict`` the keys must match exactly. Values are cast to each parameter's dtype.
        """
        if strict:
            missing = sorted(set(self.params) - set(state))
            extra = sorted(set(state) - set(self.params))
            if missing or extra:
                raise KeyError(f"state dict mismatch: missing {missing}, unexpected {extra}")
        for k, v in state.items():
            if k not in self.params:
                continue
            p = self.params[k]
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{k}: shape {tuple(v.shape)} does not match {tuple(p.shape)}")
            p[...] = backend.xp.asarray(v, dtype=p.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""
