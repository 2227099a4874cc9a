"""How a training step uses the CPU's threads, chosen by timing the candidates (as FFTW's planner
and cuDNN's algorithm search do) instead of by a rule of thumb.

A plan is a kind and a thread count ``N``; the kinds (:data:`KINDS`)::

    blas           one shard; every GEMM by NumPy's OpenBLAS, on N BLAS threads
    packed         one shard; the recurrent layers' GEMMs by the packed micro-kernel
                   (nn/packed.py): each time step split over N threads by hidden units
                   (nn/team.py), the whole-sequence products by rows; the few other GEMMs (the
                   read-out) on one BLAS thread, so no idle BLAS worker spins beside the team
    split          the batch's rows in N shards, one thread each (lm/shards.py); OpenBLAS on
                   one thread per shard
    split-packed   the same, with the packed micro-kernel in each shard

Results. ``blas`` gives the NumPy loop's bits; ``packed`` gives the same bits on every N (each
element of a product is summed in the same order by whichever thread computes it); ``split`` and
``split-packed`` add the shards' gradients in shard order, so they agree with the unsplit step to
rounding and are bit-for-bit repeatable for the same N. A run records its plan in its
checkpoints, so a resumed run continues with the same bits.

:func:`choose` times forward, loss and backward of every candidate on a batch of the run's shape
(random ids, the model's current weights, no optimizer step: the run itself is not touched),
alternating the candidates over a few rounds (and the two fastest again, longer, when they are
close: :func:`fastest`), keeps the fastest by median and remembers it for this machine and model
shape (:func:`cache_path`): later runs of the same shape take it without timing, and so compute
the same bits as the first (a choice timed while other work filled the cores is used for that run
only, :func:`busy_load`). Before the candidates, where some of them run the packed kernel, its
layout (the register tile of its per-step products) is timed on the model's training step and
the fastest kept (:func:`layout`; it changes the speed, not the bits) and remembered for that
shape; a remembered or named packed plan takes the remembered layout (or times it, once). The
schedules the whole-sequence products time on their first call (tile, operand, loop order:
:func:`rnnlab.nn.packed.schedule`) are remembered for the machine too (:func:`save_schedules`),
so later runs skip that timing as well. ``plan="measure"`` times again;
``plan="NAME"`` forces a kind. Only the candidates that can run are timed: the packed kinds need
numba, the split kinds at least :data:`~rnnlab.lm.shards.MIN_ROWS` rows per shard, and a model
that is not recurrent (or a CuPy run) has only ``blas``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, backend
from ..errors import RnnlabError
from ..io import atomic_write_json
from ..nn import cells
from .shards import MIN_ROWS, BatchShards, blas_limit, usable_cores

KINDS = ("blas", "packed", "split", "split-packed")
AUTO, MEASURE = "auto", "measure"

SETTLE_S = 0.15
"""Pause before each round of timings on more than one thread, so that the BLAS's idle worker
threads (OpenBLAS spins about 0.1 s after a call before it sleeps) are asleep when the plans that
do not use them are timed."""

WARM_S = 0.05
WARM_STEPS = 8
"""Untimed stepping before each plan's timed steps: for :data:`WARM_S` seconds or
:data:`WARM_STEPS` steps, whichever comes first (at least one step). After a pause, or after
another plan ran, the first steps of a threaded plan run slow: on the 2-vCPU development VM the
LSTM L1 A ``split-packed@2`` step took 14.7 ms after one untimed step and 9.5 ms after four
(its threads wake from sleep at every hand-off until the cores are busy again), while a trainer
steps back to back. Timed after one untimed step, such plans lost to slower ones. The step
bound keeps the planner short for tiny models (its rounds are many there, see :func:`measure`)."""


def timed_steps(step, k: int, warm_s: float | None = None, warm_steps: int | None = None) -> list[float]:
    """Seconds of ``k`` calls of ``step()`` run back to back, as a trainer runs them, after
    untimed calls (at least one) that warm the caches and wake the worker threads again: for
    ``warm_s`` seconds or ``warm_steps`` calls, whichever comes first (defaults :data:`WARM_S`,
    :data:`WARM_STEPS`)."""
    warm_until = time.perf_counter() + (WARM_S if warm_s is None else warm_s)
    left = (WARM_STEPS if warm_steps is None else warm_steps) - 1
    step()
    while left > 0 and time.perf_counter() < warm_until:
        step()
        left -= 1
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


@dataclass(frozen=True)
class Plan:
    kind: str = "blas"
    threads: int = 1

    def __post_init__(self):
        if self.kind not in KINDS or self.threads < 1:
            raise ValueError(f"plan must be one of {KINDS} on >= 1 threads, got {self.kind!r} x {self.threads}")

    @property
    def shards(self) -> int:
        """Blocks of batch rows, each on its own thread."""
        return self.threads if self.kind.startswith("split") else 1

    @property
    def gemm(self) -> str:
        """The per-step GEMM of the compiled loops (:func:`rnnlab.nn.cells.loop_settings`)."""
        return "blas" if self.kind in ("blas", "split") else "packed"

    @property
    def team(self) -> int:
        """Threads that share each time step of a shard."""
        return self.threads if self.kind == "packed" else 1

    @property
    def blas_threads(self) -> int:
        """Threads of NumPy's BLAS while the plan runs."""
        return self.threads if self.kind == "blas" else 1

    @property
    def bits(self) -> tuple:
        """Plans with equal ``bits`` give bit-identical results (see the module docstring)."""
        if self.kind.startswith("split"):
            return (self.kind, self.threads)
        return (self.kind,)

    def batch_shards(self, model) -> BatchShards:
        """The :class:`BatchShards` that runs ``model``'s steps by this plan (the caller holds the
        BLAS at :attr:`blas_threads`)."""
        return BatchShards(model, self.shards, self.gemm, self.team)

    def describe(self) -> str:
        return f"{self.kind} on {self.threads} thread{'' if self.threads == 1 else 's'}"

    @property
    def label(self) -> str:
        """Short name: ``kind@threads``."""
        return f"{self.kind}@{self.threads}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "threads": self.threads}

    @classmethod
    def from_dict(cls, d) -> "Plan":
        """A plan from :meth:`to_dict`'s record; raises ``ValueError`` on anything else."""
        if not isinstance(d, dict) or not isinstance(d.get("threads"), int):
            raise ValueError(f"not a plan record: {d!r}")
        return cls(str(d.get("kind")), d["threads"])


