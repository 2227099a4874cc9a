"""``rnnlab visualize`` and ``rnnlab serve`` without a browser: the command, the web app's routes
(Starlette's test client), its bounds and errors, and the real server process stopping on Ctrl-C.

Runs are tiny (one layer of 16 units, a few steps): the numbers are checked in test_viz.py; here
the promise is about files, routes, messages and exit codes.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clitools import cli
from rnnlab.cli import main
from rnnlab.errors import RnnlabError

TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8", "--quiet",
        "--max-steps", "4", "--eval-every", "2"]
ENTRY_POINT = Path(sys.executable).with_name("rnnlab")
CODE = '''def f(x, y):
    """Add "x" and (y)."""
    if x > [1, 2][0]:  # a comment
        return {"a": (x + y)}
    return 'done'
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs of each recurrent kind on a small code text, a lines-mode Chinese run and a bigram run."""
    d = tmp_path_factory.mktemp("vizruns")
    code = d / "code.py.txt"
    code.write_text(CODE * 40, encoding="utf-8")
    names = d / "名字.txt"
    rng = np.random.default_rng(0)
    zh = "王李张刘陈杨黄赵吴周"
    names.write_text("\n".join("".join(zh[j] for j in rng.integers(0, 10, rng.integers(2, 4))) for _ in range(150)),
                     encoding="utf-8")
    out = {"text": code, "names": names}
    for kind in ("lstm", "gru", "rnn"):
        out[kind] = d / kind
        assert main(["train", str(code), "--out", str(out[kind]), "--model", kind, *TINY]) == 0
    out["lines"] = d / "lines"
    assert main(["train", str(names), "--out", str(out["lines"]), "--lines", "--model", "gru", *TINY]) == 0
    out["bigram"] = d / "bigram"
    assert main(["train", str(code), "--out", str(out["bigram"]), "--model", "bigram", *TINY]) == 0
    return out


def payload_of(path: Path) -> dict:
    html = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script id="rnnlab-data" type="application/json">(.*?)</script>', html, re.S).group(1))


