"""intervene() and generate(): what the graph claims holds, model untouched, clear errors."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

import sae_circuits as sc
from sae_circuits.core.prompts import to_tokens
from sae_circuits.interventions._intervene import (
    compare_with_graph,
    generate,
    intervene,
    predict_changes,
)
from sae_circuits.toy import tiny_clt
from sae_circuits.transcoders import (
    CrossLayerTranscoderSet,
)

from .conftest import PROMPT, assert_same_model, build, model_fingerprint
from .tolerance import assert_close, assert_differs, max_abs

CASES = [
    ("gpt2", "relu"),
    ("llama", "skip"),
    ("gemma2", "jumprelu"),
    ("gemma2", "jumprelu_skip"),
    ("gemma2", "topk"),
    ("gpt2", "clt"),
]


def _clt_set(tcs, seed: int = 0) -> CrossLayerTranscoderSet:
    """A random CLT on calibrated toy encoders (random decoders to later layers)."""
    return CrossLayerTranscoderSet.from_sae(tiny_clt(tcs, seed=seed))


@functools.cache
def _setup(arch: str, kind: str):
    """(model, transcoder set, graph of PROMPT); the model is shared: tests must not change it."""
    if kind == "clt":
        model, tcs = build(arch, "relu")
        ts = _clt_set(tcs)
    else:
        model, tcs = build(arch, kind)
        ts = sc.load_transcoders(tcs)
    return model, ts, sc.attribute(model, PROMPT, ts)


@functools.cache
def swap_setup():
    """Prompts A (PROMPT) and B (one token changed) with graphs over every logit (tiny GPT-2)."""
    model, ts, _ = _setup("gpt2", "relu")
    a = to_tokens(model, PROMPT).tolist()
    b = list(a)
    b[7] = 33
    ga = sc.attribute(model, a, ts, max_n_logits=64, desired_logit_prob=1.0)
    gb = sc.attribute(model, b, ts, max_n_logits=64, desired_logit_prob=1.0)
    return model, ts, a, b, ga, gb


def _features(graph, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` feature nodes with out-edges, spread over the layers below the top one."""
    nodes = graph.nodes
    feats = np.flatnonzero((nodes["kind"] == "feature").to_numpy())
    out_deg = np.asarray((graph.adjacency != 0).sum(axis=0)).ravel()
    feats = feats[out_deg[feats] > 3]
    rng = np.random.default_rng(seed)
    pick = rng.choice(feats, n, replace=False)
    return nodes.iloc[np.sort(pick)]


def _rel_err(table: pd.DataFrame) -> tuple[float, float]:
    """(worst |predicted - measured| / max |measured|, max |measured|) over the targets."""
    t = table.dropna(subset=["measured"])
    scale = float(np.abs(t["measured"]).max())
    return float(np.abs(t["predicted"] - t["measured"]).max()) / scale, scale


# -- what the graph claims ---------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "kind"), CASES)
def test_direct_effects_equal_graph_edges(arch, kind):
    model, ts, graph = _setup(arch, kind)
    group = _features(graph, 4)
    zero = intervene(model, PROMPT, ts, group.assign(scale=0.0), direct_effects=True, targets=graph)
    table = compare_with_graph(zero, graph)
    n_feat_targets = int((table["kind"] == "feature").sum())
    assert table["measured"].notna().all() and n_feat_targets > 50
    err, scale = _rel_err(table)
    assert scale > 1e-2 and err < 1e-4
    # zeroing moves every target by exactly minus the summed edge weights
    cols = graph.adjacency[:, group.index.to_numpy()].toarray().sum(axis=1)
    assert np.allclose(table["measured"], -cols[table["node"]], atol=1e-4 * scale, rtol=0)
    # scaling moves them proportionally: (c - 1) * edges
    scaled = intervene(
        model, PROMPT, ts, group.assign(scale=2.5), direct_effects=True, targets=graph
    )
    t2 = compare_with_graph(scaled, graph)
    assert _rel_err(t2)[0] < 1e-4
    assert np.allclose(t2["measured"], -1.5 * table["measured"], atol=2e-4 * scale, rtol=0)
    # set values given as tuples
    acts = group["activation"].to_numpy(dtype=float)
    tuples = [
        (int(r.layer), int(r.position), int(r.feature), 0.3 * a + 0.2)
        for r, a in zip(group.itertuples(), acts, strict=True)
    ]
    t3 = compare_with_graph(
        intervene(model, PROMPT, ts, tuples, direct_effects=True, targets=graph), graph
    )
    assert _rel_err(t3)[0] < 1e-4


