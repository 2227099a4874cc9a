"""GPU check: CuPy parity with NumPy and PyTorch, training-step timing against cuDNN.

Run through ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU, CuPy and PyTorch+CUDA::

    python benchmarks/gpu_check.py --out DIR [--quick]

1. Parity: each cell (rnn, lstm, gru) on random configurations, float64: rnnlab on CuPy against
   rnnlab on NumPy (same weights) and against torch on CUDA (cuDNN): outputs, final states,
   dx, dstate0 and every parameter gradient.
2. Timing: the full char-LM training step (embedding -> recurrent -> linear -> softmax
   cross-entropy -> backward -> Adam), float32, configs B (B=64, T=100, H=256, E=64) and C
   (H=512), layers 1 and 2, rnnlab-on-CuPy against torch+cuDNN, alternating, median of 20 steps
   after warm-up, with the device synchronised around each step.
Results go to DIR/gpu_results.md and DIR/gpu_results.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)) if a.size else 0.0


def parity(n_configs: int) -> list[dict]:
    import cupy as cp
    import torch

    from rnnlab import backend
    from rnnlab.interop.torch import grads_to_torch, to_torch_state_dict
    from rnnlab.nn import GRU, LSTM, RNN

    cells = {"rnn": (RNN, torch.nn.RNN), "lstm": (LSTM, torch.nn.LSTM), "gru": (GRU, torch.nn.GRU)}
    rows = []
    for name, (ours, theirs) in cells.items():
        worst_np, worst_torch = 0.0, 0.0
        for seed in range(n_configs):
            rng = np.random.default_rng(seed)
            I, H, L = int(rng.integers(1, 9)), int(rng.integers(1, 17)), int(rng.integers(1, 3))
            B, T = int(rng.integers(1, 6)), int(rng.integers(1, 30))
            bidir = bool(rng.random() < 0.4)
            use_len = bool(rng.random() < 0.5)
            kw = dict(num_layers=L, bidirectional=bidir, dtype=np.float64)
            backend.set_backend("cpu")
            cpu = ours(I, H, rng=np.random.default_rng(seed), **kw)
            backend.set_backend("cuda")
            gpu = ours(I, H, rng=np.random.default_rng(seed), **kw)
            x = rng.standard_normal((T, B, I))
            lengths = rng.integers(1, T + 1, size=B) if use_len else None
            if lengths is not None:
                lengths[0] = T
            res = {}
            for tag, layer, xp in (("np", cpu, np), ("cp", gpu, cp)):
                y, sn, cache = layer.forward(xp.asarray(x), lengths=lengths)
                dy = np.random.default_rng(seed + 1).standard_normal(y.shape)
                layer.zero_grad()
                dx, ds0 = layer.backward(xp.asarray(dy), None, cache)
                hn = sn[0] if name == "lstm" else sn
                res[tag] = (backend.to_numpy(y), backend.to_numpy(hn), backend.to_numpy(dx),
                            grads_to_torch(layer), dy)
            worst_np = max(worst_np, *(rel(a, b) for a, b in zip(res["cp"][:3], res["np"][:3])),
                           *(rel(res["cp"][3][k], res["np"][3][k]) for k in res["np"][3]))
            # torch on CUDA (cuDNN) with the same weights
            tm = theirs(I, H, num_layers=L, bidirectional=bidir).double().cuda()
            tm.load_state_dict({k: torch.from_numpy(v).cuda() for k, v in to_torch_state_dict(cpu).items()})
            xt = torch.tensor(x, device="cuda", requires_grad=True)
            inp = xt
            if lengths is not None:
                inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
            yt, _ = tm(inp)
            if lengths is not None:
                yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)
            (yt * torch.tensor(res["np"][4], device="cuda")).sum().backward()
            worst_torch = max(worst_torch, rel(res["cp"][0], yt.detach().cpu().numpy()),
                              rel(res["cp"][2], xt.grad.cpu().numpy()),
                              *(rel(res["cp"][3][k], p.grad.cpu().numpy()) for k, p in tm.named_parameters()))
        backend.set_backend("cpu")
        rows.append({"cell": name, "configs": n_configs, "max_rel_err_vs_numpy": worst_np,
                     "max_rel_err_vs_torch_cuda": worst_torch, "ok": worst_np < 1e-9 and worst_torch < 1e-9})
        print(f"parity {name}: vs numpy {worst_np:.2e}, vs torch cuda {worst_torch:.2e}", flush=True)
    return rows


def time_steps(fn, sync, warmup=5, steps=20) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timing(configs: dict, layer_counts, cells) -> list[dict]:
    import cupy as cp
    import torch

    from rnnlab import backend
    from rnnlab.models import build_model
    from rnnlab.nn.losses import softmax_cross_entropy
    from rnnlab.optim import make_optimizer

    V = 65
    torch.backends.cudnn.benchmark = True
    rows = []
    backend.set_backend("cuda")
    for cname, (B, T, H, E) in configs.items():
        for L in layer_counts:
            for cell in cells:
                rng = np.random.default_rng(0)
                x_np = rng.integers(0, V, (T, B))
                y_np = rng.integers(0, V, (T, B))
                model = build_model({"model": cell, "vocab_size": V, "hidden": H, "layers": L, "embed": E,
                                     "dropout": 0.0, "dtype": "float32"}, rng=rng)
                opt = make_optimizer("adam", model.params, model.grads, lr=1e-3)
                x, y = cp.asarray(x_np), cp.asarray(y_np)

                def ours():
                    logits, _, cache = model.forward(x, None)
                    loss, dl = softmax_cross_entropy(logits, y)
                    model.zero_grad()
                    model.backward(dl, cache)
                    opt.step()

                rnn_cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
                emb = torch.nn.Embedding(V, E).cuda()
                net = rnn_cls(E, H, num_layers=L).cuda()
                head = torch.nn.Linear(H, V).cuda()
                params = list(emb.parameters()) + list(net.parameters()) + list(head.parameters())
                topt = torch.optim.Adam(params, lr=1e-3)
                xt, yt = torch.from_numpy(x_np).cuda(), torch.from_numpy(y_np).cuda()

                def theirs():
                    out, _ = net(emb(xt))
                    loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), yt.reshape(-1))
                    topt.zero_grad(set_to_none=True)
                    loss.backward()
                    topt.step()

                t_ours = time_steps(ours, cp.cuda.Device().synchronize)
                t_theirs = time_steps(theirs, torch.cuda.synchronize)
                t_ours = min(t_ours, time_steps(ours, cp.cuda.Device().synchronize))
                t_theirs = min(t_theirs, time_steps(theirs, torch.cuda.synchronize))
                row = {"config": cname, "cell": cell, "layers": L, "B": B, "T": T, "H": H,
                       "rnnlab_ms": t_ours * 1e3, "torch_ms": t_theirs * 1e3,
                       "rnnlab_chars_s": B * T / t_ours, "torch_chars_s": B * T / t_theirs,
                       "ratio": t_theirs / t_ours}
                rows.append(row)
                print(f"{cname} {cell} L={L}: rnnlab {t_ours * 1e3:.2f} ms, torch+cuDNN {t_theirs * 1e3:.2f} ms, "
                      f"ratio {row['ratio']:.2f}", flush=True)
    backend.set_backend("cpu")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import cupy as cp
    import torch

    dev = cp.cuda.runtime.getDeviceProperties(0)
    info = {"gpu": dev["name"].decode() if isinstance(dev["name"], bytes) else str(dev["name"]),
            "cupy": cp.__version__, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "numpy": np.__version__}
    print(json.dumps(info), flush=True)
    import traceback

    try:
        par = parity(4 if args.quick else 12)
    except Exception:  # report and go on: one run should tell as much as it can
        traceback.print_exc()
        par = [{"cell": "all", "configs": 0, "max_rel_err_vs_numpy": float("nan"),
                "max_rel_err_vs_torch_cuda": float("nan"), "ok": False}]
    configs = {"B": (64, 100, 256, 64), "C": (64, 100, 512, 64)}
    try:
        tim = timing(configs, (1,) if args.quick else (1, 2), ("rnn", "lstm", "gru"))
    except Exception:
        traceback.print_exc()
        tim = []
    (out / "gpu_results.json").write_text(json.dumps({"info": info, "parity": par, "timing": tim}, indent=2))
    lines = [f"GPU: {info['gpu']}; CuPy {info['cupy']}; torch {info['torch']} (cuDNN {info['cudnn']})", "",
             "| cell | configs | max rel err vs NumPy | max rel err vs torch CUDA |", "|---|---:|---:|---:|"]
    lines += [f"| {r['cell']} | {r['configs']} | {r['max_rel_err_vs_numpy']:.1e} | {r['max_rel_err_vs_torch_cuda']:.1e} |"
              for r in par]
    lines += ["", "| config | cell | layers | rnnlab ms/step | torch+cuDNN ms/step | rnnlab chars/s | torch chars/s | "
              "ratio (rnnlab speed / torch) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['cell']} | {r['layers']} | {r['rnnlab_ms']:.2f} | {r['torch_ms']:.2f} | "
              f"{r['rnnlab_chars_s']:,.0f} | {r['torch_chars_s']:,.0f} | {r['ratio']:.2f} |" for r in tim]
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["ok"] for r in par) else 1


if __name__ == "__main__":
    sys.exit(main())
