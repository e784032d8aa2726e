// The side panels: a node's details (fields, label editor, pin / select buttons, Neuronpedia
// link, strongest incoming and outgoing edges), a head's QK attribution (why it attended where
// it did: its top query/key pairs) and the supernode list (rename, show, ungroup).

import { colorOf, describe, fmt, headName, headParts, percent, qkKey, signed, supernodesOf } from "./model.js";

const $ = (id) => document.getElementById(id);

function addField(dl, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.dataset.field = name;
  dl.append(dt, dd);
}

// The heads that carry an edge, under its entry: "via L1H2 61%, L1H0 30%, direct 9%". A head
// whose QK attribution at the edge's positions (query: the target's, key: the source's) the
// folder holds is a button that opens it.
function headLine(link, state, actions) {
  const { heads } = link;
  const div = document.createElement("div");
  div.className = "heads";
  div.append("via ");
  headParts(heads).forEach((p, i) => {
    if (i) div.append(", ");
    const h = p.part;
    const key = h && h.layer !== null ? qkKey(h.layer, h.head, link.target.position, link.source.position) : null;
    if (key !== null && state.attention.has(key)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = key === state.qkKey ? "head-link active" : "head-link";
      button.textContent = p.name;
      button.dataset.qk = key;
      button.title = `why ${p.name} attends from @${link.target.position} to @${link.source.position}: its top query/key pairs`;
      button.addEventListener("click", () => actions.showQK(key));
      div.append(button);
    } else {
      div.append(p.name);
    }
    div.append(` ${p.share}`);
  });
  div.title = heads
    .map((h) => `${headName(h)}: ${signed(h.loading)} (${percent(h.share)} of the edge)`)
    .join("\n");
  return div;
}

function edgeList(ol, links, otherEnd, state, actions) {
  ol.replaceChildren();
  const top = [...links].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
  if (!top.length) {
    const li = document.createElement("li");
    li.textContent = "none";
    li.className = "hint";
    ol.append(li);
  }
  for (const link of top) {
    const li = linkItem(link, otherEnd, actions);
    if (link.heads) li.append(headLine(link, state, actions));
    ol.append(li);
  }
}

/** One link of a list: its other end (a button that selects it) and its signed weight. */
export function linkItem(link, otherEnd, actions) {
  const other = otherEnd(link);
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = describe(other) + (other.clerp ? ` ${other.clerp}` : "");
  button.dataset.goto = other.id;
  button.addEventListener("click", () => actions.select(other.id, true));
  const w = document.createElement("span");
  w.className = `w ${link.weight >= 0 ? "pos" : "neg"}`;
  w.textContent = signed(link.weight);
  li.append(button, w);
  return li;
}

/** Fill the details panel for the selected node (or show the empty hint). */
export function renderDetails(model, state, actions) {
  const node = state.selectedId ? model.byId.get(state.selectedId) : null;
  $("details").hidden = !node;
  $("details-empty").hidden = Boolean(node);
  if (!node) return;
  const { annotations } = state;
  $("details-title").textContent = describe(node);
  const dl = $("details-fields");
  dl.replaceChildren();
  addField(dl, "kind", node.kind);
  if (node.layer !== null) addField(dl, "layer", String(node.layer));
  const token = model.promptTokens[node.position];
  addField(dl, "position", token !== undefined ? `${node.position} ("${token}")` : String(node.position));
  if (node.kind === "feature") addField(dl, "feature", String(node.feature));
  if (node.kind === "feature") addField(dl, "activation", fmt(node.activation));
  if (node.kind === "logit" && !node.target) addField(dl, "probability", fmt(node.probability));
  if (node.target) addField(dl, "target", node.token ?? "?");
  else if (node.kind === "token" || node.kind === "logit") addField(dl, "token", node.token ?? "?");
  if (node.targetValue !== null) addField(dl, "value (clean run)", fmt(node.targetValue));
  if (node.weight !== null) addField(dl, "target weight", fmt(node.weight));
  addField(dl, "influence", fmt(node.influence));
  addField(dl, "cumulative influence", fmt(node.cumulative));
  if (node.clerp) addField(dl, "automatic label", node.clerp);
  const groups = supernodesOf(node.id, annotations).map(([, sn]) => sn.label);
  if (groups.length) addField(dl, "supernodes", groups.join(", "));
  addField(dl, "node id", node.id);

  const input = $("label-input");
  if (input.dataset.node !== node.id || document.activeElement !== input) {
    input.value = annotations.labels[node.id] ?? "";
    input.dataset.node = node.id;
  }
  input.placeholder = node.clerp || "name this node";
  $("pin-toggle").textContent = annotations.pinned.includes(node.id) ? "Unpin" : "Pin";
  $("select-toggle").textContent = state.grouping.has(node.id) ? "Deselect" : "Select for supernode";
  const link = $("np-link");
  link.hidden = !node.npUrl;
  if (node.npUrl) link.href = node.npUrl;
  else link.removeAttribute("href");
  edgeList($("incoming"), node.incoming, (l) => l.source, state, actions);
  edgeList($("outgoing"), node.outgoing, (l) => l.target, state, actions);
}

