"""The numbers behind ``rnnlab visualize`` (rnnlab.viz): activations, text properties, the unit
ranking, the Kneser-Ney baseline and the report's payload. Pure NumPy, no browser.

- The activations a trace records are the engine's: equal to a plain NumPy loop of the cell
  equations written here from the parameters (float64), for every cell kind, with and without an
  embedding, whatever the chunking.
- The ranking finds a planted "inside quotes" unit: an LSTM built by hand so that one cell flips
  its sign at every double quote, the other units left random.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rnnlab.data import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.models import Bigram, RecurrentLM
from rnnlab.viz import report as rep
from rnnlab.viz.activations import QUANTITIES, Trace, trace
from rnnlab.viz.ngram import KneserNey, max_order
from rnnlab.viz.properties import PROPERTIES, correlations, rank_units, text_properties


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference(model, ids):
    """Every quantity of every layer and the logits, by a plain loop over the cell equations."""
    p = {k: np.asarray(v, np.float64) for k, v in model.params.items()}
    V, H = model.vocab_size, model.hidden
    x = p["embed.weight"][ids] if model.embed is not None else np.eye(V)[ids]  # (T, I)
    out = {}
    for k in range(model.layers):
        W, U, b = p[f"rnn.W_xh_l{k}"], p[f"rnn.W_hh_l{k}"], p[f"rnn.b_h_l{k}"]
        h, c = np.zeros(H), np.zeros(H)
        rec = {q: [] for q in QUANTITIES[model.cell]}
        for t in range(len(ids)):
            if model.cell == "rnn":
                h = np.tanh(W @ x[t] + U @ h + b)
            elif model.cell == "lstm":
                a = W @ x[t] + U @ h + b
                i, f, g, o = sig(a[:H]), sig(a[H:2 * H]), np.tanh(a[2 * H:3 * H]), sig(a[3 * H:])
                c = f * c + i * g
                h = o * np.tanh(c)
                for q, v in zip("cifgo", (c, i, f, g, o)):
                    rec[q].append(v)
            else:
                ax, hh = W @ x[t] + b, U @ h
                r, z = sig(ax[:H] + hh[:H]), sig(ax[H:2 * H] + hh[H:2 * H])
                n = np.tanh(ax[2 * H:] + r * (hh[2 * H:] + p[f"rnn.b_hn_l{k}"]))
                h = (1 - z) * n + z * h
                for q, v in zip("rzn", (r, z, n)):
                    rec[q].append(v)
            rec["h"].append(h)
        for q, v in rec.items():
            out[(k, q)] = np.array(v)
        x = out[(k, "h")]
    logits = x @ p["out.W_hy"].T + p["out.b_y"]
    return out, logits


def tiny(cell, embed=3, layers=2, hidden=5, V=7, seed=0, dtype=np.float64):
    return RecurrentLM(V, cell, hidden=hidden, layers=layers, embed=embed, dtype=dtype,
                       rng=np.random.default_rng(seed))


# ------------------------------------------------------------------------------------ activations
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("embed", [3, 0])
def test_trace_reads_the_engines_forward(cell, embed):
    model = tiny(cell, embed=embed)
    ids = np.random.default_rng(1).integers(0, 7, 23)
    targets = np.append(ids[1:], -1)
    want, logits = reference(model, ids)
    for chunk in (1024, 5, 1):  # one chunk, several, one step at a time: the state is carried
        tr, _ = trace(model, ids, targets, chunk=chunk, top_k=3)
        assert set(tr.acts) == set(want)
        for key, v in want.items():
            np.testing.assert_allclose(tr.acts[key], v, atol=1e-10, err_msg=f"{cell} {key} chunk={chunk}")
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(tr.loss[:-1], -logp[np.arange(22), ids[1:]], atol=1e-9)
        assert np.isnan(tr.loss[-1])
        order = np.argsort(-logp, axis=1)[:, :3]
        np.testing.assert_array_equal(tr.top_ids, order)
        np.testing.assert_allclose(tr.top_p, np.exp(np.take_along_axis(logp, order, axis=1)), rtol=1e-6)
        np.testing.assert_allclose(tr.last_logp, logp[-1], atol=1e-9)


def test_trace_continues_from_a_state_and_concatenates():
    model = tiny("lstm", dtype=np.float32)
    ids = np.random.default_rng(2).integers(0, 7, 40)
    whole, _ = trace(model, ids)
    first, state = trace(model, ids[:17])
    second, _ = trace(model, ids[17:], state=state)
    both = Trace.concat([first, second])
    for key in whole.acts:
        np.testing.assert_allclose(both.acts[key], whole.acts[key], atol=1e-5)


def test_trace_refuses_models_without_a_hidden_state():
    with pytest.raises(RnnlabError, match="no hidden state"):
        trace(Bigram(5), [1, 2, 3])


# ------------------------------------------------------------------------------------ properties
def test_properties_follow_their_definitions():
    s = 'a = f("x(", 2)  # it\'s\n    b[1]\n'
    p = text_properties(s)
    q_open, q_close = s.index('"'), s.rindex('"')
    assert p["in_quotes"][q_open] == 1 and p["in_quotes"][q_close] == 0
    assert p["in_quotes"][q_open + 1:q_close].all() and not p["in_quotes"][:q_open].any()
    assert p["bracket_depth"][s.index("f") + 1] == 1  # the ( after f
    assert p["bracket_depth"][s.index("x") + 1] == 1  # a ( inside quotes does not count
    assert p["bracket_depth"][s.index(")")] == 0
    assert p["in_comment"][s.index("#")] == 1 and p["in_comment"][s.index("\n") - 1] == 1
    assert p["in_quotes"][s.index("'")] == 0  # an apostrophe between letters, and inside a comment
    nl = s.index("\n")
    assert p["after_newline"][nl] == 1 and p["column"][nl] == 0 and p["column"][nl + 1] == 1
    assert p["in_indent"][nl + 1:nl + 5].all() and not p["in_indent"][nl + 5]
    assert p["indentation"][nl + 6] == 4 and p["indentation"][nl] == 0
    assert p["bracket_depth"][s.index("[")] == 1 and p["bracket_depth"][s.index("]")] == 0
    assert p["word_start"][0] == 1 and p["word_start"][s.index("f")] == 1 and p["word_start"][s.index("t")] == 0
    assert set(p) == set(PROPERTIES)
    assert text_properties(")))(")["bracket_depth"].tolist() == [0, 0, 0, 1]  # never below 0
    s2 = "x(f'a)' + rb'(') + y"  # string prefixes open strings even before a letter
    p2 = text_properties(s2)
    assert p2["in_quotes"][s2.index("a")] == 1 and p2["bracket_depth"][-1] == 0 and p2["in_quotes"][-1] == 0
    assert text_properties("don't (stop)")["bracket_depth"][-2] == 1  # an apostrophe is not a quote


def test_properties_of_chinese_text():
    p = text_properties("王说：“好。”\n李")
    assert p["in_quotes"].sum() == 0  # only " and ' open quotes
    assert p["after_newline"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert p["word_start"][0] == 1 and p["word_start"][1] == 0  # CJK letters run together as one word


def test_correlations_are_pearsons_r():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 4))
    b = np.column_stack([a[:, 0] * 2 + 0.1 * rng.standard_normal(200), rng.standard_normal(200), np.ones(200)])
    r = correlations(a, b)
    want = np.corrcoef(np.column_stack([a, b[:, :2]]), rowvar=False)[:4, 4:]
    np.testing.assert_allclose(r[:, :2], want, atol=1e-12)
    assert np.isnan(r[:, 2]).all()  # a constant property has no correlation
    assert r[0, 0] > 0.99


def quote_text(n_words=400, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran"]
    out, inside = [], False
    for _ in range(n_words):
        w = words[rng.integers(len(words))]
        if rng.random() < 0.12:
            w = ('"' + w) if not inside else (w + '"')
            inside = not inside
        out.append(w)
        if rng.random() < 0.1:
            out.append("\n")
    return " ".join(out)


def planted_quote_lstm(vocab: Vocab, hidden=8, seed=0, K=10.0):
    """A one-layer LSTM (one-hot input) whose unit 0 flips at every double quote: on a quote its
    forget gate closes, its input gate opens and its candidate is -sign(h_0) (positive at the
    start), elsewhere it holds. The other units keep their random weights."""
    model = RecurrentLM(vocab.size, "lstm", hidden=hidden, layers=1, embed=0, dtype=np.float64,
                        rng=np.random.default_rng(seed))
    H, q = hidden, vocab.id_of('"')
    W, U, b = model.params["rnn.W_xh_l0"], model.params["rnn.W_hh_l0"], model.params["rnn.b_h_l0"]
    for row in (0, H, 2 * H, 3 * H):  # unit 0's gates i, f, g, o: only the planted weights
        W[row] = 0.0
        U[row] = 0.0
    W[0, q], b[0] = 2 * K, -K          # i: open on a quote only
    W[H, q], b[H] = -2 * K, K          # f: closed on a quote only
    U[2 * H, 0], b[2 * H] = -5.0, 0.5  # g: the opposite sign of h_0 (positive from h_0 = 0)
    b[3 * H] = K                       # o: always open
    return model


def test_ranking_finds_a_planted_quote_unit():
    text = quote_text()
    vocab = Vocab.from_text(text)
    model = planted_quote_lstm(vocab)
    tr, _ = trace(model, vocab.encode(text))
    ranking = rank_units(tr.acts, text_properties(text), top=3)
    best = ranking["in_quotes"][0]
    assert (best["layer"], best["unit"]) == (0, 0) and best["q"] in ("c", "h")
    assert best["r"] > 0.9
    # the same model with the plant removed has no such unit
    plain = RecurrentLM(vocab.size, "lstm", hidden=8, layers=1, embed=0, dtype=np.float64,
                        rng=np.random.default_rng(0))
    tr2, _ = trace(plain, vocab.encode(text))
    assert abs(rank_units(tr2.acts, text_properties(text), top=1)["in_quotes"][0]["r"]) < 0.8
    # and the report shows it one click away
    payload = rep.build(model, vocab, text, baseline=None)
    assert payload["ranking"]["in_quotes"][0]["unit"] == 0


def test_a_property_absent_from_the_text_is_reported_as_such():
    tr, _ = trace(tiny("gru"), np.arange(7).repeat(3))
    ranking = rank_units(tr.acts, text_properties("abcdefg" * 3), top=2)
    assert ranking["in_brackets"] == [] and ranking["in_quotes"] == []
    assert len(ranking["column"]) == 2


# ------------------------------------------------------------------------------------ n-gram
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_kneser_ney_is_a_distribution(order):
    rng = np.random.default_rng(4)
    V = 6
    train = rng.integers(0, V - 1, 3000)  # id V-1 never occurs
    kn = KneserNey(V, order).fit(train)
    for ctx in (train[100:110], np.array([V - 1, V - 1, 0, 1]), np.array([], np.int64)):
        seqs = [np.append(ctx, w) for w in range(V)]
        p = [np.exp(-kn.nll(s, len(s) - 1)[kn.order][0]) for s in seqs]
        assert abs(sum(p) - 1) < 1e-9, (order, ctx)
        assert min(p) > 0


def test_kneser_ney_learns_structure_and_caps_its_order():
    seq = np.tile(np.array([0, 1, 2, 3, 2, 1]), 200)
    kn = KneserNey(4, 3).fit(seq)
    nll = kn.nll(seq[:60], 5, orders=(1, 2, 3))
    assert nll[3].mean() < 0.05 < nll[2].mean() < nll[1].mean()  # context helps, more context more
    assert max_order(65) >= 10 and max_order(70_000) == 3
    assert KneserNey(70_000, 9).order == 3


# ------------------------------------------------------------------------------------ report payload
def decode_codes(group, T):
    """The Python twin of report.js's 4-bit decoding."""
    b = np.frombuffer(rep.base64.b64decode(group["data"]), np.uint8)
    codes = np.empty(b.size * 2, np.uint8)
    codes[0::2], codes[1::2] = b & 15, b >> 4
    n = len(group["units"])
    codes = codes[:n * T].reshape(n, T)
    lo, hi = np.array(group["lo"])[:, None], np.array(group["hi"])[:, None]
    return lo + codes * (hi - lo) / rep.LEVELS


