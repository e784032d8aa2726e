"""The graph folder the viewer serves, and the JSON document it draws.

A *graph folder* (what ``sae-circuits attribute -o OUT`` writes) holds:

============================  =====================================================================
``graph.zip``                 the full graph (:meth:`AttributionGraph.save`); lets the page re-prune
                              at other thresholds
``pruned.zip``                the pruned graph at the thresholds given on the command line
``graph.json``                the viewer document of the pruned graph: Neuronpedia's graph JSON
                              (:func:`sae_circuits.graph.to_neuronpedia`, uploadable as is) plus
                              the fields below
``head_loadings.csv``         optional: the pruned graph's edges split over the attention heads
                              that carry them (:func:`sae_circuits.head_loadings`, node indices of
                              ``pruned.zip`` plus the node ids), see below
``attention.json``            optional: QK attributions (:func:`sae_circuits.attribute_attention`)
                              of some heads at some (query, key) positions, see below
``annotations.json``          the user's labels, supernodes and pins (written by the viewer, see
                              :mod:`sae_circuits.viewer.annotations`)
============================  =====================================================================

Any one of the first three is enough to view a graph; ``graph.json`` may also be a plain
Neuronpedia graph JSON. The viewer document adds to each node of Neuronpedia's format
``kind`` (``feature``, ``error``, ``token``, ``logit``), ``layer_index``, ``position``,
``feature_index`` (the feature's index in its transcoder, where Neuronpedia's ``feature`` is
Cantor-paired), ``token``, ``node_influence`` (the node's own influence on the logits, where
``influence`` is the cumulative share) and ``neuronpedia_url`` (when the transcoders carry
Neuronpedia ids); and a ``metadata.sae_circuits`` block with the layer count, model, thresholds,
sizes before pruning and the replacement / completeness scores.

With head loadings (``write_graph_folder(..., head_loadings=sc.head_loadings(model, prompt,
transcoders, pruned))``) each link that has some gets ``heads``: its parts, largest ``|loading|``
first, at most :data:`MAX_HEADS`, each ``{"layer", "head", "loading", "share"}`` (``share`` =
``loading / weight``; ``layer`` and ``head`` are ``null`` for the direct part, the part that goes
through no head), and ``metadata.sae_circuits.head_loadings`` says so (``{"n_links",
"max_heads"}``; ``null`` without). Neuronpedia's graph format has no place for per-edge heads:
they live only in the viewer document (``to_neuronpedia`` writes none). A document re-pruned at
other thresholds takes them from ``head_loadings.csv``, matched by node ids and weight: the links
that were in the written pruned graph keep their heads, the others (never computed) have none.

With QK attributions (``write_graph_folder(..., attention=[sc.attribute_attention(...), ...])``)
the folder gets ``attention.json``: ``{"format": "sae_circuits.attention", "version": 1,
"max_rows", "prompt", "tokens", "records"}``, one record per attribution with ``layer``,
``head``, ``query``, ``key``, ``score``, ``pattern``, ``residual`` (the score minus the pairs
listed, so the listed pairs plus ``residual`` make the score), ``pairs``, ``query_side``,
``key_side`` (the first :data:`MAX_QK_ROWS` rows of each table, columns as in
:class:`sae_circuits.QKAttribution`, missing values ``null``), ``n_pairs``, ``n_query_side``,
``n_key_side`` (the tables' full lengths), ``query_side_rest`` / ``key_side_rest`` (the score
minus the side's listed rows) and ``settings`` (hooks, ``attn_scale``, ``kv_head``,
``attention_sink``, ``top_pairs``). ``metadata.sae_circuits.attention`` of the written document
says so (``{"file", "n_records", "max_rows"}``; ``null`` without), and the server adds
``metadata.viewer.attention`` (``{"n_records"}`` or ``null``) from the file the folder holds
when the document is asked for. Neither ``graph.zip`` nor Neuronpedia's graph format has a place
for them: they live only in ``attention.json``.

Example:
    >>> pruned = graph.prune(0.8, 0.98)
    >>> write_graph_folder("out", graph, pruned, slug="dallas")
    >>> source = GraphSource("out")
    >>> source.document(node_threshold=0.6)["nodes"][0]["node_id"]
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from sae_circuits._version import __version__
from sae_circuits.core.files import atomic_write
from sae_circuits.graph import (
    TARGET_KINDS,
    check_threshold,
    node_ids,
    node_influence,
    parse_node_id,
    to_neuronpedia,
)
from sae_circuits.viewer.security import resolve_inside

if TYPE_CHECKING:
    from sae_circuits.attribution import QKAttribution
    from sae_circuits.graph import AttributionGraph, GraphPruner, GraphScores

__all__ = [
    "ATTENTION_FILE",
    "DOCUMENT_FILE",
    "GRAPH_FILE",
    "HEAD_LOADINGS_FILE",
    "MAX_HEADS",
    "MAX_QK_ROWS",
    "PRUNED_FILE",
    "GraphFolderError",
    "GraphFolderFiles",
    "GraphSource",
    "build_document",
    "default_slug",
    "write_graph_folder",
]

logger = logging.getLogger(__name__)

GRAPH_FILE = "graph.zip"
PRUNED_FILE = "pruned.zip"
DOCUMENT_FILE = "graph.json"
HEAD_LOADINGS_FILE = "head_loadings.csv"
ATTENTION_FILE = "attention.json"
#: The most rows of each table (pairs, query side, key side) a record of ``attention.json`` keeps.
MAX_QK_ROWS = 20
_ATTENTION_FORMAT = "sae_circuits.attention"
_QK_TABLES = ("pairs", "query_side", "key_side")
#: The most head parts a link of the document carries (the largest ``|loading|`` first).
MAX_HEADS = 5
DEFAULT_THRESHOLDS = (0.8, 0.98)
_KIND_BY_TYPE = {
    "cross layer transcoder": "feature",
    "mlp reconstruction error": "error",
    "embedding": "token",
    "logit": "logit",
}


class GraphFolderError(ValueError):
    """A folder that holds no viewable graph, or a request it cannot answer."""


@dataclass(frozen=True)
class GraphFolderFiles:
    """The files :func:`write_graph_folder` wrote.

    Attributes:
        folder: The graph folder.
        graph: The full graph (``graph.zip``), or ``None`` when not written.
        pruned: The pruned graph (``pruned.zip``).
        document: The viewer / Neuronpedia document (``graph.json``).
        head_loadings: The head loadings (``head_loadings.csv``), or ``None`` when not given.
        attention: The QK attributions (``attention.json``), or ``None`` when not given.
    """

    folder: Path
    graph: Path | None
    pruned: Path
    document: Path
    head_loadings: Path | None = None
    attention: Path | None = None


def default_slug(prompt: Any) -> str:
    """A Neuronpedia-style slug from a prompt: ``"The capital of"`` -> ``"the-capital-of"``."""
    text = prompt if isinstance(prompt, str) else ""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60].strip("-")
    return slug or "graph"


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _scores(scores: GraphScores | Mapping[str, float] | None) -> dict[str, float | None] | None:
    if scores is None:
        return None
    return {k: _finite(scores[k]) for k in ("replacement", "completeness")}


def _default_scan(graph: AttributionGraph) -> str | None:
    ids = (graph.metadata.get("transcoders") or {}).get("neuronpedia_ids") or []
    valid = bool(ids) and all(isinstance(i, str) and "/" in i for i in ids)
    if valid and len({i.split("/", 1)[0] for i in ids}) == 1:
        return None  # to_neuronpedia derives the Neuronpedia model id
    name = graph.metadata.get("model_name")
    return name if isinstance(name, str) and name else "local"


def _column(nodes: Any, name: str, n: int) -> list[Any]:
    if name not in nodes.columns:
        return [None] * n
    return nodes[name].to_numpy(dtype=np.float64, na_value=np.nan).tolist()


def _optional_int(v: Any) -> int | None:
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else int(v)


#: Head parts by link (source id, target id): (the edge's weight, [(layer, head, loading), ...]),
#: the largest ``|loading|`` first, at most ``MAX_HEADS``; layer and head ``None`` for the direct
#: part.
_LinkHeads = dict[tuple[str, str], tuple[float, list[tuple[int | None, int | None, float]]]]
_LOADING_COLUMNS = ("source", "target", "weight", "layer", "head", "loading")


def _same_weight(a: float, b: float) -> bool:
    """The same edge weight, also after a trip through text (float32 weights, 1e-5 relative)."""
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b))


def _nullable_ints(table: pd.DataFrame, name: str) -> np.ndarray:
    """A column of whole numbers or missing values as an object array of ``int`` / ``None``."""
    column = cast("pd.Series", table[name]).astype("Int64")
    return np.array([None if v is pd.NA else int(v) for v in column.tolist()], dtype=object)


def _head_columns(table: pd.DataFrame, what: str) -> tuple[np.ndarray, ...]:
    """``weight``, ``layer``, ``head`` (object arrays, ``None`` for the direct part), ``loading``
    of a loadings table, checked."""
    missing = [c for c in _LOADING_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{what} lacks column(s) {missing}; expected the table of sae_circuits.head_loadings "
            f"({', '.join(_LOADING_COLUMNS)})"
        )
    weight = table["weight"].to_numpy(dtype=np.float64)
    loading = table["loading"].to_numpy(dtype=np.float64)
    if not (np.isfinite(weight).all() and np.isfinite(loading).all()):
        raise ValueError(f"{what} holds non-finite weights or loadings")
    try:
        layer = _nullable_ints(table, "layer")
        head = _nullable_ints(table, "head")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: layer and head must be whole numbers or missing ({e})") from e
    if any((a is None) != (b is None) for a, b in zip(layer, head, strict=True)):
        raise ValueError(f"{what}: a row has a layer without a head or a head without a layer")
    return weight, layer, head, loading


def _link_heads(
    source_ids: Sequence[str] | np.ndarray,
    target_ids: Sequence[str] | np.ndarray,
    weight: np.ndarray,
    layer: np.ndarray,
    head: np.ndarray,
    loading: np.ndarray,
) -> _LinkHeads:
    """The largest ``MAX_HEADS`` parts of each edge (rows of one edge share their ids)."""
    sources = np.asarray(source_ids, dtype=object)
    targets = np.asarray(target_ids, dtype=object)
    s_code = pd.factorize(sources)[0]
    t_code = pd.factorize(targets)[0]
    order = np.lexsort((-np.abs(loading), t_code, s_code))  # by edge, largest |loading| first
    first = np.ones(len(order), dtype=bool)
    first[1:] = (s_code[order][1:] != s_code[order][:-1]) | (
        t_code[order][1:] != t_code[order][:-1]
    )
    starts = np.flatnonzero(first)
    rank = np.arange(len(order)) - starts[np.cumsum(first) - 1]
    out: _LinkHeads = {}
    for i in order[rank < MAX_HEADS].tolist():
        key = (str(sources[i]), str(targets[i]))
        entry = out.get(key)
        if entry is None:
            entry = out[key] = (float(weight[i]), [])
        lay, hd = layer[i], head[i]
        entry[1].append(
            (None if lay is None else int(lay), None if hd is None else int(hd), float(loading[i]))
        )
    return out


def _graph_heads(graph: AttributionGraph, table: pd.DataFrame) -> _LinkHeads:
    """``_LinkHeads`` of ``sc.head_loadings(..., graph)``'s table, checked against ``graph``."""
    what = "head_loadings"
    weight, layer, head, loading = _head_columns(table, what)
    try:
        src = table["source"].to_numpy(dtype=np.int64)
        tgt = table["target"].to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: source and target must be node indices ({e})") from e
    n = graph.n_nodes
    bad = (src < 0) | (src >= n) | (tgt < 0) | (tgt >= n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} has an edge ({src[i]} -> {tgt[i]}) with a node outside the pruned graph's "
            f"0..{n - 1}: compute them on the pruned graph written, with its node indices: "
            "sc.head_loadings(model, prompt, transcoders, pruned)"
        )
    have = np.asarray(graph.adjacency.tocsr()[tgt, src], dtype=np.float64).ravel()
    off = (have == 0) | (np.abs(have - weight) > 1e-5 * np.maximum(np.abs(have), np.abs(weight)))
    if off.any():
        i = int(np.flatnonzero(off)[0])
        why = "not an edge of the pruned graph" if have[i] == 0 else "another weight there"
        raise ValueError(
            f"{what} has a row for ({src[i]} -> {tgt[i]}) with weight {weight[i]:.6g}, which is "
            f"{why}: compute them on the pruned graph written, with its node indices: "
            "sc.head_loadings(model, prompt, transcoders, pruned)"
        )
    ids, _ = node_ids(graph)
    return _link_heads(
        [ids[i] for i in src.tolist()], [ids[i] for i in tgt.tolist()], have, layer, head, loading
    )


