"""The viewer's server and data: documents, annotations, and the security rules.

The server runs on 127.0.0.1 with an ephemeral port, in a thread, and is shut down after each
test (bounded waits). Requests are sent with ``http.client``, which sends paths exactly as given
(no normalisation of ``..`` or percent-encoding), as an attacker's client would.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import sae_circuits as sc
from sae_circuits.graph._export import node_ids, to_neuronpedia
from sae_circuits.graph._graph import AttributionGraph
from sae_circuits.viewer import (
    AnnotationError,
    AnnotationStore,
    GraphFolderError,
    GraphSource,
    RemoteBindError,
    build_document,
    make_server,
    write_graph_folder,
)
from sae_circuits.viewer.annotations import AnnotationFileError, AnnotationLimits
from sae_circuits.viewer.security import (
    check_bind_host,
    host_header_ok,
    is_loopback,
    resolve_inside,
)

from .conftest import PROMPT, build
from .tolerance import assert_close

SECRET = "TOP-SECRET-MARKER-4711"
_GRAPHS: list[tuple[AttributionGraph, AttributionGraph]] = []
_LOADINGS: list[pd.DataFrame] = []
_ATTENTION: list[list[sc.QKAttribution]] = []


def tiny_graphs() -> tuple[AttributionGraph, AttributionGraph]:
    """(full graph, pruned graph) of the tiny Llama-style model, computed once per session."""
    if not _GRAPHS:
        model, tcs = build("llama", "skip")
        graph = sc.attribute(model, PROMPT, sc.load_transcoders(tcs), progress=False)
        _GRAPHS.append((graph, graph.prune(0.8, 0.98)))
    return _GRAPHS[0]


def tiny_head_loadings() -> pd.DataFrame:
    """``sc.head_loadings`` of every edge of :func:`tiny_graphs`' pruned graph, computed once."""
    if not _LOADINGS:
        model, tcs = build("llama", "skip")
        _, pruned = tiny_graphs()
        _LOADINGS.append(sc.head_loadings(model, PROMPT, sc.load_transcoders(tcs), pruned))
    return _LOADINGS[0]


def tiny_attention() -> list[sc.QKAttribution]:
    """QK attributions (20 pairs) of the 3 (head, query, key) that carry :func:`tiny_graphs`'
    pruned graph most (as ``sae-circuits attribute --head-loadings --qk-heads 3`` picks them),
    computed once."""
    if not _ATTENTION:
        from sae_circuits.cli import top_qk_heads

        model, tcs = build("llama", "skip")
        ts = sc.load_transcoders(tcs)
        _, pruned = tiny_graphs()
        chosen = top_qk_heads(pruned, tiny_head_loadings(), 3)
        _ATTENTION.append(
            [
                sc.attribute_attention(
                    model, PROMPT, ts, layer=lay, head=hd, query=q, key=k, top_pairs=20
                )
                for lay, hd, q, k, _ in chosen
            ]
        )
    return _ATTENTION[0]


def make_graph_folder(folder: Path, *, heads: bool = False, attention: bool = False) -> Path:
    """A graph folder (graph.zip, pruned.zip, graph.json; with ``heads``, head_loadings.csv, with
    ``attention``, attention.json) of the tiny model in ``folder``."""
    graph, pruned = tiny_graphs()
    loads = tiny_head_loadings() if heads else None
    qks = tiny_attention() if attention else None
    write_graph_folder(folder, graph, pruned, slug="test", head_loadings=loads, attention=qks)
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_graph_folder(tmp_path_factory.mktemp("template") / "graph")