def _recurrent(model) -> bool:
    return getattr(model, "cell", None) in ("rnn", "lstm", "gru")


def candidates(model, batch: int, threads: int) -> list[Plan]:
    """The plans that can run ``model`` on ``threads`` threads with ``batch`` rows here (and the
    packed plan on one thread: a model so small that a team's barrier at every time step costs
    more than the second thread gives is faster on one)."""
    if not _recurrent(model) or backend.xp is not np:
        return [Plan("blas", threads)]
    numba = cells.numba_enabled()
    plans = [Plan("blas", threads)]
    if numba:  # a step too small for a team runs faster on one thread than split at every step
        plans += [Plan("packed", 1)] + ([Plan("packed", threads)] if threads > 1 else [])
    if threads > 1 and batch >= threads * MIN_ROWS:
        plans += [Plan("split", threads)] + ([Plan("split-packed", threads)] if numba else [])
    return plans


def measure(model, plans: list[Plan], batch: int, seq_len: int, rounds: int = 3, keep: float = 1.25,
            seed: int = 0, min_seconds: float = 1.0, max_rounds: int = 15) -> dict[Plan, float]:
    """Median seconds of forward, loss and backward per plan, on random ids ``(seq_len, batch)``.

    A warm-up step per plan (compilation, first-touch memory), then ``rounds`` rounds; in each,
    every plan still in the race runs untimed steps (:data:`WARM_S`, :data:`WARM_STEPS`) and two
    timed ones (:func:`timed_steps`), the plans with one BLAS thread first, after a pause of
    :data:`SETTLE_S` when the threads are shared. After the second round only the plans within
    ``keep`` times the best so far stay in the race (the others keep the median of their first
    two rounds). Small steps get more rounds: they go on until the timed steps add up to
    ``min_seconds`` (at most ``max_rounds``), since a few samples of a 10 ms step do not tell
    plans apart that differ by 10 %."""
    V = getattr(model, "vocab_size")
    rng = np.random.default_rng(seed)
    x = backend.asarray(rng.integers(0, V, (seq_len, batch)))
    y = backend.asarray(rng.integers(0, V, (seq_len, batch)))
    state = model.initial_state(backend.xp, batch)
    plans = sorted(plans, key=lambda p: p.blas_threads)  # single-BLAS-thread plans first in a round
    runners = {p: p.batch_shards(model) for p in plans}
    times: dict[Plan, list[float]] = {p: [] for p in plans}
    shared = max(p.threads for p in plans) > 1
    try:
        for p in plans:
            with blas_limit(p.blas_threads):
                runners[p].step(x, y, state, None, np.random.default_rng(seed))
        race = list(plans)
        r = 0
        while r < rounds or (r < max_rounds and sum(map(sum, times.values())) < min_seconds):
            if shared:
                time.sleep(SETTLE_S)
            for p in race:
                # the same dropout masks at every step, where the model has dropout
                step = lambda run=runners[p]: run.step(x, y, state, None, np.random.default_rng(seed))  # noqa: E731
                with blas_limit(p.blas_threads):
                    times[p] += timed_steps(step, 2)
            if r == 1 and len(race) > 2:  # after two rounds: one noisy round does not drop a plan
                best = min(statistics.median(times[p]) for p in race)
                race = [p for p in race if statistics.median(times[p]) <= keep * best]
            r += 1
    finally:
        for s in runners.values():
            s.close()
        model.zero_grad()
    return {p: statistics.median(ts) for p, ts in times.items()}


