"""The viewer page in a real headless browser (Debian's chromium driven by Playwright).

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright
install``: the tests use the system chromium, offline). Without them the tests are skipped with
the reason. Set ``SAE_CIRCUITS_SCREENSHOT=1`` to also write the screenshot to
``docs/images/viewer.png`` (or ``SAE_CIRCUITS_SCREENSHOT=path.png`` for another file),
``SAE_CIRCUITS_SCREENSHOT_FOLDER=OUT`` to take it of another graph folder (e.g. one written by
``sae-circuits attribute ... -o OUT``), and ``SAE_CIRCUITS_CHROMIUM`` to use another chromium.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sae_circuits.graph._export import to_neuronpedia
from sae_circuits.viewer import GraphSource, build_document, make_server

from .test_viewer_server import make_graph_folder, tiny_graphs

CHROMIUM = (
    os.environ.get("SAE_CIRCUITS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None,
        reason="playwright is not installed: pip install playwright (the tests use the system "
        "chromium; do not run `playwright install`)",
    ),
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"chromium not found at {CHROMIUM}: apt-get install -y chromium "
        "(or set SAE_CIRCUITS_CHROMIUM)",
    ),
]


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """One headless chromium for a module (other modules import ``browser_fixture``)."""
    assert sync_playwright is not None
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_graph_folder(tmp_path_factory.mktemp("viewer") / "graph")


@pytest.fixture
def screenshot_viewer(viewer: Viewer) -> Viewer:
    """The viewer, on ``SAE_CIRCUITS_SCREENSHOT_FOLDER`` (a graph folder) when that is set."""
    other = os.environ.get("SAE_CIRCUITS_SCREENSHOT_FOLDER")
    if other:
        shutil.rmtree(viewer.folder)
        shutil.copytree(other, viewer.folder)
        (viewer.folder / "annotations.json").unlink(missing_ok=True)
    return viewer


@dataclass
class Viewer:
    page: Page
    url: str
    folder: Path
    errors: list[str]

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready]")

    def reload(self) -> None:
        self.page.reload()
        self.page.wait_for_selector("body[data-ready]")

    def drawn_ids(self) -> list[str]:
        return self.page.locator("#graph-svg [data-node]").evaluate_all(
            "els => els.map(e => e.dataset.node)"
        )

    def node(self, node_id: str) -> Any:
        return self.page.locator(f'#graph-svg [data-node="{node_id}"]')

    def wait_revision(self, revision: int) -> None:
        self.page.wait_for_selector(f'body[data-revision="{revision}"]')

    def annotations(self) -> dict[str, Any]:
        return json.loads((self.folder / "annotations.json").read_text())

    def features(self, n: int) -> list[str]:
        """The ``n`` most influential feature ids of the served document."""
        doc = json.loads((self.folder / "graph.json").read_text())
        feats = sorted(
            (x for x in doc["nodes"] if x["kind"] == "feature"),
            key=lambda x: -(x["node_influence"] or 0),
        )
        assert len(feats) >= n
        return [x["node_id"] for x in feats[:n]]


@contextlib.contextmanager
def serving(
    browser: Any, folder: Path, *, viewport: tuple[int, int] = (1400, 900), **server_kwargs: Any
) -> Iterator[Viewer]:
    """A server of ``folder`` (``make_server`` keywords) and a fresh browser page for it."""
    server = make_server(folder, port=0, **server_kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    try:
        yield Viewer(page, server.url, folder, errors)
    finally:
        context.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def viewer(browser: Any, template: Path, tmp_path: Path) -> Iterator[Viewer]:
    folder = tmp_path / "graph"
    shutil.copytree(template, folder)
    with serving(browser, folder) as v:
        yield v


def test_page_loads_and_draws_every_kept_node(viewer: Viewer):
    viewer.open()
    drawn = viewer.drawn_ids()
    doc = json.loads((viewer.folder / "graph.json").read_text())
    assert len(drawn) == len(set(drawn)) == len(doc["nodes"])
    assert set(drawn) == {n["node_id"] for n in doc["nodes"]}
    n_edges = viewer.page.locator("#graph-svg path.edge").count()
    assert n_edges == len(doc["links"])
    widths = viewer.page.locator("#graph-svg path.edge").evaluate_all(
        "els => els.map(e => Number(e.getAttribute('stroke-width')))"
    )
    assert max(widths) > 3 * min(widths)  # width follows |weight|
    assert viewer.page.locator("#graph-svg path.edge.neg").count() > 0
    assert f"{len(doc['nodes'])} nodes" in viewer.page.inner_text("#stats")
    # tokens along the bottom, logits on top
    token_y = viewer.page.locator("#graph-svg .node.token").first.bounding_box()["y"]
    logit_y = viewer.page.locator("#graph-svg .node.logit").first.bounding_box()["y"]
    assert logit_y < token_y
    assert viewer.errors == []


def test_details_panel_opens_on_click(viewer: Viewer):
    viewer.open()
    page = viewer.page
    assert page.locator("#details").is_hidden()
    node_id = viewer.features(1)[0]
    doc = json.loads((viewer.folder / "graph.json").read_text())
    node = next(n for n in doc["nodes"] if n["node_id"] == node_id)
    viewer.node(node_id).click()
    assert page.locator("#details").is_visible()
    title = f"L{node['layer_index']} #{node['feature_index']} @{node['position']}"
    assert page.inner_text("#details-title") == title
    assert page.inner_text('#details-fields dd[data-field="feature"]') == str(node["feature_index"])
    assert page.inner_text('#details-fields dd[data-field="node id"]') == node_id
    shown = float(page.inner_text('#details-fields dd[data-field="activation"]'))
    # fmt() shows 3 decimals: the tolerance is the display's rounding, not float arithmetic
    assert shown == pytest.approx(node["activation"], abs=1e-3)
    assert page.locator("#outgoing li button").count() >= 1
    assert "selected" in (viewer.node(node_id).get_attribute("class") or "")
    # following an edge selects its other end
    target = page.locator("#outgoing li button").first.get_attribute("data-goto")
    page.locator("#outgoing li button").first.click()
    assert page.inner_text('#details-fields dd[data-field="node id"]') == target
    assert viewer.errors == []


def test_label_edit_survives_reload(viewer: Viewer):
    viewer.open()
    node_id = viewer.features(1)[0]
    viewer.node(node_id).click()
    viewer.page.fill("#label-input", "Texas (state)")
    viewer.page.press("#label-input", "Enter")
    viewer.wait_revision(1)
    assert viewer.annotations()["labels"] == {node_id: "Texas (state)"}
    viewer.reload()
    assert viewer.node(node_id).locator(".node-label").text_content() == "Texas (state)"
    viewer.node(node_id).click()
    assert viewer.page.input_value("#label-input") == "Texas (state)"
    assert viewer.errors == []


def test_supernode_survives_reload(viewer: Viewer):
    viewer.open()
    members = viewer.features(3)
    for node_id in members:
        viewer.node(node_id).click(modifiers=["Shift"])
    assert "3 selected" in viewer.page.inner_text("#selection-info")
    viewer.page.fill("#supernode-name", "say a capital")
    viewer.page.click("#supernode-create")
    viewer.wait_revision(1)
    saved = list(viewer.annotations()["supernodes"].values())
    assert saved == [{"label": "say a capital", "members": members}]
    viewer.reload()
    assert viewer.page.input_value("#supernode-list li input.sn-label") == "say a capital"
    assert viewer.page.locator("#subgraph-svg [data-supernode]").count() == 1
    for node_id in members:
        assert viewer.node(node_id).locator(".ring").count() == 1
    # rename, then ungroup
    viewer.page.fill("#supernode-list li input.sn-label", "capital")
    viewer.page.click("#supernode-list li .sn-rename")
    viewer.wait_revision(2)
    assert [s["label"] for s in viewer.annotations()["supernodes"].values()] == ["capital"]
    viewer.page.click("#supernode-list li .sn-delete")
    viewer.wait_revision(3)
    assert viewer.annotations()["supernodes"] == {}
    assert viewer.errors == []


def test_pins_and_thresholds(viewer: Viewer):
    viewer.open()
    node_id = viewer.features(1)[0]
    viewer.node(node_id).click()
    viewer.page.click("#pin-toggle")
    viewer.wait_revision(1)
    assert viewer.annotations()["pinned"] == [node_id]
    assert viewer.page.locator(f'#subgraph-svg [data-node="{node_id}"]').count() == 1
    expected = GraphSource(viewer.folder).document(node_threshold=0.5, edge_threshold=0.9)
    viewer.page.fill("#node-threshold", "0.5")
    viewer.page.fill("#edge-threshold", "0.9")
    viewer.page.click("#threshold-apply")
    viewer.page.wait_for_function(
        "n => document.querySelectorAll('#graph-svg [data-node]').length === n",
        arg=len(expected["nodes"]),
    )
    assert set(viewer.drawn_ids()) == {n["node_id"] for n in expected["nodes"]}
    assert viewer.errors == []


def test_neuronpedia_link_and_plain_neuronpedia_json(viewer: Viewer):
    _, pruned = tiny_graphs()
    n_layers = pruned.metadata["transcoders"]["n_layers"]
    meta = {**pruned.metadata, "transcoders": {**pruned.metadata["transcoders"]}}
    meta["transcoders"]["neuronpedia_ids"] = [f"m/{i}-tc-16k" for i in range(n_layers)]
    with_ids = dataclasses.replace(pruned, metadata=meta)
    (viewer.folder / "graph.json").write_text(json.dumps(build_document(with_ids, slug="np")))
    viewer.open()
    node_id = viewer.features(1)[0]
    viewer.node(node_id).click()
    layer, feature, _ = node_id.split("_")
    link = viewer.page.locator("#np-link")
    assert link.is_visible()
    assert link.get_attribute("href") == f"https://www.neuronpedia.org/m/{layer}-tc-16k/{feature}"
    # a plain Neuronpedia document, alone in its folder: drawn, thresholds fixed
    for name in ("graph.zip", "pruned.zip"):
        (viewer.folder / name).unlink()
    plain = to_neuronpedia(pruned, slug="plain", scan="tiny")
    (viewer.folder / "graph.json").write_text(json.dumps(plain))
    viewer.reload()
    assert set(viewer.drawn_ids()) == {n["node_id"] for n in plain["nodes"]}
    assert viewer.page.locator("#threshold-apply").is_disabled()
    viewer.node(node_id).click()
    assert viewer.page.inner_text("#details-title").startswith(f"L{layer} #{feature} @")
    assert viewer.page.locator("#np-link").is_hidden()
    assert viewer.errors == []


def test_screenshot(screenshot_viewer: Viewer, tmp_path: Path):
    viewer = screenshot_viewer
    feats = viewer.features(6)
    patch = {
        "labels": {feats[0]: "top feature", feats[1]: "second"},
        "supernodes": {"sn-demo": {"label": "strongest group", "members": feats[2:5]}},
        "pinned": {"add": [feats[0], feats[5]]},
    }
    from sae_circuits.viewer import AnnotationStore

    AnnotationStore(viewer.folder).update(patch)
    viewer.page.set_viewport_size({"width": 1600, "height": 900})
    viewer.open()
    viewer.node(feats[0]).click()
    viewer.page.mouse.move(0, 0)
    path = tmp_path / "viewer.png"
    viewer.page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    target = os.environ.get("SAE_CIRCUITS_SCREENSHOT")
    if target:
        dest = Path(target) if target.endswith(".png") else REPO / "docs" / "images" / "viewer.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    assert viewer.errors == []


def test_custom_targets_are_drawn_with_the_logits_and_explained(viewer: Viewer):
    import torch

    import sae_circuits as sc
    from sae_circuits.viewer import write_graph_folder

    from .conftest import PROMPT, build

    model, tcs = build("gpt2", "relu")
    ts = sc.load_transcoders(tcs)
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    graph = sc.attribute(
        model,
        PROMPT,
        ts,
        targets=[5, sc.Target.logit_diff(5, 7, label="t5 vs t7"), sc.Target("my direction", d)],
    )
    shutil.rmtree(viewer.folder)
    write_graph_folder(viewer.folder, graph, graph.prune(), slug="targets")
    viewer.open()
    doc = json.loads((viewer.folder / "graph.json").read_text())
    targets = [n for n in doc["nodes"] if n.get("target_kind") == "target"]
    assert [n["token"] for n in targets] == ["t5 vs t7", "my direction"]
    token_y = viewer.page.locator("#graph-svg .node.token").first.bounding_box()["y"]
    for node in targets:
        drawn = viewer.node(node["node_id"])
        assert drawn.bounding_box()["y"] < token_y  # on top, with the logits
        text = drawn.text_content() or ""
        assert "target" in text and node["token"] in text
    viewer.node(targets[1]["node_id"]).click()
    page = viewer.page
    assert page.inner_text('#details-fields dd[data-field="target"]') == "my direction"
    shown = float(page.inner_text('#details-fields dd[data-field="value (clean run)"]'))
    assert shown == pytest.approx(float(graph.targets["value"][2]), abs=1e-3)
    assert page.locator('#details-fields dd[data-field="probability"]').count() == 0
    assert viewer.errors == []


def _percent(share: float) -> str:
    """The page's percentage of a share (halves rounded away from zero)."""
    p = share * 100
    r = int(math.copysign(math.floor(abs(p) + 0.5), p))
    if r == 0 and p != 0:
        return "-<1%" if p < 0 else "<1%"
    return f"{r}%"


