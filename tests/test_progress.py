"""What training prints while it runs.

- Not a terminal (a log file, a pipe): no redraws; a plain progress line on stdout every N
  seconds, none with ``--quiet``; stderr stays empty, so an error is the only line there
  (test_robustness.py's huge-learning-rate test runs without ``--quiet`` for that).
- A terminal: a bar, erased when training ends in an error, so the message stands alone.
- Compiling kernels is announced once, and only when something is compiled.
"""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from clitools import TINY, cli, run_cli, write_texts

import rnnlab.lm.progress as progress
from rnnlab.lm.config import TrainConfig
from rnnlab.lm.corpus import build_corpus
from rnnlab.lm.rundir import RunDir
from rnnlab.lm.trainer import Trainer, write_run_files

LINE = re.compile(r"^step [\d,]+(/[\d,]+| \| \d+/\d+ s) \| loss \d+\.\d{3} \| best val (\d+\.\d{3}|-) \| [\d,]+ chars/s"
                  r" \| lr \d\.\d\de[-+]\d\d$")


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    return write_texts(tmp_path_factory.mktemp("texts"))


def make_trainer(text_path, run_path, eval_every=3, **kw):
    cfg = TrainConfig(model="lstm", layers=1, hidden=16, embed=8, batch=4, seq_len=8, eval_every=eval_every,
                      **kw).validate()
    text = text_path.read_text(encoding="utf-8")
    corpus = build_corpus(text, str(text_path), lines=False, val_frac=0.05, test_frac=0.05, seed=cfg.seed)
    run = RunDir.create(run_path)
    write_run_files(run, cfg, corpus)
    return cfg, corpus, run


def bar_lines(out: str) -> list[str]:
    """The progress lines of a run's output (the trainer also says which parallel plan it runs)."""
    return [ln for ln in out.splitlines() if not ln.startswith("plan: ")]


def test_not_a_terminal_gets_plain_lines_at_the_interval(texts, tmp_path, capsys):
    """progress_every=0: a line after every step, each a complete line (no carriage returns)."""
    cfg, corpus, run = make_trainer(texts["en"], tmp_path / "run", max_steps=5)
    with run:
        Trainer(cfg, corpus, run, progress=True, progress_every=0.0).fit()
    out, err = capsys.readouterr()
    assert err == "" and "\r" not in out
    lines = bar_lines(out)
    assert [int(re.match(r"step (\d+)", ln).group(1)) for ln in lines] == [1, 2, 3, 4, 5]
    assert all(LINE.match(ln) for ln in lines), lines
    assert lines[0].startswith("step 1/5 |")


def test_a_time_limited_run_shows_seconds(texts, tmp_path, capsys):
    cfg, corpus, run = make_trainer(texts["en"], tmp_path / "run", max_time=0.3)
    with run:
        Trainer(cfg, corpus, run, progress=True, progress_every=0.0).fit()
    lines = bar_lines(capsys.readouterr().out)
    assert lines and all(LINE.match(ln) and " s | loss" in ln and "/0 s" in ln for ln in lines), lines


def test_the_interval_spaces_the_lines(texts, tmp_path, capsys, monkeypatch):
    """A fake monotonic clock that moves 1 s per reading: with an interval of 10 s, about one
    line per ten readings, never one per step."""
    t = iter(np.arange(0.0, 1e6, 1.0))
    monkeypatch.setattr(progress, "_clock", lambda: float(next(t)))
    cfg, corpus, run = make_trainer(texts["en"], tmp_path / "run", max_steps=40, eval_every=100)
    with run:
        Trainer(cfg, corpus, run, progress=True, progress_every=10.0).fit()
    steps = [int(re.match(r"step (\d+)", ln).group(1)) for ln in bar_lines(capsys.readouterr().out)]
    assert steps == [10, 20, 30, 40]


def test_the_command_without_quiet_in_a_pipe(texts, tmp_path):
    """Through a pipe, as a job scheduler runs it: the summary on stdout, nothing on stderr, and no
    carriage return anywhere (the 115 KB of redraws a 15-minute run used to write)."""
    p = run_cli("train", texts["en"], "--out", tmp_path / "run", *TINY, "--max-steps", "6", "--eval-every", "3")
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and "\r" not in p.stdout
    assert "trained 6 steps" in p.stdout


