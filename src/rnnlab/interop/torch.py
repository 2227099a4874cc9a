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

Whole char-LMs: :func:`to_torch` turns a run or a :class:`~rnnlab.models.RecurrentLM` into a
:class:`~rnnlab.interop.torch_lm.TorchCharLM` (Embedding -> nn.RNN/LSTM/GRU -> Linear) with the
weights loaded, :func:`from_torch` turns such a module (or any module with ``embed``/``rnn``/``out``
children of those types) back into a ``RecurrentLM``, exactly. :func:`save` writes the *torch
format*, a directory that torch and rnnlab both read::

    PATH/config.json          {"format": "rnnlab-torch-charlm/1", "model": {...}, "vocab": {...}, ...}
    PATH/model.safetensors    the module's state_dict under its own names

and :func:`load` reads it back as a torch module; :func:`read_export` as an rnnlab model, without torch.
"""
from __future__ import annotations

import os

import numpy as np

from .. import backend
from ..errors import RnnlabError
from ..nn.recurrent import GRU, LSTM, RNN, _Recurrent


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def from_torch(module):
    """The rnnlab layer equivalent to ``module`` (``torch.nn.RNN/LSTM/GRU/Linear/Embedding``),
    with the same options and a copy of its weights, in the module's dtype; for a char-LM (a
    :class:`TorchCharLM`, or a module with ``embed``/``rnn``/``out`` children, see
    :func:`charlm_config`) the equivalent :class:`~rnnlab.models.RecurrentLM`."""
    import torch.nn as tnn

    if isinstance(getattr(module, "rnn", None), (tnn.RNN, tnn.LSTM, tnn.GRU)):
        return charlm_from_state(charlm_config(module), {k: _np(v) for k, v in module.state_dict().items()})

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


# ------------------------------------------------------------------------------ whole char-LMs
TORCH_FORMAT = "rnnlab-torch-charlm/1"
"""Value of ``format`` in the torch format's ``config.json``."""
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
_CELLS = ("rnn", "lstm", "gru")


def _torch_lm():
    """:mod:`rnnlab.interop.torch_lm`, or a one-line error saying how to install torch."""
    try:
        from . import torch_lm
    except ImportError:
        raise RnnlabError("a torch.nn.Module needs PyTorch: pip install torch (the torch format itself is written "
                          "and read without it)") from None
    return torch_lm


def __getattr__(name):  # TorchCharLM without importing torch with this module
    if name == "TorchCharLM":
        return _torch_lm().TorchCharLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_charlm(model) -> None:
    """Raise :class:`RnnlabError` in one line unless ``model`` is a recurrent char-LM."""
    from .onnx import EXPORTERS

    kind = getattr(model, "kind", type(model).__name__)
    if kind not in _CELLS:
        raise RnnlabError(f"the torch format holds Embedding -> RNN/LSTM/GRU -> Linear char-LMs (rnn, lstm, gru), and "
                          f"a {kind!r} model is not one" + ("; export it with --format onnx" if kind in EXPORTERS
                                                             else ""))


def charlm_to_state(model) -> dict[str, np.ndarray]:
    """A ``RecurrentLM``'s weights under :class:`TorchCharLM`'s state_dict names (host copies)."""
    check_charlm(model)
    sd = {f"rnn.{k}": v for k, v in _recurrent_to_torch(model.rnn, model.rnn.params, grads=False).items()}
    if model.embed is not None:
        sd["embed.weight"] = backend.to_numpy(model.embed.weight).copy()
    sd["out.weight"] = backend.to_numpy(model.out.weight).copy()
    sd["out.bias"] = backend.to_numpy(model.out.bias).copy()
    return sd


