"""The node layout of an attribution graph and its node ids: one owner.

**Node order** (rows and columns of ``graph.adjacency``, rows of ``graph.nodes``):

====================  ===========================================  =====================
block                 nodes                                        size
====================  ===========================================  =====================
features              the visited active features, (layer, position, feature) order   ``n_features``
errors                one per (layer, position), layer-major       ``n_layers * n_pos``
tokens                one per position                             ``n_pos``
targets               logits (kind ``logit``) and custom targets    ``n_targets``
                      (kind ``target``), in the order given
====================  ===========================================  =====================

While a graph is computed, a row's **source columns** are laid out the same way without the
target block and with *every* active feature (``n_active``) in the feature block;
:class:`NodeLayout` maps them to node indices once the visited features are known.

**Node ids** are Neuronpedia's: ``{layer}_{feature}_{position}`` for a feature,
``{layer}_-1_{position}`` for an error, ``E_{token_id}_{position}`` for a token and
``{n_layers + 1}_{token_id}_{position}`` for a logit (a custom target takes the reference's
*virtual* token id ``d_vocab + j``, ``j`` its rank among the targets); :func:`node_id` writes them and
:func:`parse_node_id` reads them back, with an error naming the bad part.

Example:
    >>> layout = NodeLayout(n_features=120, n_layers=4, n_pos=9, n_targets=3)
    >>> layout.error_node(2, 5), layout.token_node(0), layout.target_node(0)
    (143, 156, 165)
    >>> parse_node_id("3_1234_5", n_layers=4)
    NodeId(kind='feature', position=5, layer=3, feature=1234, token_id=None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "NODE_ID_FORMATS",
    "NODE_KINDS",
    "TARGET_KINDS",
    "NodeId",
    "NodeLayout",
    "js_node_id",
    "node_id",
    "parse_node_id",
]

Kind = Literal["feature", "error", "token", "logit", "target"]

#: Every node kind, in layout order (``logit`` and ``target`` share the last block).
NODE_KINDS: tuple[Kind, ...] = ("feature", "error", "token", "logit", "target")
#: The kinds of the target block: what influence and pruning start from.
TARGET_KINDS: tuple[Kind, ...] = ("logit", "target")


@dataclass(frozen=True)
class NodeLayout:
    """Offsets of the node blocks of one graph (see the module docstring).

    Attributes:
        n_features: Feature nodes (visited features).
        n_layers: Layers (error nodes per position).
        n_pos: Positions.
        n_targets: Target nodes (logits and custom targets).
        target_kinds: ``"logit"`` or ``"target"`` per target node (default: all logits).
    """

    n_features: int
    n_layers: int
    n_pos: int
    n_targets: int
    target_kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        kinds = self.target_kinds
        if kinds is not None and (
            len(kinds) != self.n_targets or not set(kinds) <= set(TARGET_KINDS)
        ):
            raise ValueError(
                f"target_kinds must give one of {TARGET_KINDS} per target node "
                f"({self.n_targets}), got {kinds!r:.80}"
            )

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def token_offset(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def target_offset(self) -> int:
        return self.token_offset + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.target_offset + self.n_targets

    def error_node(self, layer: int, position: int) -> int:
        return self.error_offset + layer * self.n_pos + position

    def token_node(self, position: int) -> int:
        return self.token_offset + position

    def target_node(self, j: int) -> int:
        return self.target_offset + j

    def kinds(self) -> np.ndarray:
        """``(n_nodes,)`` kind of every node, as strings."""
        out = np.repeat(
            np.array(["feature", "error", "token", "logit"], dtype=object),
            [self.n_features, self.n_layers * self.n_pos, self.n_pos, self.n_targets],
        )
        if self.target_kinds is not None:
            out[self.target_offset :] = self.target_kinds
        return out.astype(str)

    # -- source columns of rows computed before the visited features are known

    @staticmethod
    def n_sources(n_active: int, n_layers: int, n_pos: int) -> int:
        """Source columns of a row: every active feature, then errors, then tokens."""
        return n_active + (n_layers + 1) * n_pos

    def column_map(self, visited: np.ndarray, n_active: int) -> np.ndarray:
        """``(n_sources,)`` node index of every source column (``-1``: an unvisited feature)."""
        n_sources = self.n_sources(n_active, self.n_layers, self.n_pos)
        out = np.full(n_sources, -1, dtype=np.int64)
        out[visited] = np.arange(self.n_features)
        out[n_active:] = np.arange(self.error_offset, self.target_offset)
        return out

    def row_map(self, visited: np.ndarray, n_active: int) -> np.ndarray:
        """``(n_sources + n_targets,)`` node index of every row id: an active feature's index, or
        ``n_sources + j`` for target ``j`` (``-1``: never a row)."""
        n_sources = self.n_sources(n_active, self.n_layers, self.n_pos)
        out = np.full(n_sources + self.n_targets, -1, dtype=np.int64)
        out[visited] = np.arange(self.n_features)
        out[n_sources:] = np.arange(self.target_offset, self.n_nodes)
        return out


# ---------------------------------------------------------------------------------------------
# node ids


#: kind -> (``node_id`` template, ``jsNodeId`` template, fields the kind needs).
_ID_TEMPLATES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "feature": ("{layer}_{feature}_{position}", "{layer}_{feature}-0", ("layer", "feature")),
    "error": ("{layer}_-1_{position}", "{layer}_-1-{position}", ("layer",)),
    "token": ("E_{token_id}_{position}", "E_{token_id}-{position}", ("token_id",)),
    "logit": ("{logit_layer}_{token_id}_{position}", "L_{token_id}-{position}", ("token_id",)),
    # a custom target: the reference's virtual token id d_vocab + j in the logit's place
    "target": ("{logit_layer}_{token_id}_{position}", "L_{token_id}-{position}", ("token_id",)),
}


def node_id(
    kind: str,
    *,
    layer: int | None = None,
    position: int,
    feature: int | None = None,
    token_id: int | None = None,
    n_layers: int | None = None,
) -> str:
    """The Neuronpedia ``node_id`` of one node (a logit's or target's needs ``n_layers``; a
    target's ``token_id`` is its virtual id ``d_vocab + j``).

    Raises:
        ValueError: An unknown kind, or a field the kind needs is missing.
    """
    fields = _fields(kind, layer=layer, feature=feature, token_id=token_id)
    if kind in TARGET_KINDS:
        fields["logit_layer"] = _need(n_layers, "n_layers", kind) + 1
    return _ID_TEMPLATES[kind][0].format(position=position, **fields)


def js_node_id(
    kind: str,
    *,
    layer: int | None = None,
    position: int,
    feature: int | None = None,
    token_id: int | None = None,
) -> str:
    """Neuronpedia's ``jsNodeId`` of one node (features share one per (layer, feature))."""
    fields = _fields(kind, layer=layer, feature=feature, token_id=token_id)
    return _ID_TEMPLATES[kind][1].format(position=position, **fields)


def _fields(kind: str, **given: int | None) -> dict[str, int]:
    if kind not in _ID_TEMPLATES:
        raise ValueError(f"unknown node kind {kind!r}; valid kinds: {', '.join(NODE_KINDS)}")
    return {name: _need(given[name], name, kind) for name in _ID_TEMPLATES[kind][2]}


def _need(value: Any, name: str, kind: str) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise ValueError(f"a {kind} node id needs its {name}")
    return int(value)


#: The node-id formats, for error messages.
NODE_ID_FORMATS = (
    "{layer}_{feature}_{position} (feature), E_{token_id}_{position} (token), "
    "{layer}_-1_{position} (error) or {n_layers + 1}_{token_id}_{position} (logit)"
)
_WHOLE = re.compile(r"[0-9]+")  # ASCII digits only (int() also reads other scripts' digits)
_MAX_DIGITS = 18  # every index fits an int64


@dataclass(frozen=True)
class NodeId:
    """A parsed Neuronpedia node id (see :func:`parse_node_id`).

    Attributes:
        kind: ``"feature"``, ``"error"``, ``"token"`` or ``"logit"``.
        position: Token position.
        layer: Layer of features and error nodes (``None`` for tokens and logits).
        feature: Feature index of feature nodes.
        token_id: Token id of token and logit nodes.
    """

    kind: str
    position: int
    layer: int | None = None
    feature: int | None = None
    token_id: int | None = None


def parse_node_id(
    node_id: Any,
    *,
    n_layers: int | None = None,
    n_positions: int | None = None,
    where: str = "",
) -> NodeId:
    """Parse a Neuronpedia node id, the inverse of :func:`node_ids`.

    Features are ``{layer}_{feature}_{position}``, error nodes ``{layer}_-1_{position}``, tokens
    ``E_{token_id}_{position}`` and logits ``{n_layers + 1}_{token_id}_{position}``; every number
    is a non-negative whole number in ASCII digits, without leading zeros (surrounding white
    space is ignored).

    Args:
        node_id: The id.
        n_layers: The model's number of layers, if known: tells logits from features and
            refuses layers the model lacks. Without it every ``a_b_c`` id is a feature.
        n_positions: The prompt's number of tokens, if known: refuses positions beyond it.
        where: Where the id comes from, put in front of error messages (e.g. ``"pinnedIds"``).

    Returns:
        A :class:`NodeId`.

    Raises:
        ValueError: ``node_id`` is not a string, or is malformed or out of range; the message
            names the id, the bad part and the valid formats.
    """
    pre = f"{where}: " if where else ""
    if not isinstance(node_id, str):
        raise ValueError(
            f"{pre}node ids must be strings like '3_1234_5', got {type(node_id).__name__} "
            f"{node_id!r:.60}"
        )
    for name, limit in (("n_layers", n_layers), ("n_positions", n_positions)):
        ok = isinstance(limit, (int, np.integer)) and not isinstance(limit, bool) and limit >= 1
        if limit is not None and not ok:
            raise ValueError(f"{name} must be a whole number >= 1, got {limit!r}")

    def bad(problem: str) -> ValueError:
        return ValueError(
            f"{pre}malformed node id {node_id!r:.80}; expected {NODE_ID_FORMATS}, but {problem}"
        )

    text = node_id.strip()
    if not text:
        raise bad("it is empty")
    parts = text.split("_")
    if len(parts) != 3:
        raise bad(f"it has {len(parts)} part(s) separated by '_', not 3")
    first, middle, last = parts
    position = _id_number(last, "position", bad)
    if first == "E":
        node = NodeId("token", position, token_id=_id_number(middle, "token id", bad))
    else:
        if first[:1].isalpha():
            raise bad(f"its first part {first!r:.40} is neither a layer nor 'E' (token nodes)")
        layer = _id_number(first, "layer", bad)
        if middle == "-1":
            node = NodeId("error", position, layer=layer)
        elif n_layers is not None and layer == n_layers + 1:
            node = NodeId("logit", position, token_id=_id_number(middle, "token id", bad))
        else:
            node = NodeId(
                "feature", position, layer=layer, feature=_id_number(middle, "feature", bad)
            )
    if n_layers is not None and node.layer is not None and node.layer >= n_layers:
        raise ValueError(
            f"{pre}node id {node_id!r:.80} has layer {node.layer}, but the model has {n_layers} "
            f"layers (features 0..{n_layers - 1}, logits {n_layers + 1})"
        )
    if n_positions is not None and position >= n_positions:
        raise ValueError(
            f"{pre}node id {node_id!r:.80} has position {position}, but the prompt has "
            f"{n_positions} tokens (positions 0..{n_positions - 1})"
        )
    return node


def _id_number(text: str, what: str, bad: Any) -> int:
    if not text:
        raise bad(f"its {what} is empty")
    if text.startswith("-") and _WHOLE.fullmatch(text[1:]):
        extra = " (only error nodes have -1, in the feature place)" if what == "feature" else ""
        raise bad(f"its {what} {text!r} is negative{extra}")
    if not _WHOLE.fullmatch(text):
        raise bad(f"its {what} {text[:40]!r} is not a whole number")
    if len(text) > 1 and text[0] == "0":
        raise bad(f"its {what} {text!r} has a leading zero")
    if len(text) > _MAX_DIGITS:
        raise bad(f"its {what} {text[:40]!r} is too large")
    return int(text)