@pytest.mark.parametrize(
    ("arch", "kind"),
    [("llama", "skip"), ("llama", "jumprelu_skip"), ("llama", "topk"), ("gpt2", "clt")],
)
def test_zeroing_one_feature_moves_targets_by_minus_its_column(arch, kind):
    model, ts, graph = _setup(arch, kind)
    feats = graph.node_indices("feature")
    out_deg = np.asarray((graph.adjacency != 0).sum(axis=0)).ravel()
    node = int(feats[np.argmax(out_deg[feats])])  # the feature with the most out-edges
    row = graph.nodes.iloc[node]
    iv = [(int(row["layer"]), int(row["position"]), int(row["feature"]), 0.0)]
    result = intervene(model, PROMPT, ts, iv, direct_effects=True, targets=graph)
    table = compare_with_graph(result, graph)
    column = graph.adjacency[:, [node]].toarray().ravel()[table["node"]]
    scale = np.abs(column).max()
    assert scale > 1e-2
    assert np.abs(table["measured"] + column).max() < 1e-4 * scale
    if kind == "clt":  # a CLT feature writes to its own layer and every later one
        layers = graph.nodes["layer"].to_numpy(dtype=float, na_value=-1)[table["node"]]
        hit = layers[(np.abs(column) > 1e-3 * scale) & (table["kind"] == "feature").to_numpy()]
        assert hit.max() >= int(row["layer"]) + 1


def test_setting_clean_values_changes_nothing():
    model, ts, graph = _setup("gemma2", "jumprelu")
    group = _features(graph, 5, seed=1)
    values = [
        (int(r.layer), int(r.position), int(r.feature), float(v))
        for r, v in zip(group.itertuples(), group["activation"], strict=True)
    ]
    base = intervene(model, PROMPT, ts, None)
    for kwargs in ({}, {"direct_effects": True}, {"freeze_attention": False}):
        r = intervene(model, PROMPT, ts, group.assign(scale=1.0), targets=graph, **kwargs)
        assert torch.equal(r.logits, r.clean_logits)
        assert torch.equal(r.logits, base.clean_logits)
        assert (
            r.pre_activations["pre_activation"] == r.pre_activations["clean_pre_activation"]
        ).all()
        t = r.activation_table
        assert (t["activation"] == t["clean_activation"]).all()
        # values read off the graph are the clean activations up to float32 rounding
        r2 = intervene(model, PROMPT, ts, values, **kwargs)
        assert_close(r2.logits, r2.clean_logits, what=f"logits, clean values set, {kwargs}")
    # the clean run is the model itself; its logits are x @ W_U without TransformerLens'
    # transposed copy of W_U (replacement_model._output), so the unembedding's sum may run in
    # another order: float32 rounding of the logits, not a bitwise match
    with torch.no_grad():
        logits = model(to_tokens(model, PROMPT)[None])[0]
    assert_close(base.clean_logits, logits, what="clean-run logits vs the model's forward")


def _oracle_logits(model, ts, tokens, interventions, *, freeze: bool) -> torch.Tensor:
    """The committed ``sc.replacement`` with frozen errors and a feature hook (+ TL freeze hooks)."""
    tokens = tokens[None]
    with torch.no_grad(), sc.replacement(model, ts) as rm:
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith(("hook_pattern", "hook_scale"))
        )
    errors = {k: v.clone() for k, v in rm.errors.items()}

    def feature_hook(layer, acts):
        acts = acts.clone()
        for lay, pos, feat, value in interventions:
            if lay == layer:
                acts[0, pos, feat] = value
        return acts

    fwd = [(name, lambda t, hook: cache[hook.name]) for name in cache] if freeze else []
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=fwd),
        sc.replacement(model, ts, errors=errors, feature_hook=feature_hook),
    ):
        return model(tokens)[0]


