"""Feature dashboards in the viewer page (Chromium via Playwright, as tests/test_viewer.py): the
feature panel shows the file's contexts (tokens shaded by activation), histogram, logit effects
and density; labels come from the files' index; bad or missing files give a message.

The feature files are written for the tiny graph's features from a seeded generator (their
content is what the page must show, whatever it is).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sae_circuits.features import FORMAT, write_feature_files, write_index

from .test_viewer import (  # noqa: F401 (fixtures "browser", "template"; marks)
    Viewer,
    browser_fixture,
    pytestmark,
    serving,
    template,
)


def feature_nodes(folder: Path) -> list[dict[str, Any]]:
    doc = json.loads((folder / "graph.json").read_text())
    feats = [n for n in doc["nodes"] if n["kind"] == "feature"]
    return sorted(feats, key=lambda n: -(n["node_influence"] or 0))


def record(layer: int, feature: int, rng: random.Random) -> dict[str, Any]:
    def example() -> dict[str, Any]:
        n = rng.randint(3, 8)
        acts = [round(max(0.0, rng.uniform(-1, 3)), 4) for _ in range(n)]
        acts[rng.randrange(n)] = round(rng.uniform(3, 4), 4)
        return {
            "tokens": [
                rng.choice(["the", " cap", "ital", " of", " texas", " is", "<b>"]) for _ in range(n)
            ],
            "tokens_acts_list": acts,
            "train_token_ind": acts.index(max(acts)),
            "is_repeated_datapoint": False,
            "window": rng.randrange(100),
            "max_act": max(acts),
        }

    counts = [rng.randrange(50) for _ in range(16)]
    return {
        "format": FORMAT,
        "layer": layer,
        "feature": feature,
        "index": feature,
        "label": f"file label {layer}/{feature}",
        "n_tokens": 5000,
        "density": sum(counts) / 5000,
        "act_min": 0.0,
        "act_max": 4.0,
        "mean_act": 1.5,
        "histogram": {"bin_edges": [i / 4 for i in range(17)], "counts": counts},
        "top_logits": [f"up{i}" for i in range(5)],
        "top_logit_values": [round(2 - i / 5, 3) for i in range(5)],
        "bottom_logits": [f"down{i}" for i in range(5)],
        "bottom_logit_values": [round(-2 + i / 5, 3) for i in range(5)],
        "examples_quantiles": [
            {"quantile_name": "Top activations", "examples": [example() for _ in range(4)]},
            {"quantile_name": "Quantile 1/4 of a random sample", "examples": [example()]},
        ],
    }


@pytest.fixture
def served(browser: Any, template: Path, tmp_path: Path, request) -> Iterator[Viewer]:  # noqa: F811 (template)
    folder = tmp_path / "graph"
    shutil.copytree(template, folder)
    where = getattr(request, "param", "inside")
    features = folder / "features" if where == "inside" else tmp_path / "elsewhere"
    if where != "none":
        features.mkdir()
        rng = random.Random(0)
        records = [record(n["layer_index"], n["feature_index"], rng) for n in feature_nodes(folder)]
        write_feature_files(features, records)
        write_index(
            features, {"features": {f"{r['layer']}_{r['feature']}": r["label"] for r in records}}
        )
    with serving(browser, folder, features=features if where == "elsewhere" else None) as v:
        yield v


def features_dir(viewer: Viewer) -> Path:
    inside = viewer.folder / "features"
    return inside if inside.is_dir() else viewer.folder.parent / "elsewhere"


@pytest.mark.parametrize("served", ["inside", "elsewhere"], indirect=True)
def test_feature_panel_shows_the_files_dashboard(served: Viewer):
    viewer, page = served, served.page
    viewer.open()
    node = feature_nodes(viewer.folder)[0]
    rec = json.loads(
        (features_dir(viewer) / f"{node['layer_index']}_{node['feature_index']}.json").read_text()
    )
    viewer.node(node["node_id"]).click()
    box = page.locator("#feature-dashboard")
    box.locator(".fd-context").first.wait_for()
    # density, histogram, logit effects: the file's numbers
    assert float(box.locator(".fd-facts").get_attribute("data-density")) == rec["density"]
    bars = box.locator(".fd-bar").evaluate_all("els => els.map(e => Number(e.dataset.count))")
    assert bars == rec["histogram"]["counts"]
    ups = box.locator(".fd-logits.pos .fd-token").all_inner_texts()
    assert ups == [json.dumps(t) for t in rec["top_logits"]]
    downs = box.locator(".fd-logits.neg .fd-token").all_inner_texts()
    assert downs == [json.dumps(t) for t in rec["bottom_logits"]]
    # contexts: every band, every token with its activation, shaded where active
    bands = box.locator(".fd-band")
    assert bands.count() == len(rec["examples_quantiles"])
    for i, band in enumerate(rec["examples_quantiles"]):
        contexts = bands.nth(i).locator(".fd-context")
        assert contexts.count() == len(band["examples"])
        for j, ex in enumerate(band["examples"]):
            toks = contexts.nth(j).locator(".fd-tok")
            texts = toks.evaluate_all("els => els.map(e => e.textContent)")
            assert texts == ex["tokens"]
            acts = toks.evaluate_all("els => els.map(e => Number(e.dataset.act))")
            assert acts == ex["tokens_acts_list"]
            shaded = toks.evaluate_all("els => els.map(e => e.style.backgroundColor !== '')")
            assert shaded == [a > 0 for a in ex["tokens_acts_list"]]
            peak = toks.evaluate_all("els => els.findIndex(e => e.classList.contains('peak'))")
            assert peak == ex["train_token_ind"]
    # the label of the files' index, where the graph has none
    if not node.get("clerp"):
        label = page.inner_text('#details-fields dd[data-field="automatic label"]')
        assert label == rec["label"]
    assert viewer.errors == []


@pytest.mark.parametrize("served", ["inside"], indirect=True)
def test_bad_feature_file_gives_a_message_not_a_broken_page(served: Viewer):
    viewer, page = served, served.page
    first, second = feature_nodes(viewer.folder)[:2]
    (
        viewer.folder / "features" / f"{first['layer_index']}_{first['feature_index']}.json"
    ).write_text('{"format": "sae-circuits-features/1", "density": 7}')
    viewer.open()
    viewer.node(first["node_id"]).click()
    message = page.locator("#feature-dashboard .fd-message.error")
    message.wait_for()
    assert "bad feature file" in message.inner_text()
    assert page.locator("#details").is_visible()
    viewer.node(second["node_id"]).click()  # the next feature still works
    page.locator("#feature-dashboard .fd-context").first.wait_for()
    # (the browser logs the 409 answer itself; nothing else may go wrong)
    assert [e for e in viewer.errors if "409" not in e] == []


@pytest.mark.parametrize("served", ["none"], indirect=True)
def test_without_dashboards_the_panel_says_how_to_build_them(served: Viewer):
    viewer, page = served, served.page
    viewer.open()
    node = feature_nodes(viewer.folder)[0]
    viewer.node(node["node_id"]).click()
    hint = page.locator("#feature-dashboard .fd-message")
    hint.wait_for()
    assert "sae-circuits features" in hint.inner_text()
    assert viewer.errors == []
