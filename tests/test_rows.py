"""The sparse row store: chunks in, one CSR adjacency out, checked against dense arithmetic."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from sae_circuits.attribution import _rows
from sae_circuits.attribution._rows import RowStore


def _sparse_rows(gen: torch.Generator, n_rows: int, n_cols: int) -> torch.Tensor:
    values = torch.randn(n_rows, n_cols, generator=gen)
    return values * (torch.rand(n_rows, n_cols, generator=gen) < 0.3)


def test_rows_are_stored_with_int32_indices_and_offsets():
    store = RowStore(50)
    block = _sparse_rows(torch.Generator().manual_seed(0), 6, 50)
    store.add(np.arange(6), block)
    [(nodes, chunk)] = store.chunks()
    assert chunk.indices.dtype == np.int32 and chunk.indptr.dtype == np.int32
    assert chunk.data.dtype == np.float32
    assert np.array_equal(nodes, np.arange(6))
    assert np.array_equal(chunk.toarray(), block.numpy())
    assert chunk.nnz == int((block != 0).sum())


@pytest.mark.parametrize("entries", [1, 37, 1 << 18], ids=["a-row-at-a-time", "a-few", "one-scan"])
def test_rows_scanned_a_few_at_a_time_give_the_same_chunk(monkeypatch, entries):
    """``add`` scans a block ``_GROUP_ENTRIES // n_cols`` rows at a time (at least one): every
    grouping gives the dense block back, gap included, and empty rows keep their offsets."""
    monkeypatch.setattr(_rows, "_GROUP_ENTRIES", entries)
    gen = torch.Generator().manual_seed(2)
    full = _sparse_rows(gen, 9, 30)
    full[:, 8:12] = 0
    full[3] = 0  # an empty row between groups
    narrow = torch.cat([full[:, :8], full[:, 12:]], dim=1)
    store = RowStore(30)
    store.add(np.arange(9), narrow, gap=(8, 4))
    [(_, chunk)] = store.chunks()
    assert np.array_equal(chunk.toarray(), full.numpy())
    assert chunk.indptr[3] == chunk.indptr[4] and chunk.nnz == int((full != 0).sum())


def test_a_gap_of_zero_columns_is_put_back_in_place():
    gen = torch.Generator().manual_seed(1)
    full = _sparse_rows(gen, 5, 40)
    full[:, 10:25] = 0  # the columns a slice may leave out
    narrow = torch.cat([full[:, :10], full[:, 25:]], dim=1)
    store = RowStore(40)
    store.add(np.arange(5), narrow, gap=(10, 15))
    [(_, chunk)] = store.chunks()
    assert np.array_equal(chunk.toarray(), full.numpy())
    with pytest.raises(ValueError, match="expected 40"):
        store.add(np.arange(5), narrow)  # 25 columns without the gap's 15


@pytest.mark.parametrize("order", ["consecutive", "shuffled"])
def test_assemble_equals_dense_reindexing(order):
    """Rows arrive in any order, some rows and columns are dropped: same as numpy on dense."""
    gen = torch.Generator().manual_seed(2)
    n_sources, n_extra = 30, 4  # row node ids: sources 0..29 and 4 extra rows (logits)
    nodes = np.arange(n_sources + n_extra)
    if order == "shuffled":
        nodes = np.random.default_rng(0).permutation(nodes)
    dense = np.zeros((n_sources + n_extra, n_sources), dtype=np.float32)
    store = RowStore(n_sources)
    for lo in range(0, len(nodes), 7):
        part = nodes[lo : lo + 7]
        block = _sparse_rows(gen, len(part), n_sources)
        dense[part] = block.numpy()
        store.add(part, block)
    # keep every other source; the extra rows become the last nodes
    kept = np.arange(0, n_sources, 2)
    n_nodes = len(kept) + n_extra
    col_map = np.full(n_sources, -1)
    col_map[kept] = np.arange(len(kept))
    row_map = np.full(n_sources + n_extra, -1)
    row_map[kept] = np.arange(len(kept))
    row_map[n_sources:] = np.arange(len(kept), n_nodes)
    adjacency = store.assemble(row_map, col_map, n_nodes)

    expect = np.zeros((n_nodes, n_nodes), dtype=np.float32)
    rows = np.flatnonzero(row_map >= 0)
    expect[np.ix_(row_map[rows], col_map[kept])] = dense[np.ix_(rows, kept)]
    assert np.array_equal(adjacency.toarray(), expect)
    assert adjacency.indices.dtype == np.int32 and adjacency.indptr.dtype == np.int32
    assert adjacency.has_canonical_format
    assert store.chunks() == []  # the store is emptied as it goes


def test_full_assembly_takes_the_block_copy_path_and_frees_chunks(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    store = RowStore(12)
    blocks = [_sparse_rows(gen, 4, 12) for _ in range(3)]
    for i, block in enumerate(blocks):
        store.add(np.arange(4 * i, 4 * i + 4), block)
    scattered, trims = [], []
    monkeypatch.setattr(_rows, "_scatter_rows", lambda *a: scattered.append(a))
    monkeypatch.setattr(_rows, "_TRIM_EVERY", 0)
    monkeypatch.setattr(_rows, "_trim_heap", lambda: trims.append(1))
    identity = np.arange(12)
    adjacency = store.assemble(identity, identity, 12)
    assert np.array_equal(adjacency.toarray(), torch.cat(blocks).numpy())
    assert scattered == []  # consecutive kept rows: copied as blocks
    assert len(trims) == 3  # free heap pages handed back as chunks are freed


def test_heap_trim_is_found_on_glibc_and_harmless():
    if platform.libc_ver()[0] == "glibc":
        assert _rows._malloc_trim() is not None  # else the trimming would silently do nothing
    _rows._trim_heap()  # glibc: returns free pages; elsewhere a no-op
    store = RowStore(3)
    store.add(np.arange(1), torch.tensor([[0.0, 2.0, 0.0]]))
    assert store.assemble(np.arange(1), np.arange(3), 3).toarray()[0, 1] == 2.0


def test_a_ranking_store_keeps_each_rows_largest_entries_and_its_exact_sum():
    gen = torch.Generator().manual_seed(3)
    full = _sparse_rows(gen, 7, 60)
    full[:, 20:30] = 0
    narrow = torch.cat([full[:, :20], full[:, 30:]], dim=1)
    store = RowStore(60, keep=5)
    store.add(np.arange(7), narrow, gap=(20, 10))
    [(_, chunk)] = store.chunks()
    dense = chunk.toarray()
    for r in range(7):
        expected = np.argsort(-np.abs(full[r].numpy()), kind="stable")[:5]
        assert set(np.flatnonzero(dense[r])) == set(expected)  # no ties in random floats
        assert np.array_equal(dense[r, expected], full[r].numpy()[expected])
    [sums] = store.row_sums() or []
    assert np.allclose(sums, np.abs(full.numpy()).sum(1, dtype=np.float64), rtol=1e-6)
    assert RowStore(60).row_sums() is None


def test_a_column_filtered_store_drops_the_other_columns_as_rows_arrive():
    gen = torch.Generator().manual_seed(4)
    full = _sparse_rows(gen, 4, 30)
    full[:, 5:9] = 0
    columns = np.zeros(30, dtype=bool)
    columns[[0, 3, 10, 29]] = True
    store = RowStore(30, columns=columns)
    store.add(np.arange(4), torch.cat([full[:, :5], full[:, 9:]], dim=1), gap=(5, 4))
    [(_, chunk)] = store.chunks()
    assert np.array_equal(chunk.toarray(), full.numpy() * columns)
    with pytest.raises(ValueError, match=r"columns: expected shape \(30,\)"):
        RowStore(30, columns=np.ones(29, dtype=bool))