@pytest.fixture
def folder(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the graph folder, next to a file that must never be served."""
    (tmp_path / "secret.txt").write_text(SECRET)
    out = tmp_path / "served"
    shutil.copytree(template, out)
    return out


class Running:
    """A running server and a raw HTTP client for it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port = server.port

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, http.client.HTTPMessage]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            if body is not None and "Content-Length" not in hdrs:
                hdrs["Content-Length"] = str(len(body))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders()
            if body is not None:
                conn.send(body)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.headers
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body, _ = self.request("GET", path)
        return status, json.loads(body)

    def post(self, patch: Any, **headers: str) -> tuple[int, Any]:
        body = patch if isinstance(patch, bytes) else json.dumps(patch).encode()
        hdrs = {"Content-Type": "application/json", **headers}
        status, data, _ = self.request("POST", "/api/annotations", body, hdrs)
        return status, json.loads(data)


@pytest.fixture
def running(folder: Path) -> Iterator[Running]:
    server = make_server(folder, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Running(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


# ---------------------------------------------------------------------------------------------
# the document


def test_document_extends_neuronpedia_json():
    graph, pruned = tiny_graphs()
    doc = build_document(pruned, slug="test", labels={"nope": "x"})
    ids, _ = node_ids(pruned)
    assert {n["node_id"] for n in doc["nodes"]} <= set(ids)
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    for i, nid in enumerate(ids):
        if nid not in by_id:
            continue
        node, row = by_id[nid], pruned.nodes.iloc[i]
        assert node["kind"] == str(row["kind"])
        assert node["position"] == int(row["position"]) == node["ctx_idx"]
        if node["kind"] == "feature":
            assert node["feature_index"] == int(row["feature"])
            assert node["layer_index"] == int(row["layer"])
            assert node["node_influence"] == pytest.approx(float(row["influence"]))
            assert "neuronpedia_url" not in node  # the tiny transcoders have no Neuronpedia ids
    meta = doc["metadata"]["sae_circuits"]
    assert meta["thresholds"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert meta["n_nodes_before"] == graph.n_nodes
    assert meta["scores"]["replacement"] == pytest.approx(pruned.scores().replacement)
    json.dumps(doc, allow_nan=False)


def test_document_links_features_to_neuronpedia():
    _, pruned = tiny_graphs()
    n_layers = pruned.metadata["transcoders"]["n_layers"]
    np_ids = [f"gemma-2-2b/{i}-gemmascope-transcoder-16k" for i in range(n_layers)]
    meta = {**pruned.metadata, "transcoders": {**pruned.metadata["transcoders"]}}
    meta["transcoders"]["neuronpedia_ids"] = np_ids
    doc = build_document(dataclasses.replace(pruned, metadata=meta), slug="np")
    assert doc["metadata"]["scan"] == "gemma-2-2b"
    feats = [n for n in doc["nodes"] if n["kind"] == "feature"]
    assert feats
    for n in feats:
        expected = (
            f"https://www.neuronpedia.org/gemma-2-2b/{n['layer_index']}-gemmascope-transcoder-16k/"
            f"{n['feature_index']}"
        )
        assert n["neuronpedia_url"] == expected


def test_source_reprunes_and_needs_the_full_graph(folder: Path):
    source = GraphSource(folder)
    saved = source.document()
    assert saved["metadata"]["viewer"]["can_reprune"] is True
    tighter = source.document(node_threshold=0.5, edge_threshold=0.9)
    assert len(tighter["nodes"]) < len(saved["nodes"])
    assert tighter["metadata"]["viewer"]["thresholds"] == {
        "node_threshold": 0.5,
        "edge_threshold": 0.9,
    }
    with pytest.raises(ValueError, match="node_threshold"):
        source.document(node_threshold=1.5)
    (folder / "graph.zip").unlink()
    assert source.document()["nodes"] == saved["nodes"]
    with pytest.raises(GraphFolderError, match=r"graph\.zip"):
        source.document(node_threshold=0.5)


def test_source_refuses_folders_without_a_graph(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GraphSource(tmp_path / "missing")
    with pytest.raises(GraphFolderError, match="holds no graph"):
        GraphSource(tmp_path)


# ---------------------------------------------------------------------------------------------
# head loadings


def _edge_parts(loads: pd.DataFrame, pruned: AttributionGraph) -> dict[tuple[str, str], Any]:
    """The loadings table by link (source id, target id)."""
    ids, _ = node_ids(pruned)
    keys = [(ids[s], ids[t]) for s, t in zip(loads["source"], loads["target"], strict=True)]
    return dict(iter(loads.groupby(pd.Index(keys, tupleize_cols=False), sort=False)))


def test_links_carry_the_heads_of_their_edges(tmp_path: Path):
    _, pruned = tiny_graphs()
    loads = tiny_head_loadings()
    files = make_graph_folder(tmp_path / "graph", heads=True)
    doc = json.loads((files / "graph.json").read_text())
    links = doc["links"]
    assert all("heads" in link for link in links)  # every edge was split
    assert doc["metadata"]["sae_circuits"]["head_loadings"] == {
        "n_links": len(links),
        "max_heads": 5,
    }
    parts = _edge_parts(loads, pruned)
    weights = np.array([link["weight"] for link in links])
    # every part of an edge (the whole table) sums to its weight
    totals = np.array([parts[(x["source"], x["target"])]["loading"].sum() for x in links])
    assert_close(totals, weights, rtol=1e-4, what="loadings of each edge")
    complete = []
    for link in links:
        heads, table = link["heads"], parts[(link["source"], link["target"])]
        assert 1 <= len(heads) <= 5
        magnitudes = [abs(h["loading"]) for h in heads]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert magnitudes == sorted(table["loading"].abs(), reverse=True)[: len(heads)]
        for h in heads:
            assert h["share"] == pytest.approx(h["loading"] / link["weight"], rel=1e-12)
            assert (h["layer"] is None) == (h["head"] is None)  # the direct part: both null
        if len(table) <= 5:  # all parts shown: they sum to the weight
            complete.append((sum(h["loading"] for h in heads), link["weight"]))
    assert len(complete) > 10
    assert_close(*np.array(complete).T, rtol=1e-4, what="shown loadings of each edge")
    assert any(h["layer"] is None for x in links for h in x["heads"])  # some direct parts
    # Neuronpedia's format has no place for them: its export is unchanged
    exported = to_neuronpedia(pruned, slug="test", scan="local")
    assert exported["links"] == [{k: v for k, v in x.items() if k != "heads"} for x in links]
    # the table is kept next to the graph, with node ids
    saved = pd.read_csv(files / "head_loadings.csv")
    assert len(saved) == len(loads)
    assert_close(saved["loading"], loads["loading"], eps=1e-16, what="saved loadings")
    ids, _ = node_ids(pruned)
    assert saved["source_id"].tolist() == [ids[i] for i in loads["source"]]
    assert set(saved["part"]) == {"head", "direct"}


def test_repruned_documents_keep_the_heads_they_have(tmp_path: Path):
    """Loadings exist for the written pruned graph's edges only: a re-pruned document gives
    those links their heads (matched by node ids) and the others none."""
    folder = make_graph_folder(tmp_path / "graph", heads=True)
    source = GraphSource(folder)
    saved = {(x["source"], x["target"]): x["heads"] for x in source.document()["links"]}
    for nt, et in ((0.5, 0.9), (0.95, 0.99)):
        doc = source.document(node_threshold=nt, edge_threshold=et)
        with_heads = [x for x in doc["links"] if "heads" in x]
        for link in doc["links"]:
            key = (link["source"], link["target"])
            assert link.get("heads") == saved.get(key)
        meta = doc["metadata"]["sae_circuits"]["head_loadings"]
        assert meta == {"n_links": len(with_heads), "max_heads": 5}
        json.loads(source.document_bytes(nt, et))  # what the server sends
    assert 0 < len(with_heads) < len(doc["links"])  # the looser pruning has edges without
    # no head_loadings.csv, or one that cannot be read: no heads, still served
    (folder / "head_loadings.csv").write_text("not,a\nloadings,table\n")
    doc = source.document(node_threshold=0.95, edge_threshold=0.99)
    assert not any("heads" in x for x in doc["links"])
    assert doc["metadata"]["sae_circuits"]["head_loadings"] is None
    (folder / "head_loadings.csv").unlink()
    assert not any("heads" in x for x in source.document(0.5, 0.9)["links"])


def test_head_loadings_must_be_of_the_pruned_graph(tmp_path: Path):
    graph, pruned = tiny_graphs()
    loads = tiny_head_loadings()
    folder = tmp_path / "graph"
    # loadings of another graph (the full one's indices): refused before anything is written
    shifted = loads.assign(source=loads["source"] + 1)
    with pytest.raises(ValueError, match=r"head_loadings .*sc\.head_loadings\(model"):
        write_graph_folder(folder, graph, pruned, head_loadings=shifted)
    assert not folder.exists()
    with pytest.raises(ValueError, match="lacks column"):
        write_graph_folder(folder, graph, pruned, head_loadings=loads.drop(columns="loading"))
    # some edges only: the others have no heads
    some = loads[loads["target"] == loads["target"].iloc[0]]
    files = write_graph_folder(folder, graph, pruned, head_loadings=some)
    doc = json.loads(files.document.read_text())
    n = some.groupby(["source", "target"]).ngroups
    assert sum("heads" in x for x in doc["links"]) == n < len(doc["links"])
    # writing the folder again without loadings removes the old ones
    files = write_graph_folder(folder, graph, pruned)
    assert files.head_loadings is None and not (folder / "head_loadings.csv").exists()
    doc = json.loads(files.document.read_text())
    assert doc["metadata"]["sae_circuits"]["head_loadings"] is None
    assert not any("heads" in x for x in doc["links"])


# ---------------------------------------------------------------------------------------------
# QK attributions (attention.json)


def _same_cell(saved: Any, value: Any) -> bool:
    """A table cell and its JSON: the same number (exactly: JSON keeps every float's digits) or
    string, ``null`` for a missing value."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return saved is None
    if isinstance(value, (str, np.str_)):
        return saved == str(value)
    return saved == value and type(saved) is (
        float if isinstance(value, np.floating | float) else int
    )


def test_attention_is_written_served_and_removed(tmp_path: Path):
    graph, pruned = tiny_graphs()
    qks = tiny_attention()
    folder = make_graph_folder(tmp_path / "graph", heads=True, attention=True)
    saved = json.loads((folder / "attention.json").read_text())
    assert saved["format"] == "sae_circuits.attention" and saved["max_rows"] == 20
    assert saved["tokens"] == pruned.metadata["tokens"] and saved["prompt"] == PROMPT
    assert len(saved["records"]) == len(qks) == 3
    for record, qk in zip(saved["records"], qks, strict=True):
        for name in ("layer", "head", "query", "key", "score", "pattern", "residual"):
            assert record[name] == getattr(qk, name), name  # numbers round-trip exactly
        for name in ("pairs", "query_side", "key_side"):
            table = getattr(qk, name)
            assert record[f"n_{name}"] == len(table)
            rows = record[name]
            assert len(rows) == min(20, len(table))
            for row, (_, want) in zip(rows, table.iterrows(), strict=False):
                assert set(row) == set(table.columns)
                assert all(_same_cell(row[c], want[c]) for c in table.columns), (name, row)
        listed = sum(x["contribution"] for x in record["pairs"])
        assert listed + record["residual"] == pytest.approx(record["score"], rel=1e-12)
        for side in ("query_side", "key_side"):
            total = sum(x["contribution"] for x in record[side]) + record[f"{side}_rest"]
            assert total == pytest.approx(record["score"], rel=1e-12)
        assert record["settings"]["top_pairs"] == 20
        assert set(record["settings"]["hooks"]) == {"query", "key"}
    # the document says so; the server adds what the folder holds now, also when re-pruned
    doc = json.loads((folder / "graph.json").read_text())
    expected = {"file": "attention.json", "n_records": 3, "max_rows": 20}
    assert doc["metadata"]["sae_circuits"]["attention"] == expected
    source = GraphSource(folder)
    for thresholds in ((), (0.5, 0.9)):
        served = source.document(*thresholds)
        assert served["metadata"]["viewer"]["attention"] == {"n_records": 3}
        assert served["metadata"]["sae_circuits"]["attention"] == expected
    assert source.attention() == saved
    # neither the graph files nor Neuronpedia's format hold them
    exported = json.dumps(to_neuronpedia(pruned, slug="test", scan="local"))
    assert "attention" not in exported and "query_side" not in exported
    assert AttributionGraph.load(folder / "pruned.zip").metadata == pruned.metadata
    # rewritten without them: the file is gone, and so is what says it is there
    files = write_graph_folder(folder, graph, pruned, slug="test")
    assert files.attention is None and not (folder / "attention.json").exists()
    doc = json.loads(files.document.read_text())
    assert doc["metadata"]["sae_circuits"]["attention"] is None
    assert source.document()["metadata"]["viewer"]["attention"] is None
    assert source.attention()["records"] == []


def test_attention_keeps_20_rows_and_the_rest_in_the_residual(tmp_path: Path):
    graph, pruned = tiny_graphs()
    qk = tiny_attention()[0]
    pairs = pd.concat([qk.pairs] * 8, ignore_index=True)  # more pairs than the file keeps
    pairs["contribution"] = pairs["contribution"] / 8
    long = dataclasses.replace(qk, pairs=pairs, residual=qk.score - pairs["contribution"].sum())
    files = write_graph_folder(tmp_path / "graph", graph, pruned, attention=[long, qk])
    record = json.loads(files.attention.read_text())["records"][0]  # type: ignore[union-attr]
    assert len(record["pairs"]) == 20 and record["n_pairs"] == len(pairs) > 20
    kept = pairs["contribution"].to_numpy()[:20]
    assert_close(record["residual"], qk.score - kept.sum(), rtol=1e-12, what="residual")


def test_attention_must_be_of_the_graphs_prompt(tmp_path: Path):
    graph, pruned = tiny_graphs()
    qk = tiny_attention()[0]
    folder = tmp_path / "graph"
    other = dataclasses.replace(qk, metadata={**qk.metadata, "tokens": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"attention\[1\] is of another prompt"):
        write_graph_folder(folder, graph, pruned, attention=[qk, other])
    far = dataclasses.replace(qk, key=99)
    with pytest.raises(ValueError, match=r"attention\[0\]: query .* outside the prompt"):
        write_graph_folder(folder, graph, pruned, attention=[far])
    with pytest.raises(ValueError, match=r"attention\[0\]\.layer must be a whole number"):
        write_graph_folder(folder, graph, pruned, attention=[pruned])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="attention must be a list of QKAttribution"):
        write_graph_folder(folder, graph, pruned, attention=qk)  # type: ignore[arg-type]
    assert not folder.exists()  # nothing written


def test_server_serves_the_attention(running: Running, folder: Path):
    status, body = running.get_json("/api/attention")  # none in the folder: no records
    assert status == 200 and body["records"] == []
    graph, pruned = tiny_graphs()
    write_graph_folder(folder, graph, pruned, slug="test", attention=tiny_attention())
    on_disk = json.loads((folder / "attention.json").read_text())
    status, body = running.get_json("/api/attention")
    assert status == 200 and body == on_disk
    status, doc = running.get_json("/api/graph")
    assert status == 200 and doc["metadata"]["viewer"]["attention"] == {"n_records": 3}
    status, raw, headers = running.request("GET", "/files/attention.json")
    assert status == 200 and json.loads(raw) == on_disk
    assert headers["Content-Type"] == "application/json"
    for path, code in (
        ("/api/attention?layer=1", 400),
        ("/api/attention?", 200),
        ("/api/attention/", 404),
        ("/api/attention/../graph", 404),
        ("/api/attention%00", 404),
    ):
        assert running.request("GET", path)[0] == code, path
    assert (
        running.request("POST", "/api/attention", b"{}", {"Content-Type": "application/json"})[0]
        == 404
    )
    assert running.request("PUT", "/api/attention", b"{}")[0] == 405
    # a file that is not what write_graph_folder writes: a conflict, and the graph still served
    for bad in (
        b"{not json",
        b'{"records": [{"layer": 1}]}',
        b'{"records": [{"layer": 0, "head": 0, "query": 1, "key": 0, "score": NaN}]}',
        b'{"records": [{"layer": 0, "head": 0, "query": 1, "key": 0, "pairs": [{"x": 1}]}]}',
        b"[]",
    ):
        (folder / "attention.json").write_bytes(bad)
        status, body = running.get_json("/api/attention")
        assert status == 409 and "attention.json" in body["error"], (bad, body)
        status, doc = running.get_json("/api/graph")
        assert status == 200 and doc["metadata"]["viewer"]["attention"] is None


# ---------------------------------------------------------------------------------------------
# serving


def test_serves_page_static_files_and_graph(running: Running, folder: Path):
    status, body, headers = running.request("GET", "/")
    assert status == 200 and b'<svg id="graph-svg"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name in ("viewer.js", "viewer.css", "model.js", "svg.js"):
        status, _, headers = running.request("GET", f"/{name}")
        assert status == 200, name
    status, doc = running.get_json("/api/graph")
    assert status == 200
    on_disk = json.loads((folder / "graph.json").read_text())
    assert doc["nodes"] == on_disk["nodes"] and doc["links"] == on_disk["links"]
    status, small = running.get_json("/api/graph?node_threshold=0.5&edge_threshold=0.9")
    assert status == 200 and len(small["nodes"]) < len(doc["nodes"])
    status, body, _ = running.request("GET", "/files/graph.json")
    assert status == 200 and json.loads(body)["nodes"] == on_disk["nodes"]


@pytest.mark.parametrize(
    "query, message",
    [
        ("node_threshold=1.5", "node_threshold must be in [0, 1]"),
        ("edge_threshold=abc", "edge_threshold must be a number"),
        ("node_threshold=nan", "node_threshold must be in [0, 1]"),
        ("evil=1", "unknown parameters"),
    ],
)
def test_graph_rejects_bad_thresholds(running: Running, query: str, message: str):
    status, body = running.get_json(f"/api/graph?{query}")
    assert status == 400
    assert message in body["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/..%2fsecret.txt",
        "/files/%252e%252e/secret.txt",
        "/files/sub/../../secret.txt",
        "/files/..%5csecret.txt",
        "/files//SECRET_ABS",
        "/files/%2FSECRET_ABS",
        "/files/link_out",
        "/files/dir_out/secret.txt",
        "/files/%00secret.txt",
        "/files/.annotations.lock",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/static/../../secret.txt",
        "/viewer.js/../../secret.txt",
    ],
)
def test_no_file_outside_the_folder_can_be_read(running: Running, folder: Path, path: str):
    secret = folder.parent / "secret.txt"
    os.symlink(secret, folder / "link_out")
    os.symlink(folder.parent, folder / "dir_out")
    (folder / ".annotations.lock").write_text(SECRET)
    path = path.replace("SECRET_ABS", str(secret).lstrip("/").replace("/", "%2F"))
    status, body, _ = running.request("GET", path)
    assert status in (400, 403, 404), (path, status)
    assert SECRET.encode() not in body


def test_writes_stay_inside_the_folder(running: Running, folder: Path):
    outside = folder.parent / "secret.txt"
    for path in ("/files/annotations.json", "/api/../secret.txt", "/files/../secret.txt"):
        status, _, _ = running.request("POST", path, b"{}", {"Content-Type": "application/json"})
        assert status in (403, 404), path
    # annotations.json replaced by a link to a file outside: refuse, leave the target alone
    os.symlink(outside, folder / "annotations.json")
    status, body = running.post({"labels": {"1_2_3": "x"}})
    assert status == 409 and "symbolic link" in body["error"]
    assert outside.read_text() == SECRET
    assert sorted(p.name for p in folder.parent.iterdir()) == ["secret.txt", "served"]


@pytest.mark.parametrize(
    "patch, message",
    [
        ([], "must be a JSON object"),
        ({"labels": {"1_2_3": "x"}, "evil": 1}, "unknown patch keys"),
        ({"labels": {"../../etc/passwd": "x"}}, "is not a node id"),
        ({"labels": {"1_2_3": "x" * 201}}, "at most 200"),
        ({"labels": {"1_2_3": "a\nb"}}, "control characters"),
        ({"labels": {"1_2_3": 5}}, "must be a string"),
        ({"labels": ["1_2_3"]}, "labels must be a JSON object"),
        ({"supernodes": {"sn-1": {"label": "x"}}}, "needs both"),
        ({"supernodes": {"sn-1": {"label": "x", "members": "1_2_3"}}}, "list of node ids"),
        ({"supernodes": {"sn-1": {"label": "", "members": ["1_2_3"]}}}, "empty"),
        ({"supernodes": {"sn-1": {"label": "x", "members": []}}}, "empty"),
        ({"supernodes": {"sn 1": {"label": "x", "members": ["1_2_3"]}}}, "not a supernode id"),
        ({"supernodes": {"sn-1": {"label": "x", "members": ["1_2_3"], "js": 1}}}, "unknown keys"),
        ({"supernodes": {"sn-1": {"label": "x", "members": ["1_2_3"] * 2}}}, "twice"),
        ({"pinned": {"add": "1_2_3"}}, "list of node ids"),
        ({"pinned": {"toggle": ["1_2_3"]}}, "unknown keys"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_patches_are_validated(running: Running, folder: Path, patch: Any, message: str):
    status, body = running.post(patch)
    assert status == 400
    assert message in body["error"]
    assert not (folder / "annotations.json").exists()


def test_request_framing_is_checked(running: Running, folder: Path):
    status, body, _ = running.request(
        "POST", "/api/annotations", b"{}", {"Content-Type": "text/plain"}
    )
    assert status == 415
    status, body, _ = running.request(
        "POST", "/api/annotations", None, {"Content-Type": "application/json"}
    )
    assert status == 411
    status, body, _ = running.request(
        "POST",
        "/api/annotations",
        None,
        {"Content-Type": "application/json", "Content-Length": str(50_000_000)},
    )
    assert status == 413 and b"at most" in body
    assert not (folder / "annotations.json").exists()


def test_host_and_origin_are_checked(running: Running):
    status, body, _ = running.request("GET", "/api/graph", headers={"Host": "evil.example:80"})
    assert status == 403 and b"Host" in body
    status, body = running.post({"labels": {"1_2_3": "x"}}, Origin="http://evil.example")
    assert status == 403 and "cross-origin" in body["error"]
    status, _ = running.post({"labels": {"1_2_3": "x"}}, Origin=f"http://127.0.0.1:{running.port}")
    assert status == 200


def test_annotations_round_trip_and_merge(running: Running, folder: Path):
    status, doc = running.get_json("/api/annotations")
    assert status == 200 and doc["revision"] == 0 and doc["labels"] == {}
    members = ["1_2_3", "0_4_1"]
    status, doc = running.post(
        {
            "labels": {"1_2_3": "Texas"},
            "supernodes": {"sn-a": {"label": "state", "members": members}},
            "pinned": {"add": ["1_2_3", "E_5_1"]},
        }
    )
    assert status == 200 and doc["revision"] == 1
    status, doc = running.post({"labels": {"0_4_1": "Dallas"}, "pinned": {"remove": ["E_5_1"]}})
    assert doc["labels"] == {"1_2_3": "Texas", "0_4_1": "Dallas"}
    assert doc["pinned"] == ["1_2_3"]
    assert doc["supernodes"] == {"sn-a": {"label": "state", "members": members}}
    status, doc = running.post({"labels": {"1_2_3": None}, "supernodes": {"sn-a": None}})
    assert doc["labels"] == {"0_4_1": "Dallas"} and doc["supernodes"] == {}
    on_disk = json.loads((folder / "annotations.json").read_text())
    assert on_disk == doc and on_disk["revision"] == 3
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_saves_lose_nothing(running: Running, folder: Path):
    n_threads, per_thread = 8, 4
    errors: list[Any] = []
    barrier = threading.Barrier(n_threads, timeout=10)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            nid = f"{t}_{i}_0"
            patch = {
                "labels": {nid: f"label {t}.{i}"},
                "supernodes": {f"sn-{t}-{i}": {"label": f"group {t}.{i}", "members": [nid]}},
                "pinned": {"add": [nid]},
            }
            status, body = running.post(patch)
            if status != 200:
                errors.append(body)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors
    doc = json.loads((folder / "annotations.json").read_text())
    n = n_threads * per_thread
    assert doc["revision"] == n
    assert len(doc["labels"]) == len(doc["supernodes"]) == len(doc["pinned"]) == n
    assert doc["labels"]["3_2_0"] == "label 3.2"


def test_store_threads_and_limits(tmp_path: Path):
    store = AnnotationStore(tmp_path, AnnotationLimits(max_labels=50))

    def work(t: int) -> None:
        for i in range(5):
            store.update({"labels": {f"{t}_{i}_0": "x"}})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert len(store.read()["labels"]) == 40 and store.read()["revision"] == 40
    with pytest.raises(AnnotationError, match="at most 50"):
        store.update({"labels": {f"9_{i}_1": "x" for i in range(11)}})
    assert len(store.read()["labels"]) == 40


def test_unreadable_annotations_are_never_overwritten(running: Running, folder: Path):
    path = folder / "annotations.json"
    path.write_text("{broken")
    status, body = running.get_json("/api/annotations")
    assert status == 500 and "left as it is" in body["error"]
    status, body = running.post({"labels": {"1_2_3": "x"}})
    assert status == 409
    assert path.read_text() == "{broken"
    with pytest.raises(AnnotationFileError):
        AnnotationStore(folder).read()


# ---------------------------------------------------------------------------------------------
# binding and the pure rules


def test_server_refuses_non_local_binds(folder: Path):
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "example.com"):
        with pytest.raises(RemoteBindError, match="allow-remote"):
            make_server(folder, host=host, port=0)
    check_bind_host("0.0.0.0", allow_remote=True)  # explicit permission (not bound in tests)
    server = make_server(folder, host="localhost", port=0)
    server.server_close()


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("localhost.evil.com", False),
    ],
)
def test_is_loopback(host: str, expected: bool):
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    "header, expected",
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("[::1]:8765", True),
        ("127.0.0.1", True),
        ("127.0.0.1:9999", False),
        ("evil.example:8765", False),
        ("127.0.0.1.nip.io:8765", False),
        ("[::1", False),
        ("", False),
        (None, False),
    ],
)
def test_host_header_ok(header: str | None, expected: bool):
    assert host_header_ok(header, 8765) is expected


def test_resolve_inside(tmp_path: Path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.json").write_text("{}")
    (tmp_path / "out.txt").write_text("x")
    os.symlink(tmp_path / "out.txt", root / "link")
    os.symlink(root / "sub" / "a.json", root / "inner_link")
    assert resolve_inside(root, "sub/a.json") == (root / "sub" / "a.json").resolve()
    assert resolve_inside(root, "inner_link") == (root / "sub" / "a.json").resolve()
    for bad in ("../out.txt", "sub/../../out.txt", "/etc/passwd", "link", ".hidden", "a\\b",
                "x\x00y", "", ".", "~/x", "C:x"):  # fmt: skip
        assert resolve_inside(root, bad) is None, bad
