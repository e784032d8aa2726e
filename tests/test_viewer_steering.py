"""Steering from the viewer (``viewer.steering``) and the comparison of two graphs
(``viewer.compare``), as functions and through the server's API.

The steering runs are checked against the project's own :func:`sae_circuits.intervene` and
:func:`sae_circuits.generate` on the same request (the viewer is a front end: the numbers must be
the library's); every validation rule is checked with a request that breaks it and must not run
the model. The comparison is checked for its bookkeeping: every node and link of either graph
once, the right mark, weights of both sides and their change.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import sae_circuits as sc
from sae_circuits.viewer import GraphSource, make_server, write_graph_folder
from sae_circuits.viewer.compare import compare_documents
from sae_circuits.viewer.steering import (
    Steerer,
    SteeringBusyError,
    SteeringError,
    SteeringLimits,
    SteeringTimeoutError,
)

from .conftest import assert_same_model, build, model_fingerprint
from .test_viewer_server import tiny_graphs
from .tolerance import assert_close

OTHER_PROMPT = "t5 t9 t3 t7 t2 t8 t1 t1 t4 t2"


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    model, tcs = build("llama", "skip")
    return model, sc.load_transcoders(tcs)


def _top_features(graph: Any, k: int) -> pd.DataFrame:
    feats = graph.nodes[graph.nodes["kind"] == "feature"]
    return feats.nlargest(k, "activation")


def _node_id(row: Any) -> str:
    return f"{int(row.layer)}_{int(row.feature)}_{int(row.position)}"


@pytest.fixture(scope="module")
def steerer(tiny: tuple[Any, Any]) -> Iterator[Steerer]:
    model, ts = tiny
    graph, _ = tiny_graphs()
    s = Steerer(model, ts, prompt=graph.metadata["tokens"])
    yield s
    s.close()


def test_steering_run_is_the_librarys_intervention_and_generation(tiny, steerer):
    model, ts = tiny
    graph, _ = tiny_graphs()
    feats = _top_features(graph, 3)
    before = model_fingerprint(model)
    body = {
        "features": [
            {"node_id": _node_id(feats.iloc[0]), "scale": 0.0},
            {"node_id": _node_id(feats.iloc[1]), "value": 3.5},
            {"node_id": _node_id(feats.iloc[2]), "scale": 2.0},
        ],
        "freeze_attention": False,
        "max_new_tokens": 4,
        "top_k": 5,
    }
    out = steerer.run(body)
    assert_same_model(before, model_fingerprint(model))

    table = pd.DataFrame(
        {
            "layer": feats["layer"].astype(int).tolist(),
            "position": feats["position"].astype(int).tolist(),
            "feature": feats["feature"].astype(int).tolist(),
            "value": [None, 3.5, None],
            "scale": [0.0, None, 2.0],
        }
    )
    tokens = graph.metadata["tokens"]
    want = sc.intervene(model, tokens, ts, table, freeze_attention=False).top_logits(5)
    assert [r["rank"] for r in out["top_logits"]] == want["rank"].astype(int).tolist()
    assert [r["after_token"] for r in out["top_logits"]] == want["after_token"].tolist()
    assert [r["before_token"] for r in out["top_logits"]] == want["before_token"].tolist()
    assert_close(
        [r["after_probability"] for r in out["top_logits"]],
        want["after_probability"].to_numpy(),
        what="steered probabilities vs intervene",
    )
    gen = sc.generate(model, tokens, ts, table, max_new_tokens=4)
    n = len(gen.prompt_tokens)
    assert out["generation"]["steered_tokens"] == gen.tokens[n:].tolist()
    assert out["generation"]["clean_tokens"] == gen.clean_tokens[n:].tolist()
    assert len(out["generation"]["steered_tokens"]) == 4
    assert out["n_features"] == 3 and out["freeze_attention"] is False
    # the change is real: switching the strongest features off moves the distribution
    assert [r["after_probability"] for r in out["top_logits"]] != [
        r["before_probability"] for r in out["top_logits"]
    ]


def test_steering_without_generation_and_with_frozen_attention(tiny, steerer):
    model, ts = tiny
    graph, _ = tiny_graphs()
    row = _top_features(graph, 1).iloc[0]
    out = steerer.run({"features": [{"node_id": _node_id(row), "scale": 0.0}], "max_new_tokens": 0})
    assert out["generation"] is None and out["freeze_attention"] is True
    table = [(int(row.layer), int(row.position), int(row.feature), 0.0)]
    want = sc.intervene(model, graph.metadata["tokens"], ts, table).top_logits(10)
    assert [r["after_token"] for r in out["top_logits"]] == want["after_token"].tolist()


def _feature_id(graph: Any) -> str:
    return _node_id(_top_features(graph, 1).iloc[0])


@pytest.mark.parametrize(
    ("make_body", "message"),
    [
        (lambda f: [f], "JSON object"),
        (lambda f: {"features": [], "x": 1}, "unknown fields ['x']"),
        (lambda f: {"features": []}, "non-empty list"),
        (lambda f: {"features": [{"node_id": f}] * 65}, "at most 64"),
        (lambda f: {"features": [{"node_id": f, "scale": 0, "extra": 1}]}, "unknown fields"),
        (lambda f: {"features": [{"node_id": "E_3_1", "scale": 0}]}, "only features"),
        (lambda f: {"features": [{"node_id": "1_99999_2", "scale": 0}]}, "beyond layer 1"),
        (lambda f: {"features": [{"node_id": "9_1_2", "scale": 0}]}, "layer"),
        (lambda f: {"features": [{"node_id": f, "scale": 0}, {"node_id": f, "value": 1}]}, "twice"),
        (lambda f: {"features": [{"node_id": f, "scale": 0, "value": 1}]}, "exactly one"),
        (lambda f: {"features": [{"node_id": f}]}, "exactly one"),
        (lambda f: {"features": [{"node_id": f, "value": float("nan")}]}, "finite number"),
        (lambda f: {"features": [{"node_id": f, "value": 1e9}]}, "finite number in"),
        (lambda f: {"features": [{"node_id": f, "scale": 1000}]}, "[-100, 100]"),
        (lambda f: {"features": [{"node_id": f, "scale": True}]}, "must be a number"),
        (lambda f: {"features": [{"node_id": f, "scale": 0}], "freeze_attention": 1}, "true or"),
        (lambda f: {"features": [{"node_id": f, "scale": 0}], "max_new_tokens": 999}, "whole"),
        (lambda f: {"features": [{"node_id": f, "scale": 0}], "top_k": 0}, "top_k"),
    ],
)
def test_bad_steering_requests_are_refused_before_the_model_runs(
    steerer, monkeypatch, make_body, message
):
    graph, _ = tiny_graphs()
    ran: list[Any] = []
    monkeypatch.setattr(steerer, "_compute", lambda req: ran.append(req) or {})
    with pytest.raises(SteeringError) as info:
        steerer.run(make_body(_feature_id(graph)))
    assert message in str(info.value)
    assert ran == []


def test_one_steering_run_at_a_time_and_within_the_time_limit(tiny):
    model, ts = tiny
    graph, _ = tiny_graphs()
    s = Steerer(model, ts, prompt=graph.metadata["tokens"], limits=SteeringLimits(time_limit_s=0.2))
    release = threading.Event()
    real = s._compute

    def slow(req: Any) -> dict[str, Any]:
        release.wait(timeout=10)
        return real(req)

    s._compute = slow  # type: ignore[method-assign]
    body = {"features": [{"node_id": _feature_id(graph), "scale": 0.0}], "max_new_tokens": 0}
    try:
        with pytest.raises(SteeringTimeoutError, match=r"longer than 0\.2 s"):
            s.run(body)
        with pytest.raises(SteeringBusyError):  # the slow run still holds the model
            s.run(body)
        release.set()
        deadline = time.monotonic() + 10
        while True:  # once it has finished, the next run goes through
            try:
                out = s.run(body)
                break
            except SteeringBusyError:
                assert time.monotonic() < deadline, "the timed-out run never released the model"
                time.sleep(0.02)
        assert out["n_features"] == 1
    finally:
        release.set()
        s.close()


class _Served:
    def __init__(self, folder: Path, **kwargs: Any) -> None:
        self.server = make_server(folder, port=0, **kwargs)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny) -> tuple[Path, Path]:
    model, ts = tiny
    root = tmp_path_factory.mktemp("steer")
    graph_a, pruned_a = tiny_graphs()
    write_graph_folder(root / "a", graph_a, pruned_a, slug="a")
    graph_b = sc.attribute(model, OTHER_PROMPT, ts, progress=False)
    write_graph_folder(root / "b", graph_b, graph_b.prune(0.8, 0.98), slug="b")
    return root / "a", root / "b"


def test_steering_api_is_off_without_a_model(folders):
    served = _Served(folders[0])
    try:
        status, info = served.request("GET", "/api/steer")
        assert status == 200 and info["enabled"] is False
        assert "--model" in info["reason"] and "--transcoders" in info["reason"]
        status, err = served.request("POST", "/api/steer", {"features": []})
        assert status == 409 and "--model" in err["error"]
    finally:
        served.close()


def test_steering_api_with_a_model(folders, tiny):
    model, ts = tiny
    graph, _ = tiny_graphs()
    s = Steerer(model, ts, prompt=GraphSource(folders[0]).prompt())
    served = _Served(folders[0], steerer=s)
    try:
        status, info = served.request("GET", "/api/steer")
        assert status == 200 and info["enabled"] is True
        assert info["n_positions"] == len(graph.metadata["tokens"])
        body = {"features": [{"node_id": _feature_id(graph), "scale": 0.0}], "max_new_tokens": 2}
        status, out = served.request("POST", "/api/steer", body)
        assert status == 200, out
        assert out == {**s.run(body), "seconds": out["seconds"]}
        status, err = served.request("POST", "/api/steer", {"features": [{"node_id": "x"}]})
        assert status == 400 and "node_id" in err["error"]
        status, err = served.request(
            "POST", "/api/steer", body, headers={"Origin": "http://evil.example"}
        )
        assert status == 403
    finally:
        served.close()
        s.close()


def test_compare_documents_accounts_for_every_node_and_link(folders):
    a = GraphSource(folders[0]).document()
    b = GraphSource(folders[1]).document()
    diff = compare_documents(a, b)
    ids_a = {n["node_id"] for n in a["nodes"]}
    ids_b = {n["node_id"] for n in b["nodes"]}
    marks = {n["node_id"]: n["compare"] for n in diff["nodes"]}
    assert len(marks) == len(diff["nodes"]) == len(ids_a | ids_b)
    for nid, mark in marks.items():
        assert mark == ("both" if nid in ids_a & ids_b else "a" if nid in ids_a else "b")
    assert ids_a - ids_b and ids_b - ids_a  # the two prompts differ at their last token
    wa = {(x["source"], x["target"]): x["weight"] for x in a["links"]}
    wb = {(x["source"], x["target"]): x["weight"] for x in b["links"]}
    assert len(diff["links"]) == len(wa.keys() | wb.keys())
    for link in diff["links"]:
        key = (link["source"], link["target"])
        assert link["weight_a"] == wa.get(key) and link["weight_b"] == wb.get(key)
        assert link["weight"] == (wb.get(key) or 0.0) - (wa.get(key) or 0.0)
        assert link["compare"] == ("both" if key in wa and key in wb else "a" if key in wa else "b")
    counts = diff["metadata"]["viewer"]["compare"]["counts"]
    assert counts["nodes_only_a"] == len(ids_a - ids_b)
    assert counts["nodes_only_b"] == len(ids_b - ids_a)
    assert counts["nodes_both"] == len(ids_a & ids_b)
    assert counts["links_both"] == len(wa.keys() & wb.keys())
    assert 0 < counts["links_changed"] <= counts["links_both"]
    # a graph against itself: nothing only on one side, nothing changed
    same = compare_documents(a, a)["metadata"]["viewer"]["compare"]["counts"]
    assert same["nodes_only_a"] == same["nodes_only_b"] == same["links_changed"] == 0


def test_compare_refuses_graphs_of_different_models(folders):
    a = GraphSource(folders[0]).document()
    b = json.loads(json.dumps(a))
    b["metadata"]["sae_circuits"]["n_layers"] = 7
    with pytest.raises(ValueError, match="layers"):
        compare_documents(a, b)


def test_compare_api_at_new_thresholds(folders):
    served = _Served(folders[0], compare=folders[1])
    try:
        status, doc = served.request("GET", "/api/graph?node_threshold=0.6&edge_threshold=0.9")
        assert status == 200
        want = compare_documents(
            GraphSource(folders[0]).document(0.6, 0.9), GraphSource(folders[1]).document(0.6, 0.9)
        )
        assert doc["metadata"]["viewer"]["compare"] == want["metadata"]["viewer"]["compare"]
        assert {n["node_id"] for n in doc["nodes"]} == {n["node_id"] for n in want["nodes"]}
    finally:
        served.close()
