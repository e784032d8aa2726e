"""Export attribution graphs: Neuronpedia's graph JSON, and networkx.

**Neuronpedia** renders and shares attribution graphs from one JSON document with ``metadata``,
``qParams``, ``nodes`` and ``links``: the format circuit-tracer's ``create_graph_files`` writes and
Neuronpedia's graph schema describes. Node ids follow Neuronpedia's ``layer_feature_position``
convention:

===========  ==========================  ======================  ======================
node         ``node_id``                 ``jsNodeId``            ``feature``
===========  ==========================  ======================  ======================
feature      ``{layer}_{feature}_{pos}``  ``{layer}_{feature}-0``  Cantor(layer, feature)
error        ``{layer}_-1_{pos}``         ``{layer}_-1-{pos}``     ``-1``
token        ``E_{token_id}_{pos}``       ``E_{token_id}-{pos}``   ``pos``
logit        ``{L+1}_{token_id}_{pos}``   ``L_{token_id}-{pos}``   ``token_id``
===========  ==========================  ======================  ======================

(``L`` = number of layers; error ids are those of circuit-tracer >= 0.5.1, which fixed 0.5.0's
``0_{layer}_{pos}``, an id that collided with layer-0 features.) A node's ``influence`` is its
``cumulative_influence`` from pruning (what Neuronpedia's dynamic pruning slider reads), its
``activation`` the feature activation. Links are the graph's stored edges. As circuit-tracer does,
feature and error nodes without any link are left out. When the transcoders carry Neuronpedia ids
(SAELens ``cfg.metadata.neuronpedia_id``, e.g. ``gemma-2-2b/20-gemmascope-transcoder-16k``,
recorded in ``graph.metadata["transcoders"]["neuronpedia_ids"]``), the model id becomes the
default ``scan`` and the shared source set (``gemmascope-transcoder-16k``) goes into
``metadata.feature_details.neuronpedia_source_set``, which links every feature to its Neuronpedia
dashboard; the per-layer source pages go into ``metadata.info.source_urls``.

**networkx**: :func:`to_networkx` gives a ``DiGraph`` with node ``i`` = row ``i`` of ``nodes``
(its columns as attributes) and an edge ``source -> target`` with ``weight`` per stored edge.
networkx is an optional extra: ``pip install sae-circuits[networkx]``.

Example:
    >>> pruned = graph.prune()
    >>> doc = to_neuronpedia(pruned, slug="dallas-austin", scan="gemma-2-2b")
    >>> save_neuronpedia(pruned, "graphs/", slug="dallas-austin", scan="gemma-2-2b")
    >>> G = pruned.to_networkx()
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sae_circuits._version import __version__
from sae_circuits.core.files import atomic_write
from sae_circuits.graph._layout import TARGET_KINDS, js_node_id, node_id, parse_node_id
from sae_circuits.graph._pruning import cumulative_influence, node_influence

if TYPE_CHECKING:
    import networkx

    from sae_circuits.graph._graph import AttributionGraph

__all__ = ["node_ids", "save_neuronpedia", "to_networkx", "to_neuronpedia"]

logger = logging.getLogger(__name__)

NEURONPEDIA_URL = "https://www.neuronpedia.org"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SETTINGS_KEYS = ("max_n_logits", "desired_logit_prob", "batch_size", "max_feature_nodes")


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _ints(series: Any) -> np.ndarray:
    return series.to_numpy(dtype=np.int64, na_value=-1)


def node_ids(graph: AttributionGraph, n_layers: int | None = None) -> tuple[list[str], list[str]]:
    """Neuronpedia ``node_id`` and ``jsNodeId`` of every node, in node order.

    Args:
        graph: The graph.
        n_layers: Number of layers (for logit ids); default from the graph's metadata.

    Returns:
        ``(node_ids, js_node_ids)``, two lists of ``n_nodes`` strings.
    """
    n_layers = _n_layers(graph, n_layers)
    nodes = graph.nodes
    kind = nodes["kind"].astype(str).tolist()
    layer, pos = _ints(nodes["layer"]), _ints(nodes["position"])
    feat, tok = _ints(nodes["feature"]), _ints(nodes["token_id"])
    tok = tok.copy()
    custom = nodes["kind"].astype(str).to_numpy() == "target"
    if custom.any():  # the reference's virtual ids: d_vocab + rank among the targets
        d_vocab = graph.metadata.get("d_vocab")
        if not isinstance(d_vocab, (int, np.integer)) or isinstance(d_vocab, bool) or d_vocab < 1:
            raise ValueError(
                "custom target nodes need graph.metadata['d_vocab'] (the model's vocabulary size) "
                f"for their ids, got {d_vocab!r}"
            )
        rank = np.arange(len(graph.target_indices))
        targets = graph.target_indices
        tok[targets[custom[targets]]] = int(d_vocab) + rank[custom[targets]]
    ids, js = [], []
    columns = (kind, layer.tolist(), pos.tolist(), feat.tolist(), tok.tolist())
    for k, lay, p, f, t in zip(*columns, strict=True):
        fields = {"layer": lay, "position": p, "feature": f, "token_id": t}
        ids.append(node_id(k, **fields, n_layers=n_layers))
        js.append(js_node_id(k, **fields))
    return ids, js


def _n_layers(graph: AttributionGraph, n_layers: int | None) -> int:
    if n_layers is None:
        n_layers = (graph.metadata.get("transcoders") or {}).get("n_layers")
    if not isinstance(n_layers, (int, np.integer)) or isinstance(n_layers, bool) or n_layers < 1:
        raise ValueError(
            "the number of layers is unknown: graph.metadata['transcoders']['n_layers'] is "
            f"missing or invalid ({n_layers!r}); pass n_layers=<model's number of layers>"
        )
    return int(n_layers)


def _optional_float(x: Any) -> float | None:
    if x is None or x is pd.NA:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _token_text(text: Any, token_id: int) -> str:
    return text if isinstance(text, str) else str(token_id)


def _neuronpedia_source(graph: AttributionGraph) -> tuple[str | None, str | None, list[str]]:
    """``(model id, source set, per-layer source URLs)`` from the transcoders' Neuronpedia ids."""
    ids = (graph.metadata.get("transcoders") or {}).get("neuronpedia_ids")
    if not ids or any(not isinstance(i, str) or "/" not in i for i in ids):
        return None, None, []
    models = {i.split("/", 1)[0] for i in ids}
    sources = [i.split("/", 1)[1] for i in ids]
    sets = {re.sub(r"^\d+-", "", s) for s in sources}
    urls = [f"{NEURONPEDIA_URL}/{i}" for i in ids]
    model = models.pop() if len(models) == 1 else None
    source_set = sets.pop() if len(sets) == 1 else None
    return model, source_set, urls


