"""Bad requests never cost data: a seeded barrage of malformed requests against the viewer server.

Every route of :mod:`sae_circuits.viewer.server` (``GET /``, the static files, ``/api/graph``,
``/api/annotations``, ``/api/attention``, ``/files/<name>``; ``POST /api/annotations``) gets
random and malformed
paths, query strings, headers and bodies over raw sockets. Each must be answered with a ``4xx``
(never a ``5xx``, never a dropped connection or a hang), the server must keep serving, and the
annotation file and the graph files (``attention.json`` included) must be byte-identical
afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sae_circuits.viewer import make_server
from sae_circuits.viewer.server import STATIC_DIR

from .test_viewer_server import folder, template  # noqa: F401  (fixtures)

SEED = 13
N_RANDOM = 200
DEADLINE_S = 20.0
_STATIC = sorted(f"/{p.name}" for p in STATIC_DIR.iterdir() if p.suffix in (".js", ".css"))
_GET_ROUTES = [
    *("/", "/index.html", *_STATIC, "/api/graph", "/api/annotations", "/api/attention"),
    "/files/graph.json",
]
#: A small ``attention.json`` of the served folder (the format ``write_graph_folder`` writes).
_ATTENTION = {
    "format": "sae_circuits.attention",
    "version": 1,
    "max_rows": 20,
    "records": [
        {
            **{"layer": 1, "head": 2, "query": 8, "key": 7, "score": 4.9, "pattern": 0.99},
            "residual": 0.1,
            "pairs": [{"query_node": "0_294_8", "key_node": "bias", "contribution": 4.8}],
            "query_side": [{"node": "0_294_8", "kind": "feature", "contribution": 4.9}],
            "key_side": [{"node": "bias", "kind": "bias", "contribution": 4.9}],
        }
    ],
}
_VALID_PATCH = {
    "labels": {"1_2_3": "Texas", "0_4_2": "say Austin"},
    "supernodes": {"sn-1": {"label": "capital", "members": ["1_2_3", "2_5_3"]}},
    "pinned": {"add": ["1_2_3", "E_5_1"], "remove": []},
}


@dataclass
class Case:
    """One raw request: its bytes, and whether the client half-closes after sending them."""

    name: str
    raw: bytes
    half_close: bool = False


def _request(
    method: str,
    target: str | bytes,
    *,
    port: int,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    content_length: str | None = None,
) -> bytes:
    hdrs = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    if body is not None and "Content-Length" not in hdrs:
        hdrs["Content-Length"] = content_length if content_length is not None else str(len(body))
    target_b = target if isinstance(target, bytes) else target.encode("latin-1")
    head = method.encode() + b" " + target_b + b" HTTP/1.1\r\n"
    head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in hdrs.items())
    return head + b"\r\n" + (body or b"")


def _post(port: int, body: bytes, **kw) -> bytes:
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return _request(
        "POST", kw.pop("path", "/api/annotations"), port=port, body=body, headers=headers, **kw
    )


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _bad_bodies(rng: random.Random) -> list[tuple[str, bytes]]:
    """Bodies that are not a valid patch (each one is rejected by the server's validation)."""
    valid = json.dumps(_VALID_PATCH).encode()
    fixed: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("whitespace", b"  \n "),
        ("list", b"[]"),
        ("number", b"5"),
        ("huge number", b"1" * 5000),
        ("huge number in a label", b'{"labels": {"1_2_3": ' + b"9" * 5000 + b"}}"),
        ("string", b'"labels"'),
        ("null", b"null"),
        ("true", b"true"),
        ("NaN label", b'{"labels": {"1_2_3": NaN}}'),
        ("Infinity count", b'{"labels": Infinity}'),
        ("labels a list", b'{"labels": ["1_2_3"]}'),
        ("labels a string", b'{"labels": "1_2_3"}'),
        ("label a number", b'{"labels": {"1_2_3": 5}}'),
        ("label a list", b'{"labels": {"1_2_3": ["x"]}}'),
        ("label an object", b'{"labels": {"1_2_3": {"a": 1}}}'),
        ("deeply nested label", b'{"labels": {"1_2_3": ' + _deep(50_000) + b"}}"),
        ("deeply nested list", _deep(100_000)),
        ("deeply nested objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
        ("label with NUL", json.dumps({"labels": {"1_2_3": "a\x00b"}}).encode()),
        ("node id with NUL", json.dumps({"labels": {"1_2\x00_3": "x"}}).encode()),
        ("label with a lone surrogate", b'{"labels": {"1_2_3": "Tex\\ud800as"}}'),
        (
            "supernode label lone surrogate",
            b'{"supernodes": {"sn-1": {"label": "\\udfff", "members": ["1_2_3"]}}}',
        ),
        ("node id lone surrogate", b'{"labels": {"\\ud800": "x"}}'),
        ("invalid UTF-8 in a label", b'{"labels": {"1_2_3": "\xff\xfe\xc3"}}'),
        ("invalid UTF-8 overlong", b'{"labels": {"1_2_3": "\xc0\xaf"}}'),
        ("latin-1 body", '{"labels": {"1_2_3": "café"}}'.encode("latin-1")),
        ("UTF-16 body", json.dumps(_VALID_PATCH).encode("utf-16")),
        ("BOM", b"\xef\xbb\xbf" + valid),
        ("very long label", json.dumps({"labels": {"1_2_3": "x" * 100_000}}).encode()),
        ("very long node id", json.dumps({"labels": {"1" * 10_000: "x"}}).encode()),
        (
            "very long supernode id",
            json.dumps({"supernodes": {"s" * 5000: {"label": "x", "members": ["1_2_3"]}}}).encode(),
        ),
        (
            "too many labels",
            json.dumps({"labels": {f"1_{i}_3": "x" for i in range(6000)}}).encode(),
        ),
        (
            "too many pins",
            json.dumps({"pinned": {"add": [f"1_{i}_3" for i in range(6000)]}}).encode(),
        ),
        ("unknown key", b'{"labels": {}, "evil": 1}'),
        ("duplicate key, last wrong", b'{"labels": {"1_2_3": "x"}, "labels": 5}'),
        ("path as node id", b'{"labels": {"../../etc/passwd": "x"}}'),
        ("node id with slash", b'{"labels": {"1/2/3": "x"}}'),
        ("label with newline", b'{"labels": {"1_2_3": "a\\nb"}}'),
        ("label with DEL", b'{"labels": {"1_2_3": "a\\u007fb"}}'),
        ("supernode a list", b'{"supernodes": {"sn-1": ["x", "1_2_3"]}}'),
        ("supernode without members", b'{"supernodes": {"sn-1": {"label": "x"}}}'),
        (
            "supernode members a string",
            b'{"supernodes": {"sn-1": {"label": "x", "members": "1_2_3"}}}',
        ),
        ("supernode members empty", b'{"supernodes": {"sn-1": {"label": "x", "members": []}}}'),
        (
            "supernode members numbers",
            b'{"supernodes": {"sn-1": {"label": "x", "members": [1, 2]}}}',
        ),
        (
            "supernode empty label",
            b'{"supernodes": {"sn-1": {"label": " ", "members": ["1_2_3"]}}}',
        ),
        (
            "supernode extra key",
            b'{"supernodes": {"sn-1": {"label": "x", "members": ["1_2_3"], "x": 1}}}',
        ),
        ("supernode bad id", b'{"supernodes": {"sn 1": null}}'),
        ("pinned a list", b'{"pinned": ["1_2_3"]}'),
        ("pinned add a string", b'{"pinned": {"add": "1_2_3"}}'),
        ("pinned add twice", b'{"pinned": {"add": ["1_2_3", "1_2_3"]}}'),
        ("pinned unknown key", b'{"pinned": {"toggle": ["1_2_3"]}}'),
        ("trailing garbage", valid + b"xyz"),
        ("two documents", valid + valid),
        ("single quotes", b"{'labels': {}}"),
        ("comment", b'{"labels": {} /* hi */}'),
    ]
    # truncated JSON of a valid patch (a strict prefix of an object is never valid JSON)
    for cut in sorted(rng.sample(range(1, len(valid)), 16)):
        fixed.append((f"truncated at {cut}", valid[:cut]))
    # random bytes, random printable junk, random JSON-ish token soup
    tokens = [
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b'"labels"',
        b'"pinned"',
        b'"1_2_3"',
        b"null",
        b"1e999",
        b'"\\u0000"',
        b'"\\ud800"',
        b"\xff",
    ]
    for i in range(16):
        fixed.append((f"random bytes {i}", rng.randbytes(rng.randrange(1, 3000))))
        fixed.append(
            (
                f"token soup {i}",
                b"{" + b"".join(rng.choice(tokens) for _ in range(rng.randrange(1, 40))),
            )
        )
    return fixed


def _junk(rng: random.Random, n: int) -> str:
    alphabet = [*"abcXYZ019-_.~!$&'()*+,;=:@", "%2f", "%2F", "%2e", "%00", "%ff", "%", "%zz"]
    alphabet += ["..", "/", "?", "&", "=", "é", "\x7f", "%5c", "%c0%af", "%ed%a0%80"]
    return "".join(rng.choice(alphabet) for _ in range(n))


def _is_float(text: str) -> bool:
    """Whether Python reads ``text`` (raw, from a query string) as a float."""
    try:
        float(urllib.parse.unquote_plus(text))
    except ValueError:
        return False
    return True


def _cases(port: int, rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    # -- bodies to the one POST route
    bodies = _bad_bodies(rng)
    for name, body in bodies:
        add(Case(f"POST body: {name}", _post(port, body)))
    # -- POST with broken framing or headers (valid body where it matters)
    valid = json.dumps(_VALID_PATCH).encode()
    add(
        Case(
            "POST without Content-Type", _request("POST", "/api/annotations", port=port, body=valid)
        )
    )
    add(Case("POST text/plain", _post(port, valid, headers={"Content-Type": "text/plain"})))
    add(
        Case(
            "POST form",
            _post(port, b"labels=x", headers={"Content-Type": "application/x-www-form-urlencoded"}),
        )
    )
    add(
        Case(
            "POST without Content-Length",
            _request(
                "POST", "/api/annotations", port=port, headers={"Content-Type": "application/json"}
            )
            + valid,
            half_close=True,
        )
    )
    for cl in ("-1", "abc", "1e3", "0x10", "", "99999999999999999999999", "1, 2"):
        add(
            Case(
                f"POST Content-Length {cl!r}",
                _post(port, valid, content_length=cl),
                half_close=True,
            )
        )
    add(Case("POST Content-Length too large", _post(port, b"", content_length="2000000")))
    add(
        Case(
            "POST body shorter than Content-Length",
            _post(port, valid[:20], content_length=str(len(valid))),
            half_close=True,
        )
    )
    add(
        Case(
            "POST body longer than Content-Length",
            _post(port, valid, content_length=str(len(valid) // 2)),
        )
    )
    add(
        Case(
            "POST chunked",
            _post(
                port,
                b"5\r\nhello\r\n0\r\n\r\n",
                headers={"Transfer-Encoding": "chunked"},
                content_length="5",
            ),
        )
    )
    add(Case("POST cross-origin", _post(port, valid, headers={"Origin": "http://evil.example"})))
    add(Case("POST Origin null", _post(port, valid, headers={"Origin": "null"})))
    add(Case("POST foreign Host", _post(port, valid, headers={"Host": "evil.example"})))
    add(Case("POST Host other port", _post(port, valid, headers={"Host": f"127.0.0.1:{port + 1}"})))
    add(Case("POST without Host", _post(port, valid, headers={"Host": ""})))
    add(Case("POST with a query string", _post(port, valid, path="/api/annotations?revision=0")))
    for path in (
        "/",
        "/api/graph",
        "/files/annotations.json",
        "/api/attention",
        "/api/annotations/",
        "/api/annotations/../annotations",
        "/api/annotations%00",
        "/API/annotations",
        "/files/../annotations.json",
    ):
        add(Case(f"POST to {path}", _post(port, valid, path=path)))
    # -- other methods on every route
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        for route in ("/", "/api/annotations", "/api/graph", "/api/attention", "/files/graph.json"):
            add(
                Case(
                    f"{method} {route}",
                    _request(
                        method,
                        route,
                        port=port,
                        body=valid,
                        headers={"Content-Type": "application/json"},
                    ),
                )
            )
    # -- GET / HEAD: bad paths and queries on every route
    bad_targets = [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/..%2fsecret.txt",
        "/files/%2e%2e%2fsecret.txt",
        "/files/..%5csecret.txt",
        "/files/%252e%252e/secret.txt",
        "/files/graph.json%00",
        "/files/graph.json%00.txt",
        "/files/%00",
        "/files/",
        "/files",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/.annotations.lock",
        "/files/.hidden",
        "/files/a\\b",
        "/files/%ff",
        "/files/%c0%af",
        "/files/%ed%a0%80",
        "/files/" + "a" * 300,
        "/files/" + "a/" * 3000,
        "/files/" + "%2e%2e%2f" * 500 + "secret.txt",
        "/files/graph.json?download=1",
        "/files/graph.json#frag",
        "/" + "x" * 60_000,
        "/" + "y" * 70_000,
        "/..",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/index.html/..",
        "/index.html%00",
        "/viewer.js/../../secret.txt",
        "/api/graph/",
        "/api/graph/../../secret.txt",
        "/api/graph%00",
        "/api/graph#node_threshold=0.5",
        "/api/annotations?x=1",
        "/api/annotations/x",
        "/api/attention?x=1",
        "/api/attention?layer=1&head=2",
        "/api/attention/",
        "/api/attention/../../secret.txt",
        "/api/attention%00",
        "/api/attention#x",
        "/files/attention.json%00",
        "*",
        "http://127.0.0.1/",
        "x",
    ]
    for value in (
        "abc",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "-1",
        "1.5",
        "1e309",
        "0x1",
        "",
        "%00",
        "0.5%00",
        "%EF%BC%91",
        "%D9%A1",
        "0.5+",
        "+0.5",
        "0.5 0.6",
        "True",
        "1_0",
        " 1",
    ):
        for name in ("node_threshold", "edge_threshold"):
            bad_targets.append(f"/api/graph?{name}={value}")
    bad_targets += [
        "/api/graph?node_threshold",
        "/api/graph?node_threshold=0.5&node_threshold=0.6",
        "/api/graph?foo=1",
        "/api/graph?%ff=1",
        "/api/graph?node_threshold=0.5&" + "&".join(f"k{i}=1" for i in range(2000)),
        "/api/graph?" + "node_threshold=" + "9" * 5000,
    ]
    for target in bad_targets:
        add(Case(f"GET {target[:80]!r}", _request("GET", target, port=port)))
    for target in bad_targets[:12]:
        add(Case(f"HEAD {target[:80]!r}", _request("HEAD", target, port=port)))
    add(Case("GET raw NUL in path", _request("GET", b"/files/\x00graph.json", port=port)))
    add(Case("GET raw high bytes in path", _request("GET", b"/files/\xff\xfe", port=port)))
    add(Case("GET raw UTF-8 path", _request("GET", "/files/gräph.json".encode(), port=port)))
    add(
        Case(
            "GET foreign Host",
            _request("GET", "/api/graph", port=port, headers={"Host": "evil.example:80"}),
        )
    )
    add(
        Case(
            "GET DNS rebinding Host",
            _request("GET", "/", port=port, headers={"Host": f"attacker.example:{port}"}),
        )
    )
    # -- broken request lines and headers
    add(Case("request line with 4 words", b"GET / / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    add(Case("bad HTTP version", b"GET / HTTP/x.y\r\nHost: 127.0.0.1\r\n\r\n"))
    add(Case("not HTTP", b"GET / FTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
    add(
        Case(
            "header line too long",
            _request("GET", "/", port=port, headers={"X-Long": "a" * 70_000}),
        )
    )
    add(
        Case(
            "too many headers",
            _request("GET", "/", port=port, headers={f"X-{i}": "1" for i in range(150)}),
        )
    )
    # -- random targets under every route (none can name an existing file or a valid query)
    n_fixed = len(cases)
    while len(cases) < n_fixed + N_RANDOM:
        route = rng.choice(_GET_ROUTES)
        junk = _junk(rng, rng.randrange(1, 60))
        if route == "/api/graph":
            value = junk.replace("&", "").replace("=", "")
            if _is_float(value):  # (numbers are tested above)
                continue
            target = f"/api/graph?{rng.choice(['node_threshold', 'edge_threshold'])}={value}"
        elif route in ("/api/annotations", "/api/attention", "/files/graph.json"):
            target = f"{route}{rng.choice(['?', '/', '%2f', '/..', '?x='])}{junk}"
        else:  # static files: a name that is no static file (their query strings are ignored)
            # (never empty: the standard library reads "//index.html" as "/index.html")
            junk = junk.replace("?", "") or "x"
            target = f"/{junk}/{route.strip('/')}" if rng.random() < 0.5 else f"{route}/{junk}"
        method = rng.choice(["GET", "GET", "HEAD", "POST"])
        if method == "POST":
            body_name, body = rng.choice(bodies)
            path = "/api/annotations" if rng.random() < 0.5 else target
            add(Case(f"random POST {path[:60]!r} {body_name}", _post(port, body, path=path)))
        else:
            add(Case(f"random {method} {target[:60]!r}", _request(method, target, port=port)))
    return cases


def _send(port: int, case: Case, timeout: float) -> int:
    """The response status of a raw request (the test fails on a dropped connection or a hang)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # (the server may answer before reading everything; its answer still counts)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(case.raw)
        if case.half_close:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=case.raw.split(b" ", 1)[0].decode())
        response.begin()
        response.read()
        return response.status


@pytest.fixture
def server(folder: Path) -> Iterator[int]:  # noqa: F811
    (folder / "attention.json").write_text(json.dumps(_ATTENTION))
    srv = make_server(folder, host="127.0.0.1", port=0)
    assert srv.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv.port
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def _valid_post(port: int, patch: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(
            "POST", "/api/annotations", json.dumps(patch), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _snapshot(where: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(where.iterdir()) if p.is_file()}


def test_malformed_requests_get_4xx_and_change_nothing(server: int, folder: Path) -> None:  # noqa: F811
    start = time.monotonic()
    port = server
    status, doc = _valid_post(port, _VALID_PATCH)
    assert status == 200 and doc["revision"] == 1
    before = _snapshot(folder)
    assert "annotations.json" in before and "graph.zip" in before and "attention.json" in before
    cases = _cases(port, random.Random(SEED))
    assert len(cases) >= 250 + N_RANDOM
    bad = []
    for case in cases:
        left = DEADLINE_S - (time.monotonic() - start)
        assert left > 1, f"the barrage ran out of time at {case.name}"
        try:
            status = _send(port, case, timeout=min(5.0, left))
        except (OSError, http.client.HTTPException) as e:  # a hang (timeout) or a dropped request
            bad.append((case.name, f"{type(e).__name__}: {e}"))
            continue
        if not 400 <= status < 500:
            bad.append((case.name, status))
    assert not bad, "\n".join(f"{n[:100]}: {s}" for n, s in bad)
    assert _snapshot(folder) == before  # annotations, graph files: byte-identical, nothing added
    # the server is still up, and valid requests still work
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/graph")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["nodes"]
    conn.request("GET", "/api/attention")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == _ATTENTION
    conn.close()
    status, doc = _valid_post(port, {"labels": {"1_2_3": "still works"}})
    assert status == 200 and doc["revision"] == 2 and doc["labels"]["1_2_3"] == "still works"
    assert time.monotonic() - start < DEADLINE_S


def test_a_corrupted_graph_file_is_a_conflict_not_a_crash(server: int, folder: Path) -> None:  # noqa: F811
    path = folder / "graph.zip"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    try:
        conn.request("GET", "/api/graph?node_threshold=0.5&edge_threshold=0.9")
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 409 and "graph.zip" in body["error"], body
    assert path.read_bytes() == bytes(data)


def test_a_broken_attention_file_is_a_conflict_not_a_crash(server: int, folder: Path) -> None:  # noqa: F811
    path = folder / "attention.json"
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    try:
        for bad in (b'{"records": [{"layer": -1}]}', b"\xff\xfe", b"[" * 100_000):
            path.write_bytes(bad)
            conn.request("GET", "/api/attention")
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 409 and "attention.json" in body["error"], body
            conn.request("GET", "/api/graph")  # the graph is still served, without them
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert resp.status == 200 and doc["metadata"]["viewer"]["attention"] is None
            assert path.read_bytes() == bad
        # a lone surrogate in a node id is no fault of the format: served, escaped
        path.write_text(json.dumps(_ATTENTION).replace("0_294_8", "\\ud800"))
        conn.request("GET", "/api/attention")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["records"][0]["pairs"][0]["query_node"] == "\ud800"
    finally:
        conn.close()