@pytest.mark.parametrize(
    ("arch", "kind"),
    [("llama", "skip"), ("llama", "jumprelu_skip"), ("llama", "topk"), ("gpt2", "clt")],
)
def test_full_replacement_model_matches_replacement_with_frozen_errors(arch, kind):
    model, ts, graph = _setup(arch, kind)
    group = _features(graph, 3, seed=2)
    tuples = [(int(r.layer), int(r.position), int(r.feature), 2.0) for r in group.itertuples()]
    tuples.append((0, 2, 7, 1.5))  # an inactive feature turned on
    tokens = to_tokens(model, PROMPT)
    for freeze in (True, False):
        r = intervene(model, PROMPT, ts, tuples, freeze_attention=freeze)
        expected = _oracle_logits(model, ts, tokens, tuples, freeze=freeze)
        assert_close(r.logits, expected, what=f"logits, freeze={freeze}")
        assert_differs(r.logits, r.clean_logits, rtol=1e-2)
    # downstream features respond (not with direct effects: their outputs stay clean)
    t = r.activation_table
    low = int(group["layer"].min())
    later = t[t["layer"] > low]
    assert (later["activation"] != later["clean_activation"]).any()
    direct = intervene(model, PROMPT, ts, tuples, direct_effects=True)
    assert_differs(direct.logits, r.logits)


def test_swap_experiment_moves_logits_as_graph_predicts():
    """Turn off the features that favour the top token X on prompt A; turn on, at matching
    positions, the features that favour token Y on prompt B (values from B's clean run)."""
    model, ts, a, _b, ga, gb = swap_setup()
    x, y = int(ga.logits["token_id"][0]), int(gb.logits["token_id"][0])
    assert x != y

    def logit_row(g, tok):
        return g.adjacency[
            [int(g.node_indices("logit")[g.logits["token_id"].tolist().index(tok)])]
        ].toarray()[0]

    favour_x = logit_row(ga, x) - logit_row(ga, y)
    favour_y = logit_row(gb, y) - logit_row(gb, x)
    fa, fb = ga.node_indices("feature"), gb.node_indices("feature")
    off = ga.nodes.iloc[fa[np.argsort(-favour_x[fa])[:5]]]
    on_nodes = fb[np.argsort(-favour_y[fb])[:5]]
    key = ["layer", "position", "feature"]
    on = gb.nodes.iloc[on_nodes][key].assign(
        value=gb.nodes.iloc[on_nodes]["activation"].astype(float)
    )
    on = on[~on.set_index(key).index.isin(off.set_index(key).index)]
    interventions = [off[key].assign(scale=0.0), on]

    # prediction of the change of logit[y] - logit[x]: A's edges where the feature is a node of
    # A's graph (exact), B's edges (value / activation on B) for features only active on B
    pred = favour_x[off.index.to_numpy()].sum()
    index_a = {k: i for i, k in enumerate(zip(*(ga.nodes[c] for c in key), strict=True))}
    for node, r in zip(on.index, on.itertuples(), strict=True):
        k = (r.layer, r.position, r.feature)
        if k in index_a:
            i = index_a[k]
            a_act = float(ga.nodes["activation"].iloc[i])
            pred += -favour_x[i] * (r.value - a_act) / a_act
        else:
            pred += favour_y[node]
    direct = intervene(model, a, ts, interventions, direct_effects=True)
    change = direct.logit_changes.numpy()
    measured = change[y] - change[x]
    assert pred > 0 and measured > 0  # sign agreement with the summed edge predictions
    # the turn-off part alone is exactly what A's graph says
    off_only = compare_with_graph(
        intervene(model, a, ts, off.assign(scale=0.0), direct_effects=True), ga
    )
    logits = off_only[off_only["kind"] == "logit"].set_index("token_id")
    assert_close(  # float32 forward differences against float32 edges, as in _rel_err
        logits.loc[y, "measured"] - logits.loc[x, "measured"],
        favour_x[off.index].sum(),
        rtol=1e-4,
        scale=max_abs(logits["measured"]),
    )
    # under the full replacement model the logit difference moves the same way, and the top
    # token moves from x to y
    full = intervene(model, a, ts, interventions)
    before, after = full.logit_difference(y, x)
    assert before < 0 < after
    assert int(full.clean_last_logits.argmax()) == x and int(full.last_logits.argmax()) == y
    top = full.top_logits(3)
    assert top["before_token_id"][0] == x and top["after_token_id"][0] == y
    assert_close(
        top["after_probability"].sum(),
        torch.softmax(full.last_logits.double(), -1).topk(3).values.sum(),
    )


