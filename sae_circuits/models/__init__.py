"""Models for attribution: ``load_model`` (no weight processing, float32) for names, configs,
the shipped toy model, and local Llama / Gemma 3 checkpoints (Hugging Face folders, GGUF files).

Floor 3 (above :mod:`sae_circuits.transcoders` and :mod:`sae_circuits.toy`). The check that
transcoders were made for a model is owned by :mod:`sae_circuits.transcoders`
(:func:`check_transcoders_match`, re-exported here).

Example:
    >>> model = load_model("toy-facts")                 # offline
    >>> model = load_model("gemma-2-2b-gemmascope")     # the config's model
    >>> model = load_model("models/gemma-3-270m-q4_k_m.gguf")   # a local GGUF file, offline
"""

from sae_circuits.models._load import TOY_MODEL, ModelUnavailableError, load_model
from sae_circuits.transcoders import check_transcoders_match

__all__ = ["TOY_MODEL", "ModelUnavailableError", "check_transcoders_match", "load_model"]
