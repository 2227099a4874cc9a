"""Faults: Ctrl-C, SIGKILL at random moments, NaN/Inf, a full disk, an unwritable or busy run
directory, large inputs and long samples.

Processes that must really die are real subprocesses (``python -m rnnlab``, so they run wherever
the tests run, whether or not a console script is installed);
faults that cannot be caused for real on a test machine (a full disk, a read-only directory
when the tests run as root) are injected by monkeypatching the file layer, in-process.
Nothing here waits a fixed time for something to happen: tests poll for files with a timeout.

What each test proves is listed in docs/reliability.md.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import (RNNLAB, assert_one_line_error, assert_same_tensors, cli, english_text, file_bytes, file_id,
                      last_of, temporaries, wait_for)

import rnnlab.io as rio
from rnnlab.io import read_jsonl
from rnnlab.lm.checkpoint import load_checkpoint, save_checkpoint
from rnnlab.lm.rundir import RunDir
from rnnlab.lm.trainer import read_run

TINY = ["--model", "lstm", "--layers", "1", "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8",
        "--dropout", "0", "--quiet"]  # every size option given: no automatic choice (lm/auto.py) depends on --max-steps
HAS_PROC = Path("/proc/self/status").is_file() and Path("/proc/self/fd").is_dir()


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture
def text(tmp_path) -> Path:
    p = tmp_path / "en.txt"
    p.write_text(english_text(), encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------ Ctrl-C and the lock
def test_ctrl_c_checkpoints_exits_0_and_resume_continues_exactly(text, tmp_path, capsys):
    """A real SIGINT to a real training process: exit 0, a message that says how to resume, and
    the resumed run ends bit-identical to a run that was never interrupted. While the process
    trains, the run directory is locked against a second trainer but readable by `sample`."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    opts = [*TINY, "--schedule", "constant", "--eval-every", "2"]
    proc = subprocess.Popen([*RNNLAB, "train", str(text), "--out", str(run), *opts, "--max-steps", "1000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: last_of(run).is_file(), proc, what="the first checkpoint")
        rc, out, err = cli(capsys, "train", text, "--out", run, "--resume", "--quiet")
        assert_one_line_error(rc, out, err, "in use by another rnnlab process", f"pid {proc.pid}",
                              "wait for it to finish")
        rc, out, err = cli(capsys, "sample", run, "--checkpoint", "last", "--length", "20", "--seed", "0")
        assert rc == 0 and len(out) == 1 + 20 + 1, err
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and f"rnnlab train {text} --out {run} --resume" in out
    assert "Traceback" not in err
    step = load_checkpoint(last_of(run))[1]["step"]
    assert 2 <= step < 1000000
    rc, _, err = cli(capsys, "train", text, "--out", run, "--resume", "--max-steps", step + 5)
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", text, "--out", ref, *opts, "--max-steps", step + 5)
    assert rc == 0, err
    assert load_checkpoint(last_of(run))[1]["step"] == step + 5
    assert_same_tensors(last_of(run), last_of(ref))


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_previous_checkpoint(text, tmp_path, capsys, monkeypatch):
    from rnnlab.lm.trainer import Trainer

    run = tmp_path / "run"
    real_step, kept = Trainer.train_step, {}
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a job started with `&`

    def step_then_ctrl_c_twice(self):
        loss = real_step(self)
        if self.step == 4:
            kept.update(file_bytes(run))
            signal.raise_signal(signal.SIGINT)  # sets the stop flag
            signal.raise_signal(signal.SIGINT)  # impatient: stop now
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c_twice)
    rc, out, err = cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "10", "--eval-every", "3")
    assert rc == 130 and err == "rnnlab: interrupted\n"
    assert file_bytes(run) == kept and load_checkpoint(last_of(run))[1]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before, "the handler is restored"


