"""rnnlab — recurrent neural networks from first principles.

Hand-derived backpropagation through time on NumPy (CuPy on a GPU), a character-level language
model, and experiments that measure how recurrent networks differ from feed-forward ones.
"""
from .backend import set_backend
from .errors import RnnlabError

__version__ = "0.1.0"
__all__ = ["RnnlabError", "set_backend", "__version__"]
