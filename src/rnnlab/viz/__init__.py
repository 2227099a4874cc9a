"""Seeing inside a trained recurrent language model.

- :mod:`.activations` — every hidden unit's activation (``h``; the LSTM's cell ``c`` and gates
  ``i f g o``; the GRU's gates ``r z n``) and the model's next-character predictions, read from
  the engine's own forward caches (pure NumPy).
- :mod:`.properties` — named properties of a text per character (inside quotes, bracket depth,
  column, start of a word, ...) and the correlation ranking of units against them (pure NumPy).
- :mod:`.ngram` — an interpolated Kneser-Ney n-gram model: the baseline the RNN's per-character
  loss is compared with.
- :mod:`.report` — one self-contained HTML file from all of that (``rnnlab visualize``); its HTML,
  CSS and JavaScript are package data files under ``static/``.
- :mod:`.serve` — the local web app (``rnnlab serve``): the only module here that imports a web
  framework (Starlette and uvicorn, the ``serve`` extra), lazily.

The core (``nn``, ``models``, ``lm``) never imports this package.
"""
