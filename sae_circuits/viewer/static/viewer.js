// Entry point of the viewer page: loads the graph and the annotations, wires the controls and
// re-renders on every change. Annotations are saved as patches (only what changed), which the
// server merges, so two tabs editing at once do not overwrite each other.

import { dashboardStatus, fetchAnnotations, fetchAttention, fetchGraph, saveAnnotations, steeringStatus } from "./api.js";
import { applyFileLabels, renderDashboard, setDashboards } from "./dashboard.js";
import { applyCompare, compareSummary } from "./compare.js";
import { MAX_DRAWN_LINKS, drawGraph, revealNode } from "./graph_view.js";
import { buildAttention, buildModel, fmt } from "./model.js";
import { renderDetails, renderQK, renderSelection, renderSupernodes } from "./panels.js";
import { drawSubgraph } from "./subgraph.js";
import { renderConnections } from "./connections.js";
import { wireNavigation } from "./navigation.js";
import { renderSteering, setSteeringStatus, wireSteering } from "./steer.js";

const $ = (id) => document.getElementById(id);

const state = {
  model: null,
  annotations: { revision: 0, labels: {}, supernodes: {}, pinned: [] },
  selectedId: null,
  grouping: new Set(),
  // QK attributions of the folder (attention.json) by qkKey, and the one shown (or null)
  attention: new Map(),
  qkKey: null,
};