def _read_head_loadings(path: str | Path) -> _LinkHeads:
    """The ``_LinkHeads`` of a folder's ``head_loadings.csv`` (matched to links by node ids).

    Raises:
        ValueError: The file is not such a table (missing columns, bad values).
        OSError: It cannot be read.
    """
    try:
        table = pd.read_csv(path, dtype={"source_id": "string", "target_id": "string"})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a CSV table ({e})") from e
    what = str(path)
    for column in ("source_id", "target_id"):
        if column not in table.columns or cast("pd.Series", table[column]).isna().any():
            raise ValueError(f"{what} needs node ids in '{column}' on every row")
    weight, layer, head, loading = _head_columns(table, what)
    keep = weight != 0
    return _link_heads(
        table["source_id"].to_numpy(dtype=object)[keep],
        table["target_id"].to_numpy(dtype=object)[keep],
        weight[keep],
        layer[keep],
        head[keep],
        loading[keep],
    )


def _attach_heads(doc: dict[str, Any], heads: _LinkHeads) -> None:
    """Give each link of ``doc`` that has head parts in ``heads`` (same ids, same weight) its
    ``heads``, and record them in ``metadata.sae_circuits.head_loadings``."""
    n = stale = 0
    for link in doc["links"]:
        got = heads.get((link["source"], link["target"]))
        if got is None:
            continue
        weight, parts = got
        w = float(link["weight"])
        if w == 0 or not _same_weight(w, weight):
            stale += 1
            continue
        link["heads"] = [
            {"layer": lay, "head": hd, "loading": x, "share": x / w} for lay, hd, x in parts
        ]
        n += 1
    if stale:
        logger.warning(
            "%d link(s) have another weight in the head loadings (written for another graph?); "
            "they are shown without heads",
            stale,
        )
    doc["metadata"]["sae_circuits"]["head_loadings"] = {"n_links": n, "max_heads": MAX_HEADS}


