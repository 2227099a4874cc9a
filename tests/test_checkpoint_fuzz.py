"""Fuzz tests: damaged checkpoints and JSON files give a clean load or RnnlabError, nothing else.

Every case asserts the one acceptable outcome: a load that returns exactly the original tensors
and meta (and matches ``expected``) where the file is intact, an :class:`RnnlabError` with a
one-line message where it is damaged. Any other exception, or a load that allocates more than
a few MB for these files of a few hundred bytes, fails the test. Hypothesis runs derandomized
so CI sees the same cases every time; in total well over 1,000 cases run. How long loads take
(the damaged ones included) is measured by ``benchmarks/checkpoint_load.py``, not asserted here.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlab.errors import RnnlabError
from rnnlab.io import atomic_write_json, read_json
from rnnlab.lm import checkpoint as ck
from rnnlab.lm.checkpoint import inspect_checkpoint, load_checkpoint, save_checkpoint

FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ORIGINAL = {
    "embed.W": np.arange(15, dtype=np.float32).reshape(5, 3) / 7,
    "rnn.b_h_l0": np.linspace(-1, 1, 4),
    "step_counts": np.array([3, -2], dtype=np.int64),
    "mask": np.array([True, False, True]),
    "empty": np.zeros((0, 2), dtype=np.float16),
    "scale": np.array(0.5, dtype=np.float32),
}
EXPECTED = {name: (a.shape, str(a.dtype)) for name, a in ORIGINAL.items()}
META = {"step": 7, "config": {"hidden": 4, "cell": "lstm"}, "val_loss": 1.25}
CONFIG = {"cell": "gru", "hidden": 64, "layers": [1, 2], "lr": 0.002, "name": "ü"}

# where every case gets written
WORK: Path
VALID: bytes
HEADER_LEN: int
HEADER: dict


@pytest.fixture(scope="module", autouse=True)
def _workdir(tmp_path_factory):
    global WORK, VALID, HEADER_LEN, HEADER
    WORK = tmp_path_factory.mktemp("fuzz")
    save_checkpoint(WORK / "valid.safetensors", ORIGINAL, META)
    VALID = (WORK / "valid.safetensors").read_bytes()
    HEADER_LEN = int.from_bytes(VALID[:8], "little")
    HEADER = json.loads(VALID[8:8 + HEADER_LEN])
    yield


#: What one load of these small files may allocate at most (traced by tracemalloc); a loader that
#: believed a damaged header's sizes would ask for gigabytes.
LOAD_PEAK_BYTES = 2**20


def outcome(data: bytes, expected=EXPECTED) -> str:
    """Load ``data`` as a checkpoint; return "ok" or "error", failing on anything else (another
    exception, a wrong tensor or meta, a peak allocation of :data:`LOAD_PEAK_BYTES` or more)."""
    path = WORK / "case.safetensors"
    path.write_bytes(data)
    error = None
    tracemalloc.start()
    try:
        tensors, meta = load_checkpoint(path, expected)
    except RnnlabError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < LOAD_PEAK_BYTES, f"the load allocated {peak} bytes"
    if error is not None:
        msg = str(error)
        assert msg and "\n" not in msg and str(path) in msg, msg
        return "error"
    specs = EXPECTED if expected is None else expected
    assert sorted(tensors) == sorted(specs)
    for name, (shape, dtype) in specs.items():
        assert tensors[name].shape == tuple(shape)
        assert tensors[name].dtype == np.dtype(dtype)
        assert tensors[name].flags.writeable
        np.testing.assert_array_equal(tensors[name], ORIGINAL[name])
    assert meta == META
    return "ok"


def with_header(header, data: bytes | None = None) -> bytes:
    """A file with ``header`` (any JSON value) and the original data region."""
    raw = json.dumps(header).encode()
    body = VALID[8 + HEADER_LEN:] if data is None else data
    return len(raw).to_bytes(8, "little") + raw + body


# --------------------------------------------------------------------------------------------
# sanity
# --------------------------------------------------------------------------------------------


def test_valid_roundtrip_and_inspect():
    assert outcome(VALID) == "ok"
    # the header as the fuzz tests re-serialise it (other spacing) is intact too
    assert outcome(with_header(_copy_header())) == outcome(with_header(_copy_header()), None) == "ok"
    tensors, meta = load_checkpoint(WORK / "valid.safetensors")
    assert meta == META and sorted(tensors) == sorted(ORIGINAL)
    specs, meta2 = inspect_checkpoint(WORK / "valid.safetensors")
    assert meta2 == META
    assert specs == {k: (tuple(s), d) for k, (s, d) in EXPECTED.items()}
    # safetensors' own loader reads our files too
    from safetensors.numpy import load_file
    assert sorted(load_file(str(WORK / "valid.safetensors"))) == sorted(ORIGINAL)


def test_not_a_file_cases(tmp_path):
    cases = {"missing": tmp_path / "nope.safetensors", "directory": tmp_path}
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.safetensors"
    for name, path in cases.items():
        with pytest.raises(RnnlabError) as ei:
            load_checkpoint(path, EXPECTED)
        assert "\n" not in str(ei.value) and str(path) in str(ei.value), name
    with pytest.raises(RnnlabError, match=r"--checkpoint last\|best"):  # the fix it suggests, verbatim
        load_checkpoint(cases["empty"])


def test_size_limit_checked_before_reading(tmp_path):
    p = tmp_path / "big.safetensors"
    with open(p, "wb") as fh:  # sparse: 8 MB on paper
        fh.truncate(8 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(RnnlabError, match=r"more than the .* limit"):
            load_checkpoint(p, max_bytes=2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, "the file was read before its size was checked"


def test_truncation_at_every_offset():
    # exhaustive, not sampled: every proper prefix of a valid file is refused
    for n in range(len(VALID)):
        assert outcome(VALID[:n]) == "error", n
    assert outcome(VALID + b"\0") == "error"  # trailing junk


# --------------------------------------------------------------------------------------------
# byte-level damage
# --------------------------------------------------------------------------------------------


@settings(max_examples=250, **FUZZ)
@given(st.data())
def test_random_bit_flips(data):
    n_bits = len(VALID) * 8
    region = data.draw(st.sampled_from(["length", "header", "data", "anywhere"]))
    lo, hi = {"length": (0, 64), "header": (64, (8 + HEADER_LEN) * 8),
              "data": ((8 + HEADER_LEN) * 8, n_bits), "anywhere": (0, n_bits)}[region]
    bits = data.draw(st.lists(st.integers(lo, hi - 1), min_size=1, max_size=4))
    buf = bytearray(VALID)
    for b in bits:
        buf[b // 8] ^= 1 << (b % 8)
    # a bit flipped an even number of times is back: the file is intact and must load
    assert outcome(bytes(buf)) == ("ok" if bytes(buf) == VALID else "error")


@settings(max_examples=60, **FUZZ)
@given(st.integers(0, 2**64 - 1))
def test_header_length_field(n):
    result = outcome(n.to_bytes(8, "little") + VALID[8:])
    assert result == ("ok" if n == HEADER_LEN else "error")


def test_header_length_past_the_end_is_named():
    path = WORK / "len.safetensors"
    path.write_bytes((len(VALID) - 7).to_bytes(8, "little") + VALID[8:])
    with pytest.raises(RnnlabError, match="header length points past the end"):
        load_checkpoint(path)


@settings(max_examples=80, **FUZZ)
@given(st.binary(max_size=1500), st.booleans())
def test_garbage(blob, plausible_prefix):
    if plausible_prefix:  # a length field that fits, then garbage
        blob = min(len(blob), 50).to_bytes(8, "little") + blob
    assert outcome(blob) == "error"


# --------------------------------------------------------------------------------------------
# structural damage to the header JSON
# --------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=6)

tensor_names = st.sampled_from(sorted(ORIGINAL))
entry_keys = st.sampled_from(["dtype", "shape", "data_offsets"])


def _copy_header() -> dict:
    return json.loads(json.dumps(HEADER))


@st.composite
def damaged_headers(draw):
    h = _copy_header()
    kind = draw(st.sampled_from([
        "whole", "entry", "key", "drop_key", "extra_key", "dtype", "shape", "huge_shape",
        "offsets", "overlap", "rename", "add_tensor", "drop_tensor", "metadata",
        "meta_json", "checksum", "format"]))
    name = draw(tensor_names)
    entry = h[name]
    if kind == "whole":
        return draw(json_values | st.lists(json_values, max_size=3))
    if kind == "entry":
        h[name] = draw(json_values)
    elif kind == "key":
        entry[draw(entry_keys)] = draw(json_values)
    elif kind == "drop_key":
        del entry[draw(entry_keys)]
    elif kind == "extra_key":
        entry[draw(st.text(min_size=1, max_size=6))] = draw(json_values)
    elif kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(
            ["F32", "F64", "F16", "I64", "I32", "U8", "BOOL", "BF16", "F8_E4M3", "f32",
             "float32", "", "C64", "OBJECT"]) | st.text(max_size=6))
    elif kind == "shape":
        entry["shape"] = draw(st.lists(st.integers(-3, 20), max_size=4)
                              | st.lists(st.floats(0, 9), min_size=1, max_size=3)
                              | st.lists(st.booleans(), min_size=1, max_size=3))
    elif kind == "huge_shape":
        big = draw(st.sampled_from([10**12, 2**62, 2**64 + 1, 10**30]))
        entry["shape"] = draw(st.sampled_from([[big], [big, big], [0, big, big], [10**6, 10**6]]))
        if draw(st.booleans()):  # make the byte range agree with the claimed size
            b = entry["data_offsets"][0]
            entry["data_offsets"] = [b, b + 4 * max(1, np.prod([float(d) for d in entry["shape"]]))]
            entry["data_offsets"] = [int(x) for x in entry["data_offsets"]]
    elif kind == "offsets":
        b, e = entry["data_offsets"]
        entry["data_offsets"] = draw(st.sampled_from(
            [[e, b], [-1, e], [b, -e - 1], [b - 1, e - 1], [b + 1, e + 1], [b, e + 10**9],
             [b], [b, e, e], [str(b), e], [float(b), float(e)]]))
    elif kind == "overlap":
        other = draw(tensor_names.filter(lambda n: n != name))
        entry["data_offsets"] = list(h[other]["data_offsets"])
    elif kind == "rename":
        h[draw(st.text(min_size=1, max_size=8).filter(lambda n: n not in h))] = h.pop(name)
    elif kind == "add_tensor":
        h[draw(st.text(min_size=1, max_size=8).filter(lambda n: n not in h))] = {
            "dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    elif kind == "drop_tensor":
        del h[name]
    elif kind == "metadata":
        choice = draw(st.sampled_from(["delete", "replace", "drop_key", "non_string"]))
        if choice == "delete":
            del h["__metadata__"]
        elif choice == "replace":
            h["__metadata__"] = draw(json_values)
        elif choice == "drop_key":
            del h["__metadata__"][draw(st.sampled_from(sorted(h["__metadata__"])))]
        else:
            h["__metadata__"]["rnnlab"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif kind == "meta_json":
        h["__metadata__"]["rnnlab"] = draw(st.sampled_from(
            ["", "{", "[]", "3", "null", '{"step": NaN}', '{"a": 1, "a": 2}',
             json.dumps(META)[:-1], json.dumps(dict(META, step=8))]))
    elif kind == "checksum":
        h["__metadata__"]["rnnlab_sha256"] = draw(st.sampled_from(
            ["", "0" * 64, h["__metadata__"]["rnnlab_sha256"].upper()]))
    elif kind == "format":
        h["__metadata__"]["rnnlab_format"] = draw(st.sampled_from(["0", "2", "", "1.0"]))
    return h


@settings(max_examples=300, **FUZZ)
@given(damaged_headers(), st.booleans())
def test_damaged_header_json(header, check_expected):
    # without ``expected`` the header checks alone must stop a bad file before allocation
    result = outcome(with_header(header), EXPECTED if check_expected else None)
    # compared as JSON text: 5.0 == 5 in Python, but a float offset is damage
    assert result == ("ok" if json.dumps(header) == json.dumps(HEADER) else "error")


def _mutated(change) -> bytes:
    h = _copy_header()
    replacement = change(h)
    return with_header(h if replacement is None else replacement)


def _set(name, key, value):
    def change(h):
        h[name][key] = value
    return change


def _offsets_of(other):
    return lambda h: h["embed.W"].__setitem__("data_offsets", list(h[other]["data_offsets"]))


TARGETED = [
    ("list header", lambda h: [h], "header is not a JSON object"),
    ("entry not object", lambda h: h.update(x=[1]),
     "entry for tensor 'x' is not an object"),
    ("bad dtype", _set("embed.W", "dtype", "F8"), "unsupported dtype"),
    ("negative dim", _set("embed.W", "shape", [-5, 3]), "invalid shape"),
    ("bool dim", _set("embed.W", "shape", [True, 15]), "invalid shape"),
    ("float dim", _set("embed.W", "shape", [5.0, 3]), "invalid shape"),
    ("zero-size giant", _set("empty", "shape", [0, 2**40, 2**40]), "impossible shape"),
    ("giant", _set("embed.W", "shape", [10**6, 10**6]), "does not match its shape"),
    ("float offsets", lambda h: h["embed.W"].update(data_offsets=[float(o) for o in h["embed.W"]["data_offsets"]]),
     "invalid data_offsets"),
    ("past the end", _set("mask", "data_offsets", [112, 10**9]), "outside the file"),
    ("reversed", _set("embed.W", "data_offsets", [108, 48]), "outside the file"),
    ("negative offset", _set("embed.W", "data_offsets", [-60, 0]), "outside the file"),
    ("overlap", _offsets_of("rnn.b_h_l0"), "does not match"),
    ("missing key", lambda h: h["embed.W"].pop("shape") and None, "lacks shape"),
    ("extra key", _set("embed.W", "offsets", 1), "unknown keys"),
    ("no metadata", lambda h: h.pop("__metadata__") and None, "not written by rnnlab"),
    ("bad meta json", lambda h: h["__metadata__"].update(rnnlab="{"), "not valid JSON"),
    ("meta list", lambda h: h["__metadata__"].update(rnnlab="[]"), "not a JSON object"),
    ("checksum", lambda h: h["__metadata__"].update(rnnlab_sha256="0" * 64), "checksum"),
    ("format", lambda h: h["__metadata__"].update(rnnlab_format="2"), "format '2'"),
]


@pytest.mark.parametrize("label,change,words", TARGETED, ids=[t[0] for t in TARGETED])
def test_each_header_check_names_the_problem(label, change, words):
    path = WORK / "targeted.safetensors"
    path.write_bytes(_mutated(change))
    with pytest.raises(RnnlabError, match=words.replace("(", r"\(")) as ei:
        load_checkpoint(path)  # no ``expected``: the header checks alone must catch it
    assert "\n" not in str(ei.value)


def test_gap_and_overlap_are_detected_by_the_tiling_check():
    def gap(h):  # shift the last tensor one byte: leaves a gap and runs past the data
        h["mask"]["data_offsets"] = [113, 116]
    data = _mutated(gap) + b"\0"
    path = WORK / "gap.safetensors"
    path.write_bytes(data)
    with pytest.raises(RnnlabError, match="overlap or leave gaps"):
        load_checkpoint(path)

    def overlap(h):  # two equal-sized tensors claiming the same bytes
        h["mask"]["data_offsets"] = [104, 107]
    path.write_bytes(_mutated(overlap))
    with pytest.raises(RnnlabError, match="overlap or leave gaps"):
        load_checkpoint(path)


@settings(max_examples=15, **FUZZ)
@given(st.sampled_from([[10**12], [10**6, 10**6], [2**40, 2**20], [1, 10**12, 1]]),
       st.booleans())
def test_huge_declared_shape_allocates_nothing(shape, consistent):
    h = _copy_header()
    entry = h["embed.W"]
    b = entry["data_offsets"][0]
    entry["shape"] = shape
    if consistent:
        entry["data_offsets"] = [b, b + 4 * int(np.prod(shape, dtype=object))]
    assert outcome(with_header(h)) == "error"  # and, checked there, without allocating 1 MB


def test_oversized_header_is_not_read(tmp_path):
    # a header length just over the limit in a (sparse) file that is large enough to hold it
    p = tmp_path / "h.safetensors"
    with open(p, "wb") as fh:
        fh.write((ck.MAX_HEADER_BYTES + 1).to_bytes(8, "little"))
        fh.truncate(ck.MAX_HEADER_BYTES + 100)
    tracemalloc.start()
    try:
        with pytest.raises(RnnlabError, match="header claims"):
            load_checkpoint(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


# --------------------------------------------------------------------------------------------
# data-level problems and mismatches with the model
# --------------------------------------------------------------------------------------------


def _file_with(tensors: dict, meta: dict = META) -> bytes:
    """A correctly checksummed file, bypassing save_checkpoint's NaN guard."""
    from safetensors.numpy import save

    meta_json = json.dumps(meta)
    return save(tensors, metadata={"rnnlab_format": ck.FORMAT_VERSION, "rnnlab": meta_json,
                                   "rnnlab_sha256": ck._digest(meta_json, tensors)})


