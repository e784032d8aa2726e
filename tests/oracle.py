"""Measured direct effects: the ground truth every attribution change is tested against.

Independently of the library's backward passes, this perturbs one source in a *frozen copy* of the
model, in float64, and measures the change of every target: attention patterns and every norm's
scale are fixed at their clean values, every transcoder output is fixed at its clean value (a skip
connection's linear path stays live), and the source's contribution is added where it writes
(features: ``a_s * W_dec[s]`` at each output layer; errors: the error vector; tokens: the
embedding at ``hook_embed``). Targets are feature pre-activations, demeaned pre-softcap logits
(at any position) and custom targets: ``direction . activation`` at the unembedding's input or at
a hook (the graph's ``metadata["targets"]`` says which).
The method follows ``../shared/reference/verify_edges.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from sae_circuits.graph._graph import AttributionGraph
from sae_circuits.transcoders.sets import TranscoderSet


class FrozenOracle:
    """A float64 frozen copy of ``model`` with ``transcoders`` on ``tokens``."""

    def __init__(
        self,
        model,
        transcoders: TranscoderSet,
        tokens: torch.Tensor,
        *,
        sink: bool = True,
        hooks: tuple[str, ...] = (),
        frozen_heads: dict[int, list[int]] | None = None,
        active: dict[int, torch.Tensor] | None = None,
    ):
        """``active``: per layer, a ``(n, F)`` bool mask of the features the graph's own clean run
        found active (:func:`active_masks`). On real weights a float64 run flips the odd feature
        whose pre-activation lies on its threshold (within rounding) relative to the float32 run
        the graph comes from; such a flip changes that layer's error vector by the feature's
        whole write. With ``active`` the oracle keeps the graph's decision (a flipped-on feature
        gets its float64 pre-activation, what a (JumpReLU) ReLU passes) and records every flip
        in ``self.flips`` as ``(layer, position, feature, float64 pre-activation)``, for the
        caller to check that each is a threshold tie; all values stay float64."""
        self.model = copy.deepcopy(model).to(torch.float64)
        self.model.cfg.dtype = torch.float64
        self.ts = transcoders
        self.tokens = tokens
        self.n = len(tokens)
        self.L = self.model.cfg.n_layers
        d_in = transcoders.d_in
        self.enc, self.b_enc = {}, {}
        for layer in range(self.L):
            F = transcoders.d_sae(layer)
            self.enc[layer] = transcoders.encoder_vectors(layer, torch.arange(F)).detach().double()
            zero = torch.zeros(1, d_in, dtype=transcoders.dtype)
            self.b_enc[layer] = transcoders.pre_activations(layer, zero)[0].detach().double()
        self.cache: dict[str, torch.Tensor] = {}
        self.live: dict[int, torch.Tensor] = {}
        self.hooks = tuple(hooks)  # extra activations to read targets from
        self.frozen_heads = dict(frozen_heads or {})  # layer -> heads whose z stays clean
        self.read_out: dict[str, torch.Tensor] = {}
        # clean run: capture patterns, scales, transcoder inputs and outputs
        with torch.no_grad():
            self._run({}, record=True)
        self.x_clean = {layer: self.cache[f"in{layer}"] for layer in range(self.L)}
        self.acts = {}
        self.flips: list[tuple[int, int, int, float]] = []
        for layer in range(self.L):
            pre = self.x_clean[layer] @ self.enc[layer].T + self.b_enc[layer]
            a = transcoders.activation_fn(layer, pre.float()).double()
            if active is not None:
                mask = active[layer].to(torch.bool)
                flipped = mask != (a != 0)
                if sink:
                    flipped[0] = False
                for pos, f in torch.nonzero(flipped).tolist():
                    self.flips.append((layer, pos, f, float(pre[pos, f])))
                a = torch.where(mask & (a == 0), pre, a) * mask
            if sink:
                a[0] = 0
            self.acts[layer] = a
        self.errors = {}
        for out in range(self.L):
            recon = self.ts.decode(out, {s: self.acts[s].float() for s in range(out + 1)}).double()
            skip = self.ts.skip(out, self.x_clean[out].float())
            if skip is not None:
                recon = recon + self._skip64(out, self.x_clean[out])
            err = self.cache[f"out{out}"] - recon
            if sink:
                err[0] = 0
            self.errors[out] = err
        self.base_pre, self.base_logits = self._frozen({})
        self.base_read = {k: v.clone() for k, v in self.read_out.items()}

    def _skip64(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(x.shape[-1], dtype=self.ts.dtype)
        w_skip_t = self.ts.skip(layer, eye)  # rows of W_skip.T
        assert w_skip_t is not None
        return x @ w_skip_t.double()

    def _sites(self):
        from sae_circuits.core.hooks import resolve_hook

        ins = [resolve_hook(self.model, h) for h in self.ts.input_hooks]
        outs = [resolve_hook(self.model, h) for h in self.ts.output_hooks]
        return ins, outs

    def _run(self, perturb: dict, *, record: bool = False) -> torch.Tensor:
        model = self.model
        modules = dict(model.named_modules())
        handles = []
        ins, outs = self._sites()

        def attach(site, fn):
            mod = modules[site.module_name]
            if site.kind == "pre":
                return mod.register_forward_pre_hook(lambda m, a: (fn(a[0]), *a[1:]))
            return mod.register_forward_hook(lambda m, a, o: fn(o))

        def frozen(name):
            def fn(t):
                if record:
                    self.cache[name] = t.detach().clone()
                    return t
                return self.cache[name]

            return fn

        def read(layer):
            def fn(t):
                if record:
                    self.cache[f"in{layer}"] = t.detach()[0].clone()
                self.live[layer] = t[0]
                return t

            return fn

        def write(layer):
            def fn(t):
                if record:
                    self.cache[f"out{layer}"] = t.detach()[0].clone()
                    return t
                o = self.cache[f"out{layer}"].clone()
                if self.ts.skip(layer, self.x_clean[layer][:1].float()) is not None:
                    o = o + self._skip64(layer, self.live[layer] - self.x_clean[layer])
                if layer in perturb:
                    o = o + perturb[layer]
                return o[None]

            return fn

        def embed(t):
            return t + perturb["embed"][None] if "embed" in perturb else t

        def keep(name):
            def fn(t):
                self.read_out[name] = t.detach()[0].clone()
                return t

            return fn

        try:
            for layer, heads in self.frozen_heads.items():
                name = f"blocks.{layer}.attn.hook_z"

                def freeze_z(m, a, o, name=name, heads=heads):
                    if record:
                        self.cache[name] = o.detach().clone()
                        return o
                    o = o.clone()
                    o[:, :, heads] = self.cache[name][:, :, heads]
                    return o

                handles.append(model.hook_dict[name].register_forward_hook(freeze_z))
            for name, hp in model.hook_dict.items():
                if name.endswith(("hook_pattern", "hook_scale")):
                    handles.append(
                        hp.register_forward_hook(lambda m, a, o, name=name: frozen(name)(o))
                    )
            for layer in range(self.L):
                handles.append(attach(ins[layer], read(layer)))
                handles.append(attach(outs[layer], write(layer)))
            handles.append(
                model.hook_dict["hook_embed"].register_forward_hook(lambda m, a, o: embed(o))
            )
            handles.append(
                model.unembed.register_forward_pre_hook(lambda m, a: keep("unembed")(a[0]))
            )
            from sae_circuits.core.hooks import resolve_hook

            for name in self.hooks:  # after the transcoder hooks: what the frozen model holds
                site = resolve_hook(model, name)
                handles.append(attach(site, lambda t, name=name: keep(name)(t)))
            cap = model.cfg.output_logits_soft_cap
            model.cfg.output_logits_soft_cap = 0.0 if not record else cap
            try:
                logits = model(self.tokens[None])[0]
            finally:
                model.cfg.output_logits_soft_cap = cap
        finally:
            for h in handles:
                h.remove()
        return logits

    def _frozen(self, perturb: dict):
        with torch.no_grad():
            lg = self._run(perturb)
        pre = {
            layer: self.live[layer] @ self.enc[layer].T + self.b_enc[layer]
            for layer in range(self.L)
        }
        return pre, lg - lg.mean(-1, keepdim=True)

    def source_perturbation(self, graph: AttributionGraph, node: int) -> dict:
        row = graph.nodes.iloc[node]
        d = self.model.cfg.d_model
        kind, pos = row["kind"], int(row["position"])
        pert: dict = {}
        if kind == "feature":
            layer, f = int(row["layer"]), int(row["feature"])
            # the graph's own (float32) activation: the edge is linear in it, and an activation
            # that is a small difference of large terms (TopK keeps negative ones) differs from
            # the float64 one in its relative last bits, which would scale the whole column
            a = float(row["activation"]) if "activation" in row else float(self.acts[layer][pos, f])
            a64 = float(self.acts[layer][pos, f])
            assert abs(a - a64) <= 1e-3 * max(abs(a64), 1e-2), (layer, pos, f, a, a64)
            for out in self.ts.output_layers(layer):
                v = torch.zeros(self.n, d, dtype=torch.float64)
                dec = self.ts.decoder_vectors(layer, torch.tensor([f]), out)[0].detach().double()
                v[pos] = a * dec
                pert[out] = v
        elif kind == "error":
            layer = int(row["layer"])
            v = torch.zeros(self.n, d, dtype=torch.float64)
            v[pos] = self.errors[layer][pos]
            pert[layer] = v
        elif kind == "token":
            v = torch.zeros(self.n, d, dtype=torch.float64)
            v[pos] = self.model.W_E[int(row["token_id"])]
            pert["embed"] = v
        else:
            raise ValueError(f"node {node} ({kind}) is not a source")
        return pert

    def measured_column(self, graph: AttributionGraph, node: int) -> np.ndarray:
        """The measured change of every target node when source ``node`` is added."""
        pre, lg = self._frozen(self.source_perturbation(graph, node))
        nodes = graph.nodes
        out = np.zeros(len(nodes))
        described = iter(graph.metadata.get("targets") or [])
        for i, (kind, layer, pos, feat, tok) in enumerate(
            zip(
                nodes["kind"],
                nodes["layer"],
                nodes["position"],
                nodes["feature"],
                nodes["token_id"],
                strict=True,
            )
        ):
            if kind == "feature":
                lyr, p, f = int(layer), int(pos), int(feat)
                out[i] = float(pre[lyr][p, f] - self.base_pre[lyr][p, f])
            elif kind == "logit":
                p, t = int(pos), int(tok)
                out[i] = float(lg[p, t] - self.base_logits[p, t])
                next(described, None)
            elif kind == "target":
                out[i] = self._target_change(next(described), lg)
        return out

    def _target_change(self, target: dict, lg: torch.Tensor) -> float:
        p = int(target["position"])
        if target["kind"] == "logit_diff":
            a, b = target["token_ids"]
            now, base = lg[p, a] - lg[p, b], self.base_logits[p, a] - self.base_logits[p, b]
            return float(now - base)
        site = target["hook"] or "unembed"
        delta = (self.read_out[site][p] - self.base_read[site][p]).reshape(-1)
        return float(delta @ torch.tensor(target["direction"], dtype=torch.float64))


def active_masks(graph: AttributionGraph, transcoders: TranscoderSet) -> dict[int, torch.Tensor]:
    """Per layer, the ``(n, F)`` bool mask of the graph's active features (for ``active=``)."""
    nodes = graph.nodes[graph.nodes["kind"].astype(str) == "feature"]
    n = len(graph.metadata["tokens"])
    out = {}
    for layer in range(transcoders.n_layers):
        sel = nodes[nodes["layer"] == layer]
        mask = torch.zeros(n, transcoders.d_sae(layer), dtype=torch.bool)
        mask[
            torch.tensor(sel["position"].to_numpy(dtype=int)),
            torch.tensor(sel["feature"].to_numpy(dtype=int)),
        ] = True
        out[layer] = mask
    return out


