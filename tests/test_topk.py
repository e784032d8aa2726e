"""TopK transcoders: the rule, SAELens registration and the exact save/load round trip, the toy
kind, what attribution and interventions do with the selection, and the public
Llama-3.1-8B-Instruct TopK release read in its own file format (offline, through the hub path).

Attribution exactness (graph columns against the float64 frozen oracle), the replacement model,
interventions and folder loading run on the ``topk`` kind with every other kind (``KINDS`` in
``conftest.py``); this file holds what is particular to TopK.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sae_lens import SAE
from sae_lens.registry import get_sae_class
from safetensors.torch import save

import sae_circuits as sc
from sae_circuits.core.prompts import to_tokens
from sae_circuits.replacement_model import clean_run
from sae_circuits.transcoders import (
    TOPK_ARCHITECTURE,
    TopKTranscoder,
    TopKTranscoderConfig,
    WeightsUnavailableError,
    check_compatible,
    topk_activation,
)
from sae_circuits.transcoders import configs as cfgs
from sae_circuits.transcoders._registry import register_architectures
from sae_circuits.transcoders.topk import topk_mask

from .conftest import ARCHS, PROMPT, build, fake_repo
from .oracle import FrozenOracle, sample_sources, worst_column_error
from .tolerance import assert_close

REPO = "facebook/crv-8b-instruct-transcoders"
#: The release's config.yaml as published (no k: circuit-tracer hardcodes 128 for this repo).
PUBLIC_CONFIG = {
    "model_name": "meta-llama/Llama-3.1-8B-Instruct",
    "model_kind": "transcoder_set",
    "feature_input_hook": "mlp.hook_in",
    "feature_output_hook": "mlp.hook_out",
    "activation": "topk",
}
D, F = 8, 16


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """circuit-tracer's TopK, written out: a 0/1 gate on ``torch.topk``'s indices times ``pre``
    (which of several tied entries ``torch.topk`` returns is unspecified)."""
    gate = torch.zeros_like(pre).scatter(-1, torch.topk(pre, k, dim=-1).indices, 1.0)
    return pre * gate


def stable_topk_mask(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The tie rule written another way: a stable descending sort keeps equal entries in index
    order, so its first ``k`` are the ``k`` largest with ties to the lowest index."""
    first = torch.sort(pre, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros(pre.shape, dtype=torch.bool).scatter(-1, first, True)


# -- the rule ----------------------------------------------------------------------------------


def test_topk_keeps_the_k_largest_pre_activations_unchanged_without_relu():
    pre = rand(50, 40, seed=0)
    for k in (1, 5, 39, 40):
        a = topk_activation(pre, k=k)
        assert torch.equal(a, reference_topk(pre, k)), k
        assert ((a != 0).sum(-1) == k).all()
    # fewer positive entries than k: the largest negative ones are kept as they are (no ReLU)
    row = torch.tensor([[-3.0, 1.0, -1.0, -2.0, -0.5]])
    assert topk_activation(row, k=3).tolist() == [[0.0, 1.0, -1.0, 0.0, -0.5]]
    # any leading dimensions and dtypes (bfloat16 rounding makes ties: torch.topk may pick any
    # of them, the rule picks the lowest index); a NaN stays visible
    pre3 = rand(2, 7, 40, seed=1).to(torch.bfloat16)
    a3 = topk_activation(pre3, k=6)
    assert a3.dtype == torch.bfloat16 and torch.equal(a3, pre3 * stable_topk_mask(pre3, 6))
    nan = pre.clone()
    nan[3, 7] = float("nan")
    assert topk_activation(nan, k=5)[3].isnan().any()


def test_ties_at_the_kth_value_go_to_the_lowest_feature_index():
    assert topk_mask(torch.tensor([[2.0, 1.0, 2.0, 2.0, 0.0]]), k=2).tolist() == [
        [True, False, True, False, False]
    ]
    assert topk_mask(torch.full((1, 6), 3.0), k=4).tolist() == [[True] * 4 + [False] * 2]
    pre = torch.randint(0, 3, (200, 30), generator=torch.Generator().manual_seed(0)).float()
    for k in (1, 7, 29):
        mask = topk_mask(pre, k=k)
        assert torch.equal(mask, stable_topk_mask(pre, k)), k
        assert (mask.sum(-1) == k).all()


def test_k_out_of_range_is_an_error_naming_both_numbers():
    with pytest.raises(ValueError, match=r"k = 9 is larger than d_sae = 8.*valid: 1\.\.8"):
        TopKTranscoderConfig(d_in=4, d_sae=8, d_out=4, k=9)
    with pytest.raises(ValueError, match=r"k is required.*d_sae = 8"):
        TopKTranscoderConfig(d_in=4, d_sae=8, d_out=4)
    with pytest.raises(ValueError, match=r"k must be at least 1 \(valid: 1\.\.8\), got k = -2"):
        TopKTranscoderConfig(d_in=4, d_sae=8, d_out=4, k=-2)
    with pytest.raises(
        ValueError, match=r"k must be an integer in 1\.\.d_sae \(d_sae = 8\), got 2\.5"
    ):
        TopKTranscoderConfig(d_in=4, d_sae=8, d_out=4, k=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"k = 41 is larger than d_sae = 40"):
        topk_activation(rand(3, 40, seed=0), k=41)
    _, tcs = build("llama", "topk")
    bad = TopKTranscoder(dataclasses.replace(tcs[1].cfg))
    bad.load_state_dict(tcs[1].state_dict())
    bad.cfg.k = 200
    with pytest.raises(
        ValueError, match=r"layer 1: TopK transcoder: k = 200 is larger than d_sae = 128"
    ):
        sc.load_transcoders([tcs[0], bad, tcs[2]])


# -- SAELens: registration, exact round trip ---------------------------------------------------


def test_registered_with_saelens_and_saved_loaded_bit_for_bit(tmp_path):
    assert get_sae_class(TOPK_ARCHITECTURE) == (TopKTranscoder, TopKTranscoderConfig)
    register_architectures()  # idempotent
    assert get_sae_class(TOPK_ARCHITECTURE)[0] is TopKTranscoder
    _, tcs = build("gemma2", "topk")
    tc = tcs[1]
    tc.save_model(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert cfg["architecture"] == TOPK_ARCHITECTURE and cfg["k"] == tc.cfg.k == 4
    back = SAE.load_from_disk(tmp_path / "a")
    assert type(back) is TopKTranscoder and back.cfg.to_dict() == tc.cfg.to_dict()
    assert back.state_dict().keys() == tc.state_dict().keys()
    for name, value in tc.state_dict().items():
        assert back.state_dict()[name].dtype == value.dtype
        assert torch.equal(back.state_dict()[name], value), name
    x = rand(9, tc.cfg.d_in, seed=2)
    assert torch.equal(back.encode(x), tc.encode(x))
    assert torch.equal(back(x), tc(x))
    back.save_model(tmp_path / "b")  # saving the loaded copy writes the same bytes
    for f in ("cfg.json", "sae_weights.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert type(SAE.from_dict(tc.cfg.to_dict())) is TopKTranscoder
    with pytest.raises(NotImplementedError, match="changes which k features are selected"):
        tc.fold_W_dec_norm()


def test_encode_is_the_set_activation_and_cfg_k_is_live():
    _, tcs = build("llama", "topk")
    ts = sc.load_transcoders(tcs)
    x = rand(5, tcs[0].cfg.d_in, seed=3)
    pre = ts.pre_activations(0, x)
    assert torch.equal(ts.activation_fn(0, pre), reference_topk(pre, 4))
    assert_close(tcs[0].encode(x), ts.activation_fn(0, pre), scale=float(pre.detach().abs().max()))
    tc = TopKTranscoder(dataclasses.replace(tcs[0].cfg))
    tc.load_state_dict(tcs[0].state_dict())
    tc.cfg.k = 9
    assert ((tc.encode(x) != 0).sum(-1) == 9).all()
    assert ts.describe()["topk_k"] == [4, 4, 4]


# -- the toy kind ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_topk_selection_drops_positive_features(arch):
    model, tcs = build(arch, "topk")
    ts = sc.load_transcoders(tcs)
    clean = clean_run(model, to_tokens(model, PROMPT), check_compatible(model, ts), freeze=False)
    dropped_positive = kept_negative = 0
    for layer, tc in enumerate(tcs):
        assert tc.cfg.k == 4 < tc.cfg.d_sae
        pre = ts.pre_activations(layer, clean.x_in[layer])
        acts = clean.acts[layer].to_dense()
        selected = acts != 0
        assert (selected.sum(-1) == tc.cfg.k).all()
        assert torch.equal(acts[selected], pre[selected])
        assert torch.equal(selected, topk_mask(pre, k=tc.cfg.k))
        dropped_positive += int(((pre > 0) & ~selected).sum())
        kept_negative += int((acts < 0).sum())
    assert dropped_positive >= 5, "k must be small enough that the selection matters"
    assert kept_negative >= 1, "rows with fewer than k positive entries keep negative ones"


def test_tiny_transcoders_kind_errors():
    model, _ = build("gpt2")
    with pytest.raises(ValueError, match=r"unknown transcoder kind 'top_k'.*topk"):
        sc.toy.tiny_transcoders(model, "top_k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k is for kind 'topk' only"):
        sc.toy.tiny_transcoders(model, "relu", k=3)
    assert sc.toy.tiny_transcoders(model, "topk", k=7)[0].cfg.k == 7  # type: ignore[attr-defined]
    _, tcs = build("gpt2", "topk")
    with pytest.raises(ValueError, match="cross-layer transcoders are ReLU or JumpReLU"):
        sc.toy.tiny_clt(tcs)


# -- attribution and interventions -------------------------------------------------------------


def test_graph_nodes_are_the_clean_top_k():
    model, tcs = build("llama", "topk")
    ts = sc.load_transcoders(tcs)
    graph = sc.attribute(model, PROMPT, ts)
    tokens = torch.tensor(graph.metadata["tokens"])
    clean = clean_run(model, tokens, check_compatible(model, ts), freeze=False)
    feats = graph.nodes[graph.nodes["kind"] == "feature"]
    got = {
        (int(r.layer), int(r.position), int(r.feature)): float(r.activation)
        for r in feats.itertuples()
    }
    want = {}
    for layer in range(model.cfg.n_layers):
        a = topk_activation(ts.pre_activations(layer, clean.x_in[layer]), k=4)
        for pos, feat in zip(*torch.nonzero(a[1:], as_tuple=True), strict=True):
            want[(layer, int(pos) + 1, int(feat))] = float(a[pos + 1, feat])
    assert got.keys() == want.keys() and len(got) == 4 * model.cfg.n_layers * (len(tokens) - 1)
    assert all(got[key] == pytest.approx(v, rel=1e-6) for key, v in want.items())
    assert (feats["activation"] < 0).any()  # selected negative pre-activations are nodes too


def test_interventions_select_the_top_k_again_downstream():
    model, tcs = build("llama", "topk")
    ts = sc.load_transcoders(tcs)
    tokens = to_tokens(model, PROMPT)
    base = sc.intervene(model, PROMPT, ts, None)
    clean0 = base.clean_activations[0].to_dense()
    pos = 3
    feature = int(torch.nonzero(clean0[pos] == 0)[0])  # inactive at (layer 0, position 3)
    value = 4.0 * float(clean0.abs().max())
    iv = [(0, pos, feature, value)]
    r = sc.intervene(model, PROMPT, ts, iv, freeze_attention=False)
    a0 = r.activations[0].to_dense()
    assert int((a0[pos] != 0).sum()) == 5  # the set value is written after the TopK: k + 1
    assert float(a0[pos, feature]) == pytest.approx(value)
    moved = 0
    for layer in (1, 2):
        now, old = r.activations[layer].to_dense(), r.clean_activations[layer].to_dense()
        assert ((now != 0).sum(-1) == 4).all()  # re-encoded: exactly k again
        moved += int(((now != 0) != (old != 0))[pos:].any(-1).sum())
    assert moved > 0, "the intervention changes which features are selected downstream"
    # the same as the replacement model with frozen errors, where TopK is the activation
    with torch.no_grad(), sc.replacement(model, ts) as rm:
        model(tokens[None])
    errors = {layer: e.clone() for layer, e in rm.errors.items()}

    def feature_hook(layer, acts):
        if layer == 0:
            acts = acts.clone()
            acts[0, pos, feature] = value
        return acts

    with torch.no_grad(), sc.replacement(model, ts, errors=errors, feature_hook=feature_hook) as st:
        logits = model(tokens[None])[0]
    assert_close(r.logits, logits, what="logits")
    for layer in range(3):
        want = st.activations[layer].to_dense()[0]
        assert torch.equal(r.activations[layer].to_dense() != 0, want != 0), layer
        assert_close(r.activations[layer].to_dense(), want, what=f"activations {layer}")


# -- the public Llama-3.1-8B-Instruct TopK release, in its own format -------------------------


def _layer_file(t: dict[str, torch.Tensor]) -> bytes:
    return save({name: v.contiguous() for name, v in t.items()})


def _public_files(
    n_layers: int, d_model: int, d_sae: int, *, dtype=torch.bfloat16, config=PUBLIC_CONFIG
) -> tuple[dict[str, bytes], dict[int, dict[str, torch.Tensor]]]:
    """config.yaml + layer_{l}.safetensors as circuit-tracer reads them (bf16, (d_sae, d_model))."""
    files = {"config.yaml": yaml.safe_dump(config, sort_keys=False).encode()}
    ref = {}
    for layer in range(n_layers):
        t = {
            "W_enc": rand(d_sae, d_model, seed=layer).to(dtype),
            "W_dec": rand(d_sae, d_model, seed=100 + layer).to(dtype),
            "b_enc": rand(d_sae, seed=200 + layer).to(dtype),
            "b_dec": rand(d_model, seed=300 + layer).to(dtype),
        }
        files[f"layer_{layer}.safetensors"] = _layer_file(t)
        ref[layer] = t
    return files, ref


def test_shipped_llama_topk_config_reads_the_public_layout(hf_cache, tmp_path):
    config = cfgs.get_config("llama-3.1-8b-instruct-topk")
    src = config.source
    assert isinstance(src, cfgs.HubSource) and (src.repo, src.format) == (REPO, "circuit_tracer")
    assert (src.activation, src.k, src.files) == ("topk", 128, "layer_{layer}.safetensors")
    assert (config.n_layers, config.d_model) == (32, 4096)
    assert (config.hooks.input, config.hooks.output) == ("mlp.hook_in", "mlp.hook_out")
    tiny = dataclasses.replace(config, d_model=D)
    d_sae = 256  # k = 128 of 256: the selection keeps half
    files, ref = _public_files(32, D, d_sae)
    fake_repo(hf_cache, REPO, files)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in files.items():
        (copy / name).write_bytes(data)
    for ts in (
        sc.load_transcoders(tiny, device="cpu"),
        sc.load_transcoders(tiny, device="cpu", local_dir=copy),
    ):
        assert isinstance(ts, sc.PerLayerTranscoderSet) and len(ts) == 32
        assert all(type(tc) is TopKTranscoder and tc.cfg.k == 128 for tc in ts.transcoders)
        assert (ts.input_hooks[5], ts.output_hooks[31]) == (
            "blocks.5.mlp.hook_in",
            "blocks.31.mlp.hook_out",
        )
        assert ts.describe()["topk_k"] == [128] * 32 and ts.dtype == torch.float32
        for layer in (0, 17, 31):
            t, tc = ref[layer], ts[layer]
            assert torch.equal(tc.W_enc, t["W_enc"].float().T)
            assert torch.equal(tc.W_dec, t["W_dec"].float())
            assert torch.equal(tc.b_enc, t["b_enc"].float())
            assert torch.equal(tc.b_dec, t["b_dec"].float())
            assert tc.cfg.metadata.model_name == config.model
            x = rand(6, D, seed=layer)
            pre = ts.pre_activations(layer, x)
            want = x @ t["W_enc"].float().T + t["b_enc"].float()
            assert_close(pre, want, what="pre-activations")
            assert torch.equal(ts.activation_fn(layer, pre), reference_topk(pre, 128))


def test_offline_missing_release_file_says_what_and_how(hf_cache):
    with pytest.raises(WeightsUnavailableError, match=rf"'layer_0\.safetensors'.*{REPO}"):
        sc.load_transcoders("llama-3.1-8b-instruct-topk", device="cpu")


def _tiny_yaml(folder: Path, name: str, source: dict, *, n_layers: int = 2, **top) -> Path:
    body = {
        "description": "tiny TopK",
        "model": "custom",
        "kind": "per_layer",
        "n_layers": n_layers,
        "hooks": {"input": "mlp.hook_in", "output": "mlp.hook_out"},
        "source": {
            "repo": "org/topk",
            "files": "layer_{layer}.safetensors",
            "format": "circuit_tracer",
            **source,
        },
        **top,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_release_with_k_in_its_config_attributes_exactly(hf_cache, tmp_path):
    model, tcs = build("llama", "topk")
    files = {"config.yaml": yaml.safe_dump({**PUBLIC_CONFIG, "k": 4}).encode()}
    for layer, tc in enumerate(tcs):
        files[f"layer_{layer}.safetensors"] = _layer_file(
            {
                "W_enc": tc.W_enc.detach().T,
                "W_dec": tc.W_dec.detach(),
                "b_enc": tc.b_enc.detach(),
                "b_dec": tc.b_dec.detach(),
            }
        )
    fake_repo(hf_cache, "org/topk", files)
    # no activation in the config: the release's config.yaml says topk, k 4
    path = _tiny_yaml(tmp_path, "tiny", {}, n_layers=3, d_model=model.cfg.d_model)
    ts = sc.load_transcoders(path, device="cpu", model=model)
    for loaded, tc in zip(ts.transcoders, tcs, strict=True):
        assert type(loaded) is TopKTranscoder and loaded.cfg.k == 4
        for name, value in tc.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name
    graph = sc.attribute(model, PROMPT, ts, batch_size=64)
    oracle = FrozenOracle(model, ts, torch.tensor(graph.metadata["tokens"]))
    sources = sample_sources(graph, np.random.default_rng(0))
    assert len(sources) >= 10
    assert worst_column_error(graph, oracle, sources) < 1e-4
    same = sc.attribute(model, PROMPT, sc.load_transcoders(tcs), batch_size=64)
    assert_close(graph.adjacency, same.adjacency, what="graph from the files vs the objects")


def test_k_written_by_circuit_tracer_into_the_file(hf_cache, tmp_path):
    files, ref = _public_files(
        2, D, F, dtype=torch.float32, config={"model_kind": "transcoder_set"}
    )
    for layer in range(2):  # circuit-tracer's to_safetensors adds a scalar k to TopK layers
        files[f"layer_{layer}.safetensors"] = _layer_file({**ref[layer], "k": torch.tensor(5)})
    fake_repo(hf_cache, "org/topk", files)
    ts = sc.load_transcoders(_tiny_yaml(tmp_path, "a", {}), device="cpu")
    assert all(type(tc) is TopKTranscoder and tc.cfg.k == 5 for tc in ts.transcoders)
    ts = sc.load_transcoders(
        _tiny_yaml(tmp_path, "b", {"activation": "topk", "k": 5}), device="cpu"
    )
    assert ts[1].cfg.k == 5  # type: ignore[attr-defined]
    with pytest.raises(
        ValueError,
        match=r"layer_0\.safetensors': the file's k = 5 disagrees with the config's k = 6",
    ):
        sc.load_transcoders(_tiny_yaml(tmp_path, "c", {"activation": "topk", "k": 6}), device="cpu")


def _replace(t: dict[str, torch.Tensor], **changes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**t, **changes}


@pytest.mark.parametrize(
    ("release", "source", "layer_1", "message"),
    [
        ("public", {}, None,
         r"bad\.yaml: missing k: the release's config\.yaml \(org/topk\) says activation: topk but gives no k, and the config has no source\.k; set source\.k .*1\.\.d_sae"),
        ("public", {"activation": "topk"}, None,
         r"missing k: the release's config\.yaml \(org/topk\) says activation: topk but gives no k"),
        ({"activation": None}, {"activation": "topk"}, None,
         r"missing k: source\.activation is topk but neither source\.k nor the release's config\.yaml \(org/topk\) gives k"),
        ("public", {"activation": "topk", "k": 17}, None,
         r"layer_0\.safetensors': TopKTranscoderConfig: k = 17 is larger than d_sae = 16;.*valid: 1\.\.16"),
        ({"activation": "relu"}, {"activation": "topk", "k": 4}, None,
         r"source\.activation is 'topk' but the release's config\.yaml \(org/topk\) says activation: 'relu'"),
        ({"activation": "topk", "k": 4}, {"activation": "topk", "k": 5}, None,
         r"source\.k = 5 but the release's config\.yaml \(org/topk\) says k: 4"),
        ({"activation": "topk", "k": "four"}, {}, None,
         r"the release's config\.yaml \(org/topk\): k must be a positive integer, got 'four'"),
        ("public", {"activation": "topk", "k": 4}, {"W_enc": rand(F + 1, D, seed=0)},
         r"layer_1\.safetensors': W_enc has shape \(17, 8\); expected \(d_sae, d_in\) or \(d_in, d_sae\) with d_sae = 16"),
        ("public", {"activation": "topk", "k": 4}, {"W_dec": rand(F, D + 1, seed=0)},
         r"layer_1\.safetensors': W_dec has shape \(16, 9\); expected \(16, 8\) or \(8, 16\)"),
        ("public", {"activation": "topk", "k": 4}, {"activation_function.threshold": rand(F, seed=0)},
         r"layer_1\.safetensors': a TopK transcoder \(k = 4\) has no JumpReLU threshold, but the file holds 'activation_function\.threshold'"),
        ("public", {"activation": "topk", "k": 4}, {"W_skip": rand(D, D, seed=0)},
         r"layer_1\.safetensors': TopK transcoders with a skip connection \(W_skip\) are not supported"),
        ("public", {"activation": "topk", "k": 4}, {"k": torch.tensor([1.0, 2.0])},
         r"layer_1\.safetensors': tensor 'k' must be one integer"),
    ],
)  # fmt: skip
def test_bad_release_input_names_the_problem(hf_cache, tmp_path, release, source, layer_1, message):
    config = PUBLIC_CONFIG if release == "public" else {**PUBLIC_CONFIG, **release}
    files, ref = _public_files(2, D, F, dtype=torch.float32, config=config)
    if layer_1 is not None:
        files["layer_1.safetensors"] = _layer_file(_replace(ref[1], **layer_1))
    fake_repo(hf_cache, "org/topk", files)
    path = _tiny_yaml(tmp_path, "bad", source)
    with pytest.raises(ValueError, match=message):
        sc.load_transcoders(path, device="cpu")


@pytest.mark.parametrize(
    ("source", "top", "message"),
    [
        ({"k": 4}, {}, r"source\.k \(4\) is given without source\.activation: topk"),
        ({"activation": "sigmoid"}, {}, r"source\.activation is 'sigmoid'; valid: topk"),
        ({"activation": "topk", "format": "saelens"}, {}, r"source\.activation is for format circuit_tracer, not 'saelens'"),
        ({"activation": "topk", "k": 0}, {}, r"source\.k must be a positive integer .*got 0"),
        ({"activation": "topk", "k": True}, {}, r"source\.k must be a positive integer .*got True"),
        ({"activation": "topk", "files": None, "format": None}, {"kind": "cross_layer"},
         r"source\.activation and source\.k are for per_layer sources in format circuit_tracer"),
    ],
)  # fmt: skip
def test_schema_errors_for_topk_keys_name_file_and_key(tmp_path, source, top, message):
    path = _tiny_yaml(tmp_path, "bad", source, **top)
    raw = yaml.safe_load(path.read_text())
    raw["source"] = {k: v for k, v in raw["source"].items() if v is not None}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ValueError, match=message) as info:
        cfgs.load_config(path)
    assert str(path) in str(info.value)
