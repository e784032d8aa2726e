// The main graph: every kept node as a <g data-node="id"> laid out by layer (y) and token
// position (x) (layout.js: columns as wide as their content, the nodes of a cell stacked), edges
// as curves (width ~ |weight|, colour = sign), all in one zoomable viewport (zoom.js). Hover
// highlights a node's edges and neighbours (state.hoverMode: "both", "inputs", "outputs" or
// "off", as circuit-tracer's link modes); click selects it; shift-click toggles it in the
// supernode selection.

import { colorOf, describe, fmt, labelOf, rowOf, supernodesOf } from "./model.js";
import { compareLine } from "./compare.js";
import { fittedLayout } from "./layout.js";
import { MARGIN, drawNode, edgeAttrs, nodeWidth, svgEl, svgText, truncate } from "./svg.js";
import { attach, enableZoom, panTo } from "./zoom.js";

const tooltip = () => document.getElementById("tooltip");

/** Most links drawn at once (the strongest); hovering a node draws the rest of its own. */
export const MAX_DRAWN_LINKS = 12000;

function tooltipText(node, label) {
  const lines = [describe(node)];
  if (label) lines.push(label);
  if (node.kind === "feature") lines.push(`activation ${fmt(node.activation)}`);
  if (node.kind === "logit") lines.push(node.target ? `target, value ${fmt(node.targetValue)}` : `p = ${fmt(node.probability)}`);
  if (node.influence !== null) lines.push(`influence ${fmt(node.influence)}`);
  lines.push(`${node.incoming.length} in, ${node.outgoing.length} out`);
  const cmp = compareLine(node);
  if (cmp) lines.push(cmp);
  return lines.join("\n");
}

function showTooltip(event, text) {
  const tip = tooltip();
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = `${event.clientX + 14}px`;
  tip.style.top = `${event.clientY + 12}px`;
}

function hideTooltip() {
  tooltip().hidden = true;
}

/**
 * Draw `model` into `svg`.
 * @param state {annotations, selectedId, grouping: Set}
 * @param actions {select(id), toggleGrouping(id)}
 */
