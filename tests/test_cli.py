"""The ``rnnlab`` command end to end, and its promise about bad input.

Every test here runs the real command: in-process through :func:`rnnlab.cli.main` (fast, with
``capsys``), or as a subprocess, ``python -m rnnlab``, where the process boundary matters (so it
runs wherever the tests run, whether or not a console script is installed). Models are tiny (one
LSTM layer of 16 units, batches of 4 x 8 characters) so that the whole file runs in seconds on a
shared CPU.

What each test proves is listed in docs/reliability.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnlab.cli import main
from rnnlab.lm.checkpoint import inspect_checkpoint, load_checkpoint
from rnnlab.lm.rundir import RunDir

TINY = ["--model", "lstm", "--layers", "1", "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8",
        "--dropout", "0", "--quiet"]  # every size option given: no automatic choice (lm/auto.py) depends on --max-steps
RNNLAB = [sys.executable, "-m", "rnnlab"]
SRC = Path(__file__).resolve().parents[1] / "src" / "rnnlab"


# ------------------------------------------------------------------------------------ helpers
def cli(capsys, *argv):
    """Run ``rnnlab ARGV`` in-process; returns ``(exit status, stdout, stderr)``."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_entry_point(*argv, timeout=120, env=None):
    """Run ``python -m rnnlab ARGV`` as a separate process."""
    return subprocess.run([*RNNLAB, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env)


WORDS = ("the cat sat on a mat and the dog ran far away then slept in the sun while a bird sang "
         "of rivers hills and quiet roads").split()
ZH = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗明华国文"


def english_text(n_words=1000, seed=0) -> str:
    rng = np.random.default_rng(seed)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n_words)]
    lines = [" ".join(words[i:i + 9]) + "." for i in range(0, n_words, 9)]
    return "\n".join(lines) + "\n"


def name_lines(n=300, seed=0, alphabet="abcdefghijklmnoprstuvy") -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(alphabet[j] for j in rng.integers(0, len(alphabet), rng.integers(3, 8))).capitalize()
            for _ in range(n)]


def chinese_names(n=200, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(ZH[j] for j in rng.integers(0, len(ZH), rng.integers(2, 4))) for _ in range(n)]


def tensors_of(path):
    return load_checkpoint(path)[0]


