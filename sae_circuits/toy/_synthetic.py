"""Random graphs of a chosen size, shaped like attribution graphs (for benchmarks and layouts).

A real graph of 50,000 nodes and ten million edges takes a large model and minutes to compute;
what the viewer, pruning and the graph files do with it depends only on its shape. A
:func:`synthetic_graph` has that shape: active features in (layer, position, feature) order,
one error node per layer and position, one token node per position, logit nodes at the last
position, and edges only from a lower level (tokens < layer 0 < ... < logits) at the same or an
earlier position, with heavy-tailed weights; logit probabilities sum to one. Nothing in it
means anything: it is never an attribution of any model.

Example:
    >>> graph = synthetic_graph(n_features=48_000, n_edges=10_000_000, n_positions=64)
    >>> graph.n_nodes, graph.adjacency.nnz
    (50034, 10000000)
    >>> pruned = graph.prune(0.8, 0.98)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sae_circuits.graph import AttributionGraph

__all__ = ["synthetic_graph"]


def synthetic_graph(
    *,
    n_features: int = 400,
    n_edges: int = 20_000,
    n_layers: int = 4,
    n_positions: int = 16,
    n_logits: int = 5,
    d_sae: int = 4096,
    seed: int = 0,
) -> AttributionGraph:
    """A random graph with the layout and causal shape of an attribution graph.

    Args:
        n_features: Active feature nodes (spread over layers and positions).
        n_edges: Edges (distinct pairs; fewer only where the causal shape has no more room).
        n_layers: Layers (each has ``n_positions`` error nodes).
        n_positions: Prompt length (token nodes).
        n_logits: Logit nodes at the last position.
        d_sae: Features per layer (feature indices are drawn below it).
        seed: Seed of everything random.

    Returns:
        An :class:`~sae_circuits.graph.AttributionGraph` of
        ``n_features + (n_layers + 1) * n_positions + n_logits`` nodes, with ``metadata``
        (``tokens``, ``prompt``, ``transcoders.n_layers``, ``model_name = "synthetic"``) as the
        viewer and the graph files need.

    Raises:
        ValueError: A size is not positive, or ``n_features`` exceed
            ``n_layers * n_positions * d_sae``.
    """
    sizes = {
        "n_features": n_features,
        "n_edges": n_edges,
        "n_layers": n_layers,
        "n_positions": n_positions,
        "n_logits": n_logits,
        "d_sae": d_sae,
    }
    bad = [f"{k}={v!r}" for k, v in sizes.items() if not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"sizes must be positive whole numbers: {', '.join(bad)}")
    rng = np.random.default_rng(seed)
    # features in (layer, position, feature) order, as attribute() lays them out
    room = n_layers * n_positions * d_sae
    if n_features > room:
        raise ValueError(
            f"n_features={n_features} distinct features do not fit in {n_layers} layers x "
            f"{n_positions} positions x d_sae={d_sae}"
        )
    flat = np.sort(rng.choice(room, n_features, replace=False))  # distinct, in layout order
    f_layer, rest = np.divmod(flat, n_positions * d_sae)
    f_pos, f_idx = np.divmod(rest, d_sae)
    n_err = n_layers * n_positions
    kind = np.repeat(
        np.array(["feature", "error", "token", "logit"]),
        [n_features, n_err, n_positions, n_logits],
    )
    layer = np.concatenate(
        [
            f_layer,
            np.repeat(np.arange(n_layers), n_positions),
            np.full(n_positions + n_logits, -1),
        ]
    )
    position = np.concatenate(
        [
            f_pos,
            np.tile(np.arange(n_positions), n_layers),
            np.arange(n_positions),
            np.full(n_logits, n_positions - 1),
        ]
    )
    n_nodes = len(kind)
    # level: tokens 0, layer l's features and errors l + 1, logits n_layers + 1
    level = np.where(kind == "token", 0, np.where(kind == "logit", n_layers + 1, layer + 1))
    # sources of each level, sorted by (level, position): a target at (level v, position p)
    # draws among the sources below v at positions <= p (sorted by position within those)
    sources = np.flatnonzero(kind != "logit")
    targets_all = np.flatnonzero(kind != "token")
    below_of = {}
    for v in range(1, n_layers + 2):
        below = sources[level[sources] < v]
        below_of[v] = below[np.argsort(position[below], kind="stable")]

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        t = targets_all[rng.integers(0, len(targets_all), m)]
        s = np.empty(m, dtype=np.int64)
        for v, below in below_of.items():
            sel = np.flatnonzero(level[t] == v)
            upto = np.searchsorted(position[below], position[t[sel]], side="right")
            s[sel] = below[(rng.random(len(sel)) * upto).astype(np.int64)]
        return t, s

    # draw until n_edges distinct (target, source) pairs (or no more room), keep n_edges
    keys = np.empty(0, dtype=np.int64)
    for _ in range(64):
        t, s = draw(int((n_edges - len(keys)) * 1.2) + 16)
        had = len(keys)
        keys = np.sort(np.concatenate([keys, t * n_nodes + s]))
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # distinct
        if len(keys) >= n_edges or len(keys) == had:
            break
    if len(keys) > n_edges:
        keys = np.sort(keys[rng.permutation(len(keys))[:n_edges]])
    t, s = keys // n_nodes, keys % n_nodes
    weights = (rng.standard_normal(len(keys)) * rng.pareto(2.0, len(keys))).astype(np.float32)
    adjacency = sp.csr_array((weights, (t, s)), shape=(n_nodes, n_nodes))
    prob = np.full(n_nodes, np.nan, dtype=np.float32)
    prob[-n_logits:] = rng.dirichlet(np.ones(n_logits))
    tokens = [int(x) for x in rng.integers(1, 1000, n_positions)]
    logit_ids = rng.choice(1000, n_logits, replace=False)
    token_id = np.concatenate(
        [np.full(n_features + n_err, -1), np.array(tokens), logit_ids]
    ).astype(np.int64)
    words = [f"w{i}" for i in tokens] + [f"w{i}" for i in logit_ids]
    nodes = pd.DataFrame(
        {
            "kind": pd.Categorical(kind, categories=["feature", "error", "token", "logit"]),
            "layer": pd.Series(layer, dtype="Int64").mask(layer < 0),
            "position": pd.array(position, dtype="Int64"),
            "feature": pd.Series(
                np.concatenate([f_idx, np.full(n_nodes - n_features, -1)]), dtype="Int64"
            ).mask(kind != "feature"),
            "token_id": pd.Series(token_id, dtype="Int64").mask(token_id < 0),
            "activation": pd.array(
                np.where(kind == "feature", rng.gamma(2.0, 1.0, n_nodes), np.nan),
                dtype="Float32",
            ),
            "probability": pd.array(prob, dtype="Float32"),
            "token": pd.Series([None] * (n_features + n_err) + words, dtype=object),
        }
    )
    logits = pd.DataFrame(
        {"token_id": logit_ids, "token": words[n_positions:], "probability": prob[-n_logits:]}
    )
    metadata = {
        "prompt": " ".join(words[:n_positions]),
        "tokens": tokens,
        "model_name": "synthetic",
        "transcoders": {"n_layers": n_layers, "kind": "synthetic"},
    }
    return AttributionGraph(adjacency, nodes, logits, metadata)
