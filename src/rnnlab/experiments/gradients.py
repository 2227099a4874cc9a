"""Experiment ``gradients``: vanishing and exploding gradients through time.

Claim
    Backpropagation through time multiplies the gradient by one Jacobian per step::

        dL/dh_t = (dh_{t+1}/dh_t)^T dL/dh_{t+1},    vanilla RNN: dh_{t+1}/dh_t = diag(1 - h_{t+1}^2) W_hh

    so ``||dL/dh_t||`` behaves roughly like ``gamma^(T-t)`` for some per-step factor ``gamma``:
    it vanishes when ``gamma < 1`` — always when the spectral radius ``rho(W_hh) < 1``, since
    ``|tanh'| <= 1`` — and can explode when ``rho > 1`` (Bengio et al. 1994; Pascanu et al.
    2013). The LSTM's cell state has the additive path ``c_t = f_t c_{t-1} + ...`` (Jacobian
    ``diag(f_t)``), the GRU's ``h_t = z_t h_{t-1} + ...``: with gates near 1 the gradient is
    carried over many steps. Clipping the norm of the gradient (Pascanu et al. 2013) bounds the
    step an exploding gradient can cause.

Protocol
    The standard adding problem (:func:`rnnlab.data.synthetic.adding`) of length ``T``, loss only
    at the last step. For the tanh RNN with ``W_hh`` rescaled to spectral radius ``rho`` in
    ``radii`` (:func:`rnnlab.nn.init.scale_spectral_radius`), the LSTM (default init; forget-gate
    bias 1; chrono init) and the GRU, all with ``hidden`` units: run one batch forward and
    backward in float64 and read the engine's per-step gradients ``cache["dh"][0][0]`` =
    ``dL/dh_t (T, B, H)``; the curve is ``mean_b ||dL/dh_t||`` divided by its value at ``t = T-1``,
    against the distance ``d = T-1-t``. ``gamma = exp(slope)`` of a least-squares line through
    ``log`` of the curve. Measured at initialisation and after training as the memory experiment
    trains (Adam lr ``lr``, clipping 1, batch 32, float32) until the validation MSE is half the
    success criterion (0.01) or ``train_budget`` sequences have been seen: does a model whose
    gradient vanishes at init change that when it learns the lag? Clipping: the
    ``rho = clip_radius`` RNN trained with plain SGD, with and without norm clipping at ``clip``.
    Each (model, seed) is one trial (:mod:`rnnlab.trials`), so the cells run in parallel.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..data import synthetic as syn
from ..nn.init import scale_spectral_radius
from . import seqmodels
from ..optim import make_optimizer
from .common import Result, Timer, check_seeds, out_path, rng_for, run_cells
from .report import Report, Table, band, mean_std, new_figure, pm
from .train import TrainConfig, evaluate, loss_and_grad, train

NAME = "gradients"
DTYPE = np.float64  # 0.5^100 ~ 1e-30: float32 would flush the vanishing curves to zero sooner


@dataclass
class Config:
    T: int = 100
    hidden: int = 128  # as in the memory experiment
    radii: tuple = (0.5, 0.9, 1.0, 1.1, 1.5)
    batch: int = 64  # measurement batch
    train_budget: int = 300_000  # training sequences at most
    train_batch: int = 32
    lr: float = 1e-3
    check_every: int = 100
    val_size: int = 512
    clip_radius: float = 1.5
    clip: float = 1.0
    clip_hidden: int = 32
    clip_lr: float = 0.05  # plain SGD for the clipping comparison
    clip_steps: int = 300
    test_size: int = 1000


DEFAULT = Config()
QUICK = Config(T=40, hidden=16, train_budget=1600, check_every=25, batch=32, val_size=128, clip_hidden=16,
               clip_steps=40, test_size=200)


def variants(cfg: Config) -> list[tuple[str, str, float | None, dict]]:
    """``(label, cell, radius, cell kwargs)``: the RNN at every radius, then the LSTM (default
    init, whose forget gates start near ``sigmoid(0) = 0.5``; with forget-gate bias 1, gates near
    0.73; chrono init, forget gates spread over memory lengths up to ``T``), the GRU."""
    return ([(f"rnn rho={r:g}", "rnn", r, {}) for r in cfg.radii]
            + [("lstm", "lstm", None, {}), ("lstm b_f=1", "lstm", None, {"forget_bias": 1.0}),
               ("lstm chrono", "lstm", None, {"init": "chrono", "chrono_tmax": float(cfg.T)}),
               ("gru", "gru", None, {})])


def build(cell: str, radius: float | None, cfg: Config, rng, hidden: int | None = None, dtype=DTYPE, **kw):
    """The model, with ``W_hh`` rescaled to spectral radius ``radius`` for the RNN."""
    model = seqmodels.build(cell, 2, 1, hidden=hidden or cfg.hidden, dtype=dtype, rng=rng, **kw)
    if radius is not None:
        w = model.params["rnn.W_hh_l0"]
        w[...] = scale_spectral_radius(w, radius)
    return model


def grad_profile(model, batch) -> np.ndarray:
    """``||dL/dh_t||`` averaged over the batch, ``(T,)``, from the engine's ``cache["dh"]``."""
    model.zero_grad()
    out, cache = model.forward(batch.x, batch.lengths)
    _, dout = loss_and_grad(out, batch)
    model.backward(dout, cache)
    model.zero_grad()
    dh = cache["rnn"]["dh"][0][0]  # (T, B, H)
    return np.linalg.norm(dh, axis=2).mean(axis=1)  # (T,)


