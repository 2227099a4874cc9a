"""PyTorch interop: build rnnlab layers from torch modules and export weights and gradients
under torch's parameter names. ``torch`` is imported only when a function here needs it.

Name mapping for recurrent layers (layer ``k``, suffix ``_reverse`` for the second direction)::

    torch                         rnnlab
    weight_ih_l{k}                W_xh_l{k}
    weight_hh_l{k}                W_hh_l{k}
    bias_ih_l{k} + bias_hh_l{k}   b_h_l{k}                (RNN, LSTM)
    bias_ih_l{k}                  b_h_l{k}  with  b_h[:2H] += bias_hh[:2H]     (GRU)
    bias_hh_l{k}[2H:]             b_hn_l{k}                                     (GRU)

PyTorch's two bias vectors are redundant (only their sum enters the RNN and LSTM), so exporting
puts the whole bias in ``bias_ih`` and zeros (or the GRU's ``b_hn``) in ``bias_hh``; the
gradient of each torch bias is the gradient of the rnnlab bias it feeds.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn.recurrent import GRU, LSTM, RNN, _Recurrent


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def from_torch(module):
    """The rnnlab layer equivalent to ``module`` (``torch.nn.RNN/LSTM/GRU/Linear/Embedding``),
    with the same options and a copy of its weights, in the module's dtype."""
    import torch.nn as tnn

    from ..nn.embedding import Embedding
    from ..nn.linear import Linear

    dtype = next(module.parameters()).detach().cpu().numpy().dtype
    if isinstance(module, (tnn.RNN, tnn.LSTM, tnn.GRU)):
        if getattr(module, "proj_size", 0):
            raise ValueError("LSTM with proj_size is not supported")
        kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  dropout=module.dropout, bidirectional=module.bidirectional, dtype=dtype,
                  rng=np.random.default_rng(0))
        if isinstance(module, tnn.LSTM):
            layer = LSTM(module.input_size, module.hidden_size, **kw)
        elif isinstance(module, tnn.GRU):
            layer = GRU(module.input_size, module.hidden_size, **kw)
        else:
            layer = RNN(module.input_size, module.hidden_size, nonlinearity=module.nonlinearity, **kw)
        layer.load_state_dict(recurrent_state_from_torch(layer, {k: _np(v) for k, v in module.state_dict().items()}))
        return layer
    if isinstance(module, tnn.Linear):
        layer = Linear(module.in_features, module.out_features, bias=module.bias is not None, dtype=dtype,
                       rng=np.random.default_rng(0))
        sd = {layer.name_w: _np(module.weight)}
        if module.bias is not None:
            sd[layer.name_b] = _np(module.bias)
        layer.load_state_dict(sd)
        return layer
    if isinstance(module, tnn.Embedding):
        layer = Embedding(module.num_embeddings, module.embedding_dim, dtype=dtype, rng=np.random.default_rng(0))
        layer.load_state_dict({"weight": _np(module.weight)})
        return layer
    raise TypeError(f"from_torch: unsupported module type {type(module).__name__}")


def _torch_names(k: int, d: int):
    sfx = f"_l{k}" + ("_reverse" if d == 1 else "")
    return {r: r + sfx for r in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def recurrent_state_from_torch(layer: _Recurrent, sd: dict) -> dict:
    """rnnlab parameters (host arrays) from a torch recurrent ``state_dict`` of numpy arrays."""
    H = layer.hidden_size
    out = {}
    for k, dirs in enumerate(layer.names):
        for d, n in enumerate(dirs):
            t = _torch_names(k, d)
            out[n["W_xh"]] = sd[t["weight_ih"]]
            out[n["W_hh"]] = sd[t["weight_hh"]]
            if layer.bias:
                b_ih, b_hh = sd[t["bias_ih"]], sd[t["bias_hh"]]
                if layer.mode == "gru":
                    b = b_ih.copy()
                    b[: 2 * H] += b_hh[: 2 * H]
                    out[n["b_h"]] = b
                    out[n["b_hn"]] = b_hh[2 * H :].copy()
                else:
                    out[n["b_h"]] = b_ih + b_hh
    return out


def _recurrent_to_torch(layer: _Recurrent, arrays: dict, grads: bool) -> dict:
    H = layer.hidden_size
    out = {}
    for k, dirs in enumerate(layer.names):
        for d, n in enumerate(dirs):
            t = _torch_names(k, d)
            out[t["weight_ih"]] = backend.to_numpy(arrays[n["W_xh"]]).copy()
            out[t["weight_hh"]] = backend.to_numpy(arrays[n["W_hh"]]).copy()
            if layer.bias:
                b = backend.to_numpy(arrays[n["b_h"]])
                out[t["bias_ih"]] = b.copy()
                if layer.mode == "gru":
                    bhh = b.copy() if grads else np.zeros_like(b)
                    bhh[2 * H :] = backend.to_numpy(arrays[n["b_hn"]])
                    out[t["bias_hh"]] = bhh
                else:
                    out[t["bias_hh"]] = b.copy() if grads else np.zeros_like(b)
    return out


def _plain_to_torch(layer, arrays: dict) -> dict:
    from ..nn.linear import Linear

    if isinstance(layer, Linear):
        out = {"weight": backend.to_numpy(arrays[layer.name_w]).copy()}
        if layer.name_b in arrays:
            out["bias"] = backend.to_numpy(arrays[layer.name_b]).copy()
        return out
    return {k: backend.to_numpy(v).copy() for k, v in arrays.items()}


def to_torch_state_dict(layer) -> dict[str, np.ndarray]:
    """Parameters as numpy arrays named exactly like the torch module's ``named_parameters()``;
    ``torch_module.load_state_dict({k: torch.from_numpy(v) ...})`` reproduces the layer."""
    if isinstance(layer, _Recurrent):
        return _recurrent_to_torch(layer, layer.params, grads=False)
    return _plain_to_torch(layer, layer.params)


def grads_to_torch(layer) -> dict[str, np.ndarray]:
    """Accumulated gradients as numpy arrays under torch's parameter names, comparable with
    ``{name: p.grad for name, p in torch_module.named_parameters()}``."""
    if isinstance(layer, _Recurrent):
        return _recurrent_to_torch(layer, layer.grads, grads=True)
    return _plain_to_torch(layer, layer.grads)
