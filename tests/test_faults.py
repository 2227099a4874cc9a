"""User paths around the edges of the command: a closed pipe, a bug, a missing numba, the
compiled-kernel cache.

- ``rnnlab sample ... | head``: the reader goes away; rnnlab exits 0, silently.
- A bug (any unexpected exception) is one line, exit 1, naming ``RNNLAB_DEBUG``; with
  ``RNNLAB_DEBUG=1`` the traceback comes out.
- numba that cannot be imported: one warning line, and training runs the NumPy kernels, with the
  same result as ``RNNLAB_NO_NUMBA=1``.
- Kernels compiled by one process are loaded by the next from numba's disk cache: nothing is
  compiled again.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from clitools import RNNLAB, TINY, assert_same_tensors, cli, last_of, run_cli, write_texts


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    return write_texts(tmp_path_factory.mktemp("texts"))


@pytest.fixture(scope="module")
def run(texts, tmp_path_factory):
    from rnnlab.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(texts["en"]), "--out", str(out), *TINY, "--max-steps", "3", "--quiet"]) == 0
    return out


def test_sample_into_a_closed_pipe_exits_quietly(run):
    """`rnnlab sample RUN --length 200000 | head -c 20`: head exits after 20 bytes, the next
    write fails with EPIPE; rnnlab stops at once with status 0 and nothing on stderr."""
    sample = subprocess.Popen([*RNNLAB, "sample", str(run), "--length", "200000", "--seed", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-c", "20"], stdin=sample.stdout, capture_output=True, timeout=120)
    sample.stdout.close()  # only head holds the reading end; it has exited
    err = sample.stderr.read().decode()
    assert sample.wait(timeout=120) == 0, err
    assert err == "" and len(head.stdout) == 20


def test_a_bug_is_one_line_naming_rnnlab_debug(run, capsys, monkeypatch):
    import rnnlab.cli.runs as runs

    def broken(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(runs, "_load_run", broken)
    monkeypatch.delenv("RNNLAB_DEBUG", raising=False)
    rc, out, err = cli(capsys, "sample", run)
    assert rc == 1 and out == ""
    assert err == ("rnnlab: internal error (KeyError: 'no such key'); rerun with RNNLAB_DEBUG=1 for the traceback "
                   "and report it\n")
    monkeypatch.setenv("RNNLAB_DEBUG", "1")
    with pytest.raises(KeyError, match="no such key"):
        cli(capsys, "sample", run)


def test_rnnlab_debug_prints_the_traceback_of_a_real_process(run, tmp_path):
    code = ("import sys, rnnlab.cli.runs as r\n"
            "r._load_run = lambda *a, **k: 1 / 0\n"
            "from rnnlab.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, "sample", str(run)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "RNNLAB_DEBUG": "1"})
    assert p.returncode == 1 and "Traceback" in p.stderr and "ZeroDivisionError" in p.stderr
    p = subprocess.run([sys.executable, "-c", code, "sample", str(run)], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "RNNLAB_DEBUG"})
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "internal error (ZeroDivisionError" in p.stderr


NO_NUMBA = r"""
import sys
class Block:  # numba (and llvmlite) cannot be imported, as on a platform without wheels
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numba", "llvmlite"):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, Block())
from rnnlab.cli import main
code = main(sys.argv[1:])
assert "numba" not in sys.modules
sys.exit(code)
"""


def test_without_numba_one_warning_and_the_numpy_kernels(texts, tmp_path):
    """The fallback that a broken or missing numba takes: one line of warning on stderr, training
    succeeds, and the checkpoint is bit-identical to a run with RNNLAB_NO_NUMBA=1 (the same
    NumPy kernels)."""
    opts = [*TINY, "--max-steps", "4", "--eval-every", "2", "--threads", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RNNLAB_NO_NUMBA"}
    p = subprocess.run([sys.executable, "-c", NO_NUMBA, "train", str(texts["en"]), "--out", str(tmp_path / "a"),
                        *opts], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("rnnlab: warning: numba could not be loaded"), p.stderr
    assert "pip install numba" in p.stderr and "trained 4 steps" in p.stdout
    q = run_cli("train", texts["en"], "--out", tmp_path / "b", *opts, "--quiet", env={**env, "RNNLAB_NO_NUMBA": "1"},
                timeout=300)
    assert q.returncode == 0 and q.stderr == "", q.stderr
    assert_same_tensors(last_of(tmp_path / "a"), last_of(tmp_path / "b"))


COUNT_COMPILES = r"""
import sys
from numba.core import event
compiled = []
class Count(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Count())
from rnnlab.cli import main
code = main(sys.argv[1:])
print("COMPILED", len(compiled), sorted(set(compiled)))
sys.exit(code)
"""


def test_kernels_compiled_once_are_loaded_by_the_next_process(texts, tmp_path):
    """numba's disk cache survives the process: after one process has compiled a run's kernels,
    a second process training the same configuration compiles nothing."""
    if os.environ.get("RNNLAB_NO_NUMBA", "") not in ("", "0"):
        pytest.skip("RNNLAB_NO_NUMBA is set: no kernels are compiled")
    text = texts["names"]  # lines mode: the padded batches use every optional kernel argument
    opts = [*TINY, "--max-steps", "2", "--quiet", "--threads", "2", "--lines"]
    first = subprocess.run([sys.executable, "-c", COUNT_COMPILES, "train", str(text), "--out", str(tmp_path / "a"),
                            *opts], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([sys.executable, "-c", COUNT_COMPILES, "train", str(text), "--out",
                             str(tmp_path / "b"), *opts], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "COMPILED 0 []" in second.stdout, second.stdout