@settings(max_examples=40, **FUZZ)
@given(st.sampled_from(["embed.W", "rnn.b_h_l0", "scale"]), st.integers(0, 14),
       st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_or_inf_in_data(name, index, value):
    tensors = {k: v.copy() for k, v in ORIGINAL.items()}
    flat = tensors[name].reshape(-1)
    flat[index % flat.size] = value
    path = WORK / "nan.safetensors"
    before = _file_with(tensors)
    path.write_bytes(before)
    with pytest.raises(RnnlabError, match="NaN/Inf") as ei:
        load_checkpoint(path, EXPECTED)
    assert repr(name) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(RnnlabError, match="refusing to save"):
        save_checkpoint(path, tensors, META)
    # and save refused without touching the file
    assert path.read_bytes() == before


def test_invalid_booleans_with_valid_checksum():
    tensors = {k: v.copy() for k, v in ORIGINAL.items()}
    tensors["mask"].view(np.uint8)[0] = 7
    assert outcome(_file_with(tensors)) == "error"


@st.composite
def wrong_expectations(draw):
    exp = {k: (tuple(s), d) for k, (s, d) in EXPECTED.items()}
    kind = draw(st.sampled_from(["drop", "add", "shape", "ndim", "dtype", "rename"]))
    name = draw(tensor_names)
    if kind == "drop":
        del exp[name]
    elif kind == "add":
        new_name = draw(st.text(min_size=1, max_size=6).filter(lambda n: n not in exp))
        exp[new_name] = ((2,), "float32")
    elif kind == "shape":
        shape = list(exp[name][0]) or [1]
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = shape[i] + draw(st.integers(1, 5))
        exp[name] = (tuple(shape), exp[name][1])
    elif kind == "ndim":
        exp[name] = (tuple(exp[name][0]) + (1,), exp[name][1])
    elif kind == "dtype":
        exp[name] = (exp[name][0], draw(st.sampled_from(
            [d for d in ["float32", "float64", "int64", "bool", "F16", "U8"]
             if np.dtype(ck._numpy_dtype(d)) != np.dtype(exp[name][1])])))
    else:
        exp[name + "_x"] = exp.pop(name)
    return kind, name, exp


@settings(max_examples=100, **FUZZ)
@given(wrong_expectations())
def test_mismatch_with_expected(case):
    kind, name, exp = case
    path = WORK / "valid.safetensors"
    with pytest.raises(RnnlabError, match="does not fit this model") as ei:
        load_checkpoint(path, exp)
    msg = str(ei.value)
    assert "\n" not in msg
    if kind in ("shape", "ndim", "dtype", "drop", "rename"):
        assert repr(name) in msg
    if kind in ("shape", "ndim"):
        assert "expected (" in msg


# --------------------------------------------------------------------------------------------
# JSON files (config, vocabulary) through read_json
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_config():
    atomic_write_json(WORK / "config.json", CONFIG)
    return (WORK / "config.json").read_bytes()


def _read_json_outcome(raw: bytes):
    path = WORK / "fuzz.json"
    path.write_bytes(raw)
    try:
        obj = read_json(path, "run config")
    except RnnlabError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return None
    assert isinstance(obj, dict)
    return obj


def _strict_json_object(raw: bytes):
    """What read_json promises for ``raw``, from the standard library alone: the object when
    ``raw`` is UTF-8 text of strict JSON (no NaN or Infinity, no repeated key) holding an
    object, else None (an error)."""
    def no_constants(name):
        raise ValueError(name)

    def pairs(items):
        if len({k for k, _ in items}) != len(items):
            raise ValueError("repeated key")
        return dict(items)

    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return obj if isinstance(obj, dict) else None


@settings(max_examples=200, **FUZZ)
@given(st.data())
def test_read_json_damage(valid_config, data):
    kind = data.draw(st.sampled_from(["truncate", "flip", "wrong_type", "garbage", "splice", "constants"]))
    if kind == "truncate":
        n = data.draw(st.integers(0, len(valid_config) - 1))
        raw = valid_config[:n]
        want = CONFIG if raw.strip() == valid_config.strip() else None  # only the final newline cut
    elif kind == "flip":
        buf = bytearray(valid_config)
        for b in data.draw(st.lists(st.integers(0, len(buf) * 8 - 1), min_size=1, max_size=3)):
            buf[b // 8] ^= 1 << (b % 8)
        raw = bytes(buf)
        want = _strict_json_object(raw)  # a flip may leave valid JSON: "64" -> "66", "gru" -> "gr5"
    elif kind == "wrong_type":
        value = data.draw(json_values.filter(lambda v: not isinstance(v, dict))
                          | st.lists(st.just(CONFIG), max_size=2))
        raw, want = json.dumps(value).encode(), None
    elif kind == "garbage":
        raw = data.draw(st.binary(max_size=300) | st.text(max_size=40).map(str.encode))
        want = _strict_json_object(raw)
    elif kind == "splice":  # a valid object with junk after it
        raw = valid_config + data.draw(st.binary(min_size=1, max_size=20).filter(lambda b: b.strip()))
        want = None
    else:  # a value Python's json accepts but strict JSON does not
        raw = valid_config.replace(b"0.002", data.draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"])))
        want = None
    assert _read_json_outcome(raw) == want