def _loadings_csv(graph: AttributionGraph, table: pd.DataFrame) -> bytes:
    """``head_loadings.csv``: the table with the node ids of its (pruned-graph) node indices."""
    ids, _ = node_ids(graph)
    src = table["source"].to_numpy(dtype=np.int64)
    tgt = table["target"].to_numpy(dtype=np.int64)
    layer = _nullable_ints(table, "layer")
    out = pd.DataFrame(
        {
            "source": src,
            "target": tgt,
            "source_id": [ids[i] for i in src.tolist()],
            "target_id": [ids[i] for i in tgt.tolist()],
            "weight": table["weight"].to_numpy(dtype=np.float64),
            "layer": pd.array(layer.tolist(), dtype="Int64"),
            "head": pd.array(_nullable_ints(table, "head").tolist(), dtype="Int64"),
            "part": ["direct" if v is None else "head" for v in layer.tolist()],
            "loading": table["loading"].to_numpy(dtype=np.float64),
        }
    )
    return out.to_csv(index=False).encode("utf-8")


# -- QK attributions (attention.json) ----------------------------------------------------------


def _json_value(v: Any) -> Any:
    """A table cell as JSON: ``None`` for missing values (and non-finite floats)."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _finite(v)
    return v if isinstance(v, str) else str(v)


def _json_rows(table: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of ``table`` as JSON objects (column name -> cell)."""
    columns = [str(c) for c in table.columns]
    return [
        {c: _json_value(v) for c, v in zip(columns, row, strict=True)}
        for row in table.iloc[:n].itertuples(index=False, name=None)
    ]


