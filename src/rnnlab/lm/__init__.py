"""The character-level language model product: trainer, sampler, evaluator, run directory and checkpoints."""
