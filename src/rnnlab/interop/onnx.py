"""ONNX export of rnnlab language models: the graph is built with the ``onnx`` package (imported
lazily; ``pip install "rnnlab[export]"``), one builder per model kind.

The graph is stateful, so a runtime can prime once and then generate one character per call::

    inputs                                    outputs
    ids      (T, B)      int64                logits     (T, B, V)   float32
    h0       (L, B, H)   float32              hn         (L, B, H)            rnn | lstm | gru
    c0       (L, B, H)   float32              cn         (L, B, H)            lstm
    context  (R-1, B)    int64                context_n  (R-1, B)             mlp | cnn (R > 1)

Output ``k`` (k >= 1) is the new value of state input ``k``: feed it back on the next call. At
the start of a text every state input holds the value in the metadata's
``rnnlab.initial_state`` (0 for hidden states, the padding id ``V`` for a window's context).
Shape legend: ``T`` time, ``B`` batch, ``V`` vocabulary, ``L`` layers, ``H`` hidden units,
``E`` embedding size, ``R`` receptive field of a window model, ``C`` channels.

Recurrent models use ONNX's own ``RNN`` / ``LSTM`` / ``GRU`` operators, one node per layer, so
every runtime's fused kernels apply. rnnlab keeps PyTorch's gate order; ONNX's differs, so the
gate blocks of ``W_xh``, ``W_hh`` and the biases are permuted by :func:`onnx_gate_order`::

    LSTM   rnnlab  i, f, g, o    ->   ONNX  i, o, f, c      (blocks 0, 3, 1, 2)
    GRU    rnnlab  r, z, n       ->   ONNX  z, r, h         (blocks 1, 0, 2)
    RNN    one block, unchanged; activation Tanh or Relu

ONNX's bias input is ``B = [Wb, Rb]`` (input-side then recurrent-side, ``2 G H`` values); rnnlab's
single bias ``b_h`` goes into ``Wb`` and ``Rb`` is zero, except for the GRU, whose ``b_hn`` sits
inside the reset product: ``h~ = tanh(W_h x + b_h,n + r * (R_h h + b_hn))`` is exactly ONNX's
``linear_before_reset = 1`` with ``b_hn`` in the ``h`` block of ``Rb``. ``layout = 0`` (time-major,
what rnnlab uses anyway: onnxruntime's CPU RNN/LSTM/GRU kernels refuse ``layout = 1``); each node's
output ``Y (T, 1, B, H)`` loses its direction axis with a ``Squeeze``.

The embedding is a ``Gather`` (a one-hot ``OneHot`` when the model was trained with ``embed = 0``),
the read-out ``MatMul + Add``; the window MLP is ``Gather`` + ``Slice``/``Concat`` + ``Gemm``; the
causal CNN ``Gather`` + ``Conv`` (left padding ``d (k - 1)``); the bigram a ``Gather`` from its
table. Dropout is a training device and is not in the graph.

The graph is float32 whatever the model's dtype: onnxruntime's recurrent kernels take no
float64, and a char-LM loses nothing measurable by it.
"""
from __future__ import annotations

import json

import numpy as np

from .. import __version__, backend
from ..errors import RnnlabError

OPSET = 17
"""The ONNX opset of exported graphs (>= 14, which defines the recurrent ops' ``layout``)."""
FORMAT = "rnnlab-onnx-lm/1"
"""Value of the ``rnnlab.format`` metadata entry of files written by this version."""
INSTALL = 'pip install "rnnlab[export]"'
PLAIN_METADATA = ("format", "version")
"""Metadata entries stored as plain strings; every other ``rnnlab.*`` entry holds JSON."""

GATE_ORDER = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
"""For each cell, which rnnlab gate block goes to ONNX block 0, 1, ..."""

_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid", "identity": "Identity"}
_INT64_MAX = np.iinfo(np.int64).max
_MAX_PROTO_BYTES = 2**31 - 2**24  # protobuf's 2 GB message limit, less room for the graph itself


