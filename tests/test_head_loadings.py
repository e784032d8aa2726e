"""head_loadings: each edge split over the heads that carry it, summing to the edge, and what
freezing a head removes from an edge, measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sae_circuits as sc

from .conftest import PROMPT, build
from .oracle import FrozenOracle
from .tolerance import assert_close


def _graph(arch: str, kind: str):
    model, tcs = build(arch, kind)
    ts = sc.load_transcoders(tcs)
    return model, ts, sc.attribute(model, PROMPT, ts)


def _edges(graph, rng: np.random.Generator, n: int = 60) -> pd.DataFrame:
    """A sample of edges into every kind of target (features of each layer, logits)."""
    edges = graph.edges()
    picks = []
    for _, group in edges.groupby(["target_kind", "target_layer"], dropna=False, observed=True):
        picks.append(group.sample(min(len(group), n // 4), random_state=int(rng.integers(1 << 30))))
    return pd.concat(picks)[["source", "target", "weight"]]


@pytest.mark.parametrize(
    ("arch", "kind"), [("gpt2", "relu"), ("llama", "skip"), ("gemma2", "jumprelu")]
)
def test_loadings_sum_to_the_edges(arch, kind):
    model, ts, graph = _graph(arch, kind)
    edges = _edges(graph, np.random.default_rng(0))
    loads = sc.head_loadings(model, PROMPT, ts, graph, edges=edges)
    assert set(loads["part"]) == {"head", "direct"}
    total = loads.groupby(["source", "target"])["loading"].sum()
    weight = edges.set_index(["source", "target"])["weight"]
    assert_close(total[weight.index].to_numpy(), weight.to_numpy(), rtol=1e-4, what="sums")
    # a head above the target's layer never carries its edges; the direct part is same-position
    n_layers = model.cfg.n_layers
    layer_of = graph.nodes["layer"].to_numpy(dtype=float, na_value=n_layers)
    heads = loads[loads["part"] == "head"]
    assert (heads["layer"].to_numpy() <= layer_of[heads["target"]]).all()
    direct = loads[loads["part"] == "direct"]
    pos = graph.nodes["position"].to_numpy(dtype=float)
    assert (pos[direct["source"]] == pos[direct["target"]]).all()
    # the whole pruned graph too (its own node indices)
    pruned = graph.prune(0.7, 0.95)
    all_loads = sc.head_loadings(model, PROMPT, ts, pruned)
    assert all_loads.groupby(["source", "target"]).ngroups == pruned.adjacency.nnz


@pytest.mark.parametrize(
    ("arch", "kind"), [("gpt2", "relu"), ("llama", "skip"), ("gemma2", "jumprelu")]
)
def test_freezing_a_head_removes_its_loading(arch, kind):
    """Between adjacent layers every path crosses one head: freezing head (l, h) in a float64
    frozen copy of the model changes the edge by exactly minus its loading."""
    model, ts, graph = _graph(arch, kind)
    nodes = graph.nodes
    kinds = nodes["kind"].astype(str).to_numpy()
    layer = nodes["layer"].to_numpy(dtype=float, na_value=-1)
    edges = graph.edges()
    one_hop = edges[
        (edges["source_kind"] == "feature")
        & (edges["target_kind"] == "feature")
        & (edges["source_layer"] == 0)
        & (edges["target_layer"] == 1)
        & (edges["source_position"] != edges["target_position"])
    ]
    assert len(one_hop) > 10
    sources = one_hop["source"].drop_duplicates().to_numpy()[:4]
    chosen = one_hop[one_hop["source"].isin(sources)]
    loads = sc.head_loadings(model, PROMPT, ts, graph, edges=chosen)
    tokens = torch.tensor(graph.metadata["tokens"])
    adjacency = graph.adjacency.toarray()
    checked = 0
    for head in range(model.cfg.n_heads):
        oracle = FrozenOracle(model, ts, tokens, frozen_heads={1: [head]})
        mine = loads[(loads["layer"] == 1) & (loads["head"] == head)]
        loading = dict(
            zip(zip(mine["source"], mine["target"], strict=True), mine["loading"], strict=True)
        )
        for s in sources:
            measured = oracle.measured_column(graph, int(s))
            targets = chosen.loc[chosen["source"] == s, "target"].to_numpy()
            expected = adjacency[targets, s] - np.array([loading.get((s, t), 0.0) for t in targets])
            scale = np.abs(adjacency[targets, s]).max()
            assert_close(measured[targets], expected, rtol=1e-4, scale=scale, what=f"head {head}")
            checked += len(targets)
    assert checked > 10
    assert (kinds[chosen["target"]] == "feature").all() and (layer[chosen["target"]] == 1).all()


def test_bad_input():
    model, ts, graph = _graph("gpt2", "relu")
    with pytest.raises(ValueError, match="not the graph's"):
        sc.head_loadings(model, "t1 t2 t3", ts, graph)
    with pytest.raises(ValueError, match="lacks column"):
        sc.head_loadings(model, PROMPT, ts, graph, edges=pd.DataFrame({"source": [0]}))
    with pytest.raises(ValueError, match="outside the graph"):
        sc.head_loadings(
            model, PROMPT, ts, graph, edges=pd.DataFrame({"source": [0], "target": [10**6]})
        )
    logit = int(graph.target_indices[0])
    with pytest.raises(ValueError, match="not an edge of the graph"):
        sc.head_loadings(
            model, PROMPT, ts, graph, edges=pd.DataFrame({"source": [logit], "target": [0]})
        )