def assert_same_tensors(a, b):
    ta, tb = tensors_of(a), tensors_of(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert np.array_equal(ta[k], tb[k]), f"tensor {k} differs"


def snapshot(root: Path) -> dict:
    """Every directory and file under ``root`` with the SHA-256 of its bytes (the lock file's content,
    the pid of its last holder, is left out: taking the lock is not damage)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            if f == ".rnnlab.lock":
                out[os.path.join(rel, f)] = "lock"
                continue
            with open(p, "rb") as fh:
                out[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    paths = {
        "en": d / "en.txt",
        "names": d / "names.txt",
        "zh": d / "中文.txt",
        "zh_names": d / "名字.txt",
    }
    paths["en"].write_text(english_text(), encoding="utf-8")
    paths["names"].write_text("\n".join(name_lines()) + "\n", encoding="utf-8")
    zh = chinese_names(400, seed=1)
    paths["zh"].write_text("".join(n + ("。\n" if i % 7 == 6 else "，") for i, n in enumerate(zh)), encoding="utf-8")
    paths["zh_names"].write_text("\n".join(chinese_names()) + "\n", encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def runs(texts, tmp_path_factory):
    """One finished stream-mode run and one lines-mode run (6 steps, checkpoints at 3 and 6)."""
    d = tmp_path_factory.mktemp("runs")
    out = {"stream": d / "stream", "lines": d / "lines"}
    assert main(["train", str(texts["en"]), "--out", str(out["stream"]), *TINY,
                 "--max-steps", "6", "--eval-every", "3"]) == 0
    assert main(["train", str(texts["names"]), "--out", str(out["lines"]), "--lines", *TINY,
                 "--max-steps", "6", "--eval-every", "3"]) == 0
    return out


# ------------------------------------------------------------------------------------ train
def test_train_writes_every_promised_file(runs, texts):
    run = RunDir(runs["stream"])
    config = json.loads(run.config.read_text(encoding="utf-8"))
    assert config["train"]["hidden"] == 16 and config["train"]["max_steps"] == 6
    assert config["data"]["mode"] == "stream" and config["data"]["source"] == str(texts["en"])
    vocab = json.loads(run.vocab.read_text(encoding="utf-8"))
    assert "".join(vocab["tokens"]) == "".join(sorted(set(texts["en"].read_text(encoding="utf-8"))))
    records = [json.loads(line) for line in run.metrics.read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [3, 6]
    assert all(math.isfinite(r["val_loss"]) for r in records if "val_loss" in r)
    assert records[-1]["step"] == 6 and math.isfinite(records[-1]["test_loss"])
    assert run.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for which in ("last", "best"):
        path = run.checkpoint_path(which)
        # an independent reader (the safetensors package) opens it: the format is plain safetensors
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            names = set(f.keys())
            meta = json.loads(f.metadata()["rnnlab"])
        assert meta["step"] == 6 and any(n.startswith("model.") for n in names)
        tensors, meta2 = load_checkpoint(path)
        assert set(tensors) == names and meta2 == meta
    last = tensors_of(run.last)
    assert any(k.startswith("carry.") for k in last), "the carried LSTM state is part of the exact-resume state"
    assert len(last) > len(tensors_of(run.best)), "last also holds the optimizer state"


def test_no_pickle_anywhere(runs):
    for root in runs.values():
        for p in Path(root).rglob("*"):
            if p.is_file():
                assert p.suffix not in {".pkl", ".pickle", ".pt", ".pth", ".npy", ".npz", ".joblib"}, p
                head = p.read_bytes()[:9]
                if p.suffix == ".safetensors":  # an 8-byte header length (any bytes), then its JSON
                    assert head[8:9] == b"{", p
                    continue
                assert not (head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}), p
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|marshal|shelve)\b|allow_pickle\s*=\s*True|"
                         r"torch\.load\(|np\.load\(", re.M)
    offenders = [str(p) for p in SRC.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_train_says_where_the_run_is_and_how_to_sample(texts, tmp_path, capsys):
    rc, out, err = cli(capsys, "train", texts["en"], "--out", tmp_path / "r", *TINY[:-1], "--max-steps", "2",
                       "--eval-every", "2")
    assert rc == 0, err
    assert "lstm" in out and "parameters" in out and "vocabulary" in out
    assert "best validation loss" in out and "bits/char" in out and "test loss" in out
    assert f"rnnlab sample {tmp_path / 'r'}" in out
    m = re.search(r"\(([\d,]+) chars/s\)", out)
    assert m and int(m.group(1).replace(",", "")) > 0, out


def test_a_one_step_run_still_reports_its_speed(texts, tmp_path, capsys):
    """The speed window skips the first step (JIT, first-touch memory); a run of one step (or a
    resume that adds one) reports that step's own speed instead of 0 chars/s."""
    rc, out, err = cli(capsys, "train", texts["en"], "--out", tmp_path / "r", *TINY[:-1], "--max-steps", "1")
    assert rc == 0, err
    m = re.search(r"trained 1 step in \d+ s \(([\d,]+) chars/s\)", out)
    assert m and int(m.group(1).replace(",", "")) > 0, out


@pytest.mark.parametrize("command, module, hint", [
    ("train", "train", "use a smaller --batch or --hidden or --seq-len"),
    ("eval", "runs", "use a shorter text, or free memory")])
def test_out_of_memory_names_what_this_command_can_shrink(command, module, hint, runs, texts, capsys, monkeypatch):
    """A MemoryError is one line and exit 2; the advice names only options the command has."""
    import importlib

    def exhausted(args):
        raise MemoryError

    monkeypatch.setattr(importlib.import_module(f"rnnlab.cli.{module}"), f"cmd_{command}", exhausted)
    argv = ["train", texts["en"], "--out", "unused"] if command == "train" else ["eval", runs["stream"], texts["en"]]
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == "" and err == f"rnnlab: out of memory: {hint}\n"


def test_out_of_memory_before_the_arguments_are_parsed_is_one_line_too(capsys, monkeypatch):
    import rnnlab.cli as cli_pkg

    def exhausted():
        raise MemoryError

    monkeypatch.setattr(cli_pkg, "build_parser", exhausted)
    rc, out, err = cli(capsys, "info", "somewhere")
    assert rc == 2 and err == "rnnlab: out of memory: use a shorter text, or free memory\n"


# ------------------------------------------------------------------------------------ sample
def test_sample_stream_options(runs, capsys):
    run = runs["stream"]
    rc, greedy, _ = cli(capsys, "sample", run, "--prime", "the ", "--length", "60", "--temperature", "0")
    assert rc == 0
    assert greedy.startswith("the ") and greedy.endswith("\n") and len(greedy) == len("the ") + 60 + 1
    assert cli(capsys, "sample", run, "--prime", "the ", "--length", "60", "--temperature", "0")[1] == greedy
    # top-k 1 keeps only the likeliest character: greedy whatever the seed and temperature
    for seed in ("1", "2"):
        rc, topk1, _ = cli(capsys, "sample", run, "--prime", "the ", "--length", "60", "--top-k", "1",
                           "--temperature", "1.5", "--seed", seed)
        assert rc == 0 and topk1 == greedy
    a = cli(capsys, "sample", run, "--length", "200", "--seed", "7")[1]
    assert cli(capsys, "sample", run, "--length", "200", "--seed", "7")[1] == a
    assert cli(capsys, "sample", run, "--length", "200", "--seed", "8")[1] != a
    vocab = set(json.loads((run / "vocab.json").read_text(encoding="utf-8"))["tokens"])
    assert set(a) <= vocab
    rc, many, _ = cli(capsys, "sample", run, "--num", "3", "--length", "20", "--top-k", "3", "--seed", "0",
                      "--checkpoint", "last")
    assert rc == 0 and [ln for ln in many.splitlines() if ln.startswith("--- sample")] == \
        ["--- sample 1 ---", "--- sample 2 ---", "--- sample 3 ---"]


def test_sample_lines_marks_items_from_the_training_data(tmp_path, capsys):
    items = ["abc"] * 60 + ["abd"] * 60 + ["xy"] * 30
    text = tmp_path / "items.txt"
    text.write_text("\n".join(items) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", text, "--out", run, "--lines", *TINY, "--lr", "0.03", "--schedule", "constant",
                     "--max-steps", "60", "--eval-every", "30")
    assert rc == 0, err
    rc, out, err = cli(capsys, "sample", run, "--num", "12", "--temperature", "0.5", "--seed", "3", "--length", "10")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 12
    marked = 0
    for line in lines:
        item, is_marked = (line[:-len("  (in training data)")], True) if line.endswith("  (in training data)") \
            else (line, False)
        assert is_marked == (item in {"abc", "abd", "xy"}), line
        marked += is_marked
    assert marked >= 6, out  # the model has learnt the three items
    rc, out, _ = cli(capsys, "sample", run, "--prime", "x", "--temperature", "0", "--length", "5")
    assert rc == 0 and out.startswith("x")
    # without the training text, samples are still produced and a note says why nothing is marked
    text.rename(tmp_path / "moved.txt")
    rc, out, err = cli(capsys, "sample", run, "--num", "2", "--seed", "1")
    assert rc == 0 and len(out.splitlines()) == 2 and "(in training data)" not in out
    assert "note:" in err and "not found" in err


# ------------------------------------------------------------------------------------ eval / info
def test_eval_numbers_and_json(runs, texts, capsys):
    run = runs["stream"]
    text = texts["en"].read_text(encoding="utf-8")
    rc, out, _ = cli(capsys, "eval", run, texts["en"], "--json")
    assert rc == 0
    res = json.loads(out)
    assert set(res) == {"loss_nats", "bits_per_char", "perplexity", "chars", "unknown_chars"}
    assert res["chars"] == len(text) - 1 and res["unknown_chars"] == 0
    assert res["bits_per_char"] == pytest.approx(res["loss_nats"] / math.log(2))
    assert res["perplexity"] == pytest.approx(math.exp(res["loss_nats"]))
    rc, human, _ = cli(capsys, "eval", run, texts["en"])
    assert rc == 0 and f"{res['loss_nats']:.4f} nats/char" in human and "bits/char" in human and "perplexity" in human
    # the test split, evaluated by `eval`, gives the test loss that training reported (best checkpoint)
    split = json.loads((run / "config.json").read_text(encoding="utf-8"))["data"]["split_chars"]
    tail = run.parent / "test-split.txt"
    tail.write_text(text[len(text) - split[2]:], encoding="utf-8")
    test_loss = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]["test_loss"]
    rc, out, _ = cli(capsys, "eval", run, tail, "--json")
    assert rc == 0 and json.loads(out)["loss_nats"] == pytest.approx(test_loss, rel=1e-6)


