"""``rnnlab bench --from-json``: joining the results of separate runs into one report (no timing)."""
from __future__ import annotations

import json
from pathlib import Path

from rnnlab import bench

# a committed run with both environments (the latest, benchmarks/results.json, may hold one)
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results-zen4.json"


def _parts(tmp_path):
    """The committed results split into two runs' files, one per environment."""
    res = json.loads(RESULTS.read_text())
    paths = []
    for key in ("unset", "forced"):
        part = dict(res, runs={key: res["runs"][key]})
        paths.append(tmp_path / f"{key}.json")
        paths[-1].write_text(json.dumps(part))
    return res, paths


def test_from_json_writes_the_merged_results_and_report(tmp_path):
    res, paths = _parts(tmp_path)
    out, md = tmp_path / "merged.json", tmp_path / "report.md"
    assert bench.main(["--from-json", ",".join(map(str, paths)), "--json", str(out), "--markdown", str(md)]) == 0
    merged = json.loads(out.read_text())
    for key in ("unset", "forced"):
        for th, run in res["runs"][key].items():
            assert [(r["cell"], r["layers"], r["config"]) for r in merged["runs"][key][th]["rows"]] == \
                [(r["cell"], r["layers"], r["config"]) for r in run["rows"]]
    report = md.read_text()
    assert "## Each library's own choice" in report and "## AVX2 forced" in report


def test_from_json_never_overwrites_an_input(tmp_path):
    _, paths = _parts(tmp_path)
    before = paths[0].read_bytes()
    md = tmp_path / "report.md"
    assert bench.main(["--from-json", ",".join(map(str, paths)), "--json", str(paths[0]), "--markdown", str(md)]) == 0
    assert paths[0].read_bytes() == before and md.exists()