def test_result_tables():
    model, ts, graph = _setup("gpt2", "relu")
    group = _features(graph, 2)
    r = intervene(model, PROMPT, ts, group.assign(scale=0.0), targets=[(2, 5, 3), (1, 4, 0)])
    n = len(r.tokens)
    assert r.logits.shape == (n, model.cfg.d_vocab) and r.last_logits.shape == (model.cfg.d_vocab,)
    assert set(r.activations) == set(range(model.cfg.n_layers))
    assert r.activations[0].is_sparse and r.activations[0].shape == (n, ts.d_sae(0))
    t = r.activation_table
    assert list(t.columns) == ["layer", "position", "feature", "activation", "clean_activation"]
    act_scale = max_abs(graph.nodes["activation"].dropna())
    for row in group.itertuples():
        hit = t[(t.layer == row.layer) & (t.position == row.position) & (t.feature == row.feature)]
        assert len(hit) == 1 and hit["activation"].iloc[0] == 0
        # two forward passes: rounding on the scale of the layer's activations
        assert_close(hit["clean_activation"].iloc[0], row.activation, scale=act_scale)
    assert list(
        r.pre_activations[["layer", "position", "feature"]].itertuples(index=False, name=None)
    ) == [
        (2, 5, 3),
        (1, 4, 0),
    ]
    assert list(r.interventions.columns) == [
        "layer",
        "position",
        "feature",
        "value",
        "scale",
        "clean_activation",
        "new_activation",
    ]
    assert (r.interventions["new_activation"] == 0).all() and r.interventions["value"].isna().all()
    top = r.top_logits(4)
    assert len(top) == 4 and top["before_token"].str.startswith("t").all()
    assert (np.diff(top["after_probability"]) <= 0).all()
    clean, after = r.logit_difference("t42", 2)
    scale = max_abs(r.clean_last_logits)  # a difference of logits: their rounding
    assert_close(clean, float(r.clean_last_logits[42] - r.clean_last_logits[2]), scale=scale)
    assert_close(after, float(r.last_logits[42] - r.last_logits[2]), scale=scale)
    pred = predict_changes(graph, group.assign(scale=0.0))
    assert list(pred.columns) == [
        "node",
        "kind",
        "layer",
        "position",
        "feature",
        "token_id",
        "predicted",
    ]


# -- generation --------------------------------------------------------------------------------


def test_generate_without_interventions_is_greedy_decoding():
    model, ts, _ = _setup("llama", "skip")
    g = generate(model, PROMPT, ts, None, max_new_tokens=4)
    seq = to_tokens(model, PROMPT).tolist()
    with torch.no_grad():
        for _ in range(4):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert g.tokens.tolist() == seq and g.clean_tokens.tolist() == seq
    assert g.text == g.clean_text == model.tokenizer.decode(seq)
    assert g.completion == model.tokenizer.decode(seq[-4:]) and len(g.new_tokens) == 4


def test_generate_first_token_is_intervene_without_frozen_attention():
    model, ts, graph = _setup("gemma2", "jumprelu")
    group = _features(graph, 3, seed=3)
    iv = group.assign(scale=-2.0)
    g = generate(model, PROMPT, ts, iv, max_new_tokens=2)
    r = intervene(model, PROMPT, ts, iv, freeze_attention=False)
    assert_close(g.next_token_logits, r.last_logits, what="first generated logits")
    assert_close(g.clean_next_token_logits, r.clean_last_logits, what="clean first logits")
    assert g.tokens[len(r.tokens)] == int(r.last_logits.argmax())
    assert g.interventions["new_activation"].tolist() == r.interventions["new_activation"].tolist()


