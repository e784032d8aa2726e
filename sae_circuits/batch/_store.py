"""The graph store of a batch run: one graph file per prompt and an index of what was done.

A store is a folder::

    DIR/store.json        what the graphs were made with (model, transcoders, settings)
    DIR/graphs/KEY.zip    the full graph of one prompt (AttributionGraph.save: atomic)
    DIR/pruned/KEY.zip    its pruned graph (if kept)
    DIR/journal.jsonl     one JSON line per finished prompt, appended by the driver only
    DIR/index.csv         the index table (the journal's latest line per key), rewritten
                          atomically at the end of every run

``KEY`` is the first 16 hex digits of the sha256 of the prompt's token ids, so a prompt keeps its
key when the prompt list is reordered or extended, and one prompt given twice is one graph.

A graph file is complete or absent (:func:`sae_circuits.core.atomic_write`: written to a
temporary file, renamed over the target); its journal line is appended only after the file is in
place, and holds its sha256 and size. A prompt is *done* when its latest line says ``ok`` and
its files are there with that checksum: a rerun skips exactly those, and redoes a prompt whose
file was deleted, truncated or replaced, whose line is missing (the driver died between the two)
or failed. A journal line torn by a killed driver is dropped when the store is opened.

Example:
    >>> store = GraphStore("out/batch")
    >>> store.index().query("status == 'ok'")[["prompt", "top_token", "replacement"]]
    >>> store.load("3f2a9c0e1b7d4a55")             # the full graph of one prompt
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sae_circuits.core import atomic_write
from sae_circuits.graph import AttributionGraph

__all__ = [
    "INDEX_COLUMNS",
    "STORE_FORMAT",
    "GraphStore",
    "Keep",
    "StoreMismatchError",
    "prompt_key",
]

logger = logging.getLogger(__name__)

#: ``store.json``'s ``format``.
STORE_FORMAT = "sae_circuits.graph_store"
STORE_VERSION = 1

#: Which graphs a store keeps per prompt.
Keep = Literal["full", "pruned", "both"]
KEEP_CHOICES: tuple[Keep, ...] = ("full", "pruned", "both")

Status = Literal["ok", "failed"]

#: Columns of the index table, in order.
INDEX_COLUMNS = (
    "key",
    "prompt",
    "n_tokens",
    "status",
    "error",
    "file",
    "pruned_file",
    "sha256",
    "size",
    "pruned_sha256",
    "pruned_size",
    "n_nodes",
    "n_edges",
    "n_features",
    "pruned_nodes",
    "pruned_edges",
    "top_token",
    "top_probability",
    "logits",
    "replacement",
    "completeness",
    "attribute_seconds",
    "seconds",
    "worker",
    "attempts",
    "finished",
)


class StoreMismatchError(ValueError):
    """The folder holds a store made with other settings than the run asks for."""


def prompt_key(token_ids: Sequence[int]) -> str:
    """The store key of a prompt: 16 hex digits of the sha256 of its token ids (int64)."""
    data = np.asarray(list(token_ids), dtype="<i8").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def file_digest(path: Path) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class GraphStore:
    """A folder of graph files with an index (see the module docstring for the layout).

    Attributes:
        folder: The store's folder.
    """

    folder: Path

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "folder", Path(folder).resolve())

    # -- layout -------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.folder / "store.json"

    @property
    def journal_path(self) -> Path:
        return self.folder / "journal.jsonl"

    @property
    def index_path(self) -> Path:
        return self.folder / "index.csv"

    def graph_path(self, key: str) -> Path:
        """Where the full graph of ``key`` goes."""
        return self.folder / "graphs" / f"{key}.zip"

    def pruned_path(self, key: str) -> Path:
        """Where the pruned graph of ``key`` goes."""
        return self.folder / "pruned" / f"{key}.zip"

    # -- manifest -----------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any] | None:
        """The contents of ``store.json``, or ``None`` for a new store."""
        if not self.manifest_path.is_file():
            return None
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise StoreMismatchError(
                f"{self.manifest_path}: not a graph store manifest: {e}"
            ) from e
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            raise StoreMismatchError(f"{self.manifest_path}: not a {STORE_FORMAT} manifest")
        return data

    def open_for(self, description: Mapping[str, Any]) -> None:
        """Create the store for a run described by ``description``, or check that the existing
        one was made the same way.

        Raises:
            StoreMismatchError: The folder's store was made with another model, transcoders or
                settings (the message names every field that differs), or the folder holds
                files but no store.
        """
        wanted = {"format": STORE_FORMAT, "format_version": STORE_VERSION, **description}
        wanted = json.loads(json.dumps(wanted))
        have = self.manifest()
        if have is None:
            if self.folder.exists() and any(self.folder.iterdir()):
                raise StoreMismatchError(
                    f"{self.folder} is not empty and holds no graph store (store.json); give an "
                    "empty or new folder, or an existing store"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(
                self.manifest_path, lambda f: f.write(json.dumps(wanted, indent=1).encode())
            )
        else:
            diff = [k for k in sorted(set(wanted) | set(have)) if wanted.get(k) != have.get(k)]
            if diff:
                shown = "; ".join(
                    f"{k}: store has {have.get(k)!r}, run asks {wanted.get(k)!r}" for k in diff
                )
                raise StoreMismatchError(
                    f"{self.folder} was made with other settings ({shown}); use another folder "
                    "or the same settings"
                )
        for sub in ("graphs", "pruned"):
            (self.folder / sub).mkdir(exist_ok=True)

    # -- journal ------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every journal line, in order (a torn last line, from a killed driver, left out)."""
        if not self.journal_path.is_file():
            return []
        out = []
        lines = self.journal_path.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:  # no newline after it: torn by a killed writer
                    logger.warning("%s: dropped a torn last line", self.journal_path)
                    continue
                raise ValueError(f"{self.journal_path}: line {i + 1} is not JSON") from None
            out.append(rec)
        return out

    def repair_journal(self) -> None:
        """Cut a torn last line (no final newline) so that the next line starts clean."""
        if not self.journal_path.is_file():
            return
        data = self.journal_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            with open(self.journal_path, "r+b") as f:
                f.truncate(len(keep))
                f.flush()
                os.fsync(f.fileno())
            logger.warning(
                "%s: cut a torn last line (%d bytes)", self.journal_path, len(data) - len(keep)
            )

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record to the journal (flushed and ``fsync``\\ ed: it survives a crash)."""
        line = json.dumps(dict(record), allow_nan=True) + "\n"
        with open(self.journal_path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest record of every key."""
        return {r["key"]: r for r in self.records()}

    # -- validity -----------------------------------------------------------------------------

    def is_done(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` is ``ok`` and its files are there with the recorded checksums."""
        if record.get("status") != "ok":
            return False
        for name, digest, size in (
            ("file", "sha256", "size"),
            ("pruned_file", "pruned_sha256", "pruned_size"),
        ):
            rel = record.get(name)
            if not rel:
                continue
            path = self.folder / rel
            if not path.is_file() or path.stat().st_size != record.get(size):
                return False
            if file_digest(path)[0] != record.get(digest):
                return False
        return True

    def clean_temporary(self) -> int:
        """Remove temporary files left by writers that were killed mid-write; returns how many."""
        n = 0
        for sub in ("graphs", "pruned", "."):
            folder = self.folder / sub
            if not folder.is_dir():
                continue
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    n += 1
        if n:
            logger.info("removed %d temporary files of interrupted writes", n)
        return n

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's lock for a run (released when the process ends, however it ends).

        Raises:
            RuntimeError: Another run holds it.
        """
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: one run at a time is on you
            yield
            return
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(
                    f"another batch run is writing {self.folder} (it holds {self.folder / '.lock'})"
                ) from None
            yield
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------------

    def index(self) -> pd.DataFrame:
        """The index table: one row per key (its latest record), in the order keys first
        finished; columns :data:`INDEX_COLUMNS`."""
        latest = self.latest()
        table = pd.DataFrame(list(latest.values()), columns=list(INDEX_COLUMNS))
        return table.reset_index(drop=True)

    def write_index(self) -> Path:
        """Rewrite ``index.csv`` from the journal, atomically."""
        table = self.index()
        return atomic_write(self.index_path, lambda f: f.write(table.to_csv(index=False).encode()))

    def keys(self, *, status: Status | None = "ok") -> list[str]:
        """Keys of the index (``status=None``: all)."""
        table = self.index()
        if status is not None:
            table = table[table["status"] == status]
        return table["key"].tolist()

    def load(self, key: str, *, pruned: bool = False) -> AttributionGraph:
        """The graph of ``key`` (``pruned=True``: its pruned graph).

        Raises:
            KeyError: No finished graph of that kind for ``key``.
        """
        rec = self.latest().get(key)
        column = "pruned_file" if pruned else "file"
        if rec is None or rec.get("status") != "ok" or not rec.get(column):
            kind = "pruned graph" if pruned else "full graph"
            raise KeyError(f"no {kind} of key {key!r} in {self.folder}")
        return AttributionGraph.load(self.folder / rec[column])

    def __repr__(self) -> str:
        return f"GraphStore({str(self.folder)!r})"
