"""Frozen attention with a fast batched backward.

With the attention pattern frozen, attention's output ``z = pattern @ v`` is linear in ``v``. The
rows of an attribution graph back-propagate a whole batch of targets at once with
``torch.autograd.grad(..., is_grads_batched=True)``, which runs the backward under ``vmap``. There,
the generic batching rule for the pattern product expands the pattern to every target
(``B x heads x n x n``), which is slow and large. This module gives the product a custom backward
whose own ``vmap`` rule contracts the batch of gradients with the shared pattern in one einsum,
with the batch folded into the free dimensions.

Used by ``_tracing``: at each block's ``hook_z`` the activation is replaced by
``z.detach() + frozen_mix(v, pattern)``. The second term is zero-valued, so forward values are
exactly TransformerLens's own, and it carries the gradient ``d z / d v`` of the frozen attention.
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


class _MixTranspose(torch.autograd.Function):
    """``grad_v[b, k, g] = sum_q pattern[b, h, q, k] grad_z[b, q, h]`` (h in group g)."""

    @staticmethod
    def forward(grad_z: torch.Tensor, pattern: torch.Tensor, rep: int) -> torch.Tensor:  # type: ignore[override]
        grad_v = torch.einsum("bhqk,bqhd->bkhd", pattern, grad_z.to(pattern.dtype))
        return _group(grad_v, rep).to(grad_z.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def vmap(info: Any, in_dims: tuple, grad_z: torch.Tensor, pattern: torch.Tensor, rep: int):
        # the pattern is a frozen constant: only the gradients carry the batch of targets
        if in_dims[1] is not None:
            raise RuntimeError("frozen attention: the pattern must not be batched")
        if in_dims[0] is None:
            return _MixTranspose.apply(grad_z, pattern, rep), None
        batched = grad_z.movedim(in_dims[0], 0)  # (V, b, q, h, d)
        out = torch.einsum("bhqk,Vbqhd->Vbkhd", pattern, batched.to(pattern.dtype))
        return _group(out, rep).to(grad_z.dtype), 0

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # pragma: no cover - second derivatives
        raise RuntimeError("frozen attention does not support double backward")


class _FrozenMix(torch.autograd.Function):
    """Zero-valued output whose gradient with respect to ``v`` is the frozen attention's."""

    @staticmethod
    def forward(v: torch.Tensor, pattern: torch.Tensor, heads: int) -> torch.Tensor:  # type: ignore[override]
        return v.new_zeros(v.shape[0], pattern.shape[2], heads, v.shape[3])

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        v, pattern, heads = inputs
        ctx.save_for_backward(pattern)
        ctx.rep = heads // v.shape[2]

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor) -> Any:  # type: ignore[override]
        (pattern,) = ctx.saved_tensors
        return _MixTranspose.apply(grad_z, pattern, ctx.rep), None, None


def frozen_mix(v: torch.Tensor, pattern: torch.Tensor, heads: int) -> torch.Tensor:
    """A zero tensor shaped like ``z`` that carries ``d z / d v`` for a frozen ``pattern``.

    Args:
        v: ``(batch, key_pos, kv_heads, d_head)`` values (the ``hook_v`` activation, live).
        pattern: ``(batch, heads, query_pos, key_pos)`` frozen attention pattern.
        heads: Number of query heads (``kv_heads`` divides it).

    Returns:
        ``(batch, query_pos, heads, d_head)`` zeros.
    """
    return _FrozenMix.apply(v, pattern.detach(), heads)  # type: ignore[return-value]
