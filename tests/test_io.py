"""Tests for the file layer: atomic writes, JSON reading, metrics logs, the run directory."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rnnlab import io as rio
from rnnlab.errors import RnnlabError
from rnnlab.io import (append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text,
                       read_json, read_jsonl)
from rnnlab.lm.rundir import RunDir

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg and msg
    return msg


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def test_atomic_write_creates_and_replaces(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    assert target.read_bytes() == b"old"
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert leftovers(tmp_path) == []


def test_new_file_respects_umask_and_existing_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644
    os.chmod(tmp_path / "a", 0o600)
    atomic_write_bytes(tmp_path / "a", b"y")
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o600


def test_atomic_write_json_roundtrip_and_numpy(tmp_path):
    obj = {"a": 1, "b": [1.5, "x"], "n": np.float32(0.5), "arr": np.arange(3), "s": "ü"}
    atomic_write_json(tmp_path / "c.json", obj)
    assert read_json(tmp_path / "c.json") == {"a": 1, "b": [1.5, "x"], "n": 0.5,
                                              "arr": [0, 1, 2], "s": "ü"}


def test_json_nan_is_refused_before_touching_the_file(tmp_path):
    target = tmp_path / "c.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"loss": float("nan")})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
def test_failure_midway_keeps_old_file_and_no_temp(tmp_path, monkeypatch, stage):
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"OLD" * 1000)
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:  # a partial write first, then an I/O error
            return real_write(fd, bytes(data[:100]))
        raise OSError(errno.EIO, "Input/output error")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    if stage == "write":
        monkeypatch.setattr(os, "write", flaky_write)
    elif stage == "fsync":
        monkeypatch.setattr(os, "fsync", broken)
    else:
        monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(RnnlabError) as ei:
        atomic_write_bytes(target, b"NEW" * 5000)
    monkeypatch.undo()
    msg = one_line_error(ei)
    assert str(target) in msg and "Input/output error" in msg
    assert target.read_bytes() == b"OLD" * 1000
    assert leftovers(tmp_path) == []


def test_disk_full_names_size_and_place(tmp_path, monkeypatch):
    target = tmp_path / "last.safetensors"
    atomic_write_bytes(target, b"previous")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(RnnlabError) as ei:
        atomic_write_bytes(target, b"\0" * (3 * 2**20))
    monkeypatch.undo()
    msg = one_line_error(ei)
    assert "disk full" in msg and "3.0 MB" in msg and str(target) in msg
    assert target.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_ctrl_c_during_write_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    atomic_write_json(target, {"v": 1})

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(target, {"v": 2})
    monkeypatch.undo()
    assert read_json(target) == {"v": 1}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code,words", [(errno.EACCES, "not writable"),
                                        (errno.EROFS, "not writable"),
                                        (errno.ENOSPC, "disk full")])
def test_cannot_create_temp_file(tmp_path, monkeypatch, code, words):
    # Simulated: tests often run as root, for whom permission bits do not stop writes.
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(RnnlabError) as ei:
        atomic_write_bytes(tmp_path / "x", b"data")
    assert words in one_line_error(ei)


def test_path_under_a_regular_file_and_missing_dir(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RnnlabError) as ei:
        atomic_write_bytes(tmp_path / "afile" / "x.json", b"{}")
    assert "not a directory" in one_line_error(ei)
    with pytest.raises(RnnlabError) as ei:
        atomic_write_bytes(tmp_path / "nodir" / "x.json", b"{}")
    assert "does not exist" in one_line_error(ei)
    with pytest.raises(RnnlabError) as ei:
        atomic_write_bytes(tmp_path, b"{}")
    assert "is a directory" in one_line_error(ei)


@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits, so chmod 0o500 cannot make "
                                    "a directory unwritable; covered by the simulated tests")
def test_real_read_only_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    (d / "f").write_bytes(b"old")
    d.chmod(0o500)
    try:
        with pytest.raises(RnnlabError) as ei:
            atomic_write_bytes(d / "f", b"new")
        assert "not writable" in one_line_error(ei)
        assert (d / "f").read_bytes() == b"old"
    finally:
        d.chmod(0o700)


# --------------------------------------------------------------------------------------------
# reading JSON
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content,words", [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b'{"a": 1', "not valid JSON"),
    (b"[1, 2]", "found a list"),
    (b'"text"', "found a string"),
    (b"3.5", "found a number"),
    (b"null", "found null"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"a": NaN}', "not valid JSON"),
    (b'{"a": 1, "a": 2}', "duplicate key"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
])
def test_read_json_errors(tmp_path, content, words):
    p = tmp_path / "config.json"
    p.write_bytes(content)
    with pytest.raises(RnnlabError) as ei:
        read_json(p, "run config")
    msg = one_line_error(ei)
    assert words in msg and str(p) in msg and msg.startswith("run config")


def test_read_json_missing_directory_too_big_fifo(tmp_path):
    with pytest.raises(RnnlabError, match="not found"):
        read_json(tmp_path / "nope.json")
    with pytest.raises(RnnlabError, match="is a directory"):
        read_json(tmp_path)
    big = tmp_path / "big.json"
    big.write_bytes(b'{"a": "' + b"x" * 2000 + b'"}')
    with pytest.raises(RnnlabError, match="limit") as ei:
        read_json(big, max_bytes=1000)
    one_line_error(ei)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        with pytest.raises(RnnlabError, match="not a regular file"):
            read_json(fifo)  # must not block waiting for a writer


def test_read_json_default_cap_checked_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "vocab.json"
    with open(p, "wb") as fh:  # sparse: 17 MB on paper, nothing on disk
        fh.truncate(rio.MAX_JSON_BYTES + 1)

    def no_read(*args, **kwargs):
        raise AssertionError("read before the size check")

    monkeypatch.setattr(os, "read", no_read)
    with pytest.raises(RnnlabError, match="16.0 MB limit"):
        read_json(p, "vocabulary")


# --------------------------------------------------------------------------------------------
# metrics logs
# --------------------------------------------------------------------------------------------


def test_jsonl_append_and_read(tmp_path):
    p = tmp_path / "metrics.jsonl"
    for step in range(3):
        append_jsonl(p, {"step": step, "loss": np.float64(1.0 / (step + 1))})
    assert [r["step"] for r in read_jsonl(p)] == [0, 1, 2]
    assert p.read_bytes().count(b"\n") == 3


def test_jsonl_torn_final_line_is_skipped_and_repaired(tmp_path):
    p = tmp_path / "metrics.jsonl"
    append_jsonl(p, {"step": 1})
    append_jsonl(p, {"step": 2})
    with open(p, "ab") as fh:
        fh.write(b'{"step": 3, "lo')  # a crash mid-line
    assert [r["step"] for r in read_jsonl(p)] == [1, 2]
    append_jsonl(p, {"step": 4})
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 4]
    assert p.read_bytes().endswith(b'{"step": 4}\n')
    # a whole file that is one torn line, and an empty file
    q = tmp_path / "m2.jsonl"
    q.write_bytes(b'{"st')
    assert read_jsonl(q) == []
    append_jsonl(q, {"step": 0})
    assert read_jsonl(q) == [{"step": 0}]
    (tmp_path / "e.jsonl").write_bytes(b"")
    assert read_jsonl(tmp_path / "e.jsonl") == []


def test_jsonl_zero_filled_tail_after_power_loss(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_bytes(b'{"step": 1}\n\0\0\0\0\n')
    assert read_jsonl(p) == [{"step": 1}]


def test_jsonl_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_bytes(b'{"step": 1}\n{garbage\n{"step": 3}\n')
    with pytest.raises(RnnlabError, match="line 2") as ei:
        read_jsonl(p)
    one_line_error(ei)
    p.write_bytes(b'{"step": 1}\n[1]\n{"step": 3}\n')
    with pytest.raises(RnnlabError, match="JSON object"):
        read_jsonl(p)
    with pytest.raises(RnnlabError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("stage", ["write", "fsync"])
def test_jsonl_disk_full_takes_the_line_back(tmp_path, monkeypatch, stage):
    """ENOSPC after part of the line is written, or at fsync: a one-line error, and the log is
    byte-identical to before (the fragment is truncated away), so appending continues cleanly."""
    p = tmp_path / "metrics.jsonl"
    append_jsonl(p, {"step": 1})
    before = p.read_bytes()
    real_write = os.write

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def half_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[: len(data) // 2]))
        return full()

    if stage == "write":
        monkeypatch.setattr(os, "write", half_then_full)
    else:
        monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RnnlabError, match="disk full") as ei:
        append_jsonl(p, {"step": 2, "loss": 1.5})
    monkeypatch.undo()
    assert str(p) in one_line_error(ei)
    assert p.read_bytes() == before
    append_jsonl(p, {"step": 3})
    assert read_jsonl(p) == [{"step": 1}, {"step": 3}]


# --------------------------------------------------------------------------------------------
# run directory
# --------------------------------------------------------------------------------------------


def _fake_run(run: RunDir, checkpoints=("last",)) -> None:
    atomic_write_json(run.config, {"hidden": 8})
    atomic_write_json(run.vocab, {"chars": "ab"})
    append_jsonl(run.metrics, {"step": 1})
    for which in checkpoints:
        atomic_write_bytes(run.checkpoint_path(which), b"ckpt-" + which.encode())


def test_run_dir_names(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config.name == "config.json" and run.vocab.name == "vocab.json"
    assert run.metrics.name == "metrics.jsonl" and run.loss_plot.name == "loss.png"
    assert run.last == tmp_path / "r" / "checkpoints" / "last.safetensors"
    assert run.best == tmp_path / "r" / "checkpoints" / "best.safetensors"
    assert run.lock_file.parent == run.path
    with pytest.raises(RnnlabError, match="choose one of last, best"):
        run.checkpoint_path("newest")
    assert not (tmp_path / "r").exists()  # naming touches nothing


def test_create_new_then_refuse_reuse(tmp_path):
    path = tmp_path / "deep" / "run"
    with RunDir.create(path) as run:
        assert run.locked and run.checkpoints_dir.is_dir()
        _fake_run(run)
    assert not run.locked
    with pytest.raises(RnnlabError) as ei:
        RunDir.create(path)
    msg = one_line_error(ei)
    assert "already holds a run" in msg and "--resume" in msg and "--force" in msg
    with pytest.raises(RnnlabError, match="exclude each other"):
        RunDir.create(path, force=True, resume=True)
    # the refusal released the lock
    with RunDir.create(path, resume=True) as run:
        assert run.locked


def test_create_after_a_run_died_before_writing_anything(tmp_path):
    with RunDir.create(tmp_path / "r"):
        pass  # only checkpoints/ and the lock file exist
    RunDir.create(tmp_path / "r").unlock()


def test_resume_needs_a_complete_run(tmp_path):
    path = tmp_path / "r"
    with pytest.raises(RnnlabError, match="nothing to resume"):
        RunDir.create(path, resume=True)
    run = RunDir(path)
    atomic_write_json(run.config, {"hidden": 8})  # a run that died before its checkpoint
    with pytest.raises(RnnlabError) as ei:
        RunDir.create(path, resume=True)
    msg = one_line_error(ei)
    assert "cannot resume" in msg and "vocab.json" in msg and "--force" in msg


def test_force_moves_old_run_aside_and_deletes_nothing(tmp_path):
    path = tmp_path / "r"
    with RunDir.create(path) as run:
        _fake_run(run, checkpoints=("last", "best"))
    with RunDir.create(path, force=True) as run:
        assert not run.has_run() and run.checkpoints_dir.is_dir()
    (aside,) = [p for p in path.iterdir() if p.name.startswith("replaced-")]
    assert read_json(aside / "config.json") == {"hidden": 8}
    assert (aside / "checkpoints" / "best.safetensors").read_bytes() == b"ckpt-best"
    assert read_jsonl(aside / "metrics.jsonl") == [{"step": 1}]
    # a second --force in the same second gets its own folder
    with RunDir.create(path) as run:
        _fake_run(run)
    RunDir.create(path, force=True).unlock()
    assert len([p for p in path.iterdir() if p.name.startswith("replaced-")]) == 2


def test_create_on_a_file_or_unwritable(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RnnlabError, match="not a directory"):
        RunDir.create(tmp_path / "f")
    with pytest.raises(RnnlabError) as ei:
        RunDir.create(tmp_path / "f" / "sub")
    one_line_error(ei)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # simulated: root ignores chmod
    with pytest.raises(RnnlabError) as ei:
        RunDir.create(tmp_path / "new")
    assert "not writable" in one_line_error(ei)
    monkeypatch.undo()

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(RnnlabError) as ei:
        RunDir.create(tmp_path / "other")
    assert "not writable" in one_line_error(ei)


_LOCK_CHILD = textwrap.dedent("""
    import sys
    from rnnlab.errors import RnnlabError
    from rnnlab.lm.rundir import RunDir
    try:
        RunDir(sys.argv[1]).lock()
    except RnnlabError as e:
        print("ERR", e)
    else:
        print("LOCKED")
