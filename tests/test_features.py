"""Feature dashboards (sae_circuits.features): statistics checked against a direct computation,
resuming, corpora, logit effects against a frozen-norm forward pass, and the file checks.

On the shipped toy-facts model (it has a tokenizer) with a few dozen corpus sentences.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import sae_circuits as sc
from sae_circuits.features import (
    CHECKPOINT,
    FeatureFileError,
    LayerStats,
    build_features,
    iter_texts,
    logit_effects,
    read_feature_file,
    read_index,
)

from .tolerance import F32_EPS, assert_close

#: Activations are written with 5 decimals: the files' rounding, on top of float32's.
FILE_ROUNDING = 5e-6

_TOY: list = []


def toy():
    if not _TOY:
        from sae_circuits.toy.facts import load_toy_world

        model = sc.load_model("toy-facts")
        ts = sc.load_transcoders("toy-facts")
        texts = [s.text for s in load_toy_world().split("train")][::37][:40]
        _TOY.append((model, ts, texts))
    return _TOY[0]


SELECT = {1: list(range(0, 512, 4)), 3: list(range(1, 512, 3))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    _, _, texts = toy()
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(texts) + "\n")  # blank lines are skipped
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus) -> Path:
    model, ts, _ = toy()
    out = tmp_path_factory.mktemp("features") / "f"
    result = build_features(
        model,
        ts,
        corpus,
        out,
        top_k=3,
        samples=4,
        context_len=16,
        batch_size=8,
        features=SELECT,
        progress=False,
    )
    assert result.complete and result.n_files == sum(len(v) for v in SELECT.values())
    assert not (out / CHECKPOINT).exists()
    return out


def direct(layer: int):
    """Per sentence: (token ids, (n, F) dense activations), from the model's own cache.

    The sentences run in the same batches of 8 (right-padded) as the build: a JumpReLU feature
    whose pre-activation lies within rounding of its threshold can flip between batch shapes,
    and this compares the statistics, not the kernels' rounding."""
    from sae_circuits.replacement_model import ReplacementSemantics
    from sae_circuits.transcoders import check_compatible

    model, ts, texts = toy()
    site = check_compatible(model, ts).inputs[layer].name
    sem = ReplacementSemantics(ts)
    out = []
    for i in range(0, len(texts), 8):
        toks = [model.to_tokens(t)[0] for t in texts[i : i + 8]]
        n = max(len(t) for t in toks)
        batch = torch.stack([torch.nn.functional.pad(t, (0, n - len(t))) for t in toks])
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=site)
            for j, t in enumerate(toks):
                out.append((t, sem.features(layer, cache[site][j, : len(t)])))
    return out


