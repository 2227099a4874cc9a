"""The training configuration: every option of ``rnnlab train``, its default and its check.

The defaults are tuned so that a user who passes only a text file gets a good model on a
laptop CPU (see docs/results.md for what they reach).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..data import SPLITS
from ..errors import RnnlabError
from ..models import MODEL_KINDS
from ..optim import OPTIMIZERS, SCHEDULES
from .plan import AUTO, KINDS, MEASURE

PLANS = (AUTO, MEASURE) + KINDS

DEFAULT_MAX_STEPS = 3000
"""The step limit of a run given neither ``max_steps`` nor ``max_time``."""
RECURRENT = ("rnn", "lstm", "gru", "mingru", "minlstm")


def _divisor_near(n: int, k: int) -> int:
    """The divisor of ``n`` closest to ``k`` (a suggestion for --heads)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


BEFORE_THE_OPTION = {"split": "tail"}
"""What an option meant in a config written before the option existed, where that differs from
its default for a new run (a run from before ``--split`` trained on the text's tails)."""


@dataclass
class TrainConfig:
    model: str = "lstm"            # rnn | lstm | gru | mingru | minlstm | mlp | cnn | bigram | bow | transformer
    layers: int = 2                # recurrent layers / MLP hidden layers / CNN conv layers
    hidden: int = 256              # hidden units (recurrent H, MLP width, CNN channels, BoW MLP, transformer width)
    embed: int = 64                # embedding size (0 = one-hot input for the recurrent models)
    dropout: float = 0.0           # between recurrent layers and before the read-out
    context: int = 8               # K: characters the MLP sees
    kernel: int = 2                # CNN kernel size (dilations 1, 2, 4, ...)
    seq_len: int = 100             # truncated-BPTT length (stream mode); the block of bow and transformer
    heads: int = 4                 # attention heads of the transformer (must divide --hidden)
    batch: int = 32                # parallel streams / items per batch
    optimizer: str = "adam"
    lr: float = 3e-3
    schedule: str = "cosine"       # constant | step | exponential | cosine (with warm-up)
    warmup: int = 100              # warm-up steps of the cosine schedule
    min_lr: float = 1e-4           # where the cosine schedule ends
    weight_decay: float = 0.0
    clip: float = 1.0              # global gradient-norm clipping (0 = off)
    max_steps: int = 0             # steps of training (0 = none with max_time, else DEFAULT_MAX_STEPS)
    max_time: float = 0.0          # seconds of training (0 = no limit); whichever limit comes first
    eval_every: int = 250          # steps between validation passes and checkpoints
    val_frac: float = 0.05
    test_frac: float = 0.05
    split: str = "spread"          # stream mode: val/test pieces spread through the text, or its tails
    seed: int = 1337
    lines: bool = False            # each non-empty line is one item (names, words, sentences)
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0               # CPU threads a step uses (0 = every usable core)
    plan: str = "auto"             # how a step uses them: auto | measure (the fastest, timed) or a kind of lm/plan.py
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the demo's label)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "TrainConfig":
        if not isinstance(d, dict):
            raise RnnlabError(f"{source}: expected a JSON object with the training options")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise RnnlabError(f"{source}: unknown option(s) {', '.join(unknown)}; was it written by a newer rnnlab?")
        kw = dict(BEFORE_THE_OPTION)
        for k, v in d.items():
            want = type(getattr(cls(), k))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise RnnlabError(f"{source}: option {k!r} should be {want.__name__}, found {type(v).__name__}")
            kw[k] = v
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        """Raise :class:`RnnlabError` naming the first option out of range."""
        def need(ok, opt, what):
            if not ok:
                raise RnnlabError(f"--{opt.replace('_', '-')} {what}, got {getattr(self, opt)!r}")

        need(self.model in MODEL_KINDS, "model", f"must be one of {', '.join(MODEL_KINDS)}")
        for opt, lo, hi in (("layers", 1, 64), ("hidden", 1, 65536), ("context", 1, 4096), ("kernel", 1, 64),
                            ("seq_len", 1, 100000), ("batch", 1, 100000), ("max_steps", 0, 10**9),
                            ("eval_every", 1, 10**9), ("warmup", 0, 10**9)):
            need(lo <= getattr(self, opt) <= hi, opt, f"must be an integer in [{lo}, {hi}]")
        need(0 <= self.embed <= 65536, "embed", "must be in [0, 65536] (0 = one-hot input)")
        need(self.embed > 0 or self.model in RECURRENT + ("bigram", "transformer"), "embed",
             "must be positive for the mlp, cnn and bow models")
        need(1 <= self.heads <= 4096, "heads", "must be an integer in [1, 4096]")
        if self.model == "transformer" and self.hidden % self.heads:
            raise RnnlabError(f"--heads {self.heads} does not divide the transformer's width --hidden {self.hidden}: "
                              f"each head gets --hidden / --heads channels; use e.g. --heads "
                              f"{_divisor_near(self.hidden, self.heads)} or a --hidden that is a multiple of {self.heads}")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "must be a positive number, e.g. 3e-3")
        need(math.isfinite(self.min_lr) and 0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, --lr]")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(math.isfinite(self.clip) and self.clip >= 0, "clip", "must be >= 0 (0 turns clipping off)")
        need(math.isfinite(self.max_time) and self.max_time >= 0, "max_time", "must be >= 0 seconds (0 = no limit)")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
        need(self.dtype in ("float32", "float64"), "dtype", "must be float32 or float64")
        need(self.split in SPLITS, "split", f"must be one of {', '.join(SPLITS)}")
        need(self.device in ("cpu", "cuda"), "device", "must be cpu or cuda")
        need(0 <= self.seed < 2**63, "seed", "must be a non-negative integer")
        need(0 <= self.threads <= 1024, "threads", "must be an integer in [0, 1024] (0 = automatic)")
        need(self.plan in PLANS, "plan", f"must be one of {', '.join(PLANS)}")
        return self

    def step_limit(self) -> int | None:
        """The steps the run may take: ``max_steps``; when that is 0, none with a time limit
        (the run trains for ``max_time``) and :data:`DEFAULT_MAX_STEPS` without one."""
        if self.max_steps:
            return self.max_steps
        return None if self.max_time else DEFAULT_MAX_STEPS

    def model_config(self, vocab_size: int) -> dict:
        """Keyword arguments for :func:`rnnlab.models.build_model`."""
        base = {"model": self.model, "vocab_size": vocab_size, "dtype": self.dtype}
        if self.model in RECURRENT:
            return {**base, "hidden": self.hidden, "layers": self.layers, "embed": self.embed, "dropout": self.dropout}
        if self.model == "transformer":  # the block is the training chunk: --seq-len
            return {**base, "hidden": self.hidden, "layers": self.layers, "heads": self.heads, "block": self.seq_len,
                    "dropout": self.dropout}
        if self.model == "bow":
            return {**base, "embed": self.embed, "hidden": self.hidden, "block": self.seq_len}
        if self.model == "mlp":
            return {**base, "context": self.context, "embed": self.embed, "hidden": self.hidden,
                    "layers": self.layers, "dropout": self.dropout}
        if self.model == "cnn":
            return {**base, "embed": self.embed, "channels": self.hidden, "layers": self.layers, "kernel": self.kernel}
        return base  # bigram
