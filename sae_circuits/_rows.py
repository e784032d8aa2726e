"""Attribution rows stored sparse as they are computed, and assembled into one CSR array.

Each batch of rows arrives as a dense ``(B, n_sources)`` block and is kept as a CSR chunk with
int32 column indices and float32 values (8 bytes per stored edge). Assembly copies the chunks into
the final CSR arrays, freeing each chunk as it goes, so the peak is about one final matrix plus
one chunk: never a dense ``n x n`` matrix, never a COO copy with 64-bit indices.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["RowStore"]


class RowStore:
    """Rows of the attribution matrix, in the order they were computed.

    Args:
        n_sources: Number of source columns.
    """

    def __init__(self, n_sources: int) -> None:
        self.n_sources = n_sources
        self._chunks: list[sp.csr_array] = []
        self._nodes: list[np.ndarray] = []

    @property
    def n_rows(self) -> int:
        return sum(len(n) for n in self._nodes)

    def add(self, nodes: np.ndarray, block: torch.Tensor) -> None:
        """Store rows ``block`` (``(B, n_sources)``) for the row nodes ``nodes`` (``(B,)``)."""
        dense = block.detach().float().cpu().numpy()
        n_rows, n_cols = dense.shape
        flat = np.flatnonzero(dense)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(dense, axis=1), out=indptr[1:])
        data = dense.ravel()[flat]
        indices = (flat % n_cols).astype(np.int32)
        del flat, dense
        self._chunks.append(sp.csr_array((data, indices, indptr), shape=(n_rows, n_cols)))
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
            CSR array, float32, int32 indices where they fit.
        """
        identity_cols = bool((col_map == np.arange(len(col_map))).all())
        # pass 1: row lengths after dropping columns
        lengths = np.zeros(n_nodes, dtype=np.int64)
        for nodes, chunk in zip(self._nodes, self._chunks, strict=True):
            rows = row_map[nodes]
            if not identity_cols:
                chunk = _remap_columns(chunk, col_map)
            keep = rows >= 0
            lengths[rows[keep]] = np.diff(chunk.indptr)[keep]
        indptr = np.zeros(n_nodes + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        nnz = int(indptr[-1])
        idx_dtype = np.int32 if max(nnz, n_nodes) < 2**31 else np.int64
        indices = np.empty(nnz, dtype=idx_dtype)
        data = np.empty(nnz, dtype=np.float32)
        # pass 2: copy each chunk's rows into place, freeing chunks as we go
        while self._chunks:
            chunk, nodes = self._chunks.pop(0), self._nodes.pop(0)
            if not identity_cols:
                chunk = _remap_columns(chunk, col_map)
            rows = row_map[nodes]
            counts = np.diff(chunk.indptr)
            keep_rows = rows >= 0
            keep = np.repeat(keep_rows, counts)
            shift = np.repeat(
                indptr[rows[keep_rows]] - chunk.indptr[:-1][keep_rows], counts[keep_rows]
            )
            dest = np.flatnonzero(keep) + shift
            indices[dest] = chunk.indices[keep]
            data[dest] = chunk.data[keep]
            del chunk, dest, keep
        return sp.csr_array((data, indices, indptr), shape=(n_nodes, n_nodes))


def _remap_columns(chunk: sp.csr_array, col_map: np.ndarray) -> sp.csr_array:
    """Map columns through ``col_map`` and drop those mapped to ``-1`` (keeps row order)."""
    new_cols = col_map[chunk.indices]
    keep = new_cols >= 0
    n_rows = len(chunk.indptr) - 1
    row_of_entry = np.repeat(np.arange(n_rows), np.diff(chunk.indptr))
    counts = np.bincount(row_of_entry[keep], minlength=n_rows)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_array(
        (chunk.data[keep], new_cols[keep].astype(np.int32), indptr),
        shape=(n_rows, int(col_map.max()) + 1 if len(col_map) else 0),
    )
