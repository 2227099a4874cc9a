"""The rule that chooses the options a user leaves out (rnnlab.lm.auto), checked against what its
docstring states: only options not given are chosen; the width is the widest that keeps the
stated number of epochs in a time budget; dropout is zero for few epochs and grows with them up to
its cap; a small text gets a sequence length that fits it; the choices are printed, saved, and
kept by --resume."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from clitools import cli, write_texts

from rnnlab.lm import auto
from rnnlab.lm.config import TrainConfig


def corpus(chars, mode="stream", vocab=65, items=0):
    split = SimpleNamespace(char_counts=(chars, chars // 20, chars // 20), train=range(items))
    return SimpleNamespace(vocab=SimpleNamespace(size=vocab), split=split, mode=mode)


def chosen(given=(), chars=1_000_000, cores=2, **kw):
    cfg = TrainConfig(**kw).validate()
    line = auto.apply_auto(cfg, set(given) | set(kw), corpus(chars), cores=cores)
    return cfg, line


def epochs(cfg, chars, cores=2, hidden=None):
    speed = auto.estimated_speed(cfg.model, cfg.layers, hidden or cfg.hidden, cfg.embed, 65, cores)
    return speed * cfg.max_time / chars


def test_given_options_are_kept_and_nothing_else_is_touched():
    cfg, line = chosen(max_time=900.0, layers=3, hidden=100, dropout=0.1, seq_len=50, batch=16)
    assert (cfg.layers, cfg.hidden, cfg.dropout, cfg.seq_len, cfg.batch) == (3, 100, 0.1, 50, 16)
    assert line == "" and "auto" not in cfg.extra


@pytest.mark.parametrize("seconds", [30, 120, 300, 900, 3600, 36000])
@pytest.mark.parametrize("chars", [50_000, 1_000_000, 20_000_000])
def test_the_width_is_the_widest_that_keeps_the_epochs(seconds, chars):
    cfg, line = chosen(chars=chars, max_time=float(seconds))
    assert cfg.layers == 2 and cfg.hidden in auto.WIDTHS
    wider = [h for h in auto.WIDTHS if h > cfg.hidden]
    if cfg.hidden != auto.WIDTHS[0]:
        assert epochs(cfg, chars) >= auto.MIN_EPOCHS
    if wider:
        assert epochs(cfg, chars, hidden=wider[0]) < auto.MIN_EPOCHS
    assert f"2x{cfg.hidden} LSTM" in line and f"{seconds:g} s" in line and cfg.extra["auto"] == line


def test_more_time_never_a_smaller_model_more_text_never_a_larger_one():
    by_time = [chosen(max_time=float(s))[0].hidden for s in (10, 60, 300, 900, 3600, 86400)]
    assert by_time == sorted(by_time) and by_time[0] < by_time[-1]
    by_text = [chosen(chars=n, max_time=900.0)[0].hidden for n in (10**4, 10**5, 10**6, 10**7, 10**8)]
    assert by_text == sorted(by_text, reverse=True) and by_text[0] > by_text[-1]


def test_with_both_limits_the_one_reached_first_sizes_the_model():
    # a step limit the run never reaches leaves the time budget's width (it chose the widest
    # width before: the step budget's epochs do not depend on the width); one reached first
    # sizes the model by its own epochs
    wide, _ = chosen(max_time=900.0)
    both, _ = chosen(max_time=900.0, max_steps=10**7)  # the steps are never reached: time decides
    assert both.hidden == wide.hidden
    short, _ = chosen(max_time=900.0, max_steps=50)  # 50 steps: too few epochs for any width
    assert short.hidden == auto.WIDTHS[0]
    assert short.dropout == 0.0


def test_no_size_rule_on_a_gpu():
    cfg, line = chosen(max_time=900.0, device="cuda")
    assert (cfg.layers, cfg.hidden) == (2, 256) and "LSTM" not in line


def test_more_cores_buy_a_wider_model():
    assert chosen(max_time=900.0, cores=8)[0].hidden >= chosen(max_time=900.0, cores=2)[0].hidden


def test_dropout_is_zero_for_few_epochs_and_grows_to_its_cap():
    params, n = 3_000_000, 1_000_000
    assert auto.choose_dropout(auto.DROPOUT_FREE_EPOCHS * 0.99, params, n) == 0.0
    ds = [auto.choose_dropout(e, params, n) for e in (2, 4, 8, 16, 32, 64, 1e4)]
    assert ds == sorted(ds) and ds[0] < ds[-1] == auto.MAX_DROPOUT
    assert auto.choose_dropout(16, 10 * params, n) >= auto.choose_dropout(16, params, n)  # more parameters per char


def test_a_step_budget_keeps_the_size_and_sets_dropout_from_its_epochs():
    few, line = chosen(chars=1_000_000, max_steps=100)  # 100 x 32 x 100 chars: a third of an epoch
    assert (few.layers, few.hidden, few.dropout) == (2, 256, 0.0) and line == ""
    many, line = chosen(chars=100_000, max_steps=3000)  # 96 epochs
    assert (many.layers, many.hidden) == (2, 256) and many.dropout > 0
    assert f"dropout {many.dropout:g}" in line and "3,000 steps" in line


@pytest.mark.parametrize("chars", [3_000, 20_000, 200_000])
def test_a_small_text_gets_a_sequence_length_that_fits(chars):
    cfg, _ = chosen(chars=chars)
    batches = chars // (cfg.batch * cfg.seq_len)
    assert 16 <= cfg.seq_len <= 100
    assert batches >= auto.MIN_BATCHES or cfg.seq_len == 16
    if chars >= 100 * cfg.batch * auto.MIN_BATCHES:
        assert cfg.seq_len == 100


@pytest.mark.parametrize("model", ["mlp", "cnn", "bigram"])
def test_only_recurrent_models_are_sized(model):
    cfg, line = chosen(model=model, max_time=900.0)
    assert line == "" and (cfg.hidden, cfg.dropout) == (256, 0.0)


def test_the_choice_is_printed_saved_and_kept_on_resume(tmp_path, capsys):
    texts = write_texts(tmp_path)
    run = tmp_path / "run"
    cmd = ["train", texts["en"], "--out", run, "--embed", "8", "--max-time", "0.5", "--resume-or-start"]
    rc, out, err = cli(capsys, *cmd)
    assert rc == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("auto: "))
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))["train"]
    assert saved["extra"]["auto"] == line
    assert f"2x{saved['hidden']} LSTM" in line and f"seq-len {saved['seq_len']}" in line
    # the same command again: a resume that keeps every choice (and prints no new one)
    rc, out, err = cli(capsys, *cmd[:-3], "--max-time", "1", "--resume-or-start")
    assert rc == 0 and "resuming at step" in out and "auto:" not in out, err
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["train"] == saved
    # naming the chosen value is accepted, another one refused
    rc, out, err = cli(capsys, "train", texts["en"], "--out", run, "--resume", "--hidden", saved["hidden"],
                       "--max-time", "1", "--quiet")
    assert rc == 0 and "already reached" in out, err
    rc, out, err = cli(capsys, "train", texts["en"], "--out", run, "--resume", "--hidden", saved["hidden"] + 1)
    assert rc == 2 and f"(the run has {saved['hidden']})" in err
