"""Two graphs side by side: the difference document the viewer draws for ``serve A B``.

Nodes and links are matched by node id (Neuronpedia's ``layer_feature_position``,
``E_token_position``, ...): a feature active in both prompts at the same position is the same
node. The difference document holds every node and link of either graph, each marked
``compare``: ``"a"`` (only in the first), ``"b"`` (only in the second) or ``"both"``. Nodes of
both graphs carry the second graph's fields with ``activation_a`` / ``node_influence_a`` added;
links carry ``weight_a`` and ``weight_b`` (``null`` where absent) and ``weight`` =
``weight_b - weight_a`` (a missing side counts as 0), the change the page draws (width ~
``|change|``, colour = its sign). ``metadata.viewer.compare`` holds both graphs' prompts and
sizes and the counts (nodes and links only in each, links whose weight changed by more than
``rtol`` of the larger ``|weight|``).

Example:
    >>> a = GraphSource("out/dallas").document()
    >>> b = GraphSource("out/oakland").document()
    >>> diff = compare_documents(a, b)
    >>> diff["metadata"]["viewer"]["compare"]["counts"]
    {"nodes_only_a": 12, "nodes_only_b": 15, "nodes_both": 70, ...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["COMPARE_RTOL", "compare_documents"]

#: A link of both graphs "changed" when its weights differ by more than this share of the
#: larger ``|weight|`` (far above float32 rounding, below any change worth looking at).
COMPARE_RTOL = 1e-3


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _side(doc: Mapping[str, Any]) -> dict[str, Any]:
    meta = doc.get("metadata") or {}
    prompt = meta.get("prompt")
    return {
        "slug": meta.get("slug"),
        "prompt": prompt if isinstance(prompt, str) else None,
        "prompt_tokens": meta.get("prompt_tokens"),
        "n_nodes": len(doc.get("nodes", [])),
        "n_links": len(doc.get("links", [])),
    }


def compare_documents(
    a: Mapping[str, Any], b: Mapping[str, Any], *, rtol: float = COMPARE_RTOL
) -> dict[str, Any]:
    """The difference document of two viewer documents (see the module docstring).

    Args:
        a: The first graph's document (``GraphSource.document()``).
        b: The second graph's document.
        rtol: Relative change above which a link of both graphs counts as changed.

    Returns:
        A viewer document (``nodes``, ``links``, ``metadata``) of the union, with ``compare``
        marks; its metadata is the second graph's with ``viewer.compare`` added.

    Raises:
        ValueError: The graphs have different numbers of layers (they cannot be of one model).
    """
    meta_a = a.get("metadata") or {}
    meta_b = b.get("metadata") or {}
    layers = [(m.get("sae_circuits") or {}).get("n_layers") for m in (meta_a, meta_b)]
    if None not in layers and layers[0] != layers[1]:
        raise ValueError(
            f"the graphs have {layers[0]} and {layers[1]} layers: compare graphs of one model "
            "and one transcoder set"
        )
    nodes_a = {n["node_id"]: n for n in a["nodes"]}
    nodes_b = {n["node_id"]: n for n in b["nodes"]}
    nodes: list[dict[str, Any]] = []
    for nid, node in nodes_b.items():
        other = nodes_a.get(nid)
        out = dict(node)
        out["compare"] = "both" if other is not None else "b"
        out["activation_a"] = _num(other.get("activation")) if other is not None else None
        out["node_influence_a"] = _num(other.get("node_influence")) if other is not None else None
        nodes.append(out)
    for nid, node in nodes_a.items():
        if nid not in nodes_b:
            nodes.append({**node, "compare": "a", "activation_a": _num(node.get("activation"))})
    weights: dict[tuple[str, str], list[float | None]] = {}
    for which, doc in ((0, a), (1, b)):
        for link in doc["links"]:
            key = (link["source"], link["target"])
            weights.setdefault(key, [None, None])[which] = _num(link.get("weight"))
    links = []
    changed = 0
    for (source, target), (wa, wb) in weights.items():
        mark = "both" if wa is not None and wb is not None else ("a" if wb is None else "b")
        delta = (wb or 0.0) - (wa or 0.0)
        if mark == "both":
            big = max(abs(wa or 0.0), abs(wb or 0.0))
            if abs(delta) > rtol * big:
                changed += 1
        links.append(
            {
                "source": source,
                "target": target,
                "weight": delta,
                "weight_a": wa,
                "weight_b": wb,
                "compare": mark,
            }
        )
    marks = [n["compare"] for n in nodes]
    link_marks = [link["compare"] for link in links]
    counts = {
        "nodes_only_a": marks.count("a"),
        "nodes_only_b": marks.count("b"),
        "nodes_both": marks.count("both"),
        "links_only_a": link_marks.count("a"),
        "links_only_b": link_marks.count("b"),
        "links_both": link_marks.count("both"),
        "links_changed": changed,
    }
    viewer = dict(meta_b.get("viewer") or {})
    viewer["can_reprune"] = bool(viewer.get("can_reprune")) and bool(
        (meta_a.get("viewer") or {}).get("can_reprune")
    )
    viewer["compare"] = {"a": _side(a), "b": _side(b), "counts": counts, "rtol": rtol}
    metadata = {**meta_b, "viewer": viewer}
    return {"nodes": nodes, "links": links, "metadata": metadata}
