"""Head loadings: each edge of a graph split over the attention heads that carry it.

An edge's weight is the direct effect of its source on its target in the frozen local
replacement model: a sum over the paths from the source up to the target through the frozen
blocks, each path going through the residual stream (and a skip transcoder's linear path) and
through at most one attention head per layer. **The loading of head (l, h)** is the part of the
edge carried by the paths whose *last* attention head is (l, h): the head that delivers the
effect to the target (for an edge between adjacent layers, or any path of one head, simply the
head it goes through). What goes through no head at all is the **direct** part (only between
nodes at the same position). The parts sum to the edge exactly:

    edge = direct + sum_{l, h} loading(l, h)

They are computed as differences of rows of the same targets in the frozen model with heads
frozen (their outputs held at clean values, so that no effect passes through them):
``direct = R(every head frozen)``, ``loading(l, h) = R(heads above l and the other heads of l
frozen) - R(heads at l and above frozen)``, one trace per layer and per head up to the highest
target layer. Memory: two dense ``(distinct targets, sources)`` float64 blocks at a time, so it is
meant for pruned graphs or chosen edges (the edges into a few hundred targets), not whole graphs
of long prompts.

Example:
    >>> pruned = graph.prune()
    >>> loads = sc.head_loadings(model, prompt, transcoders, pruned)
    >>> loads.groupby(["layer", "head"])["loading"].sum().abs().nlargest(5)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from sae_circuits.attribution._attribute import _target_groups
from sae_circuits.attribution._backward import Trace, trace
from sae_circuits.attribution._targets import ResolvedTarget, Target, resolve_targets
from sae_circuits.core.prompts import Prompt, to_tokens
from sae_circuits.graph import AttributionGraph
from sae_circuits.transcoders import ResolvedTranscoders, check_compatible
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = ["head_loadings"]

logger = logging.getLogger(__name__)


def head_loadings(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    graph: AttributionGraph,
    *,
    edges: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Split edges of ``graph`` over the attention heads that carry them (see the module).

    Args:
        model: The model the graph was computed on (only hooked for the call).
        prompt: The graph's prompt (its tokens must be the graph's).
        transcoders: The graph's transcoders.
        graph: The graph, pruned or not.
        edges: Rows with ``source`` and ``target`` node indices of ``graph`` (e.g. a subset of
            ``graph.edges()``); ``None``: every edge of the graph.

    Returns:
        One row per (edge, part) with a non-zero share: ``source``, ``target``, ``weight`` (the
        edge), ``layer`` and ``head`` (nullable; both missing for the direct part), ``part``
        (``"head"`` or ``"direct"``) and ``loading``; the loadings of an edge sum to its weight.

    Raises:
        ValueError: The prompt is not the graph's, or an edge is not an edge of the graph.
    """
    tokens = to_tokens(model, prompt)
    if list(graph.metadata.get("tokens", [])) not in ([], tokens.tolist()):
        raise ValueError(
            "the prompt is not the graph's: its tokens differ from graph.metadata['tokens']"
        )
    adjacency = graph.adjacency.tocsr()
    if edges is None:
        coo = adjacency.tocoo()
        src, tgt = coo.col.astype(np.int64), coo.row.astype(np.int64)
    else:
        missing = [c for c in ("source", "target") if c not in edges.columns]
        if missing:
            raise ValueError(f"edges lacks column(s) {missing}; expected source and target")
        src = edges["source"].to_numpy(dtype=np.int64)
        tgt = edges["target"].to_numpy(dtype=np.int64)
        bad = (src < 0) | (src >= graph.n_nodes) | (tgt < 0) | (tgt >= graph.n_nodes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"edge ({src[i]}, {tgt[i]}) has a node outside the graph's 0..{graph.n_nodes - 1}"
            )
    weights = np.asarray(adjacency[tgt, src]).ravel()
    if edges is not None and (weights == 0).any():
        i = int(np.flatnonzero(weights == 0)[0])
        raise ValueError(f"({src[i]} -> {tgt[i]}) is not an edge of the graph (no weight)")
    resolved = check_compatible(model, transcoders)
    settings = graph.metadata.get("settings") or {}
    sink = bool(settings.get("attention_sink", True))
    targets = np.unique(tgt)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    everything = list(range(n_heads))
    custom = _custom_targets(model, graph, targets, len(tokens), resolved)
    hooks = [t.site for t in custom.values() if t.site is not None and not t.reads_mlp_input]

    def frozen_trace(frozen: dict[int, list[int]]) -> Trace:
        return trace(
            model, tokens, resolved, attention_sink=sink, target_hooks=hooks, frozen_heads=frozen
        )

    # the first trace (every head frozen: the direct part) also gives the features' encoder rows
    first = frozen_trace({layer: everything for layer in range(n_layers)})
    active = _active_index(first)
    specs = [
        custom[t] if t in custom else _feature_target(graph, first, active, t) for t in targets
    ]

    def rows(tr: Trace) -> torch.Tensor:
        out = torch.zeros(len(specs), tr.n_sources, dtype=torch.float64)
        for idx, layers, positions, vectors, hook in _target_groups(tr, specs):
            part = tr.rows(layers, positions, vectors, hook=hook)
            out[torch.from_numpy(idx)] = part.double().cpu()
        return out

    top = min(max(t.layer for t in specs), n_layers - 1)
    direct = rows(first)
    columns = _source_columns(graph, first, active, src)
    pick_t = np.searchsorted(targets, tgt)
    parts: list[tuple[str, int | None, int | None, np.ndarray]] = [
        ("direct", None, None, direct[pick_t, columns].numpy())
    ]
    below = direct
    for layer in range(top + 1):
        above = {lay: everything for lay in range(layer + 1, n_layers)}
        for head in range(n_heads):
            only = rows(frozen_trace({**above, layer: [h for h in everything if h != head]}))
            parts.append(("head", layer, head, (only - below)[pick_t, columns].numpy()))
        if layer < top:
            below = rows(frozen_trace(above))
    tables = []
    for part, layer, head, values in parts:
        keep = values != 0
        tables.append(
            pd.DataFrame(
                {
                    "source": src[keep],
                    "target": tgt[keep],
                    "weight": weights[keep],
                    "layer": pd.array([layer] * int(keep.sum()), dtype="Int64"),
                    "head": pd.array([head] * int(keep.sum()), dtype="Int64"),
                    "part": part,
                    "loading": values[keep],
                }
            )
        )
    out = pd.concat(tables, ignore_index=True).sort_values(["target", "source"], kind="stable")
    logger.info("head loadings of %d edges over %d layers x %d heads", len(src), top + 1, n_heads)
    return out.reset_index(drop=True)


