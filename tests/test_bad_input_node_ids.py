"""Malformed Neuronpedia node ids and URLs raise a ``ValueError`` naming the bad part.

One parser (:func:`sae_circuits.export.parse_node_id`, the inverse of
:func:`~sae_circuits.export.node_ids`) reads node ids for the URL parser
(:func:`sae_circuits.supernodes.from_neuronpedia_url`) and for the export's ``pinned_ids`` /
``supernodes``.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from sae_circuits import supernodes as sn
from sae_circuits.graph import NodeId, node_ids, parse_node_id, to_neuronpedia

from .test_export import graph

N_LAYERS = 4


# -- valid ids keep their meaning ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "n_layers", "expected"),
    [
        ("3_1234_5", None, NodeId("feature", 5, layer=3, feature=1234)),
        ("0_0_0", 4, NodeId("feature", 0, layer=0, feature=0)),
        (" 3_1_2 ", 4, NodeId("feature", 2, layer=3, feature=1)),
        ("E_42_3", 4, NodeId("token", 3, token_id=42)),
        ("3_-1_5", 4, NodeId("error", 5, layer=3)),
        ("5_22605_10", 4, NodeId("logit", 10, token_id=22605)),
        ("5_22605_10", None, NodeId("feature", 10, layer=5, feature=22605)),
        ("10_0_100", 26, NodeId("feature", 100, layer=10, feature=0)),
    ],
)
def test_valid_ids(node_id, n_layers, expected):
    assert parse_node_id(node_id, n_layers=n_layers) == expected


def test_every_exported_id_parses_back_to_its_node():
    g = graph()
    n_layers = g.metadata["transcoders"]["n_layers"]
    n_positions = int(g.nodes["position"].max()) + 1
    ids, _ = node_ids(g)
    for nid, (_, row) in zip(ids, g.nodes.iterrows(), strict=True):
        node = parse_node_id(nid, n_layers=n_layers, n_positions=n_positions)
        assert node.kind == row["kind"] and node.position == row["position"], nid
        if node.kind in ("feature", "error"):
            assert node.layer == row["layer"]
        if node.kind == "feature":
            assert node.feature == row["feature"]
        if node.kind in ("token", "logit"):
            assert node.token_id == row["token_id"]
    # the URL parser reads them the same way
    pinned = ",".join(ids)
    sel = sn.from_neuronpedia_url(
        f"https://www.neuronpedia.org/m/graph?pinnedIds={pinned}", n_layers=n_layers
    )
    kinds = g.nodes["kind"].astype(str)
    assert len(sel.pinned) == (kinds == "feature").sum()
    assert len(sel.pinned_tokens) == (kinds == "token").sum()
    assert len(sel.pinned_logits) == (kinds == "logit").sum()
    assert len(sel.pinned_errors) == (kinds == "error").sum()


# -- malformed ids -----------------------------------------------------------------------------

MALFORMED = [
    ("", r"it is empty"),
    ("   ", r"it is empty"),
    ("3", r"it has 1 part\(s\) separated by '_', not 3"),
    ("3_1", r"it has 2 part\(s\)"),
    ("E_5", r"it has 2 part\(s\)"),
    ("3_1_2_4", r"it has 4 part\(s\)"),
    ("3_1_2,4_5_6", r"it has 5 part\(s\)"),
    ("3-1-2", r"it has 1 part\(s\)"),
    ("_1_2", r"its layer is empty"),
    ("3__2", r"its feature is empty"),
    ("3_1_", r"its position is empty"),
    ("E__2", r"its token id is empty"),
    ("3_x_7", r"its feature 'x' is not a whole number"),
    ("3_1_y", r"its position 'y' is not a whole number"),
    ("x_1_2", r"its first part 'x' is neither a layer nor 'E'"),
    ("e_5_2", r"its first part 'e' is neither a layer nor 'E'"),
    ("L_5_2", r"its first part 'L'"),
    ("E_x_2", r"its token id 'x' is not a whole number"),
    ("E_5_z", r"its position 'z' is not a whole number"),
    ("-3_1_2", r"its layer '-3' is negative"),
    ("3_-2_1", r"its feature '-2' is negative \(only error nodes have -1"),
    ("3_1_-1", r"its position '-1' is negative"),
    ("E_-1_2", r"its token id '-1' is negative"),
    ("3_1.5_2", r"its feature '1.5' is not a whole number"),
    ("3_1e3_2", r"its feature '1e3' is not a whole number"),
    ("3_+1_2", r"its feature '\+1' is not a whole number"),
    ("3_0x1F_2", r"its feature '0x1F' is not a whole number"),
    ("٣_1_2", r"its layer '٣' is not a whole number"),  # Arabic-Indic digit
    ("３_1_2", r"its layer '３' is not a whole number"),  # full-width digit
    ("03_1_2", r"its layer '03' has a leading zero"),
    ("3_1_007", r"its position '007' has a leading zero"),
    ("3_1_2\x00", r"its position '2\\x00' is not a whole number"),
    ("3 _1_2", r"its layer '3 ' is not a whole number"),
    ("1" * 30 + "_1_2", r"its layer '1+' is too large"),
    ("3_" + "9" * 5000 + "_2", r"its feature '9+' is too large"),
    ("../etc/passwd", r"it has 1 part"),
    ("3_1_2\n4_5_6", r"it has 5 part\(s\)"),
]


@pytest.mark.parametrize(("node_id", "problem"), MALFORMED)
def test_malformed_ids(node_id, problem):
    with pytest.raises(
        ValueError, match=r"^pinnedIds: malformed node id .*; expected .*, but "
    ) as info:
        parse_node_id(node_id, n_layers=N_LAYERS, where="pinnedIds")
    assert re.search(problem, str(info.value)), str(info.value)
    assert "{layer}_{feature}_{position} (feature)" in str(info.value)


@pytest.mark.parametrize("value", [None, 5, 3.0, ["3_1_2"], b"3_1_2", {"id": "3_1_2"}])
def test_ids_that_are_not_strings(value):
    with pytest.raises(ValueError, match=r"node ids must be strings like '3_1234_5', got "):
        parse_node_id(value)


@pytest.mark.parametrize(
    ("node_id", "message"),
    [
        ("4_1_2", r"has layer 4, but the model has 4 layers \(features 0\.\.3, logits 5\)"),
        ("6_1_2", r"has layer 6, but the model has 4 layers"),
        ("4_-1_2", r"'4_-1_2' has layer 4"),
        ("5_-1_2", r"'5_-1_2' has layer 5"),  # no error nodes in the logit layer
        ("1_2_6", r"has position 6, but the prompt has 6 tokens \(positions 0\.\.5\)"),
        ("E_3_9", r"'E_3_9' has position 9"),
        ("5_3_7", r"'5_3_7' has position 7"),
        ("3_-1_6", r"'3_-1_6' has position 6"),
    ],
)
def test_ids_out_of_range(node_id, message):
    with pytest.raises(ValueError, match=message):
        parse_node_id(node_id, n_layers=N_LAYERS, n_positions=6)


@pytest.mark.parametrize(
    "kwargs", [{"n_layers": 0}, {"n_layers": -1}, {"n_layers": True}, {"n_positions": "6"}]
)
def test_bad_limits(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name} must be a whole number >= 1"):
        parse_node_id("1_2_3", **kwargs)


# -- malformed Neuronpedia URLs ----------------------------------------------------------------

_NP = "https://www.neuronpedia.org/gemma-2-2b/graph"


def _q(**params: str) -> str:
    return urllib.parse.urlencode(params)


def _sup(groups: list) -> str:
    return f"{_NP}?{_q(supernodes=json.dumps(groups))}"


BAD_URLS = [
    ("", r"the URL is empty"),
    ("   ", r"the URL is empty"),
    (f"ftp://www.neuronpedia.org/gemma-2-2b/graph?{_q(pinnedIds='1_2_3')}", r"scheme 'ftp'"),
    ("javascript:alert(1)", r"scheme 'javascript'"),
    ("file:///etc/passwd?pinnedIds=1_2_3", r"scheme 'file'"),
    ("https:///gemma-2-2b/graph?pinnedIds=1_2_3", r"has no host"),
    ("https://:443/gemma-2-2b/graph?pinnedIds=1_2_3", r"has no host"),
    ("https://www.neuronpedia.org:abc/m/graph?pinnedIds=1_2_3", r"invalid port"),
    ("https://[::1/graph?pinnedIds=1_2_3", r"cannot be parsed"),
    (
        "https://www.neuronpedia.org/gemma-2-2b/feature?pinnedIds=1_2_3",
        r"path '/gemma-2-2b/feature'",
    ),
    ("https://www.neuronpedia.org/?pinnedIds=1_2_3", r"path '/', which is not a graph page"),
    ("https://www.neuronpedia.org?pinnedIds=1_2_3", r"path '', which is not a graph page"),
    ("https://www.neuronpedia.org/gemma-2-2b/graphs?pinnedIds=1_2_3", r"path '/gemma-2-2b/graphs'"),
    (_NP, r"neither a 'supernodes' nor a 'pinnedIds' query parameter"),
    (f"{_NP}?slug=x&pinnedid=1_2_3", r"neither a 'supernodes' nor a 'pinnedIds'"),
    (f"{_NP}?pinnedIds=1_2_3&pinnedIds=4_5_6", r"2 'pinnedIds' query parameters"),
    (f"{_NP}?supernodes=[]&supernodes=[]", r"2 'supernodes' query parameters"),
    (_NP + "?" + _q(supernodes='[["a","1_2_3"'), r"'supernodes' parameter is not valid JSON"),
    (
        f"{_NP}?{_q(supernodes='[[' + '9' * 5000 + ']]')}",
        r"'supernodes' parameter is not valid JSON",
    ),
    (f"{_NP}?{_q(supernodes='[' * 100_000)}", r"'supernodes' parameter is not valid JSON"),
    (f"{_NP}?{_q(supernodes='{}')}", r"must be a JSON list of \[name, node_id, \.\.\.\]"),
    (f"{_NP}?{_q(supernodes='5')}", r"must be a JSON list"),
    (f"{_NP}?{_q(supernodes='[[]]')}", r"supernode 0 is \[\]; expected \[name, node_id"),
    (_sup([[None, "1_2_3"]]), r"supernode 0 is .*with a string name"),
    (_sup([["", "1_2_3"]]), r"supernode 0 has an empty name"),
    (_sup([["a", "1_2_3", 5]]), r"supernode 'a': node ids must be strings"),
    (
        _sup([["a", "3_x_7"]]),
        r"supernode 'a': malformed node id '3_x_7'; .* its feature 'x' is not a whole number",
    ),
    (f"{_NP}?pinnedIds=1_2_3,,E_x_2", r"pinnedIds: malformed node id 'E_x_2'.*token id 'x'"),
    (f"{_NP}?pinnedIds=1_2_3,4_5", r"pinnedIds: malformed node id '4_5'.*2 part\(s\)"),
    (f"{_NP}?pinnedIds=%ff_1_2", r"pinnedIds: malformed node id '\ufffd_1_2'.*its layer"),
    (f"{_NP}?pinnedIds=1_2_3%00", r"its position '3\\x00' is not a whole number"),
    (f"{_NP}?pinnedIds=26_1_2", r"'26_1_2' has layer 26, but the model has 26 layers"),
    (f"{_NP}?pinnedIds=27_-1_2", r"'27_-1_2' has layer 27"),
    (
        f"{_NP}?{_q(pinnedIds='1_2_3', supernodes=json.dumps([['a', '-1_2_3']]))}",
        r"layer '-1' is negative",
    ),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_malformed_neuronpedia_urls(url, message):
    with pytest.raises(ValueError, match=message):
        sn.from_neuronpedia_url(url, n_layers=26)


def test_url_n_layers_is_checked():
    with pytest.raises(ValueError, match="n_layers must be a whole number >= 1"):
        sn.from_neuronpedia_url(f"{_NP}?pinnedIds=1_2_3", n_layers=0)


@pytest.mark.parametrize(
    "url",
    [
        f"{_NP}?pinnedIds=1_2_3",
        f"{_NP}/?pinnedIds=1_2_3",
        "HTTP://localhost:3000/gemma-2-2b/graph?pinnedIds=1_2_3",
        "pinnedIds=1_2_3",
        "?pinnedIds=1_2_3",
        "www.neuronpedia.org/gemma-2-2b/graph?pinnedIds=1_2_3",
        f"{_NP}?pinnedIds=1_2_3#fragment",
    ],
)
def test_accepted_url_shapes(url):
    assert sn.from_neuronpedia_url(url, n_layers=26).pinned == ((1, 3, 2),)


# -- the export's pinned_ids and supernodes ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pinned_ids": "E_5_1"}, r"pinned_ids must be a list, got str .*not one string"),
        ({"pinned_ids": None}, r"pinned_ids must be a list, got NoneType"),
        ({"pinned_ids": [5]}, r"pinned_ids\[0\] 5 \(node ids must be strings"),
        (
            {"pinned_ids": ["E_5_1", "3_x_7"]},
            r"pinned_ids\[1\] '3_x_7' \(malformed node id '3_x_7'.*its feature 'x'",
        ),
        ({"pinned_ids": ["99_1_1"]}, r"pinned_ids\[0\] '99_1_1' \(node id '99_1_1' has layer 99"),
        ({"pinned_ids": ["E_5_99"]}, r"pinned_ids\[0\] 'E_5_99' \(a valid id, but not an exported"),
        ({"supernodes": "abc"}, r"supernodes must be a list, got str"),
        ({"supernodes": ["abc"]}, r"supernodes\[0\] must be a list \[label, node_id, \.\.\.\]"),
        ({"supernodes": [[]]}, r"supernodes\[0\] must start with a non-empty string label"),
        ({"supernodes": [[5, "E_5_1"]]}, r"supernodes\[0\] must start with a non-empty string"),
        ({"supernodes": [[" ", "E_5_1"]]}, r"supernodes\[0\] must start with a non-empty string"),
        (
            {"supernodes": [["g", "E_5_1", "nope"]]},
            r"supernodes\[0\]\[2\] 'nope' \(malformed node id 'nope'.*1 part\(s\)",
        ),
    ],
)
def test_export_view_arguments(kwargs, message):
    g = graph().prune()
    with pytest.raises(ValueError, match=message):
        to_neuronpedia(g, slug="x", scan="toy", **kwargs)
