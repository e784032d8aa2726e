"""Bad graph files never cost data: truncated, bit-flipped, crafted files and interrupted saves.

Loading a damaged file raises :class:`sae_circuits.GraphFileError` naming the file and the part
that is wrong, never another exception and never a different graph; a failed save leaves the
previous file byte-identical and no temporary file behind.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sae_circuits as sc
from sae_circuits.graph import AttributionGraph
from sae_circuits.graph import _io as _graph_io

from .test_graph_io import assert_same_graph, graph

_PARTS = ("adjacency.npz", "nodes.json", "logits.json", "metadata.json", "ZIP")


def _pruned() -> AttributionGraph:
    return graph().prune()


def _load_or_error(path: Path, original: AttributionGraph) -> str:
    """``"error: <message>"`` (a GraphFileError naming the file and a part) or ``"same"``."""
    try:
        back = AttributionGraph.load(path)
    except sc.GraphFileError as e:
        message = str(e)
        assert str(path) in message, message
        assert any(part in message for part in _PARTS), message
        return f"error: {message}"
    # a byte that does not matter (a timestamp, an unused ZIP field, deflate bits past the
    # member's size) may change: then it must be the same graph
    assert_same_graph(original, back)
    return "same"


def _repack(path: Path, *, compression: int, comment: bool) -> None:
    """Rewrite the archive with other compression, keeping (or dropping) the header checksum."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
        old_comment = zf.comment
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.comment = old_comment if comment else b""


_VARIANTS = {
    "as saved": None,
    "stored members": {"compression": zipfile.ZIP_STORED, "comment": True},
    "without header checksum (older files)": {
        "compression": zipfile.ZIP_DEFLATED,
        "comment": False,
    },
}


def _saved(tmp_path: Path, variant: str) -> tuple[AttributionGraph, Path, bytes]:
    g = _pruned()
    path = g.save(tmp_path / "g.zip")
    if _VARIANTS[variant] is not None:
        _repack(path, **_VARIANTS[variant])
        assert_same_graph(g, AttributionGraph.load(path))  # the variant itself is readable
    return g, path, path.read_bytes()


@pytest.mark.parametrize("variant", list(_VARIANTS))
def test_truncated_anywhere(tmp_path: Path, variant: str) -> None:
    _, path, data = _saved(tmp_path, variant)
    cuts = sorted({*np.linspace(0, len(data) - 1, 16).astype(int).tolist(), 1, 2, 22})
    assert len(cuts) >= 16 and cuts[0] == 0 and cuts[-1] == len(data) - 1
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(sc.GraphFileError) as info:
            AttributionGraph.load(path)
        assert str(path) in str(info.value) and "truncated" in str(info.value), (cut, info.value)


