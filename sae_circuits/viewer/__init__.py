"""A local, interactive attribution-graph viewer: a small HTTP server and a static page.

``sae-circuits attribute ... -o OUT`` writes a graph folder; ``sae-circuits serve OUT`` serves
it at ``http://127.0.0.1:8765/``. The page (plain JavaScript and SVG, no network) draws the
pruned graph by layer and token position, shows a node's details on click, pins nodes into a
subgraph, groups them into supernodes, edits labels and re-prunes at other thresholds; labels,
supernodes and pins are saved to ``OUT/annotations.json``. ``serve OUT --model M --transcoders
T`` also lets the page steer features (:mod:`~sae_circuits.viewer.steering`), and ``serve A B``
shows the difference of two graphs (:mod:`~sae_circuits.viewer.compare`). See ``docs/viewer.md``.

Modules: :mod:`~sae_circuits.viewer.document` (the folder and the JSON the page draws),
:mod:`~sae_circuits.viewer.annotations` (validated, merged, atomic annotation saves),
:mod:`~sae_circuits.viewer.security` (bind, Host and path rules),
:mod:`~sae_circuits.viewer.server` (the HTTP server),
:mod:`~sae_circuits.viewer.steering` (checked steering requests, one at a time, time-limited),
:mod:`~sae_circuits.viewer.compare` (the difference document of two graphs).

Example:
    >>> from sae_circuits.viewer import make_server, write_graph_folder
    >>> write_graph_folder("out", graph, graph.prune(), slug="dallas")
    >>> server = make_server("out", port=8765)
    >>> server.serve_forever()
"""

from sae_circuits.viewer.annotations import AnnotationError, AnnotationStore
from sae_circuits.viewer.compare import compare_documents
from sae_circuits.viewer.document import (
    GraphFolderError,
    GraphFolderFiles,
    GraphSource,
    build_document,
    default_slug,
    write_graph_folder,
)
from sae_circuits.viewer.security import RemoteBindError, check_bind_host
from sae_circuits.viewer.server import ViewerServer, make_server
from sae_circuits.viewer.steering import Steerer, SteeringError, SteeringLimits

__all__ = [
    "AnnotationError",
    "AnnotationStore",
    "GraphFolderError",
    "GraphFolderFiles",
    "GraphSource",
    "RemoteBindError",
    "Steerer",
    "SteeringError",
    "SteeringLimits",
    "ViewerServer",
    "build_document",
    "check_bind_host",
    "compare_documents",
    "default_slug",
    "make_server",
    "write_graph_folder",
]
