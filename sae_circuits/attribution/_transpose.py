"""The transpose of a frozen block, as explicit batched matrix products.

In the local replacement model, frozen, a block is linear in its input residual stream and in a
source added at its transcoder output: every attention pattern and norm scale is a recorded
constant and the MLP is replaced by its clean output (plus a skip transcoder's linear skip path).
Its transpose, which carries a batch of targets' gradients one block down, is therefore a fixed
sequence of matrix products. For a standard pre-norm block (TransformerLens ``TransformerBlock``;
GPT-2, Llama, Gemma 2/3 with their post-attention and post-MLP norms, grouped-query attention),
given ``g`` at the block's output (after the final norm for the last block) and the targets'
directions at the transcoder input:

1. ``g_src = post_mlp_norm^T g`` (the source's gradient at the transcoder output hook);
2. ``g_x += W_skip^T g_src`` (a skip transcoder's skip path reads the transcoder input);
3. ``g_mid = g + in_map^T g_x`` (``in_map``: the residual before the MLP -> the transcoder input:
   identity, ``ln2`` without its weight, or ``ln2`` with it);
4. ``g_z[h] = W_O[h]^T post_attn_norm^T g_mid``; ``g_v[k] = sum_{h in group k} pattern[h]^T
   g_z[h]``; ``g_in = g_mid + ln1^T sum_k W_V[k]^T g_v[k]``.

A frozen norm with scale ``s`` and weight ``w`` maps ``x -> center(x) / s * w``, so its
transpose is ``g -> center(g * w / s)`` (no ``center`` for RMS norms). The two norms around the
attention cost no pass over the gradients: their weights and centring are folded into the
matrices (``W_z = diag(w) P W_O^T`` for the post-attention norm, ``W_a = W_V^T diag(w) P`` for
``ln1``, ``P`` the centring), and their per-position scales into the entries of the frozen
pattern each product reads (``pattern[h, q, k] / (s_post[q] * s_ln1[k])``), so that step 4 is
two products, the second one adding into ``g_mid`` (``addmm``), and the pattern's transpose
between them. Both are folded on each call, on the slice in use (a pass over the weights, about
``1 / (B * m)`` of the products that use them): the transpose keeps no folded copy of the
weights or the patterns, only views of the model's and the clean run's.

Compared with the generic path (``torch.func.vjp`` of the replayed block under ``vmap``), this
runs no autograd engine, allocates no zero gradients for outputs nobody reads, folds the batch
of targets into two large matrix products per block, and stops at the *causal cone*: a slice of
targets at positions ``< m`` has zero gradients at every later position of every block (the
patterns are causal), so every product runs on ``m`` positions instead of ``n``.

:func:`block_transpose` builds the transpose for the blocks it knows, and returns ``None`` for
anything else (post-norm architectures, split q/k/v inputs, clipped values, extra target hooks,
low-precision dtypes): those keep the generic path. Each built transpose is checked once against
the block's own VJP on random directions, so that a block whose shape this module misreads falls
back instead of giving wrong rows.

Example:
    >>> tr = block_transpose(model, resolved, layer, cache)
    >>> g_in, g_src = tr(g_out, g_x)       # (B, m, d_model), (B, m, d_out)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
from transformer_lens.components.grouped_query_attention import GroupedQueryAttention

from sae_circuits.transcoders import ResolvedTranscoders

__all__ = ["BlockTranspose", "block_transpose", "check_transpose"]

logger = logging.getLogger(__name__)

_POST_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


@dataclass(frozen=True)
class _Norm:
    """A norm with its recorded scale: the linear map ``x -> center(x) / scale * weight``."""

    scale: torch.Tensor  # (n, 1)
    weight: torch.Tensor | None  # (d,)
    center: bool

    def transpose(self, g: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The map's transpose: ``(B, m, d)`` on the first ``m`` positions, or, given
        ``positions`` ``(k,)``, ``(k, d)`` vectors, one at each of those positions."""
        g = g * self._factor(g.shape[1] if positions is None else positions)
        if self.center:
            g = g - g.mean(-1, keepdim=True)
        return g

    def fold_rows(self, mat: torch.Tensor) -> torch.Tensor:
        """``diag(w) P mat`` for ``(d, X)`` ``mat``: ``transpose(g) @ mat`` is ``g @ result``
        divided by the scale at ``g``'s position."""
        if self.center:
            mat = mat - mat.mean(0, keepdim=True)
        return mat if self.weight is None else self.weight[:, None] * mat

    def fold_cols(self, mat: torch.Tensor) -> torch.Tensor:
        """``mat diag(w) P`` for ``(X, d)`` ``mat``: ``transpose(v @ mat)`` is ``v @ result``
        divided by the scale at ``v``'s position."""
        if self.weight is not None:
            mat = mat * self.weight
        return mat - mat.mean(1, keepdim=True) if self.center else mat

    def _factor(self, at: int | torch.Tensor) -> torch.Tensor:
        """``weight / scale`` on the first ``at`` positions, or at the positions ``at``:
        ``(m, d)`` (or ``(m, 1)`` without a weight), one small tensor instead of a pass over
        the gradients for each."""
        scale = self.scale[:at] if isinstance(at, int) else self.scale[at]
        return 1.0 / scale if self.weight is None else self.weight / scale


