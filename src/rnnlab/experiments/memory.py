"""Experiment ``memory``: long time lags, at the scale the literature reports them.

Claim
    To use an input seen ``T`` steps ago a recurrent network must carry it in its state through
    ``T`` applications of the same transition, and learn to do so from a gradient that crosses
    those ``T`` steps (experiment ``gradients``). The plain tanh RNN's gradient vanishes over
    long lags; gated cells (LSTM, GRU) keep an additive path through time and learn lags of
    hundreds of steps (Hochreiter & Schmidhuber 1997). A feed-forward network has no state: it
    uses only what is in its input window.

Tasks (:mod:`rnnlab.data.synthetic`; each with its memoryless baseline, the best score of a
predictor that keeps nothing of what it has seen)
    - ``adding`` — the standard modern adding problem (Le, Jaitly & Hinton 2015; Arjovsky,
      Shah & Bengio 2016): values U(0, 1), one marker in each half, target the sum. Baseline
      MSE 1/6 (predict 1). Solved: test MSE < 0.01.
    - ``adding-hs`` — the adding problem as Hochreiter & Schmidhuber (1997, exp. 4) set it:
      lengths T..1.1T, values U(-1, 1), the first marker among the first ten steps, target
      0.5 + (X1 + X2)/4. Baseline MSE 0.0392 at T = 100. Solved (their criterion): at least 99% of the
      test sequences within 0.04 of the target (they stopped training at 100% of the last 2,000).
    - ``copy`` — the copy task of Arjovsky et al. (2016): 10 symbols out of 8, T blanks, recall
      all 10 after the delimiter; every step scored. Baseline cross-entropy 10 log 8 / (T + 20)
      per step, recall 1/8. Solved: at least 99% of the recalled symbols right.
    - ``temporal`` — H&S's temporal order (exp. 6a) scaled by T: lengths T..1.1T, classify the
      order of two symbols X/Y at 0.1-0.2 T and 0.5-0.6 T among random distractors. Baseline
      cross-entropy log 4, accuracy 1/4. Solved: test accuracy at least 99%.

Models
    ``rnn`` (tanh, PyTorch's default init), ``irnn`` (ReLU, identity recurrence, zero bias; Le et
    al. 2015), ``lstm`` (forget-gate bias 1), ``lstm-chrono`` (chrono initialisation with
    T_max = the sequence length; Tallec & Ollivier 2018), ``gru``, ``mlp`` (a window of the last
    10 steps), ``mlp-full`` (a window of the whole sequence: its first layer grows with T) and
    ``guess`` (random weight guessing: the best of many random tanh RNNs on one batch; H&S 1997
    showed it solves several older "long-lag" benchmarks, but not these).

Protocol
    One trial per (task, model, lag T, seed): Adam with global-norm clipping 1, batches of fresh
    sequences, at most ``budget(T)`` sequences; every ``check_every`` steps a validation set
    is scored. ``sequences to success`` counts the training sequences seen until the first check
    that met the criterion; the run goes on until the validation score is well past it (half the
    allowed error), because a model stopped exactly at the threshold sits on it and a test set
    would call it a coin flip. The test set (``test_size`` >= 1,000 sequences, the same for every
    model of a seed) then decides success. Two rules keep runs that cannot succeed from burning the whole budget: a window
    MLP whose window misses every relevant input trains for ``window_budget`` sequences only
    (it is still measured, at the baseline), and any run whose best validation score has not
    moved by ``plateau_gain`` of the way from the baseline to the criterion during the last
    ``plateau_frac`` of the budget (checked once it has used that much) ends there. Trials run in
    parallel (:mod:`rnnlab.trials`) and checkpoint every ``save_every`` seconds, so an
    interrupted run resumes each trial where it stopped and ends as if never interrupted.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..data import synthetic as syn
from ..errors import RnnlabError
from . import seqmodels
from .common import Result, Timer, check_seeds, out_path, rng_for, run_experiment_trials
from .report import Report, Table, band, mean_std, new_figure, pm
from .train import TrainConfig, evaluate, loss_and_grad, train

NAME = "memory"
MODELS = ("rnn", "irnn", "lstm", "lstm-chrono", "gru", "mlp", "mlp-full", "guess")
TRIAL_FN = "rnnlab.experiments.memory:run_trial"


# ------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class Task:
    """A long-lag task: how to sample it, score it and judge success."""

    name: str
    title: str
    sample: Callable  # (rng, B, T) -> SeqBatch
    io: Callable  # T -> (input size, output size, output steps, longest sequence)
    metric_name: str
    higher_is_better: bool
    baseline_loss: Callable  # T -> loss of the memoryless predictor
    baseline_metric: Callable  # T -> its metric
    criterion: float  # solved when the metric is below (MSE) / at least (accuracy) this
    nearest: Callable  # T -> steps from the output back to the most recent relevant input
    variant: str  # the paper's exact setting, for the tables

    def metric(self, ev: dict, batch) -> float:
        if self.name == "adding":
            return float(ev["sq_err"].mean())
        if self.name == "adding-hs":
            return float(np.mean(np.sqrt(ev["sq_err"]) < 0.04))  # fraction within 0.04
        if self.name == "copy":
            return float(ev["acc"][-10:].mean())  # the recalled symbols
        return float(ev["acc"].mean())

    def solved(self, metric: float, margin: float = 1.0) -> bool:
        """``metric`` meets the criterion; ``margin = 0.5``: with half the allowed error."""
        if self.higher_is_better:
            return metric >= 1.0 - margin * (1.0 - self.criterion)
        return metric < margin * self.criterion


N_COPY, K_COPY = 10, 8
TASKS = {
    "adding": Task(
        "adding", "adding problem (standard: U(0,1) values, one marker per half)",
        lambda rng, B, T: syn.adding(rng, B, T), lambda T: (2, 1, 1, T), "test MSE", False,
        lambda T: syn.ADDING_BASELINE_MSE, lambda T: syn.ADDING_BASELINE_MSE, 0.01, lambda T: T - T // 2,
        "Le, Jaitly & Hinton 2015; Arjovsky, Shah & Bengio 2016"),
    "adding-hs": Task(
        "adding-hs", "adding problem (Hochreiter & Schmidhuber 1997, experiment 4)",
        lambda rng, B, T: syn.adding_hs(rng, B, T), lambda T: (2, 1, 1, T + T // 10), "fraction within 0.04", True,
        syn.adding_hs_baseline, syn.adding_hs_baseline_within, 0.99, lambda T: T - (T // 2 - 1),
        "Hochreiter & Schmidhuber 1997, experiment 4 (lengths T..1.1T, first marker in the first 10 steps)"),
    "copy": Task(
        "copy", "copy task (Arjovsky, Shah & Bengio 2016)",
        lambda rng, B, T: syn.copy_memory(rng, B, T, N_COPY, K_COPY), lambda T: (K_COPY + 2, K_COPY + 1,
                                                                               T + 2 * N_COPY, T + 2 * N_COPY),
        "recall accuracy", True, lambda T: syn.copy_baseline(T, N_COPY, K_COPY), lambda T: 1.0 / K_COPY, 0.99,
        lambda T: T + N_COPY, "Arjovsky, Shah & Bengio 2016 (10 symbols of 8, delay T, every step scored)"),
    "temporal": Task(
        "temporal", "temporal order (Hochreiter & Schmidhuber 1997, experiment 6a, scaled by T)",
        lambda rng, B, T: syn.temporal_order(rng, B, T), lambda T: (8, 4, 1, T + T // 10), "test accuracy", True,
        lambda T: math.log(4), lambda T: 0.25, 0.99, lambda T: T - 6 * T // 10,
        "Hochreiter & Schmidhuber 1997, experiment 6a (T = 100 is the paper's setting)"),
}

LITERATURE = {
    # (task, model) -> {T: what the paper reports}; named, with the exact variant, in the report.
    ("adding-hs", "lstm"): {100: "74,000 sequences", 500: "209,000 sequences", 1000: "853,000 sequences"},
    ("adding-hs", "lstm-chrono"): {100: "74,000 sequences", 500: "209,000 sequences", 1000: "853,000 sequences"},
}
LITERATURE_NOTES = [
    "Hochreiter & Schmidhuber 1997, Table 7 (adding-hs; LSTM without forget gate, 2 memory-cell blocks of size 2, "
    "online updates): average training sequences until their stopping criterion. Their cell keeps its content "
    "unless written (no forget gate); of ours, lstm-chrono (forget gates starting near 1) is the closest.",
    "Arjovsky, Shah & Bengio 2016 (adding at T = 100 to 750; copy at long delays): the LSTM learns adding up to "
    "T = 400 and fails at T = 750; on copy it stays at the memoryless baseline.",
    "Le, Jaitly & Hinton 2015 (adding, T = 150 to 400): the IRNN comparable to the LSTM, the tanh RNN failing.",
    "Tallec & Ollivier 2018: chrono initialisation lets the LSTM learn copy and adding at lags where the "
    "standard initialisation is much slower or fails.",
]


# ------------------------------------------------------------------------------------ settings
@dataclass
class Config:
    tasks: tuple = ("adding", "adding-hs", "copy", "temporal")
    lags: dict = field(default_factory=lambda: {"adding": (100,), "adding-hs": (100,), "copy": (100,),
                                                "temporal": (100,)})
    models: tuple = MODELS
    hidden: int = 128  # recurrent units (Arjovsky et al. and Le et al. used 128 and 100)
    mlp_hidden: int = 128
    mlp_window: int = 10
    batch: int = 32
    lr: float = 1e-3  # Adam, every trained model ...
    lr_irnn: float = 1e-4  # ... except the IRNN, whose ReLU recurrence diverges at 1e-3
    clip: float = 1.0
    budget: int = 0  # sequences per run; 0 = budget_per_step * T, at least min_budget
    budget_per_step: int = 3000
    min_budget: int = 200_000
    window_budget: int = 50_000  # a window MLP that sees no relevant input
    plateau_frac: float = 0.5
    plateau_gain: float = 0.05
    check_every: int = 100  # steps between validation checks
    val_size: int = 512
    test_size: int = 2000
    guesses: int = 1000
    guess_batch: int = 256
    save_every: float = 60.0  # seconds between checkpoints of a trial

    def budget_for(self, T: int) -> int:
        return self.budget or max(self.min_budget, self.budget_per_step * T)


SELECTION = ("tasks", "lags", "models")  # the fields that choose trials rather than set them
DEFAULT = Config()
QUICK = Config(tasks=("adding", "copy"), lags={"adding": (10, 20), "copy": (10,)},
               hidden=32, mlp_hidden=32, lr=1e-2, lr_irnn=1e-3, budget=12_000, min_budget=0, window_budget=3000,
               check_every=25, val_size=128, test_size=1000, guesses=50, guess_batch=64, save_every=1e9)


# ------------------------------------------------------------------------------------ one trial
def _build(kind: str, task: Task, T: int, cfg: Config, rng):
    I, O, S, length = task.io(T)
    if kind in ("mlp", "mlp-full"):
        W = length if kind == "mlp-full" else cfg.mlp_window
        return seqmodels.build("mlp", I, O, hidden=cfg.mlp_hidden, window=W, out_steps=S, rng=rng)
    if kind == "irnn":
        return seqmodels.build("rnn", I, O, hidden=cfg.hidden, out_steps=S, rng=rng, nonlinearity="relu",
                               recurrent_init="identity")
    if kind == "lstm":
        return seqmodels.build("lstm", I, O, hidden=cfg.hidden, out_steps=S, rng=rng, forget_bias=1.0)
    if kind == "lstm-chrono":
        return seqmodels.build("lstm", I, O, hidden=cfg.hidden, out_steps=S, rng=rng, init="chrono",
                               chrono_tmax=float(max(3, length)))
    if kind in ("rnn", "gru", "guess"):
        return seqmodels.build("rnn" if kind == "guess" else kind, I, O, hidden=cfg.hidden, out_steps=S, rng=rng)
    raise RnnlabError(f"unknown model {kind!r}: choose from {', '.join(MODELS)}")


def _window_blind(kind: str, task: Task, T: int, cfg: Config) -> bool:
    """A fixed-window MLP that can never see a relevant input."""
    return kind == "mlp" and task.nearest(T) >= cfg.mlp_window


def _score(model, task: Task, batch) -> tuple[float, float]:
    ev = evaluate(model, batch)
    return float(ev["loss"]), task.metric(ev, batch)


def _progress(task: Task, metric: float, T: int) -> float:
    """How far ``metric`` has come from the memoryless baseline to the success criterion (0..1+)."""
    b = task.baseline_metric(T)
    return (metric - b) / (task.criterion - b) if task.higher_is_better else (b - metric) / (b - task.criterion)


def random_guess(task: Task, T: int, cfg: Config, rng: np.random.Generator):
    """Random weight guessing: the best of ``cfg.guesses`` random tanh RNNs on one batch.

    Every parameter is drawn from ``U(-a, a)`` with ``a = 10^u``, ``u ~ U(-1, 1)``; the guess
    with the lowest loss on a fixed batch of ``guess_batch`` sequences is kept.
    """
    model = _build("guess", task, T, cfg, rng)
    model.eval()
    batch = task.sample(rng, cfg.guess_batch, T)
    best, best_loss = None, float("inf")
    for _ in range(cfg.guesses):
        a = 10.0 ** rng.uniform(-1.0, 1.0)
        for p in model.params.values():
            p[...] = rng.uniform(-a, a, size=p.shape)
        out, _ = model.forward(batch.x, batch.lengths)
        loss, _ = loss_and_grad(out, batch)
        if math.isfinite(loss) and loss < best_loss:
            best, best_loss = model.state_dict(), loss
    model.load_state_dict(best)
    return model


def run_trial(params: dict, ctx) -> dict:
    """One (task, model, T, seed) run; the trial function of :mod:`rnnlab.trials`.

    ``params``: ``task``, ``model``, ``T``, ``seed`` and ``config`` (a :class:`Config` as a dict).
    Checkpoints into ``ctx.dir / "state.safetensors"`` and resumes from it.
    """
    from ..lm.checkpoint import load_checkpoint, save_checkpoint
    from ..optim import flatten_state, make_optimizer, unflatten_state
    from ..trials import TrialInterrupted

    cfg = _config_from(params["config"])
    task, kind, T, seed = TASKS[params["task"]], params["model"], int(params["T"]), int(params["seed"])
    key = (seed, NAME, task.name, T)
    test = task.sample(rng_for(*key, "test"), cfg.test_size, T)
    out = {"params": 0, "steps": 0, "sequences": 0, "sequences_to_success": None, "stop": "budget"}
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "guess":
        model = random_guess(task, T, cfg, rng_for(*key, kind, "init"))
        out["stop"] = f"{cfg.guesses} guesses"
        return _finish(out, model, task, T, test, t0, c0)

    model = _build(kind, task, T, cfg, rng_for(*key, kind, "init"))
    val = task.sample(rng_for(*key, "val"), cfg.val_size, T)
    data = rng_for(*key, kind, "data")
    lr = cfg.lr_irnn if kind == "irnn" else cfg.lr
    opt = make_optimizer("adam", model.params, model.grads, lr=lr)
    budget = cfg.window_budget if _window_blind(kind, task, T, cfg) else cfg.budget_for(T)
    step, best_progress, best_at, elapsed, first_solved, cpu = 0, -math.inf, 0, 0.0, None, 0.0
    state_file = Path(ctx.dir) / "state.safetensors"
    if state_file.is_file():  # resume: weights, Adam's slots, the data generator, the counters
        tensors, meta = load_checkpoint(state_file)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt.load_state_dict(unflatten_state(tensors, meta["optimizer"]))
        data.bit_generator.state = meta["rng"]
        step, best_progress, best_at, elapsed = meta["step"], meta["best_progress"], meta["best_at"], meta["elapsed"]
        first_solved, cpu = meta["first_solved"], meta["cpu"]
        best_progress = -math.inf if best_progress is None else best_progress
    t0 -= elapsed
    c0 -= cpu

    def save():
        tensors = {f"model.{k}": v for k, v in model.params.items()}
        otensors, ometa = flatten_state(opt.state_dict())
        tensors.update(otensors)
        save_checkpoint(state_file, tensors, {
            "step": step, "best_progress": best_progress if math.isfinite(best_progress) else None,
            "best_at": best_at, "first_solved": first_solved, "elapsed": time.perf_counter() - t0,
            "cpu": time.process_time() - c0, "optimizer": ometa,
            "rng": data.bit_generator.state})

    last_save = time.perf_counter()
    tc = TrainConfig(steps=cfg.check_every, batch=cfg.batch, lr=lr, clip=cfg.clip)
    with _StopOnSignal() as signalled:
        while step * cfg.batch < budget:
            if signalled.flag:  # SIGTERM/SIGINT (the runner's shutdown): keep the state, end here
                save()
                raise TrialInterrupted(f"at {step * cfg.batch} sequences")
            train(model, lambda r: task.sample(r, cfg.batch, T), tc, data, optimizer=opt)
            step += cfg.check_every
            seen = step * cfg.batch
            vloss, vmetric = _score(model, task, val)
            prog = _progress(task, vmetric, T) if math.isfinite(vloss) else -math.inf
            if prog > best_progress + cfg.plateau_gain:
                best_progress, best_at = prog, seen
            asked = ctx.report(sequences=seen, val_loss=vloss, val_metric=vmetric)
            if first_solved is None and task.solved(vmetric):
                first_solved = seen
            if task.solved(vmetric, margin=0.5):  # well past the criterion: the test set will agree
                out["stop"] = "solved"
                break
            if not math.isfinite(vloss):
                out["stop"] = "diverged"
                break
            if seen >= cfg.plateau_frac * budget and seen - best_at >= cfg.plateau_frac * budget:
                out["stop"] = "plateau"
                break
            if asked:
                out["stop"] = "stopped"
                break
            if time.perf_counter() - last_save >= cfg.save_every:
                save()
                last_save = time.perf_counter()
    if _window_blind(kind, task, T, cfg) and out["stop"] in ("budget", "plateau"):
        out["stop"] = "window misses the relevant inputs"
    out["steps"], out["sequences"], out["sequences_to_success"] = step, step * cfg.batch, first_solved
    return _finish(out, model, task, T, test, t0, c0)


class _StopOnSignal:
    """Turns SIGTERM / SIGINT into a flag for the time of a trial (in the main thread only), so
    that a trial asked to end saves its state first."""

    def __enter__(self):
        import signal

        self.flag, self._old = False, {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._set)
            except ValueError:  # not the main thread
                pass
        return self

    def _set(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        import signal

        for sig, h in self._old.items():
            signal.signal(sig, h)
        return False


def _finish(out, model, task, T, test, t0, c0):
    """Score the test set; ``seconds`` is the trial's wall time, ``cpu_seconds`` the processor
    time it used (what it would take alone on a core, whatever else the machine ran)."""
    loss, metric = _score(model, task, test)
    out.update(params=int(model.num_params()), test_loss=loss, test_metric=metric,
               success=bool(task.solved(metric)) and math.isfinite(loss), seconds=time.perf_counter() - t0,
               cpu_seconds=time.process_time() - c0)
    if not out["success"]:
        out["sequences_to_success"] = None
    return out


def _config_from(d: dict) -> Config:
    """One trial's settings from its spec (which holds no selection fields)."""
    return Config(**{k: v for k, v in d.items() if k not in SELECTION})


