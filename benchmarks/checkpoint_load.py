"""How long `load_checkpoint` takes on intact and damaged files, and how much it allocates: the
time bounds that tests/test_checkpoint_fuzz.py no longer asserts (it keeps an allocation bound).

    python benchmarks/checkpoint_load.py [--repeat 3] [--flips 2000] [--markdown FILE]

Two files, each loaded intact and damaged in the ways the fuzz tests damage them:

- **small**: a tiny model's checkpoint (LSTM, hidden 4: 1.4 KB, about twice the fuzz tests'
  file): every truncation, seeded random bit flips, random garbage, header sizes that claim up to
  10**30 elements (with byte ranges that agree or not), a header length just over the limit in
  a sparse file;
- **trainer**: a checkpoint as `rnnlab train` writes it with its default model (LSTM, 2 layers,
  hidden 256, embed 64, 65 characters) and Adam's two slots: intact, one flipped bit in the
  tensor data (found only by the checksum, after everything was read), cut one byte short, and
  a header whose first tensor claims 10**12 elements.

Per family: the number of cases, the median and the slowest load (best of ``--repeat`` per
case, wall clock, perf_counter) and the largest peak allocation tracemalloc saw in one load (a
separate pass, since tracing slows allocation). Every damaged case must raise RnnlabError and
every intact one load; anything else stops the script.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from rnnlab.errors import RnnlabError
from rnnlab.lm.checkpoint import MAX_HEADER_BYTES, load_checkpoint, save_checkpoint
from rnnlab.models.recurrent_lm import RecurrentLM
from rnnlab.optim import flatten_state, make_optimizer

def small_tensors() -> tuple[dict, dict]:
    """A tiny model's parameters (LSTM, hidden 4, embed 3, 8 characters): 1.4 KB on disk."""
    model = RecurrentLM(8, "lstm", 4, 1, 3, rng=np.random.default_rng(0))
    return dict(model.params), {"step": 7, "config": {"hidden": 4}}


def trainer_tensors() -> tuple[dict, dict]:
    model = RecurrentLM(65, "lstm", 256, 2, 64, rng=np.random.default_rng(0))
    params = {f"model.{k}": v for k, v in model.params.items()}
    opt = make_optimizer("adam", model.params, model.grads, lr=2e-3)
    for g in model.grads.values():
        g[...] = 1e-3
    opt.step()
    tensors, meta = flatten_state(opt.state_dict())
    return {**params, **tensors}, {"step": 1, "optim": meta}


def split(data: bytes) -> tuple[int, dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def huge_shapes(data: bytes) -> list[bytes]:
    _, header, body = split(data)
    name = next(k for k in header if k != "__metadata__")
    out = []
    for shape in ([10**12], [10**6, 10**6], [2**40, 2**20], [0, 2**40, 2**40], [10**30]):
        for consistent in (False, True):
            h = json.loads(json.dumps(header))
            h[name]["shape"] = shape
            if consistent:
                b = h[name]["data_offsets"][0]
                h[name]["data_offsets"] = [b, b + 4 * int(np.prod(shape, dtype=object))]
            out.append(join(h, body))
    return out


def flip(data: bytes, bits) -> bytes:
    buf = bytearray(data)
    for b in bits:
        buf[b // 8] ^= 1 << (b % 8)
    return bytes(buf)


def families(work: Path, flips: int) -> dict[str, tuple[bool, list]]:
    """``{family: (loads_ok, [bytes or a path, ...])}``."""
    rng = np.random.default_rng(20240521)
    save_checkpoint(work / "small.safetensors", *small_tensors())
    small = (work / "small.safetensors").read_bytes()
    tensors, meta = trainer_tensors()
    save_checkpoint(work / "trainer.safetensors", tensors, meta)
    big = (work / "trainer.safetensors").read_bytes()
    n_big = int.from_bytes(big[:8], "little")
    sparse = work / "oversized-header.safetensors"
    with open(sparse, "wb") as fh:
        fh.write((MAX_HEADER_BYTES + 1).to_bytes(8, "little"))
        fh.truncate(MAX_HEADER_BYTES + 100)
    n_bits = len(small) * 8
    return {
        "small: intact": (True, [small]),
        "small: every truncation": (False, [small[:n] for n in range(len(small))]),
        "small: 1-4 random bit flips": (False, [
            flip(small, rng.choice(n_bits, size=int(rng.integers(1, 5)), replace=False)) for _ in range(flips)]),
        "small: random garbage": (False, [rng.bytes(int(rng.integers(0, 1500))) for _ in range(200)]),
        "small: huge declared shapes": (False, huge_shapes(small)),
        "header length over the limit (sparse 4 MB file)": (False, [sparse]),
        f"trainer ({len(big) / 1e6:.1f} MB): intact": (True, [big]),
        "trainer: one flipped bit in the data": (False, [flip(big, [8 * ((8 + n_big + len(big)) // 2)])]),
        "trainer: one byte short": (False, [big[:-1]]),
        "trainer: huge declared shape": (False, huge_shapes(big)[:1]),
    }


def load_once(path: Path, ok: bool) -> None:
    try:
        load_checkpoint(path)
    except RnnlabError:
        if ok:
            raise
    else:
        if not ok:
            raise AssertionError(f"a damaged file loaded: {path}")


def measure(work: Path, ok: bool, cases: list, repeat: int) -> tuple[list[float], int]:
    times, peak = [], 0
    case_path = work / "case.safetensors"
    for case in cases:
        path = case if isinstance(case, Path) else case_path
        if not isinstance(case, Path):
            case_path.write_bytes(case)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            load_once(path, ok)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        tracemalloc.start()
        load_once(path, ok)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return times, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="loads per case; the fastest counts")
    ap.add_argument("--flips", type=int, default=2000, help="random bit-flip cases of the small file")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    rows = ["| Case | Files | Median | Slowest | Peak allocation |", "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (ok, cases) in families(work, args.flips).items():
            times, peak = measure(work, ok, cases, args.repeat)
            rows.append(f"| {name} | {len(cases):,} | {statistics.median(times) * 1e3:.3f} ms | "
                        f"{max(times) * 1e3:.3f} ms | {peak / 2**20:.2f} MiB |")
            print(rows[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
