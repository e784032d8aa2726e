"""bfloat16 and float16 models and transcoders: end to end, rows accumulated in float32.

The graph of a half-precision model is the graph of another model (its weights and activations
rounded), so it is compared with the float32 graph on the nodes both have, with bounds that follow
from the formats' precision (bfloat16 keeps 8 significant bits, float16 11); the exact figures on
the toy-facts model are in docs/performance.md (``benchmarks/bench_precision.py``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits.attribution import trace
from sae_circuits.core.prompts import to_tokens
from sae_circuits.transcoders import check_compatible

from .conftest import PROMPT, build

#: median relative error of the edges above 1% of the largest, against float32
MEDIAN_BOUND = {"bfloat16": 3e-2, "float16": 5e-3}


def _half(arch: str, kind: str, dname: str):
    model, tcs = build(arch, kind)
    dtype = getattr(torch, dname)
    half = copy.deepcopy(model).to(dtype)
    half.cfg.dtype = dtype
    half.tokenizer = model.tokenizer
    return model, tcs, half, [copy.deepcopy(t).to(dtype) for t in tcs]


def _common(g32, g16) -> tuple[np.ndarray, np.ndarray]:
    def keys(g):
        n = g.nodes
        cols = [n[c].astype("Int64").fillna(-1).tolist() for c in ("layer", "position", "feature")]
        return list(zip(n["kind"].astype(str), *cols, strict=True))

    k32 = {k: i for i, k in enumerate(keys(g32))}
    pairs = [(k32[k], j) for j, k in enumerate(keys(g16)) if k in k32]
    return np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])


@pytest.mark.parametrize("dname", ["bfloat16", "float16"])
@pytest.mark.parametrize(
    ("arch", "kind"), [("gpt2", "relu"), ("llama", "skip"), ("gemma2", "jumprelu")]
)
def test_half_precision_graph_is_close_to_float32(arch, kind, dname):
    model, tcs, half, half_tcs = _half(arch, kind, dname)
    g32 = sc.attribute(model, PROMPT, sc.load_transcoders(tcs))
    ts = sc.load_transcoders(half_tcs)
    g16 = sc.attribute(half, PROMPT, ts)
    assert g16.adjacency.dtype == np.float32
    assert int(g16.logits["token_id"][0]) in g32.logits["token_id"].tolist()
    i32, i16 = _common(g32, g16)
    n_feat = int((g32.nodes["kind"] == "feature").sum())
    assert (g32.nodes["kind"].to_numpy()[i32] == "feature").sum() >= 0.9 * n_feat
    a32 = g32.adjacency[i32][:, i32].toarray().astype(np.float64)
    a16 = g16.adjacency[i16][:, i16].toarray().astype(np.float64)
    big = np.abs(a32) > 0.01 * np.abs(a32).max()
    rel = np.abs(a16 - a32)[big] / np.abs(a32)[big]
    assert np.median(rel) < MEDIAN_BOUND[dname]
    s32, s16 = g32.scores(), g16.scores()
    assert abs(s16.replacement - s32.replacement) < 0.05
    assert abs(s16.completeness - s32.completeness) < 0.05


@pytest.mark.parametrize("dname", ["bfloat16", "float16"])
def test_rows_accumulate_in_float32(dname):
    _, _, half, half_tcs = _half("llama", "relu", dname)
    ts = sc.load_transcoders(half_tcs)
    tokens = to_tokens(half, PROMPT)
    tr = trace(half, tokens, check_compatible(half, ts))
    assert tr.dtype == getattr(torch, dname)  # the backward runs in the model's dtype
    assert tr.errors.dtype == tr.embeds.dtype == tr.feature_act.dtype == torch.float32
    assert all(
        (g.vecs if g.vecs is not None else g.table).dtype == torch.float32
        for groups in tr._writers
        for g in groups
    )
    layers = tr.feature_layer[-4:]
    sel = torch.arange(tr.n_active - 4, tr.n_active)
    parts = list(tr.row_slices(layers, tr.feature_pos[sel], tr.encoder_vectors(sel)))
    assert parts and all(p.values.dtype == torch.float32 for p in parts)


@pytest.mark.parametrize("dname", ["bfloat16", "float16"])
def test_half_precision_end_to_end(dname, tmp_path):
    _, _, half, half_tcs = _half("gemma2", "jumprelu", dname)
    ts = sc.load_transcoders(half_tcs)
    d = torch.randn(half.cfg.d_model, generator=torch.Generator().manual_seed(0))
    graph = sc.attribute(
        half,
        PROMPT,
        ts,
        targets=[5, sc.Target.logit_diff(5, 7), sc.Target("d", d, hook="blocks.1.hook_resid_mid")],
    )
    assert np.isfinite(graph.targets["value"].to_numpy(dtype=float)).all()
    pruned = graph.prune()
    back = sc.AttributionGraph.load(pruned.save(tmp_path / "g.zip"))
    assert (back.adjacency != pruned.adjacency).nnz == 0
    feats = graph.node_indices("feature")
    out_deg = np.asarray((graph.adjacency != 0).sum(axis=0)).ravel()[feats]
    feats = graph.nodes.iloc[feats[np.argsort(-out_deg)[:5]]]  # a strong intervention
    result = sc.intervene(
        half, PROMPT, ts, feats.assign(scale=5.0), direct_effects=True, targets=graph
    )
    table = sc.compare_with_graph(result, graph)
    on_targets = table[table["kind"].isin(["logit", "target"])]
    scale = float(np.abs(on_targets["measured"]).max())
    err = float(np.abs(on_targets["predicted"] - on_targets["measured"]).max())
    assert scale > 0 and err < 0.1 * scale  # the half-precision model's own rounding
    out = sc.generate(half, PROMPT, ts, feats.assign(scale=0.0), max_new_tokens=3)
    assert len(out.tokens) >= 3


@pytest.mark.parametrize(
    ("model_dtype", "tc_dtype"), [("bfloat16", "float32"), ("float32", "bfloat16")]
)
def test_model_and_transcoders_in_different_dtypes(model_dtype, tc_dtype):
    model, tcs = build("llama", "relu")
    g32 = sc.attribute(model, PROMPT, sc.load_transcoders(tcs))
    m = copy.deepcopy(model).to(getattr(torch, model_dtype))
    m.cfg.dtype = getattr(torch, model_dtype)
    ts = sc.load_transcoders([copy.deepcopy(t).to(getattr(torch, tc_dtype)) for t in tcs])
    g = sc.attribute(m, PROMPT, ts)
    assert g.adjacency.dtype == np.float32
    i32, i16 = _common(g32, g)
    a32 = g32.adjacency[i32][:, i32].toarray().astype(np.float64)
    a16 = g.adjacency[i16][:, i16].toarray().astype(np.float64)
    big = np.abs(a32) > 0.01 * np.abs(a32).max()
    assert np.median(np.abs(a16 - a32)[big] / np.abs(a32)[big]) < MEDIAN_BOUND["bfloat16"]
    result = sc.intervene(
        m, PROMPT, ts, g.nodes.iloc[g.node_indices("feature")[:2]].assign(scale=0.0)
    )
    assert torch.isfinite(result.logits).all()