# ------------------------------------------------------------------------------------ SIGKILL
PAUSE_IN_WRITE = r"""
import os, sys, time
import rnnlab.io as rio
real = rio._write_all
def write_all(fd, data):  # the test hook: stop inside the atomic write of this process's first `last`
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if ".last.safetensors." in name:
        real(fd, data[: len(data) // 2])
        with open(os.environ["RNNLAB_TEST_PAUSED"], "w") as f:
            f.write(name)
        time.sleep(600)  # until the test kills the process
    real(fd, data)
rio._write_all = write_all
from rnnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("kernels, kills", [("numba", 20), ("numpy", 10)])
def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(kernels, kills, text, tmp_path):
    """Start (or resume) training with a checkpoint every step, wait until this process has written
    a checkpoint, kill it with SIGKILL after a random delay; on the default path (the numba
    kernels) and on the NumPy kernels. Two of the kills are made to land inside a checkpoint write:
    a test hook writes half of the file and pauses there, and the kill comes while the half-written
    temporary exists. After every kill the checkpoints, config, vocabulary and metrics load, an
    interrupted write has left ``last`` as it was, and the next trial resumes. In the end the run,
    killed every time, continues to a state (``last`` and ``best``) bit-identical to an unkilled
    run."""
    rng = random.Random(1234)
    env = {**os.environ, "RNNLAB_NO_NUMBA": "1"} if kernels == "numpy" else \
        {k: v for k, v in os.environ.items() if k != "RNNLAB_NO_NUMBA"}
    run, ref = tmp_path / "run", tmp_path / "ref"
    paused = tmp_path / "paused"
    opts = [*TINY, "--schedule", "constant", "--eval-every", "1", "--max-steps", "1000000"]
    pause_trials = {3, kills - 2} if HAS_PROC else set()
    prev_id, prev_step, mid_write = None, 0, 0
    for trial in range(kills):
        head = [sys.executable, "-c", PAUSE_IN_WRITE] if trial in pause_trials else RNNLAB
        argv = [*head, "train", str(text), "--out", str(run), *(["--resume", "--quiet"] if trial else opts)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**env, "RNNLAB_TEST_PAUSED": str(paused)})
        try:
            if trial in pause_trials:
                wait_for(paused.is_file, proc, what=f"the paused write in trial {trial}")
            else:
                wait_for(lambda: file_id(last_of(run)) not in (None, prev_id), proc,
                         what=f"a new checkpoint in trial {trial}")
                time.sleep(rng.uniform(0.0, 0.6))  # the random moment of the kill
            proc.kill()
            _, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        tensors, meta = load_checkpoint(last_of(run))
        if trial in pause_trials:  # killed with half of the new `last` written: the old one is intact
            assert [Path(t).name for t in temporaries(run)] == [paused.read_text()]
            assert meta["step"] == prev_step and file_id(last_of(run)) == prev_id
            paused.unlink()
            mid_write += 1
        else:
            assert meta["step"] > prev_step
        load_checkpoint(run / "checkpoints" / "best.safetensors")
        read_run(RunDir(run))
        assert read_jsonl(run / "metrics.jsonl")
        prev_id, prev_step = file_id(last_of(run)), meta["step"]
    assert mid_write == len(pause_trials)
    end = str(prev_step + 3)
    p = subprocess.run([*RNNLAB, "train", str(text), "--out", str(run), "--resume", "--quiet", "--max-steps", end],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert temporaries(run) == [], "a resumed run removes the temporaries of killed writers"
    p = subprocess.run([*RNNLAB, "train", str(text), "--out", str(ref), *opts[:-2], "--max-steps", end],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(last_of(run))[1]["step"] == prev_step + 3
    for which in ("last", "best"):
        assert_same_tensors(run / "checkpoints" / f"{which}.safetensors", ref / "checkpoints" / f"{which}.safetensors")


KILL_MID_WRITE = r"""
import os, signal, sys
import rnnlab.io as rio
real, seen = rio._write_all, []
def write_all(fd, data):
    if ".last.safetensors." in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
        seen.append(1)
        if len(seen) == 2:  # the second checkpoint: write half of it, then die
            real(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    real(fd, data)
rio._write_all = write_all
from rnnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find the file behind a descriptor")
def test_sigkill_in_the_middle_of_writing_a_checkpoint(text, tmp_path, capsys):
    """Deterministic version of the random kills: the process dies with half of its second
    checkpoint written. The first checkpoint is intact, and --resume cleans up and continues
    to a state bit-identical to an uninterrupted run."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    opts = [*TINY, "--eval-every", "1", "--max-steps", "4"]
    p = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, "train", str(text), "--out", str(run), *opts],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert [Path(t).name.startswith(".last.safetensors.") for t in temporaries(run)] == [True]
    assert load_checkpoint(last_of(run))[1]["step"] == 1
    rc, _, err = cli(capsys, "train", text, "--out", run, "--resume")
    assert rc == 0, err
    assert temporaries(run) == []
    rc, _, err = cli(capsys, "train", text, "--out", ref, *opts)
    assert rc == 0, err
    assert_same_tensors(last_of(run), last_of(ref))


# ------------------------------------------------------------------------------------ NaN / Inf
@pytest.mark.parametrize("fault, clip, threads", [("loss", "0", 1), ("gradient", "1", 1), ("gradient", "0", 1),
                                                  ("loss", "0", 2), ("gradient", "1", 2)])
def test_nan_or_inf_stops_training_and_keeps_the_last_good_checkpoint(fault, clip, threads, text, tmp_path, capsys,
                                                                     monkeypatch):
    import rnnlab.lm.shards as shards
    from rnnlab.lm.trainer import Trainer

    run = tmp_path / "run"
    real, calls, kept = shards.softmax_cross_entropy, [], {}
    real_step, stepping = Trainer.train_step, []

    # marks the trainer's steps: validation batches, and the kernels' warm-up before the clock
    # starts (lm/warmup.py), also compute the loss
    def step(self, *args, **kwargs):
        stepping.append(1)
        try:
            return real_step(self, *args, **kwargs)
        finally:
            stepping.pop()

    def faulty(logits, y, *args, **kwargs):
        loss, dlogits = real(logits, y, *args, **kwargs)
        if not stepping:
            return loss, dlogits
        calls.append(1)
        if len(calls) == 4 * threads + 1:  # training step 5 (one call per shard); checkpoints at steps 2 and 4
            kept.update(file_bytes(run))
            if fault == "loss":
                loss = loss * np.nan
            else:
                dlogits = dlogits.copy()
                dlogits[0, 0, 0] = np.inf
        return loss, dlogits

    monkeypatch.setattr(shards, "softmax_cross_entropy", faulty)
    monkeypatch.setattr(Trainer, "train_step", step)
    rc, out, err = cli(capsys, "train", text, "--out", run, *TINY, "--clip", clip, "--max-steps", "10",
                       "--eval-every", "2", "--threads", str(threads), "--plan", "split" if threads > 1 else "blas")
    assert_one_line_error(rc, out, err, "training diverged at step 5", "kept unchanged", "lower --lr", "--clip")
    assert ("loss became nan" if fault == "loss" else "gradient norm became") in err
    assert file_bytes(run) == kept, "the last good checkpoint (and everything else) is untouched"
    assert load_checkpoint(last_of(run))[1]["step"] == 4
    assert temporaries(run) == []


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_huge_learning_rate_is_caught_in_one_line(threads, text, tmp_path):
    """For real, in a subprocess: --lr 1e30 without clipping overflows float32. One line on stderr
    (NumPy's overflow warnings are silenced, in the shard threads too; and without --quiet, no
    progress output comes before it), exit 2, and no checkpoint of the broken model."""
    run = tmp_path / "run"
    p = subprocess.run([*RNNLAB, "train", str(text), "--out", str(run), *TINY[:-1], "--optimizer", "sgd",
                        "--lr", "1e30", "--clip", "0", "--schedule", "constant", "--max-steps", "50",
                        "--eval-every", "3", "--threads", threads], capture_output=True, text=True, timeout=120)
    assert_one_line_error(p.returncode, p.stdout, p.stderr, "training diverged", "lower --lr", "--clip")
    assert list((run / "checkpoints").iterdir()) == []


def test_sampling_an_overflowing_model_is_a_one_line_error(text, tmp_path, capsys, monkeypatch):
    """A checkpoint whose arithmetic overflows float32 gives non-finite logits. Whether a GEMM that
    sums +inf and -inf products returns NaN or a saturated inf depends on the BLAS kernel
    (OpenBLAS's AVX-512 sgemm saturates, and the logits stay finite), so the weights are scaled
    past float32's range and the forward pass adds that overflow to the logits on every machine."""
    from rnnlab.models.recurrent_lm import RecurrentLM

    run = tmp_path / "run"
    assert cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "2")[0] == 0
    best = run / "checkpoints" / "best.safetensors"
    tensors, meta = load_checkpoint(best)
    save_checkpoint(best, {k: v * np.float32(1e30) if v.dtype.kind == "f" else v for k, v in tensors.items()}, meta)
    real = RecurrentLM.forward

    def overflowing(self, *a, **kw):
        logits, state, cache = real(self, *a, **kw)
        w = self.params["out.W_hy"]
        return logits + (w[0, 0] * w[0, 0]) * np.float32(0), state, cache  # 1e58 * 0 in float32: inf * 0 = NaN

    monkeypatch.setattr(RecurrentLM, "forward", overflowing)
    rc, out, err = cli(capsys, "sample", run, "--length", "10")
    assert_one_line_error(rc, "", err, "NaN/Inf", "--checkpoint")


# ------------------------------------------------------------------------------------ the disk
@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find the file behind a descriptor")
@pytest.mark.parametrize("victim", ["last.safetensors", "best.safetensors", "metrics.jsonl", "loss.png"])
def test_disk_full_while_saving(victim, text, tmp_path, capsys, monkeypatch):
    """ENOSPC after half of a file's bytes, on the second save of that file: a one-line message,
    no temporary left, every file exactly as it was before the failed write; and once there is
    space again, --resume continues."""
    run = tmp_path / "run"
    real, seen, before = rio._write_all, [], {}

    def write_all(fd, data):
        if victim in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            seen.append(1)
            if len(seen) == 2:
                before.update({k: v for k, v in file_bytes(run).items() if not k.endswith(".tmp")})
                real(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(rio, "_write_all", write_all)
    # lr 0.02 makes the validation loss fall at every evaluation, so best is saved each time
    rc, out, err = cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "8", "--eval-every", "2",
                       "--lr", "0.02", "--schedule", "constant")
    monkeypatch.undo()
    assert len(seen) >= 2, "the fault was not reached"
    assert_one_line_error(rc, out, err, "disk full", victim, "free some disk space")
    assert temporaries(run) == []
    assert file_bytes(run) == before
    load_checkpoint(last_of(run))
    read_jsonl(run / "metrics.jsonl")
    rc, _, err = cli(capsys, "train", text, "--out", run, "--resume")
    assert rc == 0, err


@pytest.mark.parametrize("situation", ["new run", "resume"])
def test_unwritable_output_directory(situation, text, tmp_path, capsys, monkeypatch):
    """The tests run as root, which chmod does not stop: EACCES is injected where rnnlab creates
    files (the temporary files of atomic writes and the write probe)."""
    run = tmp_path / "run"
    if situation == "resume":
        assert cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "2")[0] == 0
    before = file_bytes(tmp_path)

    def deny(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(rio.tempfile, "mkstemp", deny)
    args = ["--resume", "--max-steps", "4"] if situation == "resume" else [*TINY, "--max-steps", "2"]
    rc, out, err = cli(capsys, "train", text, "--out", run, *args)
    monkeypatch.undo()
    assert_one_line_error(rc, out, err, str(run), "not writable", "writable location")
    assert file_bytes(tmp_path) == before


def test_an_earlier_run_is_never_overwritten(text, tmp_path, capsys):
    """Without --resume or --force a used run directory is refused (the bad-input table checks the
    message); --force starts anew and moves every file of the old run, unchanged, aside."""
    run = tmp_path / "run"
    assert cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "2")[0] == 0
    old = file_bytes(run)
    rc, out, err = cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "3")
    assert_one_line_error(rc, out, err, "already holds a run")
    assert file_bytes(run) == old
    rc, _, err = cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "3", "--force")
    assert rc == 0, err
    (aside,) = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert file_bytes(aside) == old
    assert load_checkpoint(last_of(run))[1]["step"] == 3