function setStatus(text, isError = false) {
  const el = $("save-status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function fatal(message) {
  const el = $("fatal");
  el.textContent = message;
  el.hidden = false;
}

function renderHeader() {
  const { meta } = state.model;
  $("prompt").textContent = typeof meta.prompt === "string" ? meta.prompt : state.model.promptTokens.join("");
  const viewer = meta.viewer || {};
  const t = viewer.thresholds || {};
  if (t.node_threshold !== null && t.node_threshold !== undefined) $("node-threshold").value = String(t.node_threshold);
  if (t.edge_threshold !== null && t.edge_threshold !== undefined) $("edge-threshold").value = String(t.edge_threshold);
  const canReprune = Boolean(viewer.can_reprune);
  for (const id of ["node-threshold", "edge-threshold", "threshold-apply"]) $(id).disabled = !canReprune;
  $("threshold-form").title = canReprune
    ? "Re-prune the full graph: keep the nodes / edges holding this share of the influence on the logits"
    : "This folder has no graph.zip (the full graph), so the thresholds cannot change";
  const sc = meta.sae_circuits || {};
  const parts = [`${state.model.nodes.length} nodes`, `${state.model.links.length} edges`];
  if (sc.n_nodes_before) parts.push(`of ${sc.n_nodes_before} / ${sc.n_edges_before}`);
  if (state.model.links.length > MAX_DRAWN_LINKS) parts.push(`the ${MAX_DRAWN_LINKS} strongest edges drawn (hover a node for all of its own)`);
  const heads = sc.head_loadings || null;
  if (heads && Number.isFinite(Number(heads.n_links))) parts.push(`heads of ${Number(heads.n_links)} edges`);
  if (state.attention.size) parts.push(`QK of ${state.attention.size} heads`);
  const scores = sc.scores || null;
  if (scores) parts.push(`replacement ${fmt(scores.replacement, 2)}`, `completeness ${fmt(scores.completeness, 2)}`);
  $("stats").textContent = parts.join(" · ");
}

function render() {
  const { model } = state;
  if (!model) return;
  if (state.selectedId && !model.byId.has(state.selectedId)) state.selectedId = null;
  renderHeader();
  // the subgraph first: an empty one folds away and gives the main graph its room
  drawSubgraph($("subgraph-svg"), model, state, actions);
  drawGraph($("graph-svg"), model, state, actions);
  renderDetails(model, state, actions);
  renderDashboard(model, state);
  renderConnections(model, state, actions);
  renderSteering(model, state, render);
  $("compare-info").hidden = !model.compare;
  $("compare-info").textContent = model.compare ? compareSummary(model.compare) : "";
  renderQK(model, state, actions);
  renderSelection(model, state);
  renderSupernodes(model, state, actions);
  document.body.dataset.revision = String(state.annotations.revision);
}

async function save(patch) {
  setStatus("Saving…");
  try {
    state.annotations = await saveAnnotations(patch);
    setStatus("Saved");
  } catch (err) {
    setStatus(`Save failed: ${err.message}`, true);
  }
  render();
}

function newSupernodeId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return `sn-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

const actions = {
  select(id, reveal = false) {
    state.selectedId = id;
    render();
    if (reveal) revealNode($("graph-svg"), id);
  },
  showQK(key) {
    state.qkKey = state.attention.has(key) ? key : null;
    render();
    if (state.qkKey) $("qk-panel").scrollIntoView({ block: "nearest" });
  },
  closeQK() {
    state.qkKey = null;
    render();
  },
  toggleGrouping(id) {
    if (state.grouping.has(id)) state.grouping.delete(id);
    else state.grouping.add(id);
    render();
  },
  selectMembers(id) {
    const sn = state.annotations.supernodes[id];
    if (!sn) return;
    state.grouping = new Set(sn.members.filter((m) => state.model.byId.has(m)));
    render();
  },
  renameSupernode(id, label) {
    const sn = state.annotations.supernodes[id];
    const name = label.trim();
    if (!sn || !name) return;
    save({ supernodes: { [id]: { label: name, members: sn.members } } });
  },
  deleteSupernode(id) {
    save({ supernodes: { [id]: null } });
  },
};

function wireControls() {
  $("label-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.selectedId) return;
    const text = $("label-input").value.trim();
    save({ labels: { [state.selectedId]: text || null } });
  });
  $("pin-toggle").addEventListener("click", () => {
    const id = state.selectedId;
    if (!id) return;
    const op = state.annotations.pinned.includes(id) ? "remove" : "add";
    save({ pinned: { [op]: [id] } });
  });
  $("select-toggle").addEventListener("click", () => {
    if (state.selectedId) actions.toggleGrouping(state.selectedId);
  });
  $("supernode-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.grouping.size) return;
    const name = $("supernode-name").value.trim() || `supernode ${Object.keys(state.annotations.supernodes).length + 1}`;
    const members = [...state.grouping];
    state.grouping = new Set();
    $("supernode-name").value = "";
    save({ supernodes: { [newSupernodeId()]: { label: name, members } } });
  });
  $("qk-close").addEventListener("click", () => actions.closeQK());
  $("selection-clear").addEventListener("click", () => {
    state.grouping = new Set();
    render();
  });
  $("threshold-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const node = Number($("node-threshold").value);
    const edge = Number($("edge-threshold").value);
    setStatus("Pruning…");
    try {
      const doc = await fetchGraph({ node, edge });
      state.model = applyCompare(buildModel(doc), doc);
      if (state.dashboards) applyFileLabels(state.model, state.dashboards.status);
      setStatus(`Pruned at ${node} / ${edge}`);
      render();
    } catch (err) {
      setStatus(`Pruning failed: ${err.message}`, true);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.grouping.size) {
      state.grouping = new Set();
      render();
    } else if (event.key === "Escape" && state.qkKey) {
      actions.closeQK();
    }
  });
}

async function init() {
  wireControls();
  wireNavigation(state);
  wireSteering(state, render);
  try {
    const [doc, annotations] = await Promise.all([fetchGraph(null), fetchAnnotations()]);
    state.model = applyCompare(buildModel(doc), doc);
    state.annotations = annotations;
  } catch (err) {
    fatal(`Cannot load the graph: ${err.message}`);
    return;
  }
  if ((state.model.meta.viewer || {}).attention) {
    // the QK attributions are a nicety: the graph is shown without them if they cannot be read
    try {
      state.attention = buildAttention(await fetchAttention());
    } catch (err) {
      setStatus(`QK attributions not loaded: ${err.message}`, true);
    }
  }
  try {
    setDashboards(state, await dashboardStatus());
  } catch (err) {
    setDashboards(state, { available: false, reason: `feature dashboards not loaded: ${err.message}`, labels: {} });
  }
  try {
    setSteeringStatus(state, await steeringStatus());
  } catch (err) {
    setSteeringStatus(state, { enabled: false, reason: `the server did not say (${err.message})`, limits: null });
  }
  render();
  document.body.dataset.ready = "1";
}

init();