def _whole(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _table(qk: Any, name: str) -> pd.DataFrame:
    table = getattr(qk, name, None)
    return table if isinstance(table, pd.DataFrame) else pd.DataFrame()


def _contributions(table: pd.DataFrame, what: str, ids: tuple[str, ...]) -> np.ndarray:
    """The ``contribution`` column of a QK table, checked to have ``ids`` and finite values."""
    missing = [c for c in (*ids, "contribution") if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")
    values = table["contribution"].to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(values).all():
        raise ValueError(f"{what} holds non-finite contributions")
    return values


def _qk_record(qk: QKAttribution, what: str) -> dict[str, Any]:
    """One record of ``attention.json`` (see the module docstring), checked."""
    where: dict[str, int] = {}
    for name in ("layer", "head", "query", "key"):
        v: Any = getattr(qk, name, None)
        if not _whole(v) or int(v) < 0:
            raise ValueError(
                f"{what}.{name} must be a whole number >= 0, got {v!r} (expected a "
                "QKAttribution of sae_circuits.attribute_attention)"
            )
        where[name] = int(v)
    score, residual = _finite(getattr(qk, "score", None)), _finite(getattr(qk, "residual", None))
    if score is None or residual is None:
        raise ValueError(f"{what}: score and residual must be finite numbers")
    tables = {name: _table(qk, name) for name in _QK_TABLES}
    pairs = _contributions(tables["pairs"], f"{what}.pairs", ("query_node", "key_node"))
    sides = {
        name: _contributions(tables[name], f"{what}.{name}", ("node",))
        for name in ("query_side", "key_side")
    }
    meta = getattr(qk, "metadata", None)
    meta = meta if isinstance(meta, Mapping) else {}
    hooks = meta.get("hooks")
    settings = {
        "hooks": (
            {str(k): str(v) for k, v in hooks.items()} if isinstance(hooks, Mapping) else None
        ),
        **{k: _json_value(meta.get(k)) for k in ("attn_scale", "kv_head", "attention_sink")},
        "top_pairs": _json_value(meta.get("top_pairs")),
    }
    record: dict[str, Any] = {
        **where,
        "score": score,
        "pattern": _finite(getattr(qk, "pattern", None)),
        # the pairs left out of the file join the pairs never listed
        "residual": residual + float(pairs[MAX_QK_ROWS:].sum()),
        "n_pairs": len(pairs),
        "pairs": _json_rows(tables["pairs"], MAX_QK_ROWS),
    }
    for name, values in sides.items():
        record[f"n_{name}"] = len(values)
        record[name] = _json_rows(tables[name], MAX_QK_ROWS)
        record[f"{name}_rest"] = score - float(values[:MAX_QK_ROWS].sum())
    record["settings"] = settings
    return record


def _attention_json(graph: AttributionGraph, attention: Sequence[QKAttribution]) -> bytes:
    """``attention.json`` of QK attributions of ``graph``'s prompt, checked.

    Raises:
        ValueError: Not a sequence of QK attributions, or one of another prompt (other tokens)
            or of a position outside it.
    """
    if isinstance(attention, (str, bytes, Mapping)) or not isinstance(attention, Sequence):
        raise ValueError(
            f"attention must be a list of QKAttribution (sae_circuits.attribute_attention), got "
            f"{type(attention).__name__}"
        )
    given = graph.metadata.get("tokens")
    tokens = [int(t) for t in given] if isinstance(given, (list, tuple)) else None
    records = []
    for i, qk in enumerate(attention):
        what = f"attention[{i}]"
        record = _qk_record(qk, what)
        meta = getattr(qk, "metadata", None)
        theirs = meta.get("tokens") if isinstance(meta, Mapping) else None
        if tokens is not None and theirs is not None and [int(t) for t in theirs] != tokens:
            raise ValueError(
                f"{what} is of another prompt ({len(theirs)} tokens, the graph's {len(tokens)}, "
                "or other ones): compute it with the graph's prompt"
            )
        n = len(tokens) if tokens is not None else None
        if n is not None and not (record["query"] < n and record["key"] < n):
            raise ValueError(
                f"{what}: query {record['query']} / key {record['key']} outside the prompt's "
                f"0..{n - 1}"
            )
        records.append(record)
    prompt = graph.metadata.get("prompt")
    data = {
        "format": _ATTENTION_FORMAT,
        "version": 1,
        "max_rows": MAX_QK_ROWS,
        "prompt": prompt if isinstance(prompt, str) else None,
        "tokens": tokens,
        "records": records,
    }
    return _dump(data)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _cell_ok(v: Any) -> bool:
    return (
        v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))
    )


def _check_attention(data: Any, what: str) -> dict[str, Any]:
    """The content of an ``attention.json``, checked to be what :func:`write_graph_folder` writes
    (the parts the page reads), or a :class:`GraphFolderError` naming the first fault."""
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise GraphFolderError(
            f"{what} is not a QK attribution file (expected a JSON object with a 'records' list, "
            "as write_graph_folder(..., attention=...) writes it)"
        )
    for i, record in enumerate(data["records"]):
        where = f"{what}: records[{i}]"
        if not isinstance(record, dict):
            raise GraphFolderError(f"{where} is not an object")
        for name in ("layer", "head", "query", "key"):
            v = record.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise GraphFolderError(f"{where}.{name} must be a whole number >= 0, got {v!r:.40}")
        for name, v in record.items():
            if name not in _QK_TABLES and name != "settings" and not _cell_ok(v):
                raise GraphFolderError(f"{where}.{name} must be a number, a string or null")
        for name in _QK_TABLES:
            rows = record.get(name, [])
            ids = ("query_node", "key_node") if name == "pairs" else ("node",)
            if not isinstance(rows, list):
                raise GraphFolderError(f"{where}.{name} must be a list")
            for j, row in enumerate(rows):
                ok = (
                    isinstance(row, dict)
                    and all(isinstance(row.get(c), str) for c in ids)
                    and all(_cell_ok(v) for v in row.values())
                )
                if not ok:
                    raise GraphFolderError(
                        f"{where}.{name}[{j}] must be an object of numbers, strings and nulls "
                        f"with string {' and '.join(repr(c) for c in ids)}"
                    )
    return data


