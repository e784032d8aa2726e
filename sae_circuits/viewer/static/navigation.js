// The graph's navigation controls: hover link mode, zoom in / out, fit, fullscreen, and their
// keys (+, -, 0, f; not while typing in a field).

import { fit, toggleFullscreen, zoomBy } from "./zoom.js";

const $ = (id) => document.getElementById(id);

/** Wire the controls; `state.hoverMode` is set from the link-mode menu. */
export function wireNavigation(state) {
  const svg = $("graph-svg");
  const pane = $("graph-pane");
  state.hoverMode = $("hover-mode").value;
  $("hover-mode").addEventListener("change", () => {
    state.hoverMode = $("hover-mode").value;
  });
  $("zoom-in").addEventListener("click", () => zoomBy(svg, 1.25));
  $("zoom-out").addEventListener("click", () => zoomBy(svg, 0.8));
  $("zoom-fit").addEventListener("click", () => fit(svg));
  $("fullscreen").addEventListener("click", () => toggleFullscreen(pane, svg));
  document.addEventListener("fullscreenchange", () => requestAnimationFrame(() => fit(svg)));
  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLElement && event.target.closest("input, textarea, select");
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "+" || event.key === "=") zoomBy(svg, 1.25);
    else if (event.key === "-") zoomBy(svg, 0.8);
    else if (event.key === "0") fit(svg);
    else if (event.key === "f") toggleFullscreen(pane, svg);
  });
}