def charlm_from_state(config: dict, sd: dict):
    """The ``RecurrentLM`` of ``config`` (``RecurrentLM.config()`` form) with the weights of a
    :class:`TorchCharLM` state_dict ``sd`` of NumPy arrays; :class:`RnnlabError` if they differ."""
    from ..models import build_model

    try:
        model = build_model(config, rng=np.random.default_rng(0))
        want = {f"rnn.{k}" for k in _recurrent_to_torch(model.rnn, model.rnn.params, grads=False)}
        want |= {"out.weight", "out.bias"} | ({"embed.weight"} if model.embed is not None else set())
        if set(sd) != want:
            raise KeyError(f"missing {sorted(want - set(sd))[:3]}, unexpected {sorted(set(sd) - want)[:3]}")
        rnn = recurrent_state_from_torch(model.rnn, {k[len("rnn."):]: v for k, v in sd.items() if k.startswith("rnn.")})
        model.rnn.load_state_dict(rnn)
        model.out.load_state_dict({"W_hy": sd["out.weight"], "b_y": sd["out.bias"]})
        if model.embed is not None:
            model.embed.load_state_dict({"weight": sd["embed.weight"]})
    except (KeyError, TypeError, ValueError) as exc:
        raise RnnlabError(f"the weights do not fit the char-LM {config.get('model')!r} they come with "
                          f"({type(exc).__name__}: {exc})") from None
    model.eval()
    return model


def charlm_config(module) -> dict:
    """``RecurrentLM.config()`` of a torch char-LM: ``module.config()`` for a :class:`TorchCharLM`,
    else read from its ``embed`` (``nn.Embedding`` or absent/None for one-hot input), ``rnn``
    (``nn.RNN/LSTM/GRU``) and ``out`` (``nn.Linear``) children."""
    import torch
    import torch.nn as tnn

    if callable(getattr(module, "config", None)):
        return module.config()
    rnn, out, emb = getattr(module, "rnn", None), getattr(module, "out", None), getattr(module, "embed", None)
    cell = {tnn.LSTM: "lstm", tnn.GRU: "gru", tnn.RNN: "rnn"}.get(type(rnn))
    why = None
    if cell is None or not isinstance(out, tnn.Linear) or not (emb is None or isinstance(emb, tnn.Embedding)):
        why = "it needs children embed (nn.Embedding, or None for one-hot input), rnn (nn.RNN/LSTM/GRU), out (nn.Linear)"
    elif rnn.bidirectional or not rnn.bias or getattr(rnn, "proj_size", 0) or out.bias is None:
        why = "rnnlab's char-LM has a unidirectional recurrent stack with biases, no projection, a biased read-out"
    elif (out.in_features != rnn.hidden_size or (emb is not None and emb.num_embeddings != out.out_features)
          or rnn.input_size != (emb.embedding_dim if emb is not None else out.out_features)):
        why = "the sizes of embed, rnn and out do not chain (V -> E -> H -> V)"
    elif out.weight.dtype not in (torch.float32, torch.float64):
        why = f"its weights are {out.weight.dtype}, rnnlab's float32 or float64 (call .float() first)"
    if why:
        raise RnnlabError(f"cannot read {type(module).__name__} as an rnnlab char-LM: {why}")
    return {"model": cell, "vocab_size": out.out_features, "hidden": rnn.hidden_size, "layers": rnn.num_layers,
            "embed": emb.embedding_dim if emb is not None else 0, "dropout": float(rnn.dropout),
            "nonlinearity": getattr(rnn, "nonlinearity", "tanh"),
            "dtype": str(out.weight.dtype).replace("torch.", "")}


def to_torch(run_or_model, checkpoint: str = "best"):
    """A :class:`TorchCharLM` in eval mode with the weights of ``run_or_model``: a ``RecurrentLM``,
    a run directory (its ``checkpoint``, ``best`` or ``last``) or a torch-format directory. From a
    directory the module's ``vocab`` attribute holds the run's :class:`~rnnlab.data.Vocab`."""
    TorchCharLM = _torch_lm().TorchCharLM
    import torch

    vocab = None
    if isinstance(run_or_model, (str, os.PathLike)):
        if os.path.isfile(os.path.join(run_or_model, CONFIG_FILE)) and os.path.isfile(
                os.path.join(run_or_model, WEIGHTS_FILE)):
            model, vocab, _ = read_export(run_or_model)
        else:
            from ..cli.common import load_run

            _, _, _, vocab, model, _ = load_run(run_or_model, checkpoint)
    else:
        model = run_or_model
    sd = charlm_to_state(model)
    module = TorchCharLM(**model.config())
    module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    module.vocab = vocab
    return module.eval()