def layout(model, batch: int, seq_len: int, again: bool = False) -> str | None:
    """Put in force the packed kernel's layout for ``model`` (its register tile:
    :data:`rnnlab.nn.packed.LAYOUTS`; every layout gives the same bits) and return its name: the
    one remembered for this machine, model and shape (:func:`cache_path`), or, with none or
    ``again``, the fastest when the model's training step (the packed plan on one thread,
    :func:`_packed_step`) is timed now under each (:func:`time_layouts`), which is then remembered
    (unless the machine is busy, :func:`busy_load`). None, doing nothing, where the packed kernel
    does not run this model. Which tile wins depends on the CPU and on the shapes, not only on the vector ISA: on
    an Intel Ice Lake (AVX-512) the 8 x 3 tile ran LSTM's step products 15-30 % faster than the
    6 x 4, and the RNN's at ``H = 128`` slower. (The whole products' tiles and operand layouts
    are part of each product's schedule, timed per shape: :func:`rnnlab.nn.packed.schedule`;
    those remembered are put in force here too, :func:`load_schedules`.)"""
    if not (_recurrent(model) and backend.xp is np and cells.numba_enabled()):
        return None
    from ..nn import packed

    if not again:
        load_schedules()
    key = json.dumps({"machine": _machine(), "layout": {"model": model.config(), "batch": batch, "seq_len": seq_len}},
                     sort_keys=True)
    entry = None if again else _cache_read().get(key)
    name = entry.get("layout") if isinstance(entry, dict) else None
    if name in packed.LAYOUTS:
        packed.set_layout(name)
        return name
    with _packed_step(model, batch, seq_len) as step:
        name, timed = time_layouts(step)
    if _not_busy():
        _cache_put(key, {"layout": name, "timings_ms": {k: round(t * 1e3, 3) for k, t in timed.items()},
                         "date": time.strftime("%Y-%m-%d %H:%M")})
    save_schedules()
    return name


