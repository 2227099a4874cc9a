"""The experiments: quick runs write their files, and the outcomes the theory guarantees hold.

Each experiment runs once in quick mode (module-scoped fixtures); assertions are limited to
what holds whatever the (tiny) training did — information-theoretic limits, exact counts,
the ordering of gradient decay at initialisation — plus one dedicated, seeded setting in which
the LSTM must learn the adding problem.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from rnnlab import experiments as ex
from rnnlab.data import synthetic as syn
from rnnlab.errors import RnnlabError
from rnnlab.experiments import memory, seqmodels, sharing


def _check_files(res, min_rows: int) -> None:
    """md, csv and png exist and are not trivial."""
    md, csv_path, png = res.paths["md"], res.paths["csv"], res.paths["png"]
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Experiment") and "|---" in text and png.name in text
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= min_rows
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


# ---------------------------------------------------------------------------------- synthetic
def test_synthetic_tasks_have_the_stated_targets():
    rng = np.random.default_rng(0)
    b = syn.parity(rng, 64, 1, 9)
    bits = b.x[..., 1]  # (T, B)
    assert b.x.shape[2] == 2 and b.lengths.max() <= 9
    assert np.all(b.x[..., 0] + b.x[..., 1] == (np.arange(b.x.shape[0])[:, None] < b.lengths))
    assert np.array_equal(b.y[0], bits.sum(0) % 2)
    m = syn.majority(rng, 64, 1, 9)
    assert np.array_equal(m.y[0], (2 * m.x[..., 1].sum(0) > m.lengths).astype(int))
    a = syn.adding(rng, 20000, 30)
    assert a.x.shape == (30, 20000, 2) and np.all((a.x[..., 1] == 1).sum(0) == 2)
    assert np.all((a.x[:15, :, 1] == 1).sum(0) == 1) and np.all((a.x[15:, :, 1] == 1).sum(0) == 1)  # one per half
    marked = np.where(a.x[..., 1] == 1, a.x[..., 0], 0).sum(0)
    assert np.allclose(a.y[0, :, 0], marked, atol=1e-6) and a.x[..., 0].min() >= 0
    assert abs(float(((a.y - 1.0) ** 2).mean()) - syn.ADDING_BASELINE_MSE) < 5e-3
    h = syn.adding_hs(rng, 20000, 40)
    assert h.lengths.min() == 40 and h.lengths.max() == 44 and h.x.shape[0] == 44
    marks = h.x[..., 1]
    assert np.all((marks == 1).sum(0) == 2) and np.all((marks[:10] == 1).sum(0) >= 1)
    assert np.all((marks[19:] == 1).sum(0) == 0)  # the second among the first T/2 - 1 = 19
    assert np.all(marks[h.lengths - 1, np.arange(20000)] == -1)
    first_marked = marks[0] == 1
    marked = np.where(marks == 1, h.x[..., 0], 0).sum(0)
    assert np.allclose(h.y[0, :, 0], 0.5 + marked / 4, atol=1e-6) and np.all(h.x[0, first_marked, 0] == 0)
    assert abs(float(((h.y - 0.5) ** 2).mean()) - syn.adding_hs_baseline(40)) < 2e-3
    assert abs(float((np.abs(h.y - 0.5) < 0.04).mean()) - syn.adding_hs_baseline_within(40)) < 0.01
    c = syn.copy_memory(rng, 8, T=7, n_copy=3, n_symbols=4)
    ids = c.x.argmax(-1)  # (T+2N, B)
    assert c.x.shape == (13, 8, 6) and c.y.shape == (13, 8)
    assert np.array_equal(ids[:3], c.y[-3:]) and np.all(ids[3:9] == 0) and np.all(ids[9] == 5) and np.all(c.y[:10] == 0)
    assert ids[:3].min() >= 1 and math.isclose(syn.copy_baseline(7, 3, 4), 3 * math.log(4) / 13)
    t = syn.temporal_order(rng, 64, 30)
    ids = t.x.argmax(-1)
    rel = (ids == 4) | (ids == 5)  # X, Y
    assert np.all(rel.sum(0) == 2) and np.all(ids[0] == 6) and np.all(ids[t.lengths - 1, np.arange(64)] == 7)
    pos = np.argwhere(rel.T)  # (2B, 2): (sequence, step)
    first, second = pos[0::2, 1], pos[1::2, 1]
    assert first.min() >= 3 and first.max() <= 6 and second.min() >= 15 and second.max() <= 18
    order = 2 * (ids[first, np.arange(64)] == 5) + (ids[second, np.arange(64)] == 5)
    assert np.array_equal(order, t.y[0])


def test_padded_batches_give_per_sequence_results():
    """Variable-length batches through every model equal the sequences run one by one."""
    rng = np.random.default_rng(1)
    batch = syn.parity(rng, 5, 1, 7)
    for kind in ("mlp", "cnn", "rnn", "lstm", "gru"):
        model = seqmodels.build(kind, 2, 2, hidden=8, window=6, dtype=np.float64, rng=np.random.default_rng(2))
        out, _ = model.forward(batch.x.astype(np.float64), batch.lengths)
        for b in range(5):
            n = int(batch.lengths[b])
            one, _ = model.forward(batch.x[:n, b : b + 1].astype(np.float64), None)
            assert np.allclose(out[:, b], one[:, 0], atol=1e-12), kind


# ---------------------------------------------------------------------------------- length
@pytest.fixture(scope="module")
def length_result(out):
    return ex.run("length", out, quick=True, seeds=3)


def test_length_writes_report(length_result):
    _check_files(length_result, min_rows=6)


def test_length_fixed_window_is_at_chance_on_parity_beyond_it(length_result):
    """Parity of n bits seen through a window of W < n: exactly chance, whatever was learnt."""
    acc = length_result.data["acc"]
    L = length_result.data["config"].max_len
    mlp = acc[("parity", "mlp")][:, L:]  # (seeds, lengths > L)
    assert abs(mlp.mean() - 0.5) < 0.04
    cnn = seqmodels.build("cnn", 2, 2, hidden=4, cnn_layers=math.ceil(math.log2(L)))
    R = int(cnn.window())
    assert abs(acc[("parity", "cnn")][:, R:].mean() - 0.5) < 0.04


# ---------------------------------------------------------------------------------- memory
@pytest.fixture(scope="module")
def memory_result(out):
    return ex.run("memory", out / "memory", quick=True, seeds=1, progress=False)


def test_memory_writes_report(memory_result):
    _check_files(memory_result, min_rows=24)  # one CSV row per trial
    md = memory_result.paths["md"].read_text(encoding="utf-8")
    assert "copy task" in md and "median training sequences to success" in md
    assert (memory_result.paths["md"].parent / "memory-trials").is_dir()


def test_memory_parameters_windows_and_stops(memory_result):
    trials = memory_result.data["trials"]
    by = {(r["task"], r["model"], r["T"]): r for r in trials}
    assert by[("adding", "lstm", 10)]["params"] == by[("adding", "lstm", 20)]["params"]  # shared over time
    assert by[("adding", "mlp-full", 20)]["params"] > by[("adding", "mlp-full", 10)]["params"]
    # at T = 20 the nearest marked value is 10 steps back: the window of the last 10 never sees one;
    # it trains for the short window budget only, and stays at the memoryless baseline
    blind = by[("adding", "mlp", 20)]
    assert blind["stop"] == "window misses the relevant inputs" and blind["sequences"] < memory.QUICK.budget / 2
    assert blind["test_metric"] > 0.85 * syn.ADDING_BASELINE_MSE
    assert by[("adding", "mlp", 10)]["stop"] != blind["stop"]
    assert all(not r["success"] for r in trials if r["model"] == "guess")
    assert all(r["sequences_to_success"] is None for r in trials if not r["success"])


def _tiny(**kw):
    return dict(tasks=["adding"], lags=[20], models=["gru", "mlp"], budget=800, quick=True, progress=False,
                val_size=64, test_size=1000, **kw)


def test_memory_trials_in_parallel_equal_serial(tmp_path):
    one = ex.run("memory", tmp_path / "one", seeds=2, workers=1, **_tiny())
    two = ex.run("memory", tmp_path / "two", seeds=2, workers=2, **_tiny())
    key = lambda rows: sorted((r["model"], r["seed"], r["test_metric"], r["test_loss"], r["sequences"]) for r in rows)
    assert key(one.data["trials"]) == key(two.data["trials"])
    assert len({r["test_metric"] for r in one.data["trials"]}) == 4  # the seeds differ


def test_memory_trial_resumes_exactly(tmp_path):
    """A trial stopped after it checkpointed ends exactly as one that ran straight through."""
    from rnnlab.trials.spec import TrialContext, TrialDir

    cfg = memory.configure(quick=True, tasks=["adding"], lags=[20], models=["lstm"], budget=1600, save_every=0.0)
    trial = memory.make_trials(cfg, 1)[0]
    first = TrialDir(tmp_path / "a", trial.name)
    first.prepare(trial)
    straight = memory.run_trial(trial.params, TrialContext(first))

    class Dies(TrialContext):
        def report(self, **m):
            if m["sequences"] >= 1200:
                raise KeyboardInterrupt  # killed between checks; the state of the last one is on disk
            return super().report(**m)

    tdir = TrialDir(tmp_path / "b", trial.name)
    tdir.prepare(trial)
    with pytest.raises(KeyboardInterrupt):
        memory.run_trial(trial.params, Dies(tdir))
    assert (tdir.path / "state.safetensors").is_file()
    resumed = memory.run_trial(trial.params, TrialContext(tdir))
    for r in (straight, resumed):
        r.pop("seconds"), r.pop("cpu_seconds")  # times differ; everything else is exact
    assert resumed == straight


def test_memory_resume_may_select_a_subset_of_the_trials(tmp_path):
    """A run resumed with fewer lags or models keeps the trials it has (a trial's spec holds its
    own settings, not the command's selection) and reports only the selected ones."""
    both = ex.run("memory", tmp_path, seeds=1, **_tiny())
    again = ex.run("memory", tmp_path, seeds=1, resume=True, **{**_tiny(), "models": ["mlp"]})
    assert [r["model"] for r in again.data["trials"]] == ["mlp"]
    mlp = next(r for r in both.data["trials"] if r["model"] == "mlp")
    assert again.data["trials"][0] == mlp  # kept, not trained again
    with pytest.raises(RnnlabError, match="holds another trial"):  # a setting of the trial itself differs
        ex.run("memory", tmp_path, seeds=1, resume=True, **{**_tiny(), "budget": 1600})


def test_memory_gated_rnns_learn_a_lag_the_window_mlp_cannot(tmp_path):
    """The claim at a small T (seconds): at T = 20 the GRU and the LSTM solve the adding problem
    (test MSE < 0.01, a sixteenth of the baseline), while the window MLP, which cannot see the
    first marked value, stays at the memoryless baseline."""
    res = ex.run("memory", tmp_path, seeds=1, tasks=["adding"], lags=[20], models=["gru", "lstm", "mlp"],
                 budget=20_000, quick=True, progress=False)
    by = {r["model"]: r for r in res.data["trials"]}
    assert by["gru"]["success"] and by["lstm"]["success"], by
    assert by["gru"]["test_metric"] < 0.01 and by["gru"]["sequences_to_success"] <= 20_000
    assert not by["mlp"]["success"] and by["mlp"]["test_metric"] > 0.85 * syn.ADDING_BASELINE_MSE


def test_memory_options_are_checked():
    with pytest.raises(RnnlabError, match="unknown task"):
        memory.configure(tasks=["nope"])
    with pytest.raises(RnnlabError, match="unknown model"):
        memory.configure(models=["transformer"])
    with pytest.raises(RnnlabError, match="too short for adding-hs"):
        memory.configure(tasks=["adding-hs"], lags=[10])
    with pytest.raises(RnnlabError, match="--budget"):
        memory.configure(budget=10)
    with pytest.raises(RnnlabError, match="memory experiment only"):
        ex.cli_main(["sharing", "--lags", "10"])
    with pytest.raises(RnnlabError, match="parallel trials"):
        ex.cli_main(["sharing", "--workers", "2"])


# ---------------------------------------------------------------------------------- gradients
@pytest.fixture(scope="module")
def gradients_result(out):
    return ex.run("gradients", out, quick=True, seeds=3)


def test_gradients_writes_report(gradients_result):
    _check_files(gradients_result, min_rows=10)


def test_gradients_vanish_faster_at_smaller_radius(gradients_result):
    g = gradients_result.data["gammas"]
    r = gradients_result.data["ratios"]
    assert max(g[("rnn rho=0.5", "init")]) < min(g[("rnn rho=1.1", "init")])
    assert max(g[("rnn rho=0.5", "init")]) < 1.0
    T = gradients_result.data["config"].T
    assert r[("rnn rho=0.5", "init")][:, -1].max() < 1e-6  # about 0.5^(T-1) * prod tanh'
    assert r[("rnn rho=0.5", "init")].shape[1] == T


def test_decay_fit_recovers_a_geometric_rate():
    from rnnlab.experiments.gradients import decay

    prof = 0.8 ** np.arange(30)[::-1]  # ||dL/dh_t|| = 0.8^(T-1-t)
    ratio, gamma = decay(prof)
    assert np.isclose(gamma, 0.8) and np.isclose(ratio[10], 0.8**10)


# ---------------------------------------------------------------------------------- sharing
@pytest.fixture(scope="module")
def sharing_result(out):
    return ex.run("sharing", out, quick=True, seeds=3)


def test_sharing_writes_report(sharing_result):
    _check_files(sharing_result, min_rows=10)


def test_sharing_counts(sharing_result):
    cfg = sharing_result.data["config"]
    I, H, O = cfg.input_size, cfg.hidden, cfg.out
    rows = {(r["model"], r["T"]): r for r in sharing_result.tables["main"]}
    Ts = cfg.lengths
    for T in Ts:
        assert rows[("rnn", T)]["params"] == H * (I + H + 1) + O * (H + 1)
        assert rows[("lstm", T)]["params"] == 4 * H * (I + H + 1) + O * (H + 1)
        assert rows[("mlp", T)]["params"] == (T * I + 1) * H + (H + 1) * O
        assert rows[("rnn", T)]["flops_one_output"] == 2 * T * H * (I + H) + 2 * O * H
        assert rows[("mlp", T)]["flops_every_step"] == T * rows[("mlp", T)]["flops_one_output"]
    a, b = Ts[0], Ts[-1]
    assert rows[("gru", a)]["params"] == rows[("gru", b)]["params"]
    assert rows[("cnn", a)]["params"] < rows[("cnn", b)]["params"] < rows[("mlp", b)]["params"]
    # FLOPs from shapes agree with the function on a freshly built model
    m = sharing.build("lstm", 7, cfg, np.random.default_rng(0))
    assert sharing.flops(m, 7) == 7 * 2 * 4 * H * (I + H) + 2 * O * H


# ---------------------------------------------------------------------------------- CLI
def test_cli_errors_and_help(tmp_path, capsys):
    with pytest.raises(RnnlabError, match="unknown experiment"):
        ex.cli_main(["nope", "--out", str(tmp_path)])
    with pytest.raises(RnnlabError, match="--seeds"):
        ex.cli_main(["sharing", "--seeds", "0"])
    with pytest.raises(RnnlabError):
        ex.cli_main(["sharing", "--bogus"])
    assert ex.cli_main(["--help"]) == 0
    assert "rnnlab experiment" in capsys.readouterr().out
    assert set(ex.IMPLEMENTED) == set(ex.REGISTRY)


def test_cli_runs_one_experiment(tmp_path, capsys):
    assert ex.cli_main(["sharing", "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert "sharing:" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} >= {"sharing.md", "sharing.csv", "sharing.png"}


def test_context_mlp_parameters_grow_with_k_and_more_context_helps(tmp_path):
    res = ex.run("context", tmp_path, quick=True, seeds=1)
    params, raw = res.data["params"], res.data["raw"]
    ks = [k for kind, k in params if kind == "mlp"]
    assert ks == sorted(ks) and len(ks) >= 3
    counts = [params[("mlp", k)] for k in ks]
    assert all(b > a for a, b in zip(counts, counts[1:]))  # the window's weights grow with K
    # seeing 16 characters instead of 1 lowers the loss even in the tiny quick run
    assert raw[("mlp", ks[-1])][0] < raw[("mlp", ks[0])][0]
    assert all(math.isfinite(v[0]) for v in raw.values())
    assert {p.name for p in tmp_path.iterdir()} >= {"context.md", "context.csv", "context.png"}


def test_compare_runs_every_model_kind_under_a_budget(tmp_path):
    res = ex.run("compare", tmp_path, quick=True, seeds=1, budget=1.0)
    rows = {r["model"]: r for r in res.tables["main"]}
    assert set(rows) == {"bigram", "mlp", "cnn", "bow", "rnn", "lstm", "gru", "mingru", "minlstm", "transformer"}
    assert all(r["parameters"] > 0 and math.isfinite(r["val_bpc_mean"]) for r in rows.values())
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_parallel_measures_every_model_at_every_length(tmp_path):
    res = ex.run("parallel", tmp_path, quick=True, seeds=1)
    rows = res.data["rows"]
    from rnnlab.experiments.parallel import MODELS, QUICK

    assert {(r["model"], r["T"]) for r in rows} == {(m, T) for m in MODELS for T in QUICK.lengths}
    for m in MODELS:  # every model's activations grow with the sequence, so its traced peak does too
        peaks = [r["peak_mb"] for r in rows if r["model"] == m]
        assert all(b > a > 0 for a, b in zip(peaks, peaks[1:])), (m, peaks)
    assert all(r["step_ms_mean"] > 0 and r["chars_per_s"] > 0 for r in rows)
    assert {p.name for p in tmp_path.iterdir()} >= {"parallel.md", "parallel.csv", "parallel.png"}
