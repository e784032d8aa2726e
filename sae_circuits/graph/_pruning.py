"""Pruning an attribution graph, and its replacement / completeness scores.

The rules are those of circuit-tracer 0.5.0 (``prune_graph`` and ``compute_graph_scores``), which
follow Ameisen et al. (2025), "Circuit Tracing", section "Pruning". With ``A`` the adjacency
(rows = targets, columns = sources), ``Â = |A|`` normalised so that each row sums to one, and
``w`` the logit probabilities on the logit nodes:

1. **Node influence** ``w Â + w Â² + ...``: the fraction of the logits' (absolute) input that flows
   through each node over paths of any length. Nodes are sorted by it, and the fewest that hold
   ``node_threshold`` of the total are kept: the score at index ``searchsorted(cumsum / sum,
   node_threshold)`` of the sorted scores is the cut-off and every node scoring at least that is
   kept. Token and logit nodes are always kept.
2. **Edge influence**: on the adjacency restricted to the kept nodes, re-normalised (``Â'``), an
   edge ``(t, s)`` scores ``Â'[t, s] * (influence'[t] + w[t])``, its share of the output flowing
   through it. The same cut-off rule with ``edge_threshold`` picks the kept edges.
3. **Clean-up**, repeated until nothing changes: feature and error nodes without a kept outgoing
   edge, and feature nodes without a kept incoming edge, are dropped with their edges. It runs
   only when step 2 cut an edge of non-zero score, so ``prune(1.0, 1.0)`` keeps every node and
   edge of non-zero influence, on every machine.

The **replacement score** is the share of the tokens' influence on the logits that does not go
through error nodes: ``sum(influence[tokens]) / (sum(influence[tokens]) + sum(influence[errors]))``.
The **completeness score** is the average, weighted by ``influence + w``, over all nodes of the
fraction of a node's normalised input that comes from non-error nodes (nodes with no input count
as complete).

Everything is computed on ``scipy.sparse`` arrays in memory proportional to the stored edges: no
dense ``n x n`` matrix is formed and only the positive stored edge scores are sorted (zeros,
stored or implicit, never change the cut-off, see :func:`find_threshold`).

Example:
    >>> pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    >>> pruned.nodes.nlargest(10, "influence")[["kind", "layer", "position", "feature"]]
    >>> graph.scores().replacement, pruned.scores()["completeness"]
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sae_circuits.graph._influence import propagate, row_normalize
from sae_circuits.graph._layout import TARGET_KINDS

if TYPE_CHECKING:
    from sae_circuits.graph._graph import AttributionGraph

__all__ = [
    "GraphPruner",
    "GraphScores",
    "PruneResult",
    "check_threshold",
    "cumulative_influence",
    "find_threshold",
    "graph_scores",
    "node_influence",
    "prune_graph",
    "prune_masks",
]

logger = logging.getLogger(__name__)

_EPS = 1e-10  # floor of the row sums, as in the reference's normalize_matrix


@dataclass(frozen=True)
class GraphScores(Mapping):
    """How much of the graph's computation goes through features rather than error nodes.

    A frozen dataclass that is also a read-only mapping: ``scores.replacement`` and
    ``scores["replacement"]`` are the same number, and ``dict(scores)`` gives both.

    Attributes:
        replacement: Fraction of the tokens' influence on the logits that avoids error nodes
            (``nan`` when neither tokens nor errors reach the logits).
        completeness: Influence-weighted average fraction of the nodes' inputs that come from
            feature or token nodes rather than error nodes.
    """

    replacement: float
    completeness: float

    def __getitem__(self, key: str) -> float:
        if key in ("replacement", "completeness"):
            return getattr(self, key)
        raise KeyError(f"{key!r}; GraphScores keys are 'replacement' and 'completeness'")

    def __iter__(self) -> Iterator[str]:
        return iter(("replacement", "completeness"))

    def __len__(self) -> int:
        return 2


@dataclass(frozen=True)
class PruneResult:
    """Which nodes and edges survive pruning (see :func:`prune_masks`).

    Attributes:
        node_mask: ``(n_nodes,)`` bool, nodes kept.
        edge_mask: ``(nnz,)`` bool over the stored entries of the adjacency in canonical CSR
            order (``adjacency.data``), edges kept; a kept edge joins two kept nodes.
        influence: ``(n_nodes,)`` float64 influence of each node on the logits.
        cumulative_influence: ``(n_nodes,)`` float64, the share of the total influence held by the
            nodes at least as influential as this one (the reference's ``cumulative_scores``).
    """

    node_mask: np.ndarray
    edge_mask: np.ndarray
    influence: np.ndarray
    cumulative_influence: np.ndarray


def check_threshold(name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1]``, or a ``ValueError`` naming ``name`` and the valid range.

    Raises:
        TypeError: ``value`` is not a real number (e.g. a string, ``None`` or a bool).
        ValueError: ``value`` is not finite or lies outside ``[0, 1]``.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{name} must be a number in [0, 1] (the fraction of influence to keep), "
            f"got {type(value).__name__} {value!r}"
        )
    v = float(value)
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(
            f"{name} must be in [0, 1] (the fraction of influence to keep; e.g. 0.8 for nodes, "
            f"0.98 for edges), got {value!r}"
        )
    return v


def find_threshold(scores: np.ndarray, threshold: float) -> float:
    """The smallest score kept when keeping the fewest top scores that hold ``threshold`` of the sum.

    The reference's rule, made independent of summation order at the ends of its range and at
    ties. Scores are sorted in descending order and their cumulative share is taken against the
    cumulative sum's own last value (so the share rises monotonically to exactly 1.0, whatever
    the order of summation of the total would give); the cut-off is the score at the first index
    whose share reaches ``threshold``, and every score ``>=`` the cut-off is kept:

    * **ties**: scores equal to the cut-off are all kept, so which of several equal scores comes
      first never matters (the sorted sequence, and so the shares, are the same for any order);
    * ``threshold >= 1``: the cut-off is the smallest *positive* score, so every score with
      non-zero influence is kept and zeros are dropped (the reference keeps or drops its
      smallest scores there depending on the last bits of a float sum);
    * ``threshold <= 0``: only the largest score (and its ties) is kept;
    * all scores zero (or none): ``0.0``, everything is kept.

    Args:
        scores: ``(k,)`` non-negative scores.
        threshold: Fraction in ``[0, 1]``.

    Returns:
        The cut-off score.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = scores[scores > 0]
    if positive.size == 0:  # all zero: the reference's 0/0 cumulative share keeps everything
        return 0.0
    if threshold >= 1.0:
        return float(positive.min())
    ordered = -np.sort(-positive)
    cumulative = np.cumsum(ordered)
    share = cumulative / cumulative[-1]
    index = min(int(np.searchsorted(share, threshold, side="left")), ordered.size - 1)
    return float(ordered[index])


