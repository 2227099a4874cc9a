"""Parity and generation speed of a trained run exported to ONNX and PyTorch (docs/export.md).

    python benchmarks/export_check.py RUN [--chars 32000 --streams 16 --chunk 100 --gen 2000 --rounds 3]

Exports RUN's best checkpoint to a temporary ``.onnx`` file and torch-format directory, then:

* **parity**: the last ``--chars`` characters of the run's training text (its test split), as
  ``--streams`` parallel streams read in chunks of ``--chunk`` with the state carried, through
  rnnlab (float32), onnxruntime, the ``to_torch`` module, and rnnlab in float64 on the same
  weights (the reference: what float32 rounding alone costs); max abs differences of the logits;
  then the torch module and rnnlab both in float64 (where the two implementations must agree to
  rounding in the 13th digit);
* **stepping**: onnxruntime one character per call against one call over the same 200;
* **speed**: characters per second generating ``--gen`` characters (temperature 1, one stream,
  seed 0) with ``rnnlab.lm.sample.generate`` -- exactly what ``rnnlab sample RUN`` and ``rnnlab
  sample model.onnx`` run -- on the run's NumPy model and on the ONNX file; the bare onnxruntime
  loop of docs/export.md's script; and the torch module stepping one character at a time. The
  sides alternate, best of ``--rounds``; every side produces the same text (checked).

Needs ``pip install "rnnlab[export,bench]"``. Take numbers under ``/work/bin/cpu measure``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--chars", type=int, default=32_000)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--gen", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime
    import torch

    from rnnlab.cli.common import load_run
    from rnnlab.data import read_text
    from rnnlab.interop.onnx import onnx_bytes
    from rnnlab.interop.onnx_run import OnnxLM
    from rnnlab.interop.torch import to_torch
    from rnnlab.lm.sample import generate
    from rnnlab.models import build_model

    run, cfg, data, vocab, model, meta = load_run(args.run, "best")
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "model.onnx")
    with open(path, "wb") as f:
        f.write(onnx_bytes(model, vocab))
    onx = OnnxLM(path, threads=1)  # as rnnlab sample model.onnx runs it
    tmod = to_torch(model)
    ref = build_model({**model.config(), "dtype": "float64"})
    ref.load_state_dict(model.state_dict())
    ref.eval()
    tref = to_torch(ref)
    print(f"run {run.path}: {model.kind}, {cfg.layers} layers, hidden {cfg.hidden}, embed {cfg.embed}, "
          f"{model.num_params():,} parameters, best checkpoint at step {meta.get('step')}; "
          f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")

    # ---- parity over the test split, state carried between chunks
    ids = vocab.encode(read_text(data["source"]))[-args.chars:].astype(np.int64)
    S = args.streams
    ids = ids[: len(ids) // S * S].reshape(S, -1).T.copy()  # (N/S, S): S contiguous streams, time-major
    worst = {"onnxruntime": 0.0, "torch": 0.0, "float64 rnnlab": 0.0, "onnxruntime vs float64": 0.0,
             "torch vs float64": 0.0, "float64: torch vs rnnlab": 0.0}
    states = {k: None for k in ("r", "o", "t", "d", "td")}
    top = 0.0
    for s in range(0, ids.shape[0], args.chunk):
        x = ids[s:s + args.chunk]
        a, states["r"], _ = model.forward(x, states["r"])
        b, states["o"], _ = onx.forward(x, states["o"])
        with torch.no_grad():
            c, states["t"] = tmod(torch.from_numpy(x), states["t"])
            e, states["td"] = tref(torch.from_numpy(x), states["td"])
        d, states["d"], _ = ref.forward(x, states["d"])
        top = max(top, float(np.abs(d).max()))
        worst["onnxruntime"] = max(worst["onnxruntime"], float(np.abs(a - b).max()))
        worst["torch"] = max(worst["torch"], float(np.abs(a - c.numpy()).max()))
        worst["float64 rnnlab"] = max(worst["float64 rnnlab"], float(np.abs(a - d).max()))
        worst["onnxruntime vs float64"] = max(worst["onnxruntime vs float64"], float(np.abs(b - d).max()))
        worst["torch vs float64"] = max(worst["torch vs float64"], float(np.abs(c.numpy() - d).max()))
        worst["float64: torch vs rnnlab"] = max(worst["float64: torch vs rnnlab"], float(np.abs(e.numpy() - d).max()))
    print(f"parity over {ids.size:,} characters ({S} streams x {ids.shape[0]} steps, chunks of {args.chunk}, state "
          f"carried); largest |logit| {top:.1f}; max abs difference of the logits (from rnnlab float32 unless named):")
    for k, v in worst.items():
        print(f"  {k:24s} {v:.2e}")
    whole, _, _ = onx.forward(ids[:200, :1])
    state, steps = None, []
    for t in range(200):
        out, state, _ = onx.forward(ids[t:t + 1, :1], state)
        steps.append(out[0])
    print(f"onnxruntime one character per call vs one call over 200: max abs {np.abs(np.stack(steps) - whole).max():.2e}")

    # ---- generation speed
    onx_default = OnnxLM(path)
    sess = onnxruntime.InferenceSession(path)  # the docs' script: default session options
    tokens, start = vocab.tokens, onx.meta["initial_state"]

    def script_loop(n, seed):
        """docs/export.md's loop, prime "\\n", temperature 1."""
        st = {i.name: np.full([1 if isinstance(d, str) else d for d in i.shape], start[i.name],
                              np.int64 if "int" in i.type else np.float32) for i in sess.get_inputs()[1:]}
        rng, text, x = np.random.default_rng(seed), "", np.array([[tokens.index("\n")]])
        for _ in range(n):
            logits, *outs = sess.run(None, {"ids": x, **st})
            st = dict(zip(st, outs))
            p = np.exp((z := logits[-1, 0].astype(np.float64)) - z.max())
            x = np.array([[rng.choice(len(p), p=p / p.sum())]])
            text += tokens[x[0, 0]]
        return text

    def torch_loop(n, seed):
        from rnnlab.lm.sample import choose

        rng, out, st, x = np.random.default_rng(seed), [], None, torch.tensor([[tokens.index("\n")]])
        with torch.no_grad():
            for _ in range(n):
                logits, st = tmod(x, st)
                i = choose(logits[-1, 0].numpy(), 1.0, 0, rng)
                out.append(tokens[i])
                x = torch.tensor([[i]])
        return "".join(out)

    def via_generate(m):
        def f(n, seed):
            out = []
            generate(m, vocab, prime="\n", length=n, temperature=1.0, rng=np.random.default_rng(seed),
                     emit=out.append)
            return "".join(out)
        return f

    sides = {"rnnlab sample RUN (NumPy engine)": via_generate(model),
             "rnnlab sample model.onnx (1 thread)": via_generate(onx),
             "same, onnxruntime's default threads": via_generate(onx_default),
             "docs script loop (bare onnxruntime)": script_loop,
             f"to_torch module ({torch.get_num_threads()} threads)": torch_loop}
    best = {k: np.inf for k in sides}
    texts = {}
    for k, f in sides.items():
        f(50, 0)  # warm up
    for _ in range(args.rounds):
        for k, f in sides.items():
            t0 = time.perf_counter()
            texts[k] = f(args.gen, 0)
            best[k] = min(best[k], time.perf_counter() - t0)
    ref_text = texts["rnnlab sample RUN (NumPy engine)"]
    print(f"generation, {args.gen:,} characters, one stream, best of {args.rounds}:")
    for k in sides:
        same = "same text" if texts[k] == ref_text else f"text differs from char {_first_diff(texts[k], ref_text)}"
        print(f"  {k:40s} {args.gen / best[k]:9,.0f} chars/s   ({same})")


def _first_diff(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


if __name__ == "__main__":
    main()
