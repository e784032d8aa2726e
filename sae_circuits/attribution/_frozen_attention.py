"""Frozen attention with a fast batched backward.

With the attention pattern frozen, attention's output ``z = pattern @ v`` is linear in ``v``. The
rows of an attribution graph back-propagate a whole batch of targets at once with
``torch.autograd.grad(..., is_grads_batched=True)``, which runs the backward under ``vmap``. There,
the generic batching rule for the pattern product expands the pattern to every target
(``B x heads x n x n``), which is slow and large. This module gives the product a custom backward
whose own ``vmap`` rule contracts the batch of gradients with the shared pattern in one einsum,
with the batch folded into the free dimensions.

Used by ``_backward``: at each block's ``hook_z`` the activation is replaced by
``z.detach() + frozen_mix(v, pattern)``. The second term is zero-valued, so forward values are
exactly TransformerLens's own, and it carries the gradient ``d z / d v`` of the frozen attention.

The batched backward also stops at the causal cone in positions: a batch of targets at positions
``<= p`` has zero gradients at every later query position, so only the first ``m = p + 1`` query
rows of the pattern take part, and, for a causal pattern (zero above the diagonal, checked once),
only the first ``m`` keys: the einsum costs ``m^2`` instead of ``n^2`` per head, with the same
result (the terms left out are exact zeros).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["frozen_mix"]


def _group(grad_v: torch.Tensor, rep: int) -> torch.Tensor:
    """Sum the gradients of query heads that share a key/value head (grouped-query attention)."""
    if rep == 1:
        return grad_v
    *lead, n, heads, d = grad_v.shape
    return grad_v.reshape(*lead, n, heads // rep, rep, d).sum(-2)


def _live_queries(grads: torch.Tensor, query_dim: int) -> int:
    """One past the last query position at which ``grads`` holds a nonzero value."""
    others = tuple(i for i in range(grads.ndim) if i != query_dim)
    live = torch.nonzero(grads.abs().amax(dim=others) != 0)  # NaN counts as live
    return int(live[-1]) + 1 if len(live) else 0


class _MixTranspose(torch.autograd.Function):
    """``grad_v[b, k, g] = sum_q pattern[b, h, q, k] grad_z[b, q, h]`` (h in group g)."""

    @staticmethod
    def forward(
        grad_z: torch.Tensor, pattern: torch.Tensor, rep: int, causal: bool
    ) -> torch.Tensor:  # type: ignore[override]
        grad_v = torch.einsum("bhqk,bqhd->bkhd", pattern, grad_z.to(pattern.dtype))
        return _group(grad_v, rep).to(grad_z.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple,
        grad_z: torch.Tensor,
        pattern: torch.Tensor,
        rep: int,
        causal: bool,
    ):
        # the pattern is a frozen constant: only the gradients carry the batch of targets
        if in_dims[1] is not None:
            raise RuntimeError("frozen attention: the pattern must not be batched")
        if in_dims[0] is None:
            return _MixTranspose.apply(grad_z, pattern, rep, causal), None
        batched = grad_z.movedim(in_dims[0], 0)  # (V, b, q, h, d)
        n_keys = pattern.shape[-1]
        m = _live_queries(batched, 2)  # later queries have zero gradients: the causal cone
        keys = m if causal else n_keys  # a causal pattern has no weight on keys after m
        if m == pattern.shape[-2] and keys == n_keys:  # nothing to leave out
            out = torch.einsum("bhqk,Vbqhd->Vbkhd", pattern, batched.to(pattern.dtype))
        else:
            out = batched.new_zeros(
                *batched.shape[:2], n_keys, *batched.shape[3:], dtype=pattern.dtype
            )
            if m:
                out[:, :, :keys] = torch.einsum(
                    "bhqk,Vbqhd->Vbkhd",
                    pattern[:, :, :m, :keys],
                    batched[:, :, :m].to(pattern.dtype),
                )
        return _group(out, rep).to(grad_z.dtype), 0

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # pragma: no cover - second derivatives
        raise RuntimeError("frozen attention does not support double backward")


class _FrozenMix(torch.autograd.Function):
    """Zero-valued output whose gradient with respect to ``v`` is the frozen attention's."""

    @staticmethod
    def forward(v: torch.Tensor, pattern: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:  # type: ignore[override]
        return v.new_zeros(v.shape[0], pattern.shape[2], heads, v.shape[3])

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        v, pattern, heads, causal = inputs
        ctx.save_for_backward(pattern)
        ctx.rep = heads // v.shape[2]
        ctx.causal = causal

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor) -> Any:  # type: ignore[override]
        (pattern,) = ctx.saved_tensors
        return _MixTranspose.apply(grad_z, pattern, ctx.rep, ctx.causal), None, None, None


def frozen_mix(v: torch.Tensor, pattern: torch.Tensor, heads: int) -> torch.Tensor:
    """A zero tensor shaped like ``z`` that carries ``d z / d v`` for a frozen ``pattern``.

    Args:
        v: ``(batch, key_pos, kv_heads, d_head)`` values (the ``hook_v`` activation, live).
        pattern: ``(batch, heads, query_pos, key_pos)`` frozen attention pattern.
        heads: Number of query heads (``kv_heads`` divides it).

    Returns:
        ``(batch, query_pos, heads, d_head)`` zeros.
    """
    pattern = pattern.detach()
    n_q, n_k = pattern.shape[-2:]
    causal = n_q == n_k and not torch.triu(pattern, diagonal=1).any()
    return _FrozenMix.apply(v, pattern, heads, bool(causal))  # type: ignore[return-value]
