"""Supernodes: construction, Neuronpedia URLs (offline), experiments, the picture, bad input."""

from __future__ import annotations

import json
import re
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sae_circuits import supernodes as sn
from sae_circuits.interventions import intervene

from .conftest import PROMPT
from .test_intervene import _setup as setup
from .test_intervene import swap_setup
from .tolerance import assert_close

#: The shape of a Neuronpedia graph URL (Gemma-2-2B: 26 layers, logits are layer 27).
GROUPS = [
    ["capital", "15_4494_4", "6_4662_4", "4_7671_4"],
    ["Texas", "20_15589_9", "19_7477_9", "16_25_9"],
    ["say Austin", "21_5943_10", "27_22605_10", "20_-1_10"],
    ["Texas", "7_6861_9"],
]
PINNED = "27_22605_10,20_15589_10,E_26865_9,21_5943_10,E_2329_7,3_-1_9"


def _url(groups=GROUPS, pinned=PINNED, *, encode=True) -> str:
    sup = json.dumps(groups)
    if encode:
        query = urllib.parse.urlencode(
            {"slug": "dallas-austin", "pinnedIds": pinned, "supernodes": sup}
        )
    else:
        query = f"slug=dallas-austin&pinnedIds={pinned}&supernodes={sup}"
    return f"https://www.neuronpedia.org/gemma-2-2b/graph?{query}&densityThreshold=0.99"


def _setup():
    return setup("gpt2", "relu")  # shared with test_intervene (cached)


# -- URLs --------------------------------------------------------------------------------------


def test_parse_neuronpedia_url():
    sel = sn.from_neuronpedia_url(_url(), n_layers=26)
    assert sel.names == ["capital", "Texas", "say Austin", "Texas (2)"]
    assert sel["capital"].features == ((15, 4, 4494), (6, 4, 4662), (4, 4, 7671))
    assert sel["say Austin"].features == ((21, 10, 5943),)  # the logit node is not a feature
    assert sel.skipped == ("27_22605_10", "20_-1_10")
    assert sel.pinned_errors == ((3, 9),)
    assert sel.pinned == ((20, 10, 15589), (21, 10, 5943))
    assert sel.pinned_tokens == ((9, 26865), (7, 2329))
    assert sel.pinned_logits == ((10, 22605),)
    # the same URL unencoded, or only its query string, parses the same
    assert sn.from_neuronpedia_url(_url(encode=False), n_layers=26) == sel
    assert sn.from_neuronpedia_url(urllib.parse.urlsplit(_url()).query, n_layers=26) == sel
    twice = "https://x/graph?" + urllib.parse.urlencode(
        {
            "pinnedIds": urllib.parse.quote(PINNED),
            "supernodes": urllib.parse.quote(json.dumps(GROUPS)),
        }
    )
    assert sn.from_neuronpedia_url(twice, n_layers=26) == sel
    # without n_layers a logit id reads as a feature
    loose = sn.from_neuronpedia_url(_url())
    assert loose["say Austin"].features == ((21, 10, 5943), (27, 10, 22605))
    # node ids round-trip
    assert sel["Texas"].node_ids == ["20_15589_9", "19_7477_9", "16_25_9"]
    only_pinned = sn.from_neuronpedia_url("https://x/graph?pinnedIds=1_2_3")
    assert only_pinned.supernodes == () and only_pinned.pinned == ((1, 3, 2),)


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        (42, TypeError, "expected the URL as a string"),
        (
            "https://www.neuronpedia.org/gemma-2-2b/graph?slug=x",
            ValueError,
            "neither a 'supernodes' nor a 'pinnedIds'",
        ),
        (
            'https://x/graph?supernodes=[["a","1_2_3"',
            ValueError,
            r"'supernodes' parameter is not valid JSON",
        ),
        (
            'https://x/graph?supernodes={"a":1}',
            ValueError,
            r"must be a JSON list of \[name, node_id, \.\.\.\]",
        ),
        (
            'https://x/graph?supernodes=[[1,"1_2_3"]]',
            ValueError,
            r"supernode 0 is .*expected \[name, node_id, \.\.\.\]",
        ),
        ('https://x/graph?supernodes=["a"]', ValueError, r"supernode 0 is 'a'"),
        (
            'https://x/graph?supernodes=[["a","1_x_3"]]',
            ValueError,
            r"malformed node id '1_x_3'; expected \{layer\}_\{feature\}_\{position\}",
        ),
        ('https://x/graph?supernodes=[["a","1_2"]]', ValueError, r"malformed node id '1_2'"),
        ('https://x/graph?supernodes=[["a",5]]', ValueError, r"node ids must be strings"),
        ("https://x/graph?pinnedIds=1_2_3,E_5", ValueError, r"pinnedIds: malformed node id 'E_5'"),
    ],
)
def test_malformed_urls(url, error, match):
    with pytest.raises(error, match=match):
        sn.from_neuronpedia_url(url)


