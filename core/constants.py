"""Constants every layer agrees on."""

IGNORE_INDEX = -100
"""Label of a token that is not trained (PyTorch's and transformers' cross-entropy skip it)."""
