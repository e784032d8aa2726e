"""attribute_attention: QK attributions, exact against the model and measured perturbations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits.attribution import _attention, qk_sites
from sae_circuits.core.prompts import to_tokens
from sae_circuits.graph import node_ids
from sae_circuits.toy import tiny_model, tiny_transcoders

from .conftest import PROMPT, assert_same_model, build, model_fingerprint
from .oracle import FrozenOracle
from .tolerance import assert_close

ARCHS4 = ["gpt2", "llama", "gemma2", "gemma3"]


def _setup(arch: str, kind: str = "relu"):
    if arch == "gemma3":  # QK-norm and two rotary bases (not in the conftest cache)
        model = tiny_model("gemma3", seed=0)
        return model, sc.load_transcoders(tiny_transcoders(model, kind, seed=0))
    model, tcs = build(arch, kind)
    return model, sc.load_transcoders(tcs)


def _model_scores(model, layer: int) -> torch.Tensor:
    """``(n_heads, n, n)`` the model's own attention scores (after any soft-cap, masked)."""
    tokens = to_tokens(model, PROMPT)
    _, cache = model.run_with_cache(
        tokens[None], names_filter=f"blocks.{layer}.attn.hook_attn_scores"
    )
    return cache[f"blocks.{layer}.attn.hook_attn_scores"][0]


@pytest.mark.parametrize("kind", ["relu", "skip"])
@pytest.mark.parametrize("arch", ARCHS4)
def test_pairs_sum_to_the_models_score(arch, kind):
    model, ts = _setup(arch, kind)
    layer, head, query, key = 2, 3, 9, 6
    qk = sc.attribute_attention(
        model, PROMPT, ts, layer=layer, head=head, query=query, key=key, top_pairs=10**6
    )
    cap = model.cfg.attn_scores_soft_cap
    expected = float(_model_scores(model, layer)[head, query, key])
    got = cap * np.tanh(qk.score / cap) if cap and cap > 0 else qk.score
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6 * max(1.0, abs(expected)))
    scale = max(np.abs(qk.pairs["contribution"]).max(), abs(qk.score))
    # every pair listed: they sum to the score, and so do both sides
    assert abs(qk.residual) <= 64 * 2**-23 * scale * np.sqrt(len(qk.pairs))
    for side in (qk.query_side, qk.key_side):
        assert_close(side["contribution"].sum(), qk.score, scale=scale, what=f"{arch} side sum")
    # a side's share of a source is its row (column) of pairs summed
    by_query = qk.pairs.groupby("query_node")["contribution"].sum()
    shares = qk.query_side.set_index("node")["contribution"]
    assert_close(by_query[shares.index].to_numpy(), shares.to_numpy(), scale=scale, what="rows")
    by_key = qk.pairs.groupby("key_node")["contribution"].sum()
    shares = qk.key_side.set_index("node")["contribution"]
    assert_close(by_key[shares.index].to_numpy(), shares.to_numpy(), scale=scale, what="cols")
    assert qk.pattern == pytest.approx(
        float(torch.softmax(_model_scores(model, layer)[head, query], -1)[key]), rel=1e-4
    )


