// The difference of two graphs (`sae-circuits serve A B`): the server sends the union of both
// documents with each node and link marked `compare` ("a": only in A, "b": only in B, "both"),
// links with weight_a / weight_b and weight = the change (B - A). Here the marks are put on the
// page's model and summed up for the header.

import { fmt } from "./model.js";

function num(x) {
  return typeof x === "number" && Number.isFinite(x) ? x : null;
}

/** Mark `model` (built from `doc`) with the comparison, if the document is one; returns it. */
export function applyCompare(model, doc) {
  const info = ((doc.metadata || {}).viewer || {}).compare || null;
  model.compare = info;
  if (!info) return model;
  doc.nodes.forEach((raw, i) => {
    const node = model.nodes[i];
    if (!node || node.id !== String(raw.node_id)) return;
    node.compare = ["a", "b", "both"].includes(raw.compare) ? raw.compare : null;
    node.activationA = num(raw.activation_a);
  });
  const byKey = new Map(doc.links.map((l) => [`${l.source}\u0000${l.target}`, l]));
  for (const link of model.links) {
    const raw = byKey.get(`${link.source.id}\u0000${link.target.id}`);
    if (!raw) continue;
    link.compare = ["a", "b", "both"].includes(raw.compare) ? raw.compare : null;
    link.weightA = num(raw.weight_a);
    link.weightB = num(raw.weight_b);
  }
  return model;
}

/** One line for the header: what is compared and how many nodes / links differ. */
export function compareSummary(info) {
  const c = info.counts || {};
  const name = (side) => (side && (side.prompt || side.slug)) || "?";
  return (
    `A “${name(info.a)}” vs B “${name(info.b)}”: nodes only in A ${c.nodes_only_a}, only in B ` +
    `${c.nodes_only_b}, in both ${c.nodes_both}; links only in A ${c.links_only_a}, only in B ` +
    `${c.links_only_b}, changed ${c.links_changed} of ${c.links_both}`
  );
}

/** The tooltip line of a compared node. */
export function compareLine(node) {
  if (node.compare === "a") return "only in A";
  if (node.compare === "b") return "only in B";
  if (node.compare === "both" && node.kind === "feature") return `in both: activation A ${fmt(node.activationA)} → B ${fmt(node.activation)}`;
  return node.compare === "both" ? "in both" : null;
}
