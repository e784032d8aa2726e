"""What ``attribute`` and ``demo`` print and write: the summary and the graph folder."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sae_circuits.cli._common import CLIError, short
from sae_circuits.graph import node_id

if TYPE_CHECKING:
    import pandas as pd

    from sae_circuits.attribution import QKAttribution
    from sae_circuits.graph import AttributionGraph

_GRAPH_FILES = ("graph.zip", "pruned.zip", "graph.json")


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"output {str(out)!r} exists and is not a folder")
    existing = [n for n in _GRAPH_FILES if (out / n).exists()]
    if existing and not overwrite:
        raise CLIError(
            f"{str(out)!r} already holds a graph ({', '.join(existing)}); pass --overwrite to "
            "replace it (annotations.json is kept) or choose another folder"
        )


def _describe(row: Any) -> str:
    kind = str(row["kind"])
    if kind == "feature":
        return f"L{row['layer']} #{row['feature']} @{row['position']}"
    if kind == "error":
        return f"error L{row['layer']} @{row['position']}"
    return f"{kind} {row['token']!s}@{row['position']}"


def _fmt(x: Any, spec: str = ".3f") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return format(v, spec) if math.isfinite(v) else "nan"


def print_targets(graph: AttributionGraph) -> None:
    """Print the graph's targets: label, kind, position (and hook), value (and probability)."""
    rows = []
    for _, row in graph.targets.iterrows():
        where = f"@{row['position']}" + ("" if _missing(row["hook"]) else f" {row['hook']}")
        prob = "" if _missing(row["probability"]) else f"  p={_fmt(row['probability'])}"
        rows.append((str(row["label"]), str(row["kind"]), where, _fmt(row["value"], ".4g"), prob))
    width = [min(max((len(r[i]) for r in rows), default=0), 40) for i in range(3)]
    print("targets:")
    for label, kind, where, value, prob in rows:
        print(
            f"  {label:<{width[0]}}  {kind:<{width[1]}}  {where:<{width[2]}}  value={value}{prob}"
        )


def _missing(x: Any) -> bool:
    import pandas as pd

    return x is None or bool(pd.isna(x))


def print_summary(
    graph: AttributionGraph,
    pruned: AttributionGraph,
    labels: dict[str, str],
    top: int = 10,
    *,
    targets: bool = False,
) -> None:
    """Print the targets (``targets``: given ones) or top logits, sizes, scores and the most
    influential features."""
    if targets:
        print_targets(graph)
    else:
        print("top logits:")
        for token, prob in zip(graph.logits["token"], graph.logits["probability"], strict=True):
            print(f"  {token!s:>12}  p={prob:.3f}")
    for name, g in (("graph", graph), ("pruned", pruned)):
        counts = g.nodes["kind"].value_counts()
        kinds = ("feature", "error", "token", "logit", *(("target",) if "target" in counts else ()))
        parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in kinds)
        try:
            scores = g.scores()
            shown = (
                f"replacement {_fmt(scores.replacement)}, completeness {_fmt(scores.completeness)}"
            )
        except ValueError as e:
            shown = f"no scores ({e})"
        print(f"{name}: {g.n_nodes} nodes ({parts}), {g.adjacency.nnz} edges; {shown}")
    feats = cast("pd.DataFrame", pruned.nodes[pruned.nodes["kind"] == "feature"])
    if len(feats):
        print(f"top features by influence (of {len(feats)} kept):")
        for _, row in feats.nlargest(top, "influence").iterrows():
            layer, feature, position = (int(row[c]) for c in ("layer", "feature", "position"))  # type: ignore[arg-type]
            key = node_id("feature", layer=layer, feature=feature, position=position)
            label = f"  {labels[key]}" if key in labels else ""
            print(
                f"  {_describe(row):<18} act={_fmt(row['activation'])}  "
                f"influence={_fmt(row['influence'], '.3g')}{label}"
            )


def write_folder(
    out: Path,
    graph: AttributionGraph,
    node_threshold: float,
    edge_threshold: float,
    *,
    slug: str | None,
    labels: dict[str, str],
    head_loadings: Callable[[AttributionGraph], pd.DataFrame] | None = None,
    attention: Callable[[AttributionGraph, pd.DataFrame], list[QKAttribution] | None] | None = None,
) -> AttributionGraph:
    """Prune ``graph`` and write the folder; ``head_loadings(pruned)``, when given, computes the
    pruned graph's head loadings for it, and ``attention(pruned, loadings)`` the QK attributions
    to save with them (``None``: none)."""
    from sae_circuits.viewer import default_slug, write_graph_folder

    try:
        pruned = graph.prune(node_threshold, edge_threshold)
    except ValueError as e:
        raise CLIError(f"cannot prune the graph: {short(e)}", code=1) from e
    loads = None
    if head_loadings is not None:
        start = time.perf_counter()
        try:
            loads = head_loadings(pruned)
        except (ValueError, TypeError) as e:
            raise CLIError(f"cannot compute the head loadings: {short(e)}", code=1) from e
        n_edges = loads.groupby(["source", "target"]).ngroups if len(loads) else 0
        print(
            f"head loadings: {n_edges} of {pruned.adjacency.nnz} edges of the pruned graph split "
            f"over the heads that carry them ({len(loads)} parts) in "
            f"{time.perf_counter() - start:.1f} s"
        )
    qks = attention(pruned, loads) if attention is not None and loads is not None else None
    slug = slug or default_slug(graph.metadata.get("prompt"))
    try:
        files = write_graph_folder(
            out, graph, pruned, slug=slug, labels=labels, head_loadings=loads, attention=qks
        )
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot write the graph folder {str(out)!r}: {short(e)}", code=1) from e
    written = [files.graph, files.pruned, files.document, files.head_loadings, files.attention]
    print(f"wrote {', '.join(str(f) for f in written if f is not None)}")
    return pruned
