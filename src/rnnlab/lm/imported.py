"""A run directory for a model trained elsewhere (e.g. in PyTorch, see
:mod:`rnnlab.interop.torch`): ``config.json``, ``vocab.json`` and a ``best`` checkpoint holding the
weights, so that ``rnnlab sample``, ``eval``, ``info`` and ``export`` use it like a trained run.

There is no ``last`` checkpoint (no optimizer state, no data position), so ``--resume`` refuses
it; the data section names where the model came from and has no split.
"""
from __future__ import annotations

from ..errors import RnnlabError
from ..io import atomic_write_json
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .rundir import RunDir
from .trainer import FORMAT, FORMAT_VERSION, model_tensors


def write_model_run(path, model, vocab, source: str, force: bool = False) -> RunDir:
    """Write ``model`` (a recurrent char-LM) and ``vocab`` as a run in directory ``path``;
    ``force`` moves an existing run there aside first (see :meth:`RunDir.create`)."""
    c = model.config()
    if c.get("nonlinearity", "tanh") != "tanh":
        raise RnnlabError(f"an rnnlab run holds tanh RNNs only (rnnlab train has no {c['nonlinearity']!r} option); "
                          "use the model through rnnlab.interop instead")
    if vocab.size != model.vocab_size:
        raise RnnlabError(f"the vocabulary has {vocab.size} entries but the model {model.vocab_size}")
    cfg = TrainConfig(model=c["model"], layers=c["layers"], hidden=c["hidden"], embed=c["embed"],
                      dropout=c["dropout"], dtype=c["dtype"], lines=vocab.boundary,
                      extra={"imported_from": source}).validate()
    with RunDir.create(path, force=force) as run:
        save_checkpoint(run.best, model_tensors(model), {"format": FORMAT, "version": FORMAT_VERSION, "step": 0,
                                                         "val_loss": None, "model": c, "imported_from": source})
        atomic_write_json(run.vocab, vocab.to_dict())
        atomic_write_json(run.config, {"format": FORMAT, "version": FORMAT_VERSION, "train": cfg.to_dict(),
                                       "data": {"source": source, "sha256": None,
                                                "mode": "lines" if vocab.boundary else "stream",
                                                "split_chars": None, "split_items": None}})
    return run
