// The graph as the page uses it: nodes with their kind, layer, position and links, built from
// the server's document (Neuronpedia graph JSON plus sae_circuits fields; for a plain
// Neuronpedia document the server fills those fields in from the node ids).

const KIND_BY_TYPE = {
  "cross layer transcoder": "feature",
  "mlp reconstruction error": "error",
  embedding: "token",
  logit: "logit",
};

function num(value) {
  if (value === null || value === undefined || value === "") return null;
  const x = Number(value);
  return Number.isFinite(x) ? x : null;
}

function safeUrl(url) {
  return typeof url === "string" && url.startsWith("https://") ? url : null;
}

function normalizeNode(raw, promptTokens) {
  // the server gives every node kind, layer_index, feature_index and position (read from the
  // node id in Python for plain Neuronpedia documents): ids are never parsed here
  const kind = typeof raw.kind === "string" ? raw.kind : KIND_BY_TYPE[raw.feature_type] || "feature";
  const position = num(raw.position) ?? num(raw.ctx_idx) ?? 0;
  const layer = num(raw.layer_index);
  const feature = num(raw.feature_index);
  let token = typeof raw.token === "string" ? raw.token : null;
  if (token === null && kind === "token") token = promptTokens[position] ?? null;
  // a custom target (logit difference, direction) is drawn with the logits, labelled
  const target = raw.target_kind === "target" || (kind === "logit" && /^Target: /.test(raw.clerp || ""));
  if (token === null && kind === "logit") {
    const match = target ? /^Target: (.*)$/s.exec(raw.clerp || "") : /^Output "(.*)" \(p=/.exec(raw.clerp || "");
    token = match ? match[1] : String(raw.feature);
  }
  return {
    id: String(raw.node_id),
    kind,
    layer,
    position,
    feature,
    token,
    activation: num(raw.activation),
    influence: num(raw.node_influence),
    cumulative: num(raw.influence),
    probability: kind === "logit" && !target ? num(raw.token_prob) : null,
    target,
    targetValue: num(raw.target_value),
    weight: num(raw.target_weight),
    clerp: kind !== "logit" && typeof raw.clerp === "string" ? raw.clerp : "",
    npUrl: safeUrl(raw.neuronpedia_url),
    incoming: [],
    outgoing: [],
  };
}

function intOrNull(value) {
  const x = num(value);
  return x !== null && Number.isInteger(x) ? x : null;
}

/** The heads that carry a link (its `heads` field, largest |loading| first), or null. */
function normalizeHeads(raw) {
  if (!Array.isArray(raw)) return null;
  const heads = [];
  for (const h of raw) {
    if (!h || typeof h !== "object") continue;
    const share = num(h.share);
    if (share === null) continue;
    const layer = intOrNull(h.layer);
    const head = intOrNull(h.head);
    const direct = layer === null || head === null;
    heads.push({ layer: direct ? null : layer, head: direct ? null : head, loading: num(h.loading), share });
  }
  return heads.length ? heads : null;
}

/** The page's model of a document: {meta, nodes, byId, links, nLayers, promptTokens}. */
export function buildModel(doc) {
  const meta = doc.metadata || {};
  const promptTokens = Array.isArray(meta.prompt_tokens) ? meta.prompt_tokens.map(String) : [];
  const nodes = doc.nodes.map((n) => normalizeNode(n, promptTokens));
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const links = [];
  for (const l of doc.links) {
    const source = byId.get(l.source);
    const target = byId.get(l.target);
    const weight = Number(l.weight);
    if (!source || !target || !Number.isFinite(weight)) continue;
    const link = { source, target, weight, heads: normalizeHeads(l.heads) };
    links.push(link);
    source.outgoing.push(link);
    target.incoming.push(link);
  }
  let nLayers = num((meta.sae_circuits || {}).n_layers);
  if (nLayers === null) {
    // a plain Neuronpedia document: logits sit at layer n_layers + 1
    const logit = doc.nodes.find((n) => n.feature_type === "logit" && num(n.layer) !== null);
    nLayers = logit ? num(logit.layer) - 1 : nodes.reduce((m, n) => (n.layer !== null ? Math.max(m, n.layer + 1) : m), 1);
  }
  return { meta, nodes, byId, links, nLayers, promptTokens };
}

/** Row of a node in the layout: tokens 0, layer l -> l + 1, logits on top. */
export function rowOf(node, nLayers) {
  if (node.kind === "token") return 0;
  if (node.kind === "logit") return nLayers + 1;
  return (node.layer ?? 0) + 1;
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 10 ** -digits || abs >= 10 ** 5)) return x.toExponential(2);
  return x.toFixed(digits);
}

export function signed(x) {
  return (x >= 0 ? "+" : "") + fmt(x);
}

