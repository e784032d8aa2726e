"""Attribution graphs as data: the graph object, its node layout, pruning, files and exports.

Floor 1 (needs only :mod:`sae_circuits.core`; no model, no transcoders): an
:class:`AttributionGraph` is a ``scipy.sparse`` adjacency plus ``pandas`` tables. Its node
layout and node ids (:mod:`._layout`) have one owner here; pruning and scores
(:mod:`._pruning`, on the influence series of :mod:`._influence`), the graph file format
(:mod:`._io`) and the Neuronpedia / networkx exports (:mod:`._export`) work on it.

Example:
    >>> graph = AttributionGraph.load("dallas.zip")
    >>> pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    >>> to_neuronpedia(pruned, slug="dallas")["nodes"][0]["node_id"]
"""

from sae_circuits.graph._export import node_ids, save_neuronpedia, to_networkx, to_neuronpedia
from sae_circuits.graph._graph import NODE_COLUMNS, AttributionGraph, NodeKind
from sae_circuits.graph._influence import propagate, propagate_chunks, row_normalize
from sae_circuits.graph._io import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GraphFileError,
    load_graph,
    save_graph,
)
from sae_circuits.graph._layout import (
    NODE_ID_FORMATS,
    NODE_KINDS,
    TARGET_KINDS,
    NodeId,
    NodeLayout,
    js_node_id,
    node_id,
    parse_node_id,
)
from sae_circuits.graph._pruning import (
    GraphPruner,
    GraphScores,
    PruneResult,
    check_threshold,
    cumulative_influence,
    find_threshold,
    graph_scores,
    node_influence,
    prune_graph,
    prune_masks,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "NODE_COLUMNS",
    "NODE_ID_FORMATS",
    "NODE_KINDS",
    "TARGET_KINDS",
    "AttributionGraph",
    "GraphFileError",
    "GraphPruner",
    "GraphScores",
    "NodeId",
    "NodeKind",
    "NodeLayout",
    "PruneResult",
    "check_threshold",
    "cumulative_influence",
    "find_threshold",
    "graph_scores",
    "js_node_id",
    "load_graph",
    "node_id",
    "node_ids",
    "node_influence",
    "parse_node_id",
    "propagate",
    "propagate_chunks",
    "prune_graph",
    "prune_masks",
    "row_normalize",
    "save_graph",
    "save_neuronpedia",
    "to_networkx",
    "to_neuronpedia",
]
