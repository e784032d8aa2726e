"""The node layout of an attribution graph and its node ids: one owner.

**Node order** (rows and columns of ``graph.adjacency``, rows of ``graph.nodes``):

====================  ===========================================  =====================
block                 nodes                                        size
====================  ===========================================  =====================
features              the visited active features, (layer, position, feature) order   ``n_features``
errors                one per (layer, position), layer-major       ``n_layers * n_pos``
tokens                one per position                             ``n_pos``
logits (targets)      the salient logits at the last position      ``n_logits``
====================  ===========================================  =====================

While a graph is computed, a row's **source columns** are laid out the same way without the
target block and with *every* active feature (``n_active``) in the feature block;
:class:`NodeLayout` maps them to node indices once the visited features are known.

**Node ids** are Neuronpedia's: ``{layer}_{feature}_{position}`` for a feature,
``{layer}_-1_{position}`` for an error, ``E_{token_id}_{position}`` for a token and
``{n_layers + 1}_{token_id}_{position}`` for a logit; :func:`node_id` writes them and
:func:`parse_node_id` reads them back, with an error naming the bad part.

Example:
    >>> layout = NodeLayout(n_features=120, n_layers=4, n_pos=9, n_logits=3)
    >>> layout.error_node(2, 5), layout.token_node(0), layout.logit_node(0)
    (143, 156, 165)
    >>> parse_node_id("3_1234_5", n_layers=4)
    ParsedNodeId(kind='feature', layer=3, position=5, feature=1234, token_id=None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "NODE_ID_FORMATS",
    "NodeLayout",
    "ParsedNodeId",
    "js_node_id",
    "node_id",
    "parse_node_id",
]

Kind = Literal["feature", "error", "token", "logit"]

#: What :func:`parse_node_id` accepts, for messages.
NODE_ID_FORMATS = (
    "'{layer}_{feature}_{position}' (feature), '{layer}_-1_{position}' (error), "
    "'E_{token_id}_{position}' (token), '{n_layers + 1}_{token_id}_{position}' (logit)"
)
_INT = re.compile(r"^(0|[1-9][0-9]{0,17})$")  # ASCII digits, no leading zero, fits an int64


@dataclass(frozen=True)
class NodeLayout:
    """Offsets of the node blocks of one graph (see the module docstring).

    Attributes:
        n_features: Feature nodes (visited features).
        n_layers: Layers (error nodes per position).
        n_pos: Positions.
        n_logits: Logit (target) nodes.
    """

    n_features: int
    n_layers: int
    n_pos: int
    n_logits: int

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def token_offset(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_offset(self) -> int:
        return self.token_offset + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_offset + self.n_logits

    def error_node(self, layer: int, position: int) -> int:
        return self.error_offset + layer * self.n_pos + position

    def token_node(self, position: int) -> int:
        return self.token_offset + position

    def logit_node(self, j: int) -> int:
        return self.logit_offset + j

    def kinds(self) -> np.ndarray:
        """``(n_nodes,)`` kind of every node, as strings."""
        return np.repeat(
            np.array(["feature", "error", "token", "logit"]),
            [self.n_features, self.n_layers * self.n_pos, self.n_pos, self.n_logits],
        )

    # -- source columns of rows computed before the visited features are known

    @staticmethod
    def n_sources(n_active: int, n_layers: int, n_pos: int) -> int:
        """Source columns of a row: every active feature, then errors, then tokens."""
        return n_active + (n_layers + 1) * n_pos

    @classmethod
    def for_visited(
        cls, visited: np.ndarray, *, n_layers: int, n_pos: int, n_logits: int
    ) -> NodeLayout:
        """The layout of a graph whose feature nodes are ``visited`` (indices of active features)."""
        return cls(len(visited), n_layers, n_pos, n_logits)

    def column_map(self, visited: np.ndarray, n_active: int) -> np.ndarray:
        """``(n_sources,)`` node index of every source column (``-1``: an unvisited feature)."""
        n_sources = self.n_sources(n_active, self.n_layers, self.n_pos)
        out = np.full(n_sources, -1, dtype=np.int64)
        out[visited] = np.arange(self.n_features)
        out[n_active:] = np.arange(self.error_offset, self.logit_offset)
        return out

    def row_map(self, visited: np.ndarray, n_active: int) -> np.ndarray:
        """``(n_sources + n_logits,)`` node index of every row id: an active feature's index, or
        ``n_sources + j`` for logit ``j`` (``-1``: never a row)."""
        n_sources = self.n_sources(n_active, self.n_layers, self.n_pos)
        out = np.full(n_sources + self.n_logits, -1, dtype=np.int64)
        out[visited] = np.arange(self.n_features)
        out[n_sources:] = np.arange(self.logit_offset, self.n_nodes)
        return out


# ---------------------------------------------------------------------------------------------
# node ids


def node_id(
    kind: str,
    *,
    layer: int | None = None,
    position: int,
    feature: int | None = None,
    token_id: int | None = None,
    n_layers: int | None = None,
) -> str:
    """The Neuronpedia ``node_id`` of one node.

    Raises:
        ValueError: An unknown kind, or a field the kind needs is missing.
    """
    if kind == "feature":
        return f"{_need(layer, 'layer', kind)}_{_need(feature, 'feature', kind)}_{position}"
    if kind == "error":
        return f"{_need(layer, 'layer', kind)}_-1_{position}"
    if kind == "token":
        return f"E_{_need(token_id, 'token_id', kind)}_{position}"
    if kind == "logit":
        return f"{_need(n_layers, 'n_layers', kind) + 1}_{_need(token_id, 'token_id', kind)}_{position}"
    raise ValueError(f"unknown node kind {kind!r}; valid kinds: feature, error, token, logit")


def js_node_id(
    kind: str,
    *,
    layer: int | None = None,
    position: int,
    feature: int | None = None,
    token_id: int | None = None,
) -> str:
    """Neuronpedia's ``jsNodeId`` of one node (features share one per (layer, feature))."""
    if kind == "feature":
        return f"{_need(layer, 'layer', kind)}_{_need(feature, 'feature', kind)}-0"
    if kind == "error":
        return f"{_need(layer, 'layer', kind)}_-1-{position}"
    if kind == "token":
        return f"E_{_need(token_id, 'token_id', kind)}-{position}"
    if kind == "logit":
        return f"L_{_need(token_id, 'token_id', kind)}-{position}"
    raise ValueError(f"unknown node kind {kind!r}; valid kinds: feature, error, token, logit")


