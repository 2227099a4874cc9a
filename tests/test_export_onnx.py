"""ONNX export: onnxruntime runs the exported graph and gets rnnlab's logits and states.

Every model kind ``rnnlab train`` builds (rnn tanh/relu, lstm, gru with 1-3 layers, with an
embedding or one-hot input, with dropout, in float64; the window MLP, the causal CNN, the bigram)
is exported and run by onnxruntime over two chunks with the state carried between them, and one
character per call; ``rnnlab export`` / ``rnnlab sample model.onnx`` are run end to end, and the
sampling script of docs/export.md is run as written.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from rnnlab import __version__  # noqa: E402
from clitools import cli  # noqa: E402
from rnnlab.cli import main  # noqa: E402
from rnnlab.data import Vocab  # noqa: E402
from rnnlab.errors import RnnlabError  # noqa: E402
from rnnlab.interop.onnx import GATE_ORDER, onnx_bytes, onnx_gate_order  # noqa: E402
from rnnlab.interop.onnx_run import OnnxLM  # noqa: E402
from rnnlab.models import LanguageModel, build_model  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
V = 13
VOCAB = Vocab("abcdefghijkl", boundary=True)  # 12 characters + the boundary token = 13 ids
TOL = 1e-5  # max abs difference of float32 logits, the bar


def exported(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(onnx_bytes(model, VOCAB, {"source_run": "test"}))
    return OnnxLM(path)


def model_of(rng=0, **cfg):
    m = build_model({"vocab_size": V, **cfg}, rng=np.random.default_rng(rng))
    if cfg["model"] == "bigram":  # its table starts at zero; give it something to look up
        m.params["W"][...] = np.random.default_rng(rng).standard_normal((V, V))
    return m.eval()


def flat(state):
    """A model's state as a list of arrays (a window of width 1 carries an empty one: left out)."""
    if state is None:
        return []
    return [np.asarray(s) for s in (state if isinstance(state, tuple) else (state,)) if s.size]


def assert_parity(model, onx, ids, split):
    """Two chunks ``ids[:split]``, ``ids[split:]``, the state carried: logits and states agree."""
    a1, s1, _ = model.forward(ids[:split])
    a2, s2, _ = model.forward(ids[split:], s1)
    b1, t1, _ = onx.forward(ids[:split])
    b2, t2, _ = onx.forward(ids[split:], t1)
    for a, b in ((a1, b1), (a2, b2)):
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.abs(a - b).max() <= TOL
    for s, t in zip(flat(s2), t2, strict=True):
        assert s.shape == t.shape and np.abs(s.astype(np.float64) - t).max() <= TOL
    return b1, b2


# ------------------------------------------------------------------------------ the gate reordering
def test_gate_order_is_onnx_order():
    """Block k of the result is ONNX gate k (LSTM i,o,f,c; GRU z,r,h) taken from rnnlab's blocks."""
    H = 2
    names = {"lstm": "ifgo", "gru": "rzn", "rnn": "h"}
    onnx_names = {"lstm": "iofg", "gru": "zrn", "rnn": "h"}  # ONNX's c is rnnlab's g, its h rnnlab's n
    for cell, gates in names.items():
        rows = np.array([[ord(g), j] for g in gates for j in range(H)])  # (G*H, 2): gate letter, unit
        out = onnx_gate_order(cell, rows)
        assert "".join(chr(c) for c in out[::H, 0]) == onnx_names[cell]
        assert out[:, 1].tolist() == list(range(H)) * len(gates)  # units keep their order inside a block
        assert onnx_gate_order(cell, rows[:, 0]).tolist() == out[:, 0].tolist()  # biases (1-D) alike
        assert sorted(GATE_ORDER[cell]) == list(range(len(gates)))


# ------------------------------------------------------------------------------ parity
RECURRENT = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell,nonlinearity", RECURRENT)
def test_recurrent_parity_over_two_chunks(cell, nonlinearity, layers, tmp_path):
    m = model_of(model=cell, hidden=16, layers=layers, embed=6, nonlinearity=nonlinearity)
    ids = np.random.default_rng(layers).integers(0, V, (11, 3))
    assert_parity(m, exported(m, tmp_path), ids, 6)


@pytest.mark.parametrize("cell,nonlinearity", RECURRENT)
def test_one_hot_input_dropout_and_float64(cell, nonlinearity, tmp_path):
    """``embed = 0`` (one-hot input), dropout (a training device: not in the graph), float64 weights
    (the graph is float32)."""
    for i, extra in enumerate([dict(embed=0), dict(embed=5, dropout=0.4), dict(embed=5, dtype="float64")]):
        m = model_of(model=cell, hidden=12, layers=2, nonlinearity=nonlinearity, **extra)
        ids = np.random.default_rng(i).integers(0, V, (9, 2))
        assert_parity(m, exported(m, tmp_path, f"m{i}.onnx"), ids, 4)


