"""The viewer's layout and navigation in a real browser (Debian's chromium driven by Playwright):
the graph fits the pane at open, zoom / pan / fit / fullscreen, hover link modes, the
node-connections panel, the steering panel (off without a model, a run with one) and the view of
two compared graphs.

The layout is checked on what a researcher sees: node boxes on the screen (inside the pane, none
overlapping, large enough to read) for a 64-token graph of about 500 nodes on a 1600x1000 screen
(a random graph of that shape, ``sae_circuits.toy.synthetic_graph``: the layout depends only on
the nodes' kinds, layers and positions). Numbers shown by the panels are checked against the
served document.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sae_circuits as sc
from sae_circuits.toy import synthetic_graph
from sae_circuits.viewer import write_graph_folder
from sae_circuits.viewer.steering import Steerer

from .conftest import build
from .test_viewer import (  # noqa: F401 (marks)
    Viewer,
    browser_fixture,
    pytestmark,
    serving,
)
from .test_viewer_server import make_graph_folder, tiny_graphs

#: A feature drawn smaller than this (its circle's diameter on the screen, in CSS pixels) cannot
#: be told apart from its neighbours or clicked.
MIN_FEATURE_PX = 6.0


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-position graph pruned to about 500 nodes (the issue's readability case)."""
    graph = synthetic_graph(
        n_features=5000, n_edges=250_000, n_layers=8, n_positions=64, n_logits=8, seed=7
    )
    pruned = graph.prune(0.85, 0.99)
    assert 400 <= pruned.n_nodes <= 650, pruned.n_nodes
    folder = tmp_path_factory.mktemp("big") / "graph"
    write_graph_folder(folder, graph, pruned, slug="big")
    return folder


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_graph_folder(tmp_path_factory.mktemp("small") / "graph")


def _open(browser: Any, folder: Path, size: tuple[int, int], **kwargs: Any) -> Iterator[Viewer]:
    """Serve ``folder`` (``make_server`` keywords) and open the page in a ``size`` window."""
    with serving(browser, folder, viewport=size, **kwargs) as viewer:
        viewer.open()
        yield viewer


@pytest.fixture
def big(browser: Any, big_folder: Path, tmp_path: Path) -> Iterator[Viewer]:
    folder = tmp_path / "graph"
    shutil.copytree(big_folder, folder)
    yield from _open(browser, folder, (1600, 1000))


@pytest.fixture
def small(browser: Any, small_folder: Path, tmp_path: Path) -> Iterator[Viewer]:
    folder = tmp_path / "graph"
    shutil.copytree(small_folder, folder)
    yield from _open(browser, folder, (1400, 900))


def _boxes(viewer: Viewer) -> list[dict[str, Any]]:
    """Every drawn node's shape, as the screen shows it: {id, kind, x, y, w, h}."""
    return viewer.page.evaluate(
        """() => [...document.querySelectorAll('#graph-svg [data-node]')].map(g => {
            const r = g.querySelector('.shape').getBoundingClientRect();
            return {id: g.dataset.node, kind: [...g.classList].find(c =>
                ['feature', 'error', 'token', 'logit'].includes(c)),
                x: r.left, y: r.top, w: r.width, h: r.height};
        })"""
    )


def _pane(viewer: Viewer) -> dict[str, float]:
    return viewer.page.evaluate(
        """() => { const r = document.getElementById('graph-svg').getBoundingClientRect();
                   return {x: r.left, y: r.top, w: r.width, h: r.height}; }"""
    )