def _t(norm: _Norm | None, g: torch.Tensor) -> torch.Tensor:
    return g if norm is None else norm.transpose(g)


@dataclass(frozen=True)
class BlockTranspose:
    """The transpose of one frozen block (see the module docstring).

    Attributes:
        ln1: The attention's input norm (``None``: no norm).
        attn_post: Gemma's post-attention norm, or ``None``.
        mlp_post: The norm between the transcoder output hook and the residual (Gemma's
            post-MLP norm when the transcoders write the MLP module's output), or ``None``.
        in_map: The map from the residual before the MLP to the transcoder input, or ``None``
            for the identity.
        final: The final norm, for the last block (its output is the unembedding's input).
        w_o: ``(H * d_head, d_model)`` the output weights, heads stacked (a view).
        w_v: ``(d_model, K * d_head)`` the value weights of the ``K`` key/value heads.
        pattern: ``(H, n, n)`` the frozen attention pattern (the clean run's, not a copy).
        heads: ``H``; ``rep``: query heads per key/value head.
        head_mask: ``(H,)`` zero for heads frozen at their clean output, or ``None``.
        w_skip: ``(d_out, d_in)`` a skip transcoder's skip matrix (``W_skip``), or ``None``.
        parallel: Attention and MLP both read the block's input (GPT-J, NeoX).
        causal: Every pattern is zero above the diagonal (the causal cone applies).
        bands: For causal patterns, per block of :data:`_KEY_BLOCK` key positions
            ``(k0, k1)``, the query rows ``[q0, q1)`` outside which every head's pattern is
            exactly zero in those columns (the diagonal and, for a sliding-window layer, the
            window): long prompts skip the zero blocks of the pattern's transpose.
    """

    ln1: _Norm | None
    attn_post: _Norm | None
    mlp_post: _Norm | None
    in_map: _Norm | None
    final: _Norm | None
    w_o: torch.Tensor
    w_v: torch.Tensor
    pattern: torch.Tensor
    heads: int
    rep: int
    head_mask: torch.Tensor | None
    w_skip: torch.Tensor | None
    parallel: bool
    causal: bool
    bands: tuple[tuple[int, int, int, int], ...] = ()

    def __call__(
        self, g_out: torch.Tensor, g_x: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Carry gradients one block down.

        Args:
            g_out: ``(B, m, d_model)`` gradients at the block's output (the unembedding's input
                for the last block) on the first ``m`` positions (``m = n`` unless
                :attr:`causal`).
            g_x: ``(B, m, d_in)`` directions injected at the transcoder input, or ``None``.

        Returns:
            ``(g_in, g_src)``: ``(B, m, d_model)`` at the block's input and ``(B, m, d_out)``
            at the transcoder output hook (where sources write).
        """
        g = _t(self.final, g_out)
        g_src = _t(self.mlp_post, g)
        if self.w_skip is not None:
            skip = g_src @ self.w_skip
            g_x = skip if g_x is None else g_x + skip
        g_mlp_in = None if g_x is None else _t(self.in_map, g_x)
        g_mid = g if g_mlp_in is None or self.parallel else g + g_mlp_in
        batch, m, d = g_mid.shape
        g_z = (g_mid.reshape(-1, d) @ self._w_z()).view(batch, m, self.heads, -1)
        g_v = self._values_t(g_z)
        g_in = torch.addmm(g_mid.reshape(-1, d), g_v.reshape(batch * m, -1), self._w_a())
        g_in = g_in.view(batch, m, d)
        if self.parallel and g_mlp_in is not None:
            g_in = g_in + g_mlp_in
        return g_in, g_src

    def inject(self, positions: torch.Tensor, vectors: torch.Tensor, m: int) -> torch.Tensor:
        """Gradients at the block's input of targets that read its transcoder input.

        The same as ``self(zeros, g_x)[0]`` with ``g_x`` holding ``vectors[i]`` at
        ``positions[i]`` and zero elsewhere, without the products on the zero positions: such a
        target's gradient sits at one position until the attention pattern spreads it, so
        ``W_z`` runs on one vector, and ``W_a`` per head before the pattern (``H`` products
        instead of one per key position). Its gradient at the transcoder output is zero.

        Args:
            positions: ``(k,)`` the targets' positions (``< m``).
            vectors: ``(k, d_in)`` their directions at the transcoder input.
            m: Positions of the result (the slice's causal cone; ``n`` unless :attr:`causal`).

        Returns:
            ``(k, m, d_model)`` gradients at the block's input.
        """
        k, rows = len(positions), torch.arange(len(positions), device=positions.device)
        g = vectors if self.in_map is None else self.in_map.transpose(vectors, positions)
        out = g.new_zeros(k, m, g.shape[-1])
        out[rows, positions] = g  # the residual path
        if self.parallel:  # the attention reads the block's input, not the MLP's
            return out
        kv, d = self.heads // self.rep, g.shape[-1]
        z = (g @ self._w_z()).view(k, kv, self.rep, -1)  # (k, K, rep, e)
        w_a = self._w_a().reshape(kv, -1, d)  # (K, e, d)
        u = torch.bmm(z.permute(1, 0, 2, 3).reshape(kv, k * self.rep, -1), w_a)
        u = u.view(kv, k, self.rep, d).permute(1, 0, 2, 3).reshape(k, self.heads, d)
        p = self._entries(positions, slice(0, m)).permute(1, 2, 0)  # (k, m keys, H)
        return torch.baddbmm(out, p, u)

    def _values_t(self, g_z: torch.Tensor) -> torch.Tensor:
        """``(B, m, H, e)`` gradients at the heads' outputs -> ``(B, m, K, e)`` at the values:
        each head's pattern transposed over positions and summed over the query heads of a
        key/value group, on the first ``m`` positions (causal) and, past ``2 * _KEY_BLOCK``
        positions, block by block of keys over the query rows with nonzero entries only."""
        batch, m = g_z.shape[:2]
        if not self.causal or m <= 2 * _KEY_BLOCK or not self.bands:
            return self._mix(self._entries(slice(0, m), slice(0, m)), g_z)
        out = g_z.new_zeros(batch, m, self.heads // self.rep, g_z.shape[-1])
        for k0, k1, q0, q1 in self.bands:
            if k0 >= m:
                break
            k1, q1 = min(k1, m), min(q1, m)
            if q1 > q0:
                out[:, k0:k1] = self._mix(
                    self._entries(slice(q0, q1), slice(k0, k1)), g_z[:, q0:q1]
                )
        return out

    def _w_z(self) -> torch.Tensor:
        """``(d_model, H * d_head)``: ``W_O^T`` with the post-attention norm's weight and
        centring folded in (``W_O^T`` itself, a view, without that norm)."""
        w = self.w_o.T
        return w if self.attn_post is None else self.attn_post.fold_rows(w)

    def _w_a(self) -> torch.Tensor:
        """``(K * d_head, d_model)``: ``W_V^T`` with ``ln1``'s weight and centring folded in."""
        w = self.w_v.T
        return w if self.ln1 is None else self.ln1.fold_cols(w)

    def _entries(self, q: slice | torch.Tensor, k: slice) -> torch.Tensor:
        """``(H, q, k)`` entries of the pattern as the products use them: divided by the
        folded norms' scales at their query and key, frozen heads zero."""
        f = None if self.attn_post is None else 1.0 / self.attn_post.scale[q]  # (q, 1)
        if self.ln1 is not None:
            k_scale = 1.0 / self.ln1.scale[k, 0]
            f = k_scale if f is None else f * k_scale
        if self.head_mask is not None:
            mask = self.head_mask[:, None, None]
            f = mask if f is None else f * mask
        p = self.pattern[:, q, k]
        return p if f is None else p * f

    def _mix(self, pattern: torch.Tensor, g_z: torch.Tensor) -> torch.Tensor:
        """``sum_{h in group, q} pattern[h, q, k] g_z[b, q, h]``: ``(H, q, k)``, ``(B, q, H, e)``
        -> ``(B, k, K, e)``. With one key/value head (multi-query attention, Gemma 3 270M) that
        is one batched product over the ``(q, h)`` rows of ``g_z`` as they lie in memory (no
        permuted copies, the sum over heads inside the product); frozen heads are zero rows of
        the pattern."""
        batch, q, heads, e = g_z.shape
        k = pattern.shape[-1]
        if self.rep == heads:
            rows = pattern.permute(2, 1, 0).reshape(k, q * heads)  # [k, (q, h)]
            return torch.matmul(rows, g_z.reshape(batch, q * heads, e)).view(batch, k, 1, e)
        g_v = torch.einsum("hqk,bqhe->bkhe", pattern, g_z)
        if self.rep > 1:
            g_v = g_v.reshape(batch, k, heads // self.rep, self.rep, e).sum(3)
        return g_v


#: Key positions per block of a long prompt's pattern transpose (:meth:`BlockTranspose._values_t`).
_KEY_BLOCK = 256


def _bands(pattern: torch.Tensor) -> tuple[tuple[int, int, int, int], ...]:
    """``(k0, k1, q0, q1)`` per block of :data:`_KEY_BLOCK` key positions: the query rows
    holding every nonzero entry of ``pattern[:, :, k0:k1]`` (``(H, n, n)``)."""
    n = pattern.shape[-1]
    rows = (pattern != 0).any(0)  # (n queries, n keys)
    out = []
    for k0 in range(0, n, _KEY_BLOCK):
        k1 = min(n, k0 + _KEY_BLOCK)
        nz = torch.nonzero(rows[:, k0:k1].any(1)).flatten()
        q0, q1 = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (k0, k0)
        out.append((k0, k1, q0, q1))
    return tuple(out)


def _norm(
    module: torch.nn.Module, scale: torch.Tensor | None, *, weighted: bool
) -> _Norm | bool | None:
    """The frozen map of a TransformerLens norm: a :class:`_Norm`, ``None`` (identity) or
    ``False`` (a norm this module does not know, or no recorded scale)."""
    if isinstance(module, torch.nn.Identity):
        return None
    center = isinstance(module, (LayerNorm, LayerNormPre))
    if not isinstance(module, (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)) or scale is None:
        return False
    weight = getattr(module, "w", None) if weighted else None
    if weighted and isinstance(module, (LayerNorm, RMSNorm)) and weight is None:
        return False
    w = None if weight is None else weight.detach()
    return _Norm(scale=scale.detach()[0], weight=w, center=center)


def block_transpose(
    model: HookedTransformer,
    resolved: ResolvedTranscoders,
    layer: int,
    cache: Mapping[str, torch.Tensor],
    *,
    frozen_heads: Collection[int] = (),
) -> BlockTranspose | None:
    """The explicit transpose of block ``layer``, frozen on the recorded ``cache``.

    Args:
        model: The model (its weights are read, never changed).
        resolved: The transcoders and their hook sites.
        layer: The block.
        cache: The clean run's frozen values (``hook_pattern``, ``hook_scale``, by hook name).
        frozen_heads: Heads whose outputs are held at their clean values.

    Returns:
        A :class:`BlockTranspose`, or ``None`` when the block is not one this module knows
        (the reason is logged at debug level): the caller keeps the generic VJP.
    """

    def no(reason: str) -> None:
        logger.debug("block %d keeps the generic backward: %s", layer, reason)

    cfg = model.cfg
    if cfg.dtype not in (torch.float32, torch.float64):
        return no(f"dtype {cfg.dtype} (its norms compute in float32)")
    if cfg.original_architecture in _POST_NORM or cfg.attn_only:
        return no("post-norm or attention-only architecture")
    if cfg.use_split_qkv_input or cfg.use_attn_in or cfg.clip_qkv is not None:
        return no("split q/k/v inputs or clipped values")
    if getattr(cfg, "load_in_4bit", False):
        return no("4-bit weights")
    block = model.blocks[layer]
    prefix = f"blocks.{layer}."
    pattern = cache.get(prefix + "attn.hook_pattern")
    n = None if pattern is None else pattern.shape[-1]
    if pattern is None or pattern.shape[-2] != n:
        return no("no recorded square attention pattern")

    def scale(name: str) -> torch.Tensor | None:
        return cache.get(name + ".hook_scale")

    ln1 = _norm(block.ln1, scale(prefix + "ln1"), weighted=True)
    post = cfg.use_normalization_before_and_after
    attn_post = _norm(block.ln1_post, scale(prefix + "ln1_post"), weighted=True) if post else None
    ln2_post = _norm(block.ln2_post, scale(prefix + "ln2_post"), weighted=True) if post else None
    in_suffix = resolved.inputs[layer].name.removeprefix(prefix)
    out_suffix = resolved.outputs[layer].name.removeprefix(prefix)
    if in_suffix in ("hook_resid_mid", "hook_mlp_in"):
        in_map: _Norm | bool | None = None
    elif in_suffix in ("ln2.hook_normalized", "mlp.hook_in"):
        weighted = in_suffix == "mlp.hook_in"
        in_map = _norm(block.ln2, scale(prefix + "ln2"), weighted=weighted)
    else:
        return no(f"transcoder input {in_suffix!r}")
    if out_suffix == "hook_mlp_out":
        mlp_post: _Norm | bool | None = None
    elif out_suffix == "mlp.hook_out":
        mlp_post = ln2_post
    else:
        return no(f"transcoder output {out_suffix!r}")
    final: _Norm | bool | None = None
    if layer == cfg.n_layers - 1 and cfg.normalization_type is not None:
        final = _norm(model.ln_final, cache.get("ln_final.hook_scale"), weighted=True)
    norms = (ln1, attn_post, mlp_post, in_map, final)
    if any(x is False for x in norms):
        return no("a norm of a kind not known here, or without a recorded scale")
    if in_suffix == "hook_resid_mid" and cfg.parallel_attn_mlp:
        return no("hook_resid_mid in a parallel block")

    attn = block.attn
    heads, d_head = cfg.n_heads, cfg.d_head
    w_v = attn.W_V
    if isinstance(attn, GroupedQueryAttention) and not cfg.ungroup_grouped_query_attention:
        w_v = attn._W_V  # (K, d, d_head): hook_v holds the key/value heads, not repeated
    w_v = w_v.detach()
    kv = int(w_v.shape[0])
    if pattern.shape[1] != heads or heads % kv or attn.W_O.shape[0] != heads:
        return no("attention heads of unexpected shapes")
    skip = _skip_matrix(resolved, layer, like=w_v)
    mask = None
    if frozen_heads:
        mask = torch.ones(heads, dtype=cfg.dtype, device=w_v.device)
        mask[list(frozen_heads)] = 0.0
    p = pattern.detach()[0]
    causal = bool((torch.triu(p, diagonal=1) == 0).all())
    return BlockTranspose(
        ln1=ln1,  # type: ignore[arg-type]
        attn_post=attn_post,  # type: ignore[arg-type]
        mlp_post=mlp_post,  # type: ignore[arg-type]
        in_map=in_map,  # type: ignore[arg-type]
        final=final,  # type: ignore[arg-type]
        w_o=attn.W_O.detach().reshape(heads * d_head, -1),
        w_v=w_v.permute(1, 0, 2).reshape(w_v.shape[1], kv * d_head),
        pattern=p,
        heads=heads,
        rep=heads // kv,
        head_mask=mask,
        w_skip=skip,
        parallel=bool(cfg.parallel_attn_mlp),
        causal=causal,
        bands=_bands(p) if causal and p.shape[-1] > 2 * _KEY_BLOCK else (),
    )


def _skip_matrix(
    resolved: ResolvedTranscoders, layer: int, *, like: torch.Tensor
) -> torch.Tensor | None:
    """``(d_out, d_in)``: the skip path's matrix (read off by applying it to the identity)."""
    ts = resolved.transcoders
    eye = torch.eye(ts.d_in, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        skip = ts.skip(layer, eye)
        if skip is None:
            return None
        zero = ts.skip(layer, torch.zeros_like(eye[:1]))
    assert zero is not None
    return (skip - zero).T.to(like.device, like.dtype).contiguous()


def check_transpose(
    transpose: BlockTranspose,
    vjp_fn: Callable,
    out_shape: torch.Size,
    in_shape: torch.Size,
    *,
    seed: int = 0,
) -> float:
    """Compare a transpose with the block's VJP on two random directions.

    Args:
        transpose: The explicit transpose.
        vjp_fn: The block's VJP, ``(g_out, g_x) -> (g_in, g_src)`` with a leading batch of 1.
        out_shape, in_shape: ``(1, n, d)`` shapes of the block's output and transcoder input.
        seed: Seed of the random directions.

    Returns:
        The largest difference of either result relative to its largest entry (float32
        summation-order differences give ~1e-6; a misread block gives ~1).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype, device = transpose.w_o.dtype, transpose.w_o.device
    g_out = torch.randn((2, *out_shape), generator=gen, dtype=dtype).to(device)
    g_x = torch.randn((2, *in_shape), generator=gen, dtype=dtype).to(device)
    worst = 0.0
    with torch.no_grad():
        ref_in, ref_src = torch.func.vmap(vjp_fn)((g_out, g_x))
        got_in, got_src = transpose(g_out[:, 0], g_x[:, 0])
    for ref, got in ((ref_in[:, 0], got_in), (ref_src[:, 0], got_src)):
        scale = float(ref.abs().max())
        if not torch.isfinite(got).all():
            return float("inf")
        worst = max(worst, float((ref - got.to(ref.dtype)).abs().max()) / max(scale, 1e-30))
    return worst