def _need(value: Any, name: str, kind: str) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise ValueError(f"a {kind} node id needs its {name}")
    return int(value)


@dataclass(frozen=True)
class ParsedNodeId:
    """A node id read back: its kind and the fields the id holds (``None`` where it holds none)."""

    kind: Kind
    layer: int | None
    position: int
    feature: int | None
    token_id: int | None


def parse_node_id(
    text: Any,
    *,
    n_layers: int | None = None,
    n_pos: int | None = None,
    where: str = "node id",
) -> ParsedNodeId:
    """Read a Neuronpedia node id (:data:`NODE_ID_FORMATS`).

    Args:
        text: The id.
        n_layers: The model's number of layers, when known: tells a logit id
            (``{n_layers + 1}_...``) from a feature id and rejects layers the model lacks. Without
            it every ``a_b_c`` id with ``b >= 0`` is a feature.
        n_pos: The prompt's length, when known: rejects positions outside it.
        where: What the id is, for messages.

    Raises:
        ValueError: The id is not a string, has the wrong number of parts, a part that is not a
            non-negative integer (``-1`` only as an error's feature), or a layer or position out
            of range; the message names the part and the valid formats.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"{where}: node ids are strings like '3_1234_5', got {type(text).__name__} {text!r}"
        )
    s = text.strip()
    parts = s.split("_")
    if len(parts) != 3 or not s:
        raise ValueError(
            f"{where}: {text!r} has {len(parts) if s else 0} part(s) separated by '_', expected 3: "
            f"{NODE_ID_FORMATS}"
        )
    first, middle, last = parts
    position = _part(last, "position", text, where)
    if n_pos is not None and position >= n_pos:
        raise ValueError(
            f"{where}: {text!r} has position {position}, but the prompt has {n_pos} positions "
            f"(0..{n_pos - 1})"
        )
    if first == "E":
        return ParsedNodeId("token", None, position, None, _part(middle, "token id", text, where))
    layer = _part(first, "layer", text, where)
    if middle == "-1":
        _check_layer(layer, n_layers, text, where, logit_ok=False)
        return ParsedNodeId("error", layer, position, None, None)
    value = _part(middle, "feature", text, where)
    if n_layers is not None and layer == n_layers + 1:
        return ParsedNodeId("logit", None, position, None, value)
    _check_layer(layer, n_layers, text, where, logit_ok=True)
    return ParsedNodeId("feature", layer, position, value, None)


def _part(value: str, name: str, text: str, where: str) -> int:
    if not _INT.fullmatch(value):
        why = "is not a non-negative integer"
        if value.startswith("-"):
            why = "is negative" + (
                " (only an error node has -1, as its feature)" if name == "feature" else ""
            )
        elif len(value) > 18:
            why = "has more than 18 digits"
        elif len(value) > 1 and value[0] == "0":
            why = "has a leading zero"
        raise ValueError(
            f"{where}: {text!r:.80}: the {name} {value[:40]!r} {why}; expected {NODE_ID_FORMATS}"
        )
    return int(value)


def _check_layer(
    layer: int, n_layers: int | None, text: str, where: str, *, logit_ok: bool
) -> None:
    if n_layers is not None and layer >= n_layers:
        logit = f", logits {n_layers + 1}" if logit_ok else ""
        raise ValueError(
            f"{where}: {text!r} has layer {layer}, but the model has {n_layers} layers "
            f"(features and errors 0..{n_layers - 1}{logit})"
        )