def node_influence(adjacency: sp.sparray | sp.spmatrix, logit_weights: np.ndarray) -> np.ndarray:
    """``(n_nodes,)`` influence of every node on the logits: ``w Â + w Â² + ...``.

    Args:
        adjacency: ``(n, n)`` sparse adjacency, ``[target, source]``.
        logit_weights: ``(n,)`` logit probabilities on the logit nodes, zero elsewhere.
    """
    return propagate(row_normalize(adjacency, eps=_EPS), np.asarray(logit_weights, np.float64))


def cumulative_influence(influence: np.ndarray) -> np.ndarray:
    """``(n,)`` share of the total influence held by the nodes ranked at or above each node.

    Ties are ranked in node order. All ``nan`` when the total influence is zero.
    """
    influence = np.asarray(influence, dtype=np.float64)
    order = np.argsort(-influence, kind="stable")
    total = influence.sum()
    out = np.full(influence.shape, np.nan)
    if total > 0:
        out[order] = np.cumsum(influence[order]) / total
    return out


def _canonical(adjacency: sp.sparray | sp.spmatrix) -> sp.csr_array:
    a = sp.csr_array(adjacency)
    if not a.has_canonical_format:
        a = a.copy()
        a.sum_duplicates()
    return a


def prune_masks(
    adjacency: sp.sparray | sp.spmatrix,
    logit_weights: np.ndarray,
    *,
    is_feature: np.ndarray,
    is_error: np.ndarray,
    is_token: np.ndarray,
    is_logit: np.ndarray,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    influence: np.ndarray | None = None,
) -> PruneResult:
    """The nodes and edges that the reference's ``prune_graph`` keeps.

    Args:
        adjacency: ``(n, n)`` sparse adjacency, ``[target, source]``; should be in canonical
            format (sorted indices, no duplicates) for ``edge_mask`` to line up with its ``data``.
        logit_weights: ``(n,)`` logit probabilities on the logit nodes, zero elsewhere.
        is_feature: ``(n,)`` bool, feature nodes.
        is_error: ``(n,)`` bool, error nodes.
        is_token: ``(n,)`` bool, token nodes (always kept).
        is_logit: ``(n,)`` bool, logit nodes (always kept).
        node_threshold: Fraction of node influence to keep, in ``[0, 1]``.
        edge_threshold: Fraction of edge influence to keep, in ``[0, 1]``.
        influence: ``node_influence(adjacency, logit_weights)`` when already computed (it does
            not depend on the thresholds: :class:`GraphPruner` keeps it).

    Returns:
        A :class:`PruneResult`.
    """
    node_threshold = check_threshold("node_threshold", node_threshold)
    edge_threshold = check_threshold("edge_threshold", edge_threshold)
    a = _canonical(adjacency)
    n = len(a.indptr) - 1
    w = np.asarray(logit_weights, dtype=np.float64)
    rows = np.repeat(np.arange(n), np.diff(a.indptr))
    cols = a.indices

    if influence is None:
        influence = node_influence(a, w)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask |= is_token | is_logit

    # the adjacency restricted to the kept nodes, normalised again (same sparsity structure)
    inside = node_mask[rows] & node_mask[cols] & (a.data != 0)
    data = np.where(inside, np.abs(a.data.astype(np.float64)), 0.0)
    row_sum = np.bincount(rows, weights=data, minlength=n)
    data /= np.maximum(row_sum, _EPS)[rows]
    normalized = sp.csr_array((data, a.indices, a.indptr), shape=a.shape)
    flow = propagate(normalized, w) + w
    edge_scores = data * flow[rows]

    cutoff = find_threshold(edge_scores[inside], edge_threshold)
    edge_mask = inside & (edge_scores >= cutoff)
    if (inside & (edge_scores > 0) & ~edge_mask).any():
        # clean-up only when the threshold cut an edge that carries influence: with none cut
        # (threshold 1.0, or ties at the cut-off) no node lost an edge to pruning
        needs_out = is_feature | is_error
        while True:
            has_out = np.bincount(cols[edge_mask], minlength=n) > 0
            has_in = np.bincount(rows[edge_mask], minlength=n) > 0
            new_mask = node_mask & ~(needs_out & ~has_out) & ~(is_feature & ~has_in)
            if np.array_equal(new_mask, node_mask):
                break
            node_mask = new_mask
            edge_mask &= node_mask[rows] & node_mask[cols]
    return PruneResult(
        node_mask=node_mask,
        edge_mask=edge_mask,
        influence=influence,
        cumulative_influence=cumulative_influence(influence),
    )


