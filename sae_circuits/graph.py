"""The attribution graph: a ``scipy.sparse`` adjacency plus ``pandas`` tables.

An :class:`AttributionGraph` holds

* ``adjacency``: ``(n_nodes, n_nodes)`` CSR array, ``adjacency[t, s]`` = direct effect of source
  ``s`` on target ``t`` in the local replacement model (rows = targets, columns = sources);
* ``nodes``: one row per node, in adjacency order: active features (layer, position, feature),
  then error nodes (layer-major, one per layer and position), then token nodes (one per position),
  then logit nodes;
* ``logits``: the salient output tokens (token id, string, probability);
* ``metadata``: prompt, token ids, model, transcoders, settings, library version.

Everything is plain ecosystem data: ``graph.edges()`` is a tidy pandas edge list,
``graph.adjacency`` goes into scipy / networkx / numpy as is.

Example:
    >>> graph.nodes.query("kind == 'feature'").nlargest(5, "activation")
    >>> graph.edges().sort_values("weight", key=abs, ascending=False).head()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["NODE_COLUMNS", "AttributionGraph", "NodeKind"]

NodeKind = Literal["feature", "error", "token", "logit"]

#: Columns every ``nodes`` table has (nullable where a field does not apply).
NODE_COLUMNS = ("kind", "layer", "position", "feature", "token_id", "activation")


@dataclass(frozen=True, eq=False)
class AttributionGraph:
    """An attribution graph over one prompt.

    Attributes:
        adjacency: ``(n_nodes, n_nodes)`` ``scipy.sparse.csr_array`` (float32), ``[target, source]``.
        nodes: ``pandas.DataFrame``, row ``i`` describes node ``i``. Columns ``kind``
            (``"feature"``, ``"error"``, ``"token"``, ``"logit"``), ``layer``, ``position``,
            ``feature``, ``token_id`` (nullable ``Int64``), ``activation`` (features),
            ``probability`` (logits), ``token`` (token and logit nodes' strings, if known).
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
            raise ValueError(
                f"adjacency shape {self.adjacency.shape} does not match {n} nodes"
            )
        missing = [c for c in NODE_COLUMNS if c not in self.nodes.columns]
        if missing:
            raise ValueError(f"nodes table lacks columns {missing}")

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def node_indices(self, kind: NodeKind) -> np.ndarray:
        """Indices of the nodes of one kind (``"feature"``, ``"error"``, ``"token"``, ``"logit"``)."""
        kinds = ("feature", "error", "token", "logit")
        if kind not in kinds:
            raise ValueError(f"unknown node kind {kind!r}; valid kinds: {', '.join(kinds)}")
        return np.flatnonzero((self.nodes["kind"] == kind).to_numpy())

    @property
    def logit_weights(self) -> np.ndarray:
        """``(n_nodes,)`` logit probabilities on logit nodes, zero elsewhere."""
        w = np.zeros(self.n_nodes, dtype=np.float64)
        idx = self.node_indices("logit")
        w[idx] = self.nodes["probability"].to_numpy(dtype=np.float64, na_value=0.0)[idx]
        return w

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
            {"source": coo.col.astype(np.int64), "target": coo.row.astype(np.int64), "weight": coo.data}
        )
        if not with_nodes:
            return df
        cols = [c for c in (*NODE_COLUMNS, "token") if c in self.nodes.columns]
        src = self.nodes[cols].iloc[df["source"].to_numpy()].reset_index(drop=True)
        tgt = self.nodes[cols].iloc[df["target"].to_numpy()].reset_index(drop=True)
        return pd.concat(
            [df, src.add_prefix("source_"), tgt.add_prefix("target_")], axis=1
        )

    def __repr__(self) -> str:
        counts = self.nodes["kind"].value_counts()
        parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("feature", "error", "token", "logit"))
        prompt = self.metadata.get("prompt")
        shown = f" prompt={prompt!r}" if isinstance(prompt, str) else ""
        return f"AttributionGraph({parts}; {self.adjacency.nnz} edges{shown})"
