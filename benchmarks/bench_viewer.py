"""The viewer at scale: a 50k-node, 10M-edge graph, opened and re-pruned.

Builds a random graph shaped like an attribution graph (``sae_circuits.toy.synthetic_graph``:
layered, causal in positions, heavy-tailed weights; default 50,000 nodes, 10,000,000 edges, 64
positions), writes its folder as ``sae-circuits attribute -o`` does (the full graph plus the
document pruned at the default thresholds, prepared once, when the folder is written), serves it
on 127.0.0.1 and measures:

* ``write``: writing the folder (pruning at the default thresholds included);
* ``open (API)``: the first ``GET /api/graph`` of a fresh server (the prepared document read from
  disk) and ``open (page)``: a headless Chromium loading the page until it has drawn the graph
  (``body[data-ready]``), when Playwright and Debian's chromium are installed;
* ``re-prune``: ``GET /api/graph?node_threshold=..&edge_threshold=..`` at new thresholds on a
  fresh server (the full graph read from ``graph.zip``, pruned, the document built), then at a
  second pair of thresholds (the full graph is kept in memory by then).

Targets (issue 17): the page opens in under 2 s, a re-prune answers in under 5 s.

Run: ``.venv/bin/python benchmarks/bench_viewer.py [--nodes 50000 --edges 10000000]
[--out out/bench_viewer]``; it prints a table and writes ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sae_circuits.toy import synthetic_graph
from sae_circuits.viewer import make_server, write_graph_folder

CHROMIUM = os.environ.get("SAE_CIRCUITS_CHROMIUM") or shutil.which("chromium")


def _get(port: int, path: str) -> tuple[float, int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}"})
    resp = conn.getresponse()
    body = resp.read()
    seconds = time.perf_counter() - start
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
    return seconds, len(body), len(json.loads(body)["nodes"])


class _Server:
    def __init__(self, folder: Path) -> None:
        self.server = make_server(folder, port=0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _page_seconds(url: str, repeat: int) -> list[float] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not CHROMIUM:
        return None
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            for _ in range(repeat):
                context = browser.new_context(viewport={"width": 1600, "height": 1000})
                page = context.new_page()
                start = time.perf_counter()
                page.goto(url)
                page.wait_for_selector("body[data-ready]", timeout=60_000)
                times.append(time.perf_counter() - start)
                context.close()
        finally:
            browser.close()
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=50_000)
    ap.add_argument("--edges", type=int, default=10_000_000)
    ap.add_argument("--positions", type=int, default=64)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="page loads to time (median)")
    ap.add_argument("--out", default="out/bench_viewer")
    args = ap.parse_args(argv)
    out = Path(args.out)
    folder = out / "graph"
    shutil.rmtree(folder, ignore_errors=True)

    n_other = (args.layers + 1) * args.positions + 10
    start = time.perf_counter()
    graph = synthetic_graph(
        n_features=args.nodes - n_other,
        n_edges=args.edges,
        n_layers=args.layers,
        n_positions=args.positions,
        n_logits=10,
    )
    made = time.perf_counter() - start
    print(f"graph: {graph.n_nodes:,} nodes, {graph.adjacency.nnz:,} edges ({made:.1f} s to make)")

    start = time.perf_counter()
    pruned = graph.prune(0.8, 0.98)
    write_graph_folder(folder, graph, pruned, slug="bench")
    write = time.perf_counter() - start
    del graph
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}

    results: dict[str, Any] = {
        "nodes": args.nodes,
        "edges": args.edges,
        "pruned_nodes": pruned.n_nodes,
        "pruned_edges": int(pruned.adjacency.nnz),
        "files_bytes": sizes,
        "write_s": write,
    }
    with _Server(folder) as s:
        results["open_api_s"], results["document_bytes"], _ = _get(s.server.port, "/api/graph")
        page = _page_seconds(s.server.url, args.repeat)
        results["open_page_s"] = sorted(page)[len(page) // 2] if page else None
        results["open_page_all_s"] = page
    with _Server(folder) as s:  # a fresh server: nothing of the full graph in memory yet
        port = s.server.port
        results["reprune_cold_s"], _, n1 = _get(
            port, "/api/graph?node_threshold=0.7&edge_threshold=0.95"
        )
        results["reprune_warm_s"], _, n2 = _get(
            port, "/api/graph?node_threshold=0.9&edge_threshold=0.99"
        )
        results["reprune_nodes"] = [n1, n2]
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["cpus"] = os.cpu_count()

    page_s = results["open_page_s"]
    rows = [
        ("write the folder (prune + document + graph.zip)", f"{write:.2f} s"),
        ("open: GET /api/graph (prepared document)", f"{results['open_api_s']:.3f} s"),
        (
            "open: page drawn in Chromium (median)",
            f"{page_s:.2f} s" if page_s is not None else "n/a (no playwright/chromium)",
        ),
        (
            "re-prune at 0.7 / 0.95 (fresh server, graph.zip read)",
            f"{results['reprune_cold_s']:.2f} s",
        ),
        ("re-prune at 0.9 / 0.99 (graph in memory)", f"{results['reprune_warm_s']:.2f} s"),
    ]
    print(
        f"pruned at 0.8 / 0.98: {pruned.n_nodes} nodes, {pruned.adjacency.nnz} edges; files "
        + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items()))
    )
    for name, value in rows:
        print(f"  {name:58s} {value}")
    print(f"  peak RSS {results['peak_rss_mb']:.0f} MB")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    ok = (page_s is None or page_s < 2.0) and results["reprune_cold_s"] < 5.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