def _overlaps(boxes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    ordered = sorted(boxes, key=lambda b: b["x"])
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b["x"] >= a["x"] + a["w"]:
                break
            if b["y"] < a["y"] + a["h"] and a["y"] < b["y"] + b["h"]:
                out.append((a["id"], b["id"]))
    return out


def test_a_64_token_graph_of_500_nodes_fits_one_screen_readably(big: Viewer):
    doc = json.loads((big.folder / "graph.json").read_text())
    boxes = _boxes(big)
    assert {b["id"] for b in boxes} == {n["node_id"] for n in doc["nodes"]}
    pane = _pane(big)
    assert pane["w"] >= 1000 and pane["h"] >= 700  # the graph gets most of the screen
    for b in boxes:  # everything in view at open: the logits on top and every token
        assert pane["x"] - 0.5 <= b["x"] and b["x"] + b["w"] <= pane["x"] + pane["w"] + 0.5, b
        assert pane["y"] - 0.5 <= b["y"] and b["y"] + b["h"] <= pane["y"] + pane["h"] + 0.5, b
    assert _overlaps(boxes) == []
    features = [b for b in boxes if b["kind"] == "feature"]
    assert min(b["w"] for b in features) >= MIN_FEATURE_PX
    assert big.errors == []


def test_zoom_pan_and_fit(big: Viewer):
    page = big.page
    svg = page.locator("#graph-svg")
    fitted = float(svg.get_attribute("data-scale") or 0)
    assert fitted > 0
    page.click("#zoom-in")
    assert float(svg.get_attribute("data-scale") or 0) == pytest.approx(fitted * 1.25, rel=1e-3)
    page.keyboard.press("-")
    assert float(svg.get_attribute("data-scale") or 0) == pytest.approx(fitted, rel=1e-3)
    pane = _pane(big)
    cx, cy = pane["x"] + pane["w"] / 2, pane["y"] + pane["h"] / 2
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -400)  # zoom in around the cursor
    page.wait_for_function(
        "k => Number(document.getElementById('graph-svg').dataset.scale) > k", arg=fitted * 1.5
    )
    before = {b["id"]: b for b in _boxes(big)}
    page.mouse.move(pane["x"] + 5, pane["y"] + pane["h"] - 5)  # a corner: background
    page.mouse.down()
    page.mouse.move(pane["x"] + 125, pane["y"] + pane["h"] - 45, steps=4)
    page.mouse.up()
    after = {b["id"]: b for b in _boxes(big)}
    moved = [(after[k]["x"] - before[k]["x"], after[k]["y"] - before[k]["y"]) for k in before]
    assert all(
        dx == pytest.approx(120, abs=1) and dy == pytest.approx(-40, abs=1) for dx, dy in moved
    )
    page.click("#zoom-fit")
    assert float(svg.get_attribute("data-scale") or 0) == pytest.approx(fitted, rel=1e-3)
    page.click("#fullscreen")  # the browser's fullscreen, or the pane over the window
    page.wait_for_function(
        "() => document.fullscreenElement === document.getElementById('graph-pane') || "
        "document.getElementById('graph-pane').classList.contains('maximized')"
    )
    page.wait_for_function(
        "k => Number(document.getElementById('graph-svg').dataset.scale) > k", arg=fitted * 1.01
    )  # refitted to the larger pane
    assert big.errors == []


def test_hover_highlights_inputs_outputs_or_both(small: Viewer):
    doc = json.loads((small.folder / "graph.json").read_text())
    feats = [n for n in doc["nodes"] if n["kind"] == "feature"]
    inputs: dict[str, set[str]] = {}
    outputs: dict[str, set[str]] = {}
    for link in doc["links"]:
        inputs.setdefault(link["target"], set()).add(link["source"])
        outputs.setdefault(link["source"], set()).add(link["target"])
    node = max(
        feats, key=lambda n: len(inputs.get(n["node_id"], ())) * len(outputs.get(n["node_id"], ()))
    )
    nid = node["node_id"]
    assert inputs.get(nid) and outputs.get(nid)
    page = small.page

    def highlighted() -> set[str]:
        small.node(nid).hover()
        ids = page.locator("#graph-svg [data-node].hl").evaluate_all(
            "els => els.map(e => e.dataset.node)"
        )
        page.mouse.move(1, 1)
        return set(ids) - {nid}

    assert highlighted() == inputs[nid] | outputs[nid]
    page.select_option("#hover-mode", "inputs")
    assert highlighted() == inputs[nid]
    page.select_option("#hover-mode", "outputs")
    assert highlighted() == outputs[nid]
    page.select_option("#hover-mode", "off")
    assert highlighted() == set()


def test_connections_panel_splits_by_position_and_kind(small: Viewer):
    doc = json.loads((small.folder / "graph.json").read_text())
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    logit = next(n for n in doc["nodes"] if n["kind"] == "logit")
    small.node(logit["node_id"]).click()
    panel = small.page.locator("#connections")
    panel.locator(".conn-side").first.wait_for()
    want: dict[tuple[str, str], int] = {}
    for link in doc["links"]:
        if link["target"] != logit["node_id"]:
            continue
        src = by_id[link["source"]]
        where = "same position" if src["position"] == logit["position"] else "earlier positions"
        want[(where, src["kind"])] = want.get((where, src["kind"]), 0) + 1
    got = panel.locator(".conn-side").first.evaluate(
        """side => [...side.querySelectorAll('.conn-group')].flatMap(g =>
            [...g.querySelectorAll('.conn-kind')].map(k =>
                [g.dataset.where, k.dataset.kind, Number(k.dataset.count)]))"""
    )
    assert {(w, k): c for w, k, c in got} == want
    assert len(want) >= 2  # the logit reads more than one kind of source