def _schedules_key() -> str:
    return json.dumps({"machine": _machine(), "schedules": "packed.matmul"}, sort_keys=True)


def _remembered_schedules(data: dict) -> dict:
    """The whole products' schedules remembered for this machine in the cache's ``data``, by key:
    those of the current form (:func:`rnnlab.nn.packed.valid`); a damaged or older entry is left
    out, and its product is timed again."""
    from ..nn import packed

    entry = data.get(_schedules_key())
    items = entry.get("schedules") if isinstance(entry, dict) else None
    out = {}
    for item in items if isinstance(items, list) else []:
        try:
            k, sched = (tuple(x) for x in item)
        except (TypeError, ValueError):
            continue
        if packed.valid(k, sched):
            out[k] = sched
    return out


def load_schedules() -> int:
    """Put the whole products' schedules remembered for this machine (:func:`save_schedules`) in
    force (:func:`rnnlab.nn.packed.remember`), so that their first products skip the timing;
    returns how many. Like the layout, a schedule changes the speed, not the bits."""
    if not (backend.xp is np and cells.numba_enabled()):
        return 0
    from ..nn import packed

    return packed.remember(_remembered_schedules(_cache_read()))


def save_schedules() -> None:
    """Remember for this machine (:func:`cache_path`) the whole products' schedules timed in this
    process (:func:`rnnlab.nn.packed.chosen`), beside those remembered before, unless this
    process found the machine busy, then or before (:func:`_not_busy`): schedules timed under
    load are for this run only, as plans are. The timing costs a model's first step a few times
    the time of a step (:data:`rnnlab.nn.packed.TUNE_CLOSE`), which later runs on this machine
    then skip, as FFTW's wisdom does."""
    if not (backend.xp is np and cells.numba_enabled()):
        return
    from ..nn import packed

    mine = packed.chosen()
    if not mine:
        return
    known = _remembered_schedules(_cache_read())
    merged = {**known, **mine}
    if merged == known or not _not_busy():
        return
    _cache_put(_schedules_key(), {"schedules": [[list(k), list(v)] for k, v in merged.items()],
                                  "date": time.strftime("%Y-%m-%d %H:%M")})


def time_layouts(run, rounds: int = 3, min_seconds: float = 1.0, max_rounds: int = 15) -> tuple[str, dict[str, float]]:
    """Time ``run()`` under each of :data:`rnnlab.nn.packed.LAYOUTS`, put the fastest in force and
    return its name and the median seconds per layout: one untimed call each, then ``rounds``
    rounds that alternate the layouts, more (at most ``max_rounds``) until the timed calls add up
    to ``min_seconds`` (as :func:`measure` does for the plans). The products timed alone are a
    poor guide: at LSTM config C on an Intel Ice Lake they favoured the 6 x 4 tile by 12 %, the
    whole step the 8 x 3 by 6 %."""
    from ..nn import packed

    times: dict[str, list[float]] = {name: [] for name in packed.LAYOUTS}
    r = 0
    while r <= rounds or (r <= max_rounds and sum(map(sum, times.values())) < min_seconds):
        for name in packed.LAYOUTS:
            packed.set_layout(name)
            t0 = time.perf_counter()
            run()
            if r:
                times[name].append(time.perf_counter() - t0)
        r += 1
    med = {name: statistics.median(ts) for name, ts in times.items()}
    best = min(med, key=med.get)
    packed.set_layout(best)
    return best, med


LAYOUT_ROWS = 2048
""":func:`layout` times steps of at most this many rows (``seq_len`` shortened): the tile changes
how the products use the registers and caches, which the batch and the blocks of ``k`` and of
rows decide, not the length of the sequence."""


