"""Influence of nodes on the output, computed on sparse adjacency matrices.

With ``A`` the adjacency (rows = targets, columns = sources) and ``Â = |A|`` normalised so that
each row sums to one, the influence of every node on a weighted set of targets ``w`` (the logit
probabilities) is ``w Â + w Â² + ...``: the fraction of each target's (absolute) input that flows,
over paths of any length, through the node. The graph is a DAG, so the series is finite: the
product becomes exactly zero after at most depth-of-graph steps.

Everything here works on ``scipy.sparse`` arrays, in memory proportional to the stored edges: no
dense ``n x n`` matrix is ever formed. The same routine serves a partially computed adjacency
(only some rows known, as during influence-ordered attribution).

Example:
    >>> M = row_normalize(graph.adjacency)
    >>> influence = propagate(M, seed=logit_weights)     # (n_nodes,)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["propagate", "propagate_chunks", "row_normalize"]


def row_normalize(matrix: sp.sparray | sp.spmatrix, *, eps: float = 1e-10) -> sp.csr_array:
    """``|matrix|`` with each row divided by its sum (rows summing to less than ``eps`` by ``eps``).

    Args:
        matrix: ``(R, N)`` sparse matrix.
        eps: Floor of the row sums.

    Returns:
        ``(R, N)`` CSR array in float64.
    """
    m = sp.csr_array(matrix, dtype=np.float64, copy=True)
    m.data = np.abs(m.data)
    sums = np.asarray(m.sum(axis=1)).ravel()
    scale = 1.0 / np.maximum(sums, eps)
    m.data *= np.repeat(scale, np.diff(m.indptr))
    return m


def propagate(
    normalized: sp.csr_array,
    seed: np.ndarray,
    *,
    row_to_node: np.ndarray | None = None,
    max_iter: int = 1000,
) -> np.ndarray:
    """Sum of ``seed @ M + seed @ M @ M + ...`` over a (partial) normalised adjacency.

    Args:
        normalized: ``(R, N)`` row-normalised adjacency; row ``r`` is node ``row_to_node[r]``.
        seed: ``(N,)`` weights on target nodes (e.g. logit probabilities).
        row_to_node: ``(R,)`` node of each row; default ``arange(N)`` (all rows known).
        max_iter: Safety bound on the number of steps.

    Returns:
        ``(N,)`` influence of every node (the seed itself not included).

    Raises:
        RuntimeError: The product did not vanish within ``max_iter`` steps (the graph has a cycle).
    """
    n_rows, n_nodes = (int(x) for x in normalized.shape)  # type: ignore[union-attr]
    if row_to_node is None:
        if n_rows != n_nodes:
            raise ValueError("a non-square matrix needs row_to_node")
        row_to_node = np.arange(n_nodes)
    mt = normalized.T.tocsr()
    influence = np.zeros(n_nodes, dtype=np.float64)
    prod = np.asarray(seed, dtype=np.float64)
    for _ in range(max_iter):
        prod = mt @ prod[row_to_node]
        if not prod.any():
            return influence
        influence += prod
    raise RuntimeError(f"influence did not converge in {max_iter} steps: is the graph acyclic?")


def propagate_chunks(
    chunks: Sequence[tuple[np.ndarray, sp.csr_array]],
    seed: np.ndarray,
    *,
    eps: float = 1e-8,
    max_iter: int = 1000,
    row_sums: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """:func:`propagate` over rows kept as chunks, normalising each chunk on the fly.

    Equivalent to stacking the chunks, calling :func:`row_normalize` and :func:`propagate`, but
    only one chunk's ``|values|`` is materialised at a time: memory stays at the stored rows.

    Args:
        chunks: ``(row_nodes (R_i,), rows (R_i, N))`` pairs: raw (signed) adjacency rows and the
            node of each row.
        seed: ``(N,)`` weights on target nodes.
        eps: Floor of the row sums of ``|rows|``.
        max_iter: Safety bound on the number of steps.
        row_sums: Per chunk, ``(R_i,)`` the sums of ``|row|`` to normalise by, where the stored
            rows are cut to their largest entries (their own sums would be too small); default:
            the stored rows' sums.

    Returns:
        ``(N,)`` influence of every node (the seed itself not included).
    """
    n_nodes = len(seed)
    scales = []
    for i, (_, rows) in enumerate(chunks):
        if row_sums is not None:
            sums = np.asarray(row_sums[i], dtype=np.float64)
        else:
            absolute = sp.csr_array(
                (np.abs(rows.data), rows.indices, rows.indptr), shape=rows.shape
            )
            sums = np.asarray(absolute.sum(axis=1), dtype=np.float64).ravel()
        scales.append(1.0 / np.maximum(sums, eps))
    influence = np.zeros(n_nodes, dtype=np.float64)
    prod = np.asarray(seed, dtype=np.float64)
    for _ in range(max_iter):
        nxt = np.zeros(n_nodes, dtype=np.float64)
        for (nodes, rows), scale in zip(chunks, scales, strict=True):
            weights = prod[nodes] * scale
            if not weights.any():
                continue
            absolute = sp.csr_array(
                (np.abs(rows.data), rows.indices, rows.indptr), shape=rows.shape
            )
            contribution = absolute.T @ weights
            nxt[: len(contribution)] += contribution
        prod = nxt
        if not prod.any():
            return influence
        influence += prod
    raise RuntimeError(f"influence did not converge in {max_iter} steps: is the graph acyclic?")
