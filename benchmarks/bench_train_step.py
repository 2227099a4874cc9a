"""The char-LM training step, rnnlab against PyTorch on the CPU: see ``rnnlab.bench``.

    python benchmarks/bench_train_step.py --markdown docs/benchmarks.md --json benchmarks/results.json
    python benchmarks/bench_train_step.py --quick          # smoke test, about a minute
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from rnnlab.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python benchmarks/bench_train_step.py"))
