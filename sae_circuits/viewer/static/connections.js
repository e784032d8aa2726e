// The node-connections panel (as circuit-tracer's): a selected node's inputs split by where
// they come from (the same position, earlier positions) and its outputs by where they go (the
// same position, later positions), each split by kind (feature, error, token / logit), with the
// count and the summed weight of each group and its strongest links.

import { signed } from "./model.js";
import { linkItem } from "./panels.js";

const PER_GROUP = 5;
const KINDS = ["feature", "error", "token", "logit"];
const KIND_NAMES = { feature: "features", error: "errors", token: "tokens", logit: "logits" };

/** The groups of `links` (each {where, kind, links}, strongest first), for the panel. */
export function connectionGroups(node, links, otherEnd, laterName) {
  const groups = new Map();
  for (const link of links) {
    const other = otherEnd(link);
    const where = other.position === node.position ? "same position" : laterName;
    const key = `${where}\u0000${other.kind}`;
    if (!groups.has(key)) groups.set(key, { where, kind: other.kind, links: [] });
    groups.get(key).links.push(link);
  }
  for (const g of groups.values()) g.links.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  const order = (g) => (g.where === "same position" ? 0 : 1) * 10 + KINDS.indexOf(g.kind);
  return [...groups.values()].sort((a, b) => order(a) - order(b));
}

function side(title, node, links, otherEnd, laterName, actions) {
  const div = document.createElement("div");
  div.className = "conn-side";
  const h = document.createElement("h3");
  h.textContent = `${title} (${links.length})`;
  div.append(h);
  let where = null;
  let group = null;
  for (const g of connectionGroups(node, links, otherEnd, laterName)) {
    if (g.where !== where) {
      where = g.where;
      group = document.createElement("div");
      group.className = "conn-group";
      group.dataset.where = where;
      const h4 = document.createElement("h4");
      h4.textContent = where;
      group.append(h4);
      div.append(group);
    }
    const kind = document.createElement("div");
    kind.className = "conn-kind";
    kind.dataset.kind = g.kind;
    kind.dataset.count = String(g.links.length);
    const total = g.links.reduce((s, l) => s + l.weight, 0);
    kind.textContent = `${g.links.length} ${KIND_NAMES[g.kind] || g.kind}, sum ${signed(total)}`;
    const ol = document.createElement("ol");
    for (const link of g.links.slice(0, PER_GROUP)) ol.append(linkItem(link, otherEnd, actions));
    group.append(kind, ol);
  }
  return div;
}

/** Fill the connections panel of the selected node. */
export function renderConnections(model, state, actions) {
  const root = document.getElementById("connections");
  if (!root) return;
  root.replaceChildren();
  const node = state.selectedId ? model.byId.get(state.selectedId) : null;
  if (!node) return;
  root.append(
    side("Inputs", node, node.incoming, (l) => l.source, "earlier positions", actions),
    side("Outputs", node, node.outgoing, (l) => l.target, "later positions", actions),
  );
}
