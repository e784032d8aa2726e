// The feature dashboard of the details panel: what a feature responds to and what it writes,
// read from the feature files (sae_circuits/features, served by /api/feature): density, the
// activation histogram, the top / bottom logit effects of its decoder and its top activating
// contexts (tokens shaded by activation), then samples from activation quantile bands.
// Labels of the files' index fill in where a node has no automatic label (a user's label still
// wins, see model.js labelOf).

import { fetchFeature } from "./api.js";
import { fmt } from "./model.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const MAX_EXAMPLES = { top: 10, band: 3 };

/** Remember the dashboards' status ({available, reason, labels}) and fill in node labels. */
export function setDashboards(state, status) {
  state.dashboards = { status, records: new Map() };
  if (state.model) applyFileLabels(state.model, status);
}

/** Nodes without an automatic label get the one of their feature's file, if any. */
export function applyFileLabels(model, status) {
  const labels = (status && status.labels) || {};
  for (const node of model.nodes) {
    if (node.kind !== "feature" || node.clerp) continue;
    const label = labels[`${node.layer}_${node.feature}`];
    if (typeof label === "string" && label) {
      node.clerp = label;
      node.clerpFromFile = true;
    }
  }
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function histogram(hist) {
  const counts = hist.counts;
  const edges = hist.bin_edges;
  const width = 260;
  const height = 60;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 12}`);
  svg.setAttribute("class", "fd-histogram");
  svg.setAttribute("role", "img");
  const top = Math.max(1, ...counts);
  const w = width / Math.max(1, counts.length);
  counts.forEach((c, i) => {
    const h = c ? Math.max(1, (height * c) / top) : 0;
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", String(i * w + 0.5));
    r.setAttribute("y", String(height - h));
    r.setAttribute("width", String(Math.max(0.5, w - 1)));
    r.setAttribute("height", String(h));
    r.setAttribute("class", "fd-bar");
    r.dataset.count = String(c);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${fmt(edges[i], 3)} – ${fmt(edges[i + 1], 3)}: ${c} tokens`;
    r.append(title);
    svg.append(r);
  });
  for (const [x, anchor, value] of [[0, "start", edges[0]], [width, "end", edges[edges.length - 1]]]) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", String(x));
    t.setAttribute("y", String(height + 11));
    t.setAttribute("text-anchor", anchor);
    t.setAttribute("class", "fd-axis");
    t.textContent = fmt(value, 3);
    svg.append(t);
  }
  return svg;
}

function logitList(tokens, values, sign) {
  const ol = el("ol", `fd-logits ${sign}`);
  tokens.forEach((tok, i) => {
    const li = el("li");
    li.append(el("span", "fd-token", JSON.stringify(tok)), el("span", `w ${sign}`, fmt(values[i], 3)));
    ol.append(li);
  });
  return ol;
}

function context(example, maxAct) {
  const div = el("div", "fd-context");
  div.dataset.max = String(example.max_act ?? Math.max(...example.tokens_acts_list));
  example.tokens.forEach((tok, i) => {
    const act = example.tokens_acts_list[i];
    const span = el("span", "fd-tok", tok);
    if (act > 0) {
      span.classList.add("active");
      span.style.backgroundColor = `rgba(246, 150, 40, ${Math.min(1, 0.12 + (0.88 * act) / maxAct).toFixed(3)})`;
    }
    if (i === example.train_token_ind) span.classList.add("peak");
    span.title = `${JSON.stringify(tok)}: ${fmt(act, 3)}`;
    span.dataset.act = String(act);
    div.append(span, " ");
  });
  return div;
}

function render(box, record) {
  box.replaceChildren();
  const maxAct = record.act_max > 0 ? record.act_max : 1;
  box.append(el("h3", null, "Feature dashboard"));
  const facts = el("p", "fd-facts");
  facts.dataset.density = String(record.density);
  facts.textContent =
    `density ${(100 * record.density).toPrecision(3)}% of ${record.n_tokens} tokens · ` +
    `max ${fmt(record.act_max, 3)} · mean when active ${fmt(record.mean_act, 3)}`;
  box.append(facts);
  if (record.label) box.append(el("p", "fd-label", `file label: ${record.label}`));
  box.append(el("h4", null, "Activation histogram (active tokens)"), histogram(record.histogram));
  const logits = el("div", "fd-logit-cols");
  const up = el("div");
  up.append(el("h4", null, "Top logit effects"), logitList(record.top_logits, record.top_logit_values, "pos"));
  const down = el("div");
  down.append(el("h4", null, "Bottom logit effects"), logitList(record.bottom_logits, record.bottom_logit_values, "neg"));
  logits.append(up, down);
  box.append(logits);
  for (const [i, band] of record.examples_quantiles.entries()) {
    const section = el("div", "fd-band");
    section.dataset.band = band.quantile_name;
    section.append(el("h4", null, band.quantile_name));
    const shown = band.examples.slice(0, i === 0 ? MAX_EXAMPLES.top : MAX_EXAMPLES.band);
    if (!shown.length) section.append(el("p", "hint", "no contexts"));
    for (const example of shown) section.append(context(example, maxAct));
    box.append(section);
  }
}

/** Show the selected feature's dashboard (fetched once per feature, then kept). */
export function renderDashboard(model, state) {
  const box = $("feature-dashboard");
  const node = state.selectedId ? model.byId.get(state.selectedId) : null;
  const dash = state.dashboards;
  if (!node || node.kind !== "feature" || !dash) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  if (!dash.status.available) {
    box.replaceChildren(el("p", "hint fd-message", dash.status.reason));
    return;
  }
  const key = `${node.layer}_${node.feature}`;
  box.dataset.feature = key;
  const entry = dash.records.get(key);
  if (entry && entry.record) {
    if (box.dataset.shown !== key) {
      render(box, entry.record);
      box.dataset.shown = key;
    }
    return;
  }
  box.dataset.shown = "";
  if (entry && entry.error) {
    box.replaceChildren(el("p", entry.status === 404 ? "hint fd-message" : "fd-message error", entry.error));
    return;
  }
  box.replaceChildren(el("p", "hint", "Loading the feature dashboard…"));
  if (entry) return; // a request is under way
  dash.records.set(key, { pending: true });
  fetchFeature(node.layer, node.feature).then(
    (record) => dash.records.set(key, { record }),
    (err) => dash.records.set(key, { error: err.message, status: err.status }),
  ).then(() => {
    if (state.model && state.selectedId) renderDashboard(state.model, state);
  });
}
