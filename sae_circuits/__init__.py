"""sae_circuits: exact attribution graphs with SAELens transcoders on TransformerLens models.

Example:
    >>> import sae_circuits as sc
    >>> transcoders = sc.load_transcoders("path/to/folder")
    >>> graph = sc.attribute(model, "The capital of the state containing Dallas is", transcoders)
    >>> graph.adjacency, graph.nodes, graph.edges(), graph.logits
"""

from sae_circuits import supernodes, toy  # noqa: F401  (sc.supernodes, sc.toy)
from sae_circuits._graph_io import GraphFileError
from sae_circuits._version import __version__
from sae_circuits.attribution import attribute
from sae_circuits.export import save_neuronpedia, to_neuronpedia
from sae_circuits.graph import AttributionGraph
from sae_circuits.hooks import HookNotFoundError
from sae_circuits.intervene import (
    GenerationResult,
    InterventionResult,
    compare_with_graph,
    generate,
    intervene,
    predict_changes,
)
from sae_circuits.models import check_transcoders_match, load_model
from sae_circuits.pruning import GraphScores
from sae_circuits.replacement import replacement
from sae_circuits.transcoders import (
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    CrossLayerTranscoderSet,
    PerLayerTranscoderSet,
    TranscoderSet,
    TranscoderSetConfig,
    WeightsUnavailableError,
    get_config,
    list_configs,
    load_transcoders,
)

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
    "TranscoderSet",
    "TranscoderSetConfig",
    "WeightsUnavailableError",
    "__version__",
    "attribute",
    "check_transcoders_match",
    "compare_with_graph",
    "generate",
    "get_config",
    "intervene",
    "list_configs",
    "load_model",
    "load_transcoders",
    "predict_changes",
    "replacement",
    "save_neuronpedia",
    "to_neuronpedia",
]
