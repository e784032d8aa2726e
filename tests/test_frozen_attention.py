"""The frozen-attention product's batched backward, against plain einsum arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch.func import vjp, vmap

from sae_circuits.attribution._frozen_attention import frozen_mix

from .tolerance import F64_EPS, assert_close


def _pattern(gen: torch.Generator, heads: int, n: int, causal: bool) -> torch.Tensor:
    scores = torch.randn(1, heads, n, n, generator=gen, dtype=torch.float64)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("rep", [1, 2])
def test_batched_backward_equals_the_dense_transpose(causal, rep):
    gen = torch.Generator().manual_seed(0)
    n, heads, d = 9, 4, 3
    pattern = _pattern(gen, heads, n, causal)
    v = torch.randn(1, n, heads // rep, d, generator=gen, dtype=torch.float64)
    z, vjp_fn = vjp(lambda v: frozen_mix(v, pattern, heads), v)
    assert torch.equal(z, torch.zeros(1, n, heads, d, dtype=torch.float64))
    # targets whose gradients end at different positions, one all zero: the causal cone varies
    grads = torch.randn(5, 1, n, heads, d, generator=gen, dtype=torch.float64)
    for b, last in enumerate([n, 6, 3, 1, 0]):
        grads[b, :, last:] = 0
    for top in (n, 4, 0):  # a batch whose live positions all end by `top`
        batch = grads.clone()
        batch[:, :, top:] = 0
        (got,) = vmap(vjp_fn)(batch)
        full = torch.einsum("bhqk,Vbqhd->Vbkhd", pattern, batch)  # every query, every key
        expect = full.reshape(5, 1, n, heads // rep, rep, d).sum(-2)
        # float64 sums of n * rep terms in another order: a few ulps of the largest value
        assert_close(got, expect, eps=F64_EPS, what=f"batched, top={top}")
        (single,) = vjp_fn(batch[1])  # the unbatched path agrees
        assert_close(single, expect[1], eps=F64_EPS, what=f"unbatched, top={top}")


def _two_head_vjp(seed: int, n: int, causal: bool):
    """A 2-head frozen mix over ``n`` positions: its pattern, VJP and zero ``(2, 1, n, 2, 2)`` grads."""
    gen = torch.Generator().manual_seed(seed)
    pattern = _pattern(gen, 2, n, causal=causal)
    v = torch.randn(1, n, 2, 2, generator=gen, dtype=torch.float64)
    _, vjp_fn = vjp(lambda v: frozen_mix(v, pattern, 2), v)
    return pattern, vjp_fn, torch.zeros(2, 1, n, 2, 2, dtype=torch.float64)


def test_a_non_causal_pattern_is_not_cut_at_the_last_query():
    pattern, vjp_fn, grads = _two_head_vjp(1, 6, causal=False)
    grads[:, :, 0] = 1.0  # only the first query is live; its keys reach the end
    (got,) = vmap(vjp_fn)(grads)
    assert got[:, :, 5].abs().sum() > 0
    assert_close(got, torch.einsum("bhqk,Vbqhd->Vbkhd", pattern, grads), eps=F64_EPS)


def test_a_nan_gradient_is_not_mistaken_for_zero():
    _, vjp_fn, grads = _two_head_vjp(2, 5, causal=True)
    grads[0, 0, 4, 0, 0] = float("nan")  # only at the last query: it must still propagate
    (got,) = vmap(vjp_fn)(grads)
    assert got[0].isnan().any() and not got[1].isnan().any()