def decay(profile: np.ndarray) -> tuple[np.ndarray, float]:
    """``(ratio (T,), gamma)``: ``ratio[d] = profile[T-1-d] / profile[T-1]`` and the per-step
    factor ``gamma = exp(slope)`` of the least-squares fit ``log ratio[d] ~ d log gamma``
    (through the origin; zero or non-finite points left out)."""
    ratio = profile[::-1] / profile[-1]  # (T,) by distance d = 0..T-1
    d = np.arange(ratio.size, dtype=np.float64)
    ok = np.isfinite(ratio) & (ratio > 0)
    lr = np.log(ratio[ok])
    slope = float((d[ok] * lr).sum() / max((d[ok] ** 2).sum(), 1e-300))
    return ratio, math.exp(slope)


def _config(d: dict) -> Config:
    return Config(**{**d, "radii": tuple(d["radii"])})


def cell(p: dict) -> dict:
    """One trial: ``p["kind"]`` ``"profile"`` (a variant's gradient profile at init and after
    training) or ``"clip"`` (the SGD run with or without clipping), for seed ``p["seed"]``."""
    cfg, s = _config(p["config"]), int(p["seed"])
    T = cfg.T
    probe = syn.adding(rng_for(s, NAME, "probe"), cfg.batch, T, dtype=DTYPE)
    test = syn.adding(rng_for(s, NAME, "test"), cfg.test_size, T, dtype=DTYPE)
    if p["kind"] == "clip":
        model = build("rnn", cfg.clip_radius, cfg, rng_for(s, NAME, "clip", "init"), hidden=cfg.clip_hidden)
        clip = cfg.clip if p["clip"] else None
        tc = TrainConfig(steps=cfg.clip_steps, batch=cfg.train_batch, lr=cfg.clip_lr, optimizer="sgd", clip=clip)
        with np.errstate(over="ignore", invalid="ignore"):
            hist = train(model, lambda r: syn.adding(r, cfg.train_batch, T, dtype=DTYPE), tc, rng_for(s, NAME, "data"))
            mse_test = float(evaluate(model, test)["loss"])
        return {"loss": [float(x) for x in hist.loss], "grad_norm": [float(x) for x in hist.grad_norm],
                "test_mse": mse_test}
    label = p["label"]
    _, kind, radius, kw = next(v for v in variants(cfg) if v[0] == label)
    model = build(kind, radius, cfg, rng_for(s, NAME, label, "init"), **kw)
    out = {"init": decay(grad_profile(model, probe))}
    # train a float32 twin as the memory experiment does, then measure again in float64
    twin = build(kind, None, cfg, rng_for(s, NAME, label, "init"), dtype=np.float32, **kw)
    twin.load_state_dict({k: v.astype(np.float32) for k, v in model.state_dict().items()})
    val = syn.adding(rng_for(s, NAME, "val"), cfg.val_size, T)
    data = rng_for(s, NAME, label, "data")
    opt = make_optimizer("adam", twin.params, twin.grads, lr=cfg.lr)
    tc = TrainConfig(steps=cfg.check_every, batch=cfg.train_batch, lr=cfg.lr, clip=1.0)
    seen, solved_at = 0, None
    while seen < cfg.train_budget:
        train(twin, lambda r: syn.adding(r, cfg.train_batch, T), tc, data, optimizer=opt)
        seen += cfg.check_every * cfg.train_batch
        mse = float(evaluate(twin, val)["loss"])
        if solved_at is None and mse < 0.01:
            solved_at = seen
        if mse < 0.005 or not math.isfinite(mse):
            break
    model.load_state_dict({k: v.astype(DTYPE) for k, v in twin.state_dict().items()})
    out["trained"] = decay(grad_profile(model, probe))
    return {"ratio_init": [float(x) for x in out["init"][0]], "gamma_init": out["init"][1],
            "ratio_trained": [float(x) for x in out["trained"][0]], "gamma_trained": out["trained"][1],
            "test_mse": float(evaluate(model, test)["loss"]), "sequences": seen, "solved_at": solved_at}


