"""The frozen forward pass and the batched backward passes that give attribution rows.

One forward pass of the user's model runs with scoped hooks that make it the prompt's *local
replacement model, frozen*: attention patterns and every norm's scale are detached (constants),
each MLP's output is replaced by its clean value (the transcoder reconstruction plus error) as a
constant, with only a skip transcoder's linear skip path left live. What is left is affine in the
residual stream, so gradients are exact direct effects.

Zero-valued *source leaves* are added at every transcoder output hook and at ``hook_embed``; the
graph is cut at each block's ``hook_resid_pre`` into per-block segments. A batch of targets
(feature encoder directions at their input hook, demeaned unembedding columns at the unembed's
input) is back-propagated segment by segment from the batch's highest layer down, with
``torch.autograd.grad(..., is_grads_batched=True)``: one backward pass per segment for the
whole batch, only through the blocks below the batch's targets, and only a few
``(batch, pos, d_model)`` gradients alive at a time. At each output hook the gradient is
contracted right away with the vectors that sources write there (``a_s * W_dec[s]`` for features,
the error vectors, the token embeddings), giving one dense ``(batch, n_sources)`` block of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from sae_circuits.hooks import HookSite, scoped_hooks
from sae_circuits.replacement import ResolvedTranscoders

__all__ = ["Trace", "trace"]


@dataclass
class _WriterGroup:
    """Sources at some positions, padded so that one ``bmm`` contracts them all.

    ``vecs[i, :, j]`` is what the ``j``-th source at ``positions[i]`` writes (activation included,
    zero padding); ``slots`` are the flat ``(i * K + j)`` places of the real sources and ``cols``
    their source columns.
    """

    positions: torch.Tensor  # (P,)
    vecs: torch.Tensor  # (P, d, K)
    slots: torch.Tensor  # (k,)
    cols: torch.Tensor  # (k,)

    def contract(self, g: torch.Tensor) -> torch.Tensor:
        """``(B, n, d)`` gradients -> ``(B, k)`` direct effects of the sources, ``cols`` order."""
        grads = g[:, self.positions].transpose(0, 1)  # (P, B, d)
        vals = torch.bmm(grads, self.vecs)  # (P, B, K)
        return vals.transpose(0, 1).reshape(g.shape[0], -1)[:, self.slots]


@dataclass
class Trace:
    """The frozen forward pass of one prompt, ready for backward passes.

    Attributes:
        tokens: ``(n,)`` token ids.
        logits: ``(d_vocab,)`` the model's logits at the last position.
        feature_layer, feature_pos, feature_idx: ``(n_active,)`` active features in
            (layer, position, feature) order.
        feature_act: ``(n_active,)`` their activations.
        errors: ``(n_layers, n, d_model)`` error vectors.
        embeds: ``(n, d_model)`` token embeddings (``hook_embed`` values).
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    feature_layer: torch.Tensor
    feature_pos: torch.Tensor
    feature_idx: torch.Tensor
    feature_act: torch.Tensor
    errors: torch.Tensor
    embeds: torch.Tensor
    resolved: ResolvedTranscoders
    # graph pieces
    _x_in: list[torch.Tensor]
    _seg_in: list[torch.Tensor]
    _seg_out: list[torch.Tensor]
    _out_src: list[torch.Tensor]
    _embed_src: torch.Tensor
    _embed_out: torch.Tensor
    _writers: list[list[_WriterGroup]]
    _unembed: torch.Tensor  # (d_model, d_vocab)

    @property
    def n_layers(self) -> int:
        return len(self._x_in)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_active(self) -> int:
        return int(self.feature_idx.shape[0])

    @property
    def n_sources(self) -> int:
        """Columns of a row: active features, then errors (layer-major), then tokens."""
        return self.n_active + (self.n_layers + 1) * self.n_pos

    def encoder_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """Encoder directions ``(k, d_in)`` of the active features ``rows``."""
        ts = self.resolved.transcoders
        out = torch.empty(len(rows), ts.d_in, dtype=self._x_in[0].dtype, device=self.errors.device)
        layers = self.feature_layer[rows]
        for layer in layers.unique().tolist():
            mask = layers == layer
            vecs = ts.encoder_vectors(int(layer), self.feature_idx[rows[mask]].to(ts.device))
            out[mask] = vecs.detach().to(out.device, out.dtype)
        return out

    def logit_vectors(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Demeaned unembedding columns ``(k, d_model)`` of ``token_ids``."""
        w = self._unembed
        return (w[:, token_ids.to(w.device)] - w.mean(dim=1, keepdim=True)).T

    def rows(
        self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Direct effects of every source on a batch of targets.

        Args:
            layers: ``(B,)`` target layer; ``n_layers`` for a logit (injected at the unembed input).
            positions: ``(B,)`` target position.
            vectors: ``(B, d)`` the target's direction (encoder vector or demeaned unembedding).

        Returns:
            ``(B, n_sources)`` rows, columns as in :attr:`n_sources`.
        """
        n_layers, n, n_active = self.n_layers, self.n_pos, self.n_active
        device = self.errors.device
        layers, positions = layers.to(device), positions.to(device)
        vectors = vectors.to(device)
        batch = len(layers)
        out = torch.zeros(batch, self.n_sources, dtype=self.errors.dtype, device=device)
        bidx = torch.arange(batch, device=device)
        top = int(layers.max())
        grad: torch.Tensor | None = None
        for layer in range(min(top, n_layers - 1), -1, -1):
            outputs, grad_outputs = [], []
            seg_grad = grad
            if layer == n_layers - 1 and (layers == n_layers).any():
                mask = layers == n_layers
                inject = torch.zeros(
                    (batch, *self._seg_out[layer].shape), dtype=vectors.dtype, device=device
                )
                inject[bidx[mask], 0, positions[mask]] = vectors[mask]
                seg_grad = inject if seg_grad is None else seg_grad + inject
            if seg_grad is not None:
                outputs.append(self._seg_out[layer])
                grad_outputs.append(seg_grad.to(self._seg_out[layer].dtype))
            mask = layers == layer
            if mask.any():
                inject = torch.zeros(
                    (batch, *self._x_in[layer].shape), dtype=vectors.dtype, device=device
                )
                inject[bidx[mask], 0, positions[mask]] = vectors[mask]
                outputs.append(self._x_in[layer])
                grad_outputs.append(inject.to(self._x_in[layer].dtype))
            if not outputs:
                continue
            g_in, g_src = torch.autograd.grad(
                outputs,
                [self._seg_in[layer], self._out_src[layer]],
                grad_outputs,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            if g_src is not None:
                g = g_src[:, 0].to(out.dtype)  # (B, n, d)
                for group in self._writers[layer]:
                    out.index_add_(1, group.cols, group.contract(g))
                base = n_active + layer * n
                out[:, base : base + n] = torch.einsum("bnd,nd->bn", g, self.errors[layer])
            grad = g_in
        if grad is not None:
            (g_embed,) = torch.autograd.grad(
                [self._embed_out],
                [self._embed_src],
                [grad],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            if g_embed is not None:
                base = n_active + n_layers * n
                out[:, base : base + n] = torch.einsum(
                    "bnd,nd->bn", g_embed[:, 0].to(out.dtype), self.embeds
                )
        return out


def trace(
    model: HookedTransformer,
    tokens: torch.Tensor,
    resolved: ResolvedTranscoders,
    *,
    attention_sink: bool = True,
) -> Trace:
    """Run the frozen forward pass of ``tokens`` and collect what backward passes need.

    Args:
        model: The user's model (only scoped hooks are added).
        tokens: ``(n,)`` token ids.
        resolved: Transcoders checked against the model.
        attention_sink: Zero the features and error vectors at position 0.

    Returns:
        A :class:`Trace`.

    Raises:
        FloatingPointError: A non-finite activation (named by hook) in the forward pass.
    """
    ts = resolved.transcoders
    n_layers, n = model.cfg.n_layers, int(tokens.shape[0])
    dtype = model.cfg.dtype
    device = model.W_E.device
    d_model = model.cfg.d_model

    def leaf(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=device, requires_grad=True)

    out_src = [leaf((1, n, d_model)) for _ in range(n_layers)]
    embed_src = leaf((1, n, d_model))
    x_in: list[torch.Tensor | None] = [None] * n_layers
    mlp_out: list[torch.Tensor | None] = [None] * n_layers
    seg_in: list[torch.Tensor | None] = [None] * n_layers
    seg_out: list[torch.Tensor | None] = [None] * n_layers
    box: dict[str, torch.Tensor] = {}

    def freeze(t: torch.Tensor) -> torch.Tensor:
        return t.detach()

    def embed_hook(t: torch.Tensor) -> torch.Tensor:
        box["embeds"] = t.detach()[0].clone()
        return t.detach() + embed_src

    def cut(layer: int):
        def fn(t: torch.Tensor) -> torch.Tensor:
            if layer == 0:
                box["embed_out"] = t
            else:
                seg_out[layer - 1] = t
            new = t.detach().requires_grad_(True)
            seg_in[layer] = new
            return new

        return fn

    def read(layer: int):
        def fn(t: torch.Tensor) -> None:
            x_in[layer] = t

        return fn

    def write(layer: int):
        def fn(t: torch.Tensor) -> torch.Tensor:
            mlp_out[layer] = t.detach()
            new = t.detach() + out_src[layer]
            x = x_in[layer]
            if ts.has_skip and x is not None:
                skip = ts.skip(layer, x[0])
                if skip is not None:
                    skip = skip.to(t.dtype)
                    new = new + (skip - skip.detach())
            return new

        return fn

    def unembed_in(t: torch.Tensor) -> None:
        seg_out[n_layers - 1] = t

    hooks: list[tuple[HookSite | str, object]] = []
    for name in model.hook_dict:
        if name.endswith(("hook_pattern", "hook_scale")):
            hooks.append((name, freeze))
    hooks.append(("hook_embed", embed_hook))
    hooks += [(f"blocks.{layer}.hook_resid_pre", cut(layer)) for layer in range(n_layers)]
    hooks += [(site, read(layer)) for layer, site in enumerate(resolved.inputs)]
    hooks += [(site, write(layer)) for layer, site in enumerate(resolved.outputs)]
    hooks.append((HookSite("unembed.input", None, "unembed", "pre"), unembed_in))

    with torch.enable_grad(), scoped_hooks(model, hooks):  # type: ignore[arg-type]
        logits = model(tokens[None].to(device), return_type="logits")[0, -1].detach()

    missing = [layer for layer in range(n_layers) if x_in[layer] is None or mlp_out[layer] is None]
    if missing or any(s is None for s in seg_out):
        raise RuntimeError(f"transcoder hooks did not fire for layers {missing}")
    acts_by_layer: dict[int, torch.Tensor] = {}
    f_layer, f_pos, f_idx, f_act = [], [], [], []
    for layer in range(n_layers):
        x = x_in[layer]
        assert x is not None
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                f"non-finite values at {resolved.inputs[layer].name} (layer {layer} transcoder input)"
            )
        with torch.no_grad():
            pre = ts.pre_activations(layer, x.detach()[0].to(ts.device))
            acts = ts.activation_fn(layer, pre)
        if not torch.isfinite(acts).all():
            raise FloatingPointError(f"non-finite feature activations at layer {layer}")
        if attention_sink:
            acts[0] = 0
        sparse = acts.to_sparse().coalesce()
        acts_by_layer[layer] = sparse
        pos, feat = sparse.indices()
        f_layer.append(torch.full_like(pos, layer))
        f_pos.append(pos)
        f_idx.append(feat)
        f_act.append(sparse.values())

    errors = torch.empty(n_layers, n, d_model, dtype=dtype, device=device)
    with torch.no_grad():
        for layer in range(n_layers):
            recon = ts.decode(layer, acts_by_layer).to(dtype)
            x = x_in[layer]
            assert x is not None
            skip = ts.skip(layer, x.detach()[0])
            if skip is not None:
                recon = recon + skip.to(dtype)
            out = mlp_out[layer]
            assert out is not None
            if not torch.isfinite(out).all():
                raise FloatingPointError(f"non-finite values at {resolved.outputs[layer].name}")
            errors[layer] = out[0] - recon
    if not torch.isfinite(logits).all():
        raise FloatingPointError(
            "non-finite logits: the model's output is not finite on this prompt"
        )
    if attention_sink:
        errors[:, 0] = 0

    feature_layer = torch.cat(f_layer).cpu()
    feature_pos = torch.cat(f_pos).cpu()
    feature_idx = torch.cat(f_idx).cpu()
    feature_act = torch.cat(f_act).to(dtype).cpu()

    writers = []
    with torch.no_grad():
        for out_layer in range(n_layers):
            cols, vecs, poss = [], [], []
            for src in range(out_layer + 1):
                if out_layer not in ts.output_layers(src):
                    continue
                sel = torch.nonzero(feature_layer == src).flatten()
                if len(sel) == 0:
                    continue
                dec = ts.decoder_vectors(src, feature_idx[sel].to(ts.device), out_layer)
                act = feature_act[sel, None].to(device)
                vecs.append(dec.to(device, dtype) * act)
                cols.append(sel.to(device))
                poss.append(feature_pos[sel])
            writers.append(_group_by_position(cols, vecs, poss))

    embed_out = box["embed_out"]
    return Trace(
        tokens=tokens.cpu(),
        logits=logits.cpu(),
        feature_layer=feature_layer,
        feature_pos=feature_pos,
        feature_idx=feature_idx,
        feature_act=feature_act,
        errors=errors,
        embeds=box["embeds"],
        resolved=resolved,
        _x_in=[x for x in x_in if x is not None],
        _seg_in=[s for s in seg_in if s is not None],
        _seg_out=[s for s in seg_out if s is not None],
        _out_src=out_src,
        _embed_src=embed_src,
        _embed_out=embed_out,
        _writers=writers,
        _unembed=model.W_U.detach(),
    )


def _group_by_position(
    cols: list[torch.Tensor], vecs: list[torch.Tensor], poss: list[torch.Tensor]
) -> list[_WriterGroup]:
    """Pad the sources of one output layer into groups of positions of similar counts.

    Positions are sorted by how many sources they hold; a new group starts when the count
    falls below half the group's largest, so padding at most doubles the work.
    """
    if not cols:
        return []
    c, v, p = torch.cat(cols), torch.cat(vecs), torch.cat(poss).to(vecs[0].device)
    order = torch.sort(p, stable=True).indices
    c, v, p = c[order], v[order], p[order]
    uniq, counts = torch.unique_consecutive(p, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    by_count = torch.argsort(counts, descending=True, stable=True).tolist()
    groups, current = [], []
    for i in by_count:
        if current and int(counts[i]) * 2 < int(counts[current[0]]):
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    out = []
    d = v.shape[1]
    for members in groups:
        width = int(counts[members[0]])
        padded = torch.zeros(len(members), width, d, dtype=v.dtype, device=v.device)
        slots, gcols = [], []
        for row, i in enumerate(members):
            lo, k = int(starts[i]), int(counts[i])
            padded[row, :k] = v[lo : lo + k]
            slots.append(torch.arange(row * width, row * width + k))
            gcols.append(c[lo : lo + k])
        out.append(
            _WriterGroup(
                positions=uniq[members].to(v.device),
                vecs=padded.transpose(1, 2).contiguous(),
                slots=torch.cat(slots).to(v.device),
                cols=torch.cat(gcols),
            )
        )
    return out
