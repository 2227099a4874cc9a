"""What the command-level tests of resume, progress, scoring and faults share: a tiny model, small
texts, running ``rnnlab`` in-process or as ``python -m rnnlab``, and comparing checkpoints.

``python -m rnnlab`` runs the command from whatever rnnlab this interpreter imports, so the
subprocess tests run wherever the test suite runs (an installed package, an editable install or
a source tree on ``PYTHONPATH``), never skipped for want of a console script.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rnnlab.cli import main
from rnnlab.lm.checkpoint import load_checkpoint

TINY = ["--model", "lstm", "--layers", "1", "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8",
        "--dropout", "0"]
RNNLAB = [sys.executable, "-m", "rnnlab"]
WORDS = ("the cat sat on a mat and the dog ran far away then slept in the sun while a bird sang "
         "of rivers hills and quiet roads").split()


def english_text(n_words=1000, seed=0) -> str:
    rng = np.random.default_rng(seed)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n_words)]
    return "\n".join(" ".join(words[i:i + 9]) + "." for i in range(0, n_words, 9)) + "\n"


def name_lines(n=300, seed=0, alphabet="abcdefghijklmnoprstuvy") -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(alphabet[j] for j in rng.integers(0, len(alphabet), rng.integers(3, 8))).capitalize()
            for _ in range(n)]


def write_texts(d: Path) -> dict:
    """``{"en": stream text, "names": one name per line}`` written under ``d``."""
    paths = {"en": d / "en.txt", "names": d / "names.txt"}
    paths["en"].write_text(english_text(), encoding="utf-8")
    paths["names"].write_text("\n".join(name_lines()) + "\n", encoding="utf-8")
    return paths


def cli(capsys, *argv):
    """``rnnlab ARGV`` in-process: ``(exit status, stdout, stderr)``."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_cli(*argv, timeout=120, env=None, **kw) -> subprocess.CompletedProcess:
    """``python -m rnnlab ARGV`` as a separate process."""
    return subprocess.run([*RNNLAB, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def last_of(run: Path) -> Path:
    return Path(run) / "checkpoints" / "last.safetensors"


def best_of(run: Path) -> Path:
    return Path(run) / "checkpoints" / "best.safetensors"


def step_of(path: Path) -> int:
    return load_checkpoint(path)[1]["step"]


def assert_same_tensors(a, b):
    ta, tb = load_checkpoint(a)[0], load_checkpoint(b)[0]
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and np.array_equal(ta[k], tb[k]), f"tensor {k} differs"


def assert_one_line_error(rc, out, err, *words):
    assert rc == 2, (rc, out, err)
    assert err.startswith("rnnlab: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w.lower() in err.lower(), f"{w!r} not in {err!r}"


def wait_for(condition, proc, timeout=60.0, what="the condition"):
    """Poll ``condition()`` until true; fail if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the process exited (status {proc.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def file_bytes(root: Path) -> dict:
    """Every file under ``root`` (the lock file left out: taking the lock is not damage) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and p.name != ".rnnlab.lock"}


def temporaries(root: Path) -> list[str]:
    """The temporary files of atomic writes under ``root``."""
    return sorted(str(p) for p in Path(root).rglob("*.tmp"))


def file_id(p: Path):
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def env_without(*names) -> dict:
    return {k: v for k, v in os.environ.items() if k not in names}
