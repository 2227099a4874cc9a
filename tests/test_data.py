"""Tests of the char-LM data layer: reading, vocabulary, splits, batching, built-in corpus."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.data import (
    BOUNDARY_NAME,
    LinesBatcher,
    Ragged,
    StreamBatcher,
    Vocab,
    builtin_corpus,
    encode_lines,
    lines_eval_batches,
    read_lines,
    read_text,
    split_lines,
    split_stream,
    spread_pieces,
    stream_eval_batches,
)
from rnnlab.errors import RnnlabError

CHINESE = "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n"


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ---------------------------------------------------------------------------------------------
# read_text
# ---------------------------------------------------------------------------------------------
def test_read_text_plain_bom_crlf_and_chinese(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbf" + "line one\r\nline two\r\n".encode())
    assert read_text(p) == "line one\nline two\n"
    p.write_bytes(CHINESE.encode("utf-8"))
    assert read_text(str(p)) == CHINESE


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("empty.txt", b"", "empty"),
        ("blank.txt", b"  \n\t\r\n  ", "whitespace"),
        ("nul.bin", b"hello\x00world", "binary"),
        ("ctrl.bin", bytes(range(1, 9)) * 50, "binary"),
        ("garbage.bin", bytes(range(128, 256)) * 40, "binary"),
        ("utf16.txt", "hello".encode("utf-16"), "UTF-16"),
        ("latin1.txt", "caf\xe9 ok\nna\xefve\n".encode("latin-1"), "byte offset 3"),
    ],
)
def test_read_text_bad_files(tmp_path, name, content, needle):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(RnnlabError) as e:
        read_text(p)
    _one_line_error(e, str(p), needle)


def test_read_text_invalid_utf8_reports_offset_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"\xef\xbb\xbfabc\nde\xfff\n")
    with pytest.raises(RnnlabError) as e:
        read_text(p)
    _one_line_error(e, str(p), "UTF-8", "byte offset 9", "line 2", "0xff")


def test_read_text_missing_and_directory(tmp_path):
    with pytest.raises(RnnlabError) as e:
        read_text(tmp_path / "nope.txt")
    _one_line_error(e, "nope.txt", "no such file")
    with pytest.raises(RnnlabError) as e:
        read_text(tmp_path)
    _one_line_error(e, str(tmp_path), "directory")


def test_read_text_permission_denied(tmp_path, monkeypatch):
    p = tmp_path / "secret.txt"
    p.write_text("hi there")
    import builtins

    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(p):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(RnnlabError) as e:
        read_text(p)
    _one_line_error(e, str(p), "permission")


def test_read_text_odd_filename_stays_one_line(tmp_path):
    p = tmp_path / "two\nlines.txt"
    p.write_bytes(b"")
    with pytest.raises(RnnlabError) as e:
        read_text(p)
    _one_line_error(e, "empty")


def test_read_lines():
    assert read_lines("  emma \n\n\r\nolivia\r\n \n ava") == ["emma", "olivia", "ava"]


# ---------------------------------------------------------------------------------------------
# Vocab
# ---------------------------------------------------------------------------------------------
def test_vocab_sorted_and_chinese_roundtrip():
    v = Vocab.from_text(CHINESE)
    assert list(v.chars) == sorted(set(CHINESE))
    assert v.size == len(set(CHINESE)) and v.dtype == np.uint8
    ids = v.encode(CHINESE)
    assert ids.dtype == np.uint8 and ids.shape == (len(CHINESE),)
    assert v.decode(ids) == CHINESE


def test_vocab_dtype_grows_with_size():
    assert Vocab([chr(i) for i in range(32, 32 + 256)]).dtype == np.uint8
    assert Vocab([chr(i) for i in range(32, 32 + 257)]).dtype == np.uint16
    assert Vocab([chr(i) for i in range(32, 32 + 256)], boundary=True).dtype == np.uint16
    assert Vocab([chr(i) for i in range(0x4E00, 0x4E00 + 70000)]).dtype == np.int32


def test_vocab_boundary_token():
    v = Vocab.from_lines(["emma", "ava"])
    assert v.boundary and v.bos == 0 and v.eos == 0
    assert v.tokens[0] == BOUNDARY_NAME and v.size == 1 + len(set("emmaava"))
    assert v.encode("ava").tolist() == [1, v.id_of("v"), 1]
    assert v.decode([0, 1, 0, 1]) == "\na\na"
    assert v.decode([1, 0, 1], boundary_text="") == "aa"
    assert v.decode([1, 0, 1], boundary_text=" | ") == "a | a"


def _reference_encode(vocab, text):
    stoi = {c: i + int(vocab.boundary) for i, c in enumerate(vocab.chars)}
    return [stoi[c] for c in text if c in stoi], sum(c not in stoi for c in text)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=60), st.text(max_size=80), st.booleans())
def test_encode_matches_python_reference(train, other, boundary):
    v = Vocab.from_text(train, boundary=boundary)
    assert v.decode(v.encode(train)) == train
    ref, n_unk = _reference_encode(v, other)
    ids, n = v.encode(other, unknown="count")
    assert ids.tolist() == ref and n == n_unk
    assert v.encode(other, unknown="skip").tolist() == ref
    assert sum(v.unknown_chars(other).values()) == n_unk


def test_encode_is_chunked(monkeypatch):
    import rnnlab.data.vocab as vocab_mod

    monkeypatch.setattr(vocab_mod, "CHUNK_CHARS", 7)
    text = "abc\u00e9\u4e2d" * 11 + "xyz"
    v = Vocab.from_text("abc\u4e2dxz")
    ids, n = v.encode(text, unknown="count")
    ref, n_ref = _reference_encode(v, text)
    assert ids.tolist() == ref and n == n_ref == 12
    assert Vocab.from_text(text) == Vocab(set(text))


def test_encode_unknown_error_lists_chars():
    v = Vocab.from_text("abc")
    with pytest.raises(RnnlabError) as e:
        v.encode("ab\x00\n" + "".join(chr(0x3000 + i) for i in range(15)), what="the priming text")
    msg = _one_line_error(e, "the priming text", "17 character", "'\\x00'", "'\\n'", "and 7 more")
    assert msg.count("'") >= 20


def test_vocab_json_roundtrip():
    for v in (Vocab.from_text(CHINESE), Vocab.from_lines(["emma", "zoë"])):
        s = v.to_json()
        assert "\n" not in s
        assert Vocab.from_json(s) == v
        assert Vocab.from_json(json.loads(s)) == v
    assert json.loads(Vocab.from_lines(["ab"]).to_json())["tokens"] == ["<eos>", "a", "b"]


@pytest.mark.parametrize(
    "data, needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"format": "rnnlab-vocab", "version": 1}, "missing"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": ["a"], "x": 1}, "unexpected"),
        ({"format": "other", "version": 1, "tokens": ["a"]}, "format"),
        ({"format": "rnnlab-vocab", "version": 2, "tokens": ["a"]}, "version"),
        ({"format": "rnnlab-vocab", "version": True, "tokens": ["a"]}, "version"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": "abc"}, "list"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": ["a", 3]}, "expected a string"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": ["a", "bc"]}, "single character"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": ["a", "<eos>"]}, "token 0"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": ["a", "a", "b"]}, "duplicate"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": ["b", "a"]}, "sorted"),
        ({"format": "rnnlab-vocab", "version": 1, "tokens": ["<eos>"]}, "no characters"),
    ],
)
def test_vocab_json_validation(data, needle):
    with pytest.raises(RnnlabError) as e:
        Vocab.from_json(data if isinstance(data, str) else json.dumps(data), source="ckpt.json")
    _one_line_error(e, "ckpt.json", needle)


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
def test_split_stream_contiguous():
    ids = np.arange(1000) % 7
    sp = split_stream(ids, 0.1, 0.05)
    train, val, test = sp
    assert sp.sizes == (850, 100, 50) == sp.char_counts
    np.testing.assert_array_equal(np.concatenate([train, val, test]), ids)
    assert "850" in sp.describe()
    tr, va, te = split_stream(ids, 0.0, 0.0)
    assert len(tr) == 1000 and len(va) == 0 and len(te) == 0


def test_split_stream_spread_covers_the_whole_text():
    """spread: the same part sizes as the tails, every character in exactly one part, in order
    within each part; the training part reaches the text's end and validation and test sample
    every stretch of it (one piece of each per twentieth)."""
    n = 800_000  # 20 pieces of 40,000: 36,000 train, 2,000 val, 2,000 test each
    ids = np.arange(n)  # each id is its own position
    tail = split_stream(ids, 0.05, 0.05)
    train, val, test = sp = split_stream(ids, 0.05, 0.05, spread_pieces(n, 0.05, 0.05))
    assert sp.sizes == tail.sizes == (720_000, 40_000, 40_000)
    np.testing.assert_array_equal(np.sort(np.concatenate(sp)), ids)
    assert all(np.all(np.diff(p) > 0) for p in sp)
    assert train.max() == n - 4000 - 1 and tail.train.max() == 720_000 - 1
    for part in (val, test):
        assert len(np.unique(part // (n // 20))) == 20  # a piece of it in every twentieth of the text
    assert split_stream(ids, 0.05, 0.0, spread_pieces(n, 0.05, 0.0)).sizes == (760_000, 40_000, 0)


@pytest.mark.parametrize("n, val, test, pieces", [(1000, 0.1, 0.05, 1), (79_999, 0.05, 0.05, 1),
                                                   (80_000, 0.05, 0.05, 2), (10**7, 0.05, 0.05, 20),
                                                   (10**6, 0.0, 0.0, 1), (10**6, 0.01, 0.0, 5)])
def test_spread_pieces_keep_at_least_2000_characters_each(n, val, test, pieces):
    assert spread_pieces(n, val, test) == pieces  # 1: a short text keeps its contiguous tails


@pytest.mark.parametrize(
    "n, val, test, needle",
    [(20, 0.01, 0.0, "--val-frac"), (20, 0.0, 0.01, "--test-frac"), (20, 0.5, 0.5, "sum"),
     (20, -0.1, 0.0, "--val-frac"), (3, 0.5, 0.0, "training")],
)
def test_split_stream_too_small(n, val, test, needle):
    with pytest.raises(RnnlabError) as e:
        split_stream(np.zeros(n, np.uint8), val, test)
    _one_line_error(e, needle)


def test_split_lines_random_and_complete():
    items = [f"name{i}" for i in range(50)]
    sp = split_lines(items, 0.2, 0.1, np.random.default_rng(0))
    train, val, test = sp
    assert sp.sizes == (35, 10, 5)
    assert sorted(train + val + test) == sorted(items)
    assert train == sorted(train, key=items.index)  # original order kept
    assert split_lines(items, 0.2, 0.1, np.random.default_rng(0)) == sp
    assert split_lines(items, 0.2, 0.1, np.random.default_rng(1)) != sp
    with pytest.raises(RnnlabError):
        split_lines(items[:3], 0.1, 0.0, np.random.default_rng(0))
    with pytest.raises(RnnlabError):
        split_lines([], 0.1, 0.0, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# stream batching
# ---------------------------------------------------------------------------------------------
def test_stream_batcher_layout_and_continuity():
    ids = np.arange(103, dtype=np.uint16)  # B=4 rows of 25, 3 leftovers unused
    b = StreamBatcher(ids, batch_size=4, seq_len=6)
    assert b.row_len == 25 and b.batches_per_epoch == 4
    batches = [b.next_batch() for _ in range(4)]
    for k, (x, y, reset) in enumerate(batches):
        assert x.shape == y.shape == (6, 4) and x.dtype == np.int32 and x.flags.c_contiguous
        np.testing.assert_array_equal(y[:-1], x[1:])  # one-step shift
        for col in range(4):
            np.testing.assert_array_equal(x[:, col], np.arange(6) + 25 * col + 6 * k)
        assert reset == (k == 0)
    for (x0, y0, _), (x1, _, _) in zip(batches, batches[1:]):  # streams continue
        np.testing.assert_array_equal(x1[0], y0[-1])
    x, y, reset = next(b)
    assert reset and b.epoch == 1
    np.testing.assert_array_equal(x, batches[0].x)


def test_stream_batcher_resume_is_exact():
    ids = np.random.default_rng(0).integers(0, 50, 500).astype(np.uint8)
    ref = StreamBatcher(ids, 3, 7)
    seq = [ref.next_batch() for _ in range(60)]
    a = StreamBatcher(ids, 3, 7)
    for _ in range(37):
        a.next_batch()
    st_ = json.loads(json.dumps(a.state()))
    c = StreamBatcher(ids, 3, 7)
    c.load_state(st_)
    for want in seq[37:]:
        got = c.next_batch()
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)
        assert got.reset == want.reset
    assert c.epoch == ref.epoch
    with pytest.raises(RnnlabError) as e:
        StreamBatcher(ids, 4, 7).load_state(st_)
    _one_line_error(e, "batch_size")
    with pytest.raises(RnnlabError):
        c.load_state({**st_, "chunk": 10**6})


def test_stream_batcher_too_short():
    with pytest.raises(RnnlabError) as e:
        StreamBatcher(np.zeros(40, np.uint8), batch_size=8, seq_len=10)
    _one_line_error(e, "40 characters", "88", "--batch", "--seq-len")
    StreamBatcher(np.zeros(88, np.uint8), batch_size=8, seq_len=10)  # exactly one batch fits


@pytest.mark.parametrize("n, bsz, t", [(2, 4, 3), (5, 4, 3), (101, 4, 8), (100, 1, 7), (64, 8, 100)])
def test_stream_eval_scores_every_character_once(n, bsz, t):
    ids = np.arange(n, dtype=np.int64) + 1000
    for small in (np.uint8, np.uint16):  # -1 padding must survive compact id dtypes
        ys = [b.y for b in stream_eval_batches(np.arange(n).astype(small), bsz, t)]
        assert sum(int((y >= 0).sum()) for y in ys) == n - 1 and all(y.dtype == np.int32 for y in ys)
        assert sum(int((y == -1).sum()) for y in ys) == sum(y.size for y in ys) - (n - 1)
    scored = []
    batches = list(stream_eval_batches(ids, bsz, t))
    assert batches[0].reset and not any(b.reset for b in batches[1:])
    for x, y, _ in batches:
        assert x.shape == y.shape and x.shape[1] <= bsz and x.shape[0] <= t
        m = y >= 0
        np.testing.assert_array_equal(y[m], x[m] + 1)  # target follows its input
        scored.extend(y[m].tolist())
    assert sorted(scored) == list(range(1001, 1000 + n))  # ids[1:], each exactly once
    rows = np.concatenate([b.y for b in batches], axis=0).T.reshape(-1)
    np.testing.assert_array_equal(rows[rows >= 0], ids[1:])  # row-major order = text order
    with pytest.raises(RnnlabError):
        stream_eval_batches(ids[:1], bsz, t)


# ---------------------------------------------------------------------------------------------
# lines batching
# ---------------------------------------------------------------------------------------------
def _lines_items():
    v = Vocab.from_lines(["emma", "olivia", "ava", "isabella", "mia", "zoë", "x"])
    return v, encode_lines(v, ["emma", "olivia", "ava", "isabella", "mia", "zoë", "x"])


def test_encode_lines_ragged_and_unknown():
    v, items = _lines_items()
    assert isinstance(items, Ragged) and len(items) == 7
    assert items.lengths.tolist() == [4, 6, 3, 8, 3, 3, 1]
    assert v.decode(items[1]) == "olivia" and v.decode(items[-1]) == "x"
    r, n = encode_lines(v, ["emQma", "Q", "aQQ"], unknown="count")
    assert n == 4 and [v.decode(r[i]) for i in range(3)] == ["emma", "", "a"]
    with pytest.raises(RnnlabError):
        encode_lines(v, ["emQma"])


def test_lines_batch_padding_bos_eos():
    v, items = _lines_items()
    (x, y, lengths), = list(lines_eval_batches(items, 10))
    assert x.shape == y.shape == (9, 7) and x.dtype == y.dtype == np.int32
    assert lengths.tolist() == [5, 7, 4, 9, 4, 4, 2]
    assert (x[0] == 0).all()  # BOS
    for b in range(7):
        item = items[b]
        L = lengths[b]
        np.testing.assert_array_equal(x[1:L, b], item)
        np.testing.assert_array_equal(y[:L - 1, b], item)
        assert y[L - 1, b] == 0  # EOS
        assert (y[L:, b] == -1).all() and (x[L:, b] == 0).all()  # padding ignored
    assert sum(int(bt.lengths.sum()) for bt in lines_eval_batches(items, 3)) == 35
    assert [bt.x.shape[1] for bt in lines_eval_batches(items, 3)] == [3, 3, 1]


def test_lines_batcher_epochs_cover_every_item_once():
    items = [np.full(k % 5, k, dtype=np.uint8) for k in range(23)]  # item k is all k's
    b = LinesBatcher(items, 5, np.random.default_rng(3))
    assert b.batches_per_epoch == 5
    orders = []
    for epoch in range(3):
        seen = []
        for _ in range(b.batches_per_epoch):
            x, y, lengths = b.next_batch()
            assert x.shape[1] == lengths.size <= 5
            for col in range(lengths.size):
                # item id recovered from the BOS-shifted input, or from length when empty
                L = lengths[col]
                chars = y[: L - 1, col]
                seen.append(int(chars[0]) if chars.size else ("empty", L))
        assert b.epoch == epoch + 1
        nonempty = sorted(s for s in seen if isinstance(s, int))
        assert nonempty == [k for k in range(23) if k % 5]
        assert sum(1 for s in seen if not isinstance(s, int)) == 5
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_lines_batcher_resume_is_exact():
    _, items = _lines_items()
    ref = LinesBatcher(items, 2, np.random.default_rng(7))
    seq = [ref.next_batch() for _ in range(20)]
    for stop in (0, 3, 4, 9):
        a = LinesBatcher(items, 2, np.random.default_rng(7))
        for _ in range(stop):
            a.next_batch()
        saved = json.loads(json.dumps(a.state()))
        c = LinesBatcher(items, 2, np.random.default_rng(12345))  # a different generator
        c.load_state(saved)
        for want in seq[stop:]:
            got = c.next_batch()
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
    with pytest.raises(RnnlabError):
        LinesBatcher(items, 3, np.random.default_rng(0)).load_state(saved)
    with pytest.raises(RnnlabError):
        LinesBatcher([], 3, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# built-in corpus
# ---------------------------------------------------------------------------------------------
def test_builtin_corpus_deterministic_and_capped():
    text, desc = builtin_corpus(max_chars=200_000)
    assert 100_000 < len(text) <= 200_000 and text.endswith("\n")
    assert "\n" not in desc and "standard-library" in desc
    assert builtin_corpus(max_chars=200_000) == (text, desc)
    assert "def " in text and "import " in text
    with pytest.raises(RnnlabError):
        builtin_corpus(max_chars=0)


def test_builtin_corpus_missing_everything(monkeypatch):
    import rnnlab.data.builtin as builtin_mod

    monkeypatch.setattr(builtin_mod, "BUILTIN_MODULES", ("no_such_module_xyz",))
    with pytest.raises(RnnlabError) as e:
        builtin_mod.builtin_corpus()
    _one_line_error(e, "built-in corpus")