def _structural_positions(data: bytes) -> list[int]:
    """Every byte of every local header, central-directory record and the end record."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    end = data.rindex(b"PK\x05\x06")
    (central,) = struct.unpack("<I", data[end + 16 : end + 20])  # the central directory's offset
    assert data[central : central + 4] == b"PK\x01\x02"
    positions = set(range(end, len(data)))  # end record and ZIP comment
    for info in infos:
        positions.update(range(info.header_offset, info.header_offset + 30 + len(info.filename)))
    positions.update(range(central, end))
    return sorted(positions)


@pytest.mark.parametrize("variant", list(_VARIANTS))
def test_flipped_bytes_spread_over_the_file(tmp_path: Path, variant: str) -> None:
    g, path, data = _saved(tmp_path, variant)
    outcomes = []
    for i in np.linspace(0, len(data) - 1, 32).astype(int).tolist():
        for flip in (lambda b: b ^ 0xFF, lambda b: (b + 1) % 256):
            damaged = bytearray(data)
            damaged[i] = flip(damaged[i])
            path.write_bytes(bytes(damaged))
            outcomes.append(_load_or_error(path, g))
    errors = [o for o in outcomes if o.startswith("error")]
    assert len(errors) >= len(outcomes) * 3 // 4, outcomes


def test_flipped_bytes_in_every_zip_structure(tmp_path: Path) -> None:
    """Headers, central directory, end record, comment: each byte xor 0xFF and + 1."""
    g, path, data = _saved(tmp_path, "as saved")
    positions = _structural_positions(data)
    assert len(positions) > 200
    outcomes = []
    for i in positions:
        for value in (data[i] ^ 0xFF, (data[i] + 1) % 256):
            damaged = bytearray(data)
            damaged[i] = value
            path.write_bytes(bytes(damaged))
            outcomes.append(_load_or_error(path, g))
    assert sum(o.startswith("error") for o in outcomes) > len(outcomes) // 2


def test_flipped_byte_inside_metadata_json(tmp_path: Path) -> None:
    """The header has its own checksum (ZIP comment) on top of the ZIP CRC."""
    g, path, data = _saved(tmp_path, "as saved")
    outcomes = []
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("metadata.json")
        head = zf.read("metadata.json")
        assert zf.comment == _graph_io._COMMENT_PREFIX + hashlib.sha256(head).hexdigest().encode()
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start, start + info.compress_size, max(1, info.compress_size // 16)):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        outcomes.append(_load_or_error(path, g))
    errors = [o for o in outcomes if o.startswith("error")]
    assert len(errors) >= len(outcomes) - 2 and all("metadata.json" in o for o in errors)


# -- files whose checksums match but whose content is wrong (not written by save) --------------


def _craft(
    path: Path,
    *,
    header: Callable[[dict[str, Any]], None] | None = None,
    members: Callable[[dict[str, bytes]], None] | None = None,
) -> None:
    """Rewrite the file with changed content and *recomputed* checksums (a consistent archive)."""
    with zipfile.ZipFile(path) as zf:
        data = {n: zf.read(n) for n in zf.namelist()}
    head = json.loads(data.pop("metadata.json"))
    if members is not None:
        members(data)
    head["members"] = {
        n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in data.items()
    }
    if header is not None:
        header(head)
    data["metadata.json"] = json.dumps(head).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, blob in data.items():
            zf.writestr(name, blob)
        zf.comment = _graph_io._header_comment(data["metadata.json"])


def _table_change(member: str, change: Callable[[dict[str, Any]], None]):
    def apply(data: dict[str, bytes]) -> None:
        table = json.loads(data[member])
        change(table)
        data[member] = json.dumps(table).encode()

    return apply


def _column(name: str, change: Callable[[dict[str, Any]], None]):
    def apply(table: dict[str, Any]) -> None:
        change(next(c for c in table["columns"] if c["name"] == name))

    return apply


def _npz_with_bad_index(data: dict[str, bytes]) -> bytes:
    """The adjacency with a column index past the matrix (``load_npz`` alone accepts it)."""
    with np.load(io.BytesIO(data["adjacency.npz"])) as npz:
        arrays = dict(npz)
    arrays["indices"] = arrays["indices"].copy()
    arrays["indices"][0] = int(arrays["shape"][1]) + 5
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


_CRAFTED = {
    "n_nodes a string": (
        {"header": _set("n_nodes", "12")},
        r"metadata\.json field 'n_nodes' is not a non-negative integer",
    ),
    "n_edges negative": (
        {"header": _set("n_edges", -1)},
        r"metadata\.json field 'n_edges'",
    ),
    "members a list": (
        {"header": _set("members", [])},
        r"metadata\.json field 'members' is not an object",
    ),
    "member entry without size": (
        {"header": lambda h: h["members"]["nodes.json"].pop("size")},
        r"metadata\.json field 'members'\['nodes\.json'\] is malformed",
    ),
    "metadata a list": (
        {"header": _set("metadata", [1])},
        r"metadata\.json field 'metadata' is not a JSON object",
    ),
    "format_version a string": (
        {"header": _set("format_version", "1")},
        r"metadata\.json field 'format_version' is invalid",
    ),
    "adjacency not an npz": (
        {"members": lambda d: d.__setitem__("adjacency.npz", b"PK\x03\x04 not really")},
        r"adjacency\.npz is malformed",
    ),
    "adjacency index out of range": (
        {"members": lambda d: d.__setitem__("adjacency.npz", _npz_with_bad_index(d))},
        r"adjacency\.npz is malformed \(ValueError: indices must be < \d+",
    ),
    "nodes not JSON": (
        {"members": lambda d: d.__setitem__("nodes.json", b'{"format": ')},
        r"nodes\.json is malformed \(JSONDecodeError",
    ),
    "nodes not UTF-8": (
        {"members": lambda d: d.__setitem__("nodes.json", b"\xff\xfe{}")},
        r"nodes\.json is malformed \(UnicodeDecodeError",
    ),
    "nodes n_rows a string": (
        {"members": _table_change("nodes.json", _set("n_rows", "x"))},
        r"nodes\.json: field 'n_rows' is not a non-negative integer",
    ),
    "nodes columns not a list": (
        {"members": _table_change("nodes.json", _set("columns", {"a": 1}))},
        r"nodes\.json: field 'columns' is not a list",
    ),
    "column too short": (
        {"members": _table_change("nodes.json", _column("layer", lambda c: c["values"].pop()))},
        r"nodes\.json: column 'layer': does not have \d+ values",
    ),
    "column of unknown dtype": (
        {"members": _table_change("nodes.json", _column("layer", _set("dtype", "complex-ish")))},
        r"nodes\.json: column 'layer' \(dtype 'complex-ish'\) is malformed",
    ),
    "column values of the wrong type": (
        {
            "members": _table_change(
                "nodes.json", _column("position", lambda c: c["values"].__setitem__(0, "seven"))
            )
        },
        r"nodes\.json: column 'position' .*is malformed",
    ),
    "category codes out of range": (
        {
            "members": _table_change(
                "nodes.json", _column("kind", lambda c: c["values"].__setitem__(0, 99))
            )
        },
        r"nodes\.json: column 'kind' \(dtype 'category'\) is malformed",
    ),
    "dtype not a string": (
        {"members": _table_change("logits.json", _column("token_id", _set("dtype", 5)))},
        r"logits\.json: column 'token_id': 'dtype' is not a string",
    ),
    "repeated column": (
        {
            "members": _table_change(
                "logits.json", lambda t: t["columns"].append(dict(t["columns"][0]))
            )
        },
        r"logits\.json: column \d+ has a missing, non-string or repeated name",
    ),
    "nodes without a kind column": (
        {
            "members": _table_change(
                "nodes.json",
                lambda t: t.__setitem__(
                    "columns", [c for c in t["columns"] if c["name"] != "kind"]
                ),
            )
        },
        r"does not hold a valid graph: nodes table lacks columns \['kind'\]",
    ),
    "nodes and adjacency disagree": (
        {"header": _set("n_edges", 1)},
        r"is inconsistent",
    ),
}


@pytest.mark.parametrize("case", list(_CRAFTED))
def test_crafted_content_names_the_part(tmp_path: Path, case: str) -> None:
    changes, match = _CRAFTED[case]
    path = _pruned().save(tmp_path / "g.zip")
    _craft(path, **changes)
    with pytest.raises(sc.GraphFileError, match=match) as info:
        AttributionGraph.load(path)
    assert str(path) in str(info.value)


def test_older_files_without_the_header_checksum_still_load(tmp_path: Path) -> None:
    g, path, _ = _saved(tmp_path, "without header checksum (older files)")
    assert_same_graph(g, AttributionGraph.load(path))


def test_header_checksum_mismatch(tmp_path: Path) -> None:
    _, path, _ = _saved(tmp_path, "as saved")
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = _graph_io._COMMENT_PREFIX + b"0" * 64
    with pytest.raises(sc.GraphFileError, match=r"corrupted: metadata\.json does not match"):
        AttributionGraph.load(path)


# -- interrupted saves -------------------------------------------------------------------------


class _DiskFull:
    """A binary file that accepts ``limit`` bytes, then fails like a full disk."""

    def __init__(self, f: Any, limit: int) -> None:
        self._f, self._left = f, limit

    def write(self, data: Any) -> int:
        data = bytes(data)
        if len(data) > self._left:
            self._f.write(data[: self._left])  # a partial write first, as a real disk does
            self._left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _DiskFull:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


def _assert_untouched(folder: Path, path: Path, old: bytes) -> None:
    assert sorted(os.listdir(folder)) == [path.name]  # no temporary file left
    assert path.read_bytes() == old
    AttributionGraph.load(path)


@pytest.mark.parametrize("limit", [0, 100, 0.5, -200])
def test_disk_full_during_save_keeps_the_old_file(tmp_path: Path, monkeypatch, limit) -> None:
    g = graph()
    path = _pruned().save(tmp_path / "g.zip")
    old = path.read_bytes()
    # the new (full) graph is bigger than the old: fail at a point inside its writing
    size = len(g.save(tmp_path / "probe.zip").read_bytes())
    (tmp_path / "probe.zip").unlink()
    n = int(size * limit) if isinstance(limit, float) else (size + limit if limit < 0 else limit)
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _DiskFull(real(fd, *a, **k), n))
    with pytest.raises(OSError) as info:
        g.save(path)
    assert info.value.errno == errno.ENOSPC
    _assert_untouched(tmp_path, path, old)
    with pytest.raises(OSError):
        g.save(tmp_path / "new.zip")
    _assert_untouched(tmp_path, path, old)


@pytest.mark.parametrize("error", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()])
def test_member_writer_failing_part_way(tmp_path: Path, monkeypatch, error) -> None:
    g = graph()
    path = _pruned().save(tmp_path / "g.zip")
    old = path.read_bytes()
    real = zipfile.ZipFile.writestr
    written = []

    def half_then_fail(self, name, data, *args, **kwargs):
        if name != "nodes.json":
            return real(self, name, data, *args, **kwargs)
        with self.open(name, "w") as member:
            member.write(data[: len(data) // 2])
            written.append(name)
            raise error

    monkeypatch.setattr(zipfile.ZipFile, "writestr", half_then_fail)
    with pytest.raises(type(error)):
        g.save(path)
    assert written == ["nodes.json"]
    _assert_untouched(tmp_path, path, old)


@pytest.mark.parametrize("step", ["fsync", "close", "fdopen"])
def test_failing_flush_steps_keep_the_old_file(tmp_path: Path, monkeypatch, step) -> None:
    g = graph()
    path = _pruned().save(tmp_path / "g.zip")
    old = path.read_bytes()

    def fail(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, f"{step} failed")

    if step == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
    elif step == "fdopen":
        monkeypatch.setattr(os, "fdopen", fail)
    else:
        real = os.fdopen

        class FailingClose(_DiskFull):
            def __exit__(self, *exc: Any) -> None:
                self._f.close()
                raise OSError(errno.ENOSPC, "close failed")

        monkeypatch.setattr(
            os, "fdopen", lambda fd, *a, **k: FailingClose(real(fd, *a, **k), 10**9)
        )
    fds = _open_fds()
    with pytest.raises(OSError, match="failed"):
        g.save(path)
    monkeypatch.undo()
    _assert_untouched(tmp_path, path, old)
    assert _open_fds() == fds  # the temporary file's descriptor is closed too


def _open_fds() -> int | None:
    folder = Path("/proc/self/fd")
    return len(os.listdir(folder)) if folder.is_dir() else None