def test_split_spread_by_default_tail_on_request_and_for_old_runs(tmp_path, capsys):
    """A long text's validation and test pieces are spread through it (the run's tail pieces are
    not its last characters); --split tail keeps the tails; a config written before --split
    loads as tail, so old runs re-split as they trained; a wrong value is a one-line error."""
    from rnnlab.lm.config import TrainConfig

    text = tmp_path / "long.txt"
    content = english_text(20000, seed=3)
    assert len(content) > 80_000  # two pieces or more
    text.write_text(content, encoding="utf-8")
    tails = {}
    for split in ("spread", "tail"):
        run = tmp_path / split
        opts = [o for o in TINY if o != "--quiet"]  # the data line says where validation and test come from
        rc, out, _ = cli(capsys, "train", text, "--out", run, *opts, "--max-steps", "2", "--split", split)
        assert rc == 0, out
        assert ("validation and test in 2 pieces spread through the text" in out) == (split == "spread"), out
        saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
        assert saved["train"]["split"] == split
        n_test = saved["data"]["split_chars"][2]
        (tmp_path / f"{split}-tail.txt").write_text(content[-n_test:], encoding="utf-8")
        test_loss = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test_loss"]
        rc, out, _ = cli(capsys, "eval", run, tmp_path / f"{split}-tail.txt", "--json")
        tails[split] = json.loads(out)["loss_nats"] == test_loss  # the test split is the file's tail
        rc, out, _ = cli(capsys, "train", text, "--out", run, "--resume", "--max-steps", "3")  # re-splits alike
        assert rc == 0, out
    assert tails == {"spread": False, "tail": True}
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "split"}
    assert TrainConfig.from_dict(old).split == "tail" and TrainConfig().split == "spread"
    rc, out, err = cli(capsys, "train", text, "--out", tmp_path / "bad", "--split", "middle")
    assert rc == 2 and err.startswith("rnnlab: ") and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in ("split", "spread", "tail")) and not (tmp_path / "bad").exists()


