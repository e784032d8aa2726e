"""attribute(targets=...): custom targets, exact against measured direct effects, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sae_circuits as sc

from .conftest import KINDS, PROMPT, assert_same_model, build, model_fingerprint
from .oracle import FrozenOracle, sample_sources, worst_column_error
from .tolerance import assert_close


def _targets(model, ts, a: int, b: int, n_pos: int) -> list:
    """One of every target kind and site, at several positions (seeded directions)."""
    gen = torch.Generator().manual_seed(0)
    cfg = model.cfg
    d = cfg.d_model
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return [
        a,  # a token id: its logit at the last position
        sc.Target.logit(b, position=n_pos - 3),
        sc.Target.logit_diff(a, b),
        sc.Target("unembed direction", torch.randn(d, generator=gen), position=n_pos - 2),
        sc.Target("resid_mid", torch.randn(d, generator=gen), hook="blocks.1.hook_resid_mid"),
        sc.Target(
            "query",
            torch.randn(cfg.n_heads, cfg.d_head, generator=gen),
            hook="blocks.2.attn.hook_q",
        ),
        sc.Target(
            "key",
            torch.randn(n_kv * cfg.d_head, generator=gen),
            hook="blocks.1.attn.hook_k",
            position=4,
        ),
        sc.Target("mlp input", torch.randn(ts.d_in, generator=gen), hook=ts.input_hooks[2]),
        sc.Target("mlp output", torch.randn(d, generator=gen), hook=ts.output_hooks[1]),
        sc.Target("resid_post", torch.randn(d, generator=gen), hook="blocks.1.hook_resid_post"),
    ]


def _target_graph(model, ts, **kwargs):
    """The graph of every kind of target (:func:`_targets`) on the two top logits."""
    base = sc.attribute(model, PROMPT, ts)
    a, b = (int(t) for t in base.logits["token_id"][:2])
    n = len(base.metadata["tokens"])
    return sc.attribute(model, PROMPT, ts, targets=_targets(model, ts, a, b, n), **kwargs)


def _hooks(graph) -> tuple[str, ...]:
    return tuple({t["hook"] for t in graph.metadata["targets"] if t["hook"] is not None})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_target_rows_equal_measured_direct_effects(arch, kind):
    model, tcs = build(arch, kind)
    ts = sc.load_transcoders(tcs)
    graph = _target_graph(model, ts, batch_size=64)
    n = len(graph.metadata["tokens"])
    kinds = graph.nodes["kind"].astype(str).to_numpy()
    assert (kinds == "logit").sum() == 2 and (kinds == "target").sum() == 8
    oracle = FrozenOracle(model, ts, torch.tensor(graph.metadata["tokens"]), hooks=_hooks(graph))
    rng = np.random.default_rng(1)
    sources = sample_sources(graph, rng, n_features=12)
    # sources at layer 1 (what the post-MLP targets of layer 1 read) are among them
    layers = graph.nodes["layer"].to_numpy(dtype=float, na_value=-1)[sources]
    assert (layers == 1).any()
    assert worst_column_error(graph, oracle, sources) < 1e-4
    # every target row, in full, against the oracle on every feature column at layer 1
    dense = graph.adjacency.toarray()
    rows = graph.targets["node"].to_numpy()
    layer_of = graph.nodes["layer"].to_numpy(dtype=float, na_value=-1)
    pos_of = graph.nodes["position"].to_numpy(dtype=float, na_value=-1)
    at_1 = np.flatnonzero((kinds == "feature") & (layer_of == 1))
    last = at_1[pos_of[at_1] == n - 1][:6]  # what the last position's post-MLP targets read
    at_1 = np.concatenate([last, at_1[pos_of[at_1] != n - 1][:3]])
    assert len(last) > 0
    for s in at_1:
        measured = oracle.measured_column(graph, int(s))
        assert_close(dense[rows, s], measured[rows], rtol=1e-4, what=f"{arch}/{kind} col {s}")
    # a layer-1 feature reaches what block 1 holds after its MLP, never what it holds before
    labels = graph.targets["label"].tolist()
    assert np.abs(dense[rows[labels.index("resid_post")], last]).max() > 0
    assert np.abs(dense[rows[labels.index("mlp output")], last]).max() > 0
    assert (dense[rows[labels.index("resid_mid")], at_1] == 0).all()


def test_logit_difference_row_is_the_difference_of_logit_rows():
    model, tcs = build("llama", "skip")
    ts = sc.load_transcoders(tcs)
    base = sc.attribute(model, PROMPT, ts)
    a, b = (int(t) for t in base.logits["token_id"][:2])
    w = model.W_U.detach()
    graph = sc.attribute(
        model,
        PROMPT,
        ts,
        targets=[a, b, sc.Target.logit_diff(a, b), sc.Target("d", w[:, a] - w[:, b])],
    )
    dense = graph.adjacency.toarray()
    ra, rb, rd, rv = (dense[i] for i in graph.targets["node"])
    assert_close(rd, ra - rb, what="logit-diff row vs difference of logit rows")
    assert_close(rv, rd, what="W_U[:, a] - W_U[:, b] direction vs logit-diff row")
    values = graph.targets["value"].to_numpy(dtype=float)
    assert values[2] == pytest.approx(values[0] - values[1], rel=1e-5)


def test_values_are_the_clean_run_read_outs():
    model, tcs = build("gemma2", "jumprelu")  # soft-capped logits
    ts = sc.load_transcoders(tcs)
    graph = _target_graph(model, ts)
    oracle = FrozenOracle(model, ts, torch.tensor(graph.metadata["tokens"]), hooks=_hooks(graph))
    table = graph.targets
    for row, target in zip(table.itertuples(), graph.metadata["targets"], strict=True):
        p = int(row.position)
        if row.kind == "logit":
            expected = float(oracle.base_logits[p, int(row.token_id)])
        elif row.kind == "logit_diff":
            ta, tb = target["token_ids"]
            expected = float(oracle.base_logits[p, ta] - oracle.base_logits[p, tb])
        else:
            x = oracle.base_read[target["hook"] or "unembed"][p].reshape(-1)
            expected = float(x @ torch.tensor(target["direction"], dtype=torch.float64))
        assert row.value == pytest.approx(expected, rel=1e-4, abs=1e-4 * abs(expected) + 1e-5)
    # logits at the last position keep the salient graph's probabilities
    base = sc.attribute(model, PROMPT, ts)
    assert table["probability"][0] == pytest.approx(float(base.logits["probability"][0]))


def test_targets_none_is_the_salient_logits_and_ids_give_the_same_graph():
    model, tcs = build("gpt2", "relu")
    ts = sc.load_transcoders(tcs)
    salient = sc.attribute(model, PROMPT, ts)
    ids = salient.logits["token_id"].tolist()
    given = sc.attribute(model, PROMPT, ts, targets=ids)
    assert (salient.adjacency != given.adjacency).nnz == 0
    np.testing.assert_array_equal(salient.target_weights, given.target_weights)
    assert salient.targets["label"].tolist() == given.targets["label"].tolist()
    assert salient.metadata["settings"]["targets"] == "salient logits"
    # strings name the same tokens
    words = [model.tokenizer.decode([i]) for i in ids[:3]]
    by_word = sc.attribute(model, PROMPT, ts, targets=words)
    assert by_word.targets["token_id"].tolist() == ids[:3]


def test_weights_default_settable_and_drive_pruning():
    model, tcs = build("gpt2", "relu")
    ts = sc.load_transcoders(tcs)
    base = sc.attribute(model, PROMPT, ts)
    a, b = (int(t) for t in base.logits["token_id"][:2])
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    graph = sc.attribute(
        model, PROMPT, ts, targets=[a, sc.Target.logit_diff(a, b, weight=0.25), sc.Target("d", d)]
    )
    w = graph.targets["weight"].tolist()
    assert w[0] == pytest.approx(float(base.logits["probability"][0]))
    assert w[1:] == [0.25, 1.0]
    pruned = graph.prune(0.5, 0.9)
    assert pruned.targets["label"].tolist() == graph.targets["label"].tolist()
    assert pruned.targets["kind"].tolist() == ["logit", "logit_diff", "direction"]
    only_d = graph.with_target_weights([0.0, 0.0, 1.0])
    assert only_d.targets["weight"].tolist() == [0.0, 0.0, 1.0]
    assert graph.targets["weight"].tolist() == w  # the original is unchanged
    by_label = graph.with_target_weights({"d": 2.0})
    assert by_label.targets["weight"].tolist() == [w[0], 0.25, 2.0]
    # influence follows the weights: the direction target alone vs all three
    infl_d = sc.graph.node_influence(only_d.adjacency, only_d.target_weights)
    infl_all = sc.graph.node_influence(graph.adjacency, graph.target_weights)
    assert not np.allclose(infl_d, infl_all)
    with pytest.raises(ValueError, match="finite and >= 0"):
        graph.with_target_weights([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="expected 3 target weights"):
        graph.with_target_weights([1.0])
    with pytest.raises(ValueError, match="neither a target label nor a target node"):
        graph.with_target_weights({"nope": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        graph.with_target_weights([0.0, 0.0, 0.0]).prune()


def test_save_load_round_trip_keeps_targets(tmp_path):
    model, tcs = build("llama", "relu")
    ts = sc.load_transcoders(tcs)
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    graph = sc.attribute(
        model, PROMPT, ts, targets=[3, sc.Target("mid", d, hook="blocks.1.hook_resid_mid")]
    )
    back = sc.AttributionGraph.load(graph.save(tmp_path / "g.zip"))
    assert back.targets.equals(graph.targets)
    assert back.metadata["targets"] == graph.metadata["targets"]
    assert torch.equal(
        torch.tensor(back.metadata["targets"][1]["direction"], dtype=torch.float32), d
    )


def test_neuronpedia_export_names_targets_with_virtual_ids():
    model, tcs = build("gpt2", "relu")
    ts = sc.load_transcoders(tcs)
    graph = sc.attribute(
        model, PROMPT, ts, targets=[5, sc.Target.logit_diff(5, 7, label="five minus seven")]
    )
    doc = sc.to_neuronpedia(graph.prune(), slug="t", scan="tiny")
    top = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    n_layers, n = model.cfg.n_layers, len(graph.metadata["tokens"])
    ids = {n["node_id"]: n for n in top}
    assert f"{n_layers + 1}_5_{n - 1}" in ids
    virtual = f"{n_layers + 1}_{model.cfg.d_vocab + 1}_{n - 1}"
    assert virtual in ids and "five minus seven" in ids[virtual]["clerp"]
    linked = {link["target"] for link in doc["links"]}
    assert virtual in linked


BAD_TARGETS = [
    (["t5 t9"], ValueError, r"targets\[0\]: 't5 t9' is 2 tokens"),
    ([10_000], ValueError, r"targets\[0\]: token id 10000 is outside the vocabulary"),
    ([True], TypeError, r"targets\[0\]: unsupported target bool"),
    ([1.5], TypeError, r"unsupported target float"),
    ([], ValueError, "targets is empty"),
    ("t5", TypeError, "targets must be None .* or a list"),
    ([sc.Target.logit(3, position=11)], ValueError, r"position 11 is out of range .*0\.\.10"),
    ([sc.Target.logit(3, position=-12)], ValueError, "position -12 is out of range"),
    ([sc.Target("d", torch.ones(5))], ValueError, r"has 5 entries .*unembedding's input has 32"),
    ([sc.Target("d", torch.full((32,), float("nan")))], ValueError, "non-finite"),
    ([sc.Target("d", torch.zeros(32))], ValueError, "all zeros"),
    ([sc.Target("d", None)], ValueError, "has no direction"),
    ([sc.Target("d", "abc")], TypeError, "tensor or array of numbers"),
    ([sc.Target("", torch.ones(32))], ValueError, "non-empty string"),
    (
        [sc.Target("d", torch.ones(32), hook="blocks.1.hook_resid_mdi")],
        ValueError,
        r"'blocks.1.hook_resid_mdi' is not a hook of this model.*close valid names: blocks.1.hook_resid_mid",
    ),
    ([sc.Target("d", torch.ones(32), hook="blocks.9.hook_resid_mid")], ValueError, "has 3 layers"),
    ([sc.Target("d", torch.ones(32), hook="blocks.1.attn.hook_pattern")], ValueError, "is frozen"),
    ([sc.Target("d", torch.ones(32), hook="blocks.1.ln1.hook_scale")], ValueError, "is frozen"),
    ([sc.Target("d", torch.ones(32), hook="blocks.1.mlp.hook_pre")], ValueError, "inside the MLP"),
    ([sc.Target("d", torch.ones(32), hook="hook_embed")], ValueError, "outside the blocks"),
    (
        [sc.Target("d", torch.ones(16), hook="blocks.1.attn.hook_q")],
        ValueError,
        r"has 16 entries, but blocks.1.attn.hook_q holds \(4, 8\) per position \(32 entries\)",
    ),
    ([sc.Target.logit(3, weight=-1.0)], ValueError, "finite and >= 0"),
    ([sc.Target.logit(3, weight=float("inf"))], ValueError, "finite and >= 0"),
    ([sc.Target.logit_diff(3, 3)], ValueError, "with itself"),
    ([sc.Target("d", torch.ones(32), tokens=(3,))], ValueError, "takes no direction"),
]


@pytest.mark.parametrize(("targets", "error", "match"), BAD_TARGETS)
def test_bad_targets_are_named(targets, error, match):
    model, tcs = build("gpt2", "relu")
    assert model.cfg.d_model == 32
    ts = sc.load_transcoders(tcs)
    before = model_fingerprint(model)
    with pytest.raises(error, match=match):
        sc.attribute(model, PROMPT, ts, targets=targets)
    assert_same_model(before, model_fingerprint(model))


@pytest.mark.parametrize(("arch", "jumprelu"), [("gpt2", False), ("gemma2", True)])
def test_cross_layer_transcoder_target_rows_are_exact(arch, jumprelu):
    from .test_clt import _model_and_clt

    model, clt = _model_and_clt(arch, jumprelu)
    ts = sc.load_transcoders(clt)
    graph = _target_graph(model, ts, batch_size=64)
    oracle = FrozenOracle(model, ts, torch.tensor(graph.metadata["tokens"]), hooks=_hooks(graph))
    rng = np.random.default_rng(2)
    sources = sample_sources(graph, rng, n_features=6)
    kinds = graph.nodes["kind"].astype(str).to_numpy()
    layer_of = graph.nodes["layer"].to_numpy(dtype=float, na_value=-1)
    layer0 = np.flatnonzero((kinds == "feature") & (layer_of == 0))  # they write to every layer
    sources += list(rng.choice(layer0, min(4, len(layer0)), replace=False))
    assert worst_column_error(graph, oracle, sources) < 1e-4


@pytest.mark.parametrize(
    ("arch", "kind"), [("gpt2", "relu"), ("llama", "skip"), ("gemma2", "jumprelu")]
)
def test_interventions_measure_what_the_target_rows_predict(arch, kind):
    model, tcs = build(arch, kind)
    ts = sc.load_transcoders(tcs)
    graph = _target_graph(model, ts)
    feats = graph.nodes.iloc[graph.node_indices("feature")]
    out_deg = np.asarray((graph.adjacency != 0).sum(axis=0)).ravel()[feats.index]
    group = feats[out_deg > 3].iloc[::7][:5]
    result = sc.intervene(
        model, PROMPT, ts, group.assign(scale=0.0), direct_effects=True, targets=graph
    )
    tv = result.target_values
    assert tv["node"].tolist() == graph.targets["node"].tolist()
    # the clean read-outs are the graph's values
    assert_close(tv["clean_value"], graph.targets["value"], rtol=1e-5, what="clean values")
    table = sc.compare_with_graph(result, graph)
    on_targets = table[table["kind"].isin(["logit", "target"])]
    assert len(on_targets) == 10 and on_targets["measured"].notna().all()
    scale = float(np.abs(on_targets["measured"]).max())
    assert scale > 1e-3
    assert_close(on_targets["predicted"], on_targets["measured"], rtol=1e-4, what="targets")
    # the same targets without direct effects move too, and are reported
    full = sc.intervene(model, PROMPT, ts, group.assign(scale=0.0), targets=graph)
    assert (full.target_values["value"] != full.target_values["clean_value"]).any()


def test_reader_works_in_vocabulary_blocks_without_a_float64_copy():
    """The mean column and the logits, a block of columns at a time, match the whole-matrix sums
    (float64 sums in another order: rounding of float64, relative to the largest term)."""
    from sae_circuits.attribution import TargetReader
    from sae_circuits.toy import tiny_model

    model = tiny_model("gpt2", d_vocab=64)
    whole = TargetReader(model)
    blocked = TargetReader(model)
    blocked._COLUMNS = 7  # 64 columns: 9 blocks, the last one short
    w = model.W_U.detach().double()
    x = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    scale = float(w.abs().max()) * w.shape[1]
    assert (blocked._means()[0] - w.mean(1)).abs().max() <= 1e-14 * scale
    full = x.double() @ w + model.b_U.detach().double()
    scale = float((x.double().abs() @ w.abs()).max())
    assert (blocked.logits(x) - full).abs().max() <= 1e-14 * scale
    assert (whole.logits(x) - blocked.logits(x)).abs().max() <= 1e-14 * scale