def onnx_gate_order(cell: str, a) -> np.ndarray:
    """Rows of ``a (G*H, ...)``, stacked in rnnlab's (PyTorch's) gate blocks, put in ONNX's order.

    ``cell`` is ``"rnn"``, ``"lstm"`` or ``"gru"``; see :data:`GATE_ORDER` and the module docstring.
    Works for weights ``(G*H, I)`` and biases ``(G*H,)`` alike.
    """
    order = GATE_ORDER[cell]
    blocks = np.split(np.asarray(a), len(order), axis=0)  # G arrays of (H, ...)
    return np.concatenate([blocks[i] for i in order], axis=0)  # (G*H, ...)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise RnnlabError(f"ONNX export needs the onnx package: {INSTALL}") from None
    return onnx


class _Graph:
    """Nodes, weights, inputs and outputs of the graph being built, with generated names."""

    def __init__(self, onnx) -> None:
        self.onnx, self.h = onnx, onnx.helper
        self.nodes, self.weights, self.inputs, self.outputs = [], [], [], []
        self.initial_state: dict[str, float | int] = {}  # state input -> its value at the start of a text
        self.state_outputs: list[tuple] = []  # (name, element type, shape) of each state's next value
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, value, dtype=np.float32) -> str:
        """A weight or constant; float arrays are stored as float32."""
        arr = np.ascontiguousarray(backend.to_numpy(value) if hasattr(value, "shape") else value, dtype=dtype)
        name = self._name(base)
        self.weights.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, name: str | None = None, **attrs):
        """Add a node; returns its output name (a list of them when ``n_out > 1``)."""
        outs = [self._name(name or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, name=self._name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def rename(self, tensor: str, name: str) -> str:
        """Give ``tensor`` the public ``name`` (an ``Identity`` node), for graph outputs."""
        self.nodes.append(self.h.make_node("Identity", [tensor], [name], name=self._name("Identity")))
        return name

    def input(self, name: str, elem, shape) -> str:
        self.inputs.append(self.h.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem, shape) -> None:
        self.outputs.append(self.h.make_tensor_value_info(name, elem, shape))

    def state(self, name_in: str, name_out: str, elem, shape, fill) -> str:
        """A carried state: input ``name_in`` whose next value is output ``name_out``."""
        self.initial_state[name_in] = fill
        self.state_outputs.append((name_out, elem, shape))
        return self.input(name_in, elem, shape)

    def slice0(self, x: str, start: int, end: int = _INT64_MAX) -> str:
        """``x[start:end]`` along axis 0 (negative indices count from the end)."""
        return self.op("Slice", [x, self.const("starts", [start], np.int64), self.const("ends", [end], np.int64),
                                 self.const("axes", [0], np.int64)])

    def window_context(self, ids: str, r: int, pad: int) -> tuple[str, str | None]:
        """``(T+r, B)`` ids with the carried ``(r, B)`` context in front (all ``pad`` at the start
        of a text), and the new context, its last ``r`` rows."""
        if r == 0:
            return ids, None
        elem = self.onnx.TensorProto.INT64
        ctx = self.op("Concat", [self.state("context", "context_n", elem, [r, "B"], pad), ids], axis=0)
        return ctx, self.slice0(ctx, -r)


def _readout(g: _Graph, h: str, linear) -> str:
    """``h (..., H) @ W^T + b``: the ``(..., V)`` logits."""
    y = g.op("MatMul", [h, g.const("W_out_T", backend.to_numpy(linear.weight).T)])
    return g.op("Add", [y, g.const("b_out", linear.bias)]) if linear.bias is not None else y


def _recurrent(g: _Graph, model, ids: str):
    """Embedding (or one-hot) -> one ONNX RNN/LSTM/GRU node per layer -> read-out."""
    f32 = g.onnx.TensorProto.FLOAT
    cell, rnn, L, H = model.cell, model.rnn, model.layers, model.hidden
    if rnn.bidirectional or not rnn.bias:
        raise RnnlabError("ONNX export covers the unidirectional, biased recurrent layers that rnnlab train builds")
    if model.embed is not None:
        x = g.op("Gather", [g.const("embedding", model.embed.weight), ids], axis=0)  # (T, B, E)
    else:  # one-hot input: the (T, B, V) indicator vectors
        x = g.op("OneHot", [ids, g.const("depth", [model.vocab_size], np.int64), g.const("off_on", [0.0, 1.0])])
    h0 = g.state("h0", "hn", f32, [L, "B", H], 0.0)
    c0 = g.state("c0", "cn", f32, [L, "B", H], 0.0) if cell == "lstm" else None
    op = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell]
    attrs = {"hidden_size": H, "direction": "forward", "layout": 0}
    if cell == "rnn":
        attrs["activations"] = [_ACTIVATIONS[model.nonlinearity]]
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    hn, cn = [], []
    for k in range(L):
        p = {role: backend.to_numpy(rnn.params[name]) for role, name in rnn.names[k][0].items()}
        wb = onnx_gate_order(cell, p["b_h"])  # (G*H,)
        rb = np.zeros_like(wb)
        if cell == "gru":
            rb[2 * H:] = p["b_hn"]  # the h block of Rb: inside the reset product
        inputs = [x, g.const(f"W_l{k}", onnx_gate_order(cell, p["W_xh"])[None]),  # (1, G*H, I)
                  g.const(f"R_l{k}", onnx_gate_order(cell, p["W_hh"])[None]),  # (1, G*H, H)
                  g.const(f"B_l{k}", np.concatenate([wb, rb])[None]),  # (1, 2*G*H)
                  "", g.slice0(h0, k, k + 1)]  # no sequence_lens; initial_h (1, B, H)
        if c0 is not None:
            inputs.append(g.slice0(c0, k, k + 1))
        outs = g.op(op, inputs, n_out=3 if c0 is not None else 2, name=f"{cell}_l{k}", **attrs)
        x = g.op("Squeeze", [outs[0], g.const("axis1", [1], np.int64)])  # Y (T, 1, B, H) -> (T, B, H)
        hn.append(outs[1])  # (1, B, H)
        if c0 is not None:
            cn.append(outs[2])
    states = [g.op("Concat", hn, axis=0)] + ([g.op("Concat", cn, axis=0)] if c0 is not None else [])
    return _readout(g, x, model.out), states


def _window_mlp(g: _Graph, model, ids: str):
    """The last K characters' embeddings, concatenated, through the MLP (one Gemm per layer)."""
    K, Em, V = model.context, model.embed_dim, model.vocab_size
    ctx, ctx_n = g.window_context(ids, K - 1, V)  # (T+K-1, B)
    e = g.op("Gather", [g.const("embedding", model.embed.weight), ctx], axis=0)  # (T+K-1, B, E)
    # window position j of step t is e[t + j]: K shifted (T, B, E) slices, side by side
    parts = [g.slice0(e, j, j - (K - 1) if j < K - 1 else _INT64_MAX) for j in range(K)]
    h = g.op("Concat", parts, axis=2) if K > 1 else parts[0]  # (T, B, K*E)
    h = g.op("Reshape", [h, g.const("rows", [-1, K * Em], np.int64)])  # (T*B, K*E)
    act = _ACTIVATIONS[model.mlp.activation]
    for i, fc in enumerate(model.mlp.layers):
        h = g.op("Gemm", [h, g.const(f"W_fc{i}", fc.weight)] + ([g.const(f"b_fc{i}", fc.bias)] if fc.bias is not None
                                                                 else []), transB=1)  # (T*B, S_i+1)
        if i < len(model.mlp.layers) - 1:
            h = g.op(act, [h])
    shape = g.op("Concat", [g.op("Shape", [ids]), g.const("V", [V], np.int64)], axis=0)  # [T, B, V]
    return g.op("Reshape", [h, shape]), [ctx_n] if ctx_n else []  # (T, B, V)


def _causal_cnn(g: _Graph, model, ids: str):
    """Embeddings of the context and the new ids through dilated causal Convs, then the read-out."""
    r = model.context_size() - 1
    ctx, ctx_n = g.window_context(ids, r, model.vocab_size)  # (N = T+R-1, B)
    e = g.op("Gather", [g.const("embedding", model.embed.weight), ctx], axis=0)  # (N, B, E)
    x = g.op("Transpose", [e], perm=[1, 2, 0])  # (B, E, N): Conv's channels-first layout
    act = _ACTIVATIONS[model.activation]
    for i, conv in enumerate(model.convs):
        d, k = conv.dilation, conv.kernel_size
        inputs = [x, g.const(f"W_conv{i}", conv.params["weight"])]  # (C_out, C_in, k)
        if conv.has_bias:
            inputs.append(g.const(f"b_conv{i}", conv.params["bias"]))
        x = g.op("Conv", inputs, kernel_shape=[k], dilations=[d], pads=[conv.pad_left, 0])  # (B, C, N)
        x = g.op(act, [x])
    y = g.op("Transpose", [x], perm=[2, 0, 1])  # (N, B, C)
    if r:
        y = g.slice0(y, r)  # (T, B, C): the first R-1 steps are context only
    return _readout(g, y, model.out), [ctx_n] if ctx_n else []


def _bigram(g: _Graph, model, ids: str):
    """Row ``x_t`` of the table ``W (V, V)``."""
    return g.op("Gather", [g.const("W", model.params["W"]), ids], axis=0), []  # (T, B, V)


EXPORTERS = {"rnn": _recurrent, "lstm": _recurrent, "gru": _recurrent, "mlp": _window_mlp, "cnn": _causal_cnn,
             "bigram": _bigram}
"""Model kind -> graph builder ``(graph, model, ids) -> (logits, [new state, ...])``."""


def check_exportable(model) -> None:
    """Raise :class:`RnnlabError` in one line when ``model``'s kind has no ONNX builder."""
    kind = getattr(model, "kind", type(model).__name__)
    if kind not in EXPORTERS:
        raise RnnlabError(f"cannot export a {kind!r} model to ONNX: the exporter knows {', '.join(EXPORTERS)}; "
                          "use a newer rnnlab or export with --format torch where it applies")
    if sum(int(np.prod(p.shape)) for p in model.params.values()) * 4 > _MAX_PROTO_BYTES:
        raise RnnlabError("the model is over 2 GB in float32, more than one ONNX file can hold; train a smaller one")


def to_onnx(model, vocab=None, metadata: dict | None = None):
    """The ``onnx.ModelProto`` of ``model`` (any kind in :data:`EXPORTERS`), checked by
    ``onnx.checker``. ``vocab`` (an :class:`rnnlab.data.Vocab`) and ``metadata`` (JSON-able
    values, stored under ``rnnlab.<key>``) go into the file's metadata."""
    check_exportable(model)
    onnx = _onnx()
    h = onnx.helper
    g = _Graph(onnx)
    ids = g.input("ids", onnx.TensorProto.INT64, ["T", "B"])
    logits, states = EXPORTERS[model.kind](g, model, ids)
    g.rename(logits, "logits")
    g.output("logits", onnx.TensorProto.FLOAT, ["T", "B", model.vocab_size])
    for s, (name, elem, shape) in zip(states, g.state_outputs, strict=True):
        g.rename(s, name)
        g.output(name, elem, shape)
    graph = h.make_graph(g.nodes, f"rnnlab_{model.kind}", g.inputs, g.outputs, g.weights,
                         doc_string=f"rnnlab {model.kind} character language model: ids (T, B) -> logits (T, B, V), "
                                    "carrying its state (see the rnnlab.* metadata)")
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="rnnlab",
                         producer_version=__version__)
    proto.ir_version = 8  # what opset 17 was released with: runtimes since onnxruntime 1.12 load it
    meta = {"format": FORMAT, "version": __version__, "model": model.config(),
            "initial_state": g.initial_state, **(metadata or {})}
    if vocab is not None:
        meta["vocab"] = vocab.to_dict()
        meta["special_tokens"] = {"bos": vocab.bos, "eos": vocab.eos} if vocab.boundary else {}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"rnnlab.{key}", value if key in PLAIN_METADATA else json.dumps(value)
    onnx.checker.check_model(proto)
    return proto


def onnx_bytes(model, vocab=None, metadata: dict | None = None) -> bytes:
    """:func:`to_onnx` serialised: the bytes of a ``.onnx`` file."""
    return to_onnx(model, vocab, metadata).SerializeToString()