export function drawGraph(svg, model, state, actions) {
  svg.replaceChildren();
  svg.classList.remove("focus"); // the hovered element is gone: no mouseleave will come
  hideTooltip();
  const { annotations } = state;
  const pinned = new Set(annotations.pinned);
  const nRows = model.nLayers + 2;
  const nCols = model.nodes.reduce((m, n) => Math.max(m, n.position + 1), Math.max(1, model.promptTokens.length));
  const labels = new Map(model.nodes.map((n) => [n.id, labelOf(n, annotations)]));
  const items = model.nodes.map((n) => ({
    id: n.id,
    row: rowOf(n, model.nLayers),
    col: n.position,
    width: nodeWidth(n, labels.get(n.id)),
    kind: n.kind,
    order: n.kind === "logit" ? (n.target ? n.weight : n.probability) ?? 0 : n.influence ?? 0,
  }));
  // a feature's label gets the room its column would have if the graph filled the pane
  const pane = svg.getBoundingClientRect();
  const slot = Math.max(22, Math.min(100, (Math.max(600, pane.width) - MARGIN.left) / nCols - 8));
  const capped = new Set();
  for (const it of items) {
    // (tokens too: on a long prompt a token shows its first letters, the tooltip the rest;
    // logits share one column, so they keep room for their probability)
    const cap = it.kind === "logit" ? Math.max(36, slot) : slot;
    if (it.width > cap) {
      it.width = cap;
      capped.add(it.id);
    }
  }
  const widthById = new Map(items.map((it) => [it.id, it.width]));
  const legend = document.getElementById("legend");
  const top = legend && legend.parentElement === svg.parentElement ? legend.getBoundingClientRect().height : 0;
  const layout = fittedLayout(items, nRows, nCols, { w: Math.max(600, pane.width), h: Math.max(300, pane.height - top) });
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  svg.removeAttribute("viewBox");
  svg.dataset.layoutWidth = String(Math.round(layout.width));
  svg.dataset.layoutHeight = String(Math.round(layout.height));
  const root = svgEl("g", { class: "viewport" }, svg);

  // axes: a row label per layer, a faint line per row, the position under each column
  const axes = svgEl("g", { class: "axes" }, root);
  for (let r = 0; r < nRows; r++) {
    const y = layout.rowY[r];
    const top = layout.rowTop[r];
    svgEl("line", { class: "gridline", x1: MARGIN.left - 6, x2: layout.width - MARGIN.right, y1: top, y2: top }, axes);
    const name = r === 0 ? "tokens" : r === nRows - 1 ? "logits" : `L${r - 1}`;
    svgText(name, { class: "axis", x: 8, y: y + 4 }, axes);
  }
  for (let c = 0; c < nCols; c++) {
    const x = layout.colStart[c] + layout.colWidth[c] / 2;
    svgText(String(c), { class: "axis", x, y: layout.height - 8, "text-anchor": "middle" }, axes);
  }

  // edges, weakest first so the strongest are drawn on top; a graph of more links than an SVG
  // draws quickly (or a reader can follow) shows its strongest MAX_DRAWN_LINKS, and hovering a
  // node draws all of its own
  const edges = svgEl("g", { class: "edges" }, root);
  const hoverEdges = svgEl("g", { class: "edges hover-edges" }, root);
  const maxAbs = model.links.reduce((m, l) => Math.max(m, Math.abs(l.weight)), 0);
  const sorted = [...model.links].sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight));
  const drawn = sorted.length > MAX_DRAWN_LINKS ? sorted.slice(sorted.length - MAX_DRAWN_LINKS) : sorted;
  svg.dataset.drawnLinks = String(drawn.length);
  const edgeEls = new Map();
  const drawEdge = (link, parent) => {
    const a = layout.pos.get(link.source.id);
    const b = layout.pos.get(link.target.id);
    const attrs = { ...edgeAttrs(a, b, link.weight, maxAbs), "data-source": link.source.id, "data-target": link.target.id };
    if (link.compare) attrs.class += ` cmp-${link.compare}`;
    return svgEl("path", attrs, parent);
  };
  for (const link of drawn) edgeEls.set(link, drawEdge(link, edges));

  // nodes
  const nodesG = svgEl("g", { class: "nodes" }, root);
  const nodeEls = new Map();
  for (const node of model.nodes) {
    const classes = [];
    if (node.id === state.selectedId) classes.push("selected");
    if (state.grouping.has(node.id)) classes.push("grouped");
    if (node.compare) classes.push(`cmp-${node.compare}`);
    const rings = supernodesOf(node.id, annotations).map(([id]) => colorOf(id));
    const label = labels.get(node.id);
    const g = drawNode(nodesG, node, layout.pos.get(node.id), { width: widthById.get(node.id), label, rings, pinned: pinned.has(node.id), classes, maxChars: capped.has(node.id) ? Math.max(3, Math.floor(widthById.get(node.id) / 5.5)) : null });
    // the whole slot (shape and label) takes the pointer, not the edges under the label
    const w = widthById.get(node.id);
    const hit = svgEl("rect", { class: "hit", x: -w / 2, y: node.kind === "feature" || node.kind === "error" ? -10 : -16, width: w, height: node.kind === "feature" || node.kind === "error" ? 32 : 32 });
    g.insertBefore(hit, g.firstChild);
    const title = svgEl("title", {}, g);
    title.textContent = truncate(describe(node) + (label ? ` — ${label}` : ""), 200);
    nodeEls.set(node.id, g);
    g.addEventListener("mouseenter", (event) => {
      svg.classList.add("focus");
      g.classList.add("hl");
      const mode = state.hoverMode || "both";
      const shown = mode === "off" ? [] : mode === "inputs" ? node.incoming : mode === "outputs" ? node.outgoing : [...node.incoming, ...node.outgoing];
      for (const l of shown) {
        (edgeEls.get(l) ?? drawEdge(l, hoverEdges)).classList.add("hl");
        nodeEls.get(l.source.id)?.classList.add("hl");
        nodeEls.get(l.target.id)?.classList.add("hl");
      }
      title.remove(); // the custom tooltip replaces the native one while hovering
      showTooltip(event, tooltipText(node, label));
    });
    g.addEventListener("mousemove", (event) => showTooltip(event, tooltipText(node, label)));
    g.addEventListener("mouseleave", () => {
      svg.classList.remove("focus");
      for (const el of svg.querySelectorAll(".hl")) el.classList.remove("hl");
      hoverEdges.replaceChildren();
      g.appendChild(title);
      hideTooltip();
    });
    g.addEventListener("click", (event) => {
      event.stopPropagation();
      if (event.shiftKey) actions.toggleGrouping(node.id);
      else actions.select(node.id);
    });
  }
  enableZoom(svg);
  attach(svg, root, { width: layout.width, height: layout.height });
  svg.layoutPos = layout.pos;
  return { nodeEls };
}

/** Pan the graph so that node `id` is in view. */
export function revealNode(svg, id) {
  const p = svg.layoutPos && svg.layoutPos.get(id);
  if (p) panTo(svg, p.x, p.y);
}