""")


def _lock_in_child(path: Path) -> str:
    out = subprocess.run([sys.executable, "-c", _LOCK_CHILD, str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_lock_excludes_a_second_process(tmp_path):
    path = tmp_path / "r"
    run = RunDir.create(path)
    try:
        result = _lock_in_child(path)
        assert result.startswith("ERR"), result
        assert "in use by another rnnlab process" in result and f"pid {os.getpid()}" in result
        run.lock()  # re-locking in the holder is a no-op
    finally:
        run.unlock()
    assert _lock_in_child(path) == "LOCKED"


def test_create_refuses_while_another_process_trains(tmp_path):
    path = tmp_path / "r"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from rnnlab.lm.rundir import RunDir; RunDir.create(sys.argv[1]); "
         "print('ready', flush=True); sys.stdin.readline()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(RnnlabError, match=f"pid {child.pid}"):
            RunDir.create(path, force=True)
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    RunDir.create(path).unlock()  # the lock died with the process


def test_check_complete(tmp_path):
    with pytest.raises(RnnlabError, match="does not exist"):
        RunDir(tmp_path / "missing").check_complete()
    (tmp_path / "f").write_text("x")
    with pytest.raises(RnnlabError, match="not a directory"):
        RunDir(tmp_path / "f").check_complete()
    with pytest.raises(RnnlabError, match="holds no rnnlab run"):
        RunDir(tmp_path).check_complete()
    run = RunDir.create(tmp_path / "r")
    atomic_write_json(run.config, {})
    atomic_write_json(run.vocab, {})
    with pytest.raises(RnnlabError) as ei:
        run.check_complete()
    msg = one_line_error(ei)
    assert "missing a checkpoint" in msg and "first checkpoint" in msg
    atomic_write_bytes(run.last, b"x")
    run.check_complete()
    assert run.find_checkpoint("last") == run.last
    with pytest.raises(RnnlabError, match="use --checkpoint last"):
        run.find_checkpoint("best")
    run.vocab.unlink()
    with pytest.raises(RnnlabError, match="missing vocab.json"):
        run.check_complete()
    run.unlock()


def test_read_config_and_vocab_name_the_file(tmp_path):
    run = RunDir(tmp_path)
    run.config.write_text("[]")
    with pytest.raises(RnnlabError, match=r"^run config .*config\.json must hold a JSON object"):
        run.read_config()
    run.vocab.write_text('{"chars": "ab"}')
    assert run.read_vocab() == {"chars": "ab"}