@pytest.mark.parametrize("layer", [1, 3])
def test_statistics_match_a_direct_computation(built, layer):
    runs = direct(layer)
    n_tokens = sum(len(t) - 1 for t, _ in runs)  # the leading BOS is left out
    scale = max(float(a[1:].max()) for _, a in runs)
    for f in SELECT[layer][::9]:
        rec = read_feature_file(built, layer=layer, feature=f)
        acts = [a[1:, f] for _, a in runs]
        active = sum(int((a > 0).sum()) for a in acts)
        assert rec["n_tokens"] == n_tokens
        assert rec["density"] == pytest.approx(active / n_tokens, rel=1e-12)
        assert sum(rec["histogram"]["counts"]) == active
        maxima = sorted((float(a.max()) for a in acts if a.numel() and a.max() > 0), reverse=True)
        top = rec["examples_quantiles"][0]
        assert top["quantile_name"] == "Top activations"
        assert len(top["examples"]) == min(3, len(maxima))
        tol = FILE_ROUNDING + 64 * F32_EPS * scale
        got = [e["max_act"] for e in top["examples"]]
        assert max(abs(g - m) for g, m in zip(got, maxima, strict=False)) <= tol if got else True
        if maxima:
            assert abs(rec["act_max"] - maxima[0]) <= tol
            hi = rec["histogram"]["bin_edges"][-1]
            assert hi / 2 <= maxima[0] < hi  # the range: the power of two above the maximum
        for ex in top["examples"]:  # every token's activation is the direct one
            tokens, a = runs[ex["window"]]
            assert ex["token_ids"] == tokens.tolist()
            direct_acts = a[:, f].clone()
            direct_acts[0] = 0  # BOS left out
            assert_close(
                torch.tensor(ex["tokens_acts_list"]),
                direct_acts,
                rtol=tol / max(scale, 1e-30),
                scale=scale,
                what=f"L{layer} #{f}",
            )
            assert ex["train_token_ind"] == int(direct_acts.argmax())
        sampled = [e for band in rec["examples_quantiles"][1:] for e in band["examples"]]
        assert len(sampled) == min(4, len(maxima))
        assert all(e["max_act"] > 0 for e in sampled)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, corpus, built):
    model, ts, _ = toy()
    out = tmp_path / "f"
    kw = dict(top_k=3, samples=4, context_len=16, batch_size=8, features=SELECT, progress=False)
    first = build_features(model, ts, corpus, out, checkpoint_every=1, stop_after=2, **kw)
    assert not first.complete and first.n_windows == 16 and (out / CHECKPOINT).is_file()
    assert not list(out.glob("*_*.json"))  # nothing half-written
    second = build_features(model, ts, corpus, out, checkpoint_every=1, **kw)
    assert second.complete and second.resumed_windows == 16
    assert not (out / CHECKPOINT).exists()
    names = sorted(p.name for p in built.glob("*_*.json"))
    assert names == sorted(p.name for p in out.glob("*_*.json"))
    for name in names:
        assert json.loads((out / name).read_text()) == json.loads((built / name).read_text())
    # a checkpoint of other arguments is refused, not mixed in
    build_features(model, ts, corpus, out, checkpoint_every=1, stop_after=1, **kw)
    with pytest.raises(ValueError, match="other arguments"):
        build_features(model, ts, corpus, out, **{**kw, "top_k": 4})


def test_corpus_formats_read_the_same_documents(tmp_path, corpus):
    import datasets

    texts = list(iter_texts(corpus))
    assert texts == toy()[2]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    assert list(iter_texts(jsonl)) == texts
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    assert list(iter_texts(folder)) == texts
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(
        ValueError, match=re.escape("bad.jsonl:1: expected an object with a string 'text'")
    ):
        list(iter_texts(bad))
    with pytest.raises(FileNotFoundError, match="cannot read corpus"):
        list(iter_texts(tmp_path / "missing-folder"))