def test_eval_counts_unknown_characters(runs, texts, tmp_path, capsys):
    odd = tmp_path / "odd.txt"
    content = "the cat Ωsat on 猫the mat.Ω\n猫🙂\n"
    odd.write_text(content, encoding="utf-8")
    rc, out, _ = cli(capsys, "eval", runs["stream"], odd, "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["unknown_chars"] == 5
    assert res["chars"] == len(content) - 5 - 1 and math.isfinite(res["loss_nats"])
    rc, out, _ = cli(capsys, "eval", runs["stream"], odd)
    assert rc == 0 and "5 characters outside the model's vocabulary were skipped" in out
    # lines mode: every known character of every non-empty line plus its end token
    names = texts["names"].read_text(encoding="utf-8").split()[:3]
    lines = tmp_path / "lines.txt"
    lines.write_text(f"{names[0]}\n{names[1]}Ω\n\n  {names[2]}  \n", encoding="utf-8")
    rc, out, _ = cli(capsys, "eval", runs["lines"], lines, "--json")
    res = json.loads(out)
    assert rc == 0 and res["unknown_chars"] == 1 and res["chars"] == sum(len(n) + 1 for n in names)


def test_info(runs, capsys):
    rc, out, _ = cli(capsys, "info", runs["stream"])
    assert rc == 0
    assert "model:       lstm" in out and "stream mode" in out
    assert re.search(r"steps:\s+6 \(best checkpoint at step [36]\)", out) and "bits/char" in out
    rc, out, _ = cli(capsys, "info", runs["lines"], "--json")
    info = json.loads(out)
    assert rc == 0 and info["mode"] == "lines" and info["last_step"] == 6 and info["model"] == "lstm"
    n_params = sum(int(np.prod(shape)) for name, (shape, _) in inspect_checkpoint(
        runs["lines"] / "checkpoints" / "best.safetensors")[0].items() if name.startswith("model."))
    assert info["parameters"] == n_params


# ------------------------------------------------------------------------------------ UTF-8
def test_chinese_text_in_stream_and_lines_mode(texts, tmp_path, capsys):
    stream, lines = tmp_path / "运行", tmp_path / "名字运行"
    rc, _, err = cli(capsys, "train", texts["zh"], "--out", stream, *TINY, "--max-steps", "4", "--eval-every", "2")
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", texts["zh_names"], "--out", lines, "--lines", *TINY, "--max-steps", "4",
                     "--eval-every", "2")
    assert rc == 0, err
    zh_vocab = set(texts["zh"].read_text(encoding="utf-8"))
    rc, out, _ = cli(capsys, "sample", stream, "--prime", "王李", "--length", "40", "--seed", "0")
    assert rc == 0 and out.startswith("王李") and len(out) == 2 + 40 + 1 and set(out[:-1]) <= zh_vocab
    rc, out, _ = cli(capsys, "sample", lines, "--num", "5", "--prime", "王", "--seed", "0", "--length", "6")
    items = [ln.replace("  (in training data)", "") for ln in out.splitlines()]
    assert rc == 0 and len(items) == 5 and all(i.startswith("王") and set(i) <= set(ZH) for i in items)
    for run, text in ((stream, texts["zh"]), (lines, texts["zh_names"])):
        rc, out, _ = cli(capsys, "eval", run, text, "--json")
        assert rc == 0 and json.loads(out)["unknown_chars"] == 0 and math.isfinite(json.loads(out)["loss_nats"])
        rc, out, _ = cli(capsys, "info", run)
        assert rc == 0 and str(text) in out and str(run) in out
    # messages keep Chinese readable: the unseen character and the Chinese path are named
    rc, out, err = cli(capsys, "sample", stream, "--prime", "王猫")
    assert rc == 2 and out == "" and "'猫'" in err and len(err.splitlines()) == 1
    rc, _, err = cli(capsys, "train", tmp_path / "没有.txt", "--out", tmp_path / "x", *TINY)
    assert rc == 2 and "没有.txt" in err