def test_url_layers_checked_against_the_model():
    with pytest.raises(
        ValueError, match=r"layer 26, but the model has 26 layers \(features 0\.\.25, logits 27\)"
    ):
        sn.from_neuronpedia_url('https://x/graph?supernodes=[["a","26_1_2"]]', n_layers=26)
    with pytest.raises(KeyError, match=r"no supernode named 'Ohio'; the URL has 'capital'"):
        sn.from_neuronpedia_url(_url(), n_layers=26)["Ohio"]


# -- construction ------------------------------------------------------------------------------


def test_supernode_construction():
    _, _, graph = _setup()
    feats = graph.nodes.iloc[graph.node_indices("feature")[:4]]
    a = sn.Supernode.from_nodes("a", feats)
    b = sn.Supernode.from_graph("a", graph, graph.node_indices("feature")[:4])
    assert a == b and len(a) == 4
    assert a.features[0] == tuple(int(feats.iloc[0][c]) for c in ("layer", "position", "feature"))
    assert list(a.scale(0.0).columns) == ["supernode", "layer", "position", "feature", "scale"]
    assert (a.set(2.0)["value"] == 2.0).all()
    dup = sn.Supernode("d", [(1, 2, 3), (1, 2, 3), (0, 1, 1)])
    assert dup.features == ((1, 2, 3), (0, 1, 1))
    with pytest.raises(ValueError, match="only feature nodes"):
        sn.Supernode.from_nodes("e", graph.nodes.iloc[graph.node_indices("error")[:2]])
    with pytest.raises(ValueError, match="has no features"):
        sn.Supernode("empty", [])
    with pytest.raises(ValueError, match="non-empty name"):
        sn.Supernode("", [(0, 1, 2)])
    with pytest.raises(
        ValueError, match=r"member 1: expected a \(layer, position, feature\) triple"
    ):
        sn.Supernode("bad", [(0, 1, 2), (0, -1, 2)])
    with pytest.raises(ValueError, match=r"node indices must be in 0\.\."):
        sn.Supernode.from_graph("x", graph, [graph.n_nodes])


# -- experiments -------------------------------------------------------------------------------


def _groups(graph) -> list[sn.Supernode]:
    feats = graph.nodes[graph.nodes["kind"] == "feature"]
    return [
        sn.Supernode.from_nodes(f"L{layer}", feats[feats["layer"] == layer].head(3))
        for layer in range(3)
    ]


def test_experiment_tables():
    model, ts, graph = _setup()
    groups = _groups(graph)
    exp = sn.experiment(model, PROMPT, ts, groups, groups[0].scale(0.0), k=4)
    t = exp.activations
    assert list(t.columns) == [
        "supernode",
        "n_features",
        "clean_activation",
        "activation",
        "fraction",
    ]
    assert t["supernode"].tolist() == ["L0", "L1", "L2"]
    nodes = graph.nodes.set_index(["layer", "position", "feature"])
    for s, clean in zip(groups, t["clean_activation"], strict=True):
        expected = sum(float(nodes.loc[f, "activation"]) for f in s.features)
        assert_close(clean, expected, what=s.name)  # sums of non-negative activations
    assert t["fraction"].iloc[0] == 0.0
    assert (t["fraction"].iloc[1:] != 1.0).any(), "downstream supernodes respond"
    assert_close(t["fraction"], t["activation"] / t["clean_activation"])
    assert len(exp.top_logits) == 4
    probs = torch.softmax(exp.result.clean_last_logits.double(), -1)
    assert_close(exp.top_logits["before_probability"], probs.topk(4).values.numpy())
    mean = sn.experiment(model, PROMPT, ts, groups, groups[0].scale(0.0), reduce="mean")
    assert_close(mean.activations["clean_activation"] * 3, t["clean_activation"])
    none = sn.experiment(model, PROMPT, ts, groups)
    assert (none.activations["fraction"] == 1.0).all()
    with pytest.raises(ValueError, match="reduce must be 'sum' or 'mean'"):
        sn.experiment(model, PROMPT, ts, groups, reduce="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names must be unique"):
        sn.experiment(model, PROMPT, ts, [groups[0], groups[0]])
    with pytest.raises(TypeError, match="expected a Supernode"):
        sn.experiment(model, PROMPT, ts, [(0, 1, 2)])  # type: ignore[list-item]
    far = sn.Supernode("far", [(0, 50, 1)])
    with pytest.raises(ValueError, match="out of range: the prompt has 11 positions"):
        sn.supernode_activations(none.result, far)


