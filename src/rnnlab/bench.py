"""``rnnlab bench``: the char-LM training step, rnnlab against PyTorch on the CPU.

One training step is the whole loop a trainer runs, in float32::

    ids (T, B) -> embedding (or one-hot, E = 0) -> RNN | LSTM | GRU (L layers) -> linear (V)
      -> softmax cross-entropy -> backward -> Adam update

rnnlab runs it as the trainer does (``RecurrentLM.forward`` / ``softmax_cross_entropy`` /
``zero_grad`` / ``RecurrentLM.backward`` through the :class:`rnnlab.lm.shards.BatchShards` of a
parallel plan, then ``Adam.step``). In each row the plan ``rnnlab train --threads N`` would choose
is chosen first, by the trainer's own short measurement (:func:`rnnlab.lm.plan.fastest`); then
torch and *every* candidate plan are timed, so the table shows what the chosen plan gives and how
far it is from the fastest candidate. The PyTorch twin is ``nn.Embedding`` (or one-hot vectors) +
``nn.RNN/LSTM/GRU`` + ``nn.Linear`` + ``F.cross_entropy`` + ``torch.optim.Adam``. All run in the
same process with the same thread count (OpenBLAS through threadpoolctl, as each plan holds it;
``torch.set_num_threads``), alternating in blocks: each block is untimed steps for
:data:`rnnlab.lm.plan.WARM_S` seconds or :data:`~rnnlab.lm.plan.WARM_STEPS` steps, whichever comes
first (at least one: caches and worker threads warm again after the other side ran; the planner
times its candidates the same way), then :data:`BLOCK` timed steps back to back; with more than
one thread a pause of :data:`~rnnlab.lm.plan.SETTLE_S` precedes each block, so that the other
side's spinning idle workers (OpenBLAS spins ~0.1 s before sleeping) do not steal its cores. The
time is the median of ``--steps`` timed steps after ``--warmup`` steps.

Processes. Every measurement runs in a child process with a cleaned environment: with every
variable of :data:`FORCED_AVX2` unset (the "unset" table: each library picks its code for the
CPU, AVX-512 where there is one) or set (the "forced" table: AVX2 code on every side, OpenBLAS,
numba and torch alike, as on a CPU without AVX-512), and ``OPENBLAS_NUM_THREADS`` /
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to the thread count. Each timing child also
measures the float32 GEMM peak (NumPy ``sgemm``, square ``n = 2048``, best of 5, before and after
the rows; the better of the two counts) and reports the BLAS that threadpoolctl sees, numba's
vector width and torch's CPU capability. Peak memory is measured in one more child per side and
row (unset environment; rnnlab once per thread count with the plan chosen there, since a split
step holds a set of gradients per shard; torch at 1 thread): the peak resident set (``VmHWM``
after resetting it through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is not available)
minus the resident set before the model is built, with the libraries (torch, numba) already
imported, so it counts parameters, optimizer state, activations and what the allocator keeps.

On a shared machine run it in parts (``--cells``, ``--configs``, ``--threads``, each with its own
``--json``) and join them into one report with ``--from-json a.json,b.json,...``.

FLOPs are counted from the shapes, as GEMM FLOPs of the dense model (elementwise work is not
counted), the same number for both sides: per layer ``k`` with input size ``I_k`` and ``N = B T``
rows, forward ``2 N G H (I_k + H)``, backward ``2 N G H (2 I_k + 2 H)`` (the first layer's input
gradient is not counted for one-hot input, which needs none), read-out ``6 N H V``. rnnlab
executes fewer: it fuses the embedding lookup into the first layer (``RNN.forward(...,
embedding=)``), whose input-side GEMMs then run over the ``V`` vocabulary rows instead of the
``N`` steps; the "executed" rate counts what it runs.

Usage::

    python -m rnnlab.bench [--quick] [--cells rnn,lstm,gru] [--layers 1,2] [--threads 1,2]
                           [--configs A,B,C,D] [--steps 10] [--warmup 3] [--no-forced]
                           [--no-memory] [--markdown docs/benchmarks.md] [--json out.json]
                           [--from-json a.json,b.json]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

V = 65
CONFIGS = {  # name: (B, T, H, E); E = 0 is one-hot input
    "A": (32, 64, 128, 64),
    "B": (64, 100, 256, 64),
    "C": (64, 100, 512, 64),
    "D": (1, 25, 100, 0),
}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
FLOORS = {"rnn": 2.0, "gru": 1.5, "lstm": 1.2}
PEAK_FLOOR_C = 0.75
MEM_RESOLUTION_MIB = 1.0
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
FORCED_AVX2 = {"OPENBLAS_CORETYPE": "Haswell", "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "-avx512f",
               "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
"""The "forced" environment: AVX2 code on every side, as on a CPU without AVX-512: OpenBLAS's
Haswell kernels, numba compiling for Haswell (the CPU name alone keeps the host's features, so
AVX-512 is taken out of them explicitly), PyTorch's ATen kernels and oneDNN limited to AVX2."""
ENV_VARS = BLAS_VARS + tuple(k for k in FORCED_AVX2 if k not in BLAS_VARS)
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites this file -->"