# ------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("mode, signum, threads", [("stream", signal.SIGINT, 1), ("lines", signal.SIGTERM, 1),
                                                  ("stream", signal.SIGINT, 2), ("lines", signal.SIGTERM, 3)],
                         ids=["stream-SIGINT", "lines-SIGTERM", "stream-SIGINT-2-threads", "lines-SIGTERM-3-threads"])
def test_interrupted_and_resumed_run_is_bit_identical(mode, signum, threads, texts, tmp_path, capsys, monkeypatch):
    """Ctrl-C (a real SIGINT, delivered in-process; SIGTERM likewise) after step 4, then --resume,
    ends exactly where a run that was never interrupted ends: every tensor of last.safetensors and
    best.safetensors. Also with the batch split over threads (dropout masks drawn per shard)."""
    from rnnlab.lm.trainer import Trainer

    text = texts["en"] if mode == "stream" else texts["names"]
    opts = [*TINY, "--max-steps", "10", "--eval-every", "3", "--dropout", "0.1", "--layers", "2",
            "--threads", str(threads)]
    if mode == "lines":
        opts.append("--lines")
    rc, _, err = cli(capsys, "train", text, "--out", tmp_path / "straight", *opts)
    assert rc == 0, err

    real_step = Trainer.train_step

    def step_then_ctrl_c(self):
        loss = real_step(self)
        if self.step == 4:
            signal.raise_signal(signum)  # the trainer's handler turns it into a stop flag
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    rc, out, err = cli(capsys, "train", text, "--out", tmp_path / "resumed", *opts)
    monkeypatch.undo()
    assert rc == 0, err
    assert "interrupted at step 4" in out and f"--out {tmp_path / 'resumed'} --resume" in out
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")[1]["step"] == 4
    rc, out, err = cli(capsys, "train", text, "--out", tmp_path / "resumed", "--resume", "--quiet")
    assert rc == 0, err
    for which in ("last", "best"):
        assert_same_tensors(tmp_path / "straight" / "checkpoints" / f"{which}.safetensors",
                            tmp_path / "resumed" / "checkpoints" / f"{which}.safetensors")


# ------------------------------------------------------------------------------------ other commands
def test_gradcheck(capsys):
    rc, out, _ = cli(capsys, "gradcheck", "--steps", "3")
    assert rc == 0
    worst = float(re.search(r"worst relative error ([0-9.e+-]+)", out).group(1))
    assert worst < 1e-6 and "MISMATCH" not in out
    assert all(name in out for name in ("RNN:", "LSTM:", "GRU:"))