const KNOWN_KINDS = new Set(["feature", "error", "token"]);

// One end of a QK pair (or a side's source): a node of the document is a button that selects
// it; a source the pruned graph left out is described from the record; the constant terms are
// "bias".
function qkEnd(end, model, actions) {
  const node = model.byId.get(end.id);
  if (node) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = describe(node) + (node.clerp ? ` ${node.clerp}` : "");
    button.dataset.goto = node.id;
    button.addEventListener("click", () => actions.select(node.id, true));
    return button;
  }
  const span = document.createElement("span");
  span.dataset.node = end.id;
  if (end.id === "bias" || end.kind === "bias") {
    span.className = "bias";
    span.textContent = "bias";
    span.title = "the constant terms: biases, positional embeddings, what the attention-sink position holds";
  } else {
    span.className = "absent";
    const token = end.token ?? (end.position !== null ? model.promptTokens[end.position] : undefined);
    span.textContent = KNOWN_KINDS.has(end.kind) ? describe({ ...end, token: token ?? null }) : end.id;
    span.title = `${end.id}: not in the graph shown`;
  }
  return span;
}

function contribution(x) {
  const w = document.createElement("span");
  w.className = `w ${x !== null && x >= 0 ? "pos" : "neg"}`;
  w.textContent = x === null ? "–" : signed(x);
  return w;
}

function qkList(ol, rows, render) {
  ol.replaceChildren();
  if (!rows.length) {
    const li = document.createElement("li");
    li.textContent = "none";
    li.className = "hint";
    ol.append(li);
  }
  for (const row of rows) {
    const li = document.createElement("li");
    li.append(...render(row), contribution(row.contribution));
    ol.append(li);
  }
}

/** Fill the QK panel for the head chosen in an edge's head line (or hide it). */
export function renderQK(model, state, actions) {
  const record = state.qkKey ? state.attention.get(state.qkKey) : null;
  $("qk-panel").hidden = !record;
  if (!record) return;
  const at = (p) => {
    const token = model.promptTokens[p];
    return token !== undefined ? `@${p} ("${token}")` : `@${p}`;
  };
  $("qk-title").textContent = `L${record.layer}H${record.head}: query ${at(record.query)} → key ${at(record.key)}`;
  const dl = $("qk-fields");
  dl.replaceChildren();
  addField(dl, "score", fmt(record.score));
  addField(dl, "pattern", fmt(record.pattern));
  // (rounding noise when every pair is listed is shown as 0)
  const { residual, score } = record;
  const negligible = residual !== null && score !== null && Math.abs(residual) <= 1e-9 * Math.max(1, Math.abs(score));
  addField(dl, "pairs not listed", fmt(negligible ? 0 : residual));
  qkList($("qk-pairs"), record.pairs, (row) => {
    const sep = document.createElement("span");
    sep.className = "sep";
    sep.textContent = " ↔ ";
    return [qkEnd(row.query, model, actions), sep, qkEnd(row.key, model, actions)];
  });
  qkList($("qk-query-side"), record.querySide.slice(0, 8), (row) => [qkEnd(row.source, model, actions)]);
  qkList($("qk-key-side"), record.keySide.slice(0, 8), (row) => [qkEnd(row.source, model, actions)]);
}

/** The supernode selection line and buttons. */
export function renderSelection(model, state) {
  const n = state.grouping.size;
  const names = [...state.grouping].map((id) => (model.byId.has(id) ? describe(model.byId.get(id)) : id));
  $("selection-info").textContent = n
    ? `${n} selected: ${names.slice(0, 6).join(", ")}${n > 6 ? ", …" : ""}`
    : "Shift-click nodes to select them, then group them.";
  $("supernode-create").disabled = n === 0;
  $("selection-clear").disabled = n === 0;
}

/** The list of supernodes with rename / show / ungroup controls. */
export function renderSupernodes(model, state, actions) {
  const list = $("supernode-list");
  list.replaceChildren();
  for (const [id, sn] of Object.entries(state.annotations.supernodes)) {
    const li = document.createElement("li");
    li.dataset.supernode = id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colorOf(id);
    const input = document.createElement("input");
    input.className = "sn-label";
    input.type = "text";
    input.maxLength = 200;
    input.value = sn.label;
    input.setAttribute("aria-label", "supernode name");
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "sn-rename";
    rename.textContent = "Rename";
    rename.addEventListener("click", () => actions.renameSupernode(id, input.value));
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") actions.renameSupernode(id, input.value);
    });
    const shown = sn.members.filter((m) => model.byId.has(m)).length;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${sn.members.length} nodes${shown < sn.members.length ? ` (${shown} shown)` : ""}`;
    const show = document.createElement("button");
    show.type = "button";
    show.className = "sn-show";
    show.textContent = "Select";
    show.addEventListener("click", () => actions.selectMembers(id));
    const del = document.createElement("button");
    del.type = "button";
    del.className = "sn-delete";
    del.textContent = "Ungroup";
    del.addEventListener("click", () => actions.deleteSupernode(id));
    li.append(swatch, input, rename, count, show, del);
    list.append(li);
  }
}