# ------------------------------------------------------------------------------------ memory
PEAK_RSS = r"""
import atexit, sys
def report():
    with open("/proc/self/status") as f:
        hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")][0]
    sys.stderr.write(f"PEAK_RSS_KB {hwm}\n")
atexit.register(report)
from rnnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def peak_rss(*argv, timeout=300) -> tuple[int, str]:
    """Run ``rnnlab ARGV`` in a fresh interpreter; returns (peak resident memory in bytes, stdout).

    VmHWM of the process itself is used, not ``ru_maxrss`` of the child: on Linux the latter can
    include the parent's memory (inherited across vfork + exec)."""
    p = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr
    kb = int(p.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return kb * 1024, p.stdout


@pytest.mark.skipif(not HAS_PROC, reason="reads VmHWM from /proc")
def test_a_large_text_trains_in_memory_bounded_by_a_small_multiple_of_its_size(tmp_path):
    chunk = english_text(200_000, seed=3)  # about 1.2 MB
    big = tmp_path / "big.txt"
    with open(big, "w", encoding="utf-8") as f:
        while f.tell() < 24 * 2**20:
            f.write(chunk)
    small = tmp_path / "small.txt"
    small.write_text(chunk[:100_000], encoding="utf-8")
    size = big.stat().st_size
    opts = [*TINY, "--batch", "64", "--seq-len", "64", "--max-steps", "2", "--eval-every", "2",
            "--val-frac", "0.001", "--test-frac", "0.001"]
    base, _ = peak_rss("train", small, "--out", tmp_path / "small", *opts)
    peak, _ = peak_rss("train", big, "--out", tmp_path / "big", *opts)
    print(f"peak RSS: {base / 2**20:.0f} MB for a 0.1 MB text, {peak / 2**20:.0f} MB for a {size / 2**20:.0f} MB text")
    assert peak - base < 3 * size, f"{(peak - base) / size:.1f} x the file size on top of the baseline"


@pytest.mark.skipif(not HAS_PROC, reason="reads VmHWM from /proc")
def test_sampling_runs_in_constant_memory(text, tmp_path, capsys):
    """12,000 characters need no more memory than 2,000 (a million would take minutes on this
    shared CPU; see docs/reliability.md)."""
    run = tmp_path / "run"
    assert cli(capsys, "train", text, "--out", run, *TINY, "--max-steps", "2")[0] == 0
    short, out_short = peak_rss("sample", run, "--length", "2000", "--seed", "1")
    long, out_long = peak_rss("sample", run, "--length", "12000", "--seed", "1")
    assert len(out_short) == 1 + 2000 + 1 and len(out_long) == 1 + 12000 + 1
    print(f"peak RSS {short / 2**20:.1f} MB for 2,000 characters, {long / 2**20:.1f} MB for 12,000")
    assert long - short < 2 * 2**20
