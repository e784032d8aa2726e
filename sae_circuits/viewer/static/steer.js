// The steering panel: features (the selected node, the shift-selection, a supernode's members)
// each set to a value or scaled by a multiple, optional frozen attention, and a run on the
// server (POST api/steer: sae_circuits.intervene for the top logits before / after,
// sae_circuits.generate for a short continuation with and without the change). Without a model
// (`sae-circuits serve DIR` alone) the controls are disabled and say why.

import { steer } from "./api.js";
import { describe, fmt } from "./model.js";

const $ = (id) => document.getElementById(id);

/** Wire the panel. `state.steer` = {status, items: [{id, mode, amount}], result, error}. */
export function wireSteering(state, rerender) {
  state.steer = { status: null, items: [], result: null, error: null, running: false };
  const add = (ids) => {
    const have = new Set(state.steer.items.map((it) => it.id));
    for (const id of ids) {
      const node = state.model && state.model.byId.get(id);
      if (!node || node.kind !== "feature" || have.has(id)) continue;
      state.steer.items.push({ id, mode: "scale", amount: 0 });
      have.add(id);
    }
    rerender();
  };
  $("steer-add-selected").addEventListener("click", () => add(state.selectedId ? [state.selectedId] : []));
  $("steer-add-group").addEventListener("click", () => add([...state.grouping]));
  $("steer-supernode").addEventListener("change", () => {
    const sn = state.annotations.supernodes[$("steer-supernode").value];
    $("steer-supernode").value = "";
    if (sn) add(sn.members);
  });
  $("steer-clear").addEventListener("click", () => {
    state.steer.items = [];
    state.steer.result = null;
    rerender();
  });
  $("steer-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const s = state.steer;
    if (!s.items.length || s.running) return;
    s.running = true;
    s.error = null;
    rerender();
    try {
      s.result = await steer({
        features: s.items.map((it) => ({ node_id: it.id, [it.mode]: Number(it.amount) })),
        freeze_attention: $("steer-freeze").checked,
        max_new_tokens: Number($("steer-tokens").value),
      });
    } catch (err) {
      s.result = null;
      s.error = err.message;
    }
    s.running = false;
    rerender();
  });
}

/** Set the server's answer to GET api/steer ({enabled, reason, limits}). */
export function setSteeringStatus(state, status) {
  state.steer.status = status;
  const limits = status && status.limits;
  if (limits) {
    $("steer-tokens").max = String(limits.max_new_tokens);
    $("steer-tokens").value = String(Math.min(8, limits.max_new_tokens));
  }
}

function itemRow(item, node, state, rerender) {
  const li = document.createElement("li");
  li.dataset.node = item.id;
  const name = document.createElement("span");
  name.className = "steer-name";
  name.textContent = node ? describe(node) + (node.clerp ? ` ${node.clerp}` : "") : item.id;
  const mode = document.createElement("select");
  mode.className = "steer-mode";
  mode.setAttribute("aria-label", "how to change the feature");
  for (const [value, text] of [["scale", "× clean"], ["value", "set to"]]) {
    const opt = document.createElement("option");
    opt.value = value;
    opt.textContent = text;
    mode.append(opt);
  }
  mode.value = item.mode;
  mode.addEventListener("change", () => {
    item.mode = mode.value;
  });
  const amount = document.createElement("input");
  amount.className = "steer-amount";
  amount.type = "number";
  amount.step = "any";
  amount.value = String(item.amount);
  amount.setAttribute("aria-label", "value or multiple");
  amount.addEventListener("change", () => {
    item.amount = Number(amount.value);
  });
  const del = document.createElement("button");
  del.type = "button";
  del.className = "steer-remove";
  del.textContent = "×";
  del.title = "remove";
  del.addEventListener("click", () => {
    state.steer.items = state.steer.items.filter((it) => it !== item);
    rerender();
  });
  li.append(name, mode, amount, del);
  return li;
}

function resultView(result) {
  const div = document.createElement("div");
  const table = document.createElement("table");
  table.className = "steer-logits";
  const head = table.createTHead().insertRow();
  for (const h of ["#", "before", "p", "after", "p"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  const body = table.createTBody();
  for (const r of result.top_logits) {
    const row = body.insertRow();
    for (const v of [r.rank, r.before_token, fmt(r.before_probability), r.after_token, fmt(r.after_probability)]) row.insertCell().textContent = String(v);
  }
  const note = document.createElement("p");
  note.className = "hint";
  note.textContent = `${result.n_features} features, attention ${result.freeze_attention ? "frozen" : "live"}, ${fmt(result.seconds, 2)} s`;
  div.append(table, note);
  const gen = result.generation;
  if (gen) {
    const dl = document.createElement("dl");
    dl.className = "steer-generation";
    const text = (t, ids) => (typeof t === "string" ? t : ids.join(" "));
    for (const [name, value, field] of [
      ["clean", text(gen.clean, gen.clean_tokens), "clean"],
      ["steered", text(gen.steered, gen.steered_tokens), "steered"],
    ]) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.dataset.field = field;
      dd.textContent = value;
      dl.append(dt, dd);
    }
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = "continuations: greedy, attention live (generated tokens attend to the changed prompt)";
    div.append(dl, hint);
  }
  return div;
}

/** Render the panel. */
export function renderSteering(model, state, rerender) {
  const s = state.steer;
  if (!s) return;
  const enabled = Boolean(s.status && s.status.enabled);
  const reason = s.status ? s.status.reason : "asking the server whether it has a model…";
  $("steer-status").textContent = enabled ? "Set features to a value or a multiple of their activation, then run." : `Steering is off: ${reason}`;
  $("steer-panel").classList.toggle("disabled", !enabled);
  const sel = $("steer-supernode");
  sel.replaceChildren();
  const first = document.createElement("option");
  first.value = "";
  first.textContent = "add a supernode…";
  sel.append(first);
  for (const [id, sn] of Object.entries(state.annotations.supernodes)) {
    const opt = document.createElement("option");
    opt.value = id;
    opt.textContent = sn.label;
    sel.append(opt);
  }
  const list = $("steer-list");
  list.replaceChildren(...s.items.map((it) => itemRow(it, model.byId.get(it.id), state, rerender)));
  for (const id of ["steer-add-selected", "steer-add-group", "steer-supernode", "steer-freeze", "steer-tokens", "steer-clear"]) $(id).disabled = !enabled;
  $("steer-run").disabled = !enabled || !s.items.length || s.running;
  $("steer-run").textContent = s.running ? "Running…" : "Run";
  const out = $("steer-result");
  out.replaceChildren();
  if (s.error) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = s.error;
    out.append(p);
  } else if (s.result) {
    out.append(resultView(s.result));
  }
}
