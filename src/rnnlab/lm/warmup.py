"""Compile the kernels a training run needs before its clock starts.

The numba kernels (:mod:`rnnlab.nn.fused`, :mod:`rnnlab.nn.timeloop`) and the CUDA kernels are
compiled on first use, once per argument signature. Compiled inside the first training step, a
fresh install would spend a budget's first seconds compiling, and an
``rnnlab compare`` would charge them to the recurrent models alone. :func:`warm_up` therefore runs
everything a step and a validation pass call, once, on a batch of the run's own shape (in stream
mode cut to two time steps; in lines mode one full batch), before the trainer starts timing:

    forward + loss + backward through the run's shards   (training step; dropout on)
    the optimizer's update                               (on copies of the parameters)
    forward + loss through the shards in eval mode       (validation, test score, rnnlab eval)

It changes nothing a run depends on: the parameters are only read (the optimizer updates
copies), the gradients it leaves are overwritten by the first real step, dropout draws from a
generator of its own, and the batch comes from a batcher of its own.

numba keeps what it compiled on disk (``cache=True``): later runs and other processes load the
machine code in well under a second, and only the first run after an install (or an upgrade)
compiles. While something compiles, ``notify`` is told once (numba's ``numba:compile`` event
fires on real compilations only, not on cache loads).
"""
from __future__ import annotations

import time

import numpy as np

from .. import backend
from ..data import LinesBatcher, StreamBatcher
from ..nn import cells
from ..optim import make_optimizer

COMPILE_SECONDS = 15
"""About how long the first run's compilation of a run's kernels takes, said in the message:
measured 13.3 s for `rnnlab demo`'s LSTM in a fresh install on the 2-core development machine
with the packed kernels of the parallel plans (3.1 s before them; numba 0.68; a fraction of a
second once they are in numba's cache)."""


def warm_up(model, shards, cfg, corpus, notify=None) -> float:
    """Run the kernels of one training step and one validation batch of ``model`` (through the
    :class:`~rnnlab.lm.shards.BatchShards` ``shards``) for configuration ``cfg`` on ``corpus``;
    returns the seconds it took if numba compiled something, 0.0 if every kernel came from its
    cache (or numba is off). ``notify(message)`` is called once if kernels are compiled."""
    t0 = time.perf_counter()
    xp = backend.xp
    rng = np.random.default_rng(0)  # dropout masks and batch order of its own
    if corpus.mode == "lines":
        x, y, lengths = LinesBatcher(corpus.split.train, cfg.batch, rng).next_batch()
        state = None
    else:
        x, y, _ = StreamBatcher(corpus.split.train, cfg.batch, min(2, cfg.seq_len)).next_batch()
        lengths, state = None, model.initial_state(xp, cfg.batch)
    x, y = xp.asarray(x), xp.asarray(y)
    with _compile_notice(notify) as notice:
        shards.step(x, y, state, lengths, rng)
        params = {k: v.copy() for k, v in model.params.items()}
        grads = {k: g.copy() for k, g in model.grads.items()}
        make_optimizer(cfg.optimizer, params, grads, lr=cfg.lr,
                       **({"weight_decay": cfg.weight_decay} if cfg.weight_decay else {})).step()
        was_training = model.training
        model.eval()
        try:
            shards.loss_sum(x, y, state, lengths)
        finally:
            model.train(was_training)
    return time.perf_counter() - t0 if notice.said else 0.0


class _compile_notice:
    """While active, note in :attr:`said` (and tell ``notify``, if given) when numba starts
    compiling something; once, however many kernels compile."""

    def __init__(self, notify) -> None:
        self.notify, self.said, self._listener = notify, False, None

    def __enter__(self):
        if backend.xp is not np or not cells.numba_enabled():
            return self
        from numba.core import event

        notice = self

        class Listener(event.Listener):
            def on_start(self, ev):
                if not notice.said and notice.notify is not None:
                    notice.notify(f"compiling kernels (first run only, ~{COMPILE_SECONDS} s; "
                                  "not counted in --max-time)")
                notice.said = True

            def on_end(self, ev):
                pass

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        if self._listener is not None:
            from numba.core import event

            event.unregister("numba:compile", self._listener)
        return False