def _custom_targets(
    model: HookedTransformer,
    graph: AttributionGraph,
    targets: np.ndarray,
    n_pos: int,
    resolved: ResolvedTranscoders,
) -> dict[int, ResolvedTarget]:
    """The target-block nodes among ``targets`` (logits, custom targets), resolved again from
    the graph's description of them."""
    nodes = graph.nodes
    kinds = nodes["kind"].astype(str).to_numpy()
    described = graph.metadata.get("targets")
    target_rank = {int(i): j for j, i in enumerate(graph.target_indices)}
    out: dict[int, ResolvedTarget] = {}
    for node in targets.tolist():
        kind = kinds[node]
        if kind == "feature":
            continue
        if kind not in ("logit", "target"):
            raise ValueError(f"node {node} ({kind}) is not a target of the graph: it has no row")
        row = nodes.iloc[node]
        d = described[target_rank[node]] if isinstance(described, list) else None
        if d is None or d.get("kind") == "logit":
            spec: Any = Target.logit(int(row["token_id"]), position=int(row["position"]))
        elif d["kind"] == "logit_diff":
            spec = Target.logit_diff(*d["token_ids"], position=int(d["position"]))
        else:
            spec = Target("t", d["direction"], position=int(d["position"]), hook=d["hook"])
        (out[node],) = resolve_targets(model, [spec], n_pos=n_pos, resolved=resolved)
    return out


def _active_index(tr: Trace) -> dict[tuple[int, int, int], int]:
    """(layer, position, feature) -> index of an active feature in ``tr``."""
    keys = zip(
        tr.feature_layer.tolist(), tr.feature_pos.tolist(), tr.feature_idx.tolist(), strict=True
    )
    return {key: i for i, key in enumerate(keys)}


def _feature_target(
    graph: AttributionGraph, tr: Trace, active: dict[tuple[int, int, int], int], node: int
) -> ResolvedTarget:
    """A feature node as a target: its encoder row at its layer's transcoder input."""
    row = graph.nodes.iloc[node]
    layer, position = int(row["layer"]), int(row["position"])
    i = active[(layer, position, int(row["feature"]))]
    return ResolvedTarget(
        label=f"feature {node}",
        kind="direction",
        node_kind="target",
        position=position,
        token_ids=(),
        site=None,
        layer=layer,
        reads_mlp_input=True,
        direction=tr.encoder_vectors(torch.tensor([i]))[0].double().cpu(),
        weight=None,
    )


def _source_columns(
    graph: AttributionGraph,
    tr: Trace,
    active: dict[tuple[int, int, int], int],
    sources: np.ndarray,
) -> np.ndarray:
    """The trace's source column of each graph source node."""
    nodes = graph.nodes
    kinds = nodes["kind"].astype(str).to_numpy()
    layer = nodes["layer"].to_numpy(dtype=float, na_value=-1).astype(np.int64)
    position = nodes["position"].to_numpy(dtype=float, na_value=-1).astype(np.int64)
    feature = nodes["feature"].to_numpy(dtype=float, na_value=-1).astype(np.int64)
    n, n_layers, n_active = tr.n_pos, tr.n_layers, tr.n_active
    out = np.empty(len(sources), dtype=np.int64)
    for j, s in enumerate(sources.tolist()):
        kind = kinds[s]
        if kind == "feature":
            out[j] = active[(int(layer[s]), int(position[s]), int(feature[s]))]
        elif kind == "error":
            out[j] = n_active + int(layer[s]) * n + int(position[s])
        elif kind == "token":
            out[j] = n_active + n_layers * n + int(position[s])
        else:
            raise ValueError(f"node {s} ({kind}) is not a source")
    return out
