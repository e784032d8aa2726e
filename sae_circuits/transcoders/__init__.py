"""Transcoders: SAELens objects, the sets that cover a model, their configs and loading.

Floor 1 of the package (above :mod:`sae_circuits.core`): per-layer SAELens transcoders, the
TopK transcoder and the cross-layer transcoder (SAELens architectures registered in
:mod:`._registry`), grouped into a
:class:`TranscoderSet`; configs for public releases; loading from folders, the SAELens registry
and the hub; and the one check that a set fits a model (:func:`check_compatible`,
:func:`check_transcoders_match`).

Example:
    >>> ts = load_transcoders("toy-facts")
    >>> check_compatible(model, ts).inputs[0].name
"""

from sae_circuits.transcoders import _registry  # noqa: F401  (registers CLT, TopK with SAELens)
from sae_circuits.transcoders._fit import (
    ResolvedTranscoders,
    Sizes,
    check_compatible,
    check_transcoders_match,
)
from sae_circuits.transcoders._formats import transcoder_classes
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
from sae_circuits.transcoders.topk import ARCHITECTURE as TOPK_ARCHITECTURE
from sae_circuits.transcoders.topk import (
    TopKTranscoder,
    TopKTranscoderConfig,
    topk_activation,
)

__all__ = [
    "CLT_ARCHITECTURE",
    "TOPK_ARCHITECTURE",
    "TRANSCODERS_DIR_ENV",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "CrossLayerTranscoderSet",
    "PerLayerTranscoderSet",
    "ResolvedTranscoders",
    "Sizes",
    "TopKTranscoder",
    "TopKTranscoderConfig",
    "TranscoderSet",
    "TranscoderSetConfig",
    "WeightsUnavailableError",
    "check_compatible",
    "check_transcoders_match",
    "get_config",
    "list_configs",
    "load_config",
    "load_transcoders",
    "topk_activation",
    "transcoder_classes",
]
