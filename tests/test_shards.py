"""The training step split over threads by batch rows (rnnlab.lm.shards) and Module.replica."""
from __future__ import annotations

import numpy as np
import pytest

from rnnlab.lm.shards import BatchShards, plan_shards
from rnnlab.models import build_model
from rnnlab.nn import cells
from rnnlab.nn.losses import softmax_cross_entropy

V = 13
MODELS = [
    {"model": "lstm", "hidden": 9, "layers": 2, "embed": 5},
    {"model": "gru", "hidden": 7, "layers": 1, "embed": 0},
    {"model": "rnn", "hidden": 8, "layers": 2, "embed": 4},
    {"model": "mlp", "context": 3, "embed": 4, "hidden": 8, "layers": 2},
    {"model": "cnn", "embed": 4, "channels": 6, "layers": 2, "kernel": 2},
    {"model": "bigram"},
]


def model_of(cfg, dtype="float64"):
    return build_model({**cfg, "vocab_size": V, "dtype": dtype}, rng=np.random.default_rng(7))


def random_state(model, B, rng):
    """A non-trivial carried state (hidden states, or the previous chunk's ids)."""
    s = model.initial_state(np, B)
    if s is None:
        return None
    if isinstance(s, tuple):
        return tuple(a + rng.standard_normal(a.shape) for a in s)
    if s.dtype.kind in "iu":
        return rng.integers(0, V, s.shape).astype(s.dtype)
    return s + rng.standard_normal(s.shape)


def unsplit(model, x, y, state, lengths=None):
    """The reference step, written out: forward, mean loss, backward."""
    logits, state_n, cache = model.forward(x, state, lengths=lengths)
    loss, dlogits = softmax_cross_entropy(logits, y)
    model.zero_grad()
    model.backward(dlogits, cache)
    return float(loss), state_n, {k: g.copy() for k, g in model.grads.items()}


def as_list(state):
    return [] if state is None else list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("cfg", MODELS, ids=[c["model"] for c in MODELS])
@pytest.mark.parametrize("shards", [2, 3, 7])
def test_split_step_equals_the_whole_batch_step(cfg, shards):
    """float64: the same loss, gradients and final state as the unsplit step, to rounding, with a
    carried state, unscored (-1) targets and uneven blocks (B = 7)."""
    rng = np.random.default_rng(0)
    model = model_of(cfg)
    T, B = 6, 7
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    y[4:, 2] = -1
    y[:, 5] = -1  # a row with nothing scored
    state = random_state(model, B, rng)
    want_loss, want_state, want = unsplit(model, x, y, state)
    for g in model.grads.values():  # stale values must be overwritten, not added to
        g += 1.0
    with BatchShards(model, shards) as step:
        loss, state_n = step.step(x, y, state, None, np.random.default_rng(1))
    assert float(loss) == pytest.approx(want_loss, rel=1e-13)
    for k in want:
        np.testing.assert_allclose(model.grads[k], want[k], rtol=1e-11, atol=1e-14, err_msg=k)
    for a, b in zip(as_list(state_n), as_list(want_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_split_step_with_padded_lines(cell):
    """A padded batch of items (lengths, -1 targets past each end) gives the unsplit gradients."""
    rng = np.random.default_rng(2)
    model = model_of({"model": cell, "hidden": 6, "layers": 2, "embed": 3})
    T, B = 9, 6
    lengths = np.array([9, 3, 5, 1, 7, 2])
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    for b, n in enumerate(lengths):
        x[n:, b], y[n:, b] = 0, -1
    want_loss, _, want = unsplit(model, x, y, None, lengths)
    with BatchShards(model, 4) as step:
        loss, _ = step.step(x, y, None, lengths, None)
    assert float(loss) == pytest.approx(want_loss, rel=1e-13)
    for k in want:
        np.testing.assert_allclose(model.grads[k], want[k], rtol=1e-11, atol=1e-14, err_msg=k)


def test_split_step_is_deterministic_with_dropout():
    """Dropout masks come from per-shard generators seeded from the caller's rng: the same rng
    state gives bit-identical gradients, a different one different gradients."""
    model = model_of({"model": "lstm", "hidden": 8, "layers": 2, "embed": 4, "dropout": 0.3}, "float32")
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, V, (5, 8)), rng.integers(0, V, (5, 8))
    runs = []
    with BatchShards(model, 2) as step:
        for seed in (11, 11, 12):
            step.step(x, y, None, None, np.random.default_rng(seed))
            runs.append({k: g.copy() for k, g in model.grads.items()})
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])
    with BatchShards(model, 2) as step, pytest.raises(ValueError, match="rng"):
        step.step(x, y, None, None, None)  # dropout without a generator is refused, as unsplit