def test_logit_effects_are_the_frozen_norm_forward_difference():
    model, ts, _ = toy()
    layer, feats = 2, torch.tensor([0, 7, 300])
    effects = logit_effects(model, ts, layer, n=5)
    torch.manual_seed(0)
    x = torch.randn(1, 1, model.cfg.d_model, dtype=torch.float64)
    ln = model.ln_final
    w, b = ln.w.double(), ln.b.double()

    def logits(r, scale):  # LayerNorm with its scale frozen, then the unembedding, demeaned
        y = (r - r.mean(-1, keepdim=True)) / scale * w + b
        out = y @ model.W_U.double() + model.b_U.double()
        return out - out.mean(-1, keepdim=True)

    xc = x - x.mean(-1, keepdim=True)
    scale = (xc.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    d = ts.decoder_vectors(layer, feats, layer).double()
    for i, f in enumerate(feats.tolist()):
        diff = (logits(x + d[i], scale) - logits(x, scale))[0, 0] * scale[0, 0, 0]
        top = diff.topk(5)
        assert effects.top.indices[f].tolist() == top.indices.tolist()
        assert_close(effects.top.values[f].double(), top.values, rtol=1e-5, what=f"top #{f}")
        bottom = (-diff).topk(5)
        assert effects.bottom.indices[f].tolist() == bottom.indices.tolist()


def test_histogram_does_not_depend_on_batching():
    torch.manual_seed(0)
    acts = torch.relu(torch.randn(12, 6, 5)) * torch.tensor([0.3, 1.0, 7.0, 0.01, 100.0])
    acts[:4] *= 0.1  # the largest values come late: the bins merge on the way
    tokens = torch.arange(72).view(12, 6)
    mask = torch.ones(12, 6, dtype=torch.bool)
    one = LayerStats(5, k=3, samples=4, context_len=6)
    one.update(acts, tokens, mask, torch.arange(12))
    many = LayerStats(5, k=3, samples=4, context_len=6)
    for i in range(0, 12, 3):
        many.update(acts[i : i + 3], tokens[i : i + 3], mask[i : i + 3], torch.arange(i, i + 3))
    for key, value in one.state_dict().items():
        other = many.state_dict()[key]
        if isinstance(value, torch.Tensor) and key != "total":
            assert torch.equal(value, other), key
    hi = one.hi
    assert torch.all((hi / 2 <= acts.amax((0, 1))) & (acts.amax((0, 1)) < hi))
    direct = [
        torch.histc(acts[..., f][acts[..., f] > 0], bins=32, min=0, max=float(hi[f]))
        for f in range(5)
    ]
    assert torch.equal(one.hist, torch.stack(direct).long())


def test_bad_feature_files_are_refused_with_the_reason(built, tmp_path):
    layer, f = 1, SELECT[1][0]
    rec = read_feature_file(built, layer=layer, feature=f)
    index = read_index(built)
    assert index["n_files"] == sum(len(v) for v in SELECT.values())
    cases = {
        "not valid JSON": "{",
        "'density' must be a number in [0, 1]": json.dumps({**rec, "density": 2}),
        "'tokens_acts_list' has": json.dumps(
            {
                **rec,
                "examples_quantiles": [
                    {"quantile_name": "x", "examples": [{"tokens": ["a"], "tokens_acts_list": []}]}
                ],
            }
        ),
        "format": json.dumps({**rec, "format": "other/9"}),
    }
    for message, text in cases.items():
        (tmp_path / f"{layer}_{f}.json").write_text(text)
        with pytest.raises(FeatureFileError, match=re.escape(message)):
            read_feature_file(tmp_path, layer=layer, feature=f)
    with pytest.raises(FileNotFoundError):
        read_feature_file(tmp_path, layer=0, feature=0)


def test_server_answers_feature_files_and_refuses_bad_requests(built, tmp_path):
    import threading
    import urllib.error
    import urllib.request

    from sae_circuits.viewer import make_server

    from .test_viewer_server import make_graph_folder

    folder = make_graph_folder(tmp_path / "graph")
    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    layer, f = 1, SELECT[1][0]
    (bad / f"{layer}_{f}.json").write_text("[1, 2")
    server = make_server(folder, port=0, features=bad)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()

    def get(path):
        try:
            with urllib.request.urlopen(server.url + path, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        status, body = get("api/features")
        assert status == 200 and body["available"] and body["n_files"] == read_index(bad)["n_files"]
        g = SELECT[3][0]
        status, body = get(f"api/feature?layer=3&feature={g}")
        assert status == 200 and body == read_feature_file(bad, layer=3, feature=g)
        status, body = get(f"api/feature?layer={layer}&feature={f}")
        assert (
            status == 409
            and "bad feature file" in body["error"]
            and "not valid JSON" in body["error"]
        )
        assert get("api/feature?layer=0&feature=511")[0] == 404
        for query in (
            "layer=1",
            "layer=x&feature=1",
            "layer=1&feature=-1",
            "layer=1&feature=1&a=2",
        ):
            assert get(f"api/feature?{query}")[0] == 400, query
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    with pytest.raises(FileNotFoundError, match="no feature folder"):
        make_server(folder, port=0, features=tmp_path / "missing")


def test_export_to_circuit_tracers_layout(built, tmp_path):
    from sae_circuits.features import circuit_tracer_index, export_circuit_tracer

    # circuit-tracer's Node.feature_node numbering: (l + f)(l + f + 1) / 2 + f
    pairs = [(0, 0), (1, 0), (0, 1), (2, 3)]
    assert [circuit_tracer_index(lay, f) for lay, f in pairs] == [0, 1, 2, 18]
    folder = built
    ours = sorted(p for p in Path(folder).glob("*_*.json"))
    n = export_circuit_tracer(folder, tmp_path / "ct" / "toy")
    assert n == len(ours) > 0
    for path in ours:
        layer, feature = map(int, path.stem.split("_"))
        theirs = tmp_path / "ct" / "toy" / f"{circuit_tracer_index(layer, feature)}.json"
        record = json.loads(theirs.read_text())
        assert record == read_feature_file(folder, layer=layer, feature=feature)
        for field in ("examples_quantiles", "top_logits", "bottom_logits", "act_min", "act_max"):
            assert field in record
    with pytest.raises(FileNotFoundError):
        export_circuit_tracer(tmp_path / "nothing", tmp_path / "x")
