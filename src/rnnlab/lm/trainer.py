"""One trainer for every language model: data, steps, evaluation, checkpoints, exact resume.

Each step::

    x, y (T, B)  ->  logits, state = model.forward(x, state)       (state carried in stream mode)
    loss, dlogits = softmax_cross_entropy(logits, y)                mean nats per scored character
    model.backward(dlogits, cache); clip_grad_norm; optimizer.step(); schedule.step()

On the CPU the forward/loss/backward part runs on ``--threads`` threads by the parallel plan
that measured fastest for this model on this machine at the start of the run, or the one named by
``--plan`` (:mod:`rnnlab.lm.plan`).

A run is limited by steps (``max_steps``), by wall-clock time (``max_time``) or both, whichever
comes first. With a time limit the learning-rate schedule follows the share of the budget used
(``elapsed / max_time``; with both limits, the larger of the two shares), so a run of any speed
traces the whole schedule and uses its whole budget. Compiling kernels happens before the clock
starts (:mod:`rnnlab.lm.warmup`), so it never counts against ``max_time``.

Everything a continuation needs is in ``checkpoints/last.safetensors``: the weights, the
optimizer's slots, the carried state, and in its JSON metadata the step, the schedule, the
generator and batcher positions. A run interrupted and resumed therefore ends bit-identical to
one that ran straight through. Ctrl-C (or SIGTERM) is honoured between steps: the trainer writes
``last`` and returns. A NaN or Inf loss stops training before the bad step touches the weights,
keeps the last good checkpoint, and raises a :class:`RnnlabError` that suggests a cure.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..data import LinesBatcher, StreamBatcher, Vocab
from ..errors import RnnlabError
from ..io import append_jsonl, atomic_write_json, read_jsonl
from ..models import build_model
from ..optim import clip_grad_norm, flatten_state, make_optimizer, make_schedule, unflatten_state
from .checkpoint import _FIX as _CHECKPOINT_FIX
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DEFAULT_MAX_STEPS, TrainConfig
from .corpus import Corpus
from .evaluate import evaluate
from .progress import make_progress
from .rundir import RunDir
from .plan import Plan, choose as choose_plan, layout as plan_layout, save_schedules
from .shards import BatchShards, blas_limit, usable_cores

FORMAT = "rnnlab-run"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------ state I/O
def _state_arrays(state) -> list:
    if state is None:
        return []
    return list(state) if isinstance(state, tuple) else [state]


def _state_from_arrays(model, arrays: list):
    if not arrays:
        return None
    xs = [backend.asarray(a) for a in arrays]
    return tuple(xs) if getattr(model, "cell", None) == "lstm" else xs[0]


def model_tensors(model) -> dict:
    return {f"model.{k}": v for k, v in model.params.items()}


def expected_model(model) -> dict:
    return {f"model.{k}": (tuple(v.shape), v.dtype.name) for k, v in model.params.items()}


def load_model_weights(model, path) -> dict:
    """Load the ``model.*`` tensors of a checkpoint file into ``model``; returns the metadata."""
    tensors, meta = load_checkpoint(path, expected=None)
    apply_model_tensors(model, tensors, path)
    return meta


def apply_model_tensors(model, tensors: dict, path) -> None:
    """Copy the ``model.*`` entries of checkpoint ``tensors`` into ``model``, checking each name,
    shape and dtype against the model first."""
    want = expected_model(model)
    got = {k: v for k, v in tensors.items() if k.startswith("model.")}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise RnnlabError(f"checkpoint {path} does not fit the run's model (missing {missing[:3]}, unexpected "
                          f"{extra[:3]}): the run directory's files do not belong together; retrain")
    for k, (shape, dtype) in want.items():
        if tuple(got[k].shape) != shape or got[k].dtype.name != dtype:
            raise RnnlabError(f"checkpoint {path}: tensor {k} is {got[k].dtype.name}{list(got[k].shape)}, the model "
                              f"needs {dtype}{list(shape)}; the run directory's files do not belong together")
    model.load_state_dict({k[len("model."):]: v for k, v in got.items()})


# ------------------------------------------------------------------------------------ trainer
@dataclass
class TrainResult:
    step: int
    best_val: float
    last_train: float
    interrupted: bool = False
    chars_per_s: float = 0.0
    elapsed: float = 0.0
    history: list = field(default_factory=list)
    already_done: str = ""   # why no step ran: the limit a resumed run had already reached
    compile_seconds: float = 0.0  # spent compiling kernels before the clock started (0: all cached)


class Trainer:
    """Train ``cfg.model`` on ``corpus`` in the run directory ``run`` (already created and locked)."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus, run: RunDir, *, progress: bool = True,
                 log=print, progress_every: float = 30.0, on_eval=None) -> None:
        """``progress``: show a bar on a terminal, else a plain line every ``progress_every``
        seconds (see :mod:`rnnlab.lm.progress`); ``log`` prints notes (the compilation notice
        is shown only with ``progress``). ``on_eval(record) -> bool``, if given, sees every
        validation record (what goes into ``metrics.jsonl``) after its checkpoint is written;
        True ends training there (an early stop, e.g. by a sweep's scheduler: not an
        interruption)."""
        self.cfg, self.corpus, self.run, self.progress, self.log = cfg, corpus, run, progress, log
        self.progress_every = progress_every
        self.on_eval = on_eval
        self._stop_asked = False
        self.rng = np.random.default_rng(cfg.seed)
        self.model = build_model(cfg.model_config(corpus.vocab.size), rng=self.rng)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.params, self.model.grads, lr=cfg.lr,
                                        **({"weight_decay": cfg.weight_decay} if cfg.weight_decay else {}))
        self.optimizer.exclude_from_decay(self.model.no_decay())  # e.g. the transformer decays matrices only
        self.schedule = self._make_schedule()
        train = corpus.split.train
        if corpus.mode == "lines":
            self.batcher = LinesBatcher(train, cfg.batch, np.random.default_rng([cfg.seed, 1]))
        else:
            self.batcher = StreamBatcher(train, cfg.batch, cfg.seq_len)
        # how a step uses the threads (plan.py): chosen at the start of fit() unless a resume set
        # it; kept in the checkpoint, so that a resumed run computes with the same bits
        self.plan: Plan | None = None
        self._layout_set = False
        self.state = None
        self.step = 0
        self.elapsed = 0.0
        self.best_val = math.inf
        self._saved_step = -1
        self._saved_elapsed = 0.0
        self._clock_start = None  # while fitting: the clock reading that ``elapsed`` counts from
        self._shards = None
        self._compiled = False
        if self.model.kind == "bigram":
            self.model.prefit(self._train_pairs())

    def _make_schedule(self):
        """The schedule over ``max_steps`` steps; a run limited by time alone passes the budget's
        share to it instead (:meth:`budget_share`), and its step-based parameters take the default
        step count as their nominal horizon."""
        cfg = self.cfg
        steps = cfg.max_steps or DEFAULT_MAX_STEPS
        if cfg.schedule == "cosine":
            return make_schedule("cosine", self.optimizer, warmup_steps=min(cfg.warmup, steps // 2), total_steps=steps,
                                 min_lr=cfg.min_lr)
        if cfg.schedule == "step":
            return make_schedule("step", self.optimizer, step_size=max(1, steps // 3), gamma=0.3, horizon=steps)
        if cfg.schedule == "exponential":
            return make_schedule("exponential", self.optimizer, horizon=steps,
                                 gamma=(cfg.min_lr / cfg.lr) ** (1.0 / steps) if cfg.min_lr > 0 else 0.999)
        return make_schedule("constant", self.optimizer)

    def budget_share(self) -> float | None:
        """The share of a time-limited run's budget used: ``elapsed / max_time``, or with a step
        limit too the larger of that and ``step / max_steps``; None for a run limited by steps
        alone (its schedule counts steps)."""
        cfg = self.cfg
        if not cfg.max_time:
            return None
        p = self.elapsed / cfg.max_time
        if cfg.max_steps:
            p = max(p, self.step / cfg.max_steps)
        return min(p, 1.0)

    def limit_reached(self) -> str:
        """Why no further step may run (the step or time limit is reached), or ``""``."""
        cfg = self.cfg
        steps = cfg.step_limit()
        if steps is not None and self.step >= steps:
            return f"step {self.step:,} of --max-steps {steps:,}"
        if cfg.max_time and self.elapsed >= cfg.max_time:
            return f"{self.elapsed:.0f} s of --max-time {cfg.max_time:g} s"
        return ""

    def compile_kernels(self, notify=None) -> float:
        """Compile (or load from the cache) every kernel this run's steps and validation use,
        once, before training is timed; ``notify`` (default: :attr:`log` when showing progress)
        hears about a compilation. Returns the seconds spent compiling: 0 when nothing had to be
        compiled (done already, or every kernel loaded from numba's cache)."""
        if self._compiled:
            return 0.0
        from .warmup import warm_up

        if notify is None and self.progress:
            notify = self.log
        seconds = warm_up(self.model, self._batch_shards(), self.cfg, self.corpus, notify)
        self._compiled = True
        return seconds

    def _train_pairs(self):
        """(x, y) batches covering the training split once (for closed-form fits)."""
        from ..data import lines_eval_batches, stream_eval_batches

        if self.corpus.mode == "lines":
            for x, y, _ in lines_eval_batches(self.corpus.split.train, 256):
                yield x, y
        else:
            for x, y, _ in stream_eval_batches(self.corpus.split.train, 256, 256):
                yield x, y

    # -------------------------------------------------------------------------- checkpoints
    def snapshot(self) -> tuple[dict, dict]:
        tensors = model_tensors(self.model)
        otensors, ometa = flatten_state(self.optimizer.state_dict())
        tensors.update(otensors)
        carry = _state_arrays(self.state)
        for i, a in enumerate(carry):
            tensors[f"carry.{i}"] = a
        meta = {
            "format": FORMAT, "version": FORMAT_VERSION, "step": self.step, "elapsed": self.elapsed,
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "optimizer": ometa, "schedule": self.schedule.state_dict(), "batcher": self.batcher.state(),
            "rng": self.rng.bit_generator.state, "carry": len(carry), "model": self.model.config(),
            "plan": self.plan.to_dict() if self.plan else None,
        }
        return tensors, meta

    def save(self, which: str = "last") -> None:
        if which == "last":
            self._saved_elapsed = self.elapsed
        tensors, meta = self.snapshot()
        if which == "best":
            tensors = model_tensors(self.model)
            meta = {"format": FORMAT, "version": FORMAT_VERSION, "step": self.step,
                    "val_loss": self.best_val if math.isfinite(self.best_val) else None,
                    "model": self.model.config(), "plan": meta.get("plan")}  # the plan: for `rnnlab eval`
        save_checkpoint(self.run.checkpoint_path(which), tensors, meta)

    def restore(self, keep_plan: bool = True) -> Plan:
        """Continue from ``checkpoints/last``: weights, optimizer, schedule, data position, RNG, and
        the parallel plan it trained with (``keep_plan=False``: :meth:`fit` plans again from this
        run's ``threads`` and ``plan`` options). Returns the checkpoint's plan."""
        path = self.run.checkpoint_path("last")
        fresh = "start a new run with --force instead of --resume (the old run's files are moved aside)"
        if not path.is_file():
            raise RnnlabError(f"cannot resume: {path} is missing, so the training state is lost; {fresh}")
        try:
            tensors, meta = load_checkpoint(path)
        except RnnlabError as exc:
            raise RnnlabError(f"cannot resume: {str(exc).replace(_CHECKPOINT_FIX, fresh)}") from None
        try:
            if meta.get("format") != FORMAT or meta.get("model") != self.model.config():
                raise RnnlabError(f"checkpoint {path} was written for another model or by another program; "
                                  "start a new run with --force")
            apply_model_tensors(self.model, tensors, path)
            self.optimizer.load_state_dict(unflatten_state(tensors, meta["optimizer"]))
            self.schedule.load_state_dict(meta["schedule"])
            self.batcher.load_state(meta["batcher"])
            self.rng.bit_generator.state = meta["rng"]
            saved_plan = saved_plan_of(meta)
            if keep_plan:
                self.plan = saved_plan
            n = int(meta["carry"])
            self.state = _state_from_arrays(self.model, [tensors[f"carry.{i}"] for i in range(n)])
            self.step = self._saved_step = int(meta["step"])
            self.elapsed = float(meta["elapsed"])
            self.best_val = math.inf if meta.get("best_val") is None else float(meta["best_val"])
            self.schedule.update(self.budget_share())  # the rate for this run's budget (it may have changed)
        except RnnlabError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise RnnlabError(f"checkpoint {path} is incomplete or inconsistent ({type(exc).__name__}: {exc}); "
                              "use --force to start over") from None
        self._close_shards()  # shards made before the plan was known are made again on first use
        return saved_plan

    # -------------------------------------------------------------------------- loop
    def train_step(self) -> float:
        """One optimisation step; returns the mean training loss (nats per character)."""
        cfg, xp = self.cfg, backend.xp
        batch = self.batcher.next_batch()
        if self.corpus.mode == "lines":
            x, y, lengths = batch
            state = None
        else:
            x, y, reset = batch
            lengths = None
            state = self.model.initial_state(xp, cfg.batch) if reset or self.state is None else self.state
        x, y = xp.asarray(x), xp.asarray(y)
        loss, state_n = self._batch_shards().step(x, y, state, lengths, self.rng)  # forward, loss, backward
        loss = backend.to_float(loss)
        if not math.isfinite(loss):
            raise _Diverged(f"the training loss became {loss}", self.step + 1)
        # the norm is checked with clipping off too (max_norm inf scales nothing): a NaN/Inf gradient
        # stops training before the optimizer writes it into the weights
        norm = clip_grad_norm(self.model.grads, cfg.clip if cfg.clip > 0 else math.inf)
        if not math.isfinite(norm):
            raise _Diverged(f"the gradient norm became {norm}", self.step + 1)
        self.optimizer.step()
        if self.corpus.mode != "lines" and self.model.carries_state:
            self.state = state_n
        self.step += 1
        self.schedule.step(self.budget_share())  # the rate for the next step
        return loss

    def validate(self) -> float:
        val = self.corpus.split.val
        if len(val) == 0:
            return math.nan
        return evaluate(self.model, val, self.corpus.mode, self.cfg.batch, self.cfg.seq_len,
                        shards=self._batch_shards())["loss_nats"]

    def make_plan(self) -> Plan:
        """The run's parallel plan: a resumed run's, else the one :func:`rnnlab.lm.plan.choose`
        picks for the ``threads`` and ``plan`` options (it says which in the log when showing progress).
        A resumed packed plan takes its layout (:func:`rnnlab.lm.plan.layout`: remembered for this
        machine and shape, else timed; the same bits in every layout)."""
        cfg = self.cfg
        if self.plan is None:
            self.plan = choose_plan(self.model, cfg.batch, self._step_len(), cfg.threads, cfg.plan,
                                    log=self.log if self.progress else None)
        elif not self._layout_set and self.plan.gemm == "packed":
            plan_layout(self.model, cfg.batch, self._step_len())
        self._layout_set = True
        return self.plan

    def _step_len(self) -> int:
        """Time steps of a typical batch: the BPTT length, or the mean item length in lines mode."""
        if self.corpus.mode == "stream":
            return self.cfg.seq_len
        return max(1, int(np.mean(self.corpus.split.train.lengths)) + 1)

    def fit(self) -> TrainResult:
        """Train until the step or time limit (or Ctrl-C); evaluate and checkpoint every
        ``eval_every`` steps and at the end. A resumed run whose limit is already reached trains
        nothing and says so in :attr:`TrainResult.already_done`."""
        cfg = self.cfg
        chars_per_step = cfg.batch * self._step_len()
        done = self.limit_reached()
        if done:
            self._close_shards()
            return TrainResult(self.step, self.best_val, math.nan, elapsed=self.elapsed, already_done=done)
        self.make_plan()  # before the clock starts: the plan's search (when not cached) times the candidates
        stop = _StopFlag()
        losses: list[float] = []
        last_train = math.nan
        window_time, window_steps = 0.0, 0
        cps = 0.0
        warm = False
        first_step = 0.0  # the untimed first step's time, for a run of one step
        interrupted = False
        # The BLAS keeps the plan's thread count for the whole run (evaluation included): OpenBLAS's
        # idle workers, woken by a multi-threaded call between steps, spin for a while and would
        # compete with the plan's own threads.
        blas = blas_limit(self.plan.blas_threads) if backend.xp is np else contextlib.nullcontext()
        bar = None
        ok = False
        try:
            with stop, blas:
                compile_seconds = self.compile_kernels()  # before the clock starts
                # a time-limited run shows its progress in seconds, a step-limited one in steps
                by_time = bool(cfg.max_time)
                bar = make_progress(self.progress, by_time, total=cfg.max_time if by_time else cfg.step_limit(),
                                    initial=self.elapsed if by_time else self.step, every=self.progress_every)
                self._clock_start = time.perf_counter() - self.elapsed
                while not self.limit_reached():
                    if stop.flag:
                        interrupted = True
                        break
                    if self._stop_asked:
                        break
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    losses.append(loss)
                    now = time.perf_counter()
                    if warm:  # the first step (first-touch memory) is not timed
                        window_steps += 1
                        window_time += now - t0  # training time only, evaluation excluded
                    else:
                        first_step = now - t0
                        save_schedules()  # the shapes its whole products timed (rnnlab.nn.packed.schedule)
                    warm = True
                    self.elapsed = now - self._clock_start
                    if window_time > 1.0:
                        cps = window_steps * chars_per_step / window_time
                        window_time, window_steps = 0.0, 0
                    if bar is not None:
                        bar.update(self.elapsed if by_time else self.step, self.step, self._postfix(loss, cps))
                    if self.step % cfg.eval_every == 0:
                        last_train = float(np.mean(losses))
                        self._evaluate_and_save(last_train, cps)
                        losses = []
                        self._tick()  # validation and saving count against the budget
            if losses:
                last_train = float(np.mean(losses))
            if cps == 0.0 and window_time > 0:  # a run shorter than the 1-second speed window
                cps = window_steps * chars_per_step / window_time
            elif cps == 0.0 and warm:  # one step only: its own time, warm-up included, is all there is
                cps = chars_per_step / first_step
            if self.step != self._saved_step:
                self._evaluate_and_save(last_train, cps, run_eval=not interrupted)
            elif self.elapsed != self._saved_elapsed:  # the time the last save took: a resumed run counts it
                self.save("last")
            ok = True
        except _Diverged as exc:
            last = self.run.checkpoint_path("last")
            kept = (f"the last good checkpoint is kept unchanged in {last}" if last.is_file() else
                    "no checkpoint had been written yet")
            raise RnnlabError(
                f"training diverged at step {exc.step}: {exc}; {kept}; lower --lr (now {cfg.lr:g}) or clip "
                f"gradients harder (--clip {max(cfg.clip / 2, 0.5) if cfg.clip else 1.0:g}) and start again"
            ) from None
        finally:
            self._clock_start = None
            if bar is not None:
                bar.close(ok)
            self._close_shards()
        return TrainResult(self.step, self.best_val, last_train, interrupted, cps, self.elapsed,
                           compile_seconds=compile_seconds)

    def _batch_shards(self) -> BatchShards:
        """The training step's shards by the run's plan, made on first use (after a resume has set
        the plan) and closed at the end of :meth:`fit`; the validation passes use them too."""
        if self._shards is None:
            self._shards = self.make_plan().batch_shards(self.model)
        return self._shards

    def _close_shards(self) -> None:
        if self._shards is not None:
            self._shards.close()
            self._shards = None

    def _postfix(self, loss, cps) -> str:
        val = f"{self.best_val:.3f}" if math.isfinite(self.best_val) else "-"
        return f"loss {loss:.3f} | best val {val} | {cps:,.0f} chars/s | lr {self.optimizer.lr:.2e}"

    def _tick(self) -> None:
        """Bring :attr:`elapsed` up to the clock while fitting."""
        if self._clock_start is not None:
            self.elapsed = time.perf_counter() - self._clock_start

    def _evaluate_and_save(self, train_loss, cps, run_eval=True) -> None:
        self._saved_step = self.step
        val = self.validate() if run_eval else math.nan
        self._tick()  # the checkpoint counts the validation's time
        if run_eval and len(self.corpus.split.val) and not math.isfinite(val):
            # the weights are no longer good: keep the previous checkpoint rather than overwrite it
            raise _Diverged(f"the validation loss became {val}", self.step)
        improved = math.isfinite(val) and val < self.best_val
        if improved:
            self.best_val = val
        record = {"step": self.step, "time": round(self.elapsed, 3), "train_loss": train_loss,
                  "val_loss": val if math.isfinite(val) else None, "lr": self.optimizer.lr, "chars_per_s": round(cps, 1)}
        # best before last: a crash between the two leaves ``last`` one step behind, and the resumed
        # run redoes the step and writes ``best`` again; the other order could lose a best checkpoint
        if improved or (not math.isfinite(val) and not self.run.checkpoint_path("best").exists()):
            self.save("best")
        self.save("last")
        save_schedules()  # those of the shapes met since the first step (validation's, in particular)
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        append_jsonl(self.run.metrics, record)
        if self.on_eval is not None and self.on_eval(dict(record)):
            self._stop_asked = True
        try:
            from .plot import plot_losses

            plot_losses(read_jsonl(self.run.metrics), self.run.loss_plot)
        except RnnlabError:
            raise
        except Exception as exc:  # a plot is a convenience: never lose training to it
            self.log(f"note: could not draw {self.run.loss_plot}: {exc}")


def saved_plan_of(meta: dict) -> Plan:
    """The plan a checkpoint trained with; checkpoints from before plans name only their shard
    count (one shard: ``blas``; more: ``split``)."""
    if meta.get("plan") is not None:
        return Plan.from_dict(meta["plan"])
    shards = int(meta.get("shards", 1))  # before sharding: one
    return Plan("split", shards) if shards > 1 else Plan("blas", usable_cores())


class _Diverged(Exception):
    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class _StopFlag:
    """Turns the first SIGINT / SIGTERM into a flag checked between steps; a second SIGINT
    interrupts at once (the previous checkpoint stays intact either way)."""

    def __init__(self) -> None:
        self.flag = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def write_run_files(run: RunDir, cfg: TrainConfig, corpus: Corpus) -> None:
    """``config.json`` and ``vocab.json`` of a new run."""
    atomic_write_json(run.config, {"format": FORMAT, "version": FORMAT_VERSION, "train": cfg.to_dict(),
                                   "data": {"source": corpus.source, "sha256": corpus.sha256, "mode": corpus.mode,
                                            "split_chars": list(corpus.split.char_counts),
                                            "split_items": list(corpus.split.sizes)}})
    atomic_write_json(run.vocab, corpus.vocab.to_dict())


def read_run(run: RunDir) -> tuple[TrainConfig, dict, Vocab]:
    """The configuration, data description and vocabulary of an existing run."""
    raw = run.read_config()
    if raw.get("format") != FORMAT or not isinstance(raw.get("train"), dict) or not isinstance(raw.get("data"), dict):
        raise RnnlabError(f"{run.config} is not an rnnlab run configuration; was the run directory written by rnnlab?")
    cfg = TrainConfig.from_dict(raw["train"], source=str(run.config))
    vocab = Vocab.from_dict(run.read_vocab(), source=str(run.vocab))
    return cfg, raw["data"], vocab