def _heads_line(heads: list[dict[str, Any]]) -> str:
    """The page's line of an edge's heads (parts under half a percent left out, the rest of the
    edge as ``other``)."""
    shown = [h for i, h in enumerate(heads) if i == 0 or abs(h["share"]) >= 0.005]
    parts = [f"{_head_name(h)} {_percent(h['share'])}" for h in shown]
    rest = 1 - sum(h["share"] for h in shown)
    if abs(rest) >= 0.005:
        parts.append(f"other {_percent(rest)}")
    return "via " + ", ".join(parts)


def _head_name(part: dict[str, Any]) -> str:
    return "direct" if part["layer"] is None else f"L{part['layer']}H{part['head']}"


def _listed(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The incoming edges the details panel lists by node: the 8 largest |weight|, in the
    document's order on ties (as the page's stable sort)."""
    incoming: dict[str, list[dict[str, Any]]] = {}
    for link in doc["links"]:
        incoming.setdefault(link["target"], []).append(link)
    return {t: sorted(ls, key=lambda x: -abs(x["weight"]))[:8] for t, ls in incoming.items()}


def test_details_panel_shows_the_heads_of_an_edge(viewer: Viewer):
    shutil.rmtree(viewer.folder)
    make_graph_folder(viewer.folder, heads=True)
    viewer.open()
    page = viewer.page
    doc = json.loads((viewer.folder / "graph.json").read_text())
    assert "heads of" in page.inner_text("#stats")
    # a feature whose strongest incoming edge is split over several parts
    incoming = _listed(doc)
    kinds = {n["node_id"]: n["kind"] for n in doc["nodes"]}
    node_id = next(
        t for t, top in incoming.items() if kinds[t] == "feature" and len(top[0]["heads"]) >= 2
    )
    link = incoming[node_id][0]
    viewer.node(node_id).click()
    first = page.locator("#incoming li").first
    assert first.locator("button").get_attribute("data-goto") == link["source"]
    # e.g. "via L0H3 88%, L0H2 10%, L0H1 2%": the largest part first, shares of the edge
    assert first.locator(".heads").inner_text() == _heads_line(link["heads"])
    assert page.locator("#incoming li .heads").count() == len(incoming[node_id])
    # re-pruned looser: the edges the written pruned graph did not have show no heads
    page.fill("#node-threshold", "0.95")
    page.fill("#edge-threshold", "0.99")  # the inputs' step is 0.01
    page.click("#threshold-apply")
    looser = GraphSource(viewer.folder).document(node_threshold=0.95, edge_threshold=0.99)
    page.wait_for_function(
        "n => document.querySelectorAll('#graph-svg [data-node]').length === n",
        arg=len(looser["nodes"]),
    )
    # a node whose listed incoming edges have heads and have none
    listed = _listed(looser)
    node_id = next(
        t
        for t, top in listed.items()
        if any("heads" in x for x in top) and any("heads" not in x for x in top)
    )
    top = listed[node_id]
    viewer.node(node_id).click()
    items = page.locator("#incoming li")
    assert items.count() == len(top)
    for i, x in enumerate(top):
        assert items.nth(i).locator("button").get_attribute("data-goto") == x["source"]
        assert items.nth(i).locator(".heads").count() == ("heads" in x)
    assert viewer.errors == []


def _shown_heads(link: dict[str, Any]) -> list[dict[str, Any]]:
    """The head parts an edge's head line names (the first, then those of half a percent)."""
    return [h for i, h in enumerate(link["heads"]) if i == 0 or abs(h["share"]) >= 0.005]