def test_apply_to_generated_sets_features_at_new_positions():
    """A last-layer feature only changes the logits, so each generated token must be the argmax
    of intervene() on the sequence so far with the feature set at every position since."""
    model, ts, graph = _setup("gpt2", "relu")
    last = model.cfg.n_layers - 1
    n = len(to_tokens(model, PROMPT))
    cand = graph.nodes[(graph.nodes["kind"] == "feature") & (graph.nodes["layer"] == last)]
    feat = int(cand.iloc[0]["feature"])
    iv = [(last, n - 1, feat, 12.0)]
    on = generate(model, PROMPT, ts, iv, max_new_tokens=4, apply_to_generated=True)
    off = generate(model, PROMPT, ts, iv, max_new_tokens=4)
    seq = on.tokens.tolist()
    assert on.new_tokens.tolist() != off.new_tokens.tolist()
    assert on.clean_tokens.tolist() == off.clean_tokens.tolist()
    for k in range(4):
        every = [(last, p, feat, 12.0) for p in range(n - 1, n + k)]
        r = intervene(model, seq[: n + k], ts, every, freeze_attention=False)
        assert int(r.last_logits.argmax()) == seq[n + k]


def test_generate_sampling_is_seeded():
    model, ts, graph = _setup("gpt2", "relu")
    iv = _features(graph, 2).assign(scale=0.0)
    a = generate(model, PROMPT, ts, iv, max_new_tokens=5, do_sample=True, seed=3, temperature=1.5)
    b = generate(model, PROMPT, ts, iv, max_new_tokens=5, do_sample=True, seed=3, temperature=1.5)
    assert a.tokens.tolist() == b.tokens.tolist() and a.settings["seed"] == 3
    same = generate(model, PROMPT, ts, None, max_new_tokens=5, do_sample=True, seed=4)
    assert same.tokens.tolist() == same.clean_tokens.tolist()  # both runs share the seed
    greedy = generate(model, PROMPT, ts, iv, max_new_tokens=3)
    top1 = generate(model, PROMPT, ts, iv, max_new_tokens=3, do_sample=True, top_k=1, seed=0)
    assert top1.tokens.tolist() == greedy.tokens.tolist()
    assert isinstance(
        generate(model, PROMPT, ts, None, max_new_tokens=1, do_sample=True).settings["seed"], int
    )


# -- the model is left alone -------------------------------------------------------------------


def test_model_untouched_after_success_and_errors():
    model, tcs = build("llama", "skip")
    ts = sc.load_transcoders(tcs)
    before = model_fingerprint(model)
    probe = torch.tensor([[0, 5, 9, 3]])
    with torch.no_grad():
        logits_before = model(probe)
    iv = [(0, 3, 2, 4.0), (2, 5, 1, 0.0)]
    intervene(model, PROMPT, ts, iv, targets=[(1, 2, 3)])
    intervene(model, PROMPT, ts, iv, direct_effects=True)
    generate(model, PROMPT, ts, iv, max_new_tokens=2, apply_to_generated=True)
    assert_same_model(before, model_fingerprint(model))

    class Boom(RuntimeError):
        pass

    real = ts.pre_activations
    calls = {"n": 0}

    def explode_late(layer, x):  # the clean run passes; the intervened run's hooks raise
        calls["n"] += 1
        if calls["n"] > model.cfg.n_layers:
            raise Boom
        return real(layer, x)

    ts.pre_activations = explode_late  # type: ignore[method-assign]
    try:
        with pytest.raises(Boom):
            intervene(model, PROMPT, ts, iv)
        calls["n"] = 0
        with pytest.raises(Boom):
            generate(model, PROMPT, ts, iv, max_new_tokens=3, apply_to_generated=True)
    finally:
        ts.pre_activations = real  # type: ignore[method-assign]
    assert_same_model(before, model_fingerprint(model))
    with torch.no_grad():
        assert torch.equal(model(probe), logits_before)


# -- bad input ---------------------------------------------------------------------------------


def _df(**cols):
    base = {"layer": [1], "position": [2], "feature": [3]}
    base.update(cols)
    return pd.DataFrame(base)


