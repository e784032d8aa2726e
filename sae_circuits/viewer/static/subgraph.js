// The subgraph pane: pinned nodes and supernodes (each drawn once, members merged), laid out
// like the main graph, with the summed direct edges between them.

import { colorOf, describe, fmt, labelOf, rowOf } from "./model.js";
import { drawNode, edgeAttrs, gridLayout, nodeWidth, svgEl, svgText, textWidth, truncate } from "./svg.js";

function subgraphItems(model, annotations) {
  const items = [];
  const itemOfNode = new Map();
  for (const [id, sn] of Object.entries(annotations.supernodes)) {
    const members = sn.members.map((m) => model.byId.get(m)).filter(Boolean);
    if (!members.length) continue;
    const key = `sn:${id}`;
    const mean = (f) => members.reduce((s, n) => s + f(n), 0) / members.length;
    items.push({
      id: key,
      supernode: id,
      label: sn.label,
      members,
      row: Math.round(mean((n) => rowOf(n, model.nLayers))),
      col: Math.round(mean((n) => n.position)),
      width: Math.min(180, textWidth(truncate(sn.label, 28)) + 20),
      order: members.reduce((s, n) => s + (n.influence ?? 0), 0),
    });
    for (const n of members) if (!itemOfNode.has(n.id)) itemOfNode.set(n.id, key);
  }
  for (const id of annotations.pinned) {
    const node = model.byId.get(id);
    if (!node || itemOfNode.has(id)) continue;
    const label = labelOf(node, annotations);
    items.push({ id, node, label, row: rowOf(node, model.nLayers), col: node.position, width: nodeWidth(node, label), order: node.influence ?? 0 });
    itemOfNode.set(id, id);
  }
  return { items, itemOfNode };
}

/** Draw the subgraph; `actions.select(id)` for nodes, `actions.selectMembers(id)` for supernodes. */
export function drawSubgraph(svg, model, state, actions) {
  svg.replaceChildren();
  const { items, itemOfNode } = subgraphItems(model, state.annotations);
  document.getElementById("subgraph-empty").hidden = items.length > 0;
  document.body.classList.toggle("no-subgraph", !items.length); // (the pane folds to its hint)
  if (!items.length) {
    svg.setAttribute("width", "0");
    svg.setAttribute("height", "0");
    return;
  }
  // only the rows and columns in use, in order, so a small subgraph stays small
  const rows = [...new Set(items.map((it) => it.row))].sort((a, b) => a - b);
  const cols = [...new Set(items.map((it) => it.col))].sort((a, b) => a - b);
  const placed = items.map((it) => ({ ...it, row: rows.indexOf(it.row), col: cols.indexOf(it.col) }));
  const layout = gridLayout(placed, rows.length, cols.length);
  svg.setAttribute("width", String(layout.width));
  svg.setAttribute("height", String(layout.height));
  const axes = svgEl("g", { class: "axes" }, svg);
  rows.forEach((row, i) => {
    const name = row === 0 ? "tokens" : row === model.nLayers + 1 ? "logits" : `L${row - 1}`;
    svgText(name, { class: "axis", x: 8, y: layout.rowY[i] + 4 }, axes);
  });
  cols.forEach((col, i) => {
    const x = layout.colStart[i] + layout.colWidth[i] / 2;
    svgText(`@${col}`, { class: "axis", x, y: layout.height - 8, "text-anchor": "middle" }, axes);
  });

  const sums = new Map();
  for (const link of model.links) {
    const a = itemOfNode.get(link.source.id);
    const b = itemOfNode.get(link.target.id);
    if (!a || !b || a === b) continue;
    const key = `${a}\u0000${b}`;
    sums.set(key, (sums.get(key) ?? 0) + link.weight);
  }
  const maxAbs = [...sums.values()].reduce((m, w) => Math.max(m, Math.abs(w)), 0);
  const edges = svgEl("g", { class: "edges" }, svg);
  for (const [key, weight] of [...sums].sort((x, y) => Math.abs(x[1]) - Math.abs(y[1]))) {
    const [a, b] = key.split("\u0000");
    const path = svgEl("path", edgeAttrs(layout.pos.get(a), layout.pos.get(b), weight, maxAbs), edges);
    const title = svgEl("title", {}, path);
    title.textContent = `${fmt(weight)}`;
  }

  const nodesG = svgEl("g", { class: "nodes" }, svg);
  for (const item of items) {
    const p = layout.pos.get(item.id);
    let g;
    if (item.supernode) {
      g = svgEl("g", { class: "supernode", "data-supernode": item.supernode, transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})` }, nodesG);
      svgEl("rect", { class: "shape", x: -item.width / 2, y: -13, width: item.width, height: 26, rx: 8, stroke: colorOf(item.supernode) }, g);
      svgText(truncate(item.label, 28), { "text-anchor": "middle", y: 4 }, g);
      const title = svgEl("title", {}, g);
      title.textContent = `${item.label}: ${item.members.map(describe).join(", ")}`;
      g.addEventListener("click", () => actions.selectMembers(item.supernode));
    } else {
      g = drawNode(nodesG, item.node, p, { width: item.width, label: item.label, pinned: true, classes: item.node.id === state.selectedId ? ["selected"] : [] });
      g.addEventListener("click", () => actions.select(item.node.id, true));
    }
  }
}
