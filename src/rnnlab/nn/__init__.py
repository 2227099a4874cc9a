"""Layers with hand-written forward and backward passes (see docs/architecture.md)."""
from .activations import ACTIVATIONS, Activation, get_activation
from .attention import CausalSelfAttention
from .conv import Conv1d
from .embedding import Embedding
from .gelu import GELU
from .layernorm import LayerNorm
from .linear import Linear
from .losses import log_softmax, mse, softmax, softmax_cross_entropy
from .minrnn import MinGRU, MinLSTM
from .mlp import MLP
from .module import Module
from .recurrent import GRU, LSTM, RNN
from .transformer import TransformerBlock

__all__ = ["Module", "RNN", "LSTM", "GRU", "MinGRU", "MinLSTM", "Linear", "Embedding", "Conv1d", "MLP",
           "LayerNorm", "GELU", "CausalSelfAttention", "TransformerBlock", "Activation", "ACTIVATIONS",
           "get_activation", "softmax_cross_entropy", "log_softmax", "softmax", "mse"]
