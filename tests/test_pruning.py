"""prune() and scores(): against a dense numpy rendering of the reference's rules, at scale, bad input."""

from __future__ import annotations

import dataclasses
import math
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sae_circuits as sc
from sae_circuits.graph._graph import AttributionGraph
from sae_circuits.graph._pruning import GraphScores, find_threshold

from .conftest import PROMPT, build

_GRAPHS: dict[tuple[str, str], AttributionGraph] = {}


def graph_of(arch: str, kind: str) -> AttributionGraph:
    if (arch, kind) not in _GRAPHS:
        model, tcs = build(arch, kind)
        _GRAPHS[arch, kind] = sc.attribute(model, PROMPT, sc.load_transcoders(tcs))
    return _GRAPHS[arch, kind]


# --- the reference's rules, dense, with the node blocks found by position as the reference does


def _normalize(m: np.ndarray) -> np.ndarray:
    m = np.abs(m)
    return m / np.maximum(m.sum(axis=1, keepdims=True), 1e-10)


def _influence(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = np.zeros(len(w))
    step = w @ m
    while step.any():
        total += step
        step = step @ m
    return total


def _cutoff(scores: np.ndarray, fraction: float) -> float:
    """The documented rule, written out: positive scores only, shares against their own sum."""
    ordered = [float(x) for x in sorted(scores.ravel().tolist(), reverse=True) if x > 0]
    if not ordered:
        return 0.0
    if fraction >= 1.0:
        return ordered[-1]
    running, partial = 0.0, []
    for x in ordered:
        running += x
        partial.append(running)
    for x, p in zip(ordered, partial, strict=True):
        if p / partial[-1] >= fraction:
            return x
    return ordered[-1]


def dense_prune(graph: AttributionGraph, node_threshold: float, edge_threshold: float):
    a = graph.adjacency.toarray().astype(np.float64)
    n = len(a)
    counts = graph.nodes["kind"].value_counts()
    n_feat, n_tail = counts["feature"], counts["token"] + counts["logit"]
    w = np.zeros(n)
    w[n - counts["logit"] :] = graph.logits["probability"].to_numpy(np.float64)
    infl = _influence(_normalize(a), w)
    keep = infl >= _cutoff(infl, node_threshold)
    keep[n - n_tail :] = True
    sub = a * keep[:, None] * keep[None, :]
    norm = _normalize(sub)
    scores = norm * (_influence(norm, w) + w)[:, None]
    inside = sub != 0
    edges = inside & (scores >= _cutoff(scores, edge_threshold))
    while (inside & (scores > 0) & ~edges).any():  # clean-up only when an edge was cut
        new = keep.copy()
        new[: n - n_tail] &= edges[:, : n - n_tail].any(axis=0)
        new[:n_feat] &= edges[:n_feat].any(axis=1)
        if (new == keep).all():
            break
        keep = new
        edges &= keep[:, None] & keep[None, :]
    order = np.argsort(-infl, kind="stable")
    cum = np.empty(n)
    cum[order] = np.cumsum(infl[order]) / infl.sum()
    return keep, edges & (a != 0), infl, cum


def dense_scores(graph: AttributionGraph) -> tuple[float, float]:
    a = graph.adjacency.toarray().astype(np.float64)
    kind = graph.nodes["kind"].astype(str).to_numpy()
    w = graph.logit_weights
    m = _normalize(a)
    infl = _influence(m, w)
    tok, err = infl[kind == "token"].sum(), infl[kind == "error"].sum()
    out = infl + w
    complete = ((1 - m[:, kind == "error"].sum(axis=1)) * out).sum() / out.sum()
    return tok / (tok + err), complete


def kept_edges(pruned: AttributionGraph) -> set[tuple[int, int]]:
    coo = pruned.adjacency.tocoo()
    idx = pruned.nodes["node_index"].to_numpy()
    return set(zip(idx[coo.row].tolist(), idx[coo.col].tolist(), strict=True))


@pytest.mark.parametrize(
    ("arch", "kind", "node_t", "edge_t"),
    [
        ("gpt2", "relu", 0.8, 0.98),
        ("gemma2", "jumprelu", 0.8, 0.98),
        ("llama", "skip", 0.5, 0.9),
        ("llama", "skip", 0.95, 0.7),
        ("gpt2", "relu", 1.0, 1.0),
        ("gemma2", "jumprelu", 0.0, 0.0),
    ],
)
def test_prune_matches_dense_reference_rule(arch, kind, node_t, edge_t):
    graph = graph_of(arch, kind)
    keep, edges, infl, cum = dense_prune(graph, node_t, edge_t)
    pruned = graph.prune(node_threshold=node_t, edge_threshold=edge_t)
    assert pruned.nodes["node_index"].tolist() == np.flatnonzero(keep).tolist()
    t, s = np.nonzero(edges)
    assert kept_edges(pruned) == set(zip(t.tolist(), s.tolist(), strict=True))
    idx = pruned.nodes["node_index"].to_numpy()
    # float64 sums of non-negative terms in another order: relative per node; the absolute
    # floor (for influences that are zero) is relative to the largest influence
    np.testing.assert_allclose(
        pruned.nodes["influence"], infl[idx], rtol=1e-9, atol=1e-12 * np.abs(infl).max()
    )
    np.testing.assert_allclose(pruned.nodes["cumulative_influence"], cum[idx], rtol=1e-9)
    # a pruned graph is a subgraph: same node rows, same weights
    original = graph.nodes.iloc[idx].reset_index(drop=True)
    pd.testing.assert_frame_equal(pruned.nodes[list(graph.nodes.columns)], original)
    coo = pruned.adjacency.tocoo()
    assert np.array_equal(coo.data, graph.adjacency.toarray()[idx[coo.row], idx[coo.col]])
    assert pruned.adjacency.dtype == graph.adjacency.dtype


def test_pruned_graph_structure():
    graph = graph_of("gpt2", "relu")
    before = graph.adjacency.copy()
    pruned = graph.prune()
    assert isinstance(pruned, AttributionGraph) and isinstance(pruned.adjacency, sp.csr_array)
    assert 0 < pruned.n_nodes < graph.n_nodes and pruned.adjacency.nnz < graph.adjacency.nnz
    kinds = pruned.nodes["kind"].value_counts()
    assert kinds["token"] == (graph.nodes["kind"] == "token").sum()
    assert kinds["logit"] == len(graph.logits) == len(pruned.logits)
    pd.testing.assert_frame_equal(pruned.logits, graph.logits)
    # every kept feature has an input and an output, every kept error an output
    edges = pruned.edges()
    kind = pruned.nodes["kind"].astype(str).to_numpy()
    has_out = np.isin(np.arange(pruned.n_nodes), edges["source"])
    has_in = np.isin(np.arange(pruned.n_nodes), edges["target"])
    assert has_out[kind == "feature"].all() and has_in[kind == "feature"].all()
    assert has_out[kind == "error"].all()
    # more influential nodes rank first
    inf = pruned.nodes.sort_values("influence", ascending=False)
    assert inf["cumulative_influence"].is_monotonic_increasing
    assert pruned.metadata["pruning"] == {
        "node_threshold": 0.8,
        "edge_threshold": 0.98,
        "n_nodes_before": graph.n_nodes,
        "n_edges_before": graph.adjacency.nnz,
    }
    assert "pruning" not in graph.metadata and (graph.adjacency != before).nnz == 0
    # pruning again composes node_index with the original graph
    again = pruned.prune(node_threshold=0.5, edge_threshold=0.9)
    assert set(again.nodes["node_index"]) <= set(pruned.nodes["node_index"])
    first = graph.nodes.iloc[again.nodes["node_index"].to_numpy()].reset_index(drop=True)
    pd.testing.assert_frame_equal(again.nodes[list(graph.nodes.columns)], first)


def test_find_threshold_rule():
    scores = np.array([0.1, 0.4, 0.2, 0.3])
    # sorted 0.4 0.3 0.2 0.1 -> shares 0.4 0.7 0.9 1.0
    assert find_threshold(scores, 0.7) == 0.3
    assert find_threshold(scores, 0.71) == 0.2
    assert find_threshold(scores, 0.0) == 0.4
    assert find_threshold(scores, 1.0) == 0.1
    assert find_threshold(np.zeros(3), 0.5) == 0.0
    assert find_threshold(np.array([]), 0.5) == 0.0
    # zeros never matter: 1.0 keeps the smallest positive score, whatever the float sums give
    assert find_threshold(np.array([0.1] * 10 + [0.0] * 5), 1.0) == 0.1
    assert find_threshold(np.array([0.0, 3e-30, 1.0]), 1.0) == 3e-30
    # shares are taken against the cumulative sum's own end: a share just below 1 is reachable
    assert find_threshold(np.array([0.1] * 10), 1.0 - 1e-15) == pytest.approx(0.1)


def test_find_threshold_ties_are_kept_together():
    rng = np.random.default_rng(0)
    scores = np.array([0.3, 0.3, 0.2, 0.2, 0.2, 0.1, 0.1, 0.0])
    for threshold in (0.0, 0.29, 0.3, 0.31, 0.5, 0.6, 0.61, 0.8, 0.95, 1.0):
        cuts = {find_threshold(rng.permutation(scores), threshold) for _ in range(20)}
        assert len(cuts) == 1, (threshold, cuts)  # the same cut-off for every order
        (cut,) = cuts
        kept = scores[scores >= cut]
        # equal scores are all kept or all dropped
        for value in np.unique(scores):
            on = scores == value
            assert (scores[on] >= cut).all() or (scores[on] < cut).all()
        assert kept.size >= 1 and kept.min() > 0
    assert find_threshold(scores, 0.0) == 0.3  # only the top, with its tie
    assert find_threshold(scores, 0.61) == 0.2


@pytest.mark.parametrize(
    ("arch", "kind"),
    [("gpt2", "relu"), ("llama", "skip"), ("gemma2", "jumprelu"), ("llama", "relu")],
)
def test_threshold_one_keeps_everything_with_influence(arch, kind):
    """prune(1.0, 1.0): every node and edge of non-zero influence, on every CPU."""
    graph = graph_of(arch, kind)
    pruned = graph.prune(node_threshold=1.0, edge_threshold=1.0)
    n = graph.n_nodes
    kind_of = graph.nodes["kind"].astype(str).to_numpy()
    _, _, influence, _ = dense_prune(graph, 1.0, 1.0)
    expect_nodes = np.flatnonzero((influence > 0) | np.isin(kind_of, ["token", "logit"]))
    assert pruned.nodes["node_index"].tolist() == expect_nodes.tolist()
    # edges: all stored, non-zero edges between kept nodes whose target carries influence
    a = graph.adjacency.tocoo()
    keep = np.zeros(n, dtype=bool)
    keep[expect_nodes] = True
    flows = influence.copy()
    flows[kind_of == "logit"] += graph.logits["probability"].to_numpy(np.float64)
    sel = keep[a.row] & keep[a.col] & (a.data != 0) & (flows[a.row] > 0)
    expect_edges = set(zip(a.row[sel].tolist(), a.col[sel].tolist(), strict=True))
    assert kept_edges(pruned) == expect_edges
    assert len(expect_edges) > 0 and (influence == 0).any() == (len(expect_nodes) < n)


def test_prune_is_the_same_for_tied_nodes_in_any_order():
    """Two features that carry exactly equal (dyadic) influence are kept or dropped together,
    however the nodes are ordered."""
    # tokens 0..3 -> features f0..f5 -> logit; f0/f1 tied, f2/f3 tied, f4/f5 tied and weak
    weights = {0: 4.0, 1: 4.0, 2: 2.0, 3: 2.0, 4: 0.25, 5: 0.25}
    for perm_seed in range(6):
        perm = np.random.default_rng(perm_seed).permutation(6)
        n = 6 + 4 + 1
        rows, cols, vals = [], [], []
        for slot, f in enumerate(perm):
            rows.append(10)
            cols.append(slot)
            vals.append(weights[int(f)])
            rows.append(slot)
            cols.append(6 + int(f) % 4)
            vals.append(1.0)
        adjacency = sp.csr_array(
            (np.array(vals, np.float32), (np.array(rows), np.array(cols))), shape=(n, n)
        )
        kinds = ["feature"] * 6 + ["token"] * 4 + ["logit"]
        na = [pd.NA] * n
        nodes = pd.DataFrame(
            {
                "kind": pd.Categorical(kinds, categories=["feature", "error", "token", "logit"]),
                "layer": pd.array([0] * 6 + na[6:], dtype="Int64"),
                "position": pd.array([3] * 6 + [0, 1, 2, 3, 3], dtype="Int64"),
                "feature": pd.array([int(f) for f in perm] + na[6:], dtype="Int64"),
                "token_id": pd.array([*na[:6], 0, 1, 2, 3, 9], dtype="Int64"),
                "activation": pd.array([1.0] * 6 + na[6:], dtype="Float32"),
                "probability": pd.array([*na[:-1], 1.0], dtype="Float32"),
            }
        )
        graph = AttributionGraph(
            adjacency, nodes, pd.DataFrame({"token_id": [9], "probability": [1.0]}), {}
        )
        # influences: tokens 0/1 0.34, f0/f1 0.32, tokens 2/3 and f2/f3 0.16, f4/f5 0.02 (of 2)
        cases = ((0.45, {0, 1}), (0.6, {0, 1}), (0.7, {0, 1, 2, 3}), (0.95, {0, 1, 2, 3}))
        for node_t, expect in (*cases, (0.995, set(range(6))), (1.0, set(range(6)))):
            pruned = graph.prune(node_threshold=node_t, edge_threshold=1.0)
            feats = pruned.nodes[pruned.nodes["kind"] == "feature"]["feature"].astype(int)
            assert set(feats) == expect, (perm_seed, node_t, sorted(feats))


def test_tied_edge_scores_keep_every_node():
    # one feature (no inputs) and nine tokens feed one logit equally: ten tied edge scores of
    # 0.1. Ties at the cut-off are all kept, so no edge that carries influence is cut and no node
    # is dropped for lack of edges, at any threshold; the old rule depended on the last bits of a
    # float sum here (kept at 1.0, dropped at 0.99)
    n = 11
    adjacency = sp.csr_array(
        (np.ones(10, dtype=np.float32), (np.full(10, 10), np.arange(10))), shape=(n, n)
    )
    kinds = ["feature"] + ["token"] * 9 + ["logit"]
    na = [pd.NA] * n
    nodes = pd.DataFrame(
        {
            "kind": pd.Categorical(kinds, categories=["feature", "error", "token", "logit"]),
            "layer": pd.array([0, *na[1:]], dtype="Int64"),
            "position": pd.array([8, *range(9), 8], dtype="Int64"),
            "feature": pd.array([3, *na[1:]], dtype="Int64"),
            "token_id": pd.array([pd.NA, *range(9), 5], dtype="Int64"),
            "activation": pd.array([1.0, *na[1:]], dtype="Float32"),
            "probability": pd.array([*na[:-1], 1.0], dtype="Float32"),
        }
    )
    graph = AttributionGraph(
        adjacency, nodes, pd.DataFrame({"token_id": [5], "probability": [1.0]}), {}
    )
    for edge_t in (1.0, 0.99, 0.5, 0.0):
        keep, *_ = dense_prune(graph, 1.0, edge_t)
        pruned = graph.prune(node_threshold=1.0, edge_threshold=edge_t)
        assert bool(keep[0]) is True
        assert pruned.nodes["node_index"].tolist() == np.flatnonzero(keep).tolist()
        assert pruned.adjacency.nnz == 10


@pytest.mark.parametrize(
    ("arch", "kind"), [("gpt2", "relu"), ("llama", "skip"), ("gemma2", "jumprelu")]
)
def test_scores_match_dense_formula(arch, kind):
    graph = graph_of(arch, kind)
    for g in (graph, graph.prune()):
        s = g.scores()
        rep, comp = dense_scores(g)
        assert s.replacement == pytest.approx(rep, rel=1e-9)
        assert s["completeness"] == pytest.approx(comp, rel=1e-9)
        assert 0 < s.replacement < 1 and 0 < s.completeness <= 1
    assert graph.prune().scores() != graph.scores()


def test_scores_object():
    s = graph_of("gpt2", "relu").scores()
    assert isinstance(s, GraphScores)
    assert dict(s) == {"replacement": s.replacement, "completeness": s.completeness}
    assert s["replacement"] == s.replacement and len(s) == 2 and "completeness" in s
    with pytest.raises(KeyError, match="replacement"):
        s["fidelity"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.replacement = 1.0  # type: ignore[misc]


def test_scores_with_no_error_nodes_is_one():
    graph = graph_of("llama", "skip")
    err = graph.node_indices("error")
    a = graph.adjacency.tolil()
    a[:, err] = 0
    g = dataclasses.replace(graph, adjacency=sp.csr_array(a.tocsr()))
    s = g.scores()
    assert s.replacement == 1.0 and s.completeness == pytest.approx(1.0)


def random_dag(n_nodes=100_000, n_layers=10, n_pos=100, n_logits=10, fan_in=15, seed=0):
    """A graph shaped like an attribution graph: layered, edges from lower to higher levels."""
    rng = np.random.default_rng(seed)
    n_err, n_tok = n_layers * n_pos, n_pos
    n_feat = n_nodes - n_err - n_tok - n_logits
    kind = np.repeat(
        np.array(["feature", "error", "token", "logit"]), [n_feat, n_err, n_tok, n_logits]
    )
    layer = np.concatenate(
        [
            rng.integers(0, n_layers, n_feat),
            np.repeat(np.arange(n_layers), n_pos),
            np.full(n_tok + n_logits, -1),
        ]
    )
    level = np.where(kind == "token", 0, np.where(kind == "logit", n_layers + 1, layer + 1))
    sources = np.flatnonzero(kind != "logit")
    sources = sources[np.argsort(level[sources], kind="stable")]
    below = np.searchsorted(level[sources], np.arange(n_layers + 3))  # sources under each level
    targets = np.concatenate(
        [
            np.repeat(np.arange(n_feat), fan_in),
            np.repeat(np.arange(n_nodes - n_logits, n_nodes), 50 * fan_in),
        ]
    )
    src = sources[(rng.random(len(targets)) * below[level[targets]]).astype(np.int64)]
    adjacency = sp.csr_array(
        (rng.standard_normal(len(targets)).astype(np.float32), (targets, src)),
        shape=(n_nodes, n_nodes),
    )
    adjacency.sum_duplicates()
    prob = np.full(n_nodes, np.nan, dtype=np.float32)
    prob[-n_logits:] = rng.dirichlet(np.ones(n_logits))
    nodes = pd.DataFrame(
        {
            "kind": pd.Categorical(kind, categories=["feature", "error", "token", "logit"]),
            "layer": pd.Series(layer, dtype="Int64").mask(layer < 0),
            "position": pd.array(rng.integers(0, n_pos, n_nodes), dtype="Int64"),
            "feature": pd.array(np.arange(n_nodes), dtype="Int64"),
            "token_id": pd.array(np.arange(n_nodes), dtype="Int64"),
            "activation": pd.array(rng.random(n_nodes).astype(np.float32), dtype="Float32"),
            "probability": pd.array(prob, dtype="Float32"),
        }
    )
    logits = pd.DataFrame({"token_id": np.arange(n_logits), "probability": prob[-n_logits:]})
    return AttributionGraph(adjacency, nodes, logits, {})


def test_prune_100k_nodes_stays_sparse():
    graph = random_dag()
    n, nnz = graph.n_nodes, graph.adjacency.nnz
    assert n >= 100_000 and nnz > 1_000_000
    tracemalloc.start()
    try:
        start = time.perf_counter()
        pruned = graph.prune()
        scores = graph.scores()
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dense_bytes = n * n * 4
    assert peak < dense_bytes / 100, f"peak {peak / 2**20:.0f} MiB"
    assert peak < 200 * nnz, f"peak {peak / 2**20:.0f} MiB for {nnz} edges"
    assert elapsed < 30, f"prune + scores took {elapsed:.1f}s"
    assert 0 < pruned.n_nodes < n and 0 < pruned.adjacency.nnz < nnz
    kinds = pruned.nodes["kind"].value_counts()
    assert kinds["token"] == 100 and kinds["logit"] == 10
    assert 0 < scores.replacement <= 1 and 0 < scores.completeness <= 1


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf])
@pytest.mark.parametrize("name", ["node_threshold", "edge_threshold"])
def test_threshold_out_of_range(name, value):
    graph = graph_of("gpt2", "relu")
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\]"):
        graph.prune(**{name: value})


