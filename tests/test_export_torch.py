"""PyTorch export and import of whole char-LMs: rnnlab -> torch.nn.Module -> rnnlab.

``to_torch`` gives a plain ``TorchCharLM`` (Embedding -> nn.RNN/LSTM/GRU -> Linear) whose logits
are rnnlab's to 1e-5 in float32 and 1e-10 in float64; the way back is exact; the torch format
(``config.json`` + ``model.safetensors``) is written atomically and read back; a model trained in
PyTorch becomes an rnnlab run that ``rnnlab sample`` uses.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rnnlab.cli import main  # noqa: E402
from rnnlab.data import Vocab  # noqa: E402
from rnnlab.errors import RnnlabError  # noqa: E402
from rnnlab.interop.torch import (TorchCharLM, charlm_config, from_torch, load, read_export, save,  # noqa: E402
                                  to_torch)
from rnnlab.lm.imported import write_model_run  # noqa: E402
from rnnlab.models import build_model  # noqa: E402

TEXT = "the cat sat on the mat. a dog ran far away and slept in the sun.\n" * 30
VOCAB = Vocab.from_text(TEXT)
V = VOCAB.size


def model_of(rng=0, **cfg):
    return build_model({"vocab_size": V, **cfg}, rng=np.random.default_rng(rng)).eval()


def torch_forward(module, ids, state=None):
    with torch.no_grad():
        logits, state = module(torch.from_numpy(ids.astype(np.int64)), state)
    return logits.numpy(), state


def assert_same_logits(model, module, tol, seed=0):
    """Two chunks with the state carried, in both frameworks; returns the worst difference."""
    ids = np.random.default_rng(seed).integers(0, V, (12, 3))
    a1, s, _ = model.forward(ids[:5])
    a2, _, _ = model.forward(ids[5:], s)
    b1, t = torch_forward(module, ids[:5])
    b2, _ = torch_forward(module, ids[5:], t)
    worst = max(np.abs(a1 - b1).max(), np.abs(a2 - b2).max())
    assert worst <= tol
    return worst


CELLS = [dict(model="rnn", nonlinearity="tanh"), dict(model="rnn", nonlinearity="relu"), dict(model="lstm"),
         dict(model="gru")]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-10)])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: "-".join(c.values()))
def test_to_torch_gives_rnnlabs_logits(cell, dtype, tol):
    for layers, embed in ((1, 6), (2, 0), (3, 6)):
        m = model_of(hidden=10, layers=layers, embed=embed, dtype=dtype, **cell)
        t = to_torch(m)
        assert isinstance(t, torch.nn.Module) and not t.training and t.out.weight.dtype == getattr(torch, dtype)
        assert isinstance(t.rnn, {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell["model"]])
        assert (t.embed is None) == (embed == 0)
        assert_same_logits(m, t, tol)


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: "-".join(c.values()))
def test_round_trip_rnnlab_torch_rnnlab_is_exact(cell):
    m = model_of(hidden=9, layers=2, embed=5, dropout=0.25, **cell)
    back = from_torch(to_torch(m))
    assert back.config() == m.config()
    sd, sd_back = m.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for k in sd:
        assert sd[k].dtype == sd_back[k].dtype and np.array_equal(sd[k], sd_back[k]), k


def test_torch_format_written_atomically_and_read_back(tmp_path):
    m = model_of(model="gru", hidden=12, layers=2, embed=5)
    save(m, tmp_path / "gru", VOCAB, metadata={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "gru").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gru"]  # no temporary directory left
    back, vocab, cfg = read_export(tmp_path / "gru")  # NumPy only
    assert vocab == VOCAB and cfg["note"] == "x" and cfg["model"] == m.config()
    assert all(np.array_equal(back.params[k], m.params[k]) for k in m.params)
    t = load(tmp_path / "gru")
    assert t.vocab == VOCAB
    assert_same_logits(m, t, 1e-5)
    # the weights are a plain safetensors file under the module's own names
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "gru" / "model.safetensors")) == set(t.state_dict())
    with pytest.raises(RnnlabError, match="already exists"):
        save(m, tmp_path / "gru", VOCAB)
    save(model_of(model="lstm", hidden=4, layers=1, embed=3), tmp_path / "gru", VOCAB, force=True)
    assert read_export(tmp_path / "gru")[0].cell == "lstm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gru"]


class OwnCharLM(torch.nn.Module):
    """A char-LM written in PyTorch by someone else, with the same architecture and names."""

    def __init__(self, V, H=24):
        super().__init__()
        self.embed = torch.nn.Embedding(V, 8)
        self.rnn = torch.nn.LSTM(8, H, num_layers=2)
        self.out = torch.nn.Linear(H, V)

    def forward(self, ids, state=None):
        h, state = self.rnn(self.embed(ids), state)
        return self.out(h), state


@pytest.mark.parametrize("make", [lambda: OwnCharLM(V), lambda: TorchCharLM(V, cell="gru", hidden=24, embed=0)],
                         ids=["own-module", "TorchCharLM-one-hot"])
def test_a_model_trained_in_pytorch_becomes_an_rnnlab_run(make, tmp_path, capsys):
    torch.manual_seed(0)
    module = make()
    ids = torch.from_numpy(VOCAB.encode(TEXT).astype(np.int64))
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    for step in range(25):  # a few steps of ordinary PyTorch training on (T, B) windows
        starts = torch.randint(0, len(ids) - 17, (8,))
        batch = torch.stack([ids[s:s + 17] for s in starts], dim=1)  # (17, 8)
        logits, _ = module(batch[:-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), batch[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    save(module, tmp_path / "exported", VOCAB)
    assert main(["import-torch", str(tmp_path / "exported"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "--prime", "the ", "--length", "80", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the ") and len(out) == len("the ") + 80 + 1
    (tmp_path / "text.txt").write_text(TEXT)
    assert main(["eval", str(tmp_path / "run"), str(tmp_path / "text.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss_nats"] < 0.8 * np.log(V)  # it is the trained model
    run_model, vocab, _ = read_export(tmp_path / "exported")
    assert vocab == VOCAB
    assert_same_logits(run_model, module, 1e-5)
    # the run's own checkpoint holds the same model: sampling via from_torch matches rnnlab sample
    from rnnlab.cli.common import load_run

    model = load_run(tmp_path / "run", "best")[4]
    assert_same_logits(model, module, 1e-5)


def test_refusals_are_one_line_and_name_the_reason(tmp_path):
    with pytest.raises(RnnlabError, match="'mlp' model is not one"):
        to_torch(model_of(model="mlp", context=3, embed=4, hidden=8))
    bi = OwnCharLM(V)
    bi.rnn = torch.nn.LSTM(8, 24, num_layers=2, bidirectional=True)
    with pytest.raises(RnnlabError, match="unidirectional"):
        charlm_config(bi)
    bare = torch.nn.Sequential(torch.nn.Embedding(V, 4))
    with pytest.raises(RnnlabError, match="needs children embed"):
        charlm_config(bare)
    relu = model_of(model="rnn", hidden=6, layers=1, embed=3, nonlinearity="relu")
    with pytest.raises(RnnlabError, match="tanh RNNs only"):
        write_model_run(tmp_path / "run", relu, VOCAB, source="test")
    assert not (tmp_path / "run").exists()
    with pytest.raises(RnnlabError, match="vocabulary has"):
        save(model_of(model="gru", hidden=4, layers=1, embed=3), tmp_path / "x", Vocab("ab"))
    assert not (tmp_path / "x").exists()


def test_export_format_torch_from_the_command(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    assert main(["train", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run"), "--model", "lstm", "--layers", "2",
                 "--hidden", "12", "--embed", "0", "--batch", "4", "--seq-len", "8", "--max-steps", "3",
                 "--eval-every", "3", "--quiet"]) == 0
    assert main(["export", str(tmp_path / "run"), "--format", "torch", "--out", str(tmp_path / "pt")]) == 0
    t = load(tmp_path / "pt")
    from rnnlab.cli.common import load_run

    model = load_run(tmp_path / "run", "best")[4]
    assert_same_logits(model, t, 1e-5)
    assert_same_logits(model, to_torch(tmp_path / "run"), 1e-5)  # straight from the run directory
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "torch", "--out", str(tmp_path / "pt")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--format", "torch", "--out", str(tmp_path / "pt"), "--force"]) == 0
    # the way back: an imported run holds the same weights, and exports again
    assert main(["import-torch", str(tmp_path / "pt"), "--out", str(tmp_path / "back"), "--quiet"]) == 0
    back = load_run(tmp_path / "back", "best")[4]
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)
    assert main(["import-torch", str(tmp_path / "pt"), "--out", str(tmp_path / "back"), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "back"), "--format", "torch", "--out", str(tmp_path / "pt2")]) == 0
