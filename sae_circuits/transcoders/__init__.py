"""Transcoder sets and their loading (per-layer SAELens transcoders; CLTs; configs)."""

from sae_circuits.transcoders.loading import load_transcoders
from sae_circuits.transcoders.sets import PerLayerTranscoderSet, TranscoderSet

__all__ = ["PerLayerTranscoderSet", "TranscoderSet", "load_transcoders"]
