"""An optimizer's state as a checkpoint holds it: :func:`flatten_state` turns a
:meth:`~rnnlab.optim.base.Optimizer.state_dict` into named host arrays plus JSON metadata (for a
safetensors file), :func:`unflatten_state` turns them back."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import RnnlabError


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
