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
    The adding problem (:func:`rnnlab.data.synthetic.adding`) of length ``T``, loss only at the
    last step, float64. For the tanh RNN with ``W_hh`` rescaled to spectral radius ``rho`` in
    ``radii`` (:func:`rnnlab.nn.init.scale_spectral_radius`), the LSTM and the GRU: run one batch
    forward and backward and read the engine's per-step gradients ``cache["dh"][0][0]`` =
    ``dL/dh_t (T, B, H)``; the curve is ``mean_b ||dL/dh_t||`` divided by its value at ``t = T-1``,
    against the distance ``d = T-1-t``. ``gamma = exp(slope)`` of a least-squares line through
    ``log`` of the curve. Measured at initialisation and after ``train_steps`` steps of Adam
    (clipping 1.0). Clipping: the ``rho = clip_radius`` RNN trained with plain SGD, with and
    without norm clipping at ``clip``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..data import synthetic as syn
from ..nn.init import scale_spectral_radius
from . import seqmodels
from .common import Result, Timer, check_seeds, out_path, progress, rng_for, single_blas_thread
from .report import Report, Table, band, mean_std, new_figure, pm
from .train import TrainConfig, evaluate, loss_and_grad, train

NAME = "gradients"
DTYPE = np.float64  # 0.5^100 ~ 1e-30: float32 would flush the vanishing curves to zero sooner


@dataclass
class Config:
    T: int = 100
    hidden: int = 32
    radii: tuple = (0.5, 0.9, 1.0, 1.1, 1.5)
    batch: int = 64  # measurement batch
    train_steps: int = 300
    train_batch: int = 32
    lr: float = 3e-3
    clip_radius: float = 1.5
    clip: float = 1.0
    clip_lr: float = 0.05  # plain SGD for the clipping comparison
    clip_steps: int = 300
    test_size: int = 500


DEFAULT = Config()
QUICK = Config(T=40, hidden=16, train_steps=40, clip_steps=40, batch=32, test_size=200)


def variants(cfg: Config) -> list[tuple[str, str, float | None, dict]]:
    """``(label, cell, radius, cell kwargs)``: the RNN at every radius, then the LSTM (default
    init, whose forget gates start near ``sigmoid(0) = 0.5``; and with forget-gate bias 1, gates
    near 0.73), the GRU."""
    return ([(f"rnn rho={r:g}", "rnn", r, {}) for r in cfg.radii]
            + [("lstm", "lstm", None, {}), ("lstm b_f=1", "lstm", None, {"forget_bias": 1.0}),
               ("gru", "gru", None, {})])


def build(cell: str, radius: float | None, cfg: Config, rng, **kw):
    """The model, with ``W_hh`` rescaled to spectral radius ``radius`` for the RNN."""
    model = seqmodels.build(cell, 2, 1, hidden=cfg.hidden, dtype=DTYPE, rng=rng, **kw)
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


def run(out_dir, quick: bool = False, seeds: int = 3, **overrides) -> Result:
    """Gradient-norm profiles at init and after training, and the clipping comparison;
    writes ``gradients.{md,csv,png}``."""
    seeds = check_seeds(seeds)
    cfg = replace(QUICK if quick else DEFAULT, **overrides)
    out = out_path(out_dir)
    T = cfg.T
    var = variants(cfg)
    ratios = {}  # (label, phase) -> (seeds, T)
    gammas = {}  # (label, phase) -> [gamma per seed]
    final_loss = {}  # label -> [test mse after training]
    clip_runs = {}  # "clip"/"no clip" -> list of (loss curve, norm curve, test mse)
    total = seeds * (len(var) + 2)
    with Timer() as timer, single_blas_thread(), progress(total, NAME) as bar:
        for s in range(seeds):
            probe = syn.adding(rng_for(s, NAME, "probe"), cfg.batch, T, dtype=DTYPE)
            test = syn.adding(rng_for(s, NAME, "test"), cfg.test_size, T, dtype=DTYPE)
            for label, cell, radius, kw in var:
                model = build(cell, radius, cfg, rng_for(s, NAME, label, "init"), **kw)
                for phase in ("init", "trained"):
                    if phase == "trained":
                        tc = TrainConfig(steps=cfg.train_steps, batch=cfg.train_batch, lr=cfg.lr, clip=1.0)
                        train(model, lambda r: syn.adding(r, cfg.train_batch, T, dtype=DTYPE), tc,
                              rng_for(s, NAME, "data"))
                        final_loss.setdefault(label, []).append(evaluate(model, test)["loss"])
                    ratio, gamma = decay(grad_profile(model, probe))
                    ratios.setdefault((label, phase), []).append(ratio)
                    gammas.setdefault((label, phase), []).append(gamma)
                bar.update(1)
            for setting, clip in (("no clip", None), ("clip", cfg.clip)):
                model = build("rnn", cfg.clip_radius, cfg, rng_for(s, NAME, "clip", "init"))
                tc = TrainConfig(steps=cfg.clip_steps, batch=cfg.train_batch, lr=cfg.clip_lr, optimizer="sgd", clip=clip)
                with np.errstate(over="ignore", invalid="ignore"):
                    hist = train(model, lambda r: syn.adding(r, cfg.train_batch, T, dtype=DTYPE), tc,
                                 rng_for(s, NAME, "data"))
                    mse_test = evaluate(model, test)["loss"]
                clip_runs.setdefault(setting, []).append((np.array(hist.loss), np.array(hist.grad_norm), mse_test))
                bar.update(1)
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
            rows.append(row)
    cols = {"model": "model", "phase": "phase", "gamma (per-step factor)": lambda r: pm(r["gamma_mean"], r["gamma_std"], 4)}
    for d in dists:
        cols[f"log10 ratio at d={d}"] = (lambda d: lambda r: pm(r[f"log10_ratio_d{d}_mean"], r[f"log10_ratio_d{d}_std"], 3))(d)
    cols["test MSE after training"] = lambda r: pm(r["test_mse_mean"], r["test_mse_std"]) if "test_mse_mean" in r else ""

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
        f"Adding problem (standard form) baseline MSE (predict 1.0): {syn.ADDING_BASELINE_MSE:.4f}. 'trained': {cfg.train_steps} Adam steps (lr {cfg.lr:g}, clipping 1.0).",
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
