"""Saving and loading attribution graphs: one ZIP file of standard parts, written atomically.

Format, version 1 (``format_version`` in ``metadata.json``). A ZIP archive holding:

* ``adjacency.npz``: the ``(n, n)`` CSR adjacency as written by ``scipy.sparse.save_npz``
  (``[target, source]``, dtype kept);
* ``nodes.json`` and ``logits.json``: the two tables, column by column, with an explicit dtype
  schema: ``{"format": "sae_circuits.table", "n_rows": n, "index": null | column,
  "columns": [column, ...]}`` where a column is ``{"name", "dtype", "values"}`` (plus
  ``"storage"``/``"na_value"`` for strings, ``"categories"``/``"ordered"`` for categoricals, whose
  ``values`` are category codes, ``-1`` for missing). Missing values are ``null``; non-finite
  floats are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. Floats are written as the
  shortest decimal that reads back to the same float64 (float32 values widen exactly), so the
  round trip is exact. Supported dtypes: ``bool``, ``(u)int8..64``, ``float32/64``, pandas'
  nullable ``Int*``/``UInt*``/``Float*``/``boolean``, ``string``/``str``, ``category`` (of any of
  these) and ``object`` columns holding only strings and missing values;
* ``metadata.json``: ``{"format": "sae_circuits.attribution_graph", "format_version": 1,
  "library_version", "n_nodes", "n_edges", "members": {name: {"sha256", "size"}},
  "metadata": graph.metadata}``. Metadata must be JSON data (dicts with string keys, lists,
  strings, numbers, booleans, ``None``); numpy scalars and arrays are stored as numbers and lists,
  tuples as lists;
* the ZIP comment: ``sae_circuits.attribution_graph metadata.json sha256=<hex>``, the checksum of
  ``metadata.json`` itself (which holds those of the other members). Files written before it
  existed have no comment and still load (``metadata.json`` is then covered by its ZIP CRC only);
  any other comment is refused.

Loading reads the file into memory and checks everything (ZIP structure and CRCs, the header's
and every member's sha256, format name and version, every header field, shapes and column
schemas) before building the graph, and raises :class:`GraphFileError` naming the file and the
part that is wrong (the ZIP directory, a member, a header field, a table column), so a
truncated, corrupted, foreign or newer-format file never gives a half-loaded graph, and no other
exception escapes for bad content (``OSError`` only for the file itself, e.g. permissions).

Saving serialises everything in memory first, writes to a temporary file in the target's folder,
``fsync``\\ s it and renames it over the target (:func:`atomic_write`), so a failure (an exception,
a full disk) never leaves a partial file, nor a temporary one, and an existing file is untouched.

Example:
    >>> graph.save("dallas.zip")
    >>> same = AttributionGraph.load("dallas.zip")
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sae_circuits._version import __version__
from sae_circuits.core.files import atomic_write

if TYPE_CHECKING:
    from sae_circuits.graph._graph import AttributionGraph

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GraphFileError",
    "load_graph",
    "save_graph",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "sae_circuits.attribution_graph"
#: The newest format version this library writes and reads.
FORMAT_VERSION = 1
_TABLE_FORMAT = "sae_circuits.table"
_MEMBERS = ("adjacency.npz", "nodes.json", "logits.json")
#: The ZIP comment starts with this, followed by the sha256 of ``metadata.json`` (hex).
_COMMENT_PREFIX = b"sae_circuits.attribution_graph metadata.json sha256="
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class GraphFileError(ValueError):
    """A graph file that cannot be read: truncated, corrupted, not a graph file, or too new."""


# ---------------------------------------------------------------------------------------------
# JSON metadata


def _json_value(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON data, or a ``TypeError`` saying where the offending value is."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic) and isinstance(obj.item(), (bool, int, float, str)):
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"{where} has a key {k!r} of type {type(k).__name__}; graph metadata keys "
                    "must be strings"
                )
            out[k] = _json_value(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return _json_value(obj.tolist(), where)
    raise TypeError(
        f"{where} is a {type(obj).__name__} ({obj!r:.60}), which a graph file cannot store; "
        "metadata must be JSON data: dicts with string keys, lists, str, int, float, bool, None"
    )


# ---------------------------------------------------------------------------------------------
# tables

_NUMPY_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float"}


def _float_list(values: np.ndarray) -> list[Any]:
    out: list[Any] = np.asarray(values, dtype=np.float64).tolist()
    if not np.isfinite(values).all():
        for i in np.flatnonzero(~np.isfinite(values)):
            v = out[i]
            out[i] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return out


def _with_nulls(values: list[Any], missing: np.ndarray) -> list[Any]:
    for i in np.flatnonzero(missing):
        values[i] = None
    return values


def _encode_column(name: str, series: Any, where: str) -> dict[str, Any]:
    dtype = series.dtype
    spec: dict[str, Any] = {"name": name, "dtype": str(dtype)}
    if isinstance(dtype, pd.CategoricalDtype):
        cats = _encode_column("categories", pd.Series(dtype.categories), f"{where} categories")
        codes = np.asarray(pd.Categorical(series, dtype=dtype).codes, dtype=np.int64)
        spec.update(dtype="category", categories=cats, ordered=bool(dtype.ordered))
        spec["values"] = codes.tolist()
    elif isinstance(dtype, pd.StringDtype):
        missing = np.asarray(series.isna())
        na = dtype.na_value
        spec.update(
            dtype="string",
            storage=dtype.storage,
            na_value="NA" if na is pd.NA else "NaN",
        )
        spec["values"] = _with_nulls(series.astype(object).tolist(), missing)
    elif isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "biuf":
        missing = np.asarray(series.isna())
        if dtype.kind == "f":
            vals = np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan))
            spec["values"] = _with_nulls(_float_list(vals), missing)
        else:
            fill = False if dtype.kind == "b" else 0
            np_dtype = bool if dtype.kind == "b" else dtype.numpy_dtype  # type: ignore[attr-defined]
            vals = np.asarray(series.to_numpy(dtype=np_dtype, na_value=fill))
            spec["values"] = _with_nulls(vals.tolist(), missing)
    elif isinstance(dtype, np.dtype) and dtype.kind in _NUMPY_KINDS:
        vals = np.asarray(series)
        spec["values"] = _float_list(vals) if dtype.kind == "f" else vals.tolist()
    elif isinstance(dtype, np.dtype) and dtype.kind == "O":
        values = list(series)
        if not all(v is None or isinstance(v, str) or _is_missing(v) for v in values):
            bad = next(v for v in values if not (v is None or isinstance(v, str) or _is_missing(v)))
            raise TypeError(
                f"{where} column {name!r} is an object column holding a {type(bad).__name__} "
                f"({bad!r:.40}); a graph file stores object columns of strings only"
            )
        spec["values"] = [None if v is None or _is_missing(v) else v for v in values]
    else:
        raise TypeError(
            f"{where} column {name!r} has dtype {dtype}, which a graph file cannot store; "
            "supported: bool, integers, floats, pandas nullable Int/Float/boolean, string, "
            "category and object columns of strings"
        )
    return spec


def _is_missing(v: Any) -> bool:
    return v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _encode_table(df: pd.DataFrame, where: str) -> bytes:
    names = list(df.columns)
    for c in names:
        if not isinstance(c, str):
            raise TypeError(f"{where} has a column name {c!r} that is not a string")
    if len(set(names)) != len(names):
        raise TypeError(f"{where} has duplicate column names")
    default_index = isinstance(df.index, pd.RangeIndex) and df.index.equals(pd.RangeIndex(len(df)))
    table = {
        "format": _TABLE_FORMAT,
        "n_rows": len(df),
        "index": None if default_index else _encode_column("index", df.index, f"{where} index"),
        "columns": [_encode_column(c, df[c], where) for c in names],
    }
    return json.dumps(table, allow_nan=False, separators=(",", ":")).encode()


def _decode_floats(values: list[Any]) -> list[Any]:
    return [_NON_FINITE[v] if isinstance(v, str) else v for v in values]


def _decode_column(spec: Mapping[str, Any], n_rows: int) -> Any:
    dtype = spec["dtype"]
    values = spec["values"]
    if not isinstance(values, list) or len(values) != n_rows:
        raise GraphFileError(f"does not have {n_rows} values")
    if dtype == "category":
        cats_spec = spec["categories"]
        if not isinstance(cats_spec, dict) or not isinstance(cats_spec.get("values"), list):
            raise GraphFileError("'categories' is not a column object")
        categories = pd.Index(_decode_column(cats_spec, len(cats_spec["values"])))
        cat_dtype = pd.CategoricalDtype(categories=categories, ordered=bool(spec["ordered"]))
        return pd.Categorical.from_codes(np.asarray(values, dtype=np.int64), dtype=cat_dtype)
    if dtype == "string":
        na = pd.NA if spec.get("na_value", "NA") == "NA" else np.nan
        try:
            sdtype = pd.StringDtype(storage=spec.get("storage", "python"), na_value=na)
            return pd.array(values, dtype=sdtype)
        except ImportError:  # written with pyarrow storage, read without pyarrow
            return pd.array(values, dtype=pd.StringDtype(storage="python", na_value=na))
    if dtype == "object":
        return np.array(values, dtype=object)
    if dtype in ("Float32", "Float64"):
        return pd.array(_decode_floats(values), dtype=dtype)
    if dtype[:1] in ("I", "U") or dtype == "boolean":
        return pd.array(values, dtype=dtype)
    np_dtype = np.dtype(dtype)  # raises TypeError on an unknown name
    if np_dtype.kind == "f":
        return np.asarray(_decode_floats(values), dtype=np.float64).astype(np_dtype)
    if np_dtype.kind not in "biu":
        raise GraphFileError(f"unsupported column dtype {dtype!r}")
    return np.asarray(values, dtype=np_dtype)


def _decode_table(raw: bytes) -> pd.DataFrame:
    """A table from its JSON (errors name the field or column; the caller names the member)."""
    table = json.loads(raw.decode("utf-8"))
    if not isinstance(table, dict) or table.get("format") != _TABLE_FORMAT:
        raise GraphFileError("not a sae_circuits table")
    n_rows = table.get("n_rows")
    if not _is_int(n_rows) or n_rows < 0:
        raise GraphFileError(f"field 'n_rows' is not a non-negative integer: {n_rows!r:.60}")
    columns = table.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        raise GraphFileError("field 'columns' is not a list of column objects")
    index: pd.Index = pd.RangeIndex(n_rows)
    if table.get("index") is not None:
        spec = table["index"]
        if not isinstance(spec, dict):
            raise GraphFileError("field 'index' is not a column object")
        values = _column(spec, n_rows, "the index")
        index = pd.Index(values, dtype=object if spec.get("dtype") == "object" else None)
    data = {}
    for i, spec in enumerate(columns):
        name = spec.get("name")
        if not isinstance(name, str) or name in data:
            raise GraphFileError(
                f"column {i} has a missing, non-string or repeated name {name!r:.60}"
            )
        values = _column(spec, n_rows, f"column {name!r}")
        # (object columns stay object: pandas would otherwise infer a string dtype)
        data[name] = pd.Series(
            values, index=index, dtype=object if spec["dtype"] == "object" else None
        )
    return pd.DataFrame(data, index=index)


def _column(spec: Mapping[str, Any], n_rows: int, where: str) -> Any:
    try:
        if not isinstance(spec.get("dtype"), str):
            raise GraphFileError(f"'dtype' is not a string: {spec.get('dtype')!r:.60}")
        return _decode_column(spec, n_rows)
    except GraphFileError as e:
        raise GraphFileError(f"{where}: {e}") from e
    except Exception as e:
        raise GraphFileError(
            f"{where} (dtype {spec.get('dtype')!r:.40}) is malformed ({type(e).__name__}: "
            f"{str(e)[:200]})"
        ) from e


# ---------------------------------------------------------------------------------------------
# graph files


def save_graph(graph: AttributionGraph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` to ``path`` (see the module docstring for the format).

    Args:
        graph: The graph.
        path: Destination file; replaced atomically if it exists.

    Returns:
        The path written.

    Raises:
        TypeError: The metadata or a table holds values the format cannot store (nothing is
            written).
    """
    adjacency = sp.csr_array(graph.adjacency)
    buf = io.BytesIO()
    sp.save_npz(buf, adjacency, compressed=False)
    members = {
        "adjacency.npz": buf.getvalue(),
        "nodes.json": _encode_table(graph.nodes, "graph.nodes"),
        "logits.json": _encode_table(graph.logits, "graph.logits"),
    }
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "n_nodes": int(graph.n_nodes),
        "n_edges": int(adjacency.nnz),
        "members": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in members.items()
        },
        "metadata": _json_value(dict(graph.metadata), "graph.metadata"),
    }
    members["metadata.json"] = json.dumps(header, indent=1).encode()
    comment = _header_comment(members["metadata.json"])

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            zf.comment = comment

    out = atomic_write(path, write)
    logger.info("saved %r to %s", graph, out)
    return out