def test_carried_state_is_not_ignored(tmp_path):
    """The second chunk's logits depend on the state fed in: a fresh start gives other numbers."""
    m = model_of(model="lstm", hidden=16, layers=2, embed=6)
    onx = exported(m, tmp_path)
    ids = np.random.default_rng(0).integers(0, V, (10, 2))
    _, b2 = assert_parity(m, onx, ids, 5)
    fresh, _, _ = onx.forward(ids[5:])
    assert np.abs(fresh - b2).max() > 1e-3


FEED_FORWARD = [
    dict(model="mlp", context=5, embed=4, hidden=10, layers=2),
    dict(model="mlp", context=1, embed=4, hidden=10, layers=1),  # no context carried at all
    dict(model="mlp", context=3, embed=4, hidden=10, layers=1, dropout=0.3),
    dict(model="cnn", embed=4, channels=8, layers=3, kernel=2),
    dict(model="cnn", embed=4, channels=8, layers=2, kernel=3),
    dict(model="bigram"),
]


@pytest.mark.parametrize("cfg", FEED_FORWARD, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_feed_forward_parity(cfg, tmp_path):
    m = model_of(**cfg)
    ids = np.random.default_rng(1).integers(0, V, (12, 3))
    assert_parity(m, exported(m, tmp_path), ids, 2)  # a first chunk shorter than the window


@pytest.mark.parametrize("cfg", [dict(model="lstm", hidden=10, layers=2, embed=4),
                                 dict(model="gru", hidden=10, layers=3, embed=0),
                                 dict(model="rnn", hidden=10, layers=1, embed=4), *FEED_FORWARD[::3]],
                         ids=lambda c: c["model"])
def test_one_character_per_call_equals_the_whole_sequence(cfg, tmp_path):
    onx = exported(model_of(**cfg), tmp_path)
    ids = np.random.default_rng(2).integers(0, V, (15, 2))
    whole, state_whole, _ = onx.forward(ids)
    state, steps = None, []
    for t in range(len(ids)):
        logits, state, _ = onx.forward(ids[t:t + 1], state)
        steps.append(logits[0])
    assert np.abs(np.stack(steps) - whole).max() <= 1e-6
    for a, b in zip(state, state_whole, strict=True):
        assert np.abs(a - b).max() <= 1e-6


def test_a_graph_node_per_recurrent_layer_and_the_metadata(tmp_path):
    import onnx

    m = model_of(model="gru", hidden=8, layers=3, embed=4)
    proto = onnx.load_from_string(onnx_bytes(m, VOCAB, {"source_run": "/runs/x", "checkpoint": "best"}))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GRU") == 3 and "Gather" in ops
    assert all(a.i == 1 for n in proto.graph.node if n.op_type == "GRU" for a in n.attribute
               if a.name == "linear_before_reset")
    assert proto.opset_import[0].version >= 14
    assert [i.name for i in proto.graph.input] == ["ids", "h0"]
    assert [o.name for o in proto.graph.output] == ["logits", "hn"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["rnnlab.version"] == __version__
    assert json.loads(meta["rnnlab.vocab"])["tokens"] == VOCAB.tokens
    assert json.loads(meta["rnnlab.special_tokens"]) == {"bos": 0, "eos": 0}
    assert json.loads(meta["rnnlab.source_run"]) == "/runs/x" and json.loads(meta["rnnlab.checkpoint"]) == "best"
    assert json.loads(meta["rnnlab.model"]) == m.config()


def test_an_unknown_model_kind_is_refused_naming_the_known_ones():
    class Mystery(LanguageModel):
        kind = "transformer"

    with pytest.raises(RnnlabError, match=r"'transformer'.*rnn, lstm, gru, mlp, cnn, bigram") as e:
        onnx_bytes(Mystery(V), VOCAB)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ the command
TEXT = "the cat sat on the mat. a dog ran far away and slept in the sun.\n" * 40
NAMES = "\n".join(["anna", "bob", "carla", "dan", "eve", "fred", "gina", "hal", "ida", "jo"] * 12) + "\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: a stream-mode GRU, a lines-mode LSTM, a stream-mode MLP."""
    d = tmp_path_factory.mktemp("runs")
    (d / "text.txt").write_text(TEXT)
    (d / "names.txt").write_text(NAMES)
    tiny = ["--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8", "--max-steps", "6",
            "--eval-every", "3", "--quiet", "--lr", "0.01"]
    for name, text, extra in (("gru", "text.txt", ["--model", "gru"]), ("names", "names.txt", ["--lines"]),
                              ("mlp", "text.txt", ["--model", "mlp", "--context", "4"])):
        assert main(["train", str(d / text), "--out", str(d / name), *tiny, *extra]) == 0
    return d


@pytest.mark.parametrize("run,options", [
    ("gru", ["--prime", "the ", "--length", "120", "--seed", "5"]),
    ("gru", ["--length", "60", "--temperature", "0"]),
    ("mlp", ["--prime", "a d", "--length", "80", "--seed", "1", "--top-k", "4", "--num", "2"]),
    ("names", ["--num", "6", "--seed", "2", "--temperature", "0.8"]),
])
def test_sampling_the_onnx_file_gives_the_runs_text(runs, run, options, tmp_path, capsys):
    rc, out, _ = cli(capsys, "export", runs / run, "--out", tmp_path / "m.onnx", "--checkpoint", "last")
    assert rc == 0 and "m.onnx" in out
    rc, from_run, _ = cli(capsys, "sample", runs / run, "--checkpoint", "last", *options)
    assert rc == 0 and from_run.strip()
    rc, from_file, _ = cli(capsys, "sample", tmp_path / "m.onnx", *options)
    assert rc == 0 and from_file == from_run


def test_exported_file_names_its_run_and_checkpoint(runs, tmp_path, capsys):
    out = tmp_path / "deep" / "dir" / "names.onnx"  # missing parent directories are made
    assert cli(capsys, "export", runs / "names", "--out", out)[0] == 0
    onx = OnnxLM(out)
    assert onx.meta["source_run"] == str((runs / "names").resolve()) and onx.meta["checkpoint"] == "best"
    assert onx.meta["special_tokens"] == {"bos": 0, "eos": 0} and onx.meta["version"] == __version__
    assert onx.vocab == Vocab.from_lines(NAMES.split())
    assert onx.meta["train"]["lines"] is True and onx.meta["checkpoint_step"] == 6


def test_the_documented_script_samples_what_rnnlab_samples(runs, tmp_path, capsys):
    """docs/export.md's onnxruntime + NumPy script, run as written, at most 15 lines."""
    script = re.search(r"<!-- onnx-script -->\s*```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    assert len(script.strip().splitlines()) <= 15
    (tmp_path / "sample.py").write_text(script)
    assert cli(capsys, "export", runs / "gru", "--out", tmp_path / "m.onnx")[0] == 0
    p = subprocess.run([sys.executable, tmp_path / "sample.py", tmp_path / "m.onnx", "the ", "0.9", "4", "150"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rc, expect, _ = cli(capsys, "sample", runs / "gru", "--prime", "the ", "--temperature", "0.9", "--seed", "4",
                        "--length", "150")
    assert p.stdout == expect


# ------------------------------------------------------------------------------ bad input
def test_existing_output_needs_force_and_is_left_intact(runs, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    rc, _, err = cli(capsys, "export", runs / "gru", "--out", out)
    assert rc == 2 and err.count("\n") == 1 and "--force" in err and out.read_bytes() == b"precious"
    assert cli(capsys, "export", runs / "gru", "--out", out, "--force")[0] == 0
    assert OnnxLM(out).kind == "gru"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


@pytest.mark.parametrize("case", ["no-run", "incomplete-run", "unknown-format", "no-onnx-package", "not-onnx",
                                  "not-rnnlab-onnx", "no-onnxruntime-package"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out" / "m.onnx"
    argv, want = ["export", runs / "gru", "--out", out], []
    if case == "no-run":
        argv[1], want = tmp_path / "nope", ["does not exist"]
    elif case == "incomplete-run":
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "config.json").write_text((runs / "gru" / "config.json").read_text())
        argv[1], want = tmp_path / "half", ["incomplete", "checkpoint"]
    elif case == "unknown-format":
        argv += ["--format", "tflite"]
        want = ["--format", "onnx", "torch"]
    elif case == "no-onnx-package":
        monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
        want = ['pip install "rnnlab[export]"']
    elif case == "no-onnxruntime-package":
        assert cli(capsys, "export", runs / "gru", "--out", tmp_path / "m.onnx")[0] == 0
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
        argv, want = ["sample", tmp_path / "m.onnx"], ["needs onnxruntime", 'pip install "rnnlab[export]"']
    elif case in ("not-onnx", "not-rnnlab-onnx"):
        import onnx

        bogus = tmp_path / "bogus.onnx"
        if case == "not-onnx":
            bogus.write_bytes(b"\x00garbage" * 10)
            want = ["not a loadable ONNX model"]
        else:
            g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                       [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
            bogus.write_bytes(onnx.helper.make_model(g).SerializeToString())
            want = ["not one written by rnnlab export"]
        argv = ["sample", bogus]
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and err.startswith("rnnlab: ") and err.count("\n") == 1, err
    assert all(w in err for w in want), err
    assert not (tmp_path / "out").exists()


def test_a_model_kind_a_format_cannot_express_is_named(runs, tmp_path, capsys):
    rc, _, err = cli(capsys, "export", runs / "mlp", "--format", "torch", "--out", tmp_path / "t")
    assert rc == 2 and "'mlp'" in err and "--format onnx" in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()
