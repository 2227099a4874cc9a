"""Bridges to other frameworks. Each submodule imports its framework lazily, on first use."""
