"""Take the screenshots of docs/viewer.md (headless Chromium through Playwright, offline).

Builds the toy-facts demo graphs (Dallas, and Oakland for the comparison) into a temporary
folder, serves them on 127.0.0.1 (with the toy model for steering) and writes into
``docs/images/``:

* ``viewer.png``: the Dallas graph as it opens (fitted to a 1600x1000 window);
* ``viewer_details.png``: a feature's details and connections panel;
* ``viewer_steer.png``: the Texas features switched off from the steering panel;
* ``viewer_compare.png``: Dallas vs Oakland (``serve A B``);
* ``viewer_features.png``: the feature's dashboard (contexts, histogram, logit effects), built
  from the toy model's training corpus as ``sae-circuits demo -o`` builds them.

With ``--case multilingual`` it takes only ``multilingual.png`` (docs/multilingual.md): the
French-like graph of ``sae-circuits demo --case multilingual -o``, with its supernodes.

Run: ``.venv/bin/python docs/screenshots.py [--out docs/images] [--case multilingual]`` (needs
``playwright`` and Debian's ``chromium``, as the browser tests do).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sae_circuits as sc
from sae_circuits.demo import build_demo_features, run_demo
from sae_circuits.toy import load_toy_model, load_toy_transcoders
from sae_circuits.viewer import make_server, write_graph_folder
from sae_circuits.viewer.steering import Steerer

CHROMIUM = os.environ.get("SAE_CIRCUITS_CHROMIUM") or shutil.which("chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
OAKLAND = "The capital of the state containing Oakland is"


@contextlib.contextmanager
def served(folder: Path, **kwargs: Any) -> Iterator[str]:
    server = make_server(folder, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()


def build(root: Path) -> tuple[Path, Path, Any]:
    report = run_demo(progress=False)
    dallas = root / "dallas"
    write_graph_folder(dallas, report.graph, report.pruned, slug="dallas", labels=report.labels)
    build_demo_features(report.pruned, dallas / "features")
    model, ts = load_toy_model(), load_toy_transcoders()
    oakland_graph = sc.attribute(model, OAKLAND, ts, progress=False)
    oakland = root / "oakland"
    write_graph_folder(oakland, oakland_graph, oakland_graph.prune(0.8, 0.98), slug="oakland")
    return dallas, oakland, report


def _shrink(out: Path) -> None:
    """Palette PNGs (a third of the size; the page has few colours), where Pillow is at hand."""
    try:
        from PIL import Image
    except ImportError:
        return
    for path in out.glob("viewer*.png"):
        image = Image.open(path).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "images"))
    ap.add_argument("--case", choices=("dallas", "multilingual"), default="dallas")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    if not CHROMIUM:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.case == "multilingual":
        return multilingual(out)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        dallas, oakland, report = build(Path(tmp))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        model, ts = load_toy_model(), load_toy_transcoders()
        steerer = Steerer(model, ts, prompt=report.graph.metadata["tokens"])
        try:
            with served(dallas, steerer=steerer) as url:
                page.goto(url)
                page.wait_for_selector("body[data-ready]")
                page.screenshot(path=str(out / "viewer.png"))
                top = report.features.iloc[0]
                nid = f"{int(top['layer'])}_{int(top['feature'])}_{int(top['position'])}"
                page.click(f'#graph-svg [data-node="{nid}"]')
                page.wait_for_selector("#connections .conn-side")
                page.screenshot(path=str(out / "viewer_details.png"))
                page.wait_for_selector("#feature-dashboard:not([hidden]) .fd-context")
                page.locator("#feature-dashboard").scroll_into_view_if_needed()
                page.screenshot(path=str(out / "viewer_features.png"))
                off = report.swap.interventions
                off = off[off["value"] == 0]
                for _, row in off.iterrows():
                    fid = f"{int(row['layer'])}_{int(row['feature'])}_{int(row['position'])}"
                    node = page.locator(f'#graph-svg [data-node="{fid}"]')
                    if node.count():
                        node.click()
                        page.click("#steer-add-selected")
                page.click("#steer-run")
                page.wait_for_selector("#steer-result table")
                page.locator("#steer-panel").scroll_into_view_if_needed()
                page.screenshot(path=str(out / "viewer_steer.png"))
            with served(dallas, compare=oakland) as url:
                page.goto(url)
                page.wait_for_selector("body[data-ready]")
                page.screenshot(path=str(out / "viewer_compare.png"))
        finally:
            steerer.close()
            browser.close()
    _shrink(out)
    print(f"screenshots in {out}")
    return 0


def multilingual(out: Path) -> int:
    """``multilingual.png``: the French-like "opposite of small" graph with its supernodes."""
    from playwright.sync_api import sync_playwright

    from sae_circuits.multilingual_demo import run_multilingual_demo, write_multilingual_graphs

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        folders = write_multilingual_graphs(run_multilingual_demo(), Path(tmp))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            with served(folders["fr"]) as url:
                page.goto(url)
                page.wait_for_selector("body[data-ready]")
                page.screenshot(path=str(out / "multilingual.png"))
        finally:
            browser.close()
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        path = out / "multilingual.png"
        image = Image.open(path).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"screenshot {out / 'multilingual.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
