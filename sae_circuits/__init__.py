"""sae_circuits: exact attribution graphs with SAELens transcoders on TransformerLens models.

The public API, re-exported from the subpackages (floors, lowest first; each imports only
from floors below it, see docs/architecture.md):

* :mod:`sae_circuits.core`: hooks, prompts, files, progress bars;
* :mod:`sae_circuits.transcoders` and :mod:`sae_circuits.graph`: transcoder sets (and the check
  that they fit a model); attribution graphs as data;
* :mod:`sae_circuits.replacement_model`, :mod:`sae_circuits.toy`, :mod:`sae_circuits.models`;
* :mod:`sae_circuits.attribution`, then :mod:`sae_circuits.interventions`;
* :mod:`sae_circuits.viewer`, and the command line (:mod:`sae_circuits.cli`).

``import sae_circuits`` loads neither the viewer nor matplotlib; ``sc.toy``, ``sc.viewer`` and
``sc.supernodes`` are imported on first use.

Example:
    >>> import sae_circuits as sc
    >>> transcoders = sc.load_transcoders("path/to/folder")
    >>> graph = sc.attribute(model, "The capital of the state containing Dallas is", transcoders)
    >>> graph.adjacency, graph.nodes, graph.edges(), graph.logits
"""

import importlib
import sys
from typing import Any

from sae_circuits import core, graph, interventions, replacement_model
from sae_circuits._version import __version__
from sae_circuits.attribution import (
    QKAttribution,
    Target,
    attribute,
    attribute_attention,
    attribute_attention_for_edge,
    attribute_attention_keys,
    head_loadings,
)
from sae_circuits.batch import attribute_many
from sae_circuits.core import HookNotFoundError
from sae_circuits.graph import (
    AttributionGraph,
    GraphFileError,
    GraphScores,
    save_neuronpedia,
    to_neuronpedia,
)
from sae_circuits.interventions import (
    GenerationResult,
    InterventionResult,
    compare_with_graph,
    generate,
    intervene,
    predict_changes,
)
from sae_circuits.models import load_model
from sae_circuits.replacement_model import replacement
from sae_circuits.transcoders import (
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    CrossLayerTranscoderSet,
    PerLayerTranscoderSet,
    TopKTranscoder,
    TopKTranscoderConfig,
    TranscoderSet,
    TranscoderSetConfig,
    WeightsUnavailableError,
    check_transcoders_match,
    get_config,
    list_configs,
    load_transcoders,
)

_LAZY = ("supernodes", "toy", "viewer")

#: Module paths of earlier versions, now parts of subpackages, kept importable
#: (``from sae_circuits.intervene import compare_with_graph`` still works). They are aliases in
#: ``sys.modules`` rather than attributes, so that ``sc.intervene`` and ``sc.replacement`` stay
#: the functions.
OLD_MODULE_PATHS = {
    "sae_circuits.intervene": interventions,
    "sae_circuits.replacement": replacement_model,
    "sae_circuits.export": graph,
    "sae_circuits.pruning": graph,
    "sae_circuits.influence": graph,
    "sae_circuits.hooks": core,
}
for _path, _module in OLD_MODULE_PATHS.items():
    sys.modules.setdefault(_path, _module)


def __getattr__(name: str) -> Any:
    """``sc.supernodes``, ``sc.toy`` and ``sc.viewer``, imported on first use."""
    if name in _LAZY:
        return importlib.import_module(f"sae_circuits.{name}")
    raise AttributeError(f"module 'sae_circuits' has no attribute {name!r}")


__all__ = [
    "AttributionGraph",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "CrossLayerTranscoderSet",
    "GenerationResult",
    "GraphFileError",
    "GraphScores",
    "HookNotFoundError",
    "InterventionResult",
    "PerLayerTranscoderSet",
    "QKAttribution",
    "Target",
    "TopKTranscoder",
    "TopKTranscoderConfig",
    "TranscoderSet",
    "TranscoderSetConfig",
    "WeightsUnavailableError",
    "__version__",
    "attribute",
    "attribute_attention",
    "attribute_attention_for_edge",
    "attribute_attention_keys",
    "attribute_many",
    "check_transcoders_match",
    "compare_with_graph",
    "generate",
    "get_config",
    "head_loadings",
    "intervene",
    "list_configs",
    "load_model",
    "load_transcoders",
    "predict_changes",
    "replacement",
    "save_neuronpedia",
    "to_neuronpedia",
]
