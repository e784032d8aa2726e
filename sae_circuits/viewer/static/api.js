// Talking to the viewer server (sae_circuits/viewer/server.py): the graph document and the
// annotations (labels, supernodes, pins). Every call returns parsed JSON or throws ApiError
// with the server's message.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", credentials: "same-origin", ...options });
  } catch (err) {
    throw new ApiError(`the viewer server cannot be reached (${err.message}); is it still running?`, 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status);
  }
  return body;
}

/** The graph document; `thresholds` ({node, edge}) re-prunes the full graph on the server. */
export function fetchGraph(thresholds) {
  const query = new URLSearchParams();
  if (thresholds) {
    query.set("node_threshold", String(thresholds.node));
    query.set("edge_threshold", String(thresholds.edge));
  }
  const qs = query.toString();
  return request(qs ? `api/graph?${qs}` : "api/graph");
}

/** The folder's QK attributions (attention.json): {records: [...]}, empty without the file. */
export function fetchAttention() {
  return request("api/attention");
}

/** The saved annotations: {revision, labels, supernodes, pinned}. */
export function fetchAnnotations() {
  return request("api/annotations");
}

/**
 * Save a patch: {labels: {id: text|null}, supernodes: {id: {label, members}|null},
 * pinned: {add: [...], remove: [...]}}. The server merges it field by field and answers the
 * whole merged document.
 */
export function saveAnnotations(patch) {
  return request("api/annotations", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(patch),
  });
}

/** Whether the server can steer (it was given a model): {enabled, reason, limits}. */
export function steeringStatus() {
  return request("api/steer");
}

/** Run a steering request: {features: [{node_id, value | scale}], freeze_attention, max_new_tokens}. */
export function steer(request_) {
  return request("api/steer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request_),
  });
}

/** Whether the server has feature dashboards: {available, reason, n_files, labels}. */
export function dashboardStatus() {
  return request("api/features");
}

/** One feature's dashboard (the feature file's record, docs/features.md). */
export function fetchFeature(layer, feature) {
  const query = new URLSearchParams({ layer: String(layer), feature: String(feature) });
  return request(`api/feature?${query}`);
}
