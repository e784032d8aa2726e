"""Attribution rows stored sparse as they are computed, and assembled into one CSR array.

Each batch of rows arrives as a dense ``(B, n_sources)`` block and is kept as a CSR chunk with
int32 column indices and float32 values (8 bytes per stored edge). Assembly copies the chunks into
the final CSR arrays, freeing each chunk as it goes, so the peak is about one final matrix plus
one chunk: never a dense ``n x n`` matrix, never a COO copy with 64-bit indices.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["RowStore"]

_TRIM_EVERY = 1 << 28  # bytes of freed chunks between two returns of free heap pages
_GROUP_ENTRIES = 1 << 18  # entries of a block scanned at once by RowStore.add


class RowStore:
    """Rows of the attribution matrix, in the order they were computed.

    Args:
        n_sources: Number of source columns.
        keep: A *ranking* store: keep each row's ``keep`` largest entries by magnitude (ties
            may keep a few more) and the sum of ``|row|`` over all its entries
            (:meth:`row_sums`), which is what influence needs to rank features; its rows are
            not the graph's edges.
        columns: ``(n_sources,)`` bool: store only these source columns (the others are
            dropped as rows arrive).
    """

    def __init__(
        self, n_sources: int, *, keep: int | None = None, columns: np.ndarray | None = None
    ) -> None:
        if columns is not None and columns.shape != (n_sources,):
            raise ValueError(f"columns: expected shape ({n_sources},), got {columns.shape}")
        self.n_sources = n_sources
        self.keep = keep
        self._columns = columns
        self._chunks: list[sp.csr_array] = []
        self._nodes: list[np.ndarray] = []
        self._sums: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        """Bytes of the stored rows."""
        return sum(c.data.nbytes + c.indices.nbytes + c.indptr.nbytes for c in self._chunks)

    def row_sums(self) -> list[np.ndarray] | None:
        """A ranking store's exact ``sum |row|`` per chunk (``None`` for a full store)."""
        return list(self._sums) if self.keep is not None else None

    @property
    def n_rows(self) -> int:
        return sum(len(n) for n in self._nodes)

    def add(self, nodes: np.ndarray, block: torch.Tensor, *, gap: tuple[int, int] = (0, 0)) -> None:
        """Store rows ``block`` for the row nodes ``nodes`` (``(B,)``).

        Args:
            nodes: ``(B,)`` row node ids.
            block: ``(B, n_sources - width)`` rows.
            gap: ``(at, width)``: the block leaves out ``width`` all-zero columns from source
                column ``at`` on (its column ``j >= at`` is source column ``j + width``).
        """
        dense = block.detach().float().cpu().numpy()
        at, width = gap
        n_rows, n_cols = dense.shape
        if n_cols + width != self.n_sources:
            raise ValueError(f"{n_cols} + {width} columns, expected {self.n_sources}")
        if self._columns is not None:
            kept = np.concatenate([self._columns[:at], self._columns[at + width :]])
            dense = np.where(kept, dense, np.float32(0))
        if self.keep is not None:
            absolute = np.abs(dense)
            self._sums.append(absolute.sum(axis=1, dtype=np.float64))
            if self.keep < n_cols:  # zero all but the largest ``keep`` entries of each row
                cut = np.partition(absolute, n_cols - self.keep, axis=1)[:, n_cols - self.keep]
                dense = np.where(absolute >= cut[:, None], dense, np.float32(0))
            del absolute
        nonzero = dense != 0  # one scan (nonzero() is several times faster on bools)
        counts = np.count_nonzero(nonzero, axis=1)
        # scipy gives indices and indptr one dtype: int32 for both where they fit, else 12 B/edge
        idx_dtype = _index_dtype(int(counts.sum()), self.n_sources)
        indptr = np.zeros(n_rows + 1, dtype=idx_dtype)
        np.cumsum(counts, out=indptr[1:])
        data, indices = _empty(int(indptr[-1]), np.float32), _empty(int(indptr[-1]), idx_dtype)
        # the outputs come from torch's allocator (see _empty); a few rows at a time, so that
        # the columns' int64 temporaries stay small
        step = max(1, _GROUP_ENTRIES // max(n_cols, 1))
        for a in range(0, n_rows, step):
            b = min(n_rows, a + step)
            lo, hi = int(indptr[a]), int(indptr[b])
            flat = np.flatnonzero(nonzero[a:b])
            data[lo:hi] = dense[a:b].ravel()[flat]
            flat -= np.repeat(np.arange(0, (b - a) * n_cols, n_cols, dtype=np.int64), counts[a:b])
            if width:
                np.add(flat, width, out=flat, where=flat >= at)
            indices[lo:hi] = flat
        del nonzero, dense
        self._chunks.append(sp.csr_array((data, indices, indptr), shape=(n_rows, self.n_sources)))
        self._nodes.append(np.asarray(nodes, dtype=np.int64))

    def chunks(self) -> list[tuple[np.ndarray, sp.csr_array]]:
        """``(row nodes, rows)`` of every stored chunk, in the order they were added."""
        return list(zip(self._nodes, self._chunks, strict=True))

    def assemble(self, row_map: np.ndarray, col_map: np.ndarray, n_nodes: int) -> sp.csr_array:
        """Build the final ``(n_nodes, n_nodes)`` adjacency and empty the store.

        Args:
            row_map: Row node id -> final node index (``-1``: drop the row).
            col_map: Source column -> final node index (``-1``: drop the column).
            n_nodes: Size of the result.

        Returns:
            CSR array, float32, int32 indices and offsets where they fit (8 bytes per edge).
        """
        identity_cols = bool((col_map == np.arange(len(col_map))).all())
        # pass 1: row lengths after dropping columns
        lengths = np.zeros(n_nodes, dtype=np.int64)
        for i, (nodes, chunk) in enumerate(zip(self._nodes, self._chunks, strict=True)):
            if not identity_cols:  # remapped once; the smaller chunk replaces the original
                chunk = self._chunks[i] = _remap_columns(chunk, col_map)
            rows = row_map[nodes]
            keep = rows >= 0
            lengths[rows[keep]] = np.diff(chunk.indptr)[keep]
        nnz = int(lengths.sum())
        idx_dtype = _index_dtype(nnz, n_nodes)
        indptr = np.zeros(n_nodes + 1, dtype=idx_dtype)
        np.cumsum(lengths, out=indptr[1:])
        indices, data = _empty(nnz, idx_dtype), _empty(nnz, np.float32)
        # pass 2: copy each chunk's rows into place, freeing chunks as we go
        freed = 0
        self._chunks.reverse()  # popped from the end, in the order they were added
        self._nodes.reverse()
        while self._chunks:
            chunk, nodes = self._chunks.pop(), self._nodes.pop()
            rows = row_map[nodes]
            if len(rows) and rows[0] >= 0 and (np.diff(rows) == 1).all():
                # consecutive rows, all kept (a full graph's usual case): one block copy
                lo = int(indptr[rows[0]])
                indices[lo : lo + chunk.nnz] = chunk.indices
                data[lo : lo + chunk.nnz] = chunk.data
            else:
                _scatter_rows(chunk, rows, indptr, indices, data)
            freed += chunk.data.nbytes + chunk.indices.nbytes
            del chunk
            if freed > _TRIM_EVERY:  # the chunks' pages go back as the result's are written
                _trim_heap()
                freed = 0
        return sp.csr_array((data, indices, indptr), shape=(n_nodes, n_nodes))


def _scatter_rows(
    chunk: sp.csr_array,
    rows: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
) -> None:
    """Copy ``chunk``'s rows into the result rows ``rows`` (``-1``: drop the row)."""
    counts = np.diff(chunk.indptr)
    keep_rows = rows >= 0
    keep = np.repeat(keep_rows, counts)
    shift = np.repeat(
        indptr[rows[keep_rows]].astype(np.int64) - chunk.indptr[:-1][keep_rows].astype(np.int64),
        counts[keep_rows],
    )
    dest = np.flatnonzero(keep) + shift
    indices[dest] = chunk.indices[keep]
    data[dest] = chunk.data[keep]


def _remap_columns(chunk: sp.csr_array, col_map: np.ndarray) -> sp.csr_array:
    """Map columns through ``col_map`` and drop those mapped to ``-1`` (keeps row order)."""
    new_cols = col_map[chunk.indices]
    keep = new_cols >= 0
    n_rows = len(chunk.indptr) - 1
    row_of_entry = np.repeat(np.arange(n_rows), np.diff(chunk.indptr))
    counts = np.bincount(row_of_entry[keep], minlength=n_rows)
    idx_dtype = _index_dtype(int(counts.sum()), len(col_map))
    indptr = np.zeros(n_rows + 1, dtype=idx_dtype)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_array(
        (chunk.data[keep], new_cols[keep].astype(idx_dtype), indptr),
        shape=(n_rows, int(col_map.max()) + 1 if len(col_map) else 0),
    )


def _empty(n: int, dtype: type[np.generic]) -> np.ndarray:
    """An uninitialised ``(n,)`` array in memory from torch's allocator.

    numpy asks the kernel for transparent huge pages on every large array (``madvise``); where
    the kernel then compacts memory on each fault (``defrag`` set to ``madvise``, the default of
    many distributions) and finds no huge page, first touching the array runs at ~0.5 GB/s
    instead of several GB/s (measured on a 2-core VM: :meth:`RowStore.add` of a 256 x 23k
    block, 30% nonzero, in 40 ms with numpy's arrays and 17 ms with these). The graph's arrays
    are the largest thing attribution writes.
    """
    return torch.empty(n, dtype=_TORCH_DTYPES[np.dtype(dtype)]).numpy()


_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
}


def _index_dtype(nnz: int, n_cols: int) -> type[np.signedinteger]:
    """int32 where every index and offset fits, else int64."""
    return np.int32 if max(nnz, n_cols) < 2**31 else np.int64


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (AttributeError, OSError, TypeError):  # another libc, or no process handle (Windows)
        return None


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    Chunks of a few MB live in the heap, among freed temporaries, and glibc only returns the
    heap's top on ``free``: without this, assembling a large graph holds the freed chunks and the
    finished matrix at once (measured: 7.1 GB instead of about 4 GB for a 418M-edge graph).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