# ---------------------------------------------------------------------------------------------
# FLOP counts
# ---------------------------------------------------------------------------------------------
def model_flops(cell: str, layers: int, B: int, T: int, H: int, E: int) -> float:
    """GEMM FLOPs of one dense training step (see the module docstring)."""
    N, GH = B * T, GATES[cell] * H
    total = 6.0 * N * H * V  # read-out forward + dW + dh
    for k in range(layers):
        I = (E if E else V) if k == 0 else H
        total += 2.0 * N * GH * (I + H)  # forward: input projection + recurrent
        total += 2.0 * N * GH * (I + 2 * H)  # backward: dW_xh, dW_hh, dh
        if not (k == 0 and E == 0):
            total += 2.0 * N * GH * I  # dx (the embedding needs it; one-hot input does not)
    return total


def executed_flops(cell: str, layers: int, B: int, T: int, H: int, E: int) -> float:
    """The GEMM FLOPs rnnlab runs: the first layer's input side over V table rows (one-hot: none)."""
    N, GH = B * T, GATES[cell] * H
    I = E if E else V
    dense_in = 2.0 * N * GH * I * (3 if E else 2)
    table = 2.0 * V * GH * E * 3 if E else 0.0  # E W^T, Q^T E, Q W
    return model_flops(cell, layers, B, T, H, E) - dense_in + table


# ---------------------------------------------------------------------------------------------
# the two training steps
# ---------------------------------------------------------------------------------------------
def make_rnnlab_step(cell: str, layers: int, B: int, T: int, H: int, E: int, seed: int = 0, plan=None,
                     lr: float = 1e-3, clip: float | None = None):
    """The step ``rnnlab train`` runs: forward, loss and backward through the
    :class:`~rnnlab.lm.shards.BatchShards` of ``plan`` (a :class:`rnnlab.lm.plan.Plan`; None:
    ``blas`` on one thread), global-norm clipping when ``clip`` is given, then Adam. The caller
    holds the BLAS at ``plan.blas_threads`` (as the trainer does for a whole run). The returned
    function has the plan as ``.plan`` and the model as ``.model``."""
    import numpy as np

    from .lm.plan import Plan
    from .models.recurrent_lm import RecurrentLM
    from .optim import Adam, clip_grad_norm

    plan = plan or Plan("blas", 1)
    model = RecurrentLM(V, cell, H, layers, E, rng=np.random.default_rng(seed))
    opt = Adam(model.params, model.grads, lr=lr)
    rng = np.random.default_rng(seed + 1)
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    shards = plan.batch_shards(model)

    def step():
        loss, _ = shards.step(x, y)
        if clip is not None:
            clip_grad_norm(model.grads, clip)
        opt.step()
        return loss

    step.plan, step.model = plan, model
    return step


