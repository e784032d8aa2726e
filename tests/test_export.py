"""Neuronpedia graph JSON and networkx export."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest

import sae_circuits as sc
from sae_circuits.graph._export import node_ids, save_neuronpedia, to_networkx, to_neuronpedia
from sae_circuits.graph._graph import AttributionGraph
from sae_circuits.graph._pruning import cumulative_influence, node_influence

from .conftest import PROMPT, build

_GRAPH: list[AttributionGraph] = []
NODE_KEYS = {
    "node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
    "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation",
}  # fmt: skip


def graph() -> AttributionGraph:
    if not _GRAPH:
        model, tcs = build("gemma2", "jumprelu")
        _GRAPH.append(sc.attribute(model, PROMPT, sc.load_transcoders(tcs)))
    return _GRAPH[0]


def with_neuronpedia_ids(g: AttributionGraph, ids) -> AttributionGraph:
    meta = {**g.metadata, "transcoders": {**g.metadata["transcoders"], "neuronpedia_ids": ids}}
    return dataclasses.replace(g, metadata=meta)


def test_document_structure_and_node_ids():
    pruned = graph().prune()
    n_layers = graph().metadata["transcoders"]["n_layers"]
    doc = to_neuronpedia(pruned, slug="toy-graph", scan="toy-model")
    json.dumps(doc, allow_nan=False)  # strict JSON
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    meta = doc["metadata"]
    assert meta["slug"] == "toy-graph" and meta["scan"] == "toy-model"
    assert meta["prompt"] == PROMPT and meta["node_threshold"] == 0.8
    assert meta["prompt_tokens"] == [f"t{t}" for t in graph().metadata["tokens"]]
    assert meta["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert meta["generation_settings"]["max_n_logits"] == 10
    assert (
        "max_feature_nodes" not in meta["generation_settings"]
    )  # None: left out (schema: integer)
    assert "feature_details" not in meta  # the toy transcoders have no Neuronpedia ids
    assert doc["qParams"] == {
        "pinnedIds": [],
        "supernodes": [],
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }

    by_id = {n["node_id"]: n for n in doc["nodes"]}
    assert len(by_id) == len(doc["nodes"]) == pruned.n_nodes  # pruned nodes all have links
    for row, node in zip(pruned.nodes.itertuples(), doc["nodes"], strict=True):
        assert set(node) == NODE_KEYS
        kind, layer, pos = str(row.kind), row.layer, row.position
        assert node["ctx_idx"] == pos
        if kind == "feature":
            assert node["node_id"] == f"{layer}_{row.feature}_{pos}"
            assert node["jsNodeId"] == f"{layer}_{row.feature}-0"
            assert (
                node["feature"]
                == (layer + row.feature) * (layer + row.feature + 1) // 2 + row.feature
            )
            assert node["feature_type"] == "cross layer transcoder" and node["layer"] == str(layer)
            assert node["activation"] == pytest.approx(row.activation)
        elif kind == "error":
            assert (node["node_id"], node["jsNodeId"]) == (f"{layer}_-1_{pos}", f"{layer}_-1-{pos}")
            assert node["feature"] == -1 and node["feature_type"] == "mlp reconstruction error"
        elif kind == "token":
            assert (node["node_id"], node["jsNodeId"]) == (
                f"E_{row.token_id}_{pos}",
                f"E_{row.token_id}-{pos}",
            )
            assert (
                node["feature"] == pos
                and node["layer"] == "E"
                and node["feature_type"] == "embedding"
            )
        else:
            assert node["node_id"] == f"{n_layers + 1}_{row.token_id}_{pos}"
            assert node["jsNodeId"] == f"L_{row.token_id}-{pos}" and node["feature"] == row.token_id
            assert node["token_prob"] == pytest.approx(row.probability)
            assert node["clerp"] == f'Output "{row.token}" (p={row.probability:.3f})'
            assert node["is_target_logit"] == (row.token_id == pruned.logits["token_id"].iloc[0])
        if kind == "logit":
            assert node["influence"] is None
        else:
            assert node["influence"] == pytest.approx(row.cumulative_influence)
    assert sum(n["is_target_logit"] for n in doc["nodes"]) == 1

    # links are the stored edges, with their weights
    ids, _ = node_ids(pruned)
    coo = pruned.adjacency.tocoo()
    expected = {(ids[s], ids[t]): w for s, t, w in zip(coo.col, coo.row, coo.data, strict=True)}
    got = {(link["source"], link["target"]): link["weight"] for link in doc["links"]}
    assert got.keys() == expected.keys() and len(doc["links"]) == pruned.adjacency.nnz
    assert all(got[k] == pytest.approx(float(v)) for k, v in expected.items())


def test_error_ids_never_collide_with_features():
    ids, js = node_ids(graph())
    assert len(set(ids)) == len(ids) == graph().n_nodes
    kind = graph().nodes["kind"].astype(str).to_numpy()
    # a feature's jsNodeId names the feature at any position; every other node's is unique
    feature_js = {j for j, k in zip(js, kind, strict=True) if k == "feature"}
    other_js = [j for j, k in zip(js, kind, strict=True) if k != "feature"]
    assert len(set(other_js)) == len(other_js) and not feature_js & set(other_js)
    feats = graph().nodes[kind == "feature"]
    assert len(feature_js) == len(feats[["layer", "feature"]].drop_duplicates())


def test_unpruned_graph_drops_isolated_nodes_and_computes_influence():
    g = graph()
    doc = to_neuronpedia(g, slug="full", scan="toy")
    ids, _ = node_ids(g)
    linked = set(g.edges()["source"]) | set(g.edges()["target"])
    kind = g.nodes["kind"].astype(str).to_numpy()
    expected = [ids[i] for i in range(g.n_nodes) if i in linked or kind[i] in ("token", "logit")]
    assert [n["node_id"] for n in doc["nodes"]] == expected
    assert len(expected) < g.n_nodes  # the error nodes at the attention-sink position have no edges
    cum = cumulative_influence(node_influence(g.adjacency, g.logit_weights))
    got = {n["node_id"]: n["influence"] for n in doc["nodes"]}
    i = int(np.flatnonzero(kind == "feature")[0])
    assert got[ids[i]] == pytest.approx(cum[i])
    assert "node_threshold" not in doc["metadata"] and doc["metadata"]["pruning_settings"] == {}


def test_neuronpedia_ids_give_scan_and_feature_links():
    n_layers = graph().metadata["transcoders"]["n_layers"]
    ids = [f"gemma-2-2b/{i}-gemmascope-transcoder-16k" for i in range(n_layers)]
    g = with_neuronpedia_ids(graph(), ids).prune()
    doc = to_neuronpedia(g, slug="linked")
    meta = doc["metadata"]
    assert meta["scan"] == "gemma-2-2b"
    assert meta["feature_details"] == {"neuronpedia_source_set": "gemmascope-transcoder-16k"}
    assert meta["info"]["source_urls"] == [f"https://www.neuronpedia.org/{i}" for i in ids]
    # explicit arguments win
    doc = to_neuronpedia(g, slug="linked", scan="other", source_set="my-set")
    assert doc["metadata"]["scan"] == "other"
    assert doc["metadata"]["feature_details"]["neuronpedia_source_set"] == "my-set"
    # ids of different models / sets: no shared scan or source set
    mixed = with_neuronpedia_ids(graph(), [f"m{i}/{i}-set{i}" for i in range(n_layers)])
    with pytest.raises(ValueError, match="scan"):
        to_neuronpedia(mixed, slug="x")
    assert "feature_details" not in to_neuronpedia(mixed, slug="x", scan="m0")["metadata"]


def test_save_neuronpedia(tmp_path):
    g = graph().prune()
    out = save_neuronpedia(g, tmp_path, slug="my-graph", scan="toy")
    assert out == tmp_path / "my-graph.json"
    assert json.loads(out.read_text()) == to_neuronpedia(g, slug="my-graph", scan="toy")
    out2 = save_neuronpedia(g, tmp_path / "other.json", slug="s", scan="toy", pinned_ids=["E_5_1"])
    assert json.loads(out2.read_text())["qParams"]["pinnedIds"] == ["E_5_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-graph.json", "other.json"]


def test_bad_export_arguments():
    g = graph().prune()
    for slug in ("", "a b", "../x", None):
        with pytest.raises(ValueError, match="slug must be"):
            to_neuronpedia(g, slug=slug, scan="toy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scan \(the Neuronpedia model id"):
        to_neuronpedia(g, slug="x")
    with pytest.raises(ValueError, match="not among the exported nodes"):
        to_neuronpedia(g, slug="x", scan="toy", pinned_ids=["99_1_1"])
    with pytest.raises(ValueError, match="not among the exported nodes"):
        to_neuronpedia(g, slug="x", scan="toy", supernodes=[["group", "E_5_1", "nope"]])
    no_layers = dataclasses.replace(
        g, metadata={k: v for k, v in g.metadata.items() if k != "transcoders"}
    )
    with pytest.raises(ValueError, match="pass n_layers="):
        to_neuronpedia(no_layers, slug="x", scan="toy")
    n_layers = graph().metadata["transcoders"]["n_layers"]
    assert to_neuronpedia(no_layers, slug="x", scan="toy", n_layers=n_layers) == to_neuronpedia(
        g, slug="x", scan="toy"
    )


def test_to_networkx():
    nx = pytest.importorskip("networkx")
    g = graph().prune()
    G = g.to_networkx()
    assert isinstance(G, nx.DiGraph)
    assert G.number_of_nodes() == g.n_nodes and G.number_of_edges() == g.adjacency.nnz
    for row in g.edges(with_nodes=False).itertuples():
        assert G.edges[row.source, row.target]["weight"] == pytest.approx(row.weight)
    i = int(g.node_indices("feature")[0])
    attrs = G.nodes[i]
    assert attrs["kind"] == "feature" and attrs["layer"] == g.nodes["layer"].iloc[i]
    assert attrs["token_id"] is None and attrs["node_index"] == g.nodes["node_index"].iloc[i]
    assert G.graph["prompt"] == PROMPT
    # the graph is a DAG from tokens to logits
    assert nx.is_directed_acyclic_graph(G)


def test_to_networkx_without_networkx(monkeypatch):
    monkeypatch.setitem(sys.modules, "networkx", None)
    with pytest.raises(ImportError, match=r"pip install sae-circuits\[networkx\]"):
        to_networkx(graph())