def _corrupt(path: Path, part: str, e: BaseException) -> GraphFileError:
    return GraphFileError(
        f"cannot read graph file {path}: it is truncated, corrupted or not a ZIP file "
        f"({part}: {type(e).__name__}: {e})"
    )


def _check_header(header: Any, path: Path) -> dict[str, Any]:
    """``metadata.json`` checked field by field (the message names the bad field)."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise GraphFileError(f"{path} is not a sae_circuits graph file")
    version = header.get("format_version")
    if not _is_int(version) or version < 1:
        raise GraphFileError(
            f"{path}: metadata.json field 'format_version' is invalid: {version!r}"
        )
    if version > FORMAT_VERSION:
        raise GraphFileError(
            f"{path} has graph format version {version}, newer than this sae_circuits "
            f"({__version__}) reads (up to {FORMAT_VERSION}); it was written by sae_circuits "
            f"{header.get('library_version', '?')}: upgrade sae_circuits to load it"
        )
    for field in ("n_nodes", "n_edges"):
        value = header.get(field)
        if not _is_int(value) or value < 0:
            raise GraphFileError(
                f"{path}: metadata.json field {field!r} is not a non-negative integer: {value!r:.60}"
            )
    members = header.get("members")
    if not isinstance(members, dict):
        raise GraphFileError(f"{path}: metadata.json field 'members' is not an object")
    for name in _MEMBERS:
        entry = members.get(name)
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64
            and _is_int(entry.get("size"))
            and entry["size"] >= 0
        )
        if not ok:
            raise GraphFileError(
                f"{path}: metadata.json field 'members'[{name!r}] is malformed: expected "
                f"{{'sha256': <64 hex digits>, 'size': <bytes>}}, got {entry!r:.80}"
            )
    if not isinstance(header.get("metadata"), dict):
        raise GraphFileError(f"{path}: metadata.json field 'metadata' is not a JSON object")
    return header


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_members(path: Path, raw: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The checked header and the data members of the file's bytes ``raw``."""
    # (everything is parsed from memory: an OSError here is a malformed archive, not the disk)
    part = "the ZIP directory"
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = set(zf.namelist())
            comment = zf.comment
            if "metadata.json" not in names:
                raise GraphFileError(f"{path} is a ZIP file but not a sae_circuits graph file")
            part = "member 'metadata.json'"
            head = zf.read("metadata.json")
            _check_header_digest(path, comment, head)
            try:
                header = json.loads(head.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise GraphFileError(f"{path}: metadata.json is not valid JSON ({e})") from e
            header = _check_header(header, path)
            missing = [m for m in _MEMBERS if m not in names]
            if missing:
                raise GraphFileError(f"{path} is incomplete: it lacks {', '.join(missing)}")
            data = {}
            for m in _MEMBERS:
                part = f"member {m!r}"
                data[m] = zf.read(m)
    except GraphFileError:
        raise
    except Exception as e:  # any failure to parse the archive: BadZipFile, zlib.error, ...
        raise _corrupt(path, part, e) from e
    for name, blob in data.items():
        expected = header["members"][name]
        if len(blob) != expected["size"] or hashlib.sha256(blob).hexdigest() != expected["sha256"]:
            raise GraphFileError(f"{path} is corrupted: {name} does not match its checksum")
    return header, data


def _header_comment(head: bytes) -> bytes:
    """The ZIP comment holding the checksum of ``metadata.json`` (which holds all others)."""
    return _COMMENT_PREFIX + hashlib.sha256(head).hexdigest().encode()


def _check_header_digest(path: Path, comment: bytes, head: bytes) -> None:
    if not comment:  # written before the header had its own checksum (its ZIP CRC was checked)
        return
    digest = comment[len(_COMMENT_PREFIX) :]
    if not comment.startswith(_COMMENT_PREFIX) or not re.fullmatch(rb"[0-9a-f]{64}", digest):
        raise GraphFileError(
            f"cannot read graph file {path}: it is truncated, corrupted or not a ZIP file (the "
            f"ZIP comment does not hold the checksum of metadata.json: {comment[:100]!r})"
        )
    if comment != _header_comment(head):
        raise GraphFileError(
            f"{path} is corrupted: metadata.json does not match its checksum (in the ZIP comment)"
        )


def _decode_member(path: Path, name: str, decode: Callable[[], Any]) -> Any:
    try:
        return decode()
    except GraphFileError as e:
        raise GraphFileError(f"{path}: {name}: {e}") from e
    except Exception as e:  # the checksums matched, so the file was written like this
        raise GraphFileError(
            f"{path}: {name} is malformed ({type(e).__name__}: {str(e)[:200]})"
        ) from e


def load_graph(path: str | os.PathLike[str], *, factory: Callable[..., Any]) -> Any:
    """Read a graph file written by :func:`save_graph`.

    Args:
        path: The file.
        factory: The graph class (called with ``adjacency``, ``nodes``, ``logits``, ``metadata``).

    Returns:
        The graph (complete and checked: nothing is returned half-loaded).

    Raises:
        FileNotFoundError: No such file.
        OSError: The file cannot be read (permissions, I/O error).
        GraphFileError: Anything wrong with the file's content; the message names the file and
            the part (ZIP directory, member, field or column) that is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no graph file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a graph file")
    raw = path.read_bytes()
    header, data = _read_members(path, raw)

    def adjacency_of() -> sp.csr_array:
        matrix = sp.csr_array(sp.load_npz(io.BytesIO(data["adjacency.npz"])))
        matrix.check_format(full_check=True)  # index arrays in range and consistent
        return matrix

    adjacency = _decode_member(path, "adjacency.npz", adjacency_of)
    nodes = _decode_member(path, "nodes.json", lambda: _decode_table(data["nodes.json"]))
    logits = _decode_member(path, "logits.json", lambda: _decode_table(data["logits.json"]))
    n = header["n_nodes"]
    if len(nodes) != n or adjacency.shape != (n, n) or adjacency.nnz != header["n_edges"]:
        raise GraphFileError(
            f"{path} is inconsistent: {len(nodes)} nodes and a {adjacency.shape} adjacency "
            f"with {adjacency.nnz} edges, but the header says {n} nodes, {header['n_edges']} edges"
        )
    metadata = header["metadata"]
    try:
        graph = factory(adjacency=adjacency, nodes=nodes, logits=logits, metadata=metadata)
    except Exception as e:  # the graph's own checks (ValueError), or content they trip over
        raise GraphFileError(f"{path} does not hold a valid graph: {e}") from e
    logger.info("loaded %r from %s", graph, path)
    return graph