def make_torch_step(cell: str, layers: int, B: int, T: int, H: int, E: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rnn_cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    emb = torch.nn.Embedding(V, E) if E else None
    rnn = rnn_cls(E if E else V, H, layers)
    out = torch.nn.Linear(H, V)
    params = list(rnn.parameters()) + list(out.parameters()) + (list(emb.parameters()) if emb else [])
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, V, (T, B), generator=g)
    y = torch.randint(0, V, (T, B), generator=g)

    def step():
        inp = emb(x) if emb is not None else F.one_hot(x, V).to(torch.float32)
        h, _ = rnn(inp)
        loss = F.cross_entropy(out(h).reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss

    return step


TRAINER = dict(cell="lstm", layers=2, H=256, E=64, B=32, T=100, clip=1.0)
"""``rnnlab train``'s defaults (TrainConfig), with V = 65: the "trainer form" measurement."""


def make_trainer_step(seed: int = 0, plan=None):
    """What ``rnnlab train`` runs per step with its defaults by ``plan`` (the schedule's
    bookkeeping is negligible): :func:`make_rnnlab_step` with :data:`TRAINER`'s shapes, its
    learning rate and gradient clipping."""
    c = TRAINER
    return make_rnnlab_step(c["cell"], c["layers"], c["B"], c["T"], c["H"], c["E"], seed=seed, plan=plan,
                            lr=3e-3, clip=c["clip"])


def choose_plan(cell: str, layers: int, B: int, T: int, H: int, E: int, threads: int):
    """``(plan, {plan: seconds})``: what ``rnnlab train --threads threads`` picks for this model
    and the planner's own timings (:func:`rnnlab.lm.plan.fastest`, on a fresh model)."""
    import numpy as np

    from .lm.plan import fastest
    from .models.recurrent_lm import RecurrentLM

    model = RecurrentLM(V, cell, H, layers, E, rng=np.random.default_rng(0))
    return fastest(model, B, T, threads)


# ---------------------------------------------------------------------------------------------
# child: timing
# ---------------------------------------------------------------------------------------------
def _gemm_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best float32 GEMM rate (GFLOP/s) of NumPy's BLAS at ``threads`` threads."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    best = float("inf")
    with threadpool_limits(threads):
        np.matmul(a, b, out=c)
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def _blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: d.get(k) for k in keep} | {"library": os.path.basename(d.get("filepath", ""))}
            for d in threadpool_info()]


BLOCK = 2
"""Timed steps per block; the sides alternate block by block."""

def _block(step, k: int, threads: int, blas_threads: int | None = None) -> list[float]:
    """One block: (a pause of :data:`rnnlab.lm.plan.SETTLE_S` at > 1 thread, so that the other
    side's idle worker threads, which spin before they sleep, OpenBLAS about 0.1 s and libgomp
    less, do not compete for the cores,) untimed steps that re-warm caches and wake the worker
    threads, then ``k`` timed steps back to back, as a trainer runs them
    (:func:`rnnlab.lm.plan.timed_steps`, the planner's rule). ``blas_threads`` limits the BLAS
    for the block (the trainer holds one BLAS thread for a whole run when it splits the batch over
    threads)."""
    from .lm.plan import SETTLE_S, timed_steps
    from .lm.shards import blas_limit

    if threads > 1:
        time.sleep(SETTLE_S)
    with blas_limit(blas_threads) if blas_threads else contextlib.nullcontext():
        return timed_steps(step, k)


def child_time(spec: dict) -> dict:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from .nn import cells, packed

    threads = spec["threads"]
    torch.set_num_threads(threads)
    numba_on = cells.numba_enabled()
    loops_on = cells.sequence_loops(np, np.dtype(np.float32)) is not None
    out = {"threads": threads, "env": {k: os.environ.get(k) for k in ENV_VARS}, "numba": numba_on,
           "loops": loops_on, "numba_vector_bytes": packed.VECTOR_BYTES if numba_on else None,
           "blas": _blas_info(), "torch_threads": torch.get_num_threads(),
           "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
           "load_start": os.getloadavg(), "rows": []}
    out["gemm_peak"] = _gemm_peak(threads)
    with threadpool_limits(threads):
        for row in spec["rows"]:
            cell, layers, cfg = row["cell"], row["layers"], row["config"]
            B, T, H, E = CONFIGS[cfg]
            # the plan `rnnlab train --threads N` picks (its own short measurement), then every
            # candidate timed against torch in alternating blocks
            chosen, planner = choose_plan(cell, layers, B, T, H, E, threads)
            plans = list(planner) or [chosen]
            kinds = [p.label for p in plans]
            sides = {"torch": make_torch_step(cell, layers, B, T, H, E)}
            for p in plans:
                sides[p.label] = make_rnnlab_step(cell, layers, B, T, H, E, plan=p)
            for _ in range(spec["warmup"]):
                for name, step in sides.items():
                    _block(step, 0, 1, step.plan.blas_threads if name != "torch" else None)
            times = {name: [] for name in sides}
            while len(times["torch"]) < spec["steps"]:
                k = min(BLOCK, spec["steps"] - len(times["torch"]))
                for name, step in sides.items():
                    times[name] += _block(step, k, threads, step.plan.blas_threads if name != "torch" else None)
            med = {name: statistics.median(ts) for name, ts in times.items()}
            res = dict(row, plan=chosen.label, planner={p.label: t for p, t in planner.items()}, torch_s=med["torch"],
                       rnnlab_s=med[chosen.label], plans={k: med[k] for k in kinds}, all=times)
            del sides
            out["rows"].append(res)
            print(f"  {cell:4s} L{layers} {cfg} {threads}t: torch {med['torch'] * 1e3:8.2f} ms | "
                  + "  ".join(f"{k}{'*' if k == chosen.label else ''} {med[k] * 1e3:.2f}" for k in kinds)
                  + f" ms | x{med['torch'] / res['rnnlab_s']:.2f}", file=sys.stderr, flush=True)
        if spec.get("trainer"):
            c = TRAINER
            chosen, _ = choose_plan(c["cell"], c["layers"], c["B"], c["T"], c["H"], c["E"], threads)
            step = make_trainer_step(plan=chosen)
            _block(step, spec["warmup"], 1, chosen.blas_threads)
            times = _block(step, spec["steps"], threads, chosen.blas_threads)
            out["trainer"] = {"s": statistics.median(times), "chars": c["B"] * c["T"], "plan": chosen.label}
            print(f"  trainer form {threads}t ({chosen.label}): {out['trainer']['s'] * 1e3:.2f} ms", file=sys.stderr,
                  flush=True)
    # The peak again after the rows: on a shared machine the better of the two is the closer
    # estimate of what the hardware gives.
    out["gemm_peak_before"] = out["gemm_peak"]
    out["gemm_peak_after"] = _gemm_peak(threads)
    out["gemm_peak"] = max(out["gemm_peak_before"], out["gemm_peak_after"])
    out["load_end"] = os.getloadavg()
    return out


