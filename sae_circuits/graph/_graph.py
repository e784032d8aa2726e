"""The attribution graph: a ``scipy.sparse`` adjacency plus ``pandas`` tables.

An :class:`AttributionGraph` holds

* ``adjacency``: ``(n_nodes, n_nodes)`` CSR array, ``adjacency[t, s]`` = direct effect of source
  ``s`` on target ``t`` in the local replacement model (rows = targets, columns = sources);
* ``nodes``: one row per node, in adjacency order: active features (layer, position, feature),
  then error nodes (layer-major, one per layer and position), then token nodes (one per position),
  then the target nodes (logits, kind ``"logit"``, and custom targets, kind ``"target"``, in the
  order they were asked for);
* ``logits``: the logit targets (token id, string, probability); ``targets`` (a property): every
  target with its label, kind, node, position, hook, clean value and weight;
* ``metadata``: prompt, token ids, model, transcoders, settings, library version.

Everything is plain ecosystem data: ``graph.edges()`` is a tidy pandas edge list,
``graph.adjacency`` goes into scipy / networkx / numpy as is.

The methods below are thin entry points: :meth:`AttributionGraph.prune` and
:meth:`AttributionGraph.scores` (see :mod:`sae_circuits.pruning`), :meth:`AttributionGraph.save` /
:meth:`AttributionGraph.load` (format in :mod:`sae_circuits.graph._io`) and
:meth:`AttributionGraph.to_networkx` (see :mod:`sae_circuits.graph._export`, which also writes
Neuronpedia's graph JSON).

Example:
    >>> graph.nodes.query("kind == 'feature'").nlargest(5, "activation")
    >>> graph.edges().sort_values("weight", key=abs, ascending=False).head()
    >>> pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    >>> pruned.save("graph.zip"); AttributionGraph.load("graph.zip")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sae_circuits.graph._layout import NODE_KINDS, TARGET_KINDS

if TYPE_CHECKING:
    import networkx

    from sae_circuits.graph._pruning import GraphScores

__all__ = ["NODE_COLUMNS", "AttributionGraph", "NodeKind"]

NodeKind = Literal["feature", "error", "token", "logit", "target"]

#: Columns every ``nodes`` table has (nullable where a field does not apply).
NODE_COLUMNS = ("kind", "layer", "position", "feature", "token_id", "activation")


@dataclass(frozen=True, eq=False)
class AttributionGraph:
    """An attribution graph over one prompt.

    Attributes:
        adjacency: ``(n_nodes, n_nodes)`` ``scipy.sparse.csr_array`` (float32), ``[target, source]``.
        nodes: ``pandas.DataFrame``, row ``i`` describes node ``i``. Columns ``kind``
            (``"feature"``, ``"error"``, ``"token"``, ``"logit"``, ``"target"``), ``layer``,
            ``position``, ``feature``, ``token_id`` (nullable ``Int64``), ``activation``
            (features), ``probability`` (logits), ``token`` (token and logit nodes' strings, if
            known), and for target nodes ``label``, ``target_value`` (the target's value in the
            clean run) and ``target_weight`` (its seed of influence for pruning and scores).
        logits: ``pandas.DataFrame`` with ``token_id``, ``token``, ``probability`` of the logit
            nodes, in node order.
        metadata: Prompt, token ids, model and transcoder identity, settings, version.
    """

    adjacency: sp.csr_array
    nodes: pd.DataFrame
    logits: pd.DataFrame
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.nodes)
        if self.adjacency.shape != (n, n):
            raise ValueError(f"adjacency shape {self.adjacency.shape} does not match {n} nodes")
        missing = [c for c in NODE_COLUMNS if c not in self.nodes.columns]
        if missing:
            raise ValueError(f"nodes table lacks columns {missing}")

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def node_indices(self, kind: NodeKind) -> np.ndarray:
        """Indices of the nodes of one kind (``"feature"``, ``"error"``, ``"token"``,
        ``"logit"``, ``"target"``)."""
        if kind not in NODE_KINDS:
            raise ValueError(f"unknown node kind {kind!r}; valid kinds: {', '.join(NODE_KINDS)}")
        return np.flatnonzero((self.nodes["kind"].astype(str) == kind).to_numpy())

    @property
    def target_indices(self) -> np.ndarray:
        """Indices of the target nodes (logits and custom targets), in target order."""
        return np.flatnonzero(self.nodes["kind"].astype(str).isin(TARGET_KINDS).to_numpy())

    @property
    def target_weights(self) -> np.ndarray:
        """``(n_nodes,)`` the targets' weights (``nodes["target_weight"]``) on target nodes, zero
        elsewhere: what influence, pruning and scores start from.

        Graphs written before custom targets existed have no ``target_weight`` column: their
        logits' probabilities are the weights (as the reference's).
        """
        w = np.zeros(self.n_nodes, dtype=np.float64)
        idx = self.target_indices
        column = "target_weight" if "target_weight" in self.nodes.columns else "probability"
        if column in self.nodes.columns:
            w[idx] = self.nodes[column].to_numpy(dtype=np.float64, na_value=0.0)[idx]
        return w

    @property
    def logit_weights(self) -> np.ndarray:
        """The same as :attr:`target_weights` (the name from before custom targets)."""
        return self.target_weights

    @property
    def targets(self) -> pd.DataFrame:
        """The targets, in the order asked for (one row per target node).

        Columns: ``label``, ``kind`` (``"logit"``, ``"logit_diff"``, ``"direction"``),
        ``node`` (index in this graph), ``position``, ``token_id`` (logits), ``hook`` (``None``:
        the unembedding's input), ``value`` (in the clean run: what the row attributes, e.g. the
        demeaned pre-softcap logit), ``probability`` (logits) and ``weight``.
        """
        idx = self.target_indices
        nodes = self.nodes.iloc[idx]
        described = self.metadata.get("targets")
        if not isinstance(described, list) or len(described) != len(idx):
            described = [{"kind": "logit", "hook": None}] * len(idx)

        def column(name: str, dtype: str) -> Any:
            if name in nodes.columns:
                return pd.array(nodes[name].tolist(), dtype=dtype)
            return pd.array([None] * len(idx), dtype=dtype)

        labels = column("label", "string")
        if "label" not in nodes.columns:
            labels = pd.array(nodes["token"].tolist(), dtype="string")
        return pd.DataFrame(
            {
                "label": labels,
                "kind": pd.array([d.get("kind", "logit") for d in described], dtype="string"),
                "node": idx.astype(np.int64),
                "position": column("position", "Int64"),
                "token_id": column("token_id", "Int64"),
                "hook": pd.array([d.get("hook") for d in described], dtype="string"),
                "value": column("target_value", "Float64"),
                "probability": column("probability", "Float32"),
                "weight": self.target_weights[idx],
            }
        )

    def with_target_weights(self, weights: Any) -> AttributionGraph:
        """The same graph with other target weights (for pruning, scores and influence).

        Args:
            weights: One non-negative finite number per target (in :attr:`targets` order), or a
                mapping from target label or node index to its new weight (others unchanged).

        Returns:
            A new graph; this one is left as it is.

        Raises:
            ValueError: Wrong count, unknown labels or nodes, or a negative/non-finite weight.
        """
        idx = self.target_indices
        current = self.target_weights[idx]
        if isinstance(weights, Mapping):
            labels = self.targets["label"].tolist()
            new = current.copy()
            for key, value in weights.items():
                if isinstance(key, str) and key in labels:
                    new[labels.index(key)] = value
                elif isinstance(key, (int, np.integer)) and int(key) in idx.tolist():
                    new[idx.tolist().index(int(key))] = value
                else:
                    raise ValueError(
                        f"{key!r} is neither a target label nor a target node; targets: "
                        f"{labels} (nodes {idx.tolist()})"
                    )
        else:
            new = np.asarray(weights, dtype=np.float64).reshape(-1)
            if len(new) != len(idx):
                raise ValueError(
                    f"expected {len(idx)} target weights (one per target), got {len(new)}"
                )
        new = np.asarray(new, dtype=np.float64)
        if not np.isfinite(new).all() or (new < 0).any():
            raise ValueError(f"target weights must be finite and >= 0, got {new.tolist()}")
        column = np.full(self.n_nodes, np.nan)
        column[idx] = new
        nodes = self.nodes.copy()
        nodes["target_weight"] = pd.array(
            [None if np.isnan(v) else float(v) for v in column], dtype="Float64"
        )
        return dataclasses.replace(self, nodes=nodes)

    def edges(self, *, with_nodes: bool = True) -> pd.DataFrame:
        """The stored edges as a tidy table.

        Args:
            with_nodes: Add the node columns of both ends (prefixed ``source_`` / ``target_``).

        Returns:
            DataFrame with ``source``, ``target``, ``weight`` (one row per stored edge, in CSR
            order), plus node columns when asked.
        """
        coo = self.adjacency.tocoo()
        df = pd.DataFrame(
            {
                "source": coo.col.astype(np.int64),
                "target": coo.row.astype(np.int64),
                "weight": coo.data,
            }
        )
        if not with_nodes:
            return df
        cols = [c for c in (*NODE_COLUMNS, "token") if c in self.nodes.columns]
        src = self.nodes[cols].iloc[df["source"].to_numpy()].reset_index(drop=True)
        tgt = self.nodes[cols].iloc[df["target"].to_numpy()].reset_index(drop=True)
        return pd.concat([df, src.add_prefix("source_"), tgt.add_prefix("target_")], axis=1)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
        """The subgraph of the nodes and edges with most influence on the logits.

        circuit-tracer's ``prune_graph`` rule; see :func:`sae_circuits.pruning.prune_graph`.

        Args:
            node_threshold: Keep the fewest nodes holding this fraction of the node influence
                (tokens and logits are always kept), in ``[0, 1]``.
            edge_threshold: Keep the fewest edges holding this fraction of the edge influence,
                in ``[0, 1]``.

        Returns:
            A new graph with the kept nodes and edges only; ``nodes`` gains ``node_index`` (row
            in this graph), ``influence`` and ``cumulative_influence``.

        Raises:
            TypeError: A threshold is not a number.
            ValueError: A threshold is outside ``[0, 1]``, or the graph has no usable logits.
        """
        from sae_circuits.graph._pruning import prune_graph

        return prune_graph(self, node_threshold=node_threshold, edge_threshold=edge_threshold)

    def scores(self) -> GraphScores:
        """Replacement and completeness scores, on this graph's own adjacency.

        Returns:
            :class:`sae_circuits.pruning.GraphScores` (``.replacement``, ``["completeness"]``).

        Raises:
            ValueError: The graph has no usable logit nodes.
        """
        from sae_circuits.graph._pruning import graph_scores

        return graph_scores(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the graph to one file, atomically (see :mod:`sae_circuits.graph._io`).

        Args:
            path: Destination file (conventionally ``*.zip``); replaced if it exists.

        Returns:
            The path written.

        Raises:
            TypeError: ``metadata`` or a column holds values the format cannot store.
        """
        from sae_circuits.graph._io import save_graph

        return save_graph(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AttributionGraph:
        """Read a graph written by :meth:`save`.

        Raises:
            FileNotFoundError: No such file.
            sae_circuits.GraphFileError: Truncated, corrupted, foreign or newer-format file.
        """
        from sae_circuits.graph._io import load_graph

        return load_graph(path, factory=cls)

    def to_networkx(self) -> networkx.DiGraph:
        """The graph as a ``networkx.DiGraph`` (see :func:`sae_circuits.graph.to_networkx`).

        Node ``i`` carries row ``i`` of ``nodes`` as attributes, each stored edge is
        ``source -> target`` with a ``weight``, and ``G.graph`` holds the metadata.

        Raises:
            ImportError: networkx is missing (``pip install sae-circuits[networkx]``).
        """
        from sae_circuits.graph._export import to_networkx

        return to_networkx(self)

    def __repr__(self) -> str:
        counts = self.nodes["kind"].value_counts()
        shown = [k for k in NODE_KINDS if k != "target" or counts.get(k, 0)]
        parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in shown)
        prompt = self.metadata.get("prompt")
        shown = f" prompt={prompt!r}" if isinstance(prompt, str) else ""
        return f"AttributionGraph({parts}; {self.adjacency.nnz} edges{shown})"
