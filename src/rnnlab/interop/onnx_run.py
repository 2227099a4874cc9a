"""Running an exported ``.onnx`` language model with onnxruntime (imported lazily; ``pip install
"rnnlab[export]"``), behind the forward interface of :class:`rnnlab.models.LanguageModel`, so that
:func:`rnnlab.lm.sample.generate` samples from the file exactly as it samples from the run.

Needs only onnxruntime and the file's own metadata (see :mod:`rnnlab.interop.onnx`), not the
``onnx`` package nor the run directory.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import RnnlabError
from .onnx import FORMAT, INSTALL, PLAIN_METADATA

_NUMPY_OF = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise RnnlabError(f"running an ONNX model needs onnxruntime: {INSTALL}") from None
    return onnxruntime


class OnnxLM:
    """An exported model file: ``forward(ids (T, B), state) -> (logits (T, B, V), state_n, None)``.

    Attributes: ``vocab`` (:class:`rnnlab.data.Vocab`), ``meta`` (the ``rnnlab.*`` metadata,
    decoded), ``kind``, ``vocab_size``. The state is a tuple of arrays in the order of the graph's
    state inputs; ``None`` means the start of a text. ``threads`` sets onnxruntime's intra-op
    threads (0: its default).
    """

    def __init__(self, path, threads: int = 0) -> None:
        ort = _onnxruntime()
        from ..data import Vocab

        where = os.fspath(path)
        if not os.path.isfile(where):
            raise RnnlabError(f"model file {where} does not exist; check the path or export a run with rnnlab export")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors reach the user as one line, not as onnxruntime's log
        opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(where, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RnnlabError(f"{where} is not a loadable ONNX model ({first[:200]}); export it again") from None
        raw = self.session.get_modelmeta().custom_metadata_map
        if "rnnlab.format" not in raw:
            raise RnnlabError(f"{where} is an ONNX model but not one written by rnnlab export (no rnnlab metadata)")
        if raw["rnnlab.format"] != FORMAT:
            raise RnnlabError(f"{where} has format {raw['rnnlab.format']!r}; this rnnlab reads {FORMAT!r}: use the "
                              "rnnlab version that wrote it, or export again")
        try:
            meta = {k[len("rnnlab."):]: v for k, v in raw.items() if k.startswith("rnnlab.")}
            self.meta = {k: v if k in PLAIN_METADATA else json.loads(v) for k, v in meta.items()}
            self.vocab = Vocab.from_dict(self.meta["vocab"], source=f"{where} (metadata)")
            fill = self.meta["initial_state"]
            self.kind = self.meta["model"]["model"]
            self.state_inputs = [(i.name, [d if isinstance(d, int) else None for d in i.shape], _NUMPY_OF[i.type],
                                  fill[i.name]) for i in self.session.get_inputs()[1:]]
        except (KeyError, TypeError, ValueError) as exc:
            raise RnnlabError(f"{where}: damaged rnnlab metadata ({type(exc).__name__}: {exc}); export it again") from None
        self.vocab_size = self.vocab.size
        self.path = where

    def eval(self) -> "OnnxLM":
        return self  # an exported graph is always in inference mode

    def initial_state(self, xp, batch: int) -> tuple:
        """Each state input filled with its start-of-text value, batch axis ``batch``."""
        return tuple(np.full([batch if d is None else d for d in shape], value, dtype)
                     for _, shape, dtype, value in self.state_inputs)

    def forward(self, x, state=None, lengths=None, rng=None):
        if lengths is not None:
            raise ValueError("an exported ONNX model runs whole chunks: lengths= is not supported")
        ids = np.ascontiguousarray(np.asarray(x), dtype=np.int64)  # (T, B)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size})")
        if state is None:
            state = self.initial_state(np, ids.shape[1])
        feeds = {"ids": ids, **{name: s for (name, *_), s in zip(self.state_inputs, state, strict=True)}}
        out = self.session.run(None, feeds)
        return out[0], tuple(out[1:]), None