# ---------------------------------------------------------------------------------------------
# child: memory
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def child_memory(spec: dict) -> dict:
    import resource

    from threadpoolctl import threadpool_limits

    side, cell, layers, cfg = spec["side"], spec["cell"], spec["layers"], spec["config"]
    B, T, H, E = CONFIGS[cfg]
    if side == "torch":
        import torch

        torch.set_num_threads(1)
        make = make_torch_step
    else:
        from .lm.plan import Plan
        from .nn import cells

        cells.numba_enabled()  # import numba and the kernels before the baseline, like torch
        kind, _, n = spec.get("plan", "blas@1").partition("@")
        plan = Plan(kind, int(n or 1))

        def make(*a):
            return make_rnnlab_step(*a, plan=plan)
    import numpy  # noqa: F401

    # One-time initialisation (numba's cache loading, oneDNN's kernels, thread pools) is not the
    # model's memory: run a tiny model of the same kind first, then take the baseline.
    tiny = make(cell, layers, 2, 3, 8, 4 if E else 0)
    tiny()
    tiny()
    del tiny
    gc.collect()
    before = _status_kib("VmRSS")
    method = "VmHWM"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS watermark to the current RSS
    except OSError:
        method = "ru_maxrss"
    with threadpool_limits(1):
        step = make(cell, layers, B, T, H, E)
        for _ in range(spec["steps"]):
            step()
    if method == "VmHWM":
        peak = _status_kib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"side": side, "peak_delta_mib": (peak - before) / 1024.0, "method": method}


# ---------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------
def _child_env(forced: bool, threads: int) -> dict:
    env = dict(os.environ)
    for k in ENV_VARS:
        env.pop(k, None)
    if forced:
        env.update(FORCED_AVX2)
    for k in THREAD_VARS:
        env[k] = str(threads)
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_child(kind: str, spec: dict, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "rnnlab.bench", f"--child-{kind}", json.dumps(spec)],
                          env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child ({kind}) failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
            f.seek(0)
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        flags = []
    simd = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    import numpy

    info = {"cpu": model, "cores": os.cpu_count(), "simd": simd, "python": platform.python_version(),
            "numpy": numpy.__version__, "platform": platform.platform(), "import_s": _import_time()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    return info


def _import_time(reps: int = 3) -> float:
    """Seconds ``import rnnlab`` takes in a fresh interpreter (best of ``reps``)."""
    code = "import time; t = time.perf_counter(); import rnnlab; print(time.perf_counter() - t)"
    env = _child_env(False, 1)
    return min(float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout) for _ in range(reps))


def _fmt_rate(x: float) -> str:
    return f"{x / 1e3:,.0f}k" if x >= 1e4 else f"{x:,.0f}"


ENV_LABELS = {"unset": "Each library's own choice (AVX-512 where the CPU has it): OPENBLAS_CORETYPE and "
                      "OPENBLAS_L2_SIZE unset, numba and torch as installed",
              "forced": "AVX2 forced: " + ", ".join(f"{k}={v}" for k, v in FORCED_AVX2.items())}