# ------------------------------------------------------------------------------------ the experiment
def make_trials(cfg: Config, seeds: int) -> list:
    """One trial per (task, lag, model, seed), longest lags first (they take longest)."""
    from ..trials import Trial

    cells = [(task, T, kind, s) for task in cfg.tasks for T in cfg.lags[task] for kind in cfg.models
             for s in range(seeds)]
    cells.sort(key=lambda c: -c[1])
    conf = asdict(cfg)
    for key in SELECTION:  # what the command selected is not part of a trial, so a resumed run may select again
        del conf[key]
    return [Trial(f"{task}_T={T}_{kind}_seed={s}", TRIAL_FN,
                  {"task": task, "model": kind, "T": T, "seed": s, "config": conf}) for task, T, kind, s in cells]


def configure(quick: bool = False, tasks=None, lags=None, models=None, budget=None, **overrides) -> Config:
    """The default (or quick) :class:`Config` with the command line's choices applied."""
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    if tasks:
        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise RnnlabError(f"unknown task {bad[0]!r}: choose from {', '.join(TASKS)}")
        cfg.tasks = tuple(tasks)
    if models:
        bad = [m for m in models if m not in MODELS]
        if bad:
            raise RnnlabError(f"unknown model {bad[0]!r}: choose from {', '.join(MODELS)}")
        cfg.models = tuple(models)
    if lags:
        minimum = {"adding": 2, "adding-hs": 22, "copy": 1, "temporal": 20}
        for t in cfg.tasks:
            low = [T for T in lags if T < minimum[t]]
            if low:
                raise RnnlabError(f"--lags {low[0]} is too short for {t} (at least {minimum[t]})")
        cfg.lags = {t: tuple(lags) for t in cfg.tasks}
    else:
        fallback = next(iter(cfg.lags.values()))
        cfg.lags = {t: tuple(cfg.lags.get(t, fallback)) for t in cfg.tasks}
    if budget is not None:
        if budget < cfg.batch * cfg.check_every:
            raise RnnlabError(f"--budget {budget} is less than one check ({cfg.batch * cfg.check_every} sequences)")
        cfg.budget = int(budget)
    return cfg