def test_demo(tmp_path):
    """``rnnlab demo --seconds 3`` trains, reports and samples (subprocess: ``python -m rnnlab``).
    One BLAS thread: on a small shared machine OpenBLAS threads slow this LSTM down several-fold."""
    out = tmp_path / "demo"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    p = run_entry_point("demo", "--seconds", "3", "--out", out, "--quiet", timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "samples (temperature 0.8)" in p.stdout and "test loss" in p.stdout
    assert p.stdout.count("-" * 60) == 3
    load_checkpoint(out / "checkpoints" / "best.safetensors")
    assert (out / "loss.png").is_file() and (out / "config.json").is_file()


# ------------------------------------------------------------------------------------ bad input
def _truncate(p: Path, keep: int):
    data = p.read_bytes()
    p.write_bytes(data[:keep])


def _flip(p: Path, offset: int = -50):
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x5A
    p.write_bytes(bytes(data))


def _setup_workspace(ws: Path):
    (ws / "adir").mkdir()
    (ws / "empty.txt").write_bytes(b"")
    (ws / "blank.txt").write_text(" \n\t\n  \n", encoding="utf-8")
    (ws / "binary.bin").write_bytes(bytes(range(256)) * 20)
    (ws / "latin1.txt").write_bytes("café au lait, naïve façade\n".encode("latin-1") * 20)
    (ws / "utf16.txt").write_bytes("hello world\n".encode("utf-16") * 20)
    (ws / "short.txt").write_text("abcdefghijklmnopqrst\n", encoding="utf-8")
    (ws / "tiny.txt").write_text("ab\n", encoding="utf-8")
    (ws / "other.txt").write_text(english_text(300, seed=5), encoding="utf-8")
    (ws / "unknown.txt").write_text("ΩΩΩ\n", encoding="utf-8")
    (ws / "emptyrun").mkdir()
    (ws / "afile").write_text("not a directory\n", encoding="utf-8")


def _ckpt(which):
    return f"run/checkpoints/{which}.safetensors"


def _only_config(ws):
    (ws / "inc").mkdir()
    shutil.copy(ws / "run" / "config.json", ws / "inc" / "config.json")


def _remove(rel):
    return lambda ws: (ws / rel).unlink()


def _write(rel, data: bytes):
    return lambda ws: (ws / rel).write_bytes(data)


def _hold_lock(ws):
    run = RunDir(ws / "run").lock()
    return run.unlock


TRAIN = ["train", "{ws}/en.txt", "--out", "{ws}/new", *TINY, "--max-steps", "2"]
RUN = "{ws}/run"

# id: (argv, words the one-line message must contain, setup(ws) -> optional cleanup)
BAD_INPUT = {
    # --- the training text
    "text-missing": (["train", "{ws}/nope.txt", "--out", "{ws}/new", *TINY], ["nope.txt", "no such file", "check the path"], None),
    "text-is-directory": (["train", "{ws}/adir", "--out", "{ws}/new", *TINY], ["adir", "is a directory", "text file"], None),
    "text-empty": (["train", "{ws}/empty.txt", "--out", "{ws}/new", *TINY], ["empty.txt", "is empty", "contains some text"], None),
    "text-whitespace-only": (["train", "{ws}/blank.txt", "--out", "{ws}/new", *TINY], ["blank.txt", "whitespace"], None),
    "text-binary": (["train", "{ws}/binary.bin", "--out", "{ws}/new", *TINY], ["binary.bin", "binary", "utf-8 text file"], None),
    "text-latin1": (["train", "{ws}/latin1.txt", "--out", "{ws}/new", *TINY], ["latin1.txt", "not valid utf-8", "re-save"], None),
    "text-utf16": (["train", "{ws}/utf16.txt", "--out", "{ws}/new", *TINY], ["utf16.txt", "utf-16", "utf-8"], None),
    "text-shorter-than-a-batch": (["train", "{ws}/short.txt", "--out", "{ws}/new", *TINY, "--val-frac", "0",
                                   "--test-frac", "0"], ["one batch needs", "lower --batch or --seq-len"], None),
    "text-too-short-to-split": (["train", "{ws}/tiny.txt", "--out", "{ws}/new", *TINY], ["too small", "--val-frac"], None),
    "lines-too-few": (["train", "{ws}/tiny.txt", "--out", "{ws}/new", *TINY, "--lines"], ["line", "--val-frac"], None),
    # --- options out of range
    "lr-zero": ([*TRAIN, "--lr", "0"], ["--lr", "> 0"], None),
    "lr-nan": ([*TRAIN, "--lr", "nan"], ["--lr", "finite"], None),
    "hidden-zero": ([*TRAIN, "--hidden", "0"], ["--hidden", ">= 1"], None),
    "batch-not-int": ([*TRAIN, "--batch", "four"], ["--batch", "integer"], None),
    "dropout-one": ([*TRAIN, "--dropout", "1"], ["--dropout", "[0, 1)"], None),
    "val-frac-too-big": ([*TRAIN, "--val-frac", "1.5"], ["--val-frac", "0.99"], None),
    "fracs-leave-nothing": ([*TRAIN, "--val-frac", "0.6", "--test-frac", "0.5"], ["nothing to train on"], None),
    "model-unknown": ([*TRAIN, "--model", "mamba"], ["--model", "lstm", "transformer"], None),
    "heads-not-dividing-width": ([*TRAIN, "--model", "transformer", "--hidden", "30", "--heads", "4"],
                                 ["--heads", "--hidden", "divide"], None),
    "optimizer-unknown": ([*TRAIN, "--optimizer", "lion"], ["--optimizer", "adam"], None),
    "embed-zero-mlp": ([*TRAIN, "--model", "mlp", "--embed", "0"], ["--embed", "mlp"], None),
    "option-unknown": ([*TRAIN, "--bogus"], ["unrecognized", "--bogus", "--help"], None),
    "out-missing": (["train", "{ws}/en.txt"], ["--out", "required"], None),
    "command-unknown": (["fly"], ["invalid choice", "fly"], None),
    "temperature-negative": (["sample", RUN, "--temperature", "-1"], ["--temperature", ">= 0"], None),
    "top-k-negative": (["sample", RUN, "--top-k", "-2"], ["--top-k", ">= 0"], None),
    "length-zero": (["sample", RUN, "--length", "0"], ["--length", ">= 1"], None),
    "num-zero": (["sample", RUN, "--num", "0"], ["--num", ">= 1"], None),
    "checkpoint-unknown": (["sample", RUN, "--checkpoint", "middle"], ["--checkpoint", "best", "last"], None),
    "gradcheck-steps": (["gradcheck", "--steps", "0"], ["--steps", ">= 1"], None),
    "demo-seconds": (["demo", "--seconds", "0", "--out", "{ws}/demo"], ["--seconds", ">= 1"], None),
    # --- priming text
    "prime-unseen": (["sample", RUN, "--prime", "the Ωmega"], ["--prime", "never saw", "'Ω'"], None),
    "prime-unseen-lines": (["sample", "{ws}/lines", "--prime", "Zoë"], ["--prime", "never saw", "'ë'"], None),
    # --- run directories
    "run-missing": (["sample", "{ws}/norun"], ["norun", "does not exist", "train a model there"], None),
    "run-is-a-file": (["info", "{ws}/afile"], ["afile", "not a directory"], None),
    "run-empty-dir": (["eval", "{ws}/emptyrun", "{ws}/en.txt"], ["emptyrun", "holds no rnnlab run"], None),
    "run-incomplete": (["sample", "{ws}/inc"], ["incomplete", "vocab.json", "checkpoint"], _only_config),
    "run-without-best": (["sample", RUN], ["no best checkpoint", "--checkpoint last"], _remove(_ckpt("best"))),
    "config-corrupt": (["info", RUN], ["config.json", "not valid json"], _write("run/config.json", b"{\"format\": ")),
    "vocab-corrupt": (["sample", RUN], ["vocab.json", "json object"], _write("run/vocab.json", b"[1, 2]\n")),
    "checkpoint-truncated": (["sample", RUN], ["best.safetensors", "truncated"],
                             lambda ws: _truncate(ws / _ckpt("best"), (ws / _ckpt("best")).stat().st_size - 100)),
    "checkpoint-header-truncated": (["eval", RUN, "{ws}/en.txt", "--checkpoint", "last"],
                                    ["last.safetensors", "corrupt or incomplete"],
                                    lambda ws: _truncate(ws / _ckpt("last"), 100)),
    "checkpoint-bit-flip": (["sample", RUN], ["best.safetensors", "checksum"], lambda ws: _flip(ws / _ckpt("best"))),
    "checkpoint-garbage": (["sample", RUN], ["best.safetensors", "corrupt"],
                           _write(_ckpt("best"), np.random.default_rng(0).bytes(3000))),
    "checkpoint-empty": (["sample", RUN], ["best.safetensors", "empty"], _write(_ckpt("best"), b"")),
    "resume-corrupt-checkpoint": (["train", "{ws}/en.txt", "--out", RUN, "--resume", "--quiet"],
                                  ["cannot resume", "last.safetensors", "--force"],
                                  lambda ws: _flip(ws / _ckpt("last"))),
    "resume-without-last": (["train", "{ws}/en.txt", "--out", RUN, "--resume", "--quiet"],
                            ["cannot resume", "last.safetensors", "--force"], _remove(_ckpt("last"))),
    # --- eval texts
    "eval-text-missing": (["eval", RUN, "{ws}/nope.txt"], ["nope.txt", "no such file"], None),
    "eval-text-binary": (["eval", RUN, "{ws}/binary.bin"], ["binary.bin", "binary"], None),
    "eval-text-all-unknown": (["eval", RUN, "{ws}/unknown.txt"], ["unknown.txt", "known characters"], None),
    # --- where training writes
    "existing-run-no-flag": (["train", "{ws}/en.txt", "--out", RUN, *TINY], ["already holds a run", "--resume", "--force"], None),
    "resume-nothing-there": (["train", "{ws}/en.txt", "--out", "{ws}/new", "--resume"], ["nothing to resume", "without --resume"], None),
    "resume-other-text": (["train", "{ws}/other.txt", "--out", RUN, "--resume"], ["other.txt", "not the text", "same file"], None),
    "resume-changed-option": (["train", "{ws}/en.txt", "--out", RUN, "--resume", "--hidden", "32"],
                              ["--hidden 32 (the run has 16)", "--resume", "--force"], None),
    "force-and-resume": (["train", "{ws}/en.txt", "--out", RUN, "--resume", "--force"], ["--force", "--resume", "exclude"], None),
    "out-is-a-file": (["train", "{ws}/en.txt", "--out", "{ws}/afile", *TINY], ["afile", "not a directory"], None),
    "out-under-a-file": (["train", "{ws}/en.txt", "--out", "{ws}/afile/run", *TINY], ["afile", "is a file"], None),
    "run-in-use": (["train", "{ws}/en.txt", "--out", RUN, "--resume", "--quiet"], ["in use by another rnnlab process",
                                                                                   f"pid {os.getpid()}"], _hold_lock),
}
# A few cases also run as a separate process (python -m rnnlab), to prove a real process behaves alike.
VIA_SUBPROCESS = ["text-missing", "checkpoint-bit-flip", "lr-zero", "prime-unseen"]


@pytest.fixture(scope="module")
def workspace_template(runs, texts, tmp_path_factory):
    ws = tmp_path_factory.mktemp("workspace")
    shutil.copytree(runs["stream"], ws / "run")
    shutil.copytree(runs["lines"], ws / "lines")
    shutil.copy(texts["en"], ws / "en.txt")
    # the runs record where their text was: point them at the copy, as if trained here
    for name, src in (("run", ws / "en.txt"), ("lines", texts["names"])):
        cfg = json.loads((ws / name / "config.json").read_text(encoding="utf-8"))
        cfg["data"]["source"] = str(src)
        (ws / name / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    _setup_workspace(ws)
    return ws


@pytest.mark.parametrize("case, via", [(c, "in-process") for c in sorted(BAD_INPUT)] +
                         [(c, "subprocess") for c in VIA_SUBPROCESS])
def test_bad_input_gets_one_line_exit_2_and_damages_nothing(case, via, workspace_template, tmp_path, capsys):
    argv_t, words, setup = BAD_INPUT[case]
    ws = tmp_path / "ws"
    shutil.copytree(workspace_template, ws)
    cleanup = setup(ws) if setup else None
    cleanup = cleanup if callable(cleanup) else None
    argv = [a.replace("{ws}", str(ws)) for a in argv_t]
    before = snapshot(ws)
    try:
        if via == "in-process":
            rc, out, err = cli(capsys, *argv)
        else:
            p = run_entry_point(*argv)
            rc, out, err = p.returncode, p.stdout, p.stderr
    finally:
        if cleanup:
            cleanup()
    assert rc == 2, (rc, out, err)
    assert out == ""
    assert err.endswith("\n") and len(err.splitlines()) == 1, err
    assert err.startswith("rnnlab: ") and "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w.lower() in err.lower(), f"{w!r} not in {err!r}"
    assert snapshot(ws) == before, "a failed command changed, created or removed files"