PLAN_SLACK = 1.05
"""The chosen plan may be at most this much slower than the fastest candidate in a row."""


def build_report(res: dict) -> str:
    from .lm.plan import SETTLE_S, WARM_S, WARM_STEPS

    m, args = res["machine"], res["args"]
    lines = ["# Training-step benchmark: rnnlab vs PyTorch (CPU, float32)", ""]
    lines += [f"Command: `{res['command']}`", ""]
    lines += [f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX2'}); Python {m['python']}, "
              f"NumPy {m['numpy']}, PyTorch {m['torch']}, numba {m['numba']}. Date: {res['date']}."
              + (f" `import rnnlab`: {m['import_s']:.2f} s (best of 3, fresh interpreter)." if "import_s" in m else ""),
              ""]
    lines += ["Step: ids (T, B) -> embedding (E; one-hot for D) -> recurrent (L layers) -> linear (V = 65) -> "
              "softmax cross-entropy -> backward -> Adam. rnnlab: `RecurrentLM` + `softmax_cross_entropy` + "
              "`Adam` through the `BatchShards` of a parallel plan (`rnnlab.lm.plan`), exactly what `rnnlab train` "
              "runs per step (without its gradient clipping). In each row the plan `rnnlab train` would choose is "
              "chosen first, by the trainer's own short measurement (`plan.fastest`); then torch and every "
              f"candidate plan are timed: median of {args['steps']} timed steps after {args['warmup']} warm-up "
              f"steps, all in one process at the same thread count, alternating in blocks of untimed steps for "
              f"{WARM_S * 1e3:.0f} ms or {WARM_STEPS} steps, whichever comes first (at least one) + {BLOCK} "
              f"timed steps (a {SETTLE_S:.2f} s pause before each block at 2 threads, so the other side's spinning idle "
              "threads are asleep). chars/s = B*T / step time.", ""]
    envs = [key for key in ("unset", "forced") if res["runs"].get(key)]
    for key in envs:
        lines += [f"## {ENV_LABELS[key]}", ""]
        for th, run in sorted(res["runs"][key].items()):
            blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['library']}), kernel {b['architecture']}"
                             for b in run["blas"] if b["user_api"] == "blas")
            vec = run.get("numba_vector_bytes")
            loads = run.get("loads", [(run["load_start"][0], run["load_end"][0])])
            peaks = run.get("gemm_peaks", [run["gemm_peak"]])
            lines.append(f"- {th} thread(s): BLAS {blas}; numba {'on' if run['numba'] else 'OFF'}"
                         + (f" ({vec * 8}-bit vectors)" if vec else "")
                         + f"; torch CPU capability {run.get('torch_cpu_capability', '?')}; float32 GEMM peak "
                         f"{run['gemm_peak']:.1f} GFLOP/s (best of the runs' before/after peaks: "
                         + ", ".join(f"{x:.0f}" for x in peaks) + "); load average "
                         + ", ".join(f"{x:.1f} -> {y:.1f}" for x, y in loads) + ".")
        lines.append("")
        lines += _main_table(res, key)
        lines += _plan_table(res, key)
        lines += _misses(res, key)
    tr = {th: run["trainer"] for th, run in sorted(res["runs"].get("unset", {}).items()) if "trainer" in run}
    if tr:
        c = TRAINER
        lines += [f"Trainer form (what `rnnlab train` runs per step with its defaults: {c['cell']}, {c['layers']} layers, "
                  f"hidden {c['H']}, embed {c['E']}, batch {c['B']}, seq_len {c['T']}, V = {V}, gradient clipping "
                  f"{c['clip']}, Adam; the plan it chooses): "
                  + ", ".join(f"{t['chars'] / t['s']:,.0f} chars/s at {th} thread(s) ({t.get('plan', '?')})"
                              for th, t in tr.items()) + ".", ""]
    return "\n".join(lines)


