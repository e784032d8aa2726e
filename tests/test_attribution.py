"""attribute(): exactness against measured direct effects, the reference's rules, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import sae_circuits as sc
from sae_circuits.attribution._attribute import select_logits
from sae_circuits.core.prompts import to_tokens

from .conftest import KINDS, PROMPT, assert_same_model, build, model_fingerprint
from .oracle import FrozenOracle, sample_sources, worst_column_error
from .tolerance import F64_EPS, assert_close


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_columns_equal_measured_direct_effects(arch, kind):
    model, tcs = build(arch, kind)
    ts = sc.load_transcoders(tcs)
    graph = sc.attribute(model, PROMPT, ts, batch_size=64)
    tokens = torch.tensor(graph.metadata["tokens"])
    oracle = FrozenOracle(model, ts, tokens)
    sources = sample_sources(graph, np.random.default_rng(0))
    assert len(sources) >= 10
    assert worst_column_error(graph, oracle, sources) < 1e-4


def test_graph_structure_and_nodes():
    model, tcs = build("llama", "relu")
    ts = sc.load_transcoders(tcs)
    graph = sc.attribute(model, PROMPT, ts)
    n_pos = len(graph.metadata["tokens"])
    L = model.cfg.n_layers
    nodes = graph.nodes
    assert isinstance(graph.adjacency, sp.csr_array)
    assert graph.adjacency.shape == (len(nodes), len(nodes))
    counts = nodes["kind"].value_counts()
    assert counts["error"] == L * n_pos and counts["token"] == n_pos
    assert counts["logit"] == len(graph.logits) >= 1
    # node order: features, errors, tokens, logits
    order = nodes["kind"].map({"feature": 0, "error": 1, "token": 2, "logit": 3}).to_numpy()
    assert (np.diff(order) >= 0).all()
    feats = nodes[nodes["kind"] == "feature"]
    assert (feats["activation"] > 0).all()
    assert (feats["position"] > 0).all(), "position 0 is an attention sink by default"
    assert (
        str(nodes["layer"].dtype) == "Int64"
        and nodes.loc[nodes["kind"] == "token", "layer"].isna().all()
    )
    # rows of errors and tokens are empty; edges go from lower to higher layers, never forward in time
    edges = graph.edges()
    assert set(edges["source_kind"]) <= {"feature", "error", "token"}
    assert set(edges["target_kind"]) <= {"feature", "logit"}
    ff = edges[(edges["source_kind"] == "feature") & (edges["target_kind"] == "feature")]
    assert (ff["source_layer"] < ff["target_layer"]).all()
    assert (edges["source_position"] <= edges["target_position"]).all()
    # logits table agrees with logit nodes and the model's own probabilities
    with torch.no_grad():
        probs = torch.softmax(
            model(torch.tensor(graph.metadata["tokens"])[None])[0, -1].double(), -1
        )
    assert_close(
        graph.logits["probability"],
        probs[torch.tensor(graph.logits["token_id"].to_numpy())],
        what="logit probabilities",
    )
    assert (
        graph.logits["token_id"].tolist()
        == nodes.loc[nodes["kind"] == "logit", "token_id"].tolist()
    )


def test_prompt_forms_agree():
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    g_text = sc.attribute(model, PROMPT, ts)
    ids = g_text.metadata["tokens"]
    assert ids[0] == model.tokenizer.bos_token_id
    g_list = sc.attribute(model, ids, ts)
    g_tensor = sc.attribute(model, torch.tensor(ids), ts)
    for g in (g_list, g_tensor):
        assert (g.adjacency != g_text.adjacency).nnz == 0
        assert g.nodes.equals(g_text.nodes)


def test_attention_sink_off_adds_position_zero():
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    on = sc.attribute(model, PROMPT, ts)
    off = sc.attribute(model, PROMPT, ts, attention_sink=False)
    pos0 = lambda g: int(((g.nodes["kind"] == "feature") & (g.nodes["position"] == 0)).sum())  # noqa: E731
    assert pos0(on) == 0 and pos0(off) > 0
    oracle = FrozenOracle(model, ts, torch.tensor(off.metadata["tokens"]), sink=False)
    feats0 = np.flatnonzero(
        ((off.nodes["kind"] == "feature") & (off.nodes["position"] == 0)).to_numpy()
    )
    assert worst_column_error(off, oracle, feats0[:3]) < 1e-4


def test_salient_logits_rule():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    probs = torch.softmax(logits.double(), 0)
    ids, p = select_logits(logits, 10, 0.9)
    k = int(np.searchsorted(np.cumsum(probs.numpy()), 0.9)) + 1
    assert ids.tolist() == list(range(k))
    assert_close(p, probs[:k], what="selected probabilities")
    assert probs[: k - 1].sum() < 0.9 <= probs[:k].sum()
    ids, _ = select_logits(logits, 2, 0.999)
    assert ids.tolist() == [0, 1]
    ids, _ = select_logits(logits, 10, 0.01)
    assert ids.tolist() == [0]


def test_max_feature_nodes_visits_most_influential():
    model, tcs = build("gemma2", "jumprelu")
    ts = sc.load_transcoders(tcs)
    full = sc.attribute(model, PROMPT, ts)
    n_feat = int((full.nodes["kind"] == "feature").sum())
    part = sc.attribute(model, PROMPT, ts, max_feature_nodes=20, batch_size=4, update_interval=1)
    feats = part.nodes[part.nodes["kind"] == "feature"]
    assert len(feats) == 20 < n_feat

    # rows of visited features and logits are the full graph's, restricted to kept columns
    def key(df):
        return list(
            zip(
                df["kind"].astype(str),
                df["layer"],
                df["position"],
                df["feature"],
                df["token_id"],
                strict=False,
            )
        )

    index = {k: i for i, k in enumerate(key(full.nodes))}
    sel = np.array([index[k] for k in key(part.nodes)])
    sub = full.adjacency[sel][:, sel]
    assert_close(part.adjacency, sub, what="rows of visited features")
    # the visited features carry more influence on the logits than the average unvisited one
    from sae_circuits.graph._influence import propagate, row_normalize

    infl = propagate(row_normalize(full.adjacency), full.logit_weights)
    fidx = np.flatnonzero((full.nodes["kind"] == "feature").to_numpy())
    chosen = np.isin(fidx, sel)
    assert infl[fidx[chosen]].mean() > 2 * infl[fidx[~chosen]].mean()
    zero = sc.attribute(model, PROMPT, ts, max_feature_nodes=0)
    assert int((zero.nodes["kind"] == "feature").sum()) == 0


def test_model_left_untouched_after_success_and_error():
    model, tcs = build("llama", "skip")
    ts = sc.load_transcoders(tcs)
    before = model_fingerprint(model)
    logits_before = model(torch.tensor([[0, 5, 9, 3]]))
    sc.attribute(model, PROMPT, ts)
    assert_same_model(before, model_fingerprint(model))

    class Boom(RuntimeError):
        pass

    def explode(*_args):
        raise Boom

    real = ts.pre_activations
    ts.pre_activations = explode  # type: ignore[method-assign]
    try:
        with pytest.raises(Boom):
            sc.attribute(model, PROMPT, ts)
    finally:
        ts.pre_activations = real  # type: ignore[method-assign]
    assert_same_model(before, model_fingerprint(model))
    assert torch.equal(model(torch.tensor([[0, 5, 9, 3]])), logits_before)


def test_works_under_no_grad_and_batch_size_one():
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    ref = sc.attribute(model, PROMPT, ts)
    with torch.no_grad():
        g = sc.attribute(model, PROMPT, ts, batch_size=1)
    assert_close(g.adjacency, ref.adjacency, what="batch_size=1 under no_grad")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_n_logits": 0}, "max_n_logits"),
        ({"desired_logit_prob": 1.5}, "desired_logit_prob"),
        ({"desired_logit_prob": 0.0}, "desired_logit_prob"),
        ({"max_feature_nodes": -1}, "max_feature_nodes"),
        ({"batch_size": 0}, "batch_size"),
        ({"update_interval": 0}, "update_interval"),
    ],
)
def test_invalid_sizes(kwargs, match):
    model, tcs = build("gpt2")
    with pytest.raises(ValueError, match=match):
        sc.attribute(model, PROMPT, sc.load_transcoders(tcs), **kwargs)


def test_bad_prompts():
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    with pytest.raises(ValueError, match="empty"):
        sc.attribute(model, "", ts)
    with pytest.raises(ValueError, match="empty"):
        sc.attribute(model, [], ts)
    with pytest.raises(ValueError, match="n_ctx"):
        sc.attribute(model, [1] * (model.cfg.n_ctx + 1), ts)
    with pytest.raises(ValueError, match="d_vocab"):
        sc.attribute(model, [0, model.cfg.d_vocab], ts)
    with pytest.raises(ValueError, match="1-D"):
        sc.attribute(model, torch.zeros(2, 3, dtype=torch.long), ts)
    with pytest.raises(TypeError, match="unsupported prompt"):
        sc.attribute(model, 3.5, ts)  # type: ignore[arg-type]
    model.tokenizer = None
    with pytest.raises(TypeError, match="tokenizer"):
        sc.attribute(model, PROMPT, ts)


def test_transcoders_that_do_not_fit():
    model, tcs = build("gpt2")
    with pytest.raises(
        ValueError,
        match=r"the transcoders have 2 layers but the model .* has 3 layers; attribution needs one transcoder per layer",
    ):
        sc.attribute(model, PROMPT, sc.load_transcoders(tcs[:2]))
    _, other_tcs = build("gpt2")
    small = sc.toy.tiny_model("gpt2", d_model=16, n_heads=2)
    with pytest.raises(
        ValueError, match=r"the transcoders have d_in 32 but the model .* has d_model 16"
    ):
        sc.attribute(small, PROMPT, sc.load_transcoders(other_tcs))


def test_non_finite_activations_are_reported():
    model, tcs = build("gpt2")
    with torch.no_grad():
        model.blocks[1].attn.W_O[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        sc.attribute(model, PROMPT, sc.load_transcoders(tcs))


def test_progress_bar_optional(capsys):
    model, tcs = build("gpt2")
    sc.attribute(model, PROMPT, sc.load_transcoders(tcs), progress=True)
    assert "attribution" in capsys.readouterr().err
    sc.attribute(model, PROMPT, sc.load_transcoders(tcs), progress=False)
    assert capsys.readouterr().err == ""


def test_chunked_influence_equals_stacked():
    import scipy.sparse as sps

    from sae_circuits.graph._influence import propagate, propagate_chunks, row_normalize

    rng = np.random.default_rng(0)
    n = 40
    dense = np.tril(rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.3), k=-1)
    dense[5] = 0  # an empty row
    seed = np.zeros(n)
    seed[:3] = [0.5, 0.3, 0.2]
    full = propagate(row_normalize(sps.csr_array(dense), eps=1e-8), seed)
    order = rng.permutation(n)
    chunks = [(order[i : i + 7], sps.csr_array(dense[order[i : i + 7]])) for i in range(0, n, 7)]
    # float64 sums of <= n terms over <= n powers in another order: within n * n ulps
    assert_close(propagate_chunks(chunks, seed, eps=1e-8), full, eps=F64_EPS, ulps=n * n)
    # the dense power series as an independent check
    a = np.abs(dense)
    a = a / np.maximum(a.sum(1, keepdims=True), 1e-8)
    expect, term = np.zeros(n), seed.copy()
    for _ in range(n):
        term = term @ a
        expect += term
    assert_close(full, expect, eps=F64_EPS, ulps=n * n, what="power series")


def test_backward_in_slices_gives_the_same_graph(monkeypatch):
    import sae_circuits.attribution._attribute as attribution_module
    from sae_circuits.attribution._backward import trace

    model, tcs = build("llama", "skip")
    ts = sc.load_transcoders(tcs)
    whole = sc.attribute(model, PROMPT, ts, batch_size=64)
    sliced_traces = []

    def small_slices(*args, **kwargs):
        tr = trace(*args, **kwargs)
        sliced_traces.append(tr)
        return tr

    monkeypatch.setattr(attribution_module, "trace", small_slices)
    # memory_budget=1: slices of the minimum, 8 targets
    sliced = sc.attribute(model, PROMPT, ts, batch_size=64, memory_budget=1)
    assert sliced_traces and sliced_traces[0]._chunk == 8
    assert_close(sliced.adjacency, whole.adjacency, what="backward in slices")
    assert sliced.nodes.equals(whole.nodes)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1GB"])
def test_memory_budget_must_be_a_positive_number_of_bytes(bad):
    model, tcs = build("gpt2", "relu")
    with pytest.raises(ValueError, match="memory_budget"):
        sc.attribute(model, PROMPT, sc.load_transcoders(tcs), memory_budget=bad)


def test_rows_hold_no_autograd_graph():
    """The model's parameters require grad; rows must still come out as plain tensors.

    A row batch that recorded the graph of its own backward pass would keep every intermediate
    of that pass alive for as long as the rows live (it once tripled the peak memory).
    """
    from sae_circuits.attribution._backward import trace
    from sae_circuits.transcoders._fit import check_compatible

    model, tcs = build("llama", "relu")
    assert any(p.requires_grad for p in model.parameters())
    resolved = check_compatible(model, sc.load_transcoders(tcs))
    tr = trace(model, to_tokens(model, PROMPT), resolved, memory_budget=1)
    sel = torch.arange(min(20, tr.n_active))
    args = tr.feature_layer[sel], tr.feature_pos[sel], tr.encoder_vectors(sel)
    slices = list(tr.row_slices(*args))
    assert [p.offset for p in slices] == list(range(0, len(sel), 8))
    for part in slices:
        assert part.values.grad_fn is None and not part.values.requires_grad


def test_row_slices_leave_out_only_zero_feature_columns():
    """A slice drops the features at or above its top layer; the rows are those of one pass."""
    from sae_circuits.attribution._backward import trace
    from sae_circuits.transcoders._fit import check_compatible

    model, tcs = build("gemma2", "relu")
    resolved = check_compatible(model, sc.load_transcoders(tcs))
    tokens = to_tokens(model, PROMPT)
    sliced = trace(model, tokens, resolved, memory_budget=1)  # 8 targets a slice
    whole = trace(model, tokens, resolved, memory_budget=2**40)
    order = torch.argsort(sliced.feature_layer, stable=True)  # slices of growing top layer
    args = sliced.feature_layer[order], sliced.feature_pos[order], sliced.encoder_vectors(order)
    kept = {part.n_features for part in sliced.row_slices(*args)}
    assert len(kept) > 1 and min(kept) < sliced.n_active  # some slices did leave columns out
    rows_sliced, rows_whole = sliced.rows(*args), whole.rows(*args)
    assert_close(rows_sliced, rows_whole, what="rows of sliced passes")
    # nothing at or above a target's layer is a source of it
    above = sliced.feature_layer[None, :] >= args[0][:, None]
    assert not rows_whole[:, : sliced.n_active][above].any()
    assert rows_whole.abs().sum() > 0


def test_backward_slices_hold_one_layer_and_at_most_batch_size(monkeypatch):
    from sae_circuits.attribution._backward import Trace

    model, tcs = build("gpt2", "relu")
    ts = sc.load_transcoders(tcs)
    seen: list[tuple[int, set[int]]] = []
    real = Trace._rows

    def spy(self, layers, *rest):
        seen.append((len(layers), set(layers.tolist())))
        return real(self, layers, *rest)

    monkeypatch.setattr(Trace, "_rows", spy)
    small = sc.attribute(model, PROMPT, ts, batch_size=5)
    assert seen and all(n <= 5 and len(layers) == 1 for n, layers in seen)
    assert sum(n for n, _ in seen) == small.metadata["n_active_features"] + len(small.logits)
    seen.clear()
    large = sc.attribute(model, PROMPT, ts, batch_size=10_000)
    assert all(len(layers) == 1 for _, layers in seen)  # a whole layer per pass here
    n_layers = model.cfg.n_layers  # the logits' layer: one pass for them, one per feature layer
    assert len(seen) == 1 + len({layer for _, ls in seen for layer in ls if layer < n_layers})
    assert_close(small.adjacency, large.adjacency, what="batch_size 5 vs 10_000")
    assert small.nodes.equals(large.nodes)


def test_default_slice_budget_by_device(monkeypatch):
    import sae_circuits.attribution._backward as backward
    from sae_circuits.attribution._backward import _default_budget

    cpu = torch.device("cpu")  # an eighth of MemAvailable, within 32 MiB .. 1 GiB
    for avail, expected in [(2**33, 2**30), (2**31, 2**28), (2**20, 2**25), (None, 2**30)]:
        monkeypatch.setattr(backward, "_mem_available", lambda avail=avail: avail)
        assert _default_budget(cpu) == expected
    monkeypatch.undo()
    real = backward._mem_available()
    if real is not None:  # Linux: MemAvailable is read, and is a plausible size
        assert 0 < real < 2**50
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    assert _default_budget(torch.device("cuda", 0)) == 10 * 2**30  # a quarter of what is free
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 80 * 2**30))
    assert _default_budget(torch.device("cuda", 0)) == 2**25  # never below the CPU budget
    assert _default_budget(torch.device("mps")) == 2**30


def _keys(df) -> list[tuple]:
    cols = ("kind", "layer", "position", "feature", "token_id")
    return list(zip(*(df[c].astype(str) if c == "kind" else df[c] for c in cols), strict=True))


@pytest.mark.parametrize("kind", ["jumprelu", "clt"])
def test_bounded_ranking_rows_still_give_exact_edges(kind, monkeypatch):
    """When the rows of ``max_feature_nodes`` would not fit, the ranking keeps each row's
    largest entries and the chosen features' rows are computed again: the edges are the full
    graph's; with nothing cut, the graph is the one of whole rows."""
    from sae_circuits.attribution import _attribute
    from sae_circuits.toy import tiny_clt

    model, tcs = build("gemma2", "relu" if kind == "clt" else kind)
    ts = sc.load_transcoders(tiny_clt(tcs, seed=0) if kind == "clt" else tcs)
    full = sc.attribute(model, PROMPT, ts)
    whole = sc.attribute(model, PROMPT, ts, max_feature_nodes=24, batch_size=8)
    assert whole.metadata["settings"]["ranking_row_entries"] is None
    monkeypatch.setattr(_attribute, "_ROW_SHARE", 0.0)  # nothing fits: always bounded
    monkeypatch.setattr(_attribute, "_MIN_KEEP", 10**9)  # ... but nothing cut
    same = sc.attribute(model, PROMPT, ts, max_feature_nodes=24, batch_size=8)
    assert same.metadata["settings"]["ranking_row_entries"] == 10**9
    assert same.nodes.equals(whole.nodes)
    assert_close(same.adjacency, whole.adjacency, what="recomputed rows vs whole rows")
    monkeypatch.setattr(_attribute, "_MIN_KEEP", 12)  # rows cut to 12 entries for ranking
    cut = sc.attribute(model, PROMPT, ts, max_feature_nodes=24, batch_size=8)
    assert cut.metadata["settings"]["ranking_row_entries"] == 12
    assert int((cut.nodes["kind"] == "feature").sum()) == 24
    index = {k: i for i, k in enumerate(_keys(full.nodes))}
    sel = np.array([index[k] for k in _keys(cut.nodes)])
    assert_close(cut.adjacency, full.adjacency[sel][:, sel], what="bounded rows vs full graph")

    # the ranking from cut rows still picks mostly what whole rows pick
    def features(g) -> set[tuple]:
        return {k for k in _keys(g.nodes) if k[0] == "feature"}

    shared = len(features(cut) & features(whole))
    assert shared >= 12