/** A share as a percentage, rounded half away from zero: `61%`, `-12%`, `<1%`. */
export function percent(share) {
  const p = share * 100;
  const r = Math.sign(p) * Math.round(Math.abs(p));
  if (r === 0 && p !== 0) return p < 0 ? "-<1%" : "<1%";
  return `${r === 0 ? 0 : r}%`;
}

/** A head's short name, `L1H2`, or `direct` for the part that goes through no head. */
export function headName(part) {
  return part.layer === null ? "direct" : `L${part.layer}H${part.head}`;
}

/** The parts of a link's head line, in order: `{part, name, share}` (`part` the head part, null
 * for `other`). Parts under half a percent are left out (but the first), and what the listed
 * parts leave of the edge (the parts left out, and those beyond the document's few) is `other`
 * when it is not that small. */
export function headParts(heads) {
  const shown = heads.filter((h, i) => i === 0 || Math.abs(h.share) >= 0.005);
  const parts = shown.map((h) => ({ part: h, name: headName(h), share: percent(h.share) }));
  const rest = 1 - shown.reduce((sum, h) => sum + h.share, 0);
  if (Math.abs(rest) >= 0.005) parts.push({ part: null, name: "other", share: percent(rest) });
  return parts;
}

/** How a link is split over the heads: `L1H2 61%, L1H0 30%, direct 9%` (see headParts). */
export function describeHeads(heads) {
  return headParts(heads)
    .map((p) => `${p.name} ${p.share}`)
    .join(", ");
}

/** The key of a QK attribution: head `layer`/`head` at query `query`, key `key` (positions). */
export function qkKey(layer, head, query, key) {
  return `${layer}/${head}/${query}/${key}`;
}

function qkRows(raw, ends) {
  if (!Array.isArray(raw)) return [];
  const rows = [];
  for (const r of raw) {
    if (!r || typeof r !== "object") continue;
    const row = { contribution: num(r.contribution) };
    for (const [name, prefix] of ends) {
      const id = r[`${prefix}node`];
      if (typeof id !== "string") break;
      row[name] = {
        id,
        kind: typeof r[`${prefix}kind`] === "string" ? r[`${prefix}kind`] : null,
        layer: intOrNull(r[`${prefix}layer`]),
        position: intOrNull(r[`${prefix}position`]),
        feature: intOrNull(r[`${prefix}feature`]),
        token: typeof r[`${prefix}token`] === "string" ? r[`${prefix}token`] : null,
      };
    }
    if (ends.every(([name]) => row[name])) rows.push(row);
  }
  return rows;
}

/** The QK attributions of the server's `api/attention` by qkKey (the first record of a key):
 * {layer, head, query, key, score, pattern, residual, pairs: [{query, key, contribution}],
 * querySide, keySide: [{source, contribution}], with each end {id, kind, layer, position,
 * feature, token}}. */
export function buildAttention(data) {
  const byKey = new Map();
  const records = data && Array.isArray(data.records) ? data.records : [];
  for (const r of records) {
    if (!r || typeof r !== "object") continue;
    const where = ["layer", "head", "query", "key"].map((k) => intOrNull(r[k]));
    if (where.some((v) => v === null)) continue;
    const key = qkKey(...where);
    if (byKey.has(key)) continue;
    const [layer, head, query, keyPos] = where;
    byKey.set(key, {
      layer,
      head,
      query,
      key: keyPos,
      score: num(r.score),
      pattern: num(r.pattern),
      residual: num(r.residual),
      nPairs: intOrNull(r.n_pairs),
      pairs: qkRows(r.pairs, [
        ["query", "query_"],
        ["key", "key_"],
      ]),
      querySide: qkRows(r.query_side, [["source", ""]]),
      keySide: qkRows(r.key_side, [["source", ""]]),
    });
  }
  return byKey;
}

/** A short name: `L2 #17 @3`, `error L2 @3`, `"dallas" @3`, `→ "austin"`. */
export function describe(node) {
  switch (node.kind) {
    case "feature":
      return `L${node.layer} #${node.feature} @${node.position}`;
    case "error":
      return `error L${node.layer} @${node.position}`;
    case "token":
      return `"${node.token ?? "?"}" @${node.position}`;
    default:
      return `→ "${node.token ?? "?"}"`;
  }
}

/** The label shown for a node: the user's, else the automatic one (clerp), else "". */
export function labelOf(node, annotations) {
  const mine = annotations.labels[node.id];
  return typeof mine === "string" && mine ? mine : node.clerp;
}

/** The supernodes (id -> {label, members}) a node belongs to. */
export function supernodesOf(nodeId, annotations) {
  return Object.entries(annotations.supernodes).filter(([, sn]) => sn.members.includes(nodeId));
}

const PALETTE = ["#8a2be2", "#e07b00", "#1b9e77", "#d81b60", "#3f51b5", "#7cb342", "#00838f", "#6d4c41"];

/** A stable colour per supernode id. */
export function colorOf(id) {
  let h = 0;
  for (const ch of id) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}
