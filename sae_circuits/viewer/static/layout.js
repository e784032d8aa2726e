// The main graph's layout: rows are layers (tokens at the bottom, logits on top), columns are
// token positions, each as wide as its content needs (a position with nothing but its token is
// one token wide). The nodes of one (layer, position) cell are stacked in lines of a few, most
// influential first, so a crowded cell grows upwards inside its row instead of widening the
// whole graph; every node has its own slot, so no two nodes ever overlap.

import { cellsOf, MARGIN } from "./svg.js";

const GAP = 4;
export const LINE_HEIGHT = 32; // one line of nodes in a cell (a feature and its label)
const ROW_PAD = 14; // space between two rows
const TOKEN_LINE = 34;
const MIN_COLUMN = 24;

/** Nodes per line of a cell of `n` nodes: about twice as many per line as there are lines,
 * times `stack` more lines (stack > 1: taller and narrower cells). */
export function perLine(n, stack = 1) {
  const lines = Math.min(n, Math.max(1, Math.ceil(Math.sqrt(n / 2) * stack)));
  return Math.max(1, Math.ceil(n / lines));
}

const STACKS = [0.5, 1, 1.5, 2, 3, 4, 6, 8];

/**
 * The layout of `items` that fits a pane of `pane` = {w, h} pixels at the largest scale: cells
 * stacked more or less deep (see compactLayout) so that the graph's shape follows the pane's.
 */
export function fittedLayout(items, nRows, nCols, pane) {
  let best = null;
  for (const stack of STACKS) {
    const layout = compactLayout(items, nRows, nCols, stack);
    const scale = Math.min(pane.w / layout.width, pane.h / layout.height);
    if (!best || scale > best.scale * 1.0001) best = { scale, layout };
  }
  return best.layout;
}

/**
 * Lay out items by (row, col), stacking each cell's nodes.
 * @param items [{id, row, col, width, order}] (order: larger first within a cell)
 * @param nRows number of rows (0 = tokens, nRows - 1 = logits); @param nCols number of columns
 * @param stack how deep cells are stacked (perLine)
 * @returns {pos: Map(id -> {x, y}), width, height, colStart, colWidth, rowY, rowTop, rowHeight}
 */
export function compactLayout(items, nRows, nCols, stack = 1) {
  const cells = cellsOf(items);
  const colWidth = new Array(nCols).fill(MIN_COLUMN);
  const rowLines = new Array(nRows).fill(1);
  const shape = new Map(); // cell key -> {lines: [[item, ...]], lineWidth: [w]}
  for (const [key, list] of cells) {
    list.sort((a, b) => (b.order ?? 0) - (a.order ?? 0) || (a.id < b.id ? -1 : 1));
    const k = list[0].row === 0 ? list.length : perLine(list.length, stack);
    const lines = [];
    for (let i = 0; i < list.length; i += k) lines.push(list.slice(i, i + k));
    const lineWidth = lines.map((line) => line.reduce((s, it) => s + it.width + GAP, GAP));
    shape.set(key, { lines, lineWidth });
    const { row, col } = list[0];
    colWidth[col] = Math.max(colWidth[col], ...lineWidth);
    rowLines[row] = Math.max(rowLines[row], lines.length);
  }
  const colStart = [];
  let x = MARGIN.left;
  for (let c = 0; c < nCols; c++) {
    colStart.push(x);
    x += colWidth[c];
  }
  // rows from the top (logits) down to the tokens
  const rowHeight = rowLines.map((n, r) => (r === 0 ? TOKEN_LINE : n * LINE_HEIGHT) + ROW_PAD);
  const rowTop = new Array(nRows);
  const rowY = new Array(nRows);
  let y = MARGIN.top;
  for (let r = nRows - 1; r >= 0; r--) {
    rowTop[r] = y;
    rowY[r] = y + rowHeight[r] / 2;
    y += rowHeight[r];
  }
  const pos = new Map();
  for (const { lines, lineWidth } of shape.values()) {
    const { row, col } = lines[0][0];
    // the first (most influential) line at the bottom of the row, the others above it (a
    // feature's circle sits 10 px below a line's top, its label ends 22 px below it)
    const bottom = rowTop[row] + rowHeight[row] - ROW_PAD / 2 - 22;
    lines.forEach((line, li) => {
      let cx = colStart[col] + (colWidth[col] - lineWidth[li]) / 2 + GAP;
      const ly = row === 0 ? rowY[row] : bottom - li * LINE_HEIGHT;
      for (const item of line) {
        pos.set(item.id, { x: cx + item.width / 2, y: ly });
        cx += item.width + GAP;
      }
    });
  }
  return { pos, width: x + MARGIN.right, height: y + MARGIN.bottom, colStart, colWidth, rowY, rowTop, rowHeight };
}