def test_a_head_of_an_edge_opens_its_top_query_key_pairs(viewer: Viewer):
    shutil.rmtree(viewer.folder)
    make_graph_folder(viewer.folder, heads=True, attention=True)
    viewer.open()
    page = viewer.page
    doc = json.loads((viewer.folder / "graph.json").read_text())
    records = json.loads((viewer.folder / "attention.json").read_text())["records"]
    by_where = {(r["layer"], r["head"], r["query"], r["key"]): r for r in records}
    position = {n["node_id"]: n["position"] for n in doc["nodes"]}
    assert "QK of 3 heads" in page.inner_text("#stats")

    def where(link: dict[str, Any], h: dict[str, Any]) -> tuple[int, ...]:
        return (h["layer"], h["head"], position[link["target"]], position[link["source"]])

    # a listed incoming edge whose head line names a head with a record (query: the edge's
    # target position, key: its source's)
    node_id, index, link, part = next(
        (t, i, x, h)
        for t, top in _listed(doc).items()
        for i, x in enumerate(top)
        for h in _shown_heads(x)
        if h["layer"] is not None and where(x, h) in by_where
    )
    record = by_where[where(link, part)]
    viewer.node(node_id).click()
    line = page.locator("#incoming li").nth(index).locator(".heads")
    assert line.inner_text() == _heads_line(link["heads"])  # the same text as without records
    # only the heads with a record are buttons
    with_record = [
        h for h in _shown_heads(link) if h["layer"] is not None and where(link, h) in by_where
    ]
    assert line.locator("button.head-link").count() == len(with_record)
    assert page.locator("#qk-panel").is_hidden()
    key = "/".join(str(v) for v in where(link, part))
    line.locator(f'button.head-link[data-qk="{key}"]').click()
    panel = page.locator("#qk-panel")
    assert panel.is_visible()
    assert page.inner_text("#qk-title").startswith(f"L{part['layer']}H{part['head']}: query @")
    for name in ("score", "pattern"):
        shown = float(page.inner_text(f'#qk-fields dd[data-field="{name}"]'))
        assert shown == pytest.approx(record[name], abs=1e-3)
    # the top pairs, in the record's order, contributions as recorded (to the display's
    # rounding), ends described and, when in the graph, buttons that select the node
    items = page.locator("#qk-pairs li")
    assert items.count() == len(record["pairs"]) > 0
    in_doc = set(position)
    for i, pair in enumerate(record["pairs"]):
        item = items.nth(i)
        shown = float(item.locator(".w").inner_text())
        assert shown == pytest.approx(pair["contribution"], abs=1e-3, rel=1e-2)
        ends = [pair["query_node"], pair["key_node"]]
        assert item.locator("button[data-goto]").evaluate_all(
            "els => els.map(e => e.dataset.goto)"
        ) == [e for e in ends if e in in_doc]
        for end in ends:
            if end == "bias":
                assert item.locator('.bias[data-node="bias"]').count() >= 1
                assert "bias" in item.inner_text()
            elif end not in in_doc:
                assert item.locator(f'.absent[data-node="{end}"]').count() == 1
    # following a pair's node selects it; the pairs stay until closed
    first_end = next(
        e for p in record["pairs"] for e in (p["query_node"], p["key_node"]) if e in in_doc
    )
    page.locator(f'#qk-pairs button[data-goto="{first_end}"]').first.click()
    assert page.inner_text('#details-fields dd[data-field="node id"]') == first_end
    assert panel.is_visible()
    page.click("#qk-close")
    assert panel.is_hidden()
    assert viewer.errors == []