@contextmanager
def _packed_step(model, batch: int, seq_len: int):
    """A zero-argument callable: forward, loss and backward of ``model`` by the packed plan on
    one thread, on random ids of ``batch`` rows and at most :data:`LAYOUT_ROWS` in all (the
    model's gradients are zeroed after)."""
    V, rng = model.vocab_size, np.random.default_rng(0)
    seq = max(1, min(seq_len, LAYOUT_ROWS // batch))
    x, y = (backend.asarray(rng.integers(0, V, (seq, batch))) for _ in range(2))
    state = model.initial_state(backend.xp, batch)
    runner = Plan("packed", 1).batch_shards(model)

    def step():
        with blas_limit(1):
            runner.step(x, y, state, None, np.random.default_rng(0))

    try:
        yield step
    finally:
        runner.close()
        model.zero_grad()


RUNOFF = 1.15
"""The plans within this factor of the fastest (when there are two or more) are timed again by
:func:`fastest`, longer: three rounds of two steps do not tell apart plans a few per cent apart on
a machine whose speed drifts (on the 2-vCPU Intel VM the planner's order disagreed with the
benchmark's longer blocks in 4 of 24 two-thread rows, by 1-11 %). All of them, not the two
fastest only: at LSTM L1 C on two threads the first timing put ``blas@2`` at 299 ms,
``packed@2`` at 303 and ``split-packed@2`` at 314, and the benchmark's blocks then ran them at
293, 265 and 240 ms (docs/benchmarks.md, point 14)."""
RUNOFF_ROUNDS = 5


def fastest(model, batch: int, seq_len: int, threads: int) -> tuple[Plan, dict[Plan, float]]:
    """The fastest of :func:`candidates` by :func:`measure`, and the timings (none when there is
    only one candidate). Where two or more are within :data:`RUNOFF` of the fastest, a run-off of
    :data:`RUNOFF_ROUNDS` rounds (at least two seconds of timed steps) between them decides, and
    its medians replace their first ones. Where a candidate runs the packed kernel, its layout
    (the tile) is chosen first (:func:`layout`, timed again) and stays in force."""
    options = candidates(model, batch, threads)
    if len(options) == 1:
        return options[0], {}
    if any(p.gemm == "packed" for p in options):
        layout(model, batch, seq_len, again=True)
    timed = measure(model, options, batch, seq_len)
    best = min(timed.values())
    close = sorted((p for p in timed if timed[p] <= RUNOFF * best), key=timed.get)
    if len(close) > 1:
        timed.update(measure(model, close, batch, seq_len, rounds=RUNOFF_ROUNDS, min_seconds=2.0))
    return min(timed, key=timed.get), timed


# ------------------------------------------------------------------------------ the remembered choices
def cache_path() -> Path:
    """Where the choices are remembered: ``$RNNLAB_CACHE_DIR/plans.json``, else under
    ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    root = os.environ.get("RNNLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rnnlab")
    return Path(root) / "plans.json"


def _machine() -> str:
    """What the timings depend on besides the model: the CPU, its usable cores, the BLAS kernel,
    numba's vector width and the versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    from threadpoolctl import threadpool_info

    kernels = sorted(f"{i.get('internal_api')}:{i.get('architecture')}" for i in threadpool_info()
                     if i.get("user_api") == "blas")
    vec = ""
    if cells.numba_enabled():
        from ..nn import packed

        vec = f"numba{packed.VECTOR_BYTES * 8}"
    return "|".join([cpu, f"{usable_cores()} cores", *kernels, vec, f"rnnlab {__version__}"])


def _cache_key(model, batch: int, seq_len: int, threads: int) -> str:
    return json.dumps({"machine": _machine(), "model": model.config(), "batch": batch, "seq_len": seq_len,
                       "threads": threads}, sort_keys=True)


def _cache_read() -> dict:
    try:
        with open(cache_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # none yet, unreadable or damaged: measure again
        return {}


def _cache_write(key: str, plan: Plan, timed: dict) -> None:
    _cache_put(key, {**plan.to_dict(), "timings_ms": {p.label: round(t * 1e3, 3) for p, t in timed.items()},
                     "date": time.strftime("%Y-%m-%d %H:%M")})


def _cache_put(key: str, entry: dict) -> None:
    data = _cache_read()
    data[key] = entry
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_path(), data)
    except (OSError, RnnlabError):  # a read-only home: the choice is simply not remembered
        pass


def choose(model, batch: int, seq_len: int, threads: int = 0, plan: str = AUTO, log=None) -> Plan:
    """The plan for training ``model`` on ``threads`` threads (0: every usable core).

    ``plan`` names a kind (:data:`KINDS`), taken as asked; ``"auto"`` takes the choice made for
    this machine and model shape before (:func:`cache_path`), or else times the candidates
    (:func:`fastest`) and remembers the fastest, so that later runs of the same shape compute the
    same bits without timing again; ``"measure"`` times them even so and remembers the new
    choice. ``log`` receives one line saying which plan and why."""
    global _BUSY_SEEN
    n = threads if threads > 0 else usable_cores()
    if plan not in (AUTO, MEASURE):
        if plan not in KINDS:
            raise RnnlabError(f"--plan must be auto, measure or one of {', '.join(KINDS)}, got {plan!r}")
        if plan.startswith("split"):
            n = min(n, batch)  # at least one row per shard
        chosen = Plan(plan, n)
        if chosen.gemm == "packed" and backend.xp is np and not cells.numba_enabled():
            raise RnnlabError(f"--plan {plan} needs numba, which is off here (RNNLAB_NO_NUMBA, or it could not be "
                              "loaded); choose blas or split")
        if chosen.gemm == "packed":
            layout(model, batch, seq_len)
        if log:
            log(f"plan: {chosen.describe()}{_layout_note(chosen)} (as asked)")
        return chosen
    options = candidates(model, batch, n)
    if len(options) == 1:
        return options[0]
    key = _cache_key(model, batch, seq_len, n)
    if plan == AUTO:
        hit = _cache_read().get(key)
        try:
            chosen = Plan.from_dict(hit)
        except ValueError:
            chosen = None
        if chosen in options:
            if chosen.gemm == "packed":
                layout(model, batch, seq_len)
            if log:
                log(f"plan: {chosen.describe()}{_layout_note(chosen)}, the fastest when measured on this machine for "
                    f"this model on {hit.get('date', '?')} (--plan measure times the candidates again)")
            return chosen
        load_schedules()  # a new shape's plans are timed with the products' remembered schedules
    busy = busy_load()
    _BUSY_SEEN = busy is not None  # a new choice: the load before it does not matter
    chosen, timed = fastest(model, batch, seq_len, n)
    if busy is None:
        _cache_write(key, chosen, timed)
        save_schedules()
    if log:
        log(f"plan: {chosen.describe()}{_layout_note(chosen)}, the fastest of " + ", ".join(
            f"{p.label} {timed[p] * 1e3:.1f} ms" for p in sorted(timed, key=timed.get)) + " per step (forward + backward)"
            + (f"; the machine is busy ({busy}), so this choice is for this run only, not remembered" if busy else ""))
    return chosen


def _layout_note(plan: Plan) -> str:
    """`` (8x3 tiles)`` and the like (:func:`layout`) for a packed plan, else nothing."""
    if plan.gemm != "packed":
        return ""
    from ..nn import packed

    return f" ({packed.layout()})"


_BUSY_SEEN = False


def _not_busy() -> bool:
    """Whether the machine is quiet now (:func:`busy_load`) and was at each check since the last
    :func:`choose` of this process: what was timed once the machine was busy (the plans, a
    layout, the whole products' schedules of the run's first step) is not remembered."""
    global _BUSY_SEEN
    _BUSY_SEEN = _BUSY_SEEN or busy_load() is not None
    return not _BUSY_SEEN


def busy_load() -> str | None:
    """``"load L on N cores"`` when other work already fills the usable cores (the 1-minute load
    average above their number), else ``None``. A plan timed then would reflect that moment's
    load: the run uses it, but it is not remembered for later runs."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return None
    cores = usable_cores()
    return f"load {load:.1f} on {cores} core{'s' if cores > 1 else ''}" if load > cores else None