def _main_table(res: dict, key: str) -> list[str]:
    lines = ["Columns: plan = the plan `rnnlab train` chooses on thr threads (`rnnlab.lm.plan`); rnnlab chars/s = "
             "that plan's; ratio = rnnlab chars/s / torch chars/s; GF/s = GEMM FLOPs of the dense model counted from "
             "the shapes / step time (same count for both sides); exec = the FLOPs rnnlab actually runs (the "
             "embedding is fused into the first layer) / step time; %peak = rnnlab GF/s (exec) / GEMM peak at thr "
             "threads; memory = peak RSS growth of a separate process from before the model is built to the end of "
             "its steps (rnnlab's step by the chosen plan, torch's at 1 thread); best = the fastest candidate "
             "(chars/s); chosen/best = the chosen plan's step time over the best one's. Floors: rnn >= 2x, "
             f"gru >= 1.5x, lstm >= 1.2x; config C >= 75% of peak; chosen/best <= {PLAN_SLACK:.2f}; memory <= torch "
             "(within 1 MiB, the resolution of an RSS difference).", ""]
    head = ("| cell | L | cfg | thr | plan | rnnlab chars/s | torch chars/s | ratio | rnnlab GF/s (exec) | %peak "
            "| torch GF/s | rnnlab MiB | torch MiB | best (chars/s) | chosen/best | floors |")
    lines += [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    mem = res.get("memory", {}) if key == "unset" else {}
    for r in (r for r in res["table"] if r["env"] == key):
        mrow = mem.get(f"{r['cell']}-{r['layers']}-{r['config']}", {})
        mo, mt = mrow.get(f"rnnlab_{r['threads']}", mrow.get("rnnlab")) if r["threads"] > 1 else mrow.get("rnnlab"), \
            mrow.get("torch")
        ok = ["ratio " + ("ok" if r["ratio"] >= FLOORS[r["cell"]] else "MISS")]
        if r["config"] == "C":
            ok.append("peak " + ("ok" if r["peak_frac"] >= PEAK_FLOOR_C else "MISS"))
        ok.append("plan " + ("ok" if r["chosen_over_best"] <= PLAN_SLACK else "MISS"))
        if mo is not None and mt is not None:  # RSS is counted in pages: below 1 MiB is noise
            ok.append("mem " + ("ok" if mo <= mt + MEM_RESOLUTION_MIB else "MISS"))
        lines.append(
            f"| {r['cell']} | {r['layers']} | {r['config']} | {r['threads']} | {r['plan']} | {_fmt_rate(r['rnnlab_cps'])} | "
            f"{_fmt_rate(r['torch_cps'])} | **{r['ratio']:.2f}x** | {r['rnnlab_gflops']:.1f} ({r['rnnlab_exec_gflops']:.1f}) | "
            f"{100 * r['peak_frac']:.0f}% | {r['torch_gflops']:.1f} | "
            f"{'-' if mo is None else f'{mo:.1f}'} | {'-' if mt is None else f'{mt:.1f}'} | "
            f"{r['best']} ({_fmt_rate(r['best_cps'])}) | {r['chosen_over_best']:.2f} | {', '.join(ok)} |")
    return lines + [""]


def _plan_table(res: dict, key: str) -> list[str]:
    rows = [r for r in res["table"] if r["env"] == key and len(r["plans"]) > 1]
    if not rows:
        return []
    from .lm.plan import KINDS

    def column(label, thr):
        kind, _, n = label.partition("@")
        return kind if int(n) == thr else f"{kind} on {n}"

    cols = []
    for k in KINDS:
        for r in rows:
            for label in r["plans"]:
                c = column(label, r["threads"])
                if c.split(" ")[0] == k and c not in cols:
                    cols.append(c)
    lines = ["Every candidate plan, chars/s (kind on the row's threads unless said; * the chosen one; the planner's "
             "own timings of forward + backward are in the JSON):", "",
             "| cell | L | cfg | thr | " + " | ".join(cols) + " |", "|" + "|".join(["---"] * (4 + len(cols))) + "|"]
    for r in rows:
        B, T = CONFIGS[r["config"]][:2]
        got = {column(label, r["threads"]): (label, s) for label, s in r["plans"].items()}
        cells = [f"{_fmt_rate(B * T / got[c][1])}{'*' if got[c][0] == r['plan'] else ''}" if c in got else "-"
                 for c in cols]
        lines.append(f"| {r['cell']} | {r['layers']} | {r['config']} | {r['threads']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _misses(res: dict, key: str) -> list[str]:
    misses = [r for r in res["table"] if r["env"] == key and r["ratio"] < FLOORS[r["cell"]]]
    if not misses:
        return []
    lines = ["Rows below their ratio floor, and what meeting it would take: the step time the floor allows, "
             "and the GEMM rate (FLOPs rnnlab executes / that time) as a share of the measured peak:", ""]
    for r in misses:
        B, T, H, E = CONFIGS[r["config"]]
        need_s = r["torch_s"] / FLOORS[r["cell"]]
        ex = executed_flops(r["cell"], r["layers"], B, T, H, E)
        lines.append(f"- {r['cell']} L{r['layers']} {r['config']} {r['threads']}t: {FLOORS[r['cell']]:.1f}x needs "
                     f"<= {need_s * 1e3:.1f} ms (now {r['rnnlab_s'] * 1e3:.1f} ms), i.e. {ex / need_s / 1e9:.0f} GFLOP/s "
                     f"= {100 * ex / need_s / 1e9 / r['gemm_peak']:.0f}% of peak.")
    return lines + [""]


def _table(res: dict) -> list[dict]:
    rows = []
    for key in ("unset", "forced"):
        for th, run in sorted(res["runs"].get(key, {}).items()):
            for r in run["rows"]:
                B, T, H, E = CONFIGS[r["config"]]
                fl = model_flops(r["cell"], r["layers"], B, T, H, E)
                ex = executed_flops(r["cell"], r["layers"], B, T, H, E)
                peak = r.get("gemm_peak", run["gemm_peak"])
                best = min(r["plans"], key=r["plans"].get)
                row = {"env": key, "cell": r["cell"], "layers": r["layers"], "config": r["config"], "threads": int(th),
                       "plan": r["plan"], "plans": r["plans"], "planner": r.get("planner", {}),
                       "rnnlab_s": r["rnnlab_s"], "torch_s": r["torch_s"],
                       "rnnlab_cps": B * T / r["rnnlab_s"], "torch_cps": B * T / r["torch_s"],
                       "ratio": r["torch_s"] / r["rnnlab_s"], "model_gflop": fl / 1e9,
                       "rnnlab_gflops": fl / r["rnnlab_s"] / 1e9, "rnnlab_exec_gflops": ex / r["rnnlab_s"] / 1e9,
                       "torch_gflops": fl / r["torch_s"] / 1e9, "gemm_peak": peak,
                       "best": best, "best_cps": B * T / r["plans"][best],
                       "chosen_over_best": r["rnnlab_s"] / r["plans"][best]}
                row["peak_frac"] = row["rnnlab_exec_gflops"] / peak
                rows.append(row)
    order = {"rnn": 0, "gru": 1, "lstm": 2}
    rows.sort(key=lambda r: (r["env"] != "unset", order[r["cell"]], r["layers"], r["config"], r["threads"]))
    return rows


def main(argv=None, prog: str = "rnnlab bench") -> int:
    """Run the benchmark; ``argv`` are the options (``sys.argv[1:]`` when None). Returns the exit
    status."""
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: configs A and D, 1 layer, 1 thread, 3 steps")
    p.add_argument("--cells", default="rnn,lstm,gru")
    p.add_argument("--layers", default="1,2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--configs", default="A,B,C,D")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-forced", action="store_true", help="skip the run with AVX2 forced on every side")
    p.add_argument("--forced-only", action="store_true", help="only the run with AVX2 forced on every side")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--markdown", help="write the report to this file (e.g. docs/benchmarks.md)")
    p.add_argument("--json", help="write the raw results to this file (with --from-json: the merged ones, "
                                  "unless it names one of the inputs)")
    p.add_argument("--from-json", help="rebuild the report from --json files of earlier runs, comma-separated "
                                       "(no measuring); the rows of several runs (e.g. one per config) are merged")
    p.add_argument("--child-time", help=argparse.SUPPRESS)
    p.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child_time:
        print(json.dumps(child_time(json.loads(args.child_time))))
        return 0
    if args.child_memory:
        print(json.dumps(child_memory(json.loads(args.child_memory))))
        return 0

    if args.from_json:
        res = merge_results([_read_json(f) for f in args.from_json.split(",") if f])
        res["table"] = _table(res)
        _write_outputs(res, args)
        return 0
    if args.quick:
        args.configs, args.layers, args.threads = "A,D", "1", "1"
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    cells = [c for c in args.cells.split(",") if c]
    layers = [int(x) for x in args.layers.split(",") if x]
    threads = [int(x) for x in args.threads.split(",") if x]
    configs = [c for c in args.configs.split(",") if c]
    for c in cells:
        if c not in GATES:
            p.error(f"unknown cell {c!r}")
    for c in configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}")
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        print(f"rnnlab bench needs torch: pip install 'rnnlab[bench]' ({exc})", file=sys.stderr)
        return 2

    rows = [{"cell": c, "layers": L, "config": k} for c in cells for L in layers for k in configs]
    res = {"command": " ".join([prog] + argv),
           "date": time.strftime("%Y-%m-%d %H:%M"), "machine": _machine(),
           "args": {"steps": args.steps, "warmup": args.warmup}, "runs": {}, "memory": {},
           "parent_env": {k: os.environ.get(k) for k in ENV_VARS}}
    print(f"rnnlab bench: parent environment {res['parent_env']}; children run with them unset"
          f"{'' if args.no_forced else ' and with AVX2 forced (' + ' '.join(f'{k}={v}' for k, v in FORCED_AVX2.items()) + ')'}",
          file=sys.stderr)
    envs = [k for k in ("unset", "forced") if not (k == "forced" and args.no_forced or k == "unset" and args.forced_only)]
    for key in envs:
        for th in threads:
            print(f"[{key}, {th} thread(s)]", file=sys.stderr, flush=True)
            spec = {"threads": th, "rows": rows, "steps": args.steps, "warmup": args.warmup,
                    "trainer": key == "unset" and not args.quick}
            res["runs"].setdefault(key, {})[str(th)] = _run_child("time", spec, _child_env(key == "forced", th))
    if not args.no_memory and "unset" in envs:
        print("[peak memory, separate processes]", file=sys.stderr, flush=True)
        for r in rows:
            mk = f"{r['cell']}-{r['layers']}-{r['config']}"
            # rnnlab's step differs with the plan (a split holds a set of gradients per shard):
            # measured with the plan chosen at each thread count; torch's step is the same
            # computation at any thread count
            sides = [(f"rnnlab_{th}" if th > 1 else "rnnlab", th) for th in threads] + [("torch", 1)]
            for key, th in sides:
                plan = next((row["plan"] for row in res["runs"]["unset"][str(th)]["rows"]
                             if (row["cell"], row["layers"], row["config"]) == (r["cell"], r["layers"], r["config"])),
                            "blas") if key != "torch" else None
                spec = dict(r, side=key.split("_")[0], threads=th, plan=plan, steps=max(2, min(args.warmup + 1, 3)))
                out = _run_child("memory", spec, _child_env(False, 1))
                res["memory"].setdefault(mk, {})[key] = out["peak_delta_mib"]
                res["memory"][mk]["method"] = out["method"]
            print(f"  {mk}: " + ", ".join(f"{key} {res['memory'][mk][key]:.0f} MiB" for key, _ in sides),
                  file=sys.stderr, flush=True)
    res["table"] = _table(res)
    _write_outputs(res, args)
    return 0


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def merge_results(parts: list[dict]) -> dict:
    """One result from the results of several runs (each row keeps its own run's GEMM peak and
    load average); the machine and arguments of the first."""
    if len(parts) == 1:
        return parts[0]
    res = {k: parts[0][k] for k in ("machine", "args", "date", "parent_env") if k in parts[0]}
    res["command"] = " ; ".join(p["command"] for p in parts)
    res["runs"], res["memory"] = {}, {}
    for part in parts:
        res["memory"].update(part.get("memory", {}))
        for key, by_threads in part["runs"].items():
            for th, run in by_threads.items():
                rows = [dict(r, gemm_peak=run["gemm_peak"]) for r in run["rows"]]
                have = res["runs"].setdefault(key, {}).get(th)
                if have is None:
                    res["runs"][key][th] = dict(run, rows=rows, gemm_peaks=[run["gemm_peak"]],
                                                loads=[(run["load_start"][0], run["load_end"][0])])
                else:
                    have["rows"] += rows
                    have["gemm_peaks"].append(run["gemm_peak"])
                    have["loads"].append((run["load_start"][0], run["load_end"][0]))
                    have["gemm_peak"] = max(have["gemm_peaks"])
                    if "trainer" in run:
                        have["trainer"] = run["trainer"]
    return res


def _write_outputs(res: dict, args) -> None:
    report = build_report(res)
    print(report)
    if args.markdown:
        notes = ""
        if os.path.exists(args.markdown):  # keep the hand-written notes below the marker
            with open(args.markdown) as f:
                old = f.read()
            if NOTES_MARKER in old:
                notes = old[old.index(NOTES_MARKER):]
        with open(args.markdown, "w") as f:
            f.write(report + ("\n" + notes if notes else ""))
    inputs = [os.path.abspath(f) for f in (args.from_json or "").split(",") if f]
    if args.json and os.path.abspath(args.json) not in inputs:  # the merged results of --from-json too
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
