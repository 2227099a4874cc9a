"""``rnnlab export`` and ``rnnlab import-torch``: a trained model to ONNX or PyTorch and back, and
the loader that lets ``rnnlab sample`` read an exported ``.onnx`` file like a run."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import RnnlabError
from .common import load_run, say

FORMATS = ("onnx", "torch")


def cmd_export(args) -> int:
    from ..io import atomic_write_bytes, atomic_write_dir, ensure_dir, human_bytes

    out = Path(args.out)
    if os.path.lexists(out) and not args.force:
        raise RnnlabError(f"{out} already exists; pass --force to replace it, or choose another --out")
    run, cfg, data, vocab, model, meta = load_run(args.run_dir, args.checkpoint)
    metadata = {"source_run": str(run.path.resolve()), "checkpoint": args.checkpoint,
                "checkpoint_step": meta.get("step"), "train": cfg.to_dict(),
                "data": {k: data.get(k) for k in ("source", "sha256", "mode")}}
    if args.format == "onnx":
        from ..interop.onnx import OPSET, onnx_bytes

        blob = onnx_bytes(model, vocab, metadata)
        ensure_dir(out.parent, "output directory")
        atomic_write_bytes(out, blob)
        say(args, f"wrote {out} ({human_bytes(len(blob))}): ONNX opset {OPSET}, {model.kind} model, vocabulary "
                  f"{vocab.size}; sample with: rnnlab sample {out}")
    else:
        from ..interop.torch import export_files

        files = export_files(model, vocab, metadata)
        ensure_dir(out.parent, "output directory")
        atomic_write_dir(out, files, replace=args.force)
        say(args, f"wrote {out}/ ({', '.join(files)}): the {model.kind} char-LM for PyTorch; in Python, "
                  f"rnnlab.interop.torch.to_torch({str(out)!r}) gives the torch.nn.Module")
    return 0


def cmd_import_torch(args) -> int:
    from ..interop.torch import read_export
    from ..lm.imported import write_model_run

    model, vocab, _ = read_export(args.source)
    run = write_model_run(args.out, model, vocab, source=f"imported from PyTorch: {Path(args.source).resolve()}",
                          force=args.force)
    say(args, f"imported a {model.kind} char-LM ({model.num_params():,} parameters, vocabulary {vocab.size}) as "
              f"run {run.path}; sample with: rnnlab sample {run.path}")
    return 0


def is_model_file(path) -> bool:
    """Whether ``rnnlab sample PATH`` names an exported model file rather than a run directory."""
    return os.path.isfile(path) or (str(path).endswith(".onnx") and not os.path.isdir(path))


def load_model_file(path, which=None):
    """An exported ``.onnx`` file in the shape of :func:`~rnnlab.cli.common.load_run`'s result
    ``(run, cfg, data, vocab, model, checkpoint meta)``, so ``rnnlab sample`` runs it unchanged.
    ``which`` is ignored: the file holds the one checkpoint it was exported from."""
    from ..interop.onnx_run import OnnxLM
    from ..lm.config import TrainConfig

    model = OnnxLM(path, threads=1)  # a character per call: a second thread is within noise (docs/export.md)
    train = model.meta.get("train") or {}
    cfg = TrainConfig(lines=model.vocab.boundary, **{k: train[k] for k in ("val_frac", "test_frac", "seed")
                                                     if k in train})
    return None, cfg, model.meta.get("data") or {}, model.vocab, model, {}


def register(sub) -> None:
    e = sub.add_parser("export", help="write a trained run as an ONNX model or a PyTorch char-LM")
    e.add_argument("run_dir")
    e.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx: one .onnx file for any ONNX runtime; torch: a directory with model.safetensors and "
                        "config.json (default onnx)")
    e.add_argument("--out", required=True, help="the .onnx file, or the directory for --format torch")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("import-torch", help="make a run directory from a PyTorch char-LM (the torch format)")
    i.add_argument("source", help="directory with config.json and model.safetensors (rnnlab.interop.torch.save)")
    i.add_argument("--out", required=True, help="run directory to create")
    i.add_argument("--force", action="store_true", help="replace a run in --out (its files are moved aside)")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=cmd_import_torch)
