// The side panels: a node's details (fields, label editor, pin / select buttons, Neuronpedia
// link, strongest incoming and outgoing edges) and the supernode list (rename, show, ungroup).

import { colorOf, describe, describeHeads, fmt, headName, percent, signed, supernodesOf } from "./model.js";

const $ = (id) => document.getElementById(id);

function addField(dl, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.dataset.field = name;
  dl.append(dt, dd);
}

// The heads that carry an edge, under its entry: "via L1H2 61%, L1H0 30%, direct 9%".
function headLine(heads) {
  const div = document.createElement("div");
  div.className = "heads";
  div.textContent = `via ${describeHeads(heads)}`;
  div.title = heads
    .map((h) => `${headName(h)}: ${signed(h.loading)} (${percent(h.share)} of the edge)`)
    .join("\n");
  return div;
}

function edgeList(ol, links, otherEnd, actions) {
  ol.replaceChildren();
  const top = [...links].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
  if (!top.length) {
    const li = document.createElement("li");
    li.textContent = "none";
    li.className = "hint";
    ol.append(li);
  }
  for (const link of top) {
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
    if (link.heads) li.append(headLine(link.heads));
    ol.append(li);
  }
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
  edgeList($("incoming"), node.incoming, (l) => l.source, actions);
  edgeList($("outgoing"), node.outgoing, (l) => l.target, actions);
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
