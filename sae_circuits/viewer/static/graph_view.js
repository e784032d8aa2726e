// The main graph: every kept node as a <g data-node="id"> laid out by layer (y) and token
// position (x), edges as curves (width ~ |weight|, colour = sign). Hover highlights a node's
// edges and neighbours; click selects it; shift-click toggles it in the supernode selection.

import { colorOf, describe, fmt, labelOf, rowOf, supernodesOf } from "./model.js";
import { MARGIN, drawNode, edgeAttrs, gridLayout, nodeWidth, svgEl, svgText, truncate } from "./svg.js";

const tooltip = () => document.getElementById("tooltip");

function tooltipText(node, label) {
  const lines = [describe(node)];
  if (label) lines.push(label);
  if (node.kind === "feature") lines.push(`activation ${fmt(node.activation)}`);
  if (node.kind === "logit") lines.push(node.target ? `target, value ${fmt(node.targetValue)}` : `p = ${fmt(node.probability)}`);
  if (node.influence !== null) lines.push(`influence ${fmt(node.influence)}`);
  lines.push(`${node.incoming.length} in, ${node.outgoing.length} out`);
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
    order: n.kind === "logit" ? (n.target ? n.weight : n.probability) ?? 0 : n.influence ?? 0,
  }));
  const widthById = new Map(items.map((it) => [it.id, it.width]));
  const layout = gridLayout(items, nRows, nCols);
  svg.setAttribute("width", String(layout.width));
  svg.setAttribute("height", String(layout.height));
  svg.setAttribute("viewBox", `0 0 ${layout.width} ${layout.height}`);

  // axes: a row label per layer, a faint line per row, the position under each column
  const axes = svgEl("g", { class: "axes" }, svg);
  for (let r = 0; r < nRows; r++) {
    const y = layout.rowY[r];
    svgEl("line", { class: "gridline", x1: MARGIN.left - 6, x2: layout.width - MARGIN.right, y1: y, y2: y }, axes);
    const name = r === 0 ? "tokens" : r === nRows - 1 ? "logits" : `L${r - 1}`;
    svgText(name, { class: "axis", x: 8, y: y + 4 }, axes);
  }
  for (let c = 0; c < nCols; c++) {
    const x = layout.colStart[c] + layout.colWidth[c] / 2;
    svgText(String(c), { class: "axis", x, y: layout.height - 8, "text-anchor": "middle" }, axes);
  }

  // edges, weakest first so the strongest are drawn on top
  const edges = svgEl("g", { class: "edges" }, svg);
  const maxAbs = model.links.reduce((m, l) => Math.max(m, Math.abs(l.weight)), 0);
  const sorted = [...model.links].sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight));
  const edgeEls = new Map();
  for (const link of sorted) {
    const a = layout.pos.get(link.source.id);
    const b = layout.pos.get(link.target.id);
    const attrs = { ...edgeAttrs(a, b, link.weight, maxAbs), "data-source": link.source.id, "data-target": link.target.id };
    const el = svgEl("path", attrs, edges);
    edgeEls.set(link, el);
  }

  // nodes
  const nodesG = svgEl("g", { class: "nodes" }, svg);
  const nodeEls = new Map();
  for (const node of model.nodes) {
    const classes = [];
    if (node.id === state.selectedId) classes.push("selected");
    if (state.grouping.has(node.id)) classes.push("grouped");
    const rings = supernodesOf(node.id, annotations).map(([id]) => colorOf(id));
    const label = labels.get(node.id);
    const g = drawNode(nodesG, node, layout.pos.get(node.id), { width: widthById.get(node.id), label, rings, pinned: pinned.has(node.id), classes });
    const title = svgEl("title", {}, g);
    title.textContent = truncate(describe(node) + (label ? ` — ${label}` : ""), 200);
    nodeEls.set(node.id, g);
    g.addEventListener("mouseenter", (event) => {
      svg.classList.add("focus");
      g.classList.add("hl");
      for (const l of [...node.incoming, ...node.outgoing]) {
        edgeEls.get(l)?.classList.add("hl");
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
      g.appendChild(title);
      hideTooltip();
    });
    g.addEventListener("click", (event) => {
      event.stopPropagation();
      if (event.shiftKey) actions.toggleGrouping(node.id);
      else actions.select(node.id);
    });
  }
  return { nodeEls };
}

/** Scroll the graph pane so that node `id` is visible. */
export function revealNode(svg, id) {
  const el = svg.querySelector(`[data-node="${CSS.escape(id)}"]`);
  if (el) el.scrollIntoView({ block: "nearest", inline: "nearest", behavior: "smooth" });
}