def test_quiet_prints_no_progress(texts, tmp_path, capsys):
    cfg, corpus, run = make_trainer(texts["en"], tmp_path / "run", max_steps=4)
    with run:
        Trainer(cfg, corpus, run, progress=False, progress_every=0.0).fit()
    assert capsys.readouterr() == ("", "")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_that_an_error_erases(texts, tmp_path, capsys, monkeypatch):
    """On a terminal the bar redraws in place; when training fails, closing erases it, so that the
    error message is the only thing left on the screen."""
    term = FakeTerminal()
    monkeypatch.setattr(progress.sys, "stderr", term)
    cfg, corpus, run = make_trainer(texts["en"], tmp_path / "run", max_steps=6)
    real_step = Trainer.train_step

    def failing_step(self):
        if self.step == 4:
            raise RuntimeError("boom")
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with run, pytest.raises(RuntimeError, match="boom"):
        Trainer(cfg, corpus, run, progress=True).fit()
    shown = term.getvalue()
    assert "\r" in shown and "steps" in shown
    assert shown.rsplit("\r", 1)[-1].strip() == "", "the bar is erased from the screen"
    capsys.readouterr()
    monkeypatch.undo()
    term2 = FakeTerminal()
    monkeypatch.setattr(progress.sys, "stderr", term2)
    cfg, corpus, run = make_trainer(texts["en"], tmp_path / "run2", max_steps=6)
    with run:
        Trainer(cfg, corpus, run, progress=True).fit()
    assert "6/6 steps" in term2.getvalue().rsplit("\r", 1)[-1], "a finished bar stays"


def test_compiling_is_announced_once_and_only_when_it_happens(capsys):
    """The warm-up's notice listens to numba's compile event: a function compiled inside it is
    announced once (however many compile), one loaded or already compiled is not."""
    numba = pytest.importorskip("numba")
    from rnnlab.lm.warmup import _compile_notice

    heard = []
    with _compile_notice(heard.append):
        numba.njit(lambda x: x + 1)(1)
        numba.njit(lambda x: x * 2)(1)
    assert len(heard) == 1 and "compiling kernels (first run only" in heard[0]
    f = numba.njit(lambda x: x - 1)
    f(1)
    with _compile_notice(heard.append) as notice:
        f(2)
    assert len(heard) == 1 and not notice.said
    with _compile_notice(None) as notice:  # no one to tell: it still knows
        numba.njit(lambda x: x + 3)(1)
    assert notice.said


def test_the_cli_passes_the_notice_through(texts, tmp_path, capsys, monkeypatch):
    import rnnlab.lm.warmup as warmup

    real = warmup.warm_up

    def compiling(model, shards, cfg, corpus, notify=None):
        if notify is not None:
            notify("compiling kernels (first run only, ~5 s; not counted in --max-time)")
        real(model, shards, cfg, corpus, None)
        return 2.5  # seconds spent compiling

    monkeypatch.setattr(warmup, "warm_up", compiling)
    rc, out, err = cli(capsys, "train", texts["en"], "--out", tmp_path / "a", *TINY, "--max-steps", "2")
    assert rc == 0 and out.count("compiling kernels (first run only") == 1, err
    rc, out, err = cli(capsys, "train", texts["en"], "--out", tmp_path / "b", *TINY, "--max-steps", "2", "--quiet")
    assert rc == 0 and "compiling kernels (first run only" not in out
    assert "compiling the kernels took" in out  # the summary says what the first run cost


def test_kernels_already_compiled_are_not_reported(texts, tmp_path, capsys):
    """The second run in a process finds every kernel compiled, as a run after the first finds
    them in numba's cache: its warm-up counts 0 s of compiling and the summary says nothing."""
    for name in ("a", "b"):
        rc, out, err = cli(capsys, "train", texts["en"], "--out", tmp_path / name, *TINY, "--max-steps", "2")
    assert rc == 0 and "trained 2 steps" in out and "compiling" not in out, err