def test_steering_controls_are_off_without_a_model_and_say_why(small: Viewer):
    page = small.page
    page.wait_for_function("() => document.getElementById('steer-status').textContent.length > 0")
    assert "--model" in page.text_content("#steer-status")
    assert page.is_disabled("#steer-run")


@pytest.fixture
def steering(browser: Any, small_folder: Path, tmp_path: Path) -> Iterator[tuple[Viewer, Any]]:
    folder = tmp_path / "graph"
    shutil.copytree(small_folder, folder)
    model, tcs = build("llama", "skip")
    ts = sc.load_transcoders(tcs)
    graph, _ = tiny_graphs()
    steerer = Steerer(model, ts, prompt=graph.metadata["tokens"])
    try:
        for viewer in _open(browser, folder, (1400, 900), steerer=steerer):
            yield viewer, steerer
    finally:
        steerer.close()


def test_steering_from_the_page_shows_the_librarys_numbers(steering: tuple[Viewer, Any]):
    viewer, steerer = steering
    page = viewer.page
    fid = viewer.features(1)[0]
    viewer.node(fid).click()
    page.click("#steer-add-selected")
    page.locator(f'#steer-list [data-node="{fid}"]').wait_for()
    page.fill("#steer-tokens", "3")
    page.click("#steer-run")
    page.locator("#steer-result table").wait_for()
    want = steerer.run(
        {"features": [{"node_id": fid, "scale": 0.0}], "max_new_tokens": 3, "top_k": 10}
    )
    shown = page.locator("#steer-result").inner_text()
    for row in want["top_logits"][:3]:
        assert row["after_token"] in shown and f"{row['after_probability']:.3f}" in shown
    assert viewer.errors == []


def test_two_graphs_compared(browser: Any, small_folder: Path, tmp_path: Path):
    model, tcs = build("llama", "skip")
    other = sc.attribute(model, "t5 t9 t3 t7 t2 t8 t1 t1 t4 t2", sc.load_transcoders(tcs))
    b = tmp_path / "b"
    write_graph_folder(b, other, other.prune(0.8, 0.98), slug="b")
    a = tmp_path / "a"
    shutil.copytree(small_folder, a)
    for viewer in _open(browser, a, (1400, 900), compare=b):
        page = viewer.page
        info = page.locator("#compare-info")
        info.wait_for()
        text = info.inner_text()
        assert "only in A" in text and "only in B" in text
        classes = page.locator("#graph-svg [data-node]").evaluate_all(
            "els => els.map(e => [...e.classList].find(c => c.startsWith('cmp-')))"
        )
        assert {"cmp-a", "cmp-b", "cmp-both"} <= set(classes)
        assert viewer.errors == []


def test_a_graph_of_many_links_draws_the_strongest_and_a_hovered_nodes_own(
    browser: Any, tmp_path: Path
):
    graph = synthetic_graph(n_features=900, n_edges=40_000, n_positions=16, seed=2)
    pruned = graph.prune(1.0, 1.0)  # everything: more links than are drawn
    folder = tmp_path / "many"
    write_graph_folder(folder, None, pruned, slug="many")
    doc = json.loads((folder / "graph.json").read_text())
    n_drawn = 12000  # MAX_DRAWN_LINKS in graph_view.js
    assert len(doc["links"]) > n_drawn
    for viewer in _open(browser, folder, (1600, 1000)):
        page = viewer.page
        drawn = page.locator("#graph-svg .edges:not(.hover-edges) path").evaluate_all(
            "els => els.map(e => e.dataset.source + '>' + e.dataset.target)"
        )
        strongest = sorted(doc["links"], key=lambda x: -abs(x["weight"]))[:n_drawn]
        assert len(drawn) == n_drawn
        weakest_drawn = abs(strongest[-1]["weight"])
        assert {
            f"{x['source']}>{x['target']}" for x in strongest if abs(x["weight"]) > weakest_drawn
        } <= set(drawn)
        assert f"{n_drawn} strongest edges drawn" in page.text_content("#stats")
        # a node with links that are not drawn: hovering it draws all of them, leaving clears
        shown = set(drawn)
        counts: dict[str, int] = {}
        for x in doc["links"]:
            if f"{x['source']}>{x['target']}" not in shown:
                counts[x["target"]] = counts.get(x["target"], 0) + 1
        nid = max(counts, key=lambda k: counts[k])
        viewer.node(nid).hover()
        extra = page.locator("#graph-svg .hover-edges path.hl").count()
        assert extra == counts[nid] + sum(
            1
            for x in doc["links"]
            if x["source"] == nid and f"{x['source']}>{x['target']}" not in shown
        )
        page.mouse.move(1, 1)
        assert page.locator("#graph-svg .hover-edges path").count() == 0
        assert viewer.errors == []