def test_swap_with_supernodes():
    """Texas-style features off, California-style features from the other prompt on."""
    model, ts, a, b, ga, gb = swap_setup()
    x, y = int(ga.logits["token_id"][0]), int(gb.logits["token_id"][0])

    def favour(g, up, down):
        ids = g.logits["token_id"].tolist()
        rows = g.node_indices("logit")
        m = g.adjacency[[int(rows[ids.index(up)]), int(rows[ids.index(down)])]].toarray()
        return m[0] - m[1]

    fa, fb = ga.node_indices("feature"), gb.node_indices("feature")
    texas = sn.Supernode.from_graph("texas", ga, fa[np.argsort(-favour(ga, x, y)[fa])[:5]])
    california = sn.Supernode.from_graph(
        "california", gb, fb[np.argsort(-favour(gb, y, x)[fb])[:5]]
    )
    on = sn.activations_from(model, b, ts, california)
    clean_b = intervene(model, b, ts, None)
    for row in on.itertuples():
        assert row.value == float(
            clean_b.clean_activations[row.layer].to_dense()[row.position, row.feature]
        )
    doubled = sn.activations_from(
        model, b, ts, california, scale=2.0, position_map={p: p for p in range(11)}
    )
    assert_close(doubled["value"], 2 * on["value"])
    key = ["layer", "position", "feature"]
    on = on[~on.set_index(key).index.isin(texas.frame().set_index(key).index)]
    exp = sn.experiment(model, a, ts, [texas, california], [texas.scale(0.0), on])
    assert exp.activations.set_index("supernode").loc["texas", "fraction"] < 0.5
    assert exp.top_logits["before_token_id"][0] == x and exp.top_logits["after_token_id"][0] == y
    with pytest.raises(ValueError, match=r"position_map has no entry for source positions"):
        sn.activations_from(model, b, ts, california, position_map={0: 0})


def test_plot_saved_to_png(tmp_path):
    pytest.importorskip("matplotlib")
    model, ts, graph = _setup()
    groups = _groups(graph)
    exp = sn.experiment(model, PROMPT, ts, groups, groups[1].scale(0.0))
    path = tmp_path / "supernodes.png"
    fig = exp.plot(str(path), graph=graph, title="L1 off")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any(t.startswith("L1\n0%") for t in texts)
    assert len(fig.axes[0].patches) + len(fig.axes[0].texts) >= 3


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    model, ts, graph = _setup()
    exp = sn.experiment(model, PROMPT, ts, _groups(graph)[:1])
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"sae-circuits\[plot\]"):
        exp.plot()


def test_activations_from_dataframe_and_inactive_warning(caplog):
    model, ts, graph = _setup()
    feats = graph.nodes.iloc[graph.node_indices("feature")[:2]]
    frame = pd.concat(
        [
            feats[["layer", "position", "feature"]],
            pd.DataFrame({"layer": [0], "position": [0], "feature": [0]}),
        ]
    )
    with caplog.at_level("WARNING", logger="sae_circuits.supernodes"):
        out = sn.activations_from(model, PROMPT, ts, frame)
    assert_close(out["value"].iloc[:2], feats["activation"].astype(float))
    assert "inactive on the source prompt" in caplog.text or out["value"].iloc[2] != 0


# -- the tutorial ------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "interventions.md"


def _doc_code(section: str) -> str:
    text = DOC.read_text()
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    body = text[text.index(start) + len(start) : text.index(end)]
    return "\n".join(re.findall(r"```python\n(.*?)```", body, flags=re.S))


def test_tutorial_runs_now(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_doc_code("runs-now"), str(DOC), "exec"), ns)
    assert ns["worst"] < 1e-4
    assert ns["exp"].activations["fraction"].iloc[0] == 0.0


def _toy_facts_ready() -> bool:
    try:
        from sae_circuits.toy.facts import TOY_FACTS_DIR
    except ImportError:
        return False
    return all(
        (TOY_FACTS_DIR / f).exists() for f in ("config.json", "model.safetensors", "labels.json")
    )


@pytest.mark.skipif(not _toy_facts_ready(), reason="the toy-facts weights are not shipped yet")
def test_tutorial_dallas_austin_swap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_doc_code("toy-facts"), str(DOC), "exec"), ns)
    top = ns["exp"].top_logits
    assert top["before_token"][0] == "austin" and top["after_token"][0] == "sacramento"
    off = ns["off"].activations.set_index("supernode")
    assert off.loc["Texas", "fraction"] == 0.0
