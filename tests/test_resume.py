"""Resume that never surprises, and training to a time budget.

- The command that started a run, with ``--resume`` added, continues it: options equal to the
  saved ones are accepted; another value is refused, naming the saved and the given value.
- ``--resume-or-start``: one command line for a job script's first start and every restart.
- Every option that may change on resume (``--max-steps``, ``--max-time``, ``--eval-every``,
  ``--device``, ``--threads``), with values below, at and above what the run had done, after a
  real SIGKILL at a random (seeded) moment.
- Every model kind resumes bit-identically (rnn, lstm, gru, mlp, cnn, bigram).
- ``--max-time``: the run uses its whole budget unless ``--max-steps`` is given too, the
  learning-rate schedule follows the share of the budget, compiling kernels is not charged to it,
  and a resumed run whose budget is already spent says so instead of crashing.

Time-budget tests run on a fake clock (each training step advances it by a fixed amount), so
they check exact step counts and rates without depending on the machine's speed.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import (RNNLAB, TINY, assert_one_line_error, assert_same_tensors, best_of, cli, file_bytes, last_of,
                      run_cli, step_of, wait_for, write_texts)

import rnnlab.lm.trainer as trainer_mod
from rnnlab.lm.checkpoint import load_checkpoint
from rnnlab.lm.trainer import Trainer


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    return write_texts(tmp_path_factory.mktemp("texts"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------ the same command again
def test_the_starting_command_with_resume_added_continues_the_run(texts, tmp_path, capsys):
    """A job script reruns its command line with --resume after a crash: every option equals the
    saved one, so it is accepted, and the run ends bit-identical to one that never stopped."""
    opts = [*TINY, "--lr", "0.003", "--schedule", "constant", "--eval-every", "2", "--seed", "7"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert cli(capsys, "train", texts["en"], "--out", run, *opts, "--max-steps", "4", "--quiet")[0] == 0
    rc, out, err = cli(capsys, "train", texts["en"], "--out", run, *opts, "--max-steps", "8", "--resume")
    assert rc == 0, err
    assert "resuming at step 4" in out
    assert cli(capsys, "train", texts["en"], "--out", ref, *opts, "--max-steps", "8", "--quiet")[0] == 0
    for which in (last_of, best_of):
        assert_same_tensors(which(run), which(ref))


@pytest.mark.parametrize("option, value, saved", [("--hidden", "32", "16"), ("--lr", "0.01", "0.003"),
                                                  ("--dropout", "0.2", "0"), ("--lines", None, "off")])
def test_resume_refuses_a_changed_option_naming_both_values(option, value, saved, texts, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", texts["en"], "--out", run, *TINY, "--lr", "0.003", "--max-steps", "2",
               "--quiet")[0] == 0
    before = file_bytes(run)
    rc, out, err = cli(capsys, "train", texts["en"], "--out", run, "--resume", option,
                       *([] if value is None else [value]))
    shown = "on" if value is None else value
    assert_one_line_error(rc, out, err, f"{option} {shown} (the run has {saved})", "--force")
    assert file_bytes(run) == before


def test_resume_or_start_is_one_command_for_every_start(texts, tmp_path, capsys):
    """First call: no run there, so it starts one. Later calls: continue it, also after a kill
    before the first checkpoint (config and vocabulary only), which is started again."""
    run = tmp_path / "run"
    cmd = ["train", texts["en"], "--out", run, *TINY, "--schedule", "constant", "--eval-every", "2",
           "--resume-or-start"]
    rc, out, err = cli(capsys, *cmd, "--max-steps", "4")
    assert rc == 0, err
    assert "new run: nothing to resume" in out and step_of(last_of(run)) == 4
    rc, out, err = cli(capsys, *cmd, "--max-steps", "6")
    assert rc == 0, err
    assert "resuming at step 4" in out and step_of(last_of(run)) == 6
    ref = tmp_path / "ref"
    assert cli(capsys, "train", texts["en"], "--out", ref, *cmd[4:-1], "--max-steps", "6", "--quiet")[0] == 0
    assert_same_tensors(last_of(run), last_of(ref))
    # a run killed before its first checkpoint: nothing to continue, so it starts anew
    shutil.rmtree(run / "checkpoints")
    rc, out, err = cli(capsys, *cmd, "--max-steps", "6")
    assert rc == 0, err
    assert "new run" in out and len(list(run.glob("replaced-*"))) == 1
    assert_same_tensors(last_of(run), last_of(ref))
    # a trained model with no checkpoint to continue from (an imported model has only best):
    # refused in one line, nothing moved or written
    (run / "checkpoints" / "last.safetensors").unlink()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    rc, out, err = cli(capsys, *cmd, "--max-steps", "8")
    assert_one_line_error(rc, out, err, "--resume-or-start will not replace it")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


@pytest.mark.parametrize("other", ["--resume", "--force"])
def test_resume_or_start_excludes_resume_and_force(other, texts, tmp_path, capsys):
    rc, out, err = cli(capsys, "train", texts["en"], "--out", tmp_path / "run", *TINY, "--resume-or-start", other)
    assert_one_line_error(rc, out, err, "--resume-or-start", other)
    assert not (tmp_path / "run").exists()


def test_resume_where_nothing_exists_points_to_resume_or_start(texts, tmp_path, capsys):
    rc, out, err = cli(capsys, "train", texts["en"], "--out", tmp_path / "none", "--resume")
    assert_one_line_error(rc, out, err, "nothing to resume", "--resume-or-start")


# ------------------------------------------------------------------------------------ every model kind
KINDS = {
    "rnn": ["--model", "rnn", "--layers", "2", "--hidden", "16", "--embed", "8", "--dropout", "0.1"],
    "gru": ["--model", "gru", "--layers", "2", "--hidden", "16", "--embed", "8", "--dropout", "0.1"],
    "lstm": ["--model", "lstm", "--layers", "1", "--hidden", "16", "--embed", "0"],
    "mlp": ["--model", "mlp", "--layers", "2", "--hidden", "16", "--embed", "8", "--context", "4", "--dropout", "0.1"],
    "cnn": ["--model", "cnn", "--layers", "2", "--hidden", "8", "--embed", "8", "--kernel", "2"],
    "bigram": ["--model", "bigram"],
    "mingru": ["--model", "mingru", "--layers", "2", "--hidden", "16", "--embed", "8", "--dropout", "0.1"],
    "minlstm": ["--model", "minlstm", "--layers", "1", "--hidden", "16", "--embed", "8"],
    "bow": ["--model", "bow", "--hidden", "16", "--embed", "8"],
    "transformer": ["--model", "transformer", "--layers", "1", "--hidden", "16", "--heads", "2", "--embed", "8",
                    "--dropout", "0.1"],
}


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_model_kind_resumes_bit_identically(kind, mode, texts, tmp_path, capsys, monkeypatch):
    """Ctrl-C after step 3, then --resume: last and best equal those of a run that went straight
    through (weights, optimizer slots, carried state and window contexts, generator)."""
    text = texts["en"] if mode == "stream" else texts["names"]
    opts = [*KINDS[kind], "--batch", "4", "--seq-len", "8", "--max-steps", "7", "--eval-every", "2",
            "--lr", "0.01", "--quiet", *(["--lines"] if mode == "lines" else [])]
    assert cli(capsys, "train", text, "--out", tmp_path / "straight", *opts)[0] == 0
    real_step = Trainer.train_step

    def step_then_ctrl_c(self):
        loss = real_step(self)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    rc, out, err = cli(capsys, "train", text, "--out", tmp_path / "resumed", *opts)
    monkeypatch.undo()
    assert rc == 0 and "interrupted at step 3" in out, err
    rc, _, err = cli(capsys, "train", text, "--out", tmp_path / "resumed", "--resume", "--quiet")
    assert rc == 0, err
    for which in (last_of, best_of):
        assert_same_tensors(which(tmp_path / "straight"), which(tmp_path / "resumed"))


# ------------------------------------------------------------------------------------ time budgets (fake clock)
class FakeClock:
    """Stands in for the trainer's ``time`` module: ``perf_counter`` reads a number that only the
    test advances."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """Each training step takes exactly 1/4 s; compiling kernels takes 100 s."""
    import rnnlab.lm.warmup as warmup

    c = FakeClock()
    monkeypatch.setattr(trainer_mod, "time", c)
    real_step, real_warm = Trainer.train_step, warmup.warm_up

    def step(self):
        loss = real_step(self)
        c.now += 0.25
        return loss

    def warm_up(model, shards, cfg, corpus, notify=None):
        c.now += 100.0
        real_warm(model, shards, cfg, corpus)
        return 100.0

    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setattr(warmup, "warm_up", warm_up)
    return c


def cosine(share, lr=0.01, min_lr=1e-4):
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * share))


def test_max_time_uses_the_whole_budget_and_the_schedule_follows_it(clock, texts, tmp_path, capsys):
    """--max-time 2 with steps of 1/4 s: exactly 8 steps (the 100 s of compilation are not
    charged), and after step k the rate is the cosine at the budget's share (k - 1) / 8 that the
    schedule saw (the time of the steps before)."""
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "train", texts["en"], "--out", run, *TINY, "--max-time", "2", "--warmup", "0",
                       "--lr", "0.01", "--eval-every", "1", "--quiet")
    assert rc == 0, err
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))["train"]
    assert cfg["max_steps"] == 0 and cfg["max_time"] == 2.0
    rec = [r for r in metrics(run) if "lr" in r]
    assert [r["step"] for r in rec] == list(range(1, 9))
    for r in rec:
        assert r["lr"] == pytest.approx(cosine((r["step"] - 1) / 8), rel=1e-12), r
    assert load_checkpoint(last_of(run))[1]["elapsed"] == pytest.approx(2.0)
    assert "trained 8 steps in 2 s" in out and "compiling the kernels took 100.0 s before that (not counted)" in out


def test_max_steps_given_with_max_time_stops_first_and_shares_the_schedule(clock, texts, tmp_path, capsys):
    """Both limits: whichever comes first ends the run, and the schedule follows the larger share."""
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", texts["en"], "--out", run, *TINY, "--max-time", "2", "--max-steps", "4",
                     "--warmup", "0", "--lr", "0.01", "--eval-every", "1", "--quiet")
    assert rc == 0, err
    rec = [r for r in metrics(run) if "lr" in r]
    assert [r["step"] for r in rec] == list(range(1, 5))
    for r in rec:  # the step share k/4 is ahead of the time share (k-1)/8
        assert r["lr"] == pytest.approx(cosine(r["step"] / 4), rel=1e-12), r


def test_resume_with_a_spent_budget_says_so_and_changes_nothing(clock, texts, tmp_path, capsys):
    """The crash of the progress bar ("unsupported format string passed to NoneType.__format__")
    when the time already trained exceeds the new --max-time: now one clear line, exit 0."""
    run = tmp_path / "run"
    assert cli(capsys, "train", texts["en"], "--out", run, *TINY, "--max-time", "2", "--quiet")[0] == 0
    before = file_bytes(run)
    for limit in ("1", "2"):  # below and at the 2 s already trained
        rc, out, err = cli(capsys, "train", texts["en"], "--out", run, "--resume", "--max-time", limit)
        assert rc == 0 and err == "", err
        assert f"already reached its limit (2 s of --max-time {limit} s)" in out
        assert file_bytes(run) == before
    rc, out, err = cli(capsys, "train", texts["en"], "--out", run, "--resume", "--max-time", "3", "--quiet")
    assert rc == 0, err
    assert step_of(last_of(run)) == 12  # 4 more steps of 1/4 s


def test_a_changed_budget_moves_the_schedule_to_its_share(clock, texts, tmp_path, capsys):
    """Resumed with a longer budget, the rate continues from the share of the new budget."""
    run = tmp_path / "run"
    opts = [*TINY, "--warmup", "0", "--lr", "0.01", "--eval-every", "1", "--quiet"]
    assert cli(capsys, "train", texts["en"], "--out", run, *opts, "--max-time", "2")[0] == 0
    assert cli(capsys, "train", texts["en"], "--out", run, "--resume", "--max-time", "4", "--quiet")[0] == 0
    rec = {r["step"]: r["lr"] for r in metrics(run) if "lr" in r}
    assert sorted(rec) == list(range(1, 17))
    for k in range(9, 17):
        assert rec[k] == pytest.approx(cosine((k - 1) / 16), rel=1e-12), k


# ------------------------------------------------------------------------------------ overrides after SIGKILL
@pytest.fixture(scope="module", params=[11, 23], ids=["kill-seed-11", "kill-seed-23"])
def killed_run(request, texts, tmp_path_factory):
    """A real training process (two threads, a checkpoint every 2 steps) killed with SIGKILL at a
    random moment after its first checkpoint; returns the run directory and its options. float64,
    so that a resume on another thread count agrees with the uninterrupted run to 1e-9."""
    rng = random.Random(request.param)
    run = tmp_path_factory.mktemp("killed") / "run"
    opts = [*TINY, "--schedule", "constant", "--eval-every", "2", "--threads", "2", "--plan", "split",
            "--dtype", "float64", "--max-steps", "1000000"]
    proc = subprocess.Popen([*RNNLAB, "train", str(texts["en"]), "--out", str(run), *opts, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: last_of(run).is_file(), proc, what="the first checkpoint")
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return run, opts


def resume_copy(killed, tmp_path, capsys, texts, *args):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    rc, out, err = cli(capsys, "train", texts["en"], "--out", run, "--resume", *args)
    return run, rc, out, err


def straight(texts, tmp_path, capsys, opts, steps, name="ref"):
    ref = tmp_path / name
    if not ref.exists():
        assert cli(capsys, "train", texts["en"], "--out", ref, *opts[:-2], "--max-steps", steps, "--quiet")[0] == 0
    return ref


@pytest.mark.parametrize("relation", ["below", "at", "above"])
def test_resume_max_steps_after_sigkill(relation, killed_run, texts, tmp_path, capsys):
    killed, opts = killed_run
    done = step_of(last_of(killed))
    target = {"below": done - 1, "at": done, "above": done + 3}[relation]
    run, rc, out, err = resume_copy(killed, tmp_path, capsys, texts, "--max-steps", target)
    assert rc == 0 and err == "", err
    if relation == "above":
        assert step_of(last_of(run)) == target
        ref = straight(texts, tmp_path, capsys, opts, target)
        for which in (last_of, best_of):
            assert_same_tensors(which(run), which(ref))
    else:
        assert f"already reached its limit (step {done:,} of --max-steps {target:,})" in out
        assert file_bytes(run) == file_bytes(killed)


def test_resume_on_other_threads_with_its_limit_reached(killed_run, texts, tmp_path, capsys):
    """A new --threads (so no plan from the checkpoint) on a run whose limit is reached: it says
    so, scores the test split and changes nothing."""
    killed, _ = killed_run
    done = step_of(last_of(killed))
    run, rc, out, err = resume_copy(killed, tmp_path, capsys, texts, "--threads", "1", "--max-steps", done)
    assert rc == 0 and err == "", err
    assert "already reached its limit" in out and "test loss" in out
    assert file_bytes(run) == file_bytes(killed)


@pytest.mark.parametrize("relation", ["below", "at", "above"])
def test_resume_max_time_after_sigkill(relation, killed_run, texts, tmp_path, capsys):
    killed, _ = killed_run
    meta = load_checkpoint(last_of(killed))[1]
    elapsed, done = meta["elapsed"], meta["step"]
    limit = {"below": elapsed / 2, "at": elapsed, "above": elapsed + 0.5}[relation]
    run, rc, out, err = resume_copy(killed, tmp_path, capsys, texts, "--max-time", repr(limit))
    assert rc == 0 and err == "", err
    if relation == "above":
        meta = load_checkpoint(last_of(run))[1]
        assert meta["step"] > done and meta["elapsed"] >= limit
    else:
        assert "already reached its limit" in out and "--max-time" in out
        assert file_bytes(run) == file_bytes(killed)


@pytest.mark.parametrize("relation, every", [("below", 1), ("at", 2), ("above", 3)])
def test_resume_eval_every_after_sigkill(relation, every, killed_run, texts, tmp_path, capsys):
    """The run checkpointed every 2 steps; resumed with 1, 2 or 3 it validates and saves on the
    multiples of the new value, and the weights are those of the uninterrupted run."""
    killed, opts = killed_run
    done = step_of(last_of(killed))
    target = done + 6
    run, rc, out, err = resume_copy(killed, tmp_path, capsys, texts, "--eval-every", every, "--max-steps", target,
                                    "--quiet")
    assert rc == 0, err
    saved = [r["step"] for r in metrics(run) if "val_loss" in r and r["step"] > done]
    assert saved == sorted({s for s in range(done + 1, target + 1) if s % every == 0} | {target})
    ref = straight(texts, tmp_path, capsys, opts, target)
    assert_same_tensors(last_of(run), last_of(ref))


@pytest.mark.parametrize("relation, threads", [("below", 1), ("at", 2), ("above", 3)])
def test_resume_threads_after_sigkill(relation, threads, killed_run, texts, tmp_path, capsys):
    """The run trained on 2 threads (the batch's rows split in 2 shards); resumed on 1, 2 or 3 it
    records the new plan and agrees with the uninterrupted run: exactly at the same count, to
    rounding otherwise (the shards' gradients are added in another grouping), and says so."""
    killed, opts = killed_run
    target = step_of(last_of(killed)) + 4
    run, rc, out, err = resume_copy(killed, tmp_path, capsys, texts, "--threads", threads, "--plan", "split",
                                    "--max-steps", target)
    assert rc == 0, err
    assert ("no longer bit-identical" in out) == (threads != 2)
    tensors, meta = load_checkpoint(last_of(run))
    assert meta["plan"] == {"kind": "split", "threads": threads} and meta["step"] == target
    ref = straight(texts, tmp_path, capsys, opts, target)
    if threads == 2:
        assert_same_tensors(last_of(run), last_of(ref))
    else:
        want = load_checkpoint(last_of(ref))[0]
        for k, v in want.items():
            np.testing.assert_allclose(tensors[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


def test_resume_device_after_sigkill(killed_run, texts, tmp_path, capsys):
    """--device cpu (the run's own) continues exactly. --device cuda (in a separate process, so
    that this one stays on the CPU) continues on a GPU where CuPy works, and is refused in one
    line, changing nothing, where it does not."""
    killed, opts = killed_run
    target = step_of(last_of(killed)) + 2
    run, rc, out, err = resume_copy(killed, tmp_path, capsys, texts, "--device", "cpu", "--max-steps", target,
                                    "--quiet")
    assert rc == 0, err
    assert_same_tensors(last_of(run), last_of(straight(texts, tmp_path, capsys, opts, target)))
    gpu_run = tmp_path / "gpu"
    shutil.copytree(killed, gpu_run)
    p = run_cli("train", texts["en"], "--out", gpu_run, "--resume", "--device", "cuda", "--max-steps", target,
                "--quiet")
    if p.returncode == 0:
        assert step_of(last_of(gpu_run)) == target
    else:
        assert_one_line_error(p.returncode, p.stdout, p.stderr, "cuda")
        assert file_bytes(gpu_run) == file_bytes(killed)