def _kind_masks(graph: AttributionGraph) -> dict[str, np.ndarray]:
    """Node-kind masks as :func:`prune_masks` takes them (``is_logit``: every target node)."""
    kind = graph.nodes["kind"].astype(str).to_numpy()
    masks = {f"is_{k}": kind == k for k in ("feature", "error", "token")}
    masks["is_logit"] = np.isin(kind, TARGET_KINDS)
    return masks


def _checked_inputs(graph: AttributionGraph, what: str) -> tuple[sp.csr_array, np.ndarray]:
    """Canonical adjacency and target weights, or a clear error about why ``what`` cannot run."""
    n_targets = len(graph.target_indices)
    has_weights = "target_weight" in graph.nodes.columns or "probability" in graph.nodes.columns
    if n_targets == 0 or not has_weights:
        raise ValueError(
            f"{what} needs target nodes (logits or custom targets) with weights: influence is "
            "measured on the targets, and this graph has none, or neither a "
            "nodes['target_weight'] nor a nodes['probability'] column (sae_circuits.attribute "
            "adds them)"
        )
    w = graph.target_weights
    if not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError(
            f"{what} needs the target nodes' weights (nodes['target_weight'], or the logits' "
            "probabilities): they must be finite, non-negative and not all zero or missing; "
            "set them with graph.with_target_weights(...)"
        )
    a = _canonical(graph.adjacency)
    if not np.isfinite(a.data).all():
        raise ValueError(f"{what}: the adjacency holds non-finite edge weights (nan or inf)")
    return a, w


def graph_scores(graph: AttributionGraph) -> GraphScores:
    """Replacement and completeness scores of a graph (pruned or not), on its own adjacency.

    Args:
        graph: The graph; its ``nodes["kind"]`` tells errors and tokens apart.

    Returns:
        :class:`GraphScores`.

    Raises:
        ValueError: The graph has no logit nodes, or their probabilities are unusable.
    """
    a, w = _checked_inputs(graph, "scores()")
    kinds = _kind_masks(graph)
    normalized = row_normalize(a, eps=_EPS)
    influence = propagate(normalized, w)
    token_influence = float(influence[kinds["is_token"]].sum())
    error_influence = float(influence[kinds["is_error"]].sum())
    denominator = token_influence + error_influence
    if denominator > 0:
        replacement = token_influence / denominator
    else:
        logger.warning("no token or error node reaches the logits: the replacement score is nan")
        replacement = math.nan
    error_share = normalized @ kinds["is_error"].astype(np.float64)
    output = influence + w
    completeness = float(((1.0 - error_share) * output).sum() / output.sum())
    return GraphScores(replacement=float(replacement), completeness=completeness)


