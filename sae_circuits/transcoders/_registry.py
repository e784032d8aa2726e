"""Registration with SAELens, in one place, through its public API only.

The architectures this package adds to SAELens (the cross-layer transcoder and the TopK
transcoder) are registered with ``sae_lens.register_sae_class`` when
:mod:`sae_circuits.transcoders` is imported, so that ``SAE.load_from_disk`` / ``SAE.from_dict``
build them like SAELens' own classes. Registering is
idempotent: a second import finds its class already registered (``sae_lens.registry
.get_sae_class``) and does nothing; a different class already registered under the name (another
package's) is left in place, with a warning.

Example:
    >>> from sae_lens.registry import get_sae_class
    >>> get_sae_class("sae_circuits.cross_layer_transcoder")[0].__name__
    'CrossLayerTranscoder'
    >>> get_sae_class("sae_circuits.topk_transcoder")[0].__name__
    'TopKTranscoder'
"""

from __future__ import annotations

import logging

from sae_lens import SAE, SAEConfig, register_sae_class
from sae_lens.registry import get_sae_class

from sae_circuits.transcoders import clt_sae, topk

__all__ = ["ARCHITECTURES", "register_architectures"]

logger = logging.getLogger(__name__)

#: SAELens architecture name -> (SAE class, config class) that this package registers.
ARCHITECTURES: dict[str, tuple[type[SAE], type[SAEConfig]]] = {
    clt_sae.ARCHITECTURE: (clt_sae.CrossLayerTranscoder, clt_sae.CrossLayerTranscoderConfig),
    topk.ARCHITECTURE: (topk.TopKTranscoder, topk.TopKTranscoderConfig),
}


def register_architectures() -> None:
    """Register every class of :data:`ARCHITECTURES` with SAELens (idempotent)."""
    for name, (sae_class, config_class) in ARCHITECTURES.items():
        try:
            registered = get_sae_class(name)[0]
        except KeyError:
            register_sae_class(name, sae_class, config_class)
            continue
        if registered is not sae_class:
            logger.warning(
                "SAELens architecture %r is already registered to %s.%s; leaving it as is",
                name,
                registered.__module__,
                registered.__qualname__,
            )


register_architectures()