# ------------------------------------------------------------------------------------ visualize
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_visualize_writes_one_self_contained_file(kind, runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    rc, stdout, err = cli(capsys, "visualize", runs[kind], "--text", runs["text"], "--out", out, "--chars", "300")
    assert rc == 0, err
    assert list(tmp_path.iterdir()) == [out]  # nothing else written beside it
    p = payload_of(out)
    assert len(p["text"]) == 300 and p["meta"]["sampled"] and p["meta"]["model"] == kind
    assert f"wrote {out}" in stdout and re.search(r"characters 1?[\d,]+-[\d,]+ of [\d,]+ \(a window", stdout)
    assert "in_brackets" in stdout and "in_quotes" in stdout  # the best units per property, named
    # the n-gram is fitted on the run's own training split, found from its config
    assert "training split" in p["meta"]["baseline"]["fitted_on"] and not p["meta"]["baseline"]["in_sample"]


def test_visualize_without_the_training_text_fits_the_baseline_in_sample(runs, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(CODE * 3, encoding="utf-8")
    moved = runs["text"].with_suffix(".moved")
    runs["text"].rename(moved)
    try:
        rc, stdout, _ = cli(capsys, "visualize", runs["lstm"], "--text", text, "--out", tmp_path / "r.html")
    finally:
        moved.rename(runs["text"])
    assert rc == 0 and "fitted on this text itself" in stdout
    assert payload_of(tmp_path / "r.html")["meta"]["baseline"]["in_sample"]


def test_visualize_a_lines_mode_chinese_run(runs, tmp_path, capsys):
    rc, _, err = cli(capsys, "visualize", runs["lines"], "--text", runs["names"], "--out", tmp_path / "r.html",
                     "--chars", "100", "--ngram", "3")
    assert rc == 0, err
    p = payload_of(tmp_path / "r.html")
    assert p["meta"]["mode"] == "lines" and p["boundary"] and "王" in p["tokens"]
    assert p["meta"]["baseline"]["orders"] == [2, 3]
    rc, stdout, err = cli(capsys, "visualize", runs["lines"], "--text", runs["names"], "--out", tmp_path / "r.html",
                          "--ngram", "0")
    p = payload_of(tmp_path / "r.html")
    assert rc == 0 and "baseline" not in p["meta"] and set(p["loss"]) == {"rnn"} and "5-gram" not in stdout


@pytest.mark.parametrize("case", ["bigram", "no_text", "bad_chars", "no_run", "unwritable"])
def test_visualize_errors_are_one_line_exit_2(case, runs, tmp_path, capsys):
    args = {"bigram": [runs["bigram"], "--text", runs["text"]],
            "no_text": [runs["lstm"], "--text", tmp_path / "missing.txt"],
            "bad_chars": [runs["lstm"], "--text", runs["text"], "--chars", "0"],
            "no_run": [tmp_path / "nothing", "--text", runs["text"]],
            "unwritable": [runs["lstm"], "--text", runs["text"], "--out", tmp_path / "no" / "dir" / "r.html"]}[case]
    out = [] if case == "unwritable" else ["--out", tmp_path / "r.html"]
    rc, stdout, err = cli(capsys, "visualize", *args, *out)
    assert rc == 2 and err.startswith("rnnlab: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not (tmp_path / "r.html").exists()
    if case == "bigram":
        assert "no hidden state" in err and "--model rnn, lstm or gru" in err


# ------------------------------------------------------------------------------------ the web app
@pytest.fixture(scope="module")
def app_client(runs):
    from starlette.testclient import TestClient

    from rnnlab.cli.common import load_run
    from rnnlab.viz.explore import Explorer
    from rnnlab.viz.serve import Limits, create_app

    run, cfg, data, vocab, model, _ = load_run(runs["lstm"], "best")
    explorer = Explorer(model, vocab, cfg, data, ngram=3, meta={"run": str(run.path)})
    limits = Limits(max_prime=50, max_length=100, max_text=3000, max_chars=2000, max_generations=1)
    with TestClient(create_app(explorer, limits)) as client:
        yield client


def sse(body: str) -> list[tuple[str, dict]]:
    """``[(event, data)]`` of a text/event-stream body."""
    out = []
    for block in body.strip().split("\n\n"):
        event = "message"
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


def test_page_and_info(app_client):
    r = app_client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and 'id="prime"' in r.text
    info = app_client.get("/api/info").json()
    assert info["model"] == "lstm" and info["hidden"] == 16 and info["limits"]["max_length"] == 100
    assert info["prime"] == "def "


def test_sample_streams_characters_with_hidden_states(app_client):
    r = app_client.get("/api/sample", params={"prime": "def ", "length": 30, "seed": 3, "temperature": 0.5})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[0] == ("meta", {"layers": 1, "hidden": 16, "length": 30})
    chars = [d for e, d in events if e == "message"]
    assert [d["ch"] for d in chars if d["p"]] == list("def ")
    assert sum(not d["p"] for d in chars) == 30 and events[-1][0] == "done" and events[-1][1]["chars"] == 30
    h = np.frombuffer(__import__("base64").b64decode(chars[0]["h"]), "<f2")
    assert h.shape == (16,) and np.all(np.abs(h) <= 1)
    assert len(chars[0]["top"]) == 5 and abs(sum(p for _, p in chars[0]["top"])) <= 1.0001
    again = sse(app_client.get("/api/sample", params={"prime": "def ", "length": 30, "seed": 3,
                                                      "temperature": 0.5}).text)
    assert [d["ch"] for e, d in again if e == "message"] == [d["ch"] for d in chars]  # a seed repeats


@pytest.mark.parametrize("params,status,phrase", [
    ({"prime": "def ", "length": 101}, 400, "length must lie in [1, 100]"),
    ({"prime": "def ", "length": "many"}, 400, "length must be an integer"),
    ({"prime": "def ", "temperature": "nan"}, 400, "finite"),
    ({"prime": "def ", "top_k": -1}, 400, "top_k"),
    ({"prime": ""}, 400, "prime is empty"),
    ({"prime": "x" * 51}, 413, "limit is 50"),
    ({"prime": "€"}, 400, "never saw in training"),
])
def test_bad_sample_requests_get_a_4xx_and_a_message(app_client, params, status, phrase):
    r = app_client.get("/api/sample", params=params)
    assert r.status_code == status and phrase in r.json()["error"]
    assert "Traceback" not in r.text


def test_concurrent_generations_are_bounded(app_client):
    with app_client.stream("GET", "/api/sample", params={"prime": "def ", "length": 10, "cps": 20}) as first:
        next(first.iter_lines())  # the first is streaming (for half a second)
        r = app_client.get("/api/sample", params={"prime": "def ", "length": 5})
        assert r.status_code == 429 and "try again" in r.json()["error"]
    for _ in range(100):  # once the first has finished, the slot is free again
        r = app_client.get("/api/sample", params={"prime": "def ", "length": 5})
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200


def test_report_route(app_client, runs):
    r = app_client.post("/api/report", json={"text": CODE * 3, "chars": 200})
    assert r.status_code == 200 and 'id="rnnlab-data"' in r.text
    for body, status, phrase in [({"text": "x" * 3001}, 413, "limit is 3,000"),
                                 ({"text": "   "}, 400, "empty"),
                                 ({"text": CODE, "chars": 2001}, 400, "chars must be an integer"),
                                 ({"text": CODE, "chars": True}, 400, "chars"),
                                 ({"txt": CODE}, 400, '"text" string')]:
        r = app_client.post("/api/report", json=body)
        assert r.status_code == status and phrase in r.json()["error"], body
    r = app_client.post("/api/report", content=b"\xff\xfe not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = app_client.post("/api/report", content=b"x" * (4 * 3000 + 5000))
    assert r.status_code == 413


def test_unknown_routes_and_methods(app_client):
    assert app_client.get("/nothing").status_code == 404
    r = app_client.post("/api/sample")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]


def test_missing_web_packages_say_which_extra(monkeypatch):
    from rnnlab.viz import serve

    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(RnnlabError, match=r'pip install "rnnlab\[serve\]"'):
        serve.create_app(object())


def test_a_busy_port_is_a_one_line_error():
    from rnnlab.viz.serve import bind

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(RnnlabError, match="already in use"):
            bind("127.0.0.1", s.getsockname()[1])


# ------------------------------------------------------------------------------------ the process
def start_server(run_dir, *extra):
    """``rnnlab serve RUN --port 0`` as a process; returns ``(process, base url)``."""
    if not ENTRY_POINT.exists():
        pytest.skip(f"the rnnlab entry point is not installed next to {sys.executable}")
    proc = subprocess.Popen([str(ENTRY_POINT), "serve", str(run_dir), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        proc.kill()
        raise AssertionError(f"no address in {line!r}; stderr: {proc.stderr.read()}")
    return proc, f"http://127.0.0.1:{m.group(1)}/"


def stop_server(proc) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_serve_process_answers_and_stops_cleanly_on_ctrl_c(runs):
    proc, url = start_server(runs["gru"])
    try:
        with urllib.request.urlopen(url + "api/info", timeout=30) as r:
            assert json.loads(r.read())["model"] == "gru"
        # a stream left open does not keep the server from stopping
        stream = urllib.request.urlopen(url + "api/sample?prime=def%20&length=2000&cps=5", timeout=30)
        stream.readline()
    finally:
        rc, out, err = stop_server(proc)
    assert rc == 0 and "rnnlab serve: stopped" in out, (out, err)
    assert "Traceback" not in err
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with socket.socket() as s:  # the port is free again
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_core_and_the_report_never_import_the_web_packages():
    code = ("import sys, rnnlab.cli, rnnlab.viz.report, rnnlab.viz.explore; rnnlab.cli.build_parser(); "
            "bad = [m for m in ('starlette', 'uvicorn', 'selenium') if m in sys.modules]; print(bad); "
            "sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