def export_files(model, vocab, metadata: dict | None = None) -> dict[str, bytes]:
    """The torch format's files (name -> bytes) for a ``RecurrentLM`` or torch char-LM module."""
    from safetensors.numpy import save as st_save

    from .. import __version__
    from ..io import dumps_json

    if hasattr(model, "state_dict") and not hasattr(model, "params"):  # a torch module
        config, sd = charlm_config(model), {k: _np(v) for k, v in model.state_dict().items()}
        charlm_from_state(config, sd)  # checks the names and shapes before anything is written
    else:
        config, sd = model.config(), charlm_to_state(model)
    if vocab.size != config["vocab_size"]:
        raise RnnlabError(f"the vocabulary has {vocab.size} entries but the model {config['vocab_size']}")
    cfg = {"format": TORCH_FORMAT, "rnnlab_version": __version__, "model": config, "vocab": vocab.to_dict(),
           "special_tokens": {"bos": vocab.bos, "eos": vocab.eos} if vocab.boundary else {}, **(metadata or {})}
    return {CONFIG_FILE: (dumps_json(cfg, indent=2) + "\n").encode("utf-8"),
            WEIGHTS_FILE: st_save({k: np.ascontiguousarray(v) for k, v in sorted(sd.items())},
                                  metadata={"format": "pt"})}


def save(model, path, vocab, metadata: dict | None = None, force: bool = False) -> None:
    """Write the torch format of ``model`` (a ``RecurrentLM``, a :class:`TorchCharLM` or a module
    :func:`charlm_config` reads) with its ``vocab`` (:class:`~rnnlab.data.Vocab`) to directory
    ``path``, atomically; ``force`` replaces an existing ``path``."""
    from ..io import atomic_write_dir

    atomic_write_dir(path, export_files(model, vocab, metadata), replace=force)


def read_export(path):
    """``(RecurrentLM, Vocab, config dict)`` from a torch-format directory, with NumPy only."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    from ..data import Vocab
    from ..io import read_json, read_limited
    from ..lm.checkpoint import DEFAULT_MAX_BYTES

    where = os.fspath(path)
    if not os.path.isdir(where):
        raise RnnlabError(f"{where} is not a torch-format directory (rnnlab export RUN --format torch --out DIR "
                          "writes one)")
    cfg = read_json(os.path.join(where, CONFIG_FILE), "torch-format config")
    if cfg.get("format") != TORCH_FORMAT or not isinstance(cfg.get("model"), dict):
        raise RnnlabError(f"{where}/{CONFIG_FILE} is not an rnnlab torch-format config (format "
                          f"{cfg.get('format')!r}, expected {TORCH_FORMAT!r})")
    if cfg["model"].get("model") not in _CELLS:
        raise RnnlabError(f"{where}/{CONFIG_FILE}: model {cfg['model'].get('model')!r} is not rnn, lstm or gru")
    vocab = Vocab.from_dict(cfg.get("vocab"), source=f"{where}/{CONFIG_FILE}")
    raw = read_limited(os.path.join(where, WEIGHTS_FILE), "torch-format weights", DEFAULT_MAX_BYTES,
                       "export the model again")
    try:
        sd = st_load(raw)
    except (SafetensorError, ValueError) as exc:
        raise RnnlabError(f"{where}/{WEIGHTS_FILE} is not a readable safetensors file ({exc}); export it again") from None
    model = charlm_from_state(cfg["model"], sd)
    if vocab.size != model.vocab_size:
        raise RnnlabError(f"{where}: the vocabulary has {vocab.size} entries but the model {model.vocab_size}")
    return model, vocab, cfg


def load(path):
    """The :class:`TorchCharLM` saved in torch-format directory ``path``, in eval mode; its
    ``vocab`` attribute holds the :class:`~rnnlab.data.Vocab`."""
    return to_torch(path)
