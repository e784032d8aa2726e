"""Transcoder sets and their loading (per-layer SAELens transcoders; CLTs; configs)."""

from sae_circuits.transcoders.clt import CrossLayerTranscoderSet
from sae_circuits.transcoders.clt_sae import (
    ARCHITECTURE as CLT_ARCHITECTURE,
)
from sae_circuits.transcoders.clt_sae import (
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
)
from sae_circuits.transcoders.loading import load_transcoders
from sae_circuits.transcoders.sets import PerLayerTranscoderSet, TranscoderSet

__all__ = [
    "CLT_ARCHITECTURE",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "CrossLayerTranscoderSet",
    "PerLayerTranscoderSet",
    "TranscoderSet",
    "load_transcoders",
]