def prune_graph(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> AttributionGraph:
    """The graph restricted to the nodes and edges that carry most influence on the logits.

    Args:
        graph: The graph to prune (itself left unchanged).
        node_threshold: Fraction of the total node influence to keep, in ``[0, 1]``.
        edge_threshold: Fraction of the total edge influence to keep, in ``[0, 1]``.

    Returns:
        A new graph of the same class holding only the kept nodes (in their original order) and
        kept edges (original weights). Its ``nodes`` gain ``node_index`` (the node's row in the
        unpruned graph, carried through repeated pruning), ``influence`` (on the logits, in the
        unpruned graph) and ``cumulative_influence`` (share of the total influence held by the
        nodes ranked at or above it; what Neuronpedia calls ``influence``). ``metadata["pruning"]``
        records the thresholds and the sizes before pruning.

    Raises:
        TypeError: A threshold is not a number.
        ValueError: A threshold is outside ``[0, 1]``, or the graph has no usable logit nodes.
    """
    node_threshold = check_threshold("node_threshold", node_threshold)
    edge_threshold = check_threshold("edge_threshold", edge_threshold)
    return GraphPruner(graph).prune(node_threshold, edge_threshold)


class GraphPruner:
    """One graph, pruned at many thresholds: what does not depend on them is computed once.

    The checks of the graph, its canonical adjacency, the node-kind masks and the node
    influence (one propagation over the whole graph, a third of a prune's time on a large
    graph) are kept; each :meth:`prune` then runs only the edge propagation and the cut. The
    viewer's server keeps one per full graph, so that re-pruning at new thresholds is quick.

    Args:
        graph: The graph (not copied: leave it unchanged while the pruner is used).

    Raises:
        ValueError: The graph has no usable target nodes or holds non-finite weights.

    Example:
        >>> pruner = GraphPruner(graph)
        >>> small, large = pruner.prune(0.6, 0.9), pruner.prune(0.9, 0.99)
    """

    def __init__(self, graph: AttributionGraph) -> None:
        self.graph = graph
        self._a, self._w = _checked_inputs(graph, "prune()")
        self._kinds = _kind_masks(graph)
        self._rows = np.repeat(np.arange(graph.n_nodes), np.diff(self._a.indptr))
        self._influence: np.ndarray | None = None

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
        """:func:`prune_graph` of the graph at these thresholds."""
        node_threshold = check_threshold("node_threshold", node_threshold)
        edge_threshold = check_threshold("edge_threshold", edge_threshold)
        if self._influence is None:
            self._influence = node_influence(self._a, self._w)
        graph, a = self.graph, self._a
        result = prune_masks(
            a,
            self._w,
            **self._kinds,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            influence=self._influence,
        )
        n = graph.n_nodes
        keep = np.flatnonzero(result.node_mask)
        new_index = np.full(n, -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        rows = self._rows
        em = result.edge_mask
        adjacency = sp.csr_array(
            (a.data[em], (new_index[rows[em]], new_index[a.indices[em]])),
            shape=(len(keep), len(keep)),
            dtype=a.dtype,
        )
        adjacency.sum_duplicates()

        nodes = graph.nodes.iloc[keep].reset_index(drop=True)
        if "node_index" in nodes.columns:
            origin = graph.nodes["node_index"].to_numpy(dtype=np.int64)[keep]
        else:
            origin = keep.astype(np.int64)
        nodes = nodes.assign(
            node_index=pd.array(origin, dtype=np.int64),
            influence=result.influence[keep],
            cumulative_influence=result.cumulative_influence[keep],
        )
        kept_logits = result.node_mask[graph.node_indices("logit")]  # all True: targets are kept
        logits = graph.logits.copy()
        if len(logits) == len(kept_logits):
            logits = logits.iloc[np.flatnonzero(kept_logits)].reset_index(drop=True)
        metadata = copy.deepcopy(dict(graph.metadata))
        metadata["pruning"] = {
            "node_threshold": node_threshold,
            "edge_threshold": edge_threshold,
            "n_nodes_before": int(n),
            "n_edges_before": int(a.nnz),
        }
        pruned = dataclasses.replace(
            graph, adjacency=adjacency, nodes=nodes, logits=logits, metadata=metadata
        )
        logger.info(
            "pruned %d -> %d nodes, %d -> %d edges (node_threshold=%g, edge_threshold=%g)",
            n,
            len(keep),
            a.nnz,
            adjacency.nnz,
            node_threshold,
            edge_threshold,
        )
        return pruned