def test_more_shards_than_rows_and_float32():
    """Asking for more shards than batch rows runs one row per shard; float32 agrees to float32
    rounding."""
    rng = np.random.default_rng(4)
    model = model_of({"model": "gru", "hidden": 16, "layers": 1, "embed": 8}, "float32")
    x, y = rng.integers(0, V, (7, 3)), rng.integers(0, V, (7, 3))
    want_loss, _, want = unsplit(model, x, y, None)
    with BatchShards(model, 8) as step:
        loss, _ = step.step(x, y, None, None, None)
    assert loss.dtype == np.float32
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    for k in want:
        np.testing.assert_allclose(model.grads[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_blas_threads_are_restored_after_a_split_step():
    from threadpoolctl import threadpool_info, threadpool_limits

    model = model_of({"model": "rnn", "hidden": 8, "layers": 1, "embed": 4})
    x = np.zeros((3, 4), np.int64)
    with threadpool_limits(2, user_api="blas"), BatchShards(model, 2) as step:
        before = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
        step.step(x, x, None, None, None)
        after = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    assert before == after and before


def test_replica_shares_parameters_and_owns_gradients():
    model = model_of({"model": "cnn", "embed": 4, "channels": 6, "layers": 2, "kernel": 2})
    twin = model.replica()
    assert twin.params.keys() == model.params.keys() == twin.grads.keys()
    for k in model.params:
        assert twin.params[k] is model.params[k]
        assert twin.grads[k] is not model.grads[k] and not np.shares_memory(twin.grads[k], model.grads[k])
    # children, and attributes naming them (lists included), point at the twin's children, whose
    # gradient arrays are the twin's own
    assert twin.embed is twin.children["embed"] and twin.embed is not model.embed
    assert all(a is b for a, b in zip(twin.convs, [twin.children[n] for n in twin.children if n.startswith("conv")]))
    assert twin.embed.grads["weight"] is twin.grads["embed.weight"]
    model.params["embed.weight"][0, 0] = 42.0  # an optimizer's in-place update reaches both
    assert twin.embed.weight[0, 0] == 42.0
    rng = np.random.default_rng(5)
    x = rng.integers(0, V, (4, 3))
    logits, _, cache = twin.forward(x)
    twin.backward(np.ones_like(logits), cache)
    assert all(not g.any() for g in model.grads.values()) and any(g.any() for g in twin.grads.values())


@pytest.mark.parametrize("cfg, batch, threads, cores, want", [
    ({"model": "lstm", "hidden": 256}, 32, 0, 2, 2),    # the trainer's defaults on 2 cores
    ({"model": "lstm", "hidden": 256}, 32, 0, 16, 4),   # at least 8 rows per shard
    ({"model": "lstm", "hidden": 256}, 7, 0, 8, 1),
    ({"model": "lstm", "hidden": 128}, 32, 0, 2, 1),    # too little work per step to split
    ({"model": "rnn", "hidden": 256}, 32, 0, 2, 1),     # 16 rows x 256*256 = 2^20 < 2^21
    ({"model": "rnn", "hidden": 256}, 64, 0, 2, 2),     # 32 rows: 2^21
    ({"model": "gru", "hidden": 256}, 64, 0, 8, 5),     # 12 rows x 3*256*256 >= 2^21 > 10 rows x ...
    ({"model": "mlp", "hidden": 256}, 64, 0, 8, 1),     # window models leave threading to the BLAS
    ({"model": "bigram"}, 64, 0, 8, 1),
    ({"model": "rnn", "hidden": 4}, 32, 3, 1, 3),       # asked for: exactly that many
    ({"model": "bigram"}, 2, 5, 1, 2),                  # ... but at most one per row
])
def test_plan_shards_python_loop(cfg, batch, threads, cores, want, monkeypatch):
    monkeypatch.setattr(cells, "sequence_loops", lambda xp, dtype: None)
    extra = {} if cfg["model"] == "bigram" else {"layers": 1, "embed": 8}
    model = build_model({**extra, **cfg, "vocab_size": V})
    assert plan_shards(model, batch, threads, cores) == want


@pytest.mark.parametrize("cfg, batch, cores, want", [
    ({"model": "lstm", "hidden": 128}, 32, 2, 2),       # 16 rows x 4*128*128 = 2^20 >= 2^19
    ({"model": "gru", "hidden": 128}, 32, 2, 2),        # 16 rows x 3*128*128 = 786k
    ({"model": "rnn", "hidden": 128}, 32, 2, 1),        # 16 rows x 128*128 = 2^18 < 2^19
    ({"model": "rnn", "hidden": 128}, 64, 4, 2),        # 32 rows: 2^19; 16 rows would be 2^18
    ({"model": "lstm", "hidden": 128}, 32, 4, 4),       # 8 rows x 4*128*128 = 2^19: one per core
    ({"model": "lstm", "hidden": 256}, 7, 8, 1),        # fewer than 8 rows per shard
])
def test_plan_shards_compiled_loops(cfg, batch, cores, want, monkeypatch):
    """With the GIL-free compiled loops, smaller steps are worth splitting."""
    monkeypatch.setattr(cells, "sequence_loops", lambda xp, dtype: object())
    model = build_model({"layers": 1, "embed": 8, **cfg, "vocab_size": V})
    assert plan_shards(model, batch, 0, cores) == want


def test_resume_keeps_the_shard_count_of_the_checkpoint(tmp_path, capsys, monkeypatch):
    """--threads 0 (auto) resolves per machine; a run resumed where auto would pick another count
    keeps the checkpoint's, so it still ends bit-identical to the uninterrupted run."""
    import rnnlab.lm.shards as shards
    from rnnlab.cli import main
    from rnnlab.lm.checkpoint import load_checkpoint

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    opts = ["--model", "gru", "--layers", "1", "--hidden", "12", "--embed", "6", "--batch", "16", "--seq-len", "8",
            "--eval-every", "2", "--quiet", "--threads", "0", "--schedule", "constant"]
    monkeypatch.setattr(shards, "usable_cores", lambda: 2)
    monkeypatch.setattr(shards, "_min_step_work", lambda model: 0)  # split even this tiny model
    assert main(["train", str(text), "--out", str(tmp_path / "straight"), *opts, "--max-steps", "6"]) == 0
    assert main(["train", str(text), "--out", str(tmp_path / "resumed"), *opts, "--max-steps", "3"]) == 0
    first = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")[1]
    assert first["shards"] == 2 and first["step"] == 3
    monkeypatch.setattr(shards, "usable_cores", lambda: 1)  # auto would now mean one shard
    assert main(["train", str(text), "--out", str(tmp_path / "resumed"), "--resume", "--max-steps", "6"]) == 0
    capsys.readouterr()
    a, ma = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b, mb = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert ma["step"] == mb["step"] == 6 and mb["shards"] == 2
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cfg", MODELS, ids=[c["model"] for c in MODELS])
@pytest.mark.parametrize("batch", [7, 2])
def test_split_evaluation_equals_the_whole_batch(cfg, batch):
    """Stream evaluation (the state carried from chunk to chunk along each row) with its rows
    over 3 shards (fewer rows than shards with batch 2) scores the same characters with the
    same total as on one thread, and the other shards' replicas do run."""
    from rnnlab.lm.evaluate import nll_sum

    rng = np.random.default_rng(5)
    model = model_of(cfg)
    ids = rng.integers(0, V, 400)
    want, want_n = nll_sum(model, ids, "stream", batch_size=batch, seq_len=9)
    with BatchShards(model, 3) as shards:
        rows = []  # batch rows each replica saw
        for rep in shards.replicas[1:]:
            rep.forward = lambda x, *a, _f=rep.forward, **k: rows.append(x.shape[1]) or _f(x, *a, **k)
        got, n = nll_sum(model, ids, "stream", batch_size=batch, seq_len=9, shards=shards)
    assert n == want_n == 399
    assert got == pytest.approx(want, rel=1e-13)
    assert rows and set(rows) == ({2, 3} if batch == 7 else {1})  # rows 7 -> 2+2+3; 2 -> 1+1


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_split_evaluation_of_padded_lines_and_eval_mode(cell):
    """Lines evaluation (padded items, lengths split with the rows) agrees with one thread, and
    the replicas follow the model into eval mode after a training step left them in training
    mode (a replica still training with dropout would need a generator and raise)."""
    from rnnlab.data import lines_eval_batches
    from rnnlab.lm.evaluate import nll_sum

    rng = np.random.default_rng(6)
    model = model_of({"model": cell, "hidden": 6, "layers": 2, "embed": 3, "dropout": 0.5})
    items = [rng.integers(1, V, n) for n in (5, 1, 9, 3, 7, 2, 8)]
    want, want_n = nll_sum(model, items, "lines", batch_size=4)
    with BatchShards(model, 2) as shards:
        x, y, lengths = next(lines_eval_batches(items[:4], 4))
        shards.step(x, y, None, lengths, np.random.default_rng(0))  # replicas left in training mode
        got, n = nll_sum(model, items, "lines", batch_size=4, shards=shards)
    assert model.training and n == want_n == sum(len(i) + 1 for i in items)
    assert got == pytest.approx(want, rel=1e-13)


def test_evaluation_refuses_shards_of_another_model():
    from rnnlab.lm.evaluate import nll_sum

    cfg = {"model": "rnn", "hidden": 4, "layers": 1, "embed": 2}
    with BatchShards(model_of(cfg), 2) as shards, pytest.raises(ValueError, match="model"):
        nll_sum(model_of(cfg), np.arange(20) % V, "stream", shards=shards)


def test_training_validates_on_the_training_threads(tmp_path, monkeypatch, capsys):
    """A split run's validation passes go through its BatchShards (one per run), not one thread;
    so does ``rnnlab eval`` of that run."""
    import rnnlab.lm.shards as shards
    from rnnlab.cli import main

    calls = []
    real = shards.BatchShards.loss_sum

    def spy(self, x, y, state=None, lengths=None):
        calls.append((self.shards, x.shape[1]))
        return real(self, x, y, state, lengths)

    monkeypatch.setattr(shards.BatchShards, "loss_sum", spy)
    monkeypatch.setattr(shards, "_min_step_work", lambda model: 0)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    assert main(["train", str(text), "--out", str(tmp_path / "run"), "--model", "gru", "--layers", "1",
                 "--hidden", "12", "--embed", "6", "--batch", "16", "--seq-len", "8", "--eval-every", "3",
                 "--max-steps", "6", "--threads", "2", "--quiet"]) == 0
    assert calls and all(n == 2 and b > 1 for n, b in calls)

    # rnnlab eval plans from the run's --threads too, and scores as one thread does
    import json

    from rnnlab.cli.common import load_run as _load_run
    from rnnlab.lm.evaluate import evaluate

    calls.clear()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), str(text), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert calls and all(n == 2 for n, _ in calls)
    _, cfg, _, vocab, model, _ = _load_run(tmp_path / "run", "best")
    want = evaluate(model, vocab.encode(text.read_text(encoding="utf-8")), "stream", cfg.batch, cfg.seq_len)
    assert got["chars"] == want["chars"] and got["loss_nats"] == pytest.approx(want["loss_nats"], rel=1e-6)


def test_resume_with_threads_changes_the_shard_count_and_says_so(tmp_path, capsys, monkeypatch):
    """``--resume --threads N`` (a run moved to a machine with more or fewer cores) trains on the
    count planned for N, says that the run is no longer bit-identical, and the next checkpoint
    records the new count; the result agrees with the uninterrupted run to rounding."""
    import rnnlab.lm.shards as shards
    from rnnlab.cli import main
    from rnnlab.lm.checkpoint import load_checkpoint

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    opts = ["--model", "gru", "--layers", "1", "--hidden", "12", "--embed", "6", "--batch", "16", "--seq-len", "8",
            "--eval-every", "2", "--schedule", "constant", "--dtype", "float64"]
    monkeypatch.setattr(shards, "_min_step_work", lambda model: 0)
    assert main(["train", str(text), "--out", str(tmp_path / "straight"), *opts, "--quiet", "--threads", "1",
                 "--max-steps", "6"]) == 0
    assert main(["train", str(text), "--out", str(tmp_path / "resumed"), *opts, "--quiet", "--threads", "1",
                 "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["train", str(text), "--out", str(tmp_path / "resumed"), "--resume", "--threads", "2",
                 "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "threads: 2 (the checkpoint trained on 1" in out and "no longer bit-identical" in out
    a, ma = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b, mb = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert ma["shards"] == 1 and mb["shards"] == 2 and mb["step"] == 6
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12, err_msg=k)
