"""``rnnlab sweep``: a real grid of tiny training runs on the local backend and on Ray, results,
bad input, and an interrupted sweep (kill -9 of the driver, a worker killed from outside)
resumed to exactly the results of an uninterrupted one."""
from __future__ import annotations

import csv
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clitools import cli
from rnnlab.cli import main

TINY = ["--model", "gru", "--layers", "1", "--embed", "8", "--seq-len", "16", "--batch", "8", "--eval-every", "5",
        "--quiet"]
GRID = ["--grid", "hidden=8,16", "--grid", "lr=0.003,0.01"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    words = ["the cat sat on the mat", "a dog ran in the fog", "we saw the sea", "to be or not to be"]
    p = tmp_path_factory.mktemp("sweeptext") / "t.txt"
    p.write_text("\n".join(words * 60) + "\n", encoding="utf-8")
    return p


def rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def best_vals(out: Path) -> dict:
    return {r["trial"]: float(r["best_val"]) for r in rows(out)}


@pytest.fixture(scope="module")
def local_sweep(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps") / "local"
    assert main(["sweep", str(text), "--out", str(out), *TINY, "--max-steps", "20", *GRID, "--workers", "2"]) == 0
    return out


def test_sweep_writes_a_table_runs_and_a_plot(local_sweep, capsys):
    r = rows(local_sweep)
    assert len(r) == 4 and {x["status"] for x in r} == {"done"}
    vals = [float(x["best_val"]) for x in r]
    assert vals == sorted(vals) and len(set(vals)) == 4
    assert {(x["hidden"], x["lr"]) for x in r} == {("8", "0.003"), ("8", "0.01"), ("16", "0.003"), ("16", "0.01")}
    assert all(int(x["steps"]) == 20 for x in r)
    md = (local_sweep / "results.md").read_text(encoding="utf-8")
    assert "| trial | hidden | lr |" in md and r[0]["trial"] in md
    assert (local_sweep / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # each trial is a normal run directory
    trial = local_sweep / "trials" / r[0]["trial"]
    rc, out, _ = cli(capsys, "info", trial, "--json")
    assert rc == 0 and json.loads(out)["last_step"] == 20
    assert cli(capsys, "sample", trial, "--length", "20", "--seed", "1")[0] == 0


def test_the_printed_command_reproduces_the_best_trial(text, tmp_path, capsys):
    out = tmp_path / "s"
    rc, printed, _ = cli(capsys, "sweep", text, "--out", out, *TINY, "--max-steps", "10", "--grid", "hidden=8,12",
                         "--workers", "2")
    assert rc == 0
    line = next(x for x in printed.splitlines() if x.startswith("reproduce it with: "))
    argv = shlex.split(line[len("reproduce it with: "):])
    assert argv[:2] == ["rnnlab", "train"]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    assert main(argv[1:] + ["--quiet"]) == 0
    best = rows(out)[0]
    again = [json.loads(x) for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert min(x["val_loss"] for x in again if "val_loss" in x) == float(best["best_val"])  # bit for bit


@pytest.mark.parametrize("argv, words", [
    (["--grid", "bogus=1,2"], ["unknown option", "bogus"]),
    (["--grid", "hidden=0,8"], ["hidden=0", "must be >= 1"]),
    (["--grid", "dropout=0.5,1.5"], ["grid point dropout=1.5", "--dropout"]),
    (["--grid", "hidden=8,x"], ["'x'", "expected an integer"]),
    (["--grid", "hidden=8,8"], ["twice"]),
    (["--grid", "hidden=8", "--hidden", "16"], ["--hidden is both"]),
    (["--grid", "hidden=8,16", "--random", "3"], ["more points than the grid has"]),
    ([], ["at least one --grid"]),
    (["--grid", "lr=0.01", "--backend", "spark"], ["--backend must be"]),
    (["--grid", "lr=0.01", "--address", "127.0.0.1:1"], ["--backend ray"]),
    (["--grid", "lr=0.01", "--early-stop"], ["--early-stop", "--max-steps above --eval-every (5)"]),
])
def test_bad_input_is_one_line_and_touches_nothing(text, tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    rc, _, err = cli(capsys, "sweep", text, "--out", out, *TINY, "--max-steps", "5", *argv)
    assert rc == 2 and err.startswith("rnnlab: ") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


class _Planned(Exception):
    pass


def test_early_stop_without_a_step_limit_uses_the_default_steps(text, tmp_path, capsys, monkeypatch):
    """No --max-steps and no --max-time: the trials run the default 3,000 steps, and ASHA's
    rungs span them (this built a scheduler over 0 steps and crashed)."""
    import rnnlab.trials as trials_pkg
    from rnnlab.lm.config import DEFAULT_MAX_STEPS

    seen = {}

    def fake_run_trials(trials, root, early_stop=None, **kw):
        seen["early"] = early_stop
        seen["rungs"] = early_stop.scheduler().rungs
        raise _Planned  # stop here: nothing trains, only the plan is looked at

    monkeypatch.setattr(trials_pkg, "run_trials", fake_run_trials)
    cli(capsys, "sweep", text, "--out", tmp_path / "s", *TINY, "--grid", "lr=0.01,0.003", "--early-stop")
    assert seen["early"].max_t == DEFAULT_MAX_STEPS
    assert seen["rungs"] == [5, 15, 45, 135, 405, 1215]


def test_ray_missing_says_how_to_install(text, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc, _, err = cli(capsys, "sweep", text, "--out", tmp_path / "x", *TINY, "--grid", "lr=0.01", "--backend", "ray")
    assert rc == 2 and 'pip install "rnnlab[ray]"' in err and len(err.splitlines()) == 1


def test_resume_checks_the_folder_and_the_grid(local_sweep, text, tmp_path, capsys):
    rc, _, err = cli(capsys, "sweep", text, "--out", tmp_path / "empty", *TINY, "--max-steps", "20", *GRID, "--resume")
    assert rc == 2 and "holds no sweep" in err
    rc, _, err = cli(capsys, "sweep", text, "--out", local_sweep, *TINY, "--max-steps", "20", "--grid", "hidden=8,32",
                     "--grid", "lr=0.003,0.01", "--resume")
    assert rc == 2 and "another grid" in err
    rc, _, err = cli(capsys, "sweep", text, "--out", local_sweep, *TINY, "--max-steps", "20", *GRID)
    assert rc == 2 and "already holds a sweep" in err
    before = {p: p.stat().st_mtime_ns for p in (local_sweep / "trials").rglob("result.json")}
    rc, out, _ = cli(capsys, "sweep", text, "--out", local_sweep, *TINY, "--max-steps", "20", *GRID, "--resume")
    assert rc == 0 and "4 done" in out
    assert before == {p: p.stat().st_mtime_ns for p in (local_sweep / "trials").rglob("result.json")}  # none ran


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_killed_driver_and_killed_worker_resume_to_the_uninterrupted_results(text, tmp_path, capsys):
    """kill -9 of the sweep's driver in the middle (its workers stop with it, saving their runs),
    then --resume: every trial ends exactly once and none starts again from step 0 after it had a
    checkpoint. A worker killed from outside has its trial retried from the checkpoint. The
    results are those of the same sweep run straight through."""
    opts = [*TINY, "--max-steps", "60", "--eval-every", "3", *GRID, "--workers", "2"]
    assert cli(capsys, "sweep", text, "--out", tmp_path / "straight", *opts)[0] == 0
    out = tmp_path / "s"
    argv = [sys.executable, "-m", "rnnlab", "sweep", str(text), "--out", str(out), *opts]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("trials/*/checkpoints/last.safetensors"))) < 2:
        time.sleep(0.02)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for w in workers:  # the workers end by themselves (PR_SET_PDEATHSIG), keeping their checkpoints
        for _ in range(300):
            stat = Path(f"/proc/{w}/stat")
            if not stat.exists() or stat.read_text().split()[2] == "Z":
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"worker {w} outlived the driver")
    had = {p.parent.parent.name for p in out.glob("trials/*/checkpoints/last.safetensors")}
    ended = {p.parent.name for p in out.glob("trials/*/result.json")}
    assert had - ended, "the driver was killed after every trial had ended: nothing was resumed"
    # resume, and kill one worker from outside while it trains
    proc = subprocess.Popen(argv + ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        kids = _children(proc.pid)
        if kids and len(list(out.glob("trials/*/result.json"))) > len(ended):
            killed = kids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, log
    assert killed is not None, log
    for trial in (out / "trials").iterdir():
        steps = [json.loads(x)["step"] for x in (trial / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 60, (trial.name, steps)  # none restarted
    assert best_vals(out) == best_vals(tmp_path / "straight")
    assert {r["status"] for r in rows(out)} == {"done"}
    attempts = {t.name: json.loads((t / "result.json").read_text())["attempts"] for t in (out / "trials").iterdir()}
    assert max(attempts.values()) == 2 or "killed" in log, (attempts, log)  # the retried trial


# ------------------------------------------------------------------------------------ Ray
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_on_a_ray_cluster_gives_the_local_results(text, tmp_path, local_sweep):
    """A real cluster head (`ray start --head` on loopback, token authentication on, with a token
    of its own) joined with --address; a driver without the token gets one line. Runs before the
    in-process instance below: `ray stop` ends every Ray process of this machine."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    start = [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"]
    # the token in the environment, not in ~/.ray/auth_token: a fresh machine has none there (Ray
    # 2.60's `ray start` with RAY_AUTH_MODE=token refuses to start without one)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=180, env=env)
        assert started.returncode == 0, "ray start failed:\n" + started.stdout[-3000:] + started.stderr[-3000:]
        out = tmp_path / "cluster"
        done = subprocess.run([sys.executable, "-m", "rnnlab", "sweep", str(text), "--out", str(out), *TINY,
                               "--max-steps", "20", *GRID, "--backend", "ray", "--address", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert best_vals(out) == best_vals(local_sweep)
        home = tmp_path / "home"  # no ~/.ray/auth_token there either
        home.mkdir()
        no_token = {**{k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}, "HOME": str(home)}
        refused = subprocess.run([sys.executable, "-m", "rnnlab", "sweep", str(text), "--out", str(tmp_path / "x"),
                                  *TINY, "--max-steps", "20", "--grid", "lr=0.01", "--backend", "ray",
                                  "--address", f"127.0.0.1:{port}"],
                                 capture_output=True, text=True, timeout=600, env=no_token)
        err = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(err) == 1, refused.stdout + refused.stderr
        assert "cannot reach the Ray cluster" in err[0] and "RAY_AUTH_TOKEN" in err[0], err
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


def test_unreachable_ray_address_is_one_line(text, tmp_path, capsys):
    port = _free_port()  # nothing listens there
    rc, _, err = cli(capsys, "sweep", text, "--out", tmp_path / "x", *TINY, "--grid", "lr=0.01", "--backend", "ray",
                     "--address", f"127.0.0.1:{port}")
    assert rc == 2 and "cannot reach the Ray cluster" in err and len(err.splitlines()) == 1, err


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance for the test session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_sweep_on_local_ray_gives_the_local_results_and_early_stops(ray_instance, text, tmp_path, local_sweep,
                                                                     capsys):
    out = tmp_path / "ray"
    rc, printed, err = cli(capsys, "sweep", text, "--out", out, *TINY, "--max-steps", "20", *GRID, "--backend", "ray")
    assert rc == 0, printed + err
    assert best_vals(out) == best_vals(local_sweep)
    assert (out / "trials" / rows(out)[0]["trial"] / "checkpoints" / "best.safetensors").is_file()
    rc, printed, err = cli(capsys, "sweep", text, "--out", tmp_path / "asha", *TINY, "--max-steps", "20", *GRID,
                           "--backend", "ray", "--early-stop")
    assert rc == 0, printed + err
    status = [r["status"] for r in rows(tmp_path / "asha")]
    assert "done" in status and set(status) <= {"done", "stopped"}
