"""The parallel plans of a training step (rnnlab.lm.plan): what each computes, how one is chosen,
and that a run keeps its plan across a resume."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from rnnlab.errors import RnnlabError
from rnnlab.lm import plan as planner
from rnnlab.lm.plan import KINDS, Plan
from rnnlab.lm.shards import BatchShards
from rnnlab.models import build_model
from rnnlab.nn import cells, packed

V = 11
numba = pytest.mark.skipif(not cells.numba_enabled(), reason="the packed plans need numba")


def _model(cell="lstm", dtype="float64", dropout=0.0):
    return build_model({"model": cell, "hidden": 20, "layers": 2, "embed": 5, "dropout": dropout, "vocab_size": V,
                        "dtype": dtype}, rng=np.random.default_rng(3))


def _step(model, plan, x, y, state, lengths=None):
    """Loss, final state and gradients of one step by ``plan``."""
    with plan.batch_shards(model) as shards:
        loss, state_n = shards.step(x, y, state, lengths, np.random.default_rng(5))
    return float(loss), [np.asarray(s).copy() for s in state_n], {k: g.copy() for k, g in model.grads.items()}


def _batch(B=8, T=6, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    y[0, 1] = -1  # an unscored item
    return x, y


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_plan_computes_the_unsplit_step(cell, dtype):
    """Every kind on 1-3 threads gives the unsplit BLAS step's loss, state and gradients to
    rounding (a carried state, an unscored item)."""
    model = _model(cell, dtype)
    x, y = _batch()
    state = tuple(a + 0.5 for a in model.initial_state(np, 8)) if cell == "lstm" else model.initial_state(np, 8) + 0.5
    ref = _step(model, Plan("blas", 1), x, y, state)
    tol = 1e-12 if dtype == "float64" else 3e-5
    for kind in KINDS:
        if kind != "blas" and "packed" in Plan(kind, 2).gemm and not cells.numba_enabled():
            continue
        for n in (1, 2, 3):
            if kind.startswith("split") and n == 1:
                continue
            got = _step(model, Plan(kind, n), x, y, state)
            assert got[0] == pytest.approx(ref[0], rel=tol), (kind, n)
            for a, b in zip(got[1], ref[1]):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{kind} x {n}")
            for k in ref[2]:
                np.testing.assert_allclose(got[2][k], ref[2][k], rtol=tol, atol=tol, err_msg=f"{kind} x {n}: {k}")


@numba
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_gives_the_same_bits_on_any_thread_count_and_split_repeats_itself(cell):
    """The bit-identical families of the module docstring: packed on one thread = packed on any
    count (dropout masks included); a split plan gives the same bits every time it runs with the
    same count."""
    model = _model(cell, "float32", dropout=0.3)
    x, y = _batch(B=9)
    packed = _step(model, Plan("packed", 1), x, y, None)
    for n in (2, 3):
        team = _step(model, Plan("packed", n), x, y, None)
        assert team[0] == packed[0]
        for k in packed[2]:
            np.testing.assert_array_equal(team[2][k], packed[2][k], err_msg=k)
    for kind in ("split", "split-packed"):
        a, b = _step(model, Plan(kind, 3), x, y, None), _step(model, Plan(kind, 3), x, y, None)
        assert a[0] == b[0] and all(np.array_equal(a[2][k], b[2][k]) for k in a[2])
    assert Plan("packed", 4).bits == Plan("packed", 1).bits != Plan("blas", 2).bits
    assert Plan("blas", 1).bits == Plan("blas", 2).bits
    assert Plan("split", 2).bits != Plan("split", 3).bits


def test_candidates_follow_what_can_run(monkeypatch):
    lstm = _model("lstm")
    mlp = build_model({"model": "mlp", "context": 3, "embed": 4, "hidden": 8, "layers": 1, "vocab_size": V})
    assert planner.candidates(mlp, 64, 2) == [Plan("blas", 2)]  # the BLAS threads a window model itself
    def kinds(batch, n):
        return [(p.kind, p.threads) for p in planner.candidates(lstm, batch, n)]

    if cells.numba_enabled():
        assert kinds(64, 1) == [("blas", 1), ("packed", 1)]
        assert kinds(64, 2) == [("blas", 2), ("packed", 1), ("packed", 2), ("split", 2), ("split-packed", 2)]
        assert kinds(15, 2) == [("blas", 2), ("packed", 1), ("packed", 2)]  # fewer than 8 rows per shard
    monkeypatch.setenv("RNNLAB_NO_NUMBA", "1")
    assert kinds(64, 2) == [("blas", 2), ("split", 2)]


def test_choose_times_the_candidates_and_keeps_the_fastest(monkeypatch):
    """The fastest by the measurement wins and the log says which and why; a named plan is taken
    as asked (split on at most one thread per row), one the installation cannot run is refused."""
    model = _model("lstm", "float32")
    fake = {"blas": 3.0, "packed": 1.0, "split": 1.5, "split-packed": 1.2}
    seen = []

    def measure(m, plans, batch, seq_len, **kw):
        seen.append((batch, seq_len, [p.kind for p in plans]))
        return {p: fake[p.kind] / p.threads for p in plans}

    monkeypatch.setattr(planner, "measure", measure)
    monkeypatch.setattr(planner, "usable_cores", lambda: 2)
    lines = []
    got = planner.choose(model, 32, 7, log=lines.append)
    want = "packed" if cells.numba_enabled() else "split"
    assert got == Plan(want, 2) and seen[0][:2] == (32, 7)
    layout = f" ({packed.layout()})" if want == "packed" else ""
    assert lines and lines[0].startswith(f"plan: {want} on 2 threads{layout}, the fastest of")
    assert planner.choose(model, 32, 7, threads=4, plan="split", log=lines.append) == Plan("split", 4)
    assert planner.choose(model, 3, 7, threads=4, plan="split") == Plan("split", 3)
    assert len(seen) == 1  # a named plan is not measured
    with pytest.raises(RnnlabError, match="--plan must be"):
        planner.choose(model, 32, 7, plan="fastest")
    monkeypatch.setenv("RNNLAB_NO_NUMBA", "1")
    with pytest.raises(RnnlabError, match="needs numba"):
        planner.choose(model, 32, 7, plan="packed")


def test_plans_close_together_are_timed_again_in_a_longer_run_off(monkeypatch):
    """The plans within ``RUNOFF`` of the fastest, every one of them, are measured again, with
    more rounds, and that run-off decides (its medians replace theirs); a clear winner is not
    measured again."""
    model = _model("lstm", "float32")
    monkeypatch.setattr(planner, "usable_cores", lambda: 2)
    monkeypatch.setattr(planner, "layout", lambda *a, **k: None)
    calls = []
    first = {"blas@2": 0.5, "packed@1": 1.0, "packed@2": 0.57, "split@2": 0.525, "split-packed@2": 3.0}

    def measure(m, plans, batch, seq_len, **kw):
        calls.append(([p.label for p in plans], kw))
        if len(calls) == 1:
            return {p: first[p.label] for p in plans}
        return {p: {"blas@2": 0.6, "split@2": 0.55, "packed@2": 0.52}[p.label] for p in plans}

    monkeypatch.setattr(planner, "measure", measure)
    best, timed = planner.fastest(model, 32, 7, threads=2)  # the third fastest wins the run-off
    assert best == Plan("packed", 2) and timed[Plan("packed", 2)] == 0.52 and timed[Plan("blas", 2)] == 0.6
    assert len(calls) == 2 and calls[1][0] == ["blas@2", "split@2", "packed@2"]
    assert calls[1][1]["rounds"] == planner.RUNOFF_ROUNDS > 3 and calls[1][1]["min_seconds"] >= 2
    assert all(timed[p] == first[p.label] for p in timed if p.label not in calls[1][0])  # the others keep theirs
    first["split@2"] = first["packed@2"] = 0.6  # 20 % behind: no run-off
    calls.clear()
    assert planner.fastest(model, 32, 7, threads=2)[0] == Plan("blas", 2) and len(calls) == 1


def test_measure_leaves_the_model_as_it_was():
    """Timing the candidates runs forward and backward only: the weights do not move, the
    gradients are cleared, and every candidate gets a time."""
    model = _model("gru", "float32", dropout=0.2)
    before = {k: v.copy() for k, v in model.params.items()}
    plans = planner.candidates(model, 16, 2)
    timed = planner.measure(model, plans, 16, 5, rounds=2)
    assert set(timed) == set(plans) and all(t > 0 for t in timed.values())
    assert all(np.array_equal(before[k], model.params[k]) for k in before)
    assert all(not g.any() for g in model.grads.values())


def test_measure_takes_more_rounds_for_small_steps(monkeypatch):
    """Three rounds when the timed steps already add up to ``min_seconds``; more, up to
    ``max_rounds``, while they do not (per plan: one warm-up step, then in each round one untimed
    step, as no warm-up time is asked for here, and two timed ones)."""
    model = _model("gru", "float32")
    plans = [Plan("blas", 1), Plan("split", 2)]  # two plans: the race keeps both
    monkeypatch.setattr(planner, "WARM_S", 0.0)
    for min_seconds, rounds in ((0.0, 3), (1e9, 7)):
        steps = []
        real = BatchShards.step
        monkeypatch.setattr(BatchShards, "step", lambda self, *a: steps.append(1) or real(self, *a))
        planner.measure(model, plans, 16, 5, rounds=3, min_seconds=min_seconds, max_rounds=7)
        monkeypatch.setattr(BatchShards, "step", real)
        assert len(steps) == len(plans) * (1 + 3 * rounds)


def test_timed_steps_warm_up_for_their_time_or_step_count_then_time_k_steps():
    """At least one untimed step; more until ``warm_s`` has passed or ``warm_steps`` ran, whichever
    comes first; then ``k`` timed ones."""
    calls = []
    assert len(planner.timed_steps(lambda: calls.append(1), 3, warm_s=0.0)) == 3 and len(calls) == 4
    calls.clear()
    assert len(planner.timed_steps(lambda: calls.append(1), 2, warm_s=10.0, warm_steps=5)) == 2 and len(calls) == 7
    calls.clear()
    start = time.perf_counter()
    times = planner.timed_steps(lambda: calls.append(time.perf_counter()) or time.sleep(0.002), 2, warm_s=0.03,
                                warm_steps=10**6)
    assert len(times) == 2 and all(t >= 0.002 for t in times)
    assert len(calls) >= 2 + 2 and calls[-2] - start >= 0.03  # the timed steps start after the warm time


def test_plan_records_round_trip_and_reject_nonsense():
    for kind in KINDS:
        assert Plan.from_dict(Plan(kind, 3).to_dict()) == Plan(kind, 3)
    for bad in ({"kind": "fast", "threads": 2}, {"kind": "packed", "threads": 0}, {"kind": "packed"}, "packed", None):
        with pytest.raises(ValueError):
            Plan.from_dict(bad)


def _train(main, text, out, *extra):
    opts = ["--model", "gru", "--layers", "1", "--hidden", "12", "--embed", "6", "--batch", "16", "--seq-len", "8",
            "--eval-every", "2", "--schedule", "constant", "--quiet"]
    assert main(["train", str(text), "--out", str(out), *opts, *extra]) == 0


@pytest.mark.parametrize("kind", ["split", "packed"])
def test_a_resumed_run_keeps_its_plan_and_its_bits(kind, tmp_path, monkeypatch, capsys):
    """The checkpoint records the plan; a resume without --threads/--plan continues with it even
    where the planner would now choose another, so it ends bit-identical to a straight run."""
    if kind == "packed" and not cells.numba_enabled():
        pytest.skip("the packed plan needs numba")
    from rnnlab.cli import main
    from rnnlab.lm.checkpoint import load_checkpoint

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    _train(main, text, tmp_path / "straight", "--threads", "2", "--plan", kind, "--max-steps", "6")
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path / "cache"))  # nothing remembered from other tests
    monkeypatch.setattr(planner, "usable_cores", lambda: 2)
    monkeypatch.setattr(planner, "measure", lambda m, plans, *a, **k: {
        p: 0.0 if (p.kind, p.threads) == (kind, 2) else 1.0 for p in plans})
    _train(main, text, tmp_path / "resumed", "--max-steps", "3")  # auto: the fake timings pick `kind`
    first = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")[1]
    assert first["plan"] == {"kind": kind, "threads": 2} and first["step"] == 3
    monkeypatch.setattr(planner, "measure", lambda m, plans, *a, **k: {p: 0.0 if p.kind == "blas" else 1.0
                                                                        for p in plans})
    capsys.readouterr()
    assert main(["train", str(text), "--out", str(tmp_path / "resumed"), "--resume", "--max-steps", "6"]) == 0
    assert f"plan: {kind} on 2 threads, as the checkpoint trained" in capsys.readouterr().out
    a, ma = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b, mb = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert ma["step"] == mb["step"] == 6 and mb["plan"] == ma["plan"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_with_another_plan_says_whether_the_bits_change(tmp_path, capsys):
    """--resume --threads/--plan plans again; the run says when the new plan sums in another order
    (and not when it computes alike, e.g. packed on another thread count); the next checkpoint
    records the new plan."""
    from rnnlab.cli import main
    from rnnlab.lm.checkpoint import load_checkpoint

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    _train(main, text, tmp_path / "run", "--threads", "1", "--plan", "blas", "--max-steps", "3")
    capsys.readouterr()
    assert main(["train", str(text), "--out", str(tmp_path / "run"), "--resume", "--threads", "2", "--plan", "split",
                 "--max-steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "plan: split on 2 threads (as asked)" in out and "no longer bit-identical" in out
    meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]
    assert meta["plan"] == {"kind": "split", "threads": 2}
    if cells.numba_enabled():
        _train(main, text, tmp_path / "team", "--threads", "2", "--plan", "packed", "--max-steps", "3")
        capsys.readouterr()
        assert main(["train", str(text), "--out", str(tmp_path / "team"), "--resume", "--threads", "3",
                     "--max-steps", "5", "--plan", "packed"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"plan: packed on 3 threads \(\dx\d tiles\) \(as asked\)", out)
        assert "no longer bit-identical" not in out


@numba
def test_eval_scores_by_the_plan_the_run_trained_with(tmp_path, capsys):
    """`rnnlab eval` runs the checkpoint's plan (here a team of 2, where the rule for --threads 2
    would split the rows), so the run's test split scores exactly the test loss training printed."""
    import json

    from rnnlab.cli import main

    text = tmp_path / "t.txt"
    content = "the quick brown fox jumps over the lazy dog. " * 60
    text.write_text(content, encoding="utf-8")
    run = tmp_path / "run"
    _train(main, text, run, "--threads", "2", "--plan", "packed", "--max-steps", "4", "--test-frac", "0.2")
    n_test = json.loads((run / "config.json").read_text(encoding="utf-8"))["data"]["split_chars"][2]
    tail = tmp_path / "tail.txt"
    tail.write_text(content[-n_test:], encoding="utf-8")
    test_loss = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test_loss"]
    capsys.readouterr()
    assert main(["eval", str(run), str(tail), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss_nats"] == test_loss


def test_checkpoints_from_before_plans_resume_with_their_shard_count():
    from rnnlab.lm.trainer import saved_plan_of

    assert saved_plan_of({"shards": 3}) == Plan("split", 3)
    assert saved_plan_of({"shards": 1}).kind == "blas" and saved_plan_of({}).kind == "blas"
    assert saved_plan_of({"plan": {"kind": "packed", "threads": 2}, "shards": 1}) == Plan("packed", 2)


def test_auto_remembers_the_choice_per_machine_and_shape(tmp_path, monkeypatch):
    """The first auto run measures and remembers; the next run of the same shape takes the same
    plan without timing; another shape, or plan="measure", times again; a damaged cache file is
    measured over."""
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(planner, "usable_cores", lambda: 2)
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (0.5, 0.5, 0.5))  # a quiet machine
    calls = []
    order = iter(["split", "blas", "blas", "split"])

    def measure(m, plans, batch, seq_len, **kw):
        fast = next(order)
        calls.append(fast)
        return {p: 0.0 if p.kind == fast else 1.0 for p in plans}

    monkeypatch.setattr(planner, "measure", measure)
    model = _model("lstm", "float32")
    lines = []
    assert planner.choose(model, 32, 7, log=lines.append).kind == "split" and len(calls) == 1
    assert planner.choose(model, 32, 7, log=lines.append).kind == "split" and len(calls) == 1
    assert "the fastest when measured on this machine" in lines[-1]
    assert planner.choose(model, 32, 8).kind == "blas" and len(calls) == 2  # another shape
    assert planner.choose(model, 32, 7, plan="measure").kind == "blas" and len(calls) == 3
    assert planner.choose(model, 32, 7).kind == "blas" and len(calls) == 3  # the new choice is remembered
    planner.cache_path().write_text("{not json", encoding="utf-8")
    assert planner.choose(model, 32, 7).kind == "split" and len(calls) == 4


def test_time_layouts_times_each_layout_and_puts_the_fastest_in_force(monkeypatch):
    """:func:`plan.time_layouts` calls the work once per layout of :data:`packed.LAYOUTS` (the
    tiles) untimed, then in alternating rounds, more of them while the calls are short, and
    leaves the layout with the shortest median in force."""
    monkeypatch.setattr(packed, "TILE", packed.TILE)  # restored after the test
    assert len(packed.LAYOUTS) == 2 and set(packed.LAYOUTS.values()) == {0, 1}
    fast = list(packed.LAYOUTS)[1]
    seen = []
    clock = [0.0]
    monkeypatch.setattr(planner.time, "perf_counter", lambda: clock[0])

    def run():  # the fast layout takes 0.01 s a call, the other 0.05 s; its call in round 2 takes 0.3 s
        seen.append(packed.layout())
        clock[0] += 0.3 if len(seen) == 6 else 0.01 if seen[-1] == fast else 0.05
    best, med = planner.time_layouts(run, rounds=2, min_seconds=0.5, max_rounds=9)
    assert best == fast and packed.layout() == fast and packed.TILE == packed.LAYOUTS[fast]
    assert seen == list(packed.LAYOUTS) * 5  # one untimed round, then rounds until 0.5 s: 0.06 + 0.35 + 0.06 * 2
    assert med[fast] == pytest.approx(0.01) and all(med[k] == pytest.approx(0.05) for k in med if k != fast)
    for name in packed.LAYOUTS:
        packed.set_layout(name)
        assert packed.layout() == name


@numba
def test_the_layout_is_timed_once_per_shape_and_remembered(tmp_path, monkeypatch):
    """Before the candidates are timed, the packed kernel's layouts (its tiles) are, on
    the model's training step by the packed plan on one thread, and the fastest is remembered for
    this machine and shape: a later run, or a packed plan named by ``--plan``, puts it in force
    without timing; another shape, ``plan="measure"`` or a lost entry times again. The timing
    leaves the model's gradients at zero. The log line names the layout; a non-packed plan has none."""
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(planner, "usable_cores", lambda: 2)
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(packed, "TILE", packed.TILE)  # restored after the test
    timed = []
    real = planner.time_layouts

    def time_layouts(run, **kw):
        timed.append(run)
        tiles = []
        real_matmul = packed.matmul
        monkeypatch.setattr(packed, "matmul", lambda *a, **k: tiles.append(packed.TILE) or real_matmul(*a, **k))
        best = real(run, rounds=1, min_seconds=0)
        monkeypatch.setattr(packed, "matmul", real_matmul)
        assert set(tiles) == {0, 1}  # the step ran under each layout
        return best

    monkeypatch.setattr(planner, "time_layouts", time_layouts)
    monkeypatch.setattr(planner, "measure", lambda m, plans, b, t, **kw: {p: 0.0 if p == Plan("packed", 2) else 1.0
                                                                          for p in plans})
    model = _model("lstm", "float32")
    lines = []
    assert planner.choose(model, 32, 7, log=lines.append) == Plan("packed", 2)
    assert len(timed) == 1 and all(not g.any() for g in model.grads.values())
    chosen = packed.layout()
    assert chosen in packed.LAYOUTS and f"({chosen})" in lines[-1]
    other = next(k for k in packed.LAYOUTS if k != chosen)
    packed.set_layout(other)
    assert planner.choose(model, 32, 7, log=lines.append) == Plan("packed", 2) and len(timed) == 1
    assert packed.layout() == chosen and f"({chosen})" in lines[-1]
    packed.set_layout(other)
    assert planner.choose(model, 32, 7, plan="packed", log=lines.append) == Plan("packed", 2) and len(timed) == 1
    assert packed.layout() == chosen and f"({chosen})" in lines[-1]
    assert planner.choose(model, 32, 7, plan="blas", log=lines.append) == Plan("blas", 2) and "tiles" not in lines[-1]
    assert planner.choose(model, 16, 7, plan="split-packed") == Plan("split-packed", 2) and len(timed) == 2
    assert planner.choose(model, 32, 7, plan="measure") == Plan("packed", 2) and len(timed) == 3
    data = json.loads(planner.cache_path().read_text())
    layouts = [k for k, v in data.items() if "layout" in v]
    assert len(layouts) == 2 and all(data[k]["layout"] in packed.LAYOUTS for k in layouts)
    for k in layouts:
        del data[k]
    planner.cache_path().write_text(json.dumps(data), encoding="utf-8")
    assert planner.choose(model, 32, 7) == Plan("packed", 2) and len(timed) == 4  # the plan kept, the layout timed


def test_a_choice_timed_on_a_busy_machine_is_not_remembered(tmp_path, monkeypatch):
    """With the load average above the usable cores the run gets the measured plan and the log
    says why it is not remembered; the next run measures again, and a quiet one remembers."""
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(planner, "usable_cores", lambda: 2)
    calls = []

    def measure(m, plans, batch, seq_len, **kw):
        calls.append(1)
        return {p: 0.0 if p.kind == "split" else 1.0 for p in plans}

    monkeypatch.setattr(planner, "measure", measure)
    model = _model("lstm", "float32")
    lines = []
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    assert planner.choose(model, 32, 7, log=lines.append).kind == "split"
    assert "the machine is busy (load 3.5 on 2 cores)" in lines[-1] and not planner.cache_path().exists()
    assert planner.choose(model, 32, 7).kind == "split" and len(calls) == 2  # measured again
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    planner.choose(model, 32, 7)
    assert len(calls) == 3 and planner.cache_path().exists()
    planner.choose(model, 32, 7)
    assert len(calls) == 3  # remembered


@numba
def test_the_whole_products_schedules_are_remembered_per_machine(tmp_path, monkeypatch):
    """The schedules the whole products timed (:func:`packed.chosen`) are remembered for this
    machine when the plan is chosen, and a later process puts them in force before its first
    product (or before it times the plans of a new shape), which then runs the remembered
    schedule alone instead of timing the candidates; entries of another form (an older
    version's) or damaged ones are skipped, a schedule timed in the process wins over a
    remembered one, and once the process found the machine busy it remembers nothing until its
    next choice of a plan."""
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(planner, "usable_cores", lambda: 2)
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(packed, "TILE", packed.TILE)  # restored after the test
    monkeypatch.setattr(packed, "_CHOSEN", {})
    monkeypatch.setattr(planner, "measure", lambda m, plans, b, t, **kw: {p: 0.0 if p == Plan("packed", 1) else 1.0
                                                                          for p in plans})
    model = _model("lstm", "float32")
    assert planner.choose(model, 32, 7, threads=1) == Plan("packed", 1)
    timed = packed.chosen()
    assert timed  # the layout's timing ran the step's whole products
    data = json.loads(planner.cache_path().read_text())
    entry = next(v for k, v in data.items() if "schedules" in v)
    assert {tuple(k): tuple(s) for k, s in entry["schedules"]} == timed

    monkeypatch.setattr(packed, "_CHOSEN", {})  # a new process
    other = next(k for k in timed if k[3])  # a dA^T h product
    fast = next(s for s in packed.candidates(other[3], other[4]) if s != timed[other])
    monkeypatch.setitem(packed._CHOSEN, other, fast)  # timed in this process already: kept
    entry["schedules"] += [[[64, 512, 16, True, True, "<f4", 0, 1], [False, "rows", 128, False]],  # the form
                           [[64, 512, 16, True, True, "<f4", 1], [1, False, "rows", 128]],  # before d72d4c2
                           "damaged", [[1, 2], [3]], [None, None], [[64, 512, 16, True, True, "<f4", 1], [9, False,
                                                                                               "rows", 128, False]]]
    planner.cache_path().write_text(json.dumps(data), encoding="utf-8")
    assert planner.load_schedules() == len(timed) - 1
    assert packed.chosen() == {**timed, other: fast}
    monkeypatch.setattr(packed, "_CHOSEN", {})
    assert planner.choose(model, 32, 9, threads=1) == Plan("packed", 1)  # a new shape, its plans timed
    assert packed.chosen().items() >= timed.items()  # with the remembered schedules in force
    monkeypatch.setattr(packed, "_CHOSEN", {**timed, other: fast})

    ran, calls = [], []
    for order, fn in dict(packed.SCHEDULES).items():
        monkeypatch.setitem(packed.SCHEDULES, order, lambda *a, fn=fn: ran.append(a[-3:-1]) or fn(*a))
    real = packed.matmul
    monkeypatch.setattr(packed, "matmul", lambda *a, **k: calls.append(packed.key(a[0], a[1])) or real(*a, **k))
    with planner.Plan("packed", 1).batch_shards(model) as shards:  # a step of the remembered shape
        x, y = _batch(B=32, T=7)
        shards.step(x, y, None, None, np.random.default_rng(1))
    assert calls and len(ran) == len(calls)  # one run per product: none timed the candidates
    assert ran == [packed.chosen()[k][0::3] for k in calls] and packed.chosen() == {**timed, other: fast}

    monkeypatch.setattr(packed, "_CHOSEN", {})
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (3.5, 3.0, 2.0))  # busy: nothing is written
    before = planner.cache_path().read_text()
    packed.matmul(np.ones((40, 300), np.float32), np.ones((300, 16), np.float32), np.empty((40, 16), np.float32))
    planner.save_schedules()
    assert planner.cache_path().read_text() == before
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (0.5, 0.5, 0.5))  # quiet again, but timed busy
    planner.save_schedules()
    assert planner.cache_path().read_text() == before
    known = _remembered(planner)
    planner.choose(model, 32, 7, threads=1, plan="measure")  # a new choice, on a quiet machine
    assert _remembered(planner) == {**known, **packed.chosen()} != known  # the 40 x 300 product's among them


def _remembered(planner):
    return planner._remembered_schedules(json.loads(planner.cache_path().read_text()))


@numba
def test_a_damaged_schedules_entry_is_timed_again(tmp_path, monkeypatch):
    """A plan cache whose schedules entry is valid JSON of the wrong shape loads nothing and is
    written over by the next save."""
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(planner.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(packed, "_CHOSEN", {})
    for bad in (None, 3, True, {"a": 1}, [[1]]):
        planner.cache_path().parent.mkdir(parents=True, exist_ok=True)
        planner.cache_path().write_text(json.dumps({planner._schedules_key(): {"schedules": bad}}), encoding="utf-8")
        assert planner.load_schedules() == 0 and packed.chosen() == {}
    packed.matmul(np.ones((40, 300), np.float32), np.ones((300, 16), np.float32), np.empty((40, 16), np.float32))
    planner.save_schedules()
    assert _remembered(planner) == packed.chosen() and len(packed.chosen()) == 1
