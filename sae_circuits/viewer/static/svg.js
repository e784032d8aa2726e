// SVG helpers and the grid layout shared by the graph and the subgraph: rows are layers
// (tokens at the bottom, logits on top), columns are token positions, and the nodes of one
// (row, column) cell sit side by side, most influential first.

const SVG_NS = "http://www.w3.org/2000/svg";

export const ROW_HEIGHT = 64;
export const MARGIN = { left: 64, right: 16, top: 22, bottom: 30 };
const MIN_COLUMN = 40;
const GAP = 4;

/** Create an SVG element with attributes, appended to `parent` if given. */
export function svgEl(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  if (parent) parent.appendChild(el);
  return el;
}

export function svgText(text, attrs, parent) {
  const el = svgEl("text", attrs, parent);
  el.textContent = text;
  return el;
}

let measureCtx = null;

/** Width in pixels of `text` in the SVG's 11px font. */
export function textWidth(text, size = 11) {
  if (!measureCtx) measureCtx = document.createElement("canvas").getContext("2d");
  measureCtx.font = `${size}px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif`;
  return measureCtx.measureText(text).width;
}

export function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Items grouped by grid cell: Map("row:col" -> [item, ...]), in the items' order. */
export function cellsOf(items) {
  const cells = new Map();
  for (const item of items) {
    const key = `${item.row}:${item.col}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(item);
  }
  return cells;
}

/**
 * Lay out items on the grid.
 * @param items [{id, row, col, width, order}] (order: larger first within a cell)
 * @param nRows number of rows; @param nCols number of columns
 * @returns {pos: Map(id -> {x, y}), width, height, colStart: [x], colWidth: [w], rowY: [y]}
 */
export function gridLayout(items, nRows, nCols) {
  const cells = cellsOf(items);
  const colWidth = new Array(nCols).fill(MIN_COLUMN);
  for (const list of cells.values()) {
    list.sort((a, b) => (b.order ?? 0) - (a.order ?? 0) || (a.id < b.id ? -1 : 1));
    const w = list.reduce((s, it) => s + it.width + GAP, GAP);
    const col = list[0].col;
    colWidth[col] = Math.max(colWidth[col], w);
  }
  const colStart = [];
  let x = MARGIN.left;
  for (let c = 0; c < nCols; c++) {
    colStart.push(x);
    x += colWidth[c];
  }
  const rowY = [];
  for (let r = 0; r < nRows; r++) rowY.push(MARGIN.top + (nRows - 1 - r) * ROW_HEIGHT + ROW_HEIGHT / 2);
  const pos = new Map();
  for (const list of cells.values()) {
    const { row, col } = list[0];
    const used = list.reduce((s, it) => s + it.width + GAP, GAP);
    let cx = colStart[col] + (colWidth[col] - used) / 2 + GAP;
    for (const item of list) {
      pos.set(item.id, { x: cx + item.width / 2, y: rowY[row] });
      cx += item.width + GAP;
    }
  }
  return {
    pos,
    width: x + MARGIN.right,
    height: MARGIN.top + nRows * ROW_HEIGHT + MARGIN.bottom,
    colStart,
    colWidth,
    rowY,
  };
}

/** A vertical S-curve from (x1, y1) to (x2, y2). */
export function edgePath(a, b) {
  const my = (a.y + b.y) / 2;
  return `M${a.x.toFixed(1)},${a.y.toFixed(1)} C${a.x.toFixed(1)},${my.toFixed(1)} ${b.x.toFixed(1)},${my.toFixed(1)} ${b.x.toFixed(1)},${b.y.toFixed(1)}`;
}

/** Stroke width of an edge of weight `w` when the strongest shown has `maxAbs`. */
export function edgeWidth(w, maxAbs) {
  return 0.6 + 5.4 * (maxAbs > 0 ? Math.abs(w) / maxAbs : 0);
}

/** Stroke opacity of an edge: faint when weak, so strong paths stand out. */
export function edgeOpacity(w, maxAbs) {
  return 0.12 + 0.78 * (maxAbs > 0 ? Math.abs(w) / maxAbs : 0);
}

/** The attributes of an edge path of weight `w` from `a` to `b`. */
export function edgeAttrs(a, b, w, maxAbs) {
  return {
    class: `edge ${w >= 0 ? "pos" : "neg"}`,
    d: edgePath(a, b),
    "stroke-width": edgeWidth(w, maxAbs).toFixed(2),
    "stroke-opacity": edgeOpacity(w, maxAbs).toFixed(2),
  };
}

/** Draw one node (shape, ring per supernode, pin mark, label) into a new <g data-node>. */
export function drawNode(parent, node, p, opts) {
  const { width, label, rings = [], pinned = false, classes = [], maxChars = null } = opts;
  const fits = (text, max) => truncate(text, maxChars === null ? max : Math.min(max, maxChars));
  const g = svgEl("g", { class: ["node", node.kind, ...classes].join(" "), "data-node": node.id, transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})` }, parent);
  if (node.kind === "token" || node.kind === "logit") {
    const h = node.kind === "logit" ? 30 : 20;
    rings.forEach((color, i) => svgEl("rect", { class: "ring", x: -width / 2 - 3 - 3 * i, y: -h / 2 - 3 - 3 * i, width: width + 6 + 6 * i, height: h + 6 + 6 * i, rx: 6, stroke: color }, g));
    svgEl("rect", { class: "shape", x: -width / 2, y: -h / 2, width, height: h, rx: 4 }, g);
    svgText(maxChars === null ? truncate(node.token ?? "?", 24) : truncate(node.token ?? "?", Math.max(2, Math.floor((width - 6) / 6.5))), { "text-anchor": "middle", y: node.kind === "logit" ? -2 : 4 }, g);
    if (node.kind === "logit") svgText(node.target ? "target" : `p=${(node.probability ?? 0).toFixed(3)}`, { "text-anchor": "middle", y: 11, class: "node-label" }, g);
    if (label && node.kind === "token") svgText(fits(label, 16), { "text-anchor": "middle", y: -15, class: "node-label" }, g);
  } else {
    rings.forEach((color, i) => svgEl("circle", { class: "ring", r: 9 + 3 * i, stroke: color }, g));
    if (node.kind === "error") svgEl("rect", { class: "shape", x: -5, y: -5, width: 10, height: 10 }, g);
    else svgEl("circle", { class: "shape", r: 6.5 }, g);
    if (label) svgText(fits(label, 16), { "text-anchor": "middle", y: 19, class: "node-label" }, g);
  }
  if (pinned) svgEl("circle", { class: "pin", cx: node.kind === "token" || node.kind === "logit" ? width / 2 : 7, cy: -8, r: 2.5 }, g);
  return g;
}

/** Width of a node's slot in the grid. */
export function nodeWidth(node, label) {
  if (node.kind === "token" || node.kind === "logit") return Math.max(44, textWidth(truncate(node.token ?? "?", 24)) + 14);
  return label ? Math.min(100, Math.max(22, textWidth(truncate(label, 16), 10) + 6)) : 22;
}
