"""The node layout and node ids have one owner (sae_circuits.graph._layout), used everywhere."""

from __future__ import annotations

import numpy as np
import pytest

import sae_circuits as sc
from sae_circuits.graph import NodeLayout, js_node_id, node_id, node_ids, parse_node_id

from .conftest import PROMPT, build


def _graph():
    model, tcs = build("llama", "skip")
    return sc.attribute(model, PROMPT, sc.load_transcoders(tcs), max_feature_nodes=20)


def test_layout_matches_the_nodes_of_a_graph():
    graph = _graph()
    n_layers = graph.metadata["transcoders"]["n_layers"]
    kinds = graph.nodes["kind"].astype(str).to_numpy()
    n_pos = len(graph.metadata["tokens"])
    layout = NodeLayout(
        int((kinds == "feature").sum()), n_layers, n_pos, int((kinds == "logit").sum())
    )
    assert layout.n_nodes == graph.n_nodes
    assert (layout.kinds() == kinds).all()
    for layer in range(n_layers):
        for pos in (0, n_pos - 1):
            row = graph.nodes.iloc[layout.error_node(layer, pos)]
            assert (row["kind"], row["layer"], row["position"]) == ("error", layer, pos)
    assert graph.nodes.iloc[layout.token_node(3)]["position"] == 3
    assert graph.nodes.iloc[layout.target_node(0)]["token_id"] == graph.logits["token_id"][0]


def test_column_and_row_maps():
    layout = NodeLayout(n_features=2, n_layers=2, n_pos=3, n_targets=1)
    visited = np.array([1, 3])  # of 4 active features
    cols = layout.column_map(visited, n_active=4)
    assert cols.tolist() == [-1, 0, -1, 1, *range(2, 2 + 3 * 3)]
    rows = layout.row_map(visited, n_active=4)
    assert rows[1] == 0 and rows[3] == 1 and rows[-1] == layout.target_node(0)
    assert NodeLayout.n_sources(4, 2, 3) == len(cols)


def test_ids_round_trip_on_every_node_of_a_graph():
    graph = _graph()
    n_layers = graph.metadata["transcoders"]["n_layers"]
    ids, js = node_ids(graph)
    assert len(set(ids)) == len(ids) == graph.n_nodes
    for i, text in enumerate(ids):
        row = graph.nodes.iloc[i]
        parsed = parse_node_id(text, n_layers=n_layers)
        assert parsed.kind == row["kind"] and parsed.position == row["position"]
        if parsed.kind in ("feature", "error"):
            assert parsed.layer == row["layer"]
        if parsed.kind == "feature":
            assert parsed.feature == row["feature"]
        if parsed.kind in ("token", "logit"):
            assert parsed.token_id == row["token_id"]
        fields = {
            "layer": parsed.layer,
            "position": parsed.position,
            "feature": parsed.feature,
            "token_id": parsed.token_id,
        }
        assert node_id(parsed.kind, **fields, n_layers=n_layers) == text
        assert js_node_id(parsed.kind, **fields) == js[i]


# malformed ids and their messages: tests/test_bad_input_node_ids.py


def test_logit_ids_need_the_layer_count():
    assert parse_node_id("5_17_9", n_layers=4).kind == "logit"
    assert parse_node_id("5_17_9").kind == "feature"  # unknown depth: a feature id
    with pytest.raises(ValueError, match="needs its n_layers"):
        node_id("logit", position=9, token_id=17)
    with pytest.raises(ValueError, match="unknown node kind 'bias'"):
        node_id("bias", position=0)


def test_viewer_fills_plain_neuronpedia_nodes_from_their_ids(tmp_path):
    """The page never parses ids: a Neuronpedia document's nodes get kind/layer/feature from
    Python."""
    import json

    from sae_circuits.viewer import GraphSource

    graph = _graph()
    doc = sc.to_neuronpedia(graph.prune(), slug="plain", scan="tiny")
    for node in doc["nodes"]:  # a plain Neuronpedia document has none of our fields
        for key in ("kind", "layer_index", "feature_index", "position"):
            node.pop(key, None)
    (tmp_path / "graph.json").write_text(json.dumps(doc))
    served = GraphSource(tmp_path).document()
    for node in served["nodes"]:
        parsed = parse_node_id(node["node_id"], n_layers=graph.metadata["transcoders"]["n_layers"])
        assert node["kind"] == parsed.kind and node["position"] == parsed.position
        assert node["layer_index"] == parsed.layer and node["feature_index"] == parsed.feature