def worst_column_error(graph: AttributionGraph, oracle: FrozenOracle, sources) -> float:
    """Largest ``|graph column - measured| / max|measured|`` over ``sources``."""
    kinds = graph.nodes["kind"].to_numpy()
    is_target = (kinds == "feature") | (kinds == "logit") | (kinds == "target")
    dense_cols = graph.adjacency.tocsc()
    worst = 0.0
    for s in sources:
        measured = oracle.measured_column(graph, int(s))
        col = dense_cols[:, [int(s)]].toarray().ravel()
        scale = max(np.abs(measured[is_target]).max(), 1e-6)
        worst = max(worst, float(np.abs(col[is_target] - measured[is_target]).max() / scale))
    return worst


def sample_sources(
    graph: AttributionGraph, rng: np.random.Generator, n_features: int = 8
) -> list[int]:
    """Some features, error nodes and tokens (not at position 0) to check."""
    nodes = graph.nodes
    pos = nodes["position"].to_numpy(dtype=float, na_value=-1)
    kinds = nodes["kind"].to_numpy()
    feats = np.flatnonzero(kinds == "feature")
    errs = np.flatnonzero((kinds == "error") & (pos > 0))
    toks = np.flatnonzero((kinds == "token") & (pos > 0))
    pick = list(rng.choice(feats, min(n_features, len(feats)), replace=False))
    pick += list(rng.choice(errs, min(3, len(errs)), replace=False))
    pick += list(rng.choice(toks, min(2, len(toks)), replace=False))
    return pick