@pytest.mark.parametrize("value", ["0.8", None, True, [0.8]])
def test_threshold_not_a_number(value):
    graph = graph_of("gpt2", "relu")
    with pytest.raises(TypeError, match=r"node_threshold must be a number in \[0, 1\]"):
        graph.prune(node_threshold=value)


def test_thresholds_accept_ints_and_numpy():
    graph = graph_of("gpt2", "relu")
    a = graph.prune(node_threshold=1, edge_threshold=np.float32(0.98))
    b = graph.prune(node_threshold=1.0, edge_threshold=float(np.float32(0.98)))
    assert a.nodes["node_index"].tolist() == b.nodes["node_index"].tolist()


def test_graph_without_logits_is_refused():
    graph = graph_of("gpt2", "relu")
    keep = np.flatnonzero((graph.nodes["kind"] != "logit").to_numpy())
    sub = graph.adjacency[keep][:, keep]
    no_logits = AttributionGraph(
        sp.csr_array(sub), graph.nodes.iloc[keep].reset_index(drop=True), graph.logits.iloc[:0], {}
    )
    for call in (no_logits.prune, no_logits.scores):
        with pytest.raises(ValueError, match="needs target nodes"):
            call()
    zero = graph.nodes.assign(target_weight=graph.nodes["target_weight"] * 0)
    with pytest.raises(ValueError, match=r"weights .* not all zero"):
        dataclasses.replace(graph, nodes=zero).prune()
    # a graph from before target weights: its logits' probabilities are the weights
    old = graph.nodes.drop(columns=["target_weight"])
    old_graph = dataclasses.replace(graph, nodes=old)
    np.testing.assert_array_equal(old_graph.target_weights, graph.target_weights)
    zero = old.assign(probability=old["probability"] * 0)
    with pytest.raises(ValueError, match="probabilities"):
        dataclasses.replace(graph, nodes=zero).prune()