@pytest.mark.parametrize(
    ("interventions", "error", "match"),
    [
        ([(3, 2, 1, 0.0)], ValueError, r"layer 3 has no transcoder; valid layers are 0\.\.2"),
        ([(-1, 2, 1, 0.0)], ValueError, r"layer -1 has no transcoder; valid layers are 0\.\.2"),
        (
            [(1, 11, 1, 0.0)],
            ValueError,
            r"position 11 is out of range .*11 tokens; valid positions are 0\.\.10",
        ),
        ([(1, -1, 1, 0.0)], ValueError, r"position -1 is out of range"),
        (
            [(1, 2, 128, 0.0)],
            ValueError,
            r"feature 128 is out of range for layer 1, which has d_sae=128 .* 0\.\.127",
        ),
        ([(1, 2, 3)], ValueError, r"expected a \(layer, position, feature, value\) tuple"),
        ([(1.5, 2, 3, 0.0)], ValueError, r"layer must be an integer, got 1\.5"),
        ([(1, 2, 3, float("nan"))], ValueError, r"gives neither a value nor a scale"),
        ([(1, 2, 3, float("inf"))], ValueError, r"value must be a finite number"),
        ([(1, 2, 3, "big")], ValueError, r"value must be a finite number"),
        ([(1, 2, 3, 0.0), (1, 2, 3, 1.0)], ValueError, r"more than once"),
        ([5], TypeError, r"expected a \(layer, position, feature, value\) tuple or a DataFrame"),
        ("1 2 3 0", TypeError, r"unsupported interventions"),
        (_df(), ValueError, r"neither a 'value' column .* nor a 'scale' column"),
        (_df(value=[1.0], scale=[0.0]), ValueError, r"gives both a value and a scale"),
        (_df(value=[np.nan], scale=[np.nan]), ValueError, r"gives neither a value nor a scale"),
        (
            pd.DataFrame({"layer": [1], "feature": [3], "value": [1.0]}),
            ValueError,
            r"lacks column\(s\) \['position'\]",
        ),
        (_df(scale=[np.inf]), ValueError, r"scale must be a finite number"),
        (_df(kind=["error"], scale=[0.0]), ValueError, r"only feature nodes can be intervened on"),
    ],
)
def test_bad_interventions(interventions, error, match):
    model, ts, _ = _setup("gpt2", "relu")
    with pytest.raises(error, match=match):
        intervene(model, PROMPT, ts, interventions)


def test_bad_settings_and_targets():
    model, ts, graph = _setup("gpt2", "relu")
    with pytest.raises(ValueError, match="direct_effects=True needs freeze_attention=True"):
        intervene(model, PROMPT, ts, None, direct_effects=True, freeze_attention=False)
    with pytest.raises(ValueError, match=r"target 0: layer 7 has no transcoder"):
        intervene(model, PROMPT, ts, None, targets=[(7, 0, 0)])
    with pytest.raises(
        ValueError, match=r"target 1: expected an integer \(layer, position, feature\)"
    ):
        intervene(model, PROMPT, ts, None, targets=[(0, 0, 0), (0, 1)])
    with pytest.raises(ValueError, match="another prompt"):
        compare_with_graph(intervene(model, [0, 5, 9], ts, None), graph)
    inactive = [
        (0, 3, f, 0.0)
        for f in range(128)
        if not (
            (graph.nodes["layer"] == 0)
            & (graph.nodes["position"] == 3)
            & (graph.nodes["feature"] == f)
        ).any()
    ][:1]
    with pytest.raises(ValueError, match="not a feature node of the graph"):
        predict_changes(
            graph, pd.DataFrame(inactive, columns=["layer", "position", "feature", "value"])
        )
    # graph nodes with error rows mixed in
    with pytest.raises(ValueError, match="error nodes"):
        intervene(
            model, PROMPT, ts, graph.nodes.iloc[graph.node_indices("error")[:2]].assign(scale=0.0)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"seed": 1.5}, "seed"),
        ({"max_new_tokens": 60}, r"exceeds the model's n_ctx=64; use at most 53"),
    ],
)
def test_bad_generation_settings(kwargs, match):
    model, ts, _ = _setup("gpt2", "relu")
    with pytest.raises(ValueError, match=match):
        generate(model, PROMPT, ts, None, **kwargs)
