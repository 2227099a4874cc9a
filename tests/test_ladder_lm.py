"""The new rungs of the char-LM ladder — bow, mingru, minlstm, transformer — through the product:
``rnnlab train`` (stream and lines mode), exact resume, ``sample`` past the transformer's block,
``eval``, ``compare``, their bad-input messages, and weight decay on matrices only."""
from __future__ import annotations

import numpy as np
import pytest

from clitools import cli
from rnnlab.lm.checkpoint import load_checkpoint
from rnnlab.optim import make_optimizer

SIZES = {
    "bow": ["--embed", "8", "--hidden", "16"],
    "mingru": ["--layers", "2", "--hidden", "16", "--embed", "8", "--dropout", "0.1"],
    "minlstm": ["--layers", "2", "--hidden", "16", "--embed", "8"],
    "transformer": ["--layers", "2", "--hidden", "16", "--heads", "2", "--dropout", "0.1"],
}
COMMON = ["--batch", "4", "--seq-len", "8", "--quiet", "--max-steps", "6", "--eval-every", "3"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ladder-texts")
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and a dog ran far away then slept in the sun".split()
    en = "\n".join(" ".join(words[i] for i in rng.integers(0, len(words), 9)) + "." for _ in range(120)) + "\n"
    names = "\n".join("".join("abcdeilmnorsty"[j] for j in rng.integers(0, 14, rng.integers(3, 9))).capitalize()
                      for _ in range(300)) + "\n"
    (d / "en.txt").write_text(en, encoding="utf-8")
    (d / "names.txt").write_text(names, encoding="utf-8")
    return {"stream": d / "en.txt", "lines": d / "names.txt"}


def _same_checkpoints(a, b):
    for which in ("last", "best"):
        ta, tb = load_checkpoint(a / "checkpoints" / f"{which}.safetensors")[0], \
            load_checkpoint(b / "checkpoints" / f"{which}.safetensors")[0]
        assert sorted(ta) == sorted(tb)
        for k in ta:
            assert np.array_equal(ta[k], tb[k]), f"{which}: {k} differs"


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("kind", sorted(SIZES))
def test_trains_learns_and_resumes_exactly(kind, mode, texts, tmp_path, capsys, monkeypatch):
    """Six steps straight, and interrupted after step 3 then resumed: identical checkpoints. The
    test score is reported, and the run samples and evaluates."""
    import json
    import signal

    from rnnlab.lm.trainer import Trainer

    opts = ["--model", kind, *SIZES[kind], *COMMON, "--lr", "1e-2"] + (["--lines"] if mode == "lines" else [])
    rc, out, err = cli(capsys, "train", texts[mode], "--out", tmp_path / "straight", *opts)
    assert rc == 0, err
    assert "test loss" in out
    real_step = Trainer.train_step

    def step_then_ctrl_c(self):
        loss = real_step(self)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    rc, out, err = cli(capsys, "train", texts[mode], "--out", tmp_path / "resumed", *opts)
    monkeypatch.undo()
    assert rc == 0 and "interrupted at step 3" in out, err
    rc, _, err = cli(capsys, "train", texts[mode], "--out", tmp_path / "resumed", "--resume", "--quiet")
    assert rc == 0, err
    _same_checkpoints(tmp_path / "straight", tmp_path / "resumed")
    rc, out, err = cli(capsys, "sample", tmp_path / "straight", "--length", "40", "--seed", "1",
                       *([] if mode == "lines" else ["--prime", "the "]))
    assert rc == 0 and out.strip(), err
    rc, out, err = cli(capsys, "eval", tmp_path / "straight", texts[mode], "--json")
    assert rc == 0 and json.loads(out)["loss_nats"] > 0, err


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_each_kind_learns(kind, texts, tmp_path, capsys):
    """40 steps on the names: the mean training loss of the last 10 steps is well below that of
    the first 10, and the validation loss ends below the uniform guess."""
    import math

    from rnnlab.lm.config import TrainConfig
    from rnnlab.lm.corpus import build_corpus, load_text
    from rnnlab.lm.rundir import RunDir
    from rnnlab.lm.trainer import Trainer, write_run_files

    opts = dict(zip(SIZES[kind][::2], SIZES[kind][1::2]))
    cfg = TrainConfig(model=kind, lines=True, batch=16, seq_len=16, lr=1e-2, max_steps=40, eval_every=40,
                      schedule="constant", **{k.lstrip("-").replace("-", "_"): (float(v) if "." in v else int(v))
                                              for k, v in opts.items()}).validate()
    text, source = load_text(str(texts["lines"]))
    corpus = build_corpus(text, source, lines=True, val_frac=0.1, test_frac=0.0, seed=0)
    losses = []
    with RunDir.create(tmp_path / "run") as run:
        write_run_files(run, cfg, corpus)
        trainer = Trainer(cfg, corpus, run, progress=False)
        for _ in range(40):
            losses.append(trainer.train_step())
        val = trainer.validate()
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2, losses
    assert val < math.log(corpus.vocab.size) - 0.3, val


def test_transformer_samples_past_its_block(texts, tmp_path, capsys):
    """A 50-character sample from a block of 8 (and a prime longer than the block): the sampler
    crops to the last 8 characters, as nanoGPT does."""
    run = tmp_path / "t"
    rc, _, err = cli(capsys, "train", texts["stream"], "--out", run, "--model", "transformer",
                     *SIZES["transformer"], *COMMON)
    assert rc == 0, err
    rc, out, err = cli(capsys, "sample", run, "--prime", "the cat sat on a mat", "--length", "50", "--seed", "0")
    assert rc == 0, err
    assert out.startswith("the cat sat on a mat") and len(out.rstrip("\n")) == len("the cat sat on a mat") + 50


@pytest.mark.parametrize("argv, words", [
    (["--model", "transformer", "--hidden", "30", "--heads", "4"], ["--heads 4", "--hidden 30", "multiple of 4"]),
    (["--model", "transformer", "--heads", "0"], ["--heads", ">= 1"]),
    (["--model", "bow", "--embed", "0"], ["--embed", "bow"]),
])
def test_bad_options_one_line_exit_2_nothing_written(argv, words, texts, tmp_path, capsys):
    out_dir = tmp_path / "run"
    rc, out, err = cli(capsys, "train", texts["stream"], "--out", out_dir, *COMMON, *argv)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("rnnlab: ")
    for w in words:
        assert w in err, err
    assert not out_dir.exists()


def test_compare_reports_test_loss_for_the_new_kinds(texts, tmp_path, capsys):
    rc, out, err = cli(capsys, "compare", texts["lines"], "--lines", "--models", "bow,mingru,transformer",
                       "--budget", "1", "--out", tmp_path / "cmp", "--batch", "8")
    assert rc == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ") and "model" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["bow", "mingru", "transformer"]
    assert all(float(r.split("|")[-2]) > 0 for r in rows)  # the test-loss column
    assert (tmp_path / "cmp" / "transformer" / "checkpoints" / "best.safetensors").is_file()


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_weight_decay_spares_the_exempt_parameters(name):
    params = {"W": np.ones((2, 2)), "b": np.ones(2)}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    opt = make_optimizer(name, params, grads, lr=0.1, weight_decay=0.5)
    opt.exclude_from_decay({"b"})
    opt.step()
    assert np.all(params["W"] < 1) and np.array_equal(params["b"], np.ones(2))
    with pytest.raises(ValueError, match="no parameters named"):
        opt.exclude_from_decay({"nope"})