def _read_attention(path: Path) -> dict[str, Any]:
    """An ``attention.json``, checked (:func:`_check_attention`).

    Raises:
        GraphFolderError: It cannot be read or is not such a file.
    """
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except OSError as e:
        raise GraphFolderError(f"{path} cannot be read ({e.strerror or e})") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        message = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise GraphFolderError(f"{path} is not valid JSON ({message})") from e
    return _check_attention(data, str(path))


def build_document(
    graph: AttributionGraph,
    *,
    slug: str = "graph",
    scan: str | None = None,
    labels: Mapping[str, str] | None = None,
    full_scores: GraphScores | Mapping[str, float] | None = None,
    head_loadings: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The viewer document of a (pruned) graph: Neuronpedia's graph JSON plus viewer fields.

    Args:
        graph: The graph, usually pruned (``influence`` / ``cumulative_influence`` are computed
            when missing).
        slug: Name of the graph (letters, digits, ``.``, ``_``, ``-``).
        scan: Neuronpedia model id; default from the transcoders' Neuronpedia ids, else the
            model name, else ``"local"``.
        labels: Feature labels by node id (Neuronpedia's ``clerp``), e.g. automatic labels.
        full_scores: Scores of the unpruned graph, recorded next to this graph's own.
        head_loadings: ``sc.head_loadings(model, prompt, transcoders, graph)`` (of this graph,
            with its node indices; a subset of its edges is fine): links get ``heads``.

    Returns:
        A JSON-able dict (see the module docstring).

    Raises:
        ValueError: Bad slug, the layer count is unknown (see ``to_neuronpedia``), or
            ``head_loadings`` are not of this graph's edges.
    """
    heads = _graph_heads(graph, head_loadings) if head_loadings is not None else None
    doc = to_neuronpedia(graph, slug=slug, scan=scan if scan is not None else _default_scan(graph))
    ids, _ = node_ids(graph)
    row = {nid: i for i, nid in enumerate(ids)}
    nodes = graph.nodes
    if "influence" in nodes.columns:
        influence = nodes["influence"].to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        influence = node_influence(graph.adjacency, graph.target_weights)
    kind = nodes["kind"].astype(str).tolist()
    layer = nodes["layer"].astype(object).tolist()
    position = nodes["position"].astype(object).tolist()
    feature = nodes["feature"].astype(object).tolist()
    token = (
        nodes["token"].astype(object).tolist() if "token" in nodes.columns else [None] * len(kind)
    )
    n_rows = len(kind)
    label = nodes["label"].astype(object).tolist() if "label" in nodes.columns else [None] * n_rows
    value = _column(nodes, "target_value", n_rows)
    weights = graph.target_weights.tolist()
    urls = doc["metadata"]["info"].get("source_urls") or []
    for node in doc["nodes"]:
        i = row[node["node_id"]]
        lay = _optional_int(layer[i])
        feat = _optional_int(feature[i])
        tok = token[i]
        node.update(
            # a custom target sits with the logits (as in Neuronpedia), marked by target_kind
            kind="logit" if kind[i] == "target" else kind[i],
            layer_index=lay,
            position=_optional_int(position[i]),
            feature_index=feat,
            token=label[i] if kind[i] == "target" else (tok if isinstance(tok, str) else None),
            node_influence=_finite(influence[i]),
        )
        if kind[i] in TARGET_KINDS:
            node.update(
                target_kind=kind[i], target_value=_finite(value[i]), target_weight=weights[i]
            )
        if kind[i] == "feature" and lay is not None and feat is not None and lay < len(urls):
            node["neuronpedia_url"] = f"{urls[lay]}/{feat}"
        if labels and not node["clerp"] and isinstance(labels.get(node["node_id"]), str):
            node["clerp"] = labels[node["node_id"]]
    try:
        own_scores = _scores(graph.scores())
    except ValueError:  # no usable logits
        own_scores = None
    meta = graph.metadata
    pruning = meta.get("pruning") or {}
    transcoders = meta.get("transcoders") or {}
    doc["metadata"]["sae_circuits"] = {
        "version": __version__,
        "n_layers": transcoders.get("n_layers"),
        "model_name": meta.get("model_name"),
        "transcoders": transcoders.get("kind"),
        "thresholds": {
            "node_threshold": pruning.get("node_threshold"),
            "edge_threshold": pruning.get("edge_threshold"),
        },
        "n_nodes_before": pruning.get("n_nodes_before", graph.n_nodes),
        "n_edges_before": pruning.get("n_edges_before", int(graph.adjacency.nnz)),
        "scores": own_scores,
        "full_scores": _scores(full_scores),
        "head_loadings": None,
        "attention": None,
    }
    if heads is not None:
        _attach_heads(doc, heads)
    return doc


def _dump(doc: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a string (a file read back): escape it
        return json.dumps(doc, allow_nan=False).encode("ascii")


def write_graph_folder(
    folder: str | Path,
    graph: AttributionGraph | None,
    pruned: AttributionGraph,
    *,
    slug: str = "graph",
    scan: str | None = None,
    labels: Mapping[str, str] | None = None,
    head_loadings: pd.DataFrame | None = None,
    attention: Sequence[QKAttribution] | None = None,
) -> GraphFolderFiles:
    """Write a graph folder: ``graph.zip`` (if ``graph``), ``pruned.zip``, ``graph.json`` and,
    with ``head_loadings``, ``head_loadings.csv``, with ``attention``, ``attention.json``.

    Every file is written atomically; an existing ``annotations.json`` is left alone, an existing
    ``head_loadings.csv`` (``attention.json``) is removed when no ``head_loadings``
    (``attention``) are given (it belonged to the graph written before).

    Args:
        folder: The folder (created with its parents if missing).
        graph: The full graph, or ``None`` to leave it out (the page cannot re-prune then).
        pruned: The pruned graph (``graph.prune(...)``).
        slug: Name of the graph in ``graph.json``.
        scan: Neuronpedia model id (see :func:`build_document`).
        labels: Feature labels by node id (see :func:`build_document`).
        head_loadings: ``sc.head_loadings(model, prompt, transcoders, pruned)``: the *pruned*
            graph's edges (all or some) split over the heads that carry them, with the pruned
            graph's node indices. Saved as ``head_loadings.csv`` (with the node ids) and shown
            in the viewer (links' ``heads``).
        attention: QK attributions (:func:`sae_circuits.attribute_attention`) of the graph's
            prompt, e.g. of the heads that carry its edges most (what ``sae-circuits attribute
            --head-loadings`` computes). Saved as ``attention.json``, the first
            :data:`MAX_QK_ROWS` rows of each table (see the module docstring); the viewer shows a
            head's pairs from an edge's head line where the record's query and key are the
            edge's target and source positions.

    Returns:
        The files written.

    Raises:
        ValueError: Bad slug (see :func:`build_document`), ``head_loadings`` are not of the
            pruned graph's edges, or ``attention`` holds something that is no QK attribution of
            the graph's prompt (nothing is written then).
    """
    folder = Path(folder)
    full_scores = None
    if graph is not None:
        try:
            full_scores = graph.scores()
        except ValueError:
            full_scores = None
    # the document first: it checks slug and head loadings before anything is written
    doc = build_document(
        pruned,
        slug=slug,
        scan=scan,
        labels=labels,
        full_scores=full_scores,
        head_loadings=head_loadings,
    )
    qk_data = _attention_json(pruned, attention) if attention is not None else None
    if attention is not None:
        doc["metadata"]["sae_circuits"]["attention"] = {
            "file": ATTENTION_FILE,
            "n_records": len(attention),
            "max_rows": MAX_QK_ROWS,
        }
    data = _dump(doc)
    folder.mkdir(parents=True, exist_ok=True)
    if head_loadings is None:
        (folder / HEAD_LOADINGS_FILE).unlink(missing_ok=True)
    if qk_data is None:
        (folder / ATTENTION_FILE).unlink(missing_ok=True)
    graph_path = graph.save(folder / GRAPH_FILE) if graph is not None else None
    pruned_path = pruned.save(folder / PRUNED_FILE)
    heads_path = None
    if head_loadings is not None:
        table = _loadings_csv(pruned, head_loadings)
        heads_path = atomic_write(folder / HEAD_LOADINGS_FILE, lambda f: f.write(table))
    qk_path = None
    if qk_data is not None:
        qk_path = atomic_write(folder / ATTENTION_FILE, lambda f: f.write(qk_data))
    doc_path = atomic_write(folder / DOCUMENT_FILE, lambda f: f.write(data))
    logger.info("wrote graph folder %s", folder)
    return GraphFolderFiles(folder, graph_path, pruned_path, doc_path, heads_path, qk_path)


def _thresholds(doc: Mapping[str, Any]) -> tuple[float | None, float | None]:
    meta = doc.get("metadata") or {}
    mine = (meta.get("sae_circuits") or {}).get("thresholds") or {}
    theirs = meta.get("pruning_settings") or {}
    out = []
    for key in ("node_threshold", "edge_threshold"):
        v = mine.get(key, theirs.get(key))
        out.append(_finite(v))
    return out[0], out[1]


def _check_document(doc: Any, path: Path) -> dict[str, Any]:
    ok = (
        isinstance(doc, dict)
        and isinstance(doc.get("nodes"), list)
        and isinstance(doc.get("links"), list)
        and isinstance(doc.get("metadata", {}), dict)
    )
    if not ok:
        raise GraphFolderError(
            f"{path} is not a graph document (expected a JSON object with 'nodes' and 'links' "
            "lists, as sae-circuits or Neuronpedia write them)"
        )
    n_layers = _layers_of(doc)
    for node in doc["nodes"]:
        if not isinstance(node, dict) or not isinstance(node.get("node_id"), str):
            raise GraphFolderError(f"{path}: every node needs a string 'node_id'")
        _fill_from_id(node, n_layers, path)
    return doc


def _layers_of(doc: dict[str, Any]) -> int | None:
    """The number of layers of a Neuronpedia document: its logit nodes sit at ``n_layers + 1``."""
    for node in doc["nodes"]:
        if isinstance(node, dict) and node.get("feature_type") == "logit":
            try:
                return int(node.get("layer")) - 1  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
    return None


def _fill_from_id(node: dict[str, Any], n_layers: int | None, path: Path) -> None:
    """Give a node of a plain Neuronpedia document the fields sae_circuits documents carry
    (``kind``, ``layer_index``, ``feature_index``, ``position``), read from its id, so that the
    page never parses ids itself."""
    if {"kind", "layer_index", "feature_index", "position"} <= node.keys():
        return
    try:
        parsed = parse_node_id(node["node_id"], n_layers=n_layers, where=f"{path}: node")
    except ValueError as e:
        raise GraphFolderError(str(e)) from None
    node.setdefault("kind", parsed.kind)
    node.setdefault("layer_index", parsed.layer)
    node.setdefault("feature_index", parsed.feature)
    node.setdefault("position", parsed.position)


class GraphSource:
    """Serves the documents of one graph folder, re-pruning the full graph on request.

    Files are re-read when they change on disk (by modification time and size); re-pruned
    documents are cached (least recently used first out). Documents built here (re-pruned, or
    from ``pruned.zip`` / ``graph.zip`` without ``graph.json``) take their links' ``heads`` from
    ``head_loadings.csv`` when the folder has one (matched by node ids and weight; links it does
    not cover have none). The QK attributions of ``attention.json`` are served on their own
    (:meth:`attention`), whatever the thresholds.

    Args:
        folder: The graph folder.
        cache_size: Re-pruned documents to keep.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
        GraphFolderError: It holds none of ``graph.json``, ``pruned.zip``, ``graph.zip``.
    """

    def __init__(self, folder: str | Path, *, cache_size: int = 8) -> None:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"graph folder {str(path)!r} does not exist or is not a folder")
        self.folder = path.resolve()
        if not any(self._file(n) for n in (DOCUMENT_FILE, PRUNED_FILE, GRAPH_FILE)):
            raise GraphFolderError(
                f"{self.folder} holds no graph: expected {DOCUMENT_FILE}, {PRUNED_FILE} or "
                f"{GRAPH_FILE} (as `sae-circuits attribute ... -o FOLDER` writes them)"
            )
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._cache_size = cache_size

    def _file(self, name: str) -> Path | None:
        path = resolve_inside(self.folder, name)
        return path if path is not None and path.is_file() else None

    @property
    def can_reprune(self) -> bool:
        """Whether the folder has the full graph, so other thresholds can be shown."""
        return self._file(GRAPH_FILE) is not None

    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = make()
        self._cache[key] = value
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def _stamp(self, path: Path) -> tuple[str, int, int]:
        st = path.stat()
        return (path.name, st.st_mtime_ns, st.st_size)

    def _load_graph(self, path: Path) -> AttributionGraph:
        from sae_circuits.graph import AttributionGraph

        return self._cached(("graph", *self._stamp(path)), lambda: AttributionGraph.load(path))

    def _pruner(self, path: Path) -> GraphPruner:
        """A pruner of the full graph (its node influence computed once for all thresholds)."""
        from sae_circuits.graph import GraphPruner

        return self._cached(
            ("pruner", *self._stamp(path)), lambda: GraphPruner(self._load_graph(path))
        )

    def _heads(self) -> tuple[tuple[Any, ...], _LinkHeads | None]:
        """(cache stamp, link heads) of ``head_loadings.csv``; a file that cannot be read is
        logged and left out (the graph is shown without heads)."""
        path = self._file(HEAD_LOADINGS_FILE)
        if path is None:
            return ("no heads",), None
        stamp = self._stamp(path)

        def read() -> _LinkHeads | None:
            try:
                return _read_head_loadings(path)
            except (OSError, ValueError) as e:
                logger.warning("ignoring %s: %s", path, e)
                return None

        return stamp, self._cached(("heads", *stamp), read)

    def _attention(self) -> dict[str, Any] | GraphFolderError | None:
        """The checked content of ``attention.json`` (cached by stamp), the error that reading
        it gave, or ``None`` without the file."""
        path = self._file(ATTENTION_FILE)
        if path is None:
            return None

        def read() -> dict[str, Any] | GraphFolderError:
            try:
                return _read_attention(path)
            except GraphFolderError as e:
                logger.warning("cannot serve the QK attributions: %s", e)
                return e

        return self._cached(("attention", *self._stamp(path)), read)

    def attention(self) -> dict[str, Any]:
        """The folder's QK attributions (``attention.json``, checked), ``{"records": []}`` (with
        the format fields) when it has none.

        Raises:
            GraphFolderError: ``attention.json`` cannot be read or is not such a file.
        """
        with self._lock:
            data = self._attention()
        if isinstance(data, GraphFolderError):
            raise data
        if data is None:
            return {"format": _ATTENTION_FORMAT, "version": 1, "records": []}
        return data

    def attention_bytes(self) -> bytes:
        """:meth:`attention` as UTF-8 JSON."""
        return _dump(self.attention())

    def _build(
        self, graph: AttributionGraph, heads: _LinkHeads | None, **kw: Any
    ) -> dict[str, Any]:
        doc = build_document(graph, **kw)
        if heads is not None:
            _attach_heads(doc, heads)
        return doc

    def _base(self) -> dict[str, Any]:
        doc_path = self._file(DOCUMENT_FILE)
        if doc_path is not None:

            def read() -> dict[str, Any]:
                try:
                    doc = json.loads(doc_path.read_bytes().decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                    raise GraphFolderError(f"{doc_path} is not valid JSON ({e})") from e
                return _check_document(doc, doc_path)

            return self._cached(("doc", *self._stamp(doc_path)), read)
        heads_stamp, heads = self._heads()
        pruned_path = self._file(PRUNED_FILE)
        if pruned_path is not None:
            return self._cached(
                ("built", *self._stamp(pruned_path), *heads_stamp),
                lambda: self._build(self._load_graph(pruned_path), heads),
            )
        graph_path = self._file(GRAPH_FILE)
        if graph_path is None:
            raise GraphFolderError(f"{self.folder} no longer holds a graph")
        return self._cached(
            ("built", *self._stamp(graph_path), *heads_stamp, *DEFAULT_THRESHOLDS),
            lambda: self._build(self._pruner(graph_path).prune(*DEFAULT_THRESHOLDS), heads),
        )

    def document(
        self, node_threshold: float | None = None, edge_threshold: float | None = None
    ) -> dict[str, Any]:
        """The document at the given thresholds (default: the saved ones).

        Args:
            node_threshold: Node threshold in ``[0, 1]``; ``None`` for the saved one.
            edge_threshold: Edge threshold in ``[0, 1]``; ``None`` for the saved one.

        Returns:
            The document, with ``metadata.viewer`` = ``{"can_reprune", "thresholds",
            "attention"}`` (``attention``: ``{"n_records"}`` of the folder's readable
            ``attention.json``, else ``null``).

        Raises:
            TypeError, ValueError: A threshold is not a number in ``[0, 1]``.
            GraphFolderError: Other thresholds are asked for but there is no ``graph.zip``,
                or a file of the folder cannot be read.
        """
        if node_threshold is not None:
            node_threshold = check_threshold("node_threshold", node_threshold)
        if edge_threshold is not None:
            edge_threshold = check_threshold("edge_threshold", edge_threshold)
        with self._lock:
            base = self._base()
            saved = _thresholds(base)
            nt = node_threshold if node_threshold is not None else saved[0]
            et = edge_threshold if edge_threshold is not None else saved[1]
            same = all(
                want is None or (have is not None and abs(want - have) < 1e-9)
                for want, have in ((node_threshold, saved[0]), (edge_threshold, saved[1]))
            )
            doc = base if same else self._repruned(base, nt, et)
            thresholds = _thresholds(doc)
            qk = self._attention()
        out = dict(doc)
        out["metadata"] = {
            **doc.get("metadata", {}),
            "viewer": {
                "can_reprune": self.can_reprune,
                "thresholds": {"node_threshold": thresholds[0], "edge_threshold": thresholds[1]},
                "attention": ({"n_records": len(qk["records"])} if isinstance(qk, dict) else None),
            },
        }
        return out

    def _repruned(
        self, base: Mapping[str, Any], nt: float | None, et: float | None
    ) -> dict[str, Any]:
        graph_path = self._file(GRAPH_FILE)
        if graph_path is None:
            raise GraphFolderError(
                f"this folder has no {GRAPH_FILE} (the full graph), so only the saved thresholds "
                "can be shown; write it with `sae-circuits attribute ... -o FOLDER`"
            )
        nt = DEFAULT_THRESHOLDS[0] if nt is None else nt
        et = DEFAULT_THRESHOLDS[1] if et is None else et
        meta = base.get("metadata") or {}
        raw_slug = meta.get("slug")
        slug = raw_slug if isinstance(raw_slug, str) else "graph"
        labels = {
            n["node_id"]: n["clerp"]
            for n in base["nodes"]
            if isinstance(n.get("clerp"), str) and n["clerp"] and kind_of(n) != "logit"
        }
        full_scores = (meta.get("sae_circuits") or {}).get("full_scores")
        qk_meta = (meta.get("sae_circuits") or {}).get("attention")
        heads_stamp, heads = self._heads()

        def make() -> dict[str, Any]:
            pruned = self._pruner(graph_path).prune(nt, et)
            raw_scan = meta.get("scan")
            scan = raw_scan if isinstance(raw_scan, str) else None
            doc = self._build(pruned, heads, slug=slug, scan=scan, labels=labels)
            doc["metadata"]["sae_circuits"]["full_scores"] = full_scores
            doc["metadata"]["sae_circuits"]["attention"] = qk_meta
            return doc

        return self._cached(("pruned", *self._stamp(graph_path), *heads_stamp, nt, et), make)

    def prompt(self) -> list[int] | str | None:
        """The graph's prompt, for steering: its token ids (``pruned.zip``, else ``graph.zip``),
        else the text of ``graph.json``'s ``metadata.prompt``, else ``None``."""
        with self._lock:
            for name in (PRUNED_FILE, GRAPH_FILE):
                path = self._file(name)
                if path is not None:
                    tokens = self._load_graph(path).metadata.get("tokens")
                    if isinstance(tokens, list) and tokens:
                        return [int(t) for t in tokens]
            text = (self._base().get("metadata") or {}).get("prompt")
        return text if isinstance(text, str) and text else None

    def document_bytes(
        self, node_threshold: float | None = None, edge_threshold: float | None = None
    ) -> bytes:
        """:meth:`document` as UTF-8 JSON."""
        return _dump(self.document(node_threshold, edge_threshold))


def kind_of(node: Mapping[str, Any]) -> str:
    """A document node's kind, also for plain Neuronpedia documents (from ``feature_type``)."""
    kind = node.get("kind")
    if isinstance(kind, str):
        return kind
    return _KIND_BY_TYPE.get(str(node.get("feature_type")), "feature")
