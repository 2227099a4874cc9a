"""Layers with hand-written forward and backward passes (see docs/architecture.md)."""
from .module import Module
from .recurrent import GRU, LSTM, RNN

__all__ = ["Module", "RNN", "LSTM", "GRU"]
