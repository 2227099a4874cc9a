"""Layers with hand-written forward and backward passes (see docs/architecture.md)."""
from .activations import ACTIVATIONS, Activation, get_activation
from .conv import Conv1d
from .embedding import Embedding
from .linear import Linear
from .losses import log_softmax, mse, softmax, softmax_cross_entropy
from .mlp import MLP
from .module import Module
from .recurrent import GRU, LSTM, RNN

__all__ = ["Module", "RNN", "LSTM", "GRU", "Linear", "Embedding", "Conv1d", "MLP", "Activation",
           "ACTIVATIONS", "get_activation", "softmax_cross_entropy", "log_softmax", "softmax", "mse"]
