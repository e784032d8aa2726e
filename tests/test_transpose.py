"""The frozen blocks' explicit transposes (``_transpose``) against their VJPs and the generic path.

Attribution carries targets' gradients down the frozen blocks with explicit matrix products
where it knows the block's shape, and with ``torch.func.vjp`` of the replayed block otherwise.
Both must give the same rows: here every tiny architecture and transcoder kind is checked block
by block (the transpose against the VJP on random directions), graph by graph (explicit and
generic paths, with and without position bands), and the fallbacks are exercised.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from itertools import pairwise

import pytest
import torch

import sae_circuits as sc
from sae_circuits.attribution import _backward
from sae_circuits.attribution._backward import trace
from sae_circuits.attribution._transpose import _Norm, block_transpose, check_transpose
from sae_circuits.core.prompts import to_tokens
from sae_circuits.toy import tiny_clt, tiny_model, tiny_transcoders
from sae_circuits.transcoders._fit import check_compatible

from .conftest import KINDS, PROMPT, build
from .tolerance import F64_EPS, RTOL, assert_close

ARCHS4 = ("gpt2", "llama", "gemma2", "gemma3")


def _setup(arch: str, kind: str, *, dtype: torch.dtype = torch.float32):
    """A tiny model and its transcoders (``kind="clt"``: a cross-layer transcoder)."""
    if arch == "gemma3":
        model = tiny_model("gemma3", seed=0)
        tcs = tiny_transcoders(model, "relu" if kind == "clt" else kind, seed=0)  # type: ignore[arg-type]
    else:
        model, tcs = build(arch, "relu" if kind == "clt" else kind)
    source = tiny_clt(tcs, seed=0) if kind == "clt" else tcs
    if dtype != torch.float32:
        # copies: Module.to converts in place, and build()'s transcoders are shared by every
        # test (a bfloat16 llama-relu set broke later tests that run in this process)
        model = model.to(dtype)
        source = (
            [copy.deepcopy(t).to(dtype=dtype) for t in source]
            if isinstance(source, list)
            else copy.deepcopy(source).to(dtype=dtype)
        )
    return model, sc.load_transcoders(source)


def _generic(monkeypatch) -> None:
    """Make every block keep the generic VJP path."""
    monkeypatch.setattr(_backward, "_checked_transpose", lambda *args: None)


@pytest.mark.parametrize("kind", (*KINDS, "clt"))
@pytest.mark.parametrize("arch", ARCHS4)
def test_every_tiny_block_has_an_explicit_transpose_equal_to_its_vjp(arch, kind):
    model, ts = _setup(arch, kind)
    tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
    assert all(t is not None for t in tr._transposes), "every tiny block is a known shape"
    assert all(t.causal for t in tr._transposes if t is not None)
    has_skip = kind in ("skip", "jumprelu_skip")
    assert all((t.w_skip is not None) == has_skip for t in tr._transposes if t is not None)
    for layer, tp in enumerate(tr._transposes):
        assert tp is not None
        err = check_transpose(
            tp, tr._vjps[layer], tr._out_shapes[layer], tr._in_shapes[layer], seed=100 + layer
        )
        # products of widths <= 96 over one block: a few ulps of the largest entry
        assert err <= RTOL, (layer, err)


def test_float64_transpose_agrees_to_float64_rounding():
    model, ts = _setup("gemma2", "jumprelu_skip", dtype=torch.float64)
    tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
    for layer, tp in enumerate(tr._transposes):
        assert tp is not None
        err = check_transpose(tp, tr._vjps[layer], tr._out_shapes[layer], tr._in_shapes[layer])
        assert err <= 1e4 * F64_EPS, (layer, err)  # ~2e-12: float32 work would show as ~1e-7


@pytest.mark.parametrize("kind", ("relu", "jumprelu_skip", "clt"))
@pytest.mark.parametrize("arch", ARCHS4)
def test_explicit_and_generic_paths_give_the_same_graph(arch, kind, monkeypatch):
    model, ts = _setup(arch, kind)
    explicit = sc.attribute(model, PROMPT, ts, batch_size=64)
    _generic(monkeypatch)
    generic = sc.attribute(model, PROMPT, ts, batch_size=64)
    assert explicit.nodes.equals(generic.nodes)
    assert_close(explicit.adjacency, generic.adjacency, what="explicit vs generic transpose")


def test_frozen_heads_are_zero_in_the_explicit_transpose():
    """Head loadings freeze heads: the transpose masks them, and agrees with the masked VJP."""
    model, ts = _setup("llama", "relu")
    resolved = check_compatible(model, ts)
    frozen = {0: [1, 3], 2: [0]}
    tr = trace(model, to_tokens(model, PROMPT), resolved, frozen_heads=frozen)
    for layer, tp in enumerate(tr._transposes):
        assert tp is not None
        if layer in frozen:
            assert tp.head_mask is not None
            assert tp.head_mask.tolist() == [0.0 if h in frozen[layer] else 1.0 for h in range(4)]
        else:
            assert tp.head_mask is None
        err = check_transpose(tp, tr._vjps[layer], tr._out_shapes[layer], tr._in_shapes[layer])
        assert err <= RTOL
    plain = trace(model, to_tokens(model, PROMPT), resolved)
    assert plain._transposes[0] is not None
    g = torch.randn(2, *plain._out_shapes[0][1:], generator=torch.Generator().manual_seed(0))
    frozen_all = trace(
        model, to_tokens(model, PROMPT), resolved, frozen_heads={0: [0, 1, 2, 3]}
    )._transposes[0]
    assert frozen_all is not None
    g_in, _ = frozen_all(g, None)
    assert torch.equal(g_in, g), "with every head frozen, only the residual path remains"


def test_position_bands_give_the_same_rows():
    """A slice cut into bands of positions (each on its causal cone) equals the whole slice."""
    model = tiny_model("llama", seed=3, n_ctx=96)
    ts = sc.load_transcoders(tiny_transcoders(model, "relu", seed=3))
    resolved = check_compatible(model, ts)
    words = [f"t{2 + (7 * i) % 60}" for i in range(80)]
    tr = trace(model, to_tokens(model, " ".join(words)), resolved)
    sel = torch.arange(tr.n_active)
    layers, positions, vectors = tr.feature_layer[sel], tr.feature_pos[sel], tr.encoder_vectors(sel)
    bands = _backward._position_bands(positions, rows=16, max_bands=8)
    assert len(bands) > 2
    assert torch.equal(torch.sort(torch.cat(bands)).values, sel)
    for a, b in pairwise(bands):  # ordered by position, never split
        assert int(positions[a].max()) < int(positions[b].min())
    width = tr.n_sources
    whole = torch.zeros(len(sel), width)
    tr._rows_explicit(layers, positions, vectors, whole, tr.n_active, tr._transposes)  # type: ignore[arg-type]
    banded = torch.zeros(len(sel), width)
    for band in bands:
        part = torch.zeros(len(band), width)
        tr._rows_explicit(
            layers[band],
            positions[band],
            vectors[band],
            part,
            tr.n_active,
            tr._transposes,  # type: ignore[arg-type]
        )
        banded[band] = part
    assert float(whole.abs().max()) > 0
    assert_close(banded, whole, what="rows in position bands")


def test_a_transpose_that_disagrees_falls_back_with_a_warning(monkeypatch, caplog):
    """A misread block (here: a transpose with a wrong output matrix) keeps the generic path."""
    import dataclasses

    model, ts = _setup("gpt2", "relu")
    reference = sc.attribute(model, PROMPT, ts, batch_size=64)

    def misread(*args, **kwargs):
        tp = block_transpose(*args, **kwargs)
        if tp is None or args[2] != 1:
            return tp
        return dataclasses.replace(tp, w_o=tp.w_o * 1.5)

    monkeypatch.setattr(_backward, "block_transpose", misread)
    with caplog.at_level(logging.WARNING, logger=_backward.__name__):
        tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
        graph = sc.attribute(model, PROMPT, ts, batch_size=64)
    assert tr._transposes[1] is None and tr._transposes[0] is not None
    assert any("block 1" in r.getMessage() for r in caplog.records)
    assert_close(graph.adjacency, reference.adjacency, what="fallback block")
    tp = block_transpose(model, check_compatible(model, ts), 1, {}, frozen_heads=())
    assert tp is None  # no recorded cache: refused, not guessed


def test_blocks_the_transpose_does_not_know_keep_the_generic_path():
    model, ts = _setup("llama", "relu", dtype=torch.bfloat16)
    resolved = check_compatible(model, ts)
    tr = trace(model, to_tokens(model, PROMPT), resolved)
    assert all(t is None for t in tr._transposes), "half precision: norms compute in float32"
    graph = sc.attribute(model, PROMPT, ts, batch_size=64)
    assert graph.adjacency.nnz > 0
    # hooks outside the mapped ones (an attention-output target) keep the generic path too
    model, ts = _setup("gpt2", "relu")
    resolved = check_compatible(model, ts)
    from sae_circuits.core.hooks import resolve_hook

    site = resolve_hook(model, "blocks.1.attn.hook_q")
    tr = trace(model, to_tokens(model, PROMPT), resolved, target_hooks=[site])
    assert tr._transposes[1] is None and tr._transposes[0] is not None


def test_check_tolerance_separates_rounding_from_a_misread_block():
    """The 1e-4 acceptance bound sits far above float32 rounding and far below a real error."""
    assert _backward._TRANSPOSE_TOLERANCE > 10 * RTOL  # RTOL: 64 float32 ulps
    model, ts = _setup("gemma2", "skip")
    tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
    import dataclasses

    tp = tr._transposes[0]
    assert tp is not None
    bad = dataclasses.replace(tp, w_skip=None)  # the skip path forgotten
    err = check_transpose(bad, tr._vjps[0], tr._out_shapes[0], tr._in_shapes[0])
    assert err > 100 * _backward._TRANSPOSE_TOLERANCE


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_banded_pattern_transpose_skips_only_zero_blocks(arch, monkeypatch):
    """Long prompts transpose the pattern block by block of keys over the query rows with
    nonzero entries only (the causal triangle; a sliding window's band): the same graph."""
    from sae_circuits.attribution import _transpose

    model, ts = _setup(arch, "relu")
    whole = sc.attribute(model, PROMPT, ts, batch_size=64)
    monkeypatch.setattr(_transpose, "_KEY_BLOCK", 2)  # blocks of 2 keys: banded past 4 tokens
    tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
    n = tr.n_pos
    bands = [t.bands for t in tr._transposes if t is not None]
    assert len(bands) == model.cfg.n_layers and all(bands)
    assert all(q0 == k0 for band in bands for k0, _, q0, _ in band[1:])  # causal: q >= k
    if arch == "gemma3":  # its local layers (window 4) skip the rows past the window
        window = model.cfg.window_size
        local = [b for b, t in zip(bands, model.cfg.attn_types or (), strict=False) if t == "local"]
        assert local and all(q1 == min(n, k1 + window - 1) for b in local for _, k1, _, q1 in b)
    banded = sc.attribute(model, PROMPT, ts, batch_size=64)
    assert banded.nodes.equals(whole.nodes)
    assert_close(banded.adjacency, whole.adjacency, what="banded vs whole pattern transpose")


@pytest.mark.parametrize("kind", ("relu", "jumprelu_skip"))
@pytest.mark.parametrize("arch", ARCHS4)
def test_inject_equals_the_transpose_of_a_one_position_direction(arch, kind):
    """``inject`` (W_O^T on one vector, W_V^T per head) = the block's transpose of ``g_x``."""
    model, ts = _setup(arch, kind)
    resolved = check_compatible(model, ts)
    frozen = {1: [0]} if arch == "llama" else None  # a masked head on one path
    tr = trace(model, to_tokens(model, PROMPT), resolved, frozen_heads=frozen)
    gen = torch.Generator().manual_seed(7)
    n = tr.n_pos
    positions = torch.tensor([0, n - 1, n // 2, n // 2, 1])
    # the same blocks read as parallel (GPT-J, NeoX): inject's other branch against __call__'s
    blocks = [(layer, tp) for layer, tp in enumerate(tr._transposes)]
    blocks += [(layer, dataclasses.replace(tp, parallel=True)) for layer, tp in blocks[:1]]
    for layer, tp in blocks:
        assert tp is not None
        d_in, d = tr._in_shapes[layer][-1], tr._out_shapes[layer][-1]
        vectors = torch.randn(len(positions), d_in, generator=gen)
        for m in (n, n - 1 if tp.causal else n):
            keep = positions < m
            pos, vec = positions[keep], vectors[keep]
            g_x = torch.zeros(len(pos), m, d_in)
            g_x[torch.arange(len(pos)), pos] = vec
            want, src = tp(torch.zeros(len(pos), m, d), g_x)
            assert float(src.abs().max()) == 0.0  # a target reading this MLP input: no source
            got = tp.inject(pos, vec, m)
            assert got.shape == want.shape
            assert_close(got, want, what=f"inject, layer {layer}, m {m}")


def test_rows_in_any_layer_order_equal_rows_in_layer_order():
    """Targets are carried in ascending layer order inside a slice; the caller's order of
    features and logits, mixed, gives the same rows in its own order."""
    model, ts = _setup("gemma3", "jumprelu_skip")
    tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
    ids = torch.tensor([3, 5, 11])
    layers = torch.cat([tr.feature_layer, torch.full((3,), tr.n_layers)])
    positions = torch.cat([tr.feature_pos, torch.full((3,), tr.n_pos - 1)])
    vectors = torch.cat([tr.encoder_vectors(torch.arange(tr.n_active)), tr.logit_vectors(ids)])
    width = tr.n_sources
    ordered = torch.zeros(len(layers), width)
    tr._rows_explicit(layers, positions, vectors, ordered, tr.n_active, tr._transposes)  # type: ignore[arg-type]
    perm = torch.randperm(len(layers), generator=torch.Generator().manual_seed(1))
    shuffled = torch.zeros(len(layers), width)
    tr._rows_explicit(
        layers[perm],
        positions[perm],
        vectors[perm],
        shuffled,
        tr.n_active,
        tr._transposes,  # type: ignore[arg-type]
    )
    assert float(ordered.abs().max()) > 0
    assert_close(shuffled, ordered[perm], what="rows in a shuffled layer order")


@pytest.mark.parametrize("kind", ("relu", "jumprelu_skip"))
def test_parallel_blocks_are_exact_on_both_paths(kind, monkeypatch):
    """GPT-NeoX-style blocks (attention and MLP both read the block's input): the explicit
    transpose equals each block's VJP, both paths give one graph, and its columns equal the
    direct effects measured in a frozen float64 copy."""
    import numpy as np

    from .oracle import FrozenOracle, sample_sources, worst_column_error

    model = tiny_model("neox", seed=0)
    ts = sc.load_transcoders(tiny_transcoders(model, kind, seed=0))  # type: ignore[arg-type]
    tr = trace(model, to_tokens(model, PROMPT), check_compatible(model, ts))
    assert all(t is not None and t.parallel for t in tr._transposes)
    for layer, tp in enumerate(tr._transposes):
        assert tp is not None
        err = check_transpose(tp, tr._vjps[layer], tr._out_shapes[layer], tr._in_shapes[layer])
        assert err <= RTOL, (layer, err)
    explicit = sc.attribute(model, PROMPT, ts, batch_size=64)
    oracle = FrozenOracle(model, ts, torch.tensor(explicit.metadata["tokens"]))
    sources = sample_sources(explicit, np.random.default_rng(0))
    assert len(sources) >= 10
    assert worst_column_error(explicit, oracle, sources) < 1e-4
    _generic(monkeypatch)
    generic = sc.attribute(model, PROMPT, ts, batch_size=64)
    assert explicit.nodes.equals(generic.nodes)
    assert_close(explicit.adjacency, generic.adjacency, what="explicit vs generic transpose")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_multi_query_blocks_fold_the_heads_into_one_product(arch, monkeypatch):
    """One key/value head (Gemma 3 270M): the pattern's transpose is one product over the
    ``(q, h)`` rows; it equals each block's VJP (with a frozen head, and banded) and gives the
    generic path's graph."""
    from sae_circuits.attribution import _transpose

    model = tiny_model(arch, seed=0, n_key_value_heads=1)  # type: ignore[arg-type]
    ts = sc.load_transcoders(tiny_transcoders(model, "relu", seed=0))
    resolved = check_compatible(model, ts)
    tokens = to_tokens(model, PROMPT)
    for key_block in (_transpose._KEY_BLOCK, 2):  # whole; blocks of 2 keys (banded past 4)
        monkeypatch.setattr(_transpose, "_KEY_BLOCK", key_block)
        tr = trace(model, tokens, resolved, frozen_heads={1: [2]})
        for layer, tp in enumerate(tr._transposes):
            assert tp is not None and tp.rep == model.cfg.n_heads
            assert bool(tp.bands) == (key_block == 2)
            err = check_transpose(tp, tr._vjps[layer], tr._out_shapes[layer], tr._in_shapes[layer])
            assert err <= RTOL, (key_block, layer, err)
    monkeypatch.setattr(_transpose, "_KEY_BLOCK", 2)
    explicit = sc.attribute(model, PROMPT, ts, batch_size=64)
    _generic(monkeypatch)
    generic = sc.attribute(model, PROMPT, ts, batch_size=64)
    assert explicit.nodes.equals(generic.nodes)
    assert_close(explicit.adjacency, generic.adjacency, what="explicit vs generic transpose")


@pytest.mark.parametrize(("arch", "kv"), [("gpt2", 1), ("llama", 3), ("llama", 0)])
def test_tiny_model_rejects_key_value_heads_it_cannot_build(arch, kv):
    with pytest.raises(ValueError, match=r"n_key_value_heads=.*grouped-query style.*n_heads=4"):
        tiny_model(arch, n_key_value_heads=kv)


@pytest.mark.parametrize("center", [False, True], ids=["rms", "layernorm"])
@pytest.mark.parametrize("weighted", [False, True], ids=["no-weight", "weight"])
def test_a_norm_folded_into_a_matrix_is_its_transpose_then_the_matrix(center, weighted):
    """``fold_rows`` / ``fold_cols`` (the norms around the attention, folded into ``W_z`` and
    ``W_a``) equal the norm's transpose applied to the gradients, up to the per-position scale
    (which the block folds into the pattern); in float64, so any misfold shows."""
    gen = torch.Generator().manual_seed(0)
    n, d, x = 5, 12, 7
    dt = torch.float64
    scale = torch.rand(n, 1, generator=gen, dtype=dt) + 0.5
    weight = torch.randn(d, generator=gen, dtype=dt) if weighted else None
    norm = _Norm(scale=scale, weight=weight, center=center)
    g = torch.randn(1, n, d, generator=gen, dtype=dt)
    mat = torch.randn(d, x, generator=gen, dtype=dt)
    want = norm.transpose(g)[0] @ mat
    got = (g[0] @ norm.fold_rows(mat)) / scale
    assert_close(got, want, rtol=1e3 * F64_EPS, what="fold_rows")
    v = torch.randn(n, x, generator=gen, dtype=dt)
    cols = torch.randn(x, d, generator=gen, dtype=dt)
    want = norm.transpose((v @ cols)[None])[0]
    got = (v @ norm.fold_cols(cols)) / scale
    assert_close(got, want, rtol=1e3 * F64_EPS, what="fold_cols")