@pytest.mark.parametrize("arch", ARCHS4)
def test_sides_equal_measured_perturbations(arch):
    """Adding a source once more in a frozen float64 copy moves q (k) by its query-side
    (key-side) share divided by k (q); removing every source leaves the bias terms."""
    model, ts = _setup(arch, "jumprelu")
    layer, head, query, key = 2, 1, 8, 4
    qk = sc.attribute_attention(model, PROMPT, ts, layer=layer, head=head, query=query, key=key)
    graph = sc.attribute(model, PROMPT, ts)  # every active feature: its node ids are the sources
    q_name, k_name = qk_sites(model, layer)
    oracle = FrozenOracle(model, ts, torch.tensor(graph.metadata["tokens"]), hooks=(q_name, k_name))
    kv = qk.metadata["kv_head"]
    q0 = oracle.base_read[q_name][query, head]
    k0 = oracle.base_read[k_name][key, kv]
    scale = qk.metadata["attn_scale"]
    ids, _ = node_ids(graph)
    q_share = dict(zip(qk.query_side["node"], qk.query_side["contribution"], strict=True))
    k_share = dict(zip(qk.key_side["node"], qk.key_side["contribution"], strict=True))
    kinds = graph.nodes["kind"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    picks = [*rng.choice(np.flatnonzero(kinds == "feature"), 10, replace=False)]
    picks += [*np.flatnonzero(kinds == "error")[-6:], *np.flatnonzero(kinds == "token")[1:]]
    measured_q, measured_k, listed_q, listed_k = [], [], [], []
    for node in picks:
        oracle._frozen(oracle.source_perturbation(graph, int(node)))
        dq = oracle.read_out[q_name][query, head] - q0
        dk = oracle.read_out[k_name][key, kv] - k0
        measured_q.append(float(dq @ k0) / scale)
        measured_k.append(float(q0 @ dk) / scale)
        listed_q.append(q_share.get(ids[node], 0.0))
        listed_k.append(k_share.get(ids[node], 0.0))
    big = max(np.abs(measured_q).max(), np.abs(measured_k).max())
    assert big > 1e-3
    assert_close(listed_q, measured_q, rtol=1e-4, scale=big, what=f"{arch} query side")
    assert_close(listed_k, measured_k, rtol=1e-4, scale=big, what=f"{arch} key side")
    # the bias terms: the frozen model with every source removed
    total: dict = {}
    for node in np.flatnonzero(np.isin(kinds, ["feature", "error", "token"])):
        for where, v in oracle.source_perturbation(graph, int(node)).items():
            total[where] = total.get(where, 0) - v
    oracle._frozen(total)
    q_none = oracle.read_out[q_name][query, head]
    k_none = oracle.read_out[k_name][key, kv]
    assert q_share["bias"] == pytest.approx(float(q_none @ k0) / scale, rel=1e-4, abs=1e-4 * big)
    assert k_share["bias"] == pytest.approx(float(q0 @ k_none) / scale, rel=1e-4, abs=1e-4 * big)


def test_top_pairs_are_the_largest_whatever_the_block(monkeypatch):
    model, ts = _setup("llama")
    full = sc.attribute_attention(
        model, PROMPT, ts, layer=2, head=0, query=10, key=7, top_pairs=10**6
    )
    expected = full.pairs.reindex(
        full.pairs["contribution"].abs().sort_values(ascending=False).index
    )
    for block in (2**22, 64, 1):  # one block, several, one query column at a time
        monkeypatch.setattr(_attention, "_BLOCK", block)
        top = sc.attribute_attention(
            model, PROMPT, ts, layer=2, head=0, query=10, key=7, top_pairs=15
        )
        assert len(top.pairs) == 15
        np.testing.assert_allclose(
            np.abs(top.pairs["contribution"]), np.abs(expected["contribution"][:15]), rtol=1e-6
        )
        assert top.residual == pytest.approx(top.score - top.pairs["contribution"].sum())
        assert_close(top.residual + top.pairs["contribution"].sum(), full.score, rtol=1e-5)


def test_top_keys_share_one_trace_and_follow_the_pattern():
    model, ts = _setup("gemma2")
    many = sc.attribute_attention_keys(model, PROMPT, ts, layer=1, head=2, query=9, n_keys=3)
    assert len(many) == 3
    patterns = [qk.pattern for qk in many]
    assert patterns == sorted(patterns, reverse=True)
    assert all(qk.key <= 9 for qk in many)
    one = sc.attribute_attention(model, PROMPT, ts, layer=1, head=2, query=9, key=many[1].key)
    assert one.score == pytest.approx(many[1].score, rel=1e-6)
    assert one.query_side["node"].tolist() == many[1].query_side["node"].tolist()


BAD = [
    ({"layer": 3}, "layer must be an integer in 0..2"),
    ({"layer": -1}, "layer must be an integer in 0..2"),
    ({"head": 4}, "head must be an integer in 0..3"),
    ({"query": 11}, r"query position must be an integer in 0..10"),
    ({"key": -12}, r"key position must be an integer in 0..10"),
    ({"query": 4, "key": 6}, "key position 6 is after the query position 4"),
    ({"top_pairs": 0}, "top_pairs must be an integer >= 1"),
    ({"layer": True}, "layer must be an integer"),
]


@pytest.mark.parametrize(("change", "match"), BAD)
def test_bad_input_names_the_valid_ranges(change, match):
    model, ts = _setup("gpt2")
    before = model_fingerprint(model)
    kwargs = {"layer": 1, "head": 0, "query": 8, "key": 3, **change}
    with pytest.raises(ValueError, match=match):
        sc.attribute_attention(model, PROMPT, ts, **kwargs)
    assert_same_model(before, model_fingerprint(model))
    with pytest.raises(ValueError, match="n_keys must be an integer >= 1"):
        sc.attribute_attention_keys(model, PROMPT, ts, layer=1, head=0, query=8, n_keys=0)


def test_attention_the_method_cannot_follow_is_named():
    model, ts = _setup("gpt2")
    odd = copy.deepcopy(model)
    odd.cfg.use_qk_norm = True  # a QK-norm without rotary embeddings: no hook after the norm
    with pytest.raises(ValueError, match=r"cannot follow .*QK-norm without rotary"):
        sc.attribute_attention(odd, PROMPT, ts, layer=1, head=0, query=8, key=3)


def test_toy_facts_heads_look_from_is_for_the_city():
    """The worked example of docs/attention.md: layer 1's heads look from "is" for a city."""
    from sae_circuits.toy import load_toy_labels, load_toy_model, load_toy_transcoders

    model, ts = load_toy_model(), load_toy_transcoders("plt")
    labels = load_toy_labels("plt")
    prompt = "The capital of the state containing Dallas is"
    keys = sc.attribute_attention_keys(model, prompt, ts, layer=1, head=2, query=8, n_keys=3)
    assert keys[0].key == 7 and keys[0].pattern > 0.9  # "dallas"
    qk = keys[0]

    def label(row) -> str:
        return labels[int(row["layer"])][int(row["feature"])]

    top_query = qk.query_side[qk.query_side["kind"] == "feature"].iloc[0]
    assert "'is'" in label(top_query) and int(top_query["position"]) == 8
    key_features = qk.key_side[qk.key_side["kind"] == "feature"].head(3)
    assert all(int(p) == 7 for p in key_features["position"])
    assert any("city" in label(r) for _, r in key_features.iterrows())
    assert any("texas" in label(r) for _, r in key_features.iterrows())


def test_heads_that_carry_an_edge_and_why_they_looked():
    """toy-facts: the "texas (state of city)" feature at "dallas" reaches the "austin" logit
    through layer 1's heads; each is explained at (query "is", key "dallas")."""
    from sae_circuits.toy import load_toy_model, load_toy_transcoders

    model, ts = load_toy_model(), load_toy_transcoders("plt")
    prompt = "The capital of the state containing Dallas is"
    graph = sc.attribute(model, prompt, ts)
    nodes = graph.nodes
    texas = (nodes["kind"] == "feature") & (nodes["layer"] == 0) & (nodes["feature"] == 320)
    source = int(np.flatnonzero((texas & (nodes["position"] == 7)).to_numpy())[0])
    target = int(graph.target_indices[0])  # "austin"
    found = sc.attribute_attention_for_edge(
        model, prompt, ts, graph, source=source, target=target, n_heads=3
    )
    assert [(x["layer"], x["head"]) for x, _ in found] == [(1, 2), (1, 0), (1, 1)]
    assert sum(x["share"] for x, _ in found) == pytest.approx(1.0, abs=0.05)
    for loading, qk in found:
        assert (qk.layer, qk.head, qk.query, qk.key) == (1, loading["head"], 8, 7)
        alone = sc.attribute_attention(model, prompt, ts, layer=1, head=qk.head, query=8, key=7)
        assert qk.score == pytest.approx(alone.score, rel=1e-6)
    with pytest.raises(ValueError, match="n_heads must be an integer >= 1"):
        sc.attribute_attention_for_edge(
            model, prompt, ts, graph, source=source, target=target, n_heads=0
        )
