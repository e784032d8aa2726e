"""The hooks of intervened runs and generation steps, on the replacement model's semantics.

The clean run records what the intervened runs hold fixed: each transcoder's input and output,
the clean reconstruction, attention patterns and norm scales. The hooks of an intervened run
write, at every transcoder output hook and every position of the clean run,

    clean_out + (decoder writes now - clean decoder writes) + (skip(x) - clean skip)

which is the replacement model with the error term frozen at its clean value (``clean_out`` is
the clean reconstruction plus the clean error). In the ``"replacement"`` mode the decoder writes
are those of the live activations (downstream features respond) with the interventions applied;
in the ``"direct"`` mode only the intervened features' writes change, by
``(new - clean activation) * decoder`` at every layer they write to, so every other transcoder
output keeps its clean value. Where nothing changed, the clean values pass bit for bit. At
positions past the clean run (generated tokens) the model's own MLP output is kept and only the
intervened features' changes of their decoder writes are added.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.hooks import HookSite
from sae_circuits.interventions._inputs import as_tensor
from sae_circuits.replacement_model import CleanRun, ReplacementSemantics, clean_run, unembed_site
from sae_circuits.transcoders import ResolvedTranscoders

__all__ = [
    "CleanRun",
    "Plan",
    "Recorded",
    "clean_run",
    "intervened_hooks",
    "make_plan",
    "step_hooks",
]

Mode = Literal["replacement", "direct"]


# --------------------------------------------------------------------------------------------
# plans and hooks


@dataclass
class Plan:
    """Resolved interventions, per layer, as tensors on the transcoders' device.

    Attributes:
        at: ``layer -> (positions, features, values)`` set values at prompt positions.
        generated: ``layer -> (features, values, scales)`` feature-wise interventions applied at
            generated positions (NaN where not given).
        table: The parsed table with the resolved ``new`` value and ``clean`` activation.
    """

    at: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    generated: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )
    table: pd.DataFrame | None = None


def make_plan(
    table: pd.DataFrame, clean: CleanRun, resolved: ResolvedTranscoders, *, generated: bool = False
) -> Plan:
    """Resolve ``scale`` rows to set values (``scale * clean activation``), group by layer."""
    ts = resolved.transcoders
    plan = Plan()
    out = table.copy()
    clean_acts = np.zeros(len(table))
    new = np.zeros(len(table))
    layers = table["layer"].to_numpy(dtype=np.int64)
    positions = table["position"].to_numpy(dtype=np.int64)
    features = table["feature"].to_numpy(dtype=np.int64)
    values = table["value"].to_numpy(dtype=np.float64)
    scales = table["scale"].to_numpy(dtype=np.float64)
    for layer in sorted(set(layers.tolist())):
        idx = np.flatnonzero(layers == layer)
        pos = as_tensor(positions[idx], ts.device)
        feat = as_tensor(features[idx], ts.device)
        a = clean.activation(layer, pos, feat).double().cpu().numpy()
        value, scale = values[idx], scales[idx]
        v = np.where(np.isnan(value), scale * a, value)
        clean_acts[idx] = a
        new[idx] = v
        plan.at[layer] = (pos, feat, as_tensor(v, ts.device, ts.dtype))
        if generated:
            # feature-wise: the intervention at the latest prompt position wins
            latest: dict[int, tuple[float, float]] = {}
            for i in np.argsort(positions[idx], kind="stable").tolist():
                latest[int(features[idx[i]])] = (float(value[i]), float(scale[i]))
            vals = np.array(list(latest.values()), dtype=np.float64).reshape(-1, 2)
            plan.generated[layer] = (
                as_tensor(list(latest), ts.device),
                as_tensor(vals[:, 0], ts.device, ts.dtype),
                as_tensor(vals[:, 1], ts.device, ts.dtype),
            )
    out["clean_activation"] = clean_acts
    out["new_activation"] = new
    plan.table = out
    return plan


@dataclass
class Recorded:
    """Filled by an intervened run: reported activations, target pre-activations and the
    activations that graph targets read (by hook name, batch dimension dropped)."""

    acts: dict[int, torch.Tensor] = field(default_factory=dict)
    pre: dict[int, torch.Tensor] = field(default_factory=dict)
    logits_presoftcap: torch.Tensor | None = None
    reads: dict[str, torch.Tensor] = field(default_factory=dict)


def intervened_hooks(
    model: HookedTransformer,
    resolved: ResolvedTranscoders,
    clean: CleanRun,
    plan: Plan,
    *,
    mode: Mode,
    freeze: bool,
    targets: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    record: Recorded,
    reads: Sequence[HookSite | str] = (),
) -> list[tuple[HookSite | str, Any]]:
    """Hooks that run the prompt (all positions of ``clean``) with ``plan`` applied; ``reads``
    are recorded (after every other hook on their site) into ``record.reads``."""
    ts = resolved.transcoders
    sem = ReplacementSemantics(ts)
    live_x: dict[int, torch.Tensor] = {}
    decoded: dict[int, torch.Tensor] = {}
    changed: dict[int, bool] = {}

    def frozen(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(t: torch.Tensor) -> torch.Tensor:
            return clean.frozen[name].to(t.dtype)

        return fn

    def read(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(t: torch.Tensor) -> None:
            x = t.detach()[0]
            live_x[layer] = x
            same_x = torch.equal(x, clean.x_in[layer])
            inter = plan.at.get(layer)
            if same_x and inter is None and layer not in targets:
                acts = clean.acts[layer]
                record.acts[layer] = acts
                decoded[layer] = acts
                changed[layer] = False
                return
            pre = sem.pre_activations(layer, x)
            if layer in targets:
                tp, tf = targets[layer]
                record.pre[layer] = pre[tp, tf].detach()
            acts = sem.activations(layer, pre)
            if inter is not None:
                pos, feat, value = inter
                acts = acts.clone()
                acts[pos, feat] = value.to(acts.dtype)
            sparse = acts.to_sparse().coalesce()
            record.acts[layer] = sparse
            if mode == "direct":
                changed[layer] = inter is not None
            else:
                changed[layer] = inter is not None or not same_x
                decoded[layer] = sparse if changed[layer] else clean.acts[layer]

        return fn

    def write(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(t: torch.Tensor) -> torch.Tensor:
            sources = ts.source_layers(layer)
            decoded_now = change = None
            if any(changed.get(s, False) for s in sources):
                if mode == "direct":
                    change = _decoder_change(sem, clean, plan, sources, layer)
                else:
                    decoded_now = sem.decode(layer, decoded)
            x = live_x[layer]
            new = sem.frozen_output(
                layer,
                clean,
                x=None if torch.equal(x, clean.x_in[layer]) else x,
                decoded=decoded_now,
                decoded_change=change,
            )
            return new[None].to(t.dtype)

        return fn

    def unembed(t: torch.Tensor) -> None:
        record.logits_presoftcap = t.detach()[0, -1].clone()

    hooks: list[tuple[HookSite | str, Any]] = []
    if freeze:
        hooks += [(name, frozen(name)) for name in clean.frozen]
    hooks += [(site, read(layer)) for layer, site in enumerate(resolved.inputs)]
    hooks += [(site, write(layer)) for layer, site in enumerate(resolved.outputs)]
    hooks.append((unembed_site(), unembed))
    for site in reads:
        name = site.name if isinstance(site, HookSite) else site
        hooks.append((site, lambda t, name=name: record.reads.__setitem__(name, t.detach()[0])))
    return hooks


def _decoder_change(
    sem: ReplacementSemantics,
    clean: CleanRun,
    plan: Plan,
    sources: list[int],
    out_layer: int,
) -> torch.Tensor:
    """``sum (new - clean) * decoder`` over the intervened features writing to ``out_layer``."""
    ref = clean.out[out_layer]
    dtype = torch.promote_types(ref.dtype, torch.float32)
    total = None
    for s in sources:
        if s not in plan.at:
            continue
        pos, feat, value = plan.at[s]
        change = value.to(dtype) - clean.activation(s, pos, feat).to(dtype)
        part = sem.decoder_change(s, out_layer, pos, feat, change, n=ref.shape[0], dtype=dtype)
        total = part if total is None else total + part
    assert total is not None
    return total.to(ref.device, ref.dtype)


def step_hooks(resolved: ResolvedTranscoders, plan: Plan) -> list[tuple[HookSite | str, Any]]:
    """Hooks for a generation step at generated positions: feature-wise interventions only.

    The model's own MLP output is kept; each intervened feature adds ``(new - live) * decoder``
    where ``live`` is its activation from the live input and ``new`` the set value, or
    ``scale * live``.
    """
    ts = resolved.transcoders
    sem = ReplacementSemantics(ts)
    delta: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def read(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(t: torch.Tensor) -> None:
            feat, value, scale = plan.generated[layer]
            acts = sem.features(layer, t.detach()[0])
            live = acts[:, feat]  # (k, m)
            new = torch.where(torch.isnan(value), scale * live, value.expand_as(live))
            delta[layer] = (feat, new - live)

        return fn

    def write(layer: int) -> Callable[[torch.Tensor], torch.Tensor | None]:
        sources = [s for s in ts.source_layers(layer) if s in plan.generated]

        def fn(t: torch.Tensor) -> torch.Tensor | None:
            total = None
            for s in sources:
                feat, d = delta[s]
                add = sem.decoder_change(s, layer, None, feat, d).to(t.device, t.dtype)
                total = add if total is None else total + add
            return None if total is None else t + total[None]

        return fn

    hooks: list[tuple[HookSite | str, Any]] = []
    writes = {out for s in plan.generated for out in ts.output_layers(s)}
    for layer in sorted(plan.generated):
        hooks.append((resolved.inputs[layer], read(layer)))
    for layer in sorted(writes):
        hooks.append((resolved.outputs[layer], write(layer)))
    return hooks
