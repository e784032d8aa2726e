"""Models for attribution: ``load_model`` (no weight processing, float32) for names, configs and
the shipped toy model.

Floor 3 (above :mod:`sae_circuits.transcoders` and :mod:`sae_circuits.toy`). The check that
transcoders were made for a model is owned by :mod:`sae_circuits.transcoders`
(:func:`check_transcoders_match`, re-exported here).

Example:
    >>> model = load_model("toy-facts")                 # offline
    >>> model = load_model("gemma-2-2b-gemmascope")     # the config's model
"""

from sae_circuits.models._load import TOY_MODEL, ModelUnavailableError, load_model
from sae_circuits.transcoders import check_transcoders_match

__all__ = ["TOY_MODEL", "ModelUnavailableError", "check_transcoders_match", "load_model"]