def to_neuronpedia(
    graph: AttributionGraph,
    *,
    slug: str,
    scan: str | None = None,
    source_set: str | None = None,
    n_layers: int | None = None,
    prompt_tokens: Sequence[str] | None = None,
    pinned_ids: Sequence[str] = (),
    supernodes: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    """The graph as a Neuronpedia attribution-graph document (usually of a pruned graph).

    Args:
        graph: The graph; a pruned one (``graph.prune()``) gives the ``influence`` Neuronpedia's
            pruning slider uses; for an unpruned one it is computed here.
        slug: The graph's name on Neuronpedia (letters, digits, ``.``, ``_``, ``-``).
        scan: Neuronpedia model id (e.g. ``"gemma-2-2b"``); default from the transcoders'
            Neuronpedia ids.
        source_set: Neuronpedia source set of the features (e.g. ``"gemmascope-transcoder-16k"``)
            for feature links; default from the transcoders' Neuronpedia ids.
        n_layers: Number of layers; default ``graph.metadata["transcoders"]["n_layers"]``.
        prompt_tokens: Token strings of the prompt; default the token nodes' ``token`` column
            (token ids as text where unknown).
        pinned_ids: ``node_id`` s to pin in the saved view (``qParams.pinnedIds``).
        supernodes: Groups ``[label, node_id, ...]`` for ``qParams.supernodes``.

    Returns:
        A JSON-able dict with ``metadata``, ``qParams``, ``nodes``, ``links``.

    Raises:
        ValueError: Bad slug, no scan given or derivable, unknown layer count, or pinned /
            supernode ids not in the exported graph.
    """
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise ValueError(
            f"slug must be a non-empty name of letters, digits, '.', '_' or '-' (starting with a "
            f"letter or digit), e.g. 'dallas-austin'; got {slug!r}"
        )
    np_model, np_set, source_urls = _neuronpedia_source(graph)
    scan = scan if scan is not None else np_model
    if not isinstance(scan, str) or not scan:
        raise ValueError(
            "scan (the Neuronpedia model id, e.g. 'gemma-2-2b') is needed: pass scan=...; it can "
            "only be derived when the transcoders carry Neuronpedia ids "
            "(graph.metadata['transcoders']['neuronpedia_ids'])"
        )
    source_set = source_set if source_set is not None else np_set
    n_layers = _n_layers(graph, n_layers)
    nodes = graph.nodes
    n = graph.n_nodes
    ids, js = node_ids(graph, n_layers)
    kind = nodes["kind"].astype(str).to_numpy()

    if "cumulative_influence" in nodes.columns:
        cum = nodes["cumulative_influence"].to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        if n > 10_000:
            logger.warning("exporting an unpruned graph of %d nodes; prune() it first", n)
        cum = cumulative_influence(node_influence(graph.adjacency, graph.target_weights))

    coo = graph.adjacency.tocoo()
    order = np.lexsort((coo.col, coo.row))  # target-major, as circuit-tracer lists them
    src, tgt, weight = coo.col[order], coo.row[order], coo.data[order]
    if not np.isfinite(weight).all():
        raise ValueError("the adjacency holds non-finite edge weights, which JSON cannot carry")
    linked = np.zeros(n, dtype=bool)
    linked[src] = True
    linked[tgt] = True
    shown = linked | (kind == "token") | np.isin(kind, TARGET_KINDS)

    out_nodes = _node_records(graph, np.flatnonzero(shown), ids, js, cum, n_layers)
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(w)}
        for s, t, w in zip(src.tolist(), tgt.tolist(), weight.tolist(), strict=True)
    ]
    exported = {ids[i] for i in np.flatnonzero(shown).tolist()}
    pinned_ids, supernodes = _check_view(pinned_ids, supernodes, exported, n_layers)

    metadata = _document_metadata(graph, slug, scan, source_set, source_urls, prompt_tokens)
    return {
        "metadata": metadata,
        "qParams": {
            "pinnedIds": pinned_ids,
            "supernodes": supernodes,
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": out_nodes,
        "links": links,
    }


def _node_records(
    graph: AttributionGraph,
    rows: np.ndarray,
    ids: list[str],
    js: list[str],
    cum: np.ndarray,
    n_layers: int,
) -> list[dict[str, Any]]:
    """Neuronpedia node records of the given node rows (circuit-tracer's fields and defaults)."""
    nodes = graph.nodes
    n = graph.n_nodes
    kind = nodes["kind"].astype(str).to_numpy()
    layer = _ints(nodes["layer"]).tolist()
    pos = _ints(nodes["position"]).tolist()
    feat = _ints(nodes["feature"]).tolist()
    tok = _ints(nodes["token_id"]).tolist()
    act = nodes["activation"].to_numpy(dtype=np.float64, na_value=np.nan).tolist()
    prob_col = nodes["probability"] if "probability" in nodes.columns else pd.Series([np.nan] * n)
    prob = prob_col.to_numpy(dtype=np.float64, na_value=np.nan).tolist()
    text = nodes["token"].astype(object).tolist() if "token" in nodes.columns else [None] * n
    labels = nodes["label"].astype(object).tolist() if "label" in nodes.columns else [None] * n
    logit_rank = np.cumsum(np.isin(kind, TARGET_KINDS)) - 1
    virtual = [int(i.split("_")[1]) if k == "target" else 0 for i, k in zip(ids, kind, strict=True)]

    out_nodes = []
    for i in rows.tolist():
        k = kind[i]
        node: dict[str, Any] = {
            "node_id": ids[i],
            "feature": None,
            "layer": str(layer[i]),
            "ctx_idx": pos[i],
            "feature_type": "",
            "token_prob": 0.0,
            "is_target_logit": False,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "jsNodeId": js[i],
            "clerp": "",
            "influence": _optional_float(cum[i]),
            "activation": None,
        }
        if k == "feature":
            node.update(
                feature=_cantor(layer[i], feat[i]),
                feature_type="cross layer transcoder",
                activation=_optional_float(act[i]),
            )
        elif k == "error":
            node.update(feature=-1, feature_type="mlp reconstruction error")
        elif k == "token":
            node.update(feature=pos[i], layer="E", feature_type="embedding")
        elif k == "target":  # a custom target: a logit node with a virtual token id (reference)
            node.update(
                feature=virtual[i],
                layer=str(n_layers + 1),
                feature_type="logit",
                token_prob=0.0,
                is_target_logit=bool(logit_rank[i] == 0),
                clerp=f"Target: {labels[i]}",
                influence=None,
            )
        else:
            p = _optional_float(prob[i]) or 0.0
            label = _token_text(text[i], tok[i])
            node.update(
                feature=tok[i],
                layer=str(n_layers + 1),
                feature_type="logit",
                token_prob=p,
                is_target_logit=bool(logit_rank[i] == 0),
                clerp=f'Output "{label}" (p={p:.3f})',
                influence=None,
            )
        out_nodes.append(node)
    return out_nodes


def _check_view(
    pinned_ids: Any, supernodes: Any, exported: set[str], n_layers: int
) -> tuple[list[str], list[list[str]]]:
    """``pinned_ids`` and ``supernodes`` as lists, or a ``ValueError`` naming each bad entry."""
    for name, value in (("pinned_ids", pinned_ids), ("supernodes", supernodes)):
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, set, frozenset)):
            raise ValueError(
                f"{name} must be a list, got {type(value).__name__} {value!r:.60}"
                + (" (a list of node ids, not one string)" if isinstance(value, str) else "")
            )
    pinned = list(pinned_ids)
    groups: list[list[str]] = []
    for i, group in enumerate(supernodes):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise ValueError(
                f"supernodes[{i}] must be a list [label, node_id, ...], got {group!r:.60}"
            )
        group = list(group)
        if not group or not isinstance(group[0], str) or not group[0].strip():
            raise ValueError(
                f"supernodes[{i}] must start with a non-empty string label: [label, node_id, ...], "
                f"got {group!r:.60}"
            )
        groups.append(group)
    entries = [(f"pinned_ids[{i}]", x) for i, x in enumerate(pinned)]
    entries += [
        (f"supernodes[{i}][{j}]", x) for i, g in enumerate(groups) for j, x in enumerate(g) if j
    ]
    unknown = []
    for where, x in entries:
        if isinstance(x, str) and x in exported:
            continue
        try:
            parse_node_id(x, n_layers=n_layers)
            reason = "a valid id, but not an exported node"
        except ValueError as e:
            reason = str(e)
        unknown.append(f"{where} {x!r:.60} ({reason})")
    if unknown:
        raise ValueError(
            f"pinned / supernode ids not among the exported nodes: {'; '.join(unknown[:5])}"
            + (f"; and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    return pinned, groups


def _document_metadata(
    graph: AttributionGraph,
    slug: str,
    scan: str,
    source_set: str | None,
    source_urls: list[str],
    prompt_tokens: Sequence[str] | None,
) -> dict[str, Any]:
    """The document's ``metadata``: prompt, scan, feature source, generation and pruning settings."""
    nodes = graph.nodes
    kind = nodes["kind"].astype(str).to_numpy()
    if prompt_tokens is None:
        pos = _ints(nodes["position"]).tolist()
        tok = _ints(nodes["token_id"]).tolist()
        text = (
            nodes["token"].astype(object).tolist()
            if "token" in nodes.columns
            else [None] * len(pos)
        )
        by_pos = {
            pos[i]: _token_text(text[i], tok[i]) for i in np.flatnonzero(kind == "token").tolist()
        }
        token_strings = [by_pos[p] for p in sorted(by_pos)]
    else:
        token_strings = [str(t) for t in prompt_tokens]
    tokens_meta = graph.metadata.get("tokens")
    if tokens_meta is not None and len(tokens_meta) != len(token_strings):
        logger.warning(
            "%d prompt token strings for %d prompt tokens", len(token_strings), len(tokens_meta)
        )
    prompt = graph.metadata.get("prompt")
    if not isinstance(prompt, str):
        prompt = "".join(token_strings)
    pruning = graph.metadata.get("pruning") or {}
    settings = graph.metadata.get("settings") or {}
    metadata: dict[str, Any] = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [],
        "prompt_tokens": token_strings,
        "prompt": prompt,
        "node_threshold": pruning.get("node_threshold"),
        "schema_version": 1,
        "info": {
            "source_urls": source_urls,
            "generator": {"name": "sae_circuits", "version": __version__},
        },
        "generation_settings": {
            k: settings[k] for k in _SETTINGS_KEYS if settings.get(k) is not None
        },
        "pruning_settings": {
            k: pruning[k] for k in ("node_threshold", "edge_threshold") if k in pruning
        },
    }
    if metadata["node_threshold"] is None:  # (optional in the schema, a number when present)
        del metadata["node_threshold"]
    if source_set is not None:
        metadata["feature_details"] = {"neuronpedia_source_set": source_set}
    return metadata


def save_neuronpedia(
    graph: AttributionGraph, path: str | os.PathLike[str], *, slug: str, **kwargs: Any
) -> Path:
    """Write :func:`to_neuronpedia` as JSON, atomically.

    Args:
        graph: The graph (usually pruned).
        path: A ``.json`` file, or an existing folder (then ``{slug}.json`` inside it).
        slug: The graph's name on Neuronpedia.
        **kwargs: Passed to :func:`to_neuronpedia`.

    Returns:
        The file written.
    """
    doc = to_neuronpedia(graph, slug=slug, **kwargs)
    path = Path(path)
    if path.is_dir():
        path = path / f"{slug}.json"
    data = json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")
    out = atomic_write(path, lambda f: f.write(data))
    logger.info(
        "wrote Neuronpedia graph %s (%d nodes, %d links)", out, len(doc["nodes"]), len(doc["links"])
    )
    return out


def _import_networkx() -> Any:
    try:
        import networkx
    except ImportError as e:
        raise ImportError(
            "to_networkx() needs networkx, an optional dependency: pip install sae-circuits[networkx]"
        ) from e
    return networkx


def _python(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def to_networkx(graph: AttributionGraph) -> networkx.DiGraph:
    """The graph as a ``networkx.DiGraph``.

    Node ``i`` carries row ``i`` of ``graph.nodes`` as attributes (missing values as ``None``,
    ``kind`` as a string); every stored edge becomes ``source -> target`` with attribute
    ``weight``; ``G.graph`` holds a copy of ``graph.metadata``.

    Raises:
        ImportError: networkx is not installed (``pip install sae-circuits[networkx]``).
    """
    nx = _import_networkx()
    g = nx.DiGraph()
    g.graph.update(dict(graph.metadata))
    nodes = graph.nodes
    columns = {c: nodes[c].astype(object).tolist() for c in nodes.columns}
    names = list(columns)
    for i, row in enumerate(zip(*columns.values(), strict=True)):
        g.add_node(i, **{k: _python(v) for k, v in zip(names, row, strict=True)})
    if not names:
        g.add_nodes_from(range(graph.n_nodes))
    coo = graph.adjacency.tocoo()
    g.add_weighted_edges_from(
        zip(coo.col.tolist(), coo.row.tolist(), coo.data.astype(np.float64).tolist(), strict=True)
    )
    return g
