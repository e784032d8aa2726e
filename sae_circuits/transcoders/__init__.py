"""Transcoder sets and their loading (per-layer SAELens transcoders; CLTs; configs)."""

from sae_circuits.transcoders._hub import ENV_DIR as TRANSCODERS_DIR_ENV
from sae_circuits.transcoders._hub import WeightsUnavailableError
from sae_circuits.transcoders.clt import CrossLayerTranscoderSet
from sae_circuits.transcoders.clt_sae import (
    ARCHITECTURE as CLT_ARCHITECTURE,
)
from sae_circuits.transcoders.clt_sae import (
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
)
from sae_circuits.transcoders.configs import (
    TranscoderSetConfig,
    get_config,
    list_configs,
    load_config,
)
from sae_circuits.transcoders.loading import load_transcoders
from sae_circuits.transcoders.sets import PerLayerTranscoderSet, TranscoderSet

__all__ = [
    "CLT_ARCHITECTURE",
    "TRANSCODERS_DIR_ENV",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "CrossLayerTranscoderSet",
    "PerLayerTranscoderSet",
    "TranscoderSet",
    "TranscoderSetConfig",
    "WeightsUnavailableError",
    "get_config",
    "list_configs",
    "load_config",
    "load_transcoders",
]