def test_non_finite_adjacency_is_refused():
    graph = graph_of("gpt2", "relu")
    a = graph.adjacency.copy()
    a.data[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        dataclasses.replace(graph, adjacency=a).scores()


def test_graph_pruner_equals_prune_at_every_threshold():
    from sae_circuits.graph import GraphPruner
    from sae_circuits.toy import synthetic_graph

    graph = synthetic_graph(n_features=600, n_edges=30_000, n_positions=12, seed=3)
    pruner = GraphPruner(graph)
    for nt, et in [(0.8, 0.98), (0.5, 0.9), (1.0, 1.0), (0.8, 0.98)]:
        want, got = graph.prune(nt, et), pruner.prune(nt, et)
        assert (want.adjacency != got.adjacency).nnz == 0
        pd.testing.assert_frame_equal(want.nodes, got.nodes)
        assert want.metadata == got.metadata
    with pytest.raises(ValueError, match="node_threshold"):
        pruner.prune(1.5, 0.9)


def test_synthetic_graph_has_the_shape_of_an_attribution_graph():
    from sae_circuits.toy import synthetic_graph

    graph = synthetic_graph(n_features=500, n_edges=20_000, n_layers=3, n_positions=10, seed=1)
    assert graph.n_nodes == 500 + 4 * 10 + 5 and graph.adjacency.nnz == 20_000
    nodes = graph.nodes
    kind = nodes["kind"].astype(str).to_numpy()
    level = np.where(
        kind == "token", 0, np.where(kind == "logit", 4, nodes["layer"].fillna(-1).to_numpy() + 1)
    )
    pos = nodes["position"].to_numpy(dtype=np.int64)
    a = graph.adjacency.tocoo()
    assert (level[a.col] < level[a.row]).all()  # sources below their targets
    assert (pos[a.col] <= pos[a.row]).all()  # and never at a later position
    feats = nodes[kind == "feature"]
    keys = list(zip(feats["layer"], feats["position"], feats["feature"], strict=True))
    assert keys == sorted(set(keys))  # distinct, in layout order
    assert graph.logits["probability"].sum() == pytest.approx(1.0, rel=1e-5)
    assert len(graph.prune().nodes) < graph.n_nodes
    with pytest.raises(ValueError, match="n_edges=0"):
        synthetic_graph(n_edges=0)
    with pytest.raises(ValueError, match="do not fit"):
        synthetic_graph(n_features=100, n_layers=1, n_positions=2, d_sae=8)
