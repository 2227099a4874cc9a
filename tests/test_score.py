"""Nucleus (top-p) sampling and ``rnnlab score``, the per-character log-probability of a text.

Top-p is checked on hand-made distributions (which characters can be drawn at all, and how
often) and end to end (a tiny nucleus is greedy decoding). ``score`` is checked against an
independent computation: a plain forward pass over the whole text and a float64 log-softmax,
and against ``rnnlab eval`` (same mean where both score the same characters).
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from clitools import assert_one_line_error, cli, write_texts

import rnnlab.lm.score as score_mod
from rnnlab.cli.common import load_run
from rnnlab.lm.sample import choose


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    return write_texts(tmp_path_factory.mktemp("texts"))


@pytest.fixture(scope="module")
def runs(texts, tmp_path_factory):
    """Stream and lines runs, trained with one batch row so that ``eval`` runs the text as one
    sequence, exactly as ``score`` does."""
    from rnnlab.cli import main

    d = tmp_path_factory.mktemp("runs")
    out = {"stream": d / "stream", "lines": d / "lines"}
    opts = ["--model", "lstm", "--layers", "1", "--hidden", "16", "--embed", "8", "--batch", "1", "--seq-len", "32",
            "--dropout", "0", "--max-steps", "30", "--eval-every", "30", "--lr", "0.02", "--quiet"]
    assert main(["train", str(texts["en"]), "--out", str(out["stream"]), *opts]) == 0
    assert main(["train", str(texts["names"]), "--out", str(out["lines"]), "--lines", *opts]) == 0
    return out


# ------------------------------------------------------------------------------------ top-p
P = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 2), 0.05 (id 0)


def draws(top_p, n=1500, temperature=1.0, top_k=0, seed=0):
    rng = np.random.default_rng(seed)
    return np.bincount([choose(np.log(P), temperature, top_k, rng, top_p) for _ in range(n)], minlength=4)


@pytest.mark.parametrize("top_p, nucleus", [(0.3, {1}), (0.49, {1}), (0.51, {1, 3}), (0.79, {1, 3}),
                                            (0.81, {1, 3, 2}), (0.94, {1, 3, 2}), (0.96, {0, 1, 2, 3}),
                                            (1.0, {0, 1, 2, 3})])
def test_top_p_draws_only_from_the_nucleus(top_p, nucleus):
    counts = draws(top_p)
    assert set(np.flatnonzero(counts)) == nucleus
    # within the nucleus, the renormalised probabilities (1500 draws: within 4 standard errors)
    want = np.where(np.isin(np.arange(4), list(nucleus)), P, 0.0)
    want /= want.sum()
    se = np.sqrt(want * (1 - want) / counts.sum())
    assert np.all(np.abs(counts / counts.sum() - want) <= 4 * se + 1e-12)


def test_top_p_applies_after_temperature_and_top_k():
    # temperature 0.5 sharpens P to about [0.007, 0.69, 0.06, 0.25]: the 0.9 nucleus is {1, 3}
    assert set(np.flatnonzero(draws(0.9, temperature=0.5))) == {1, 3}
    # top-k 3 drops id 0 first; the 0.99 nucleus of what is left is {1, 3, 2}
    assert set(np.flatnonzero(draws(0.99, top_k=3))) == {1, 2, 3}


def test_a_tiny_nucleus_is_greedy_decoding(runs, capsys):
    run = runs["stream"]
    greedy = cli(capsys, "sample", run, "--prime", "the ", "--length", "50", "--temperature", "0")[1]
    for seed in ("1", "2"):
        rc, out, err = cli(capsys, "sample", run, "--prime", "the ", "--length", "50", "--top-p", "1e-9",
                           "--temperature", "1.5", "--seed", seed)
        assert rc == 0 and out == greedy, err
    rc, out, err = cli(capsys, "sample", runs["lines"], "--num", "3", "--top-p", "0.9", "--seed", "4")
    assert rc == 0 and len(out.splitlines()) == 3, err


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_top_p_out_of_range_is_one_line(value, runs, capsys):
    rc, out, err = cli(capsys, "sample", runs["stream"], "--top-p", value)
    assert_one_line_error(rc, out, err, "--top-p")


# ------------------------------------------------------------------------------------ score
def reference_log_probs(model, ids_in, ids_out):
    """log p(ids_out[t] | ids_in[:t+1]) from one forward pass over the whole row, float64."""
    logits, _, _ = model.forward(np.asarray(ids_in, np.int64).reshape(-1, 1), None)
    z = logits[:, 0, :].astype(np.float64)
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    return logp[np.arange(len(ids_out)), ids_out]


def test_score_stream_matches_a_plain_forward_pass_and_eval(runs, texts, tmp_path, capsys, monkeypatch):
    text = texts["en"].read_text(encoding="utf-8")[:700]
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    monkeypatch.setattr(score_mod, "CHUNK", 64)  # the state is carried across chunks
    rc, out, err = cli(capsys, "score", runs["stream"], "--file", f, "--json")
    assert rc == 0, err
    res = json.loads(out)
    rows = res["chars"]
    assert "".join(r["char"] for r in rows) == text
    assert rows[0]["logp"] is None and rows[0]["surprisal_bits"] is None
    _, _, _, vocab, model, _ = load_run(runs["stream"], "best")
    ids = np.asarray(vocab.encode(text), np.int64)
    want = reference_log_probs(model, ids[:-1], ids[1:])
    got = np.array([r["logp"] for r in rows[1:]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([r["surprisal_bits"] for r in rows[1:]], -got / math.log(2), rtol=1e-12)
    assert res["scored"] == len(text) - 1
    rc, out, err = cli(capsys, "eval", runs["stream"], f, "--json")
    assert rc == 0, err
    ev = json.loads(out)
    assert ev["chars"] == res["scored"]
    assert res["loss_nats"] == pytest.approx(ev["loss_nats"], rel=1e-5)
    assert res["bits_per_char"] == pytest.approx(ev["bits_per_char"], rel=1e-5)


def test_score_lines_scores_each_item_and_its_end(runs, tmp_path, capsys):
    f = tmp_path / "names.txt"
    f.write_text("Ada\n\nBilo\n", encoding="utf-8")
    rc, out, err = cli(capsys, "score", runs["lines"], "--file", f, "--json")
    assert rc == 0, err
    rows = json.loads(out)["chars"]
    assert [(r["char"], r["line"]) for r in rows] == [("A", 0), ("d", 0), ("a", 0), ("<eos>", 0), ("B", 1),
                                                     ("i", 1), ("l", 1), ("o", 1), ("<eos>", 1)]
    _, _, _, vocab, model, _ = load_run(runs["lines"], "best")
    for k, item in enumerate(["Ada", "Bilo"]):
        ids = list(np.asarray(vocab.encode(item)))
        want = reference_log_probs(model, [vocab.bos, *ids], [*ids, vocab.eos])
        np.testing.assert_allclose([r["logp"] for r in rows if r["line"] == k], want, rtol=1e-5, atol=1e-5)
    rc, out, err = cli(capsys, "eval", runs["lines"], f, "--json")
    assert json.loads(out)["loss_nats"] == pytest.approx(-np.mean([r["logp"] for r in rows]), rel=1e-5)


def test_score_table(runs, capsys):
    rc, out, err = cli(capsys, "score", runs["stream"], "--checkpoint", "last", "the cat")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["pos", "char", "log", "p", "(nats)", "surprisal", "(bits)"]
    assert lines[1].split()[:2] == ["1", "'t'"] and "no context" in lines[1]
    row = re.compile(r"^\s*(\d+)\s+('.'|<eos>)\s+(-?\d+\.\d{4})\s+(\d+\.\d{4})$")
    body = [row.match(ln).groups() for ln in lines[2:-1]]
    assert [b[0] for b in body] == ["2", "3", "4", "5", "6", "7"]
    assert [b[1] for b in body] == ["'h'", "'e'", "' '", "'c'", "'a'", "'t'"]
    for b in body:
        assert float(b[3]) == pytest.approx(-float(b[2]) / math.log(2), abs=2e-4)
    mean = -np.mean([float(b[2]) for b in body])
    m = re.match(r"6 characters scored: (\d+\.\d{4}) nats/char, (\d+\.\d{4}) bits/char", lines[-1])
    assert m and float(m.group(1)) == pytest.approx(mean, abs=1e-4), lines[-1]
    assert float(m.group(2)) == pytest.approx(float(m.group(1)) / math.log(2), abs=1e-4)


@pytest.mark.parametrize("args, words", [
    ([], ["either as an argument or with --file"]),
    (["abc", "--file", "x.txt"], ["one of the two"]),
    (["the Ωmega"], ["never saw", "'Ω'"]),
    (["--file", "missing.txt"], ["missing.txt", "no such file"]),
])
def test_score_bad_input_is_one_line(args, words, runs, capsys):
    rc, out, err = cli(capsys, "score", runs["stream"], *args)
    assert_one_line_error(rc, out, err, *words)