def run(out_dir, quick: bool = False, seeds: int = 3, tasks=None, lags=None, models=None, budget=None,
        workers: int = 0, backend: str = "local", address=None, resume: bool = False, progress: bool = True,
        **overrides) -> Result:
    """Every (task, model, lag, seed) trial in parallel; writes ``memory.{md,csv,png}`` and keeps
    each trial's folder under ``memory-trials/`` (for ``resume``)."""

    seeds = check_seeds(seeds)
    cfg = configure(quick, tasks, lags, models, budget, **overrides)
    out = out_path(out_dir)
    trials = make_trials(cfg, seeds)
    with Timer() as timer:
        results = run_experiment_trials(NAME, trials, out, workers=workers, backend=backend, address=address,
                                        resume=resume, progress=progress)
    return report(out, cfg, seeds, trials, results, quick, timer.seconds)


def report(out: Path, cfg: Config, seeds: int, trials, results, quick: bool, seconds: float) -> Result:
    """Tables (per trial; success per model and lag; sequences to success with the papers'
    numbers beside), notes and the figure."""
    per_trial = []
    for t, r in zip(trials, results):
        p, res = t.params, r.result
        task = TASKS[p["task"]]
        per_trial.append({
            "task": p["task"], "model": p["model"], "T": p["T"], "seed": p["seed"], "success": res["success"],
            "sequences_to_success": res["sequences_to_success"], "sequences": res["sequences"],
            "stop": res["stop"], "metric": task.metric_name, "test_metric": res["test_metric"],
            "test_loss": res["test_loss"], "baseline_metric": task.baseline_metric(p["T"]),
            "baseline_loss": task.baseline_loss(p["T"]), "params": res["params"], "seconds": res["seconds"],
            "cpu_seconds": res.get("cpu_seconds")})
    rows = []
    for task_name in cfg.tasks:
        task = TASKS[task_name]
        for kind in cfg.models:
            for T in cfg.lags[task_name]:
                sel = [r for r in per_trial if (r["task"], r["model"], r["T"]) == (task_name, kind, T)]
                if not sel:
                    continue
                ok = [r for r in sel if r["success"]]
                mm, ms = mean_std(r["test_metric"] for r in sel)
                lm, _ = mean_std(r["test_loss"] for r in sel)
                seqs = [r["sequences_to_success"] for r in ok]
                rows.append({
                    "task": task_name, "model": kind, "T": T, "successes": len(ok), "seeds": len(sel),
                    "success_rate": len(ok) / len(sel), "median_sequences_to_success":
                    float(np.median(seqs)) if seqs else None, "metric": task.metric_name, "metric_mean": mm,
                    "metric_std": ms, "loss_mean": lm, "baseline_metric": task.baseline_metric(T),
                    "baseline_loss": task.baseline_loss(T), "params": sel[0]["params"],
                    "stops": ", ".join(sorted({r["stop"] for r in sel})),
                    "seconds_mean": float(np.mean([r["seconds"] for r in sel]))})

    rep = Report(NAME, "Experiment `memory`: long time lags at the scale of the literature",
                 settings={"mode": "quick" if quick else "default", "seeds": seeds,
                           **{k: v for k, v in asdict(cfg).items() if k not in ("tasks", "models", "lags")},
                           "lags": "; ".join(f"{t}: {', '.join(map(str, cfg.lags[t]))}" for t in cfg.tasks)})
    rep.add_table("trials", Table(per_trial, in_md=False, title="One row per trial"))

    def pivot(task_name, cell):
        out_rows = []
        for kind in cfg.models:
            pr = {"model": kind, **{f"T={T}": "not run" for T in cfg.lags[task_name]}}  # every column in every row
            for r in rows:
                if r["task"] == task_name and r["model"] == kind:
                    pr[f"T={r['T']}"] = cell(r)
            out_rows.append(pr)
        return out_rows

    def seqs_cell(r):
        if r["median_sequences_to_success"] is None:
            return f"- ({r['stops']})"
        return f"{r['median_sequences_to_success']:,.0f} ({r['successes']}/{r['seeds']})"

    for task_name in cfg.tasks:
        task = TASKS[task_name]
        b = task.baseline_metric(next(iter(cfg.lags[task_name])))
        rep.add_table(f"{task_name}_success", Table(
            pivot(task_name, lambda r: f"{r['successes']}/{r['seeds']}"),
            title=f"{task.title}: seeds solved (variant: {task.variant})"))
        rep.add_table(f"{task_name}_sequences", Table(
            pivot(task_name, seqs_cell),
            title=f"{task.title}: median training sequences to success (seeds solved; why the others stopped)"))
        rep.add_table(f"{task_name}_metric", Table(
            pivot(task_name, lambda r: pm(r["metric_mean"], r["metric_std"])),
            title=f"{task.title}: {task.metric_name}, mean ± std (memoryless baseline "
                  f"{'%.4g' % b if task_name != 'copy' else '1/8'}; solved: "
                  f"{'<' if not task.higher_is_better else '>='} {task.criterion})"))
    lit = []
    for (task_name, kind), by_T in LITERATURE.items():
        if task_name not in cfg.tasks:
            continue
        for T, paper in sorted(by_T.items()):
            mine = next((r for r in rows if (r["task"], r["model"], r["T"]) == (task_name, kind, T)), None)
            lit.append({"task": task_name, "model": kind, "T": T, "paper": paper,
                        "rnnlab": seqs_cell(mine) if mine else "not run"})
    if lit:
        rep.add_table("literature", Table(lit, title="Beside the papers (sequences to success)"))
    rep.add_table("summary", Table(rows, in_md=False, title="One row per task, model and lag"))
    budget = f"{cfg.budget:,}" if cfg.budget else f"max({cfg.min_budget:,}, {cfg.budget_per_step:,} x T)"
    cpu = sum(r["cpu_seconds"] or 0.0 for r in per_trial)
    rep.notes += [
        f"Compute: {len(per_trial)} trials, {cpu:,.0f} processor-seconds in all (about {cpu / 2 / 60:.0f} min on 2 "
        f"free cores); this run took {seconds / 60:.1f} min of wall time.",
        f"Budget per run: {budget} sequences of batch {cfg.batch}; validation ({cfg.val_size} sequences) every {cfg.check_every} steps; test "
        f"{cfg.test_size} sequences. Adam lr {cfg.lr:g} (IRNN {cfg.lr_irnn:g}), clipping {cfg.clip:g}; "
        f"hidden {cfg.hidden}, MLP hidden {cfg.mlp_hidden}.",
        "Sequences to success: training sequences until the validation set first met the criterion (the run goes "
        "on until it has half the allowed error; the test set decides success). "
        f"Stops: 'solved'; 'plateau' (no gain of {cfg.plateau_gain:.0%} of "
        f"the way from baseline to criterion during the last {cfg.plateau_frac:.0%} of the budget); 'window misses "
        f"the relevant inputs' (mlp, {cfg.window_budget:,} sequences); 'budget'; 'diverged'.",
        f"mlp: the last {cfg.mlp_window} steps; mlp-full: the whole sequence; guess: best of {cfg.guesses} random "
        f"tanh RNNs on {cfg.guess_batch} sequences; irnn: ReLU RNN, identity recurrence, zero bias; lstm: forget "
        "bias 1; lstm-chrono: chrono initialisation, T_max = sequence length.",
        *LITERATURE_NOTES,
    ]
    fig, axes = new_figure(len(cfg.tasks), 2, size=(4.6, 3.2))
    for j, task_name in enumerate(cfg.tasks):
        task = TASKS[task_name]
        ax, ax2 = axes[0][j], axes[1][j]
        for kind in cfg.models:
            sel = [r for r in rows if r["task"] == task_name and r["model"] == kind]
            if not sel:
                continue
            x = [r["T"] for r in sel]
            ax.plot(x, [r["success_rate"] for r in sel], marker="o", label=kind)
            band(ax2, x, [r["metric_mean"] for r in sel], [r["metric_std"] for r in sel], kind, marker=".")
        lags_t = cfg.lags[task_name]
        ax2.plot(lags_t, [task.baseline_metric(T) for T in lags_t], "k:", lw=1, label="memoryless")
        ax2.axhline(task.criterion, color="grey", ls="--", lw=0.8, label="solved")
        ax.set(xscale="log", title=f"{task_name}: success rate", xlabel="lag T", ylabel="seeds solved",
               ylim=(-0.05, 1.05))
        ax2.set(xscale="log", xlabel="lag T", ylabel=task.metric_name)
        if task_name == "adding":
            ax2.set_yscale("log")
        ax.legend(fontsize=6)
        ax2.legend(fontsize=6)
    rep.figure, rep.figure_caption = fig, "success rate and test metric vs lag"
    paths = rep.write(out)
    return Result(NAME, paths, {k: t.rows for k, t in rep.tables.items()}, data={"config": cfg, "trials": per_trial},
                  seconds=seconds)