def run(out_dir, quick: bool = False, seeds: int = 3, workers: int = 0, backend: str = "local", address=None,
        resume: bool = False, progress: bool = True, **overrides) -> Result:
    """Gradient-norm profiles at init and after training, and the clipping comparison, as
    parallel trials; writes ``gradients.{md,csv,png}``."""
    seeds = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    T = cfg.T
    var = variants(cfg)
    conf = asdict(cfg)
    cells = {}
    for s in range(seeds):
        for label, _, _, _ in var:
            cells[f"{label.replace(' ', '_')}_seed={s}"] = {"kind": "profile", "label": label, "seed": s, "config": conf}
        for setting in ("no-clip", "clip"):
            cells[f"{setting}_seed={s}"] = {"kind": "clip", "clip": setting == "clip", "seed": s, "config": conf}
    with Timer() as timer:
        res = run_cells(NAME, cells, out, workers=workers, backend=backend, address=address, resume=resume,
                        progress=progress)
    ratios, gammas, final_loss, solved = {}, {}, {}, {}
    for s in range(seeds):
        for label, _, _, _ in var:
            r = res[f"{label.replace(' ', '_')}_seed={s}"]
            for phase in ("init", "trained"):
                ratios.setdefault((label, phase), []).append(np.array(r[f"ratio_{phase}"]))
                gammas.setdefault((label, phase), []).append(r[f"gamma_{phase}"])
            final_loss.setdefault(label, []).append(r["test_mse"])
            solved.setdefault(label, []).append(r["solved_at"])
    clip_runs = {setting: [(np.array(res[f"{key}_seed={s}"]["loss"]), np.array(res[f"{key}_seed={s}"]["grad_norm"]),
                            res[f"{key}_seed={s}"]["test_mse"]) for s in range(seeds)]
                 for setting, key in (("no clip", "no-clip"), ("clip", "clip"))}
    ratios = {k: np.stack(v) for k, v in ratios.items()}

    rows = []
    dists = [d for d in (1, 10, 50, T - 1) if d < T]
    for label, _, radius, _ in var:
        for phase in ("init", "trained"):
            g = gammas[(label, phase)]
            gm, gs = mean_std(g)
            row = {"model": label, "radius": radius if radius is not None else "", "phase": phase,
                   "gamma_mean": gm, "gamma_std": gs}
            for d in dists:
                rm, rs = mean_std(np.log10(ratios[(label, phase)][:, d]))
                row[f"log10_ratio_d{d}_mean"], row[f"log10_ratio_d{d}_std"] = rm, rs
            if phase == "trained":
                row["test_mse_mean"], row["test_mse_std"] = mean_std(final_loss[label])
                done = [x for x in solved[label] if x is not None]
                row["solved"] = f"{len(done)}/{len(solved[label])}"
                row["median_sequences_to_solve"] = float(np.median(done)) if done else None
            rows.append(row)
    cols = {"model": "model", "phase": "phase", "gamma (per-step factor)": lambda r: pm(r["gamma_mean"], r["gamma_std"], 4)}
    for d in dists:
        cols[f"log10 ratio at d={d}"] = (lambda d: lambda r: pm(r[f"log10_ratio_d{d}_mean"], r[f"log10_ratio_d{d}_std"], 3))(d)
    cols["test MSE after training"] = lambda r: pm(r["test_mse_mean"], r["test_mse_std"]) if "test_mse_mean" in r else ""
    cols["seeds solved (MSE < 0.01)"] = lambda r: r.get("solved", "")
    cols["median sequences to solve"] = lambda r: (f"{r['median_sequences_to_solve']:,.0f}"
                                                   if r.get("median_sequences_to_solve") else "")

    clip_rows = []
    for setting, runs in clip_runs.items():
        losses = np.stack([r[0] for r in runs])  # (seeds, steps)
        norms = np.stack([r[1] for r in runs])
        finite = np.isfinite(norms)
        tm, ts = mean_std(r[2] for r in runs)
        clip_rows.append({
            "setting": setting, "radius": cfg.clip_radius, "optimizer": f"sgd lr={cfg.clip_lr}",
            "median_grad_norm": float(np.median(norms[finite])) if finite.any() else float("nan"),
            "max_grad_norm": float(np.max(norms[finite])) if finite.any() else float("nan"),
            "share_steps_norm_gt_clip": float(np.mean(norms > cfg.clip)),
            "max_train_loss": float(np.nanmax(losses)),
            "test_mse_mean": tm, "test_mse_std": ts,
            "nonfinite_steps": int((~finite).sum()),
            "diverged_runs": int(sum(not (r[2] < 10 * syn.ADDING_BASELINE_MSE) for r in runs)),
            "runs": len(runs),
        })
    clip_cols = {
        "setting": "setting", "grad norm: median": "median_grad_norm", "max": "max_grad_norm",
        f"steps with norm > {cfg.clip:g}": "share_steps_norm_gt_clip", "max train loss": "max_train_loss",
        "test MSE": lambda r: pm(r["test_mse_mean"], r["test_mse_std"]), "non-finite steps": "nonfinite_steps",
        "diverged runs": lambda r: f"{r['diverged_runs']}/{r['runs']}",
    }
    long_rows = []
    for (label, phase), arr in ratios.items():
        for d in range(T):
            m, sd = mean_std(arr[:, d])
            long_rows.append({"model": label, "phase": phase, "distance": d, "ratio_mean": m, "ratio_std": sd})

    rep = Report(NAME, "Experiment `gradients`: vanishing and exploding gradients through time",
                 settings={"mode": "quick" if quick else "default", "seeds": seeds, **asdict(cfg)})
    rep.add_table("main", Table(rows, cols, title=f"||dL/dh_t|| relative to ||dL/dh_T|| at distance d = T-1-t (T = {T}), mean ± std over {seeds} seeds"))
    rep.add_table("clip", Table(clip_rows, clip_cols, title=f"Norm clipping on the exploding case (tanh RNN, rho = {cfg.clip_radius:g}, plain SGD lr {cfg.clip_lr:g}, {cfg.clip_steps} steps)"))
    rep.add_table("profiles", Table(long_rows, in_md=False))
    rep.notes += [
        "gamma < 1: the gradient shrinks geometrically with distance (vanishing); gamma > 1: it grows (exploding).",
        f"Adding problem (standard form) baseline MSE (predict 1.0): {syn.ADDING_BASELINE_MSE:.4f}. 'trained': Adam "
        f"(lr {cfg.lr:g}, clipping 1.0, batch {cfg.train_batch}) until the validation MSE is below 0.005, at most "
        f"{cfg.train_budget:,} sequences; 'solved': the validation MSE went below 0.01.",
        f"Hidden units {cfg.hidden} (the clipping comparison: {cfg.clip_hidden}); profiles measured in float64 on "
        f"{cfg.batch} sequences.",
    ]
    fig, axes = new_figure(2, 2, size=(5.0, 3.4))
    d = np.arange(T)
    for ax, phase in ((axes[0][0], "init"), (axes[0][1], "trained")):
        for label, _, _, _ in var:
            arr = np.log10(ratios[(label, phase)])
            band(ax, d, arr.mean(axis=0), arr.std(axis=0), label)
        ax.set(title=f"{phase}: log10 ||dL/dh_t|| / ||dL/dh_T||", xlabel="distance T - t", ylabel="log10 ratio")
        ax.legend(fontsize=7)
    ax, ax2 = axes[1][0], axes[1][1]
    for color, (setting, runs) in zip(("C3", "C0"), clip_runs.items()):
        for i, (loss, norm, _) in enumerate(runs):  # every seed: one run may blow up
            steps = np.arange(1, loss.size + 1)
            ax.plot(steps, loss, color=color, lw=0.8, alpha=0.7, label=setting if i == 0 else None)
            ax2.plot(steps, norm, color=color, lw=0.8, alpha=0.7, label=setting if i == 0 else None)
    ax.axhline(syn.ADDING_BASELINE_MSE, color="k", ls=":", lw=1, label="memoryless")
    ax.set(yscale="log", title=f"rho={cfg.clip_radius:g}, SGD: training loss (each seed)", xlabel="step", ylabel="MSE")
    ax2.axhline(cfg.clip, color="grey", ls="--", lw=0.8, label="clip threshold")
    ax2.set(yscale="log", title="gradient norm before clipping", xlabel="step", ylabel="||g||")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    rep.figure, rep.figure_caption = fig, "gradient norm vs distance; clipping"
    paths = rep.write(out)
    return Result(NAME, paths, {k: t.rows for k, t in rep.tables.items()},
                  data={"ratios": ratios, "gammas": gammas, "clip": clip_runs, "config": cfg}, seconds=timer.seconds)