def test_quantised_activations_decode_within_half_a_level():
    a = np.random.default_rng(5).standard_normal((37, 3)) * [1, 5, 0.01]
    packed, lo, hi = rep.quantise(a)
    g = {"data": rep._b64(packed), "units": [0, 1, 2], "lo": lo.tolist(), "hi": hi.tolist()}
    back = decode_codes(g, 37).T
    assert np.all(np.abs(back - a) <= (hi - lo) / rep.LEVELS / 2 + 1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_report_payload(cell):
    text = quote_text(300, seed=1)
    vocab = Vocab.from_text(text)
    model = tiny(cell, V=vocab.size, dtype=np.float32)
    ids = vocab.encode(text)
    base = rep.fit_baseline(ids, vocab.size, 4, "test")
    payload = rep.build(model, vocab, text + "\u00e9\u00e9", baseline=base, max_mb=1.0)
    T = len(payload["text"])
    assert payload["text"] == text and T == len(text)  # the unknown é are left out, and counted
    assert payload["meta"]["unknown_chars"] == 2 and not payload["meta"]["sampled"]
    tr, _ = trace(model, ids, np.append(ids[1:], -1))
    for g in payload["acts"]:
        got = decode_codes(g, T)
        a = tr.acts[(g["layer"], g["q"])][:, g["units"]].T
        assert np.all(np.abs(got - a) <= np.ptp(a, axis=1, keepdims=True) / 30 + 1e-5)
    assert payload["meta"]["stored_units"] == payload["meta"]["all_units"] == 2 * 5 * len(QUANTITIES[cell])
    losses = {k: np.frombuffer(rep.base64.b64decode(v), "<u2") for k, v in payload["loss"].items()}
    assert set(losses) == {"rnn", "bigram", "ngram"} and all(v.size == T for v in losses.values())
    assert losses["rnn"][0] == rep.NONE_U16  # nothing precedes the first character
    np.testing.assert_allclose(losses["rnn"][1:] / 1000, tr.loss[:-1], atol=6e-4)
    assert [s.keys() for s in payload["saturation"]] == [
        {"rnn": set(), "lstm": {"i", "f", "o"}, "gru": {"r", "z"}}[cell]] * 2
    assert payload["by_property"][0]["property"] is None and payload["by_property"][0]["chars"] == T - 1


def test_long_text_is_windowed_with_warmup_and_budgeted():
    text = quote_text(3000, seed=2)
    vocab = Vocab.from_text(text)
    model = tiny("lstm", V=vocab.size, dtype=np.float32, hidden=16)
    payload = rep.build(model, vocab, text, chars=500, warmup=100, seed=3, max_mb=500 * 20 / 2 / 1e6)
    m = payload["meta"]
    assert m["sampled"] and m["end"] - m["start"] == 500 == len(payload["text"])
    assert m["warmup"] == 100 and text[m["start"] - 1] == "\n"  # starts at a line start
    assert payload["text"] == text[m["start"]:m["end"]]
    assert m["stored_units"] == 20 < m["all_units"]
    # the ranked units are stored first
    stored = {(g["layer"], g["q"], u) for g in payload["acts"] for u in g["units"]}
    ranked = {(r["layer"], r["q"], r["unit"]) for rows in payload["ranking"].values() for r in rows}
    assert ranked <= stored or len(stored) == 20 and stored <= ranked


def test_lines_mode_report_with_chinese():
    names = ["王小明", "李华", "张伟", "刘洋"] * 30
    text = "\n".join(names) + "\n"
    vocab = Vocab.from_lines(names)
    model = tiny("gru", V=vocab.size, dtype=np.float32)
    payload = rep.build(model, vocab, text, lines=True, chars=40, seed=1)
    T = len(payload["text"])
    assert payload["meta"]["mode"] == "lines" and payload["meta"]["sampled"]
    assert payload["text"].startswith("\n") and payload["text"].endswith("\n") and T >= 40 - 4
    assert set(payload["text"].split("\n")) <= set(names) | {""}
    assert payload["tokens"][0] == "<eos>"


def test_rendered_report_is_self_contained_and_escapes_the_text():
    text = 'x = "</script><script>alert(1)</script>" & <b>\n' * 5
    vocab = Vocab.from_text(text)
    model = tiny("lstm", V=vocab.size, dtype=np.float32)
    html = rep.render(rep.build(model, vocab, text))
    assert html.count("<script") == 3  # the data and the two scripts, nothing from the text
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)  # nothing loaded from anywhere
    assert "<link rel=\"stylesheet\"" not in html
    data = re.search(r'<script id="rnnlab-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert json.loads(data)["text"] == text


def test_report_errors_are_one_line():
    vocab = Vocab.from_text("abc")
    model = tiny("lstm", V=vocab.size)
    with pytest.raises(RnnlabError, match="fewer than 2 characters"):
        rep.build(model, vocab, "zzzz")
    with pytest.raises(RnnlabError, match="--chars"):
        rep.build(model, vocab, "abc", chars=0)
