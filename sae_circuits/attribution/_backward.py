"""The frozen forward pass and the batched backward passes that give attribution rows.

A clean forward pass of the user's model (scoped hooks, no gradients) records what the *local
replacement model, frozen* holds fixed: every attention pattern, every norm's scale, each block's
input, each transcoder's input and output. Each block is then *replayed* as a function of its
input and of a zero *source* added at its transcoder output hook, with the recorded patterns and
scales substituted, the MLP output replaced by its clean value (only a skip transcoder's linear
skip path left live) and ``z = pattern @ v`` given a fast batched backward
(``_frozen_attention``). That function is affine, so its vector-Jacobian product, taken once per
block with ``torch.func.vjp``, gives exact direct effects. For the block shapes it knows
(pre-norm blocks in float32/float64, the transcoder hooks of the public releases) the same
transpose is applied as explicit batched matrix products instead (``_transpose``: no autograd
engine per slice, every product on the slice's causal cone of positions); each such transpose is
checked once per trace against the block's VJP on random directions, and a block that disagrees
or is of another shape keeps the VJP.

A batch of targets (feature encoder directions at their input hook, demeaned unembedding columns at
the unembedding's input) is propagated block by block from the batch's highest layer down, with
``torch.func.vmap`` over the block's VJP: the batch never touches blocks above its targets, the
forward pass is never replicated, and only a few ``(batch, pos, d_model)`` gradients are alive at
a time. At each output hook the gradient is contracted right away with what each source writes
there (``a_s * W_dec[s]`` for features, the error vectors, the token embeddings), giving one dense
block of rows per slice of targets, without the feature columns at or above the slice's top layer
(they cannot be sources). The whole computation runs under ``torch.no_grad()`` outside the function
transforms, so that no autograd graph of the backward itself is recorded.

**Precision.** The backward passes run in the model's dtype (bfloat16 or float16 models stay in
their dtype, with their memory); every row is *accumulated* in float32 (float64 for a float64
model): the gradients are cast up before they are contracted with the sources' writes, which are
kept in float32, and rows are stored in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any

import torch
from torch.func import vjp, vmap
from transformer_lens import HookedTransformer

from sae_circuits.attribution._frozen_attention import frozen_mix
from sae_circuits.attribution._transpose import BlockTranspose, block_transpose, check_transpose
from sae_circuits.core.hooks import HookSite, scoped_hooks
from sae_circuits.graph import NodeLayout
from sae_circuits.replacement_model import CleanRun, ReplacementSemantics, clean_run
from sae_circuits.transcoders import ResolvedTranscoders

__all__ = ["RowSlice", "Trace", "trace"]

logger = logging.getLogger(__name__)


#: How many times smaller the table form of a layer's writers must be to be used (else the
#: vectors are stored: no gather per slice).
_TABLE_GAIN = 2.0
#: Most bytes of gathered decoder vectors :meth:`_WriterGroup.contract` holds at once.
_GATHER_BYTES = 1 << 25


@dataclass
class _WriterGroup:
    """Sources at some positions, padded so that one ``bmm`` contracts them all.

    What the ``j``-th source at ``positions[i]`` writes (activation included, zero padding) is
    either stored, ``vecs[i, :, j]``, or gathered when needed, ``acts[i, j] * table[ids[i, j]]``
    (the *table form*: one decoder vector per distinct feature, shared by the positions it is
    active at; a long prompt's features repeat, so this is what keeps the trace's memory bounded
    by the transcoders' width rather than by the number of active features). ``positions`` are
    ascending; ``slots`` are the flat ``(i * K + j)`` places of the real sources (ascending) and
    ``cols`` their source columns.
    """

    positions: torch.Tensor  # (P,)
    slots: torch.Tensor  # (k,)
    cols: torch.Tensor  # (k,)
    vecs: torch.Tensor | None = None  # (P, d, K)
    table: torch.Tensor | None = None  # (U, d)
    ids: torch.Tensor | None = None  # (P, K) rows of table
    acts: torch.Tensor | None = None  # (P, K)

    @property
    def width(self) -> int:
        """``K``, the padded number of sources per position."""
        ref = self.vecs if self.vecs is not None else self.ids
        assert ref is not None
        return int(ref.shape[-1])

    def contract(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, m, d)`` gradients on the first ``m`` positions -> the direct effects of the
        sources at those positions: ``(cols, (B, k') values)``."""
        m, k_w = int(g.shape[1]), self.width
        p = int(torch.searchsorted(self.positions, m))  # positions < m
        if p == 0:
            return self.cols[:0], g.new_zeros(g.shape[0], 0)
        n_slots = int(torch.searchsorted(self.slots, p * k_w))
        grads = g[:, self.positions[:p]].transpose(0, 1)  # (p, B, d)
        if self.vecs is not None:
            vals = torch.bmm(grads, self.vecs[:p])  # (p, B, K)
        else:
            assert self.table is not None and self.ids is not None and self.acts is not None
            d = int(self.table.shape[1])
            step = max(1, _GATHER_BYTES // (k_w * d * self.table.element_size()))
            vals = g.new_empty(p, g.shape[0], k_w)
            for a in range(0, p, step):
                b = min(p, a + step)
                vecs = self.table[self.ids[a:b]] * self.acts[a:b, :, None]  # (b-a, K, d)
                torch.bmm(grads[a:b], vecs.transpose(1, 2), out=vals[a:b])
        flat = vals.transpose(0, 1).reshape(g.shape[0], -1)
        return self.cols[:n_slots], flat[:, self.slots[:n_slots]]


@dataclass
class Trace:
    """The frozen forward pass of one prompt, ready for backward passes.

    Attributes:
        tokens: ``(n,)`` token ids.
        logits: ``(d_vocab,)`` the model's logits at the last position.
        feature_layer, feature_pos, feature_idx: ``(n_active,)`` active features in
            (layer, position, feature) order.
        feature_act: ``(n_active,)`` their activations.
        errors: ``(n_layers, n, d_model)`` error vectors (in the accumulation dtype: float32,
            or float64 for a float64 model).
        embeds: ``(n, d_model)`` token embeddings (``hook_embed`` values, accumulation dtype).
        dtype: The model's dtype, in which the backward passes run.
        encoders: ``(u, d_in)`` the encoder rows of the ``u`` distinct active (layer, feature)
            pairs (the model's device, its dtype): with the decoder rows kept in the writers,
            all a trace needs of the transcoders, so that it holds no reference to them. One
            row per distinct feature, not per active (feature, position): on a long prompt
            features repeat, and this keeps the trace within the transcoders' own size.
        encoder_index: ``(n_active,)`` each active feature's row of ``encoders``.
        transcoders_info: The transcoders' ``describe()``.
        final: ``(n, d_model)`` the unembedding's input (after the final norm).
        x_in: Per layer, ``(n, d_in)`` the clean transcoder input.
        extra_values: Hook name -> ``(n, ...)`` clean activation of each extra target hook.
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    dtype: torch.dtype
    feature_layer: torch.Tensor
    feature_pos: torch.Tensor
    feature_idx: torch.Tensor
    feature_act: torch.Tensor
    errors: torch.Tensor
    embeds: torch.Tensor
    final: torch.Tensor
    x_in: list[torch.Tensor]
    extra_values: dict[str, torch.Tensor]
    encoders: torch.Tensor
    encoder_index: torch.Tensor
    transcoders_info: dict[str, Any]
    _vjps: list[Callable]  # per block: (d out, d x_in) -> (d block input, d source)
    _transposes: list[BlockTranspose | None]  # per block: its explicit transpose, if known
    _out_shapes: list[torch.Size]  # per block: its output (the unembed input for the last)
    _in_shapes: list[torch.Size]  # per block: the transcoder input
    _writers: list[list[_WriterGroup]]
    _patterns: list[torch.Tensor | None]  # per block: the clean (frozen) attention pattern
    _extras: list[list[str]]  # per block: target hooks returned as extra outputs
    _extra_shapes: list[list[torch.Size]]
    _unembed: torch.Tensor  # (d_model, d_vocab)
    _chunk: int | None  # targets per backward slice (memory bound for long prompts)

    @property
    def n_layers(self) -> int:
        return len(self._vjps)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_active(self) -> int:
        return int(self.feature_idx.shape[0])

    @property
    def n_sources(self) -> int:
        """Columns of a row: active features, then errors (layer-major), then tokens."""
        return NodeLayout.n_sources(self.n_active, self.n_layers, self.n_pos)

    def frozen_pattern(self, layer: int) -> torch.Tensor:
        """``(n_heads, n, n)`` the clean attention pattern of ``layer`` (what the trace freezes).

        Raises:
            ValueError: The block's attention records no ``hook_pattern``.
        """
        pattern = self._patterns[layer]
        if pattern is None:
            raise ValueError(f"block {layer} has no attention pattern hook (hook_pattern)")
        return pattern[0]

    def encoder_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """Encoder directions ``(k, d_in)`` of the active features ``rows``."""
        return self.encoders[self.encoder_index[rows.cpu()].to(self.encoders.device)]

    @cached_property
    def _unembed_mean(self) -> torch.Tensor:
        """``(d_model, 1)`` the mean unembedding column (one pass over ``W_U``, kept: a logit
        target in a loop would otherwise read the whole vocabulary each time)."""
        return self._unembed.mean(dim=1, keepdim=True)

    def logit_vectors(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Demeaned unembedding columns ``(k, d_model)`` of ``token_ids``."""
        w = self._unembed
        return (w[:, token_ids.to(w.device)] - self._unembed_mean).T

    def rows(
        self,
        layers: torch.Tensor,
        positions: torch.Tensor,
        vectors: torch.Tensor,
        *,
        hook: str | None = None,
    ) -> torch.Tensor:
        """Direct effects of every source on a batch of targets.

        Args:
            layers: ``(B,)`` target layer; ``n_layers`` for a logit (injected at the unembed input).
            positions: ``(B,)`` target position.
            vectors: ``(B, d)`` the target's direction (encoder vector or demeaned unembedding).
            hook: Instead, every target reads this extra target hook (see :func:`trace`), at
                ``layers`` = its block; ``vectors`` are ``(B, numel)`` per position.

        Returns:
            ``(B, n_sources)`` rows, columns as in :attr:`n_sources`.
        """
        parts = []
        for part in self.row_slices(layers, positions, vectors, hook=hook):
            full = part.values.new_zeros(len(part.values), self.n_sources)
            full[:, : part.n_features] = part.values[:, : part.n_features]
            full[:, self.n_active :] = part.values[:, part.n_features :]
            parts.append(full)
        return torch.cat(parts)

    def row_slices(
        self,
        layers: torch.Tensor,
        positions: torch.Tensor,
        vectors: torch.Tensor,
        *,
        hook: str | None = None,
        max_slice: int | None = None,
    ) -> Iterator[RowSlice]:
        """:meth:`rows` in slices of targets, as they are computed.

        Working memory stays bounded on long prompts whatever the batch size: a slice holds at
        most ``_chunk`` targets (from the memory budget) and ``max_slice``; one slice's backward
        and one slice's rows are alive at a time. A slice leaves out the feature columns that
        cannot be sources of its targets (features at or above its highest target layer; for
        an extra target hook, above its layer: it may read after the layer's MLP).

        Yields:
            A :class:`RowSlice` per slice.
        """
        step = min(self._chunk or len(layers), max_slice or len(layers))
        device, dtype = self.errors.device, self.errors.dtype
        n_other = (self.n_layers + 1) * self.n_pos
        for i in range(0, len(layers), step):
            part = slice(i, i + step)
            top = int(layers[part].max())
            side = "left" if hook is None else "right"
            n_features = int(torch.searchsorted(self.feature_layer, top, side=side))
            out = torch.zeros(len(layers[part]), n_features + n_other, dtype=dtype, device=device)
            self._rows(layers[part], positions[part], vectors[part], out, n_features, hook)
            yield RowSlice(offset=i, values=out, n_features=n_features)

    @torch.no_grad()
    def _rows(
        self,
        layers: torch.Tensor,
        positions: torch.Tensor,
        vectors: torch.Tensor,
        out: torch.Tensor,
        n_features: int,
        hook: str | None = None,
    ) -> None:
        """One slice of :meth:`row_slices`, written into ``out`` (zeros, its layout)."""
        top = int(layers.max())
        below = self._transposes[: min(top, self.n_layers - 1) + 1]
        if hook is None and all(t is not None for t in below):
            explicit: list[BlockTranspose] = below  # type: ignore[assignment]
            if not all(t.causal for t in explicit):
                self._rows_explicit(layers, positions, vectors, out, n_features, explicit)
                return
            for band in _position_bands(positions):
                if len(band) == len(layers):
                    self._rows_explicit(layers, positions, vectors, out, n_features, explicit)
                    return
                part = out.new_zeros(len(band), out.shape[1])
                self._rows_explicit(
                    layers[band], positions[band], vectors[band], part, n_features, explicit
                )
                out[band.to(out.device)] = part
            return
        n_layers, n = self.n_layers, self.n_pos
        device, dtype, acc = self.errors.device, self.dtype, self.errors.dtype
        layers, positions = layers.to(device), positions.to(device)
        vectors = vectors.to(device, dtype)
        batch = len(layers)
        bidx = torch.arange(batch, device=device)
        top = int(layers.max())
        if hook is not None and not bool((layers == top).all()):
            raise ValueError("rows at an extra target hook must all be at the hook's layer")

        def injected(shape: torch.Size, mask: torch.Tensor) -> torch.Tensor:
            inject = torch.zeros((batch, *shape), dtype=dtype, device=device)
            inject[bidx[mask], 0, positions[mask]] = vectors[mask].reshape(-1, *shape[2:])
            return inject

        grad: torch.Tensor | None = None
        for layer in range(min(top, n_layers - 1), -1, -1):
            g_out = (
                grad
                if grad is not None
                else torch.zeros((batch, *self._out_shapes[layer]), dtype=dtype, device=device)
            )
            if layer == n_layers - 1 and (layers == n_layers).any():
                g_out = g_out + injected(self._out_shapes[layer], layers == n_layers)
            at_layer = layers == layer
            g_x = injected(self._in_shapes[layer], at_layer & (hook is None))
            g_extra = [
                injected(shape, at_layer & (name == hook))
                for name, shape in zip(self._extras[layer], self._extra_shapes[layer], strict=True)
            ]
            g_in, g_src = vmap(self._vjps[layer])((g_out, g_x, *g_extra))
            grad = g_in
            if layer == top and hook is None:  # the targets read this block's MLP input
                continue
            g = g_src[:, 0].to(acc)  # (B, n, d), accumulated in float32 (or float64)
            for group in self._writers[layer]:
                out.index_add_(1, *group.contract(g))
            base = n_features + layer * n
            out[:, base : base + n] = _per_position_dot(g, self.errors[layer])
        if grad is not None:  # hook_embed adds straight into block 0's input
            base = n_features + n_layers * n
            out[:, base : base + n] = _per_position_dot(grad[:, 0].to(acc), self.embeds)

    def _rows_explicit(
        self,
        layers: torch.Tensor,
        positions: torch.Tensor,
        vectors: torch.Tensor,
        out: torch.Tensor,
        n_features: int,
        transposes: Sequence[BlockTranspose],
    ) -> None:
        """:meth:`_rows` with every block's explicit transpose (``_transpose``), no autograd.

        With causal patterns the gradients live on the first ``m`` positions (one past the
        slice's last target position) in every block: everything runs on ``m`` positions. The
        targets are taken in ascending layer order, so that in each block only those at or
        above it are carried (a target below a block has nothing there), and the ones that
        read the block's transcoder input enter through :meth:`BlockTranspose.inject`.
        """
        n_layers, n = self.n_layers, self.n_pos
        device, dtype, acc = self.errors.device, self.dtype, self.errors.dtype
        layers, positions = layers.to(device), positions.to(device)
        vectors = vectors.to(device, dtype)
        top = int(layers.max())
        m = int(positions.max()) + 1 if all(t.causal for t in transposes) else n
        order = torch.argsort(layers, stable=True)
        in_order = bool((order == torch.arange(len(order), device=device)).all())
        if not in_order:
            layers, positions, vectors = layers[order], positions[order], vectors[order]
        work = out if in_order else torch.zeros_like(out)

        def first(layer: int) -> int:  # targets [first(layer):] are at or above ``layer``
            return int(torch.searchsorted(layers, layer))

        grad: torch.Tensor | None = None  # rows [first(layer + 1):] at the block's output
        for layer in range(min(top, n_layers - 1), -1, -1):
            above, here = first(layer + 1), first(layer)
            g_out = grad
            if layer == n_layers - 1 and above < len(layers):  # logits, at the unembed input
                width = int(self._out_shapes[layer][-1])
                g_out = torch.zeros((len(layers) - above, m, width), dtype=dtype, device=device)
                g_out[torch.arange(len(g_out), device=device), positions[above:]] = vectors[above:]
            g_src = None
            if g_out is not None:
                grad, g_src = transposes[layer](g_out, None)
            if here < above:
                new = transposes[layer].inject(positions[here:above], vectors[here:above], m)
                grad = new if grad is None else torch.cat([new, grad])
            if g_src is None:  # nothing above this block's MLP input yet
                continue
            g = g_src.to(acc)  # (B, m, d): the writers at positions >= m get nothing
            rows = work[above:]
            for group in self._writers[layer]:
                rows.index_add_(1, *group.contract(g))
            base = n_features + layer * n
            rows[:, base : base + m] = _per_position_dot(g, self.errors[layer, :m])
        if grad is not None:  # hook_embed adds straight into block 0's input
            base = n_features + n_layers * n
            work[:, base : base + m] = _per_position_dot(grad.to(acc), self.embeds[:m])
        if not in_order:
            out[order] = work


@dataclass(frozen=True)
class RowSlice:
    """Rows of a slice of targets, without the feature columns that are zero by construction.

    Attributes:
        offset: Index of the slice's first target in the batch.
        values: ``(b, n_features + (n_layers + 1) * n)``: the first ``n_features`` columns are
            source columns ``0..n_features-1`` (the active features below the slice's highest
            target layer); the rest are the error and token columns (source columns
            ``n_active..n_sources-1``).
        n_features: Feature columns kept.
    """

    offset: int
    values: torch.Tensor
    n_features: int


def trace(
    model: HookedTransformer,
    tokens: torch.Tensor,
    resolved: ResolvedTranscoders,
    *,
    attention_sink: bool = True,
    memory_budget: int | None = None,
    target_hooks: Sequence[HookSite] = (),
    frozen_heads: Mapping[int, Collection[int]] | None = None,
) -> Trace:
    """Run the clean forward pass of ``tokens`` and build the frozen blocks' VJPs.

    Args:
        model: The user's model (only scoped hooks are added, and removed after each pass).
        tokens: ``(n,)`` token ids.
        resolved: Transcoders checked against the model.
        attention_sink: Zero the features and error vectors at position 0.
        memory_budget: About how many bytes one batched backward may hold; larger batches of
            targets are back-propagated in slices. ``None``: see :func:`_default_budget`.
        target_hooks: Hooks inside blocks that targets read (besides transcoder inputs and the
            unembedding's input): each block returns them as extra outputs of its replay, so
            that :meth:`Trace.rows` can start a backward pass there.
        frozen_heads: Layer -> attention heads whose outputs are held at their clean values in
            the replayed blocks, so that no direct effect passes through them (the model with
            those heads frozen; head loadings compare such traces).

    Returns:
        A :class:`Trace`.

    Raises:
        FloatingPointError: A non-finite activation (named by hook) in the forward pass.
    """
    ts = resolved.transcoders
    n_layers, n = model.cfg.n_layers, int(tokens.shape[0])
    dtype = model.cfg.dtype
    acc = torch.promote_types(dtype, torch.float32)  # rows accumulate in float32 at least
    device = model.W_E.device
    d_model = model.cfg.d_model

    # 1. the clean forward pass: what the frozen model holds fixed
    record = ["hook_embed", *(f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers))]
    clean = clean_run(
        model,
        tokens,
        resolved,
        freeze=True,
        record=record,
        last_logits_only=True,
        attention_sink=attention_sink,
    )
    logits = clean.logits[-1]
    if not torch.isfinite(logits).all():
        raise FloatingPointError(
            "non-finite logits: the model's output is not finite on this prompt"
        )
    cache: dict[str, torch.Tensor] = dict(clean.frozen)
    for layer in range(n_layers):
        cache[f"resid{layer}"] = clean.extra[f"blocks.{layer}.hook_resid_pre"]
        cache[f"out{layer}"] = clean.out[layer][None]
        if not torch.isfinite(clean.out[layer]).all():
            raise FloatingPointError(f"non-finite values at {resolved.outputs[layer].name}")

    # 2. features and error vectors (none at an attention sink)
    f_layer, f_pos, f_idx, f_act = [], [], [], []
    errors = torch.empty(n_layers, n, d_model, dtype=acc, device=device)
    for layer in range(n_layers):
        pos, feat = clean.acts[layer].indices()
        vals = clean.acts[layer].values()
        f_layer.append(torch.full_like(pos, layer))
        f_pos.append(pos)
        f_idx.append(feat)
        f_act.append(vals)
        errors[layer] = clean.error(layer)
    if attention_sink:
        errors[:, 0] = 0

    feature_layer = torch.cat(f_layer).cpu()
    feature_pos = torch.cat(f_pos).cpu()
    feature_idx = torch.cat(f_idx).cpu()
    feature_act = torch.cat(f_act).to(acc).cpu()

    # the active features' encoder rows and what they write, one vector per distinct feature
    with torch.no_grad():
        enc_parts = []
        encoder_index = torch.empty(len(feature_idx), dtype=torch.long)
        n_enc = 0
        for layer in range(n_layers):
            sel = torch.nonzero(feature_layer == layer).flatten()
            if len(sel):
                uniq, inverse = torch.unique(feature_idx[sel], return_inverse=True)
                vecs = ts.encoder_vectors(layer, uniq.to(ts.device))
                enc_parts.append(vecs.detach().to(device, dtype))
                encoder_index[sel] = inverse + n_enc
                n_enc += len(uniq)
        encoders = (
            torch.cat(enc_parts)
            if enc_parts
            else torch.empty(0, ts.d_in, dtype=dtype, device=device)
        )
        writers = []
        for out_layer in range(n_layers):
            cols, tables, ids, acts, poss = [], [], [], [], []
            n_tab = 0
            for src in ts.source_layers(out_layer):
                sel = torch.nonzero(feature_layer == src).flatten()
                if len(sel) == 0:
                    continue
                uniq, inverse = torch.unique(feature_idx[sel], return_inverse=True)
                dec = ts.decoder_vectors(src, uniq.to(ts.device), out_layer)
                tables.append(dec.detach().to(device, acc))
                ids.append(inverse.to(device) + n_tab)
                acts.append(feature_act[sel].to(device))
                cols.append(sel.to(device))
                poss.append(feature_pos[sel].to(device))
                n_tab += len(uniq)
            writers.append(_group_by_position(cols, tables, ids, acts, poss))

    # 3. each block, replayed frozen, and its vector-Jacobian product
    extras: list[list[HookSite]] = [[] for _ in range(n_layers)]
    for site in target_hooks:
        if site.layer is None or not 0 <= site.layer < n_layers:
            raise ValueError(f"target hook {site.name!r} is not inside a block")
        if site.name not in {s.name for s in extras[site.layer]}:
            extras[site.layer].append(site)
    vjps, out_shapes, in_shapes, extra_shapes = [], [], [], []
    transposes: list[BlockTranspose | None] = []
    extra_values: dict[str, torch.Tensor] = {}
    final = None
    for layer in range(n_layers):
        block = _FrozenBlock(
            model, resolved, layer, cache, clean, extras[layer], (frozen_heads or {}).get(layer, ())
        )
        resid = cache[f"resid{layer}"]
        # an outer no_grad: the model's parameters require grad, and without it every row
        # batch would record (and hold on to) an autograd graph of its own backward pass
        with torch.no_grad():
            (out, x_in, *ext), vjp_fn = vjp(block, resid, torch.zeros_like(cache[f"out{layer}"]))  # type: ignore[misc]
        vjps.append(vjp_fn)
        transposes.append(
            None
            if extras[layer]
            else _checked_transpose(
                model, resolved, layer, cache, vjp_fn, out.shape, x_in.shape, frozen_heads
            )
        )
        out_shapes.append(out.shape)
        in_shapes.append(x_in.shape)
        extra_shapes.append([e.shape for e in ext])
        for site, value in zip(extras[layer], ext, strict=True):
            if value.ndim < 2 or value.shape[1] != n:
                raise ValueError(
                    f"target hook {site.name!r} holds shape {tuple(value.shape)}, not "
                    f"(batch, {n} positions, ...): a target reads one position of an activation"
                )
            extra_values[site.name] = value[0].detach()
        final = out[0].detach()
    per_target = _bytes_per_target(model, n, dtype, acc, len(feature_idx))
    if memory_budget is None:
        memory_budget = _default_budget(device)
    chunk = max(8, memory_budget // per_target)
    logger.debug(
        "backward slices: %d targets (%d bytes each, budget %d)", chunk, per_target, memory_budget
    )

    return Trace(
        tokens=tokens.cpu(),
        logits=logits.cpu(),
        feature_layer=feature_layer,
        feature_pos=feature_pos,
        feature_idx=feature_idx,
        feature_act=feature_act,
        errors=errors,
        embeds=clean.extra["hook_embed"][0].to(acc),
        dtype=dtype,
        final=final if final is not None else clean.extra["hook_embed"][0],
        x_in=clean.x_in,
        extra_values=extra_values,
        encoders=encoders,
        encoder_index=encoder_index,
        transcoders_info=ts.describe(),
        _vjps=vjps,
        _transposes=transposes,
        _out_shapes=out_shapes,
        _in_shapes=in_shapes,
        _writers=writers,
        _patterns=[cache.get(f"blocks.{layer}.attn.hook_pattern") for layer in range(n_layers)],
        _extras=[[s.name for s in e] for e in extras],
        _extra_shapes=extra_shapes,
        _unembed=model.W_U.detach(),
        _chunk=chunk,
    )


def _checked_transpose(
    model: HookedTransformer,
    resolved: ResolvedTranscoders,
    layer: int,
    cache: Mapping[str, torch.Tensor],
    vjp_fn: Callable,
    out_shape: torch.Size,
    in_shape: torch.Size,
    frozen_heads: Mapping[int, Collection[int]] | None,
) -> BlockTranspose | None:
    """Block ``layer``'s explicit transpose if it has one and it agrees with the block's VJP.

    The check (two random directions, once per trace) guards against a block whose shape
    :func:`block_transpose` misreads: float32 rounding differs by ~1e-6, a misread block by ~1.
    """
    transpose = block_transpose(
        model, resolved, layer, cache, frozen_heads=(frozen_heads or {}).get(layer, ())
    )
    if transpose is None:
        return None
    err = check_transpose(transpose, vjp_fn, out_shape, in_shape, seed=layer)
    if not err <= _TRANSPOSE_TOLERANCE:
        logger.warning(
            "block %d: its explicit transpose differs from its VJP by %.2g (relative); "
            "the block keeps the generic backward",
            layer,
            err,
        )
        return None
    return transpose


#: The explicit transpose must agree with the VJP to this relative difference (float32 rounding
#: over a few products of widths in the thousands stays below 1e-5; a misread block is off by ~1).
_TRANSPOSE_TOLERANCE = 1e-4


class _FrozenBlock:
    """Block ``layer`` of the frozen replacement model as a function of its input and a source.

    ``(resid_pre, source) -> (output, transcoder input, *extra target hooks)``: the block's
    output is the next block's input, or for the last block the unembedding's input (after the
    final norm). Patterns and norm scales are the recorded clean ones; the transcoder output hook
    holds its clean value plus ``source`` (plus a skip transcoder's live skip path). Heads in
    ``frozen_heads`` keep their clean output: no effect passes through them (head loadings).
    """

    def __init__(
        self,
        model: HookedTransformer,
        resolved: ResolvedTranscoders,
        layer: int,
        cache: dict[str, torch.Tensor],
        clean: CleanRun,
        extras: Sequence[HookSite] = (),
        frozen_heads: Collection[int] = (),
    ) -> None:
        self.model, self.resolved, self.layer = model, resolved, layer
        self.cache, self.clean = cache, clean
        self.extras = list(extras)
        self.head_mask: torch.Tensor | None = None
        if frozen_heads:
            self.head_mask = torch.ones(model.cfg.n_heads)
            self.head_mask[list(frozen_heads)] = 0.0
        self.semantics = ReplacementSemantics(resolved.transcoders)

    def __call__(self, resid: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model, layer, cache = self.model, self.layer, self.cache
        last = layer == model.cfg.n_layers - 1
        prefix = f"blocks.{layer}."
        box: dict[str, torch.Tensor] = {}

        def replay(name: str):
            return lambda t: cache[name]

        def keep(key: str):
            def fn(t: torch.Tensor) -> torch.Tensor:
                box[key] = t
                return t

            return fn

        def write(t: torch.Tensor) -> torch.Tensor:
            # the replacement MLP with its features and error frozen: only the skip path is live
            frozen = self.semantics.frozen_output(layer, self.clean, x=box["x"][0])
            return frozen[None] + source

        hooks: list[tuple[HookSite | str, object]] = []
        for name in cache:
            if name.endswith(("hook_pattern", "hook_scale")) and (
                name.startswith(prefix) or (last and name.startswith("ln_final."))
            ):
                hooks.append((name, replay(name)))
        attn = prefix + "attn."
        if {attn + "hook_v", attn + "hook_z", attn + "hook_pattern"} <= model.hook_dict.keys():
            pattern = cache[attn + "hook_pattern"]

            def mix(t: torch.Tensor) -> torch.Tensor:
                if "v" not in box or pattern.shape[1] != t.shape[2]:
                    live = t - t.detach()  # an attention variant we do not know: autograd's path
                else:
                    live = frozen_mix(box["v"], pattern.to(t.dtype), int(t.shape[2]))
                if self.head_mask is not None:  # frozen heads: their outputs are constants
                    live = live * self.head_mask.to(t.device, t.dtype)[:, None]
                return t.detach() + live

            hooks += [(attn + "hook_v", keep("v")), (attn + "hook_z", mix)]
        hooks += [(self.resolved.inputs[layer], keep("x")), (self.resolved.outputs[layer], write)]
        # after the hooks above on the same site: a target reads what the frozen model computes
        hooks += [(site, keep("target:" + site.name)) for site in self.extras]
        with scoped_hooks(model, hooks):  # type: ignore[arg-type]
            out = model.blocks[layer](resid)
            if last and model.cfg.normalization_type is not None:
                out = model.ln_final(out)
        missing = [s.name for s in self.extras if "target:" + s.name not in box]
        if missing:
            raise ValueError(f"target hook(s) {missing} did not fire in block {layer}")
        return (out, box["x"], *(box["target:" + s.name] for s in self.extras))


def _bytes_per_target(
    model: HookedTransformer, n: int, dtype: torch.dtype, acc: torch.dtype, n_active: int
) -> int:
    """About how many bytes one target adds to a backward slice, from the model's dimensions.

    A target's backward holds a few dozen ``(n, width)`` gradients in the model's dtype at a
    time (``width`` the larger of ``d_model`` and ``heads * d_head``: the MLP is not on its path,
    and nothing it holds depends on the vocabulary), and its row of ``n_active + (L + 1) * n``
    sources in the accumulation dtype.
    """
    width = max(model.cfg.d_model, model.cfg.n_heads * model.cfg.d_head)
    row = (n_active + (model.cfg.n_layers + 1) * n) * (torch.finfo(acc).bits // 8)
    return max(1, 32 * n * width * (torch.finfo(dtype).bits // 8) + 2 * row)


def _mem_available() -> int | None:
    """Linux's estimate of the memory available without swapping (``/proc/meminfo``), bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _default_budget(device: torch.device) -> int:
    """Working memory for one backward slice when the caller sets none.

    On CPU, an eighth of the memory available now (``MemAvailable``), between 32 MiB and
    1 GiB: past about 1 GiB slices are as fast per target (the per-slice overhead is paid
    off) and only hold more memory; 1 GiB where the available memory is unknown (not Linux).
    On a CUDA device, a quarter of its free memory (large slices keep it busy); elsewhere 1 GiB.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(2**25, free // 4)
    if device.type == "cpu":
        avail = _mem_available()
        return 2**30 if avail is None else int(min(2**30, max(2**25, avail // 8)))
    return 2**30


def _position_bands(
    positions: torch.Tensor, *, rows: int = 128, max_bands: int = 8
) -> list[torch.Tensor]:
    """Split a slice of targets into bands of nearby positions (indices into the slice).

    A band of targets at positions ``< m`` runs every block on ``m`` positions (the causal
    cone): cutting a slice whose targets span the prompt into bands by position roughly
    halves the work. Bands hold at least ``rows`` targets (so that each product stays large)
    and there are at most ``max_bands``; targets at one position are never split.
    """
    k = max(1, min(max_bands, len(positions) // rows))
    if k == 1:
        return [torch.arange(len(positions))]
    pos, order = torch.sort(positions.cpu(), stable=True)
    cuts = [0]
    for i in range(1, k):
        cut = int(torch.searchsorted(pos, pos[i * len(pos) // k]))  # the start of that position
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(pos))
    return [order[a:b] for a, b in pairwise(cuts) if b > a]


def _per_position_dot(g: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """``(B, n, d)`` gradients, ``(n, d)`` vectors -> ``(B, n)`` dot products, one bmm."""
    return torch.bmm(g.transpose(0, 1), vecs[:, :, None])[:, :, 0].T


def _group_by_position(
    cols: list[torch.Tensor],
    tables: list[torch.Tensor],
    ids: list[torch.Tensor],
    acts: list[torch.Tensor],
    poss: list[torch.Tensor],
) -> list[_WriterGroup]:
    """Pad the sources of one output layer into groups of positions of similar counts.

    Positions are sorted by how many sources they hold; a new group starts when the count
    falls below half the group's largest, so padding at most doubles the work. Each source
    ``i`` writes ``acts[i] * table[ids[i]]``; the groups store those vectors, or, where the
    table form is at least twice smaller (features repeating over many positions), the table
    and the indices (:class:`_WriterGroup`).
    """
    if not cols:
        return []
    table = torch.cat(tables)
    c, t, a, p = torch.cat(cols), torch.cat(ids), torch.cat(acts), torch.cat(poss)
    order = torch.sort(p, stable=True).indices
    c, t, a, p = c[order], t[order], a[order], p[order]
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
    n_src, (n_tab, d), size = len(c), table.shape, table.element_size()
    tabled = _TABLE_GAIN * (n_tab * d * size + n_src * 12) <= n_src * d * size
    out = []
    for members in groups:
        width = int(counts[members[0]])
        members = sorted(members, key=lambda i: int(uniq[i]))  # ascending positions
        g_ids = torch.zeros(len(members), width, dtype=torch.long, device=t.device)
        g_acts = torch.zeros(len(members), width, dtype=a.dtype, device=a.device)
        slots, gcols = [], []
        for row, i in enumerate(members):
            lo, k = int(starts[i]), int(counts[i])
            g_ids[row, :k] = t[lo : lo + k]
            g_acts[row, :k] = a[lo : lo + k]
            slots.append(torch.arange(row * width, row * width + k))
            gcols.append(c[lo : lo + k])
        positions = uniq[members].to(table.device)
        common = dict(
            positions=positions, slots=torch.cat(slots).to(table.device), cols=torch.cat(gcols)
        )
        if tabled:
            out.append(_WriterGroup(**common, table=table, ids=g_ids, acts=g_acts))
        else:
            vecs = table[g_ids] * g_acts[..., None]  # (P, K, d)
            out.append(_WriterGroup(**common, vecs=vecs.transpose(1, 2).contiguous()))
    return out
