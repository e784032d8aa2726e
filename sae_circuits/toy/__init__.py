"""Offline toy models, transcoders and tokenizers (tests, examples, the built-in demo)."""

from sae_circuits.toy.tiny import ARCHS, HOOKS, tiny_model, tiny_transcoders
from sae_circuits.toy.tokenizer import word_tokenizer

__all__ = ["ARCHS", "HOOKS", "tiny_model", "tiny_transcoders", "word_tokenizer"]
