"""Cross-layer transcoders: the SAELens class, the public file layout, lazy decoders, exactness."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file, save_file

import sae_circuits as sc
from sae_circuits.toy import tiny_clt, tiny_model
from sae_circuits.transcoders import (
    CLT_ARCHITECTURE,
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    CrossLayerTranscoderSet,
)
from sae_circuits.transcoders._clt_files import LazyTensor
from sae_circuits.transcoders.clt_sae import layer_hooks

from .conftest import PROMPT, build
from .oracle import FrozenOracle, sample_sources, worst_column_error
from .tolerance import assert_close, assert_differs, max_abs


@functools.cache
def _clt(arch: str, jumprelu: bool, seed: int = 0) -> CrossLayerTranscoder:
    """A random CLT on the tiny model (calibrated encoders, random decoders to later layers)."""
    _, tcs = build(arch, "jumprelu" if jumprelu else "relu", seed)
    return tiny_clt(tcs, seed=seed)


def _model_and_clt(arch: str, jumprelu: bool = False):
    model, _ = build(arch, "jumprelu" if jumprelu else "relu")
    return model, _clt(arch, jumprelu)


# -- exactness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "jumprelu"), [("gpt2", False), ("llama", False), ("gemma2", True)]
)
def test_clt_columns_equal_measured_direct_effects(arch, jumprelu):
    model, clt = _model_and_clt(arch, jumprelu)
    ts = sc.load_transcoders(clt)
    assert isinstance(ts, CrossLayerTranscoderSet)
    graph = sc.attribute(model, PROMPT, ts, batch_size=64)
    feats = graph.nodes[graph.nodes["kind"] == "feature"]
    assert (feats["layer"] == 0).sum() > 0 and len(feats) > 10
    oracle = FrozenOracle(model, ts, torch.tensor(graph.metadata["tokens"]))
    rng = np.random.default_rng(0)
    sources = sample_sources(graph, rng, n_features=6)
    # always include layer-0 features: they write to every layer
    layer0 = np.flatnonzero(
        ((graph.nodes["kind"] == "feature") & (graph.nodes["layer"] == 0)).to_numpy()
    )
    sources += list(rng.choice(layer0, min(3, len(layer0)), replace=False))
    assert worst_column_error(graph, oracle, sources) < 1e-4
    json.dumps(graph.metadata["transcoders"])  # describe() is JSON-able
    assert graph.metadata["transcoders"]["architecture"] == CLT_ARCHITECTURE


def test_every_loading_route_gives_the_same_graph(tmp_path):
    model, clt = _model_and_clt("gemma2", jumprelu=True)
    ref = sc.attribute(model, PROMPT, sc.load_transcoders(clt))
    clt.save_public_layout(tmp_path / "public")
    clt.save_model(tmp_path / "saelens")
    routes = {
        "public lazy": sc.load_transcoders(tmp_path / "public"),
        "public lazy encoder": sc.load_transcoders(tmp_path / "public", lazy_encoder=True),
        "public eager": sc.load_transcoders(tmp_path / "public", lazy_decoder=False),
        "saelens lazy": sc.load_transcoders(tmp_path / "saelens"),
        "saelens eager": sc.load_transcoders(tmp_path / "saelens", lazy_decoder=False),
    }
    assert routes["public lazy"].lazy_decoder and not routes["public lazy"].lazy_encoder
    assert routes["public lazy encoder"].lazy_encoder
    assert not routes["public eager"].lazy_decoder and routes["saelens lazy"].lazy_decoder
    for name, ts in routes.items():
        assert isinstance(ts, CrossLayerTranscoderSet), name
        assert ts.input_hooks == (
            "blocks.0.ln2.hook_normalized",
            "blocks.1.ln2.hook_normalized",
            "blocks.2.ln2.hook_normalized",
        )
        g = sc.attribute(model, PROMPT, ts)
        keys = ["kind", "layer", "position", "feature", "token_id"]
        assert g.nodes[keys].equals(ref.nodes[keys]), name
        assert_close(
            g.nodes["activation"].to_numpy(float, na_value=0),
            ref.nodes["activation"].to_numpy(float, na_value=0),
            what=f"{name}: activations",
        )
        assert_close(g.adjacency, ref.adjacency, what=f"{name}: adjacency")


def test_lazy_decoders_read_only_active_rows(tmp_path, monkeypatch):
    model, clt = _model_and_clt("llama")
    clt.save_public_layout(tmp_path)
    ts = sc.load_transcoders(tmp_path, model=model)
    reads: list[tuple[str, int]] = []
    real_rows = LazyTensor.rows

    def spy_rows(self, rows, *rest):
        reads.append((self.key, len(torch.unique(rows))))
        return real_rows(self, rows, *rest)

    def no_full_read(self):
        raise AssertionError(f"{self.key} was read in full")

    monkeypatch.setattr(LazyTensor, "rows", spy_rows)
    monkeypatch.setattr(LazyTensor, "read", no_full_read)
    graph = sc.attribute(model, PROMPT, ts)
    feats = graph.nodes[graph.nodes["kind"] == "feature"]
    active = {layer: feats.loc[feats["layer"] == layer, "feature"].nunique() for layer in range(3)}
    assert reads and all(key.startswith("W_dec_") for key, _ in reads)
    for key, n in reads:
        assert 0 < n <= active[int(key.split("_")[-1])], (key, n)
    assert max(n for _, n in reads) < clt.cfg.d_sae


def test_replacement_reconstructs_from_all_earlier_layers():
    model, clt = _model_and_clt("gpt2")
    ts = sc.load_transcoders(clt)
    tokens = torch.tensor([[0] + [int(w[1:]) for w in PROMPT.split()]])  # 't0' is BOS
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens)
        with sc.replacement(model, ts) as rm:
            logits = model(tokens)
    assert_close(logits, clean, what="logits inside the replacement")
    L = model.cfg.n_layers
    acts = [rm.activations[layer].to_dense()[0] for layer in range(L)]
    with torch.no_grad():
        for out in range(L):
            recon = clt.b_dec[out] + sum(acts[s] @ clt.W_dec[s][:, out - s] for s in range(out + 1))
            mlp_out = cache[f"blocks.{out}.hook_mlp_out"][0]
            # the error is a difference of two such sums: its rounding is on their scale
            assert_close(
                rm.errors[out][0], mlp_out - recon, scale=max_abs(recon), what=f"error {out}"
            )
        # the SAE's own all-layer forward agrees with the set
        x = torch.stack([cache[f"blocks.{layer}.hook_resid_mid"][0] for layer in range(L)], dim=1)
        assert_close(clt.encode(x)[:, 2], acts[2], what="encode")
        sparse = {layer: a.to_sparse() for layer, a in enumerate(acts)}
        assert_close(clt(x)[:, 2], ts.decode(2, sparse), what="decode")
    # with fixed errors, zeroing layer-0 features changes every later layer's output
    errors = {layer: e[0] for layer, e in rm.errors.items()}

    def kill0(layer, a):
        return a * 0 if layer == 0 else a

    with torch.no_grad(), sc.replacement(model, ts, errors=errors, feature_hook=kill0):
        _, c2 = model.run_with_cache(tokens)
    delta = acts[0] @ clt.W_dec[0][:, 1]
    assert max_abs(delta) > 1e-3 * max_abs(cache["blocks.1.hook_mlp_out"])
    assert_differs(c2["blocks.1.hook_mlp_out"], cache["blocks.1.hook_mlp_out"])


# -- the SAELens class -------------------------------------------------------------------------


def test_saelens_round_trip_is_exact(tmp_path):
    clt = _clt("gemma2", True)
    clt.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == CLT_ARCHITECTURE and cfg["n_layers"] == 3
    for loaded in (SAE.load_from_disk(tmp_path), CrossLayerTranscoder.load_from_disk(tmp_path)):
        assert type(loaded) is CrossLayerTranscoder
        assert loaded.cfg.to_dict() == clt.cfg.to_dict()
        assert loaded.state_dict().keys() == clt.state_dict().keys()
        for name, p in clt.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], p), name
    x = torch.randn(5, 3, clt.cfg.d_in)
    assert torch.equal(SAE.load_from_disk(tmp_path)(x), clt(x))
    assert SAE.load_from_disk(tmp_path, dtype="float64").W_dec[1].dtype == torch.float64
    # the public layout round-trips too (hooks via config.yaml)
    clt.save_public_layout(tmp_path / "public")
    back = CrossLayerTranscoder.from_public_layout(tmp_path / "public")
    assert back.cfg.metadata.hook_name == "blocks.{layer}.ln2.hook_normalized"
    for name, p in clt.state_dict().items():
        assert torch.equal(back.state_dict()[name], p), name


def test_from_pretrained_loads_a_clt_pushed_in_saelens_format(tmp_path, monkeypatch):
    """SAE.from_pretrained(repo_id, folder) with SAELens' default loader, the hub stubbed by a
    local folder (offline)."""
    import sae_lens.loading.pretrained_sae_loaders as loaders

    clt = _clt("llama", False)
    clt.save_model(tmp_path / "repo" / "clt")

    def fake_download(repo_id, filename, force_download=False, **kwargs):
        assert repo_id == "someone/my-clt"
        path = tmp_path / "repo" / filename
        if not path.is_file():
            raise loaders.EntryNotFoundError(filename)
        return str(path)

    monkeypatch.setattr(loaders, "hf_hub_download", fake_download)
    loaded = SAE.from_pretrained("someone/my-clt", "clt")
    assert type(loaded) is CrossLayerTranscoder
    for name, p in clt.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    assert sc.load_transcoders(loaded).input_hooks[1] == "blocks.1.mlp.hook_in"


def test_lazy_tensor_rows(tmp_path):
    from sae_circuits.transcoders._clt_files import _runs

    t = torch.randn(10, 3, 4)
    save_file({"W": t}, str(tmp_path / "a.safetensors"))
    lazy = LazyTensor(tmp_path / "a.safetensors", "W", (10, 3, 4))
    idx = torch.tensor([7, 2, 2, 9, 0])
    assert torch.equal(lazy.rows(idx, 1), t[idx, 1])
    assert torch.equal(lazy.rows(idx), t[idx])
    assert lazy.rows(torch.tensor([], dtype=torch.long), 1).shape == (0, 4)
    with pytest.raises(IndexError, match="has 10 rows; asked for row 10"):
        lazy.rows(torch.tensor([3, 10]))
    assert _runs([1, 2, 3, 5, 7, 8]) == [(1, 4), (5, 6), (7, 9)]


def test_fold_w_dec_norm_keeps_outputs():
    clt = CrossLayerTranscoder(
        CrossLayerTranscoderConfig(d_in=8, d_sae=16, n_layers=3, activation="jumprelu")
    )
    with torch.no_grad():
        clt.b_enc.normal_()
        clt.threshold.uniform_(0.0, 0.3)
        for w in clt.W_dec:
            w.mul_(5)
    x = torch.randn(4, 3, 8)
    before = clt(x)
    clt.fold_W_dec_norm()
    assert_close(clt(x), before, what="outputs after folding")
    assert_close(clt.get_W_dec_norm(), torch.ones(3, 16), what="decoder norms after folding")


def test_registration_is_idempotent_through_the_public_api(tmp_path, monkeypatch, caplog):
    from sae_lens.registry import get_sae_class

    from sae_circuits.transcoders import _registry

    _registry.register_architectures()
    _registry.register_architectures()
    assert get_sae_class(CLT_ARCHITECTURE)[0] is CrossLayerTranscoder
    cfg = CrossLayerTranscoderConfig(d_in=4, d_sae=8, n_layers=2)
    CrossLayerTranscoder(cfg).save_model(tmp_path)
    assert type(SAE.load_from_disk(tmp_path)) is CrossLayerTranscoder

    class Other(CrossLayerTranscoder):
        pass

    # another class already registered under the name is left in place, with a warning
    monkeypatch.setitem(
        _registry.ARCHITECTURES, CLT_ARCHITECTURE, (Other, CrossLayerTranscoderConfig)
    )
    with caplog.at_level("WARNING"):
        _registry.register_architectures()
    assert "already registered" in caplog.text
    assert get_sae_class(CLT_ARCHITECTURE)[0] is CrossLayerTranscoder


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_layers": 0}, "n_layers"),
        ({"n_layers": 2, "apply_b_dec_to_input": True}, "apply_b_dec_to_input"),
        ({"n_layers": 2, "normalize_activations": "layer_norm"}, "normalize_activations"),
        ({"n_layers": 2, "activation": "topk"}, "activation"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossLayerTranscoderConfig(d_in=4, d_sae=8, **kwargs)


def test_shape_checks_of_encode_and_decode():
    clt = CrossLayerTranscoder(CrossLayerTranscoderConfig(d_in=4, d_sae=8, n_layers=2))
    with pytest.raises(ValueError, match="n_layers=2"):
        clt.encode(torch.randn(5, 4))
    with pytest.raises(ValueError, match="d_sae=8"):
        clt.decode(torch.randn(5, 2, 4))


def test_hook_specs():
    assert layer_hooks("hook_mlp_out", 2, "out") == (
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_mlp_out",
    )
    assert layer_hooks("blocks.{layer}.mlp.hook_in", 2, "in")[1] == "blocks.1.mlp.hook_in"
    assert layer_hooks(["a", "b"], 2, "in") == ("a", "b")
    with pytest.raises(ValueError, match="template"):
        layer_hooks("blocks.0.hook_mlp_out", 2, "out")
    with pytest.raises(ValueError, match="3 hook names"):
        layer_hooks(["a", "b", "c"], 2, "in")
    clt = CrossLayerTranscoder(CrossLayerTranscoderConfig(d_in=4, d_sae=8, n_layers=2))
    with pytest.raises(ValueError, match="hook_name is not set"):
        sc.load_transcoders(clt)
    ts = sc.load_transcoders(clt, input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    assert ts.output_hooks == ("blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out")
    with pytest.raises(TypeError, match="alone"):
        sc.load_transcoders([clt])


def test_set_interface_errors():
    _, clt = _model_and_clt("gpt2")
    ts = sc.load_transcoders(clt)
    assert ts.output_layers(1) == range(1, 3) and not ts.has_skip
    with pytest.raises(ValueError, match="missing \\[0\\]"):
        ts.decode(1, {1: torch.zeros(2, clt.cfg.d_sae)})
    with pytest.raises(ValueError, match="not to layer 0"):
        ts.decoder_vectors(1, torch.tensor([0]), 0)


# -- the public file layout: bad input ---------------------------------------------------------


@pytest.fixture
def public(tmp_path):
    _clt("llama", True).save_public_layout(tmp_path)
    return tmp_path


def _edit(path, fn):
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def _add(key, value):
    return lambda t: t.__setitem__(key, value)


def _drop(key):
    return lambda t: t.pop(key)


F, D = 128, 32
BAD_FILES = {
    "missing decoder": (
        lambda p: (p / "W_dec_1.safetensors").unlink(),
        r"W_enc_1.safetensors' has no matching W_dec_1",
    ),
    "extra decoder": (
        lambda p: save_file({"W_dec_3": torch.zeros(F, 1, D)}, str(p / "W_dec_3.safetensors")),
        r"W_dec_3.safetensors' has no matching W_enc_3",
    ),
    "layer gap": (
        lambda p: [(p / f"W_{w}_1.safetensors").unlink() for w in ("enc", "dec")],
        r"W_enc_1.safetensors' and W_dec_1.safetensors are missing",
    ),
    "unexpected file": (
        lambda p: save_file({"W_skip_0": torch.zeros(D, D)}, str(p / "W_skip_0.safetensors")),
        r"W_skip_0.safetensors': unexpected file",
    ),
    "unknown encoder key": (
        lambda p: _edit(p / "W_enc_1.safetensors", _add("W_skip_1", torch.zeros(D, D))),
        r"W_enc_1.safetensors': unknown keys \['W_skip_1'\]",
    ),
    "missing encoder key": (
        lambda p: _edit(p / "W_enc_2.safetensors", _drop("b_dec_2")),
        r"W_enc_2.safetensors': missing keys \['b_dec_2'\]",
    ),
    "unknown decoder key": (
        lambda p: _edit(p / "W_dec_0.safetensors", _add("W_dec_1", torch.zeros(2))),
        r"W_dec_0.safetensors': unknown keys \['W_dec_1'\]",
    ),
    "decoder layers": (
        lambda p: _edit(p / "W_dec_1.safetensors", _add("W_dec_1", torch.zeros(F, 3, D))),
        r"W_dec_1.safetensors': W_dec_1 has shape \(128, 3, 32\); expected \(128, 2, 32\)",
    ),
    "feature count": (
        lambda p: _edit(p / "W_enc_2.safetensors", _add("W_enc_2", torch.zeros(F + 1, D))),
        r"W_enc_2.safetensors': W_enc_2 has shape \(129, 32\)",
    ),
    "output width": (
        lambda p: _edit(p / "W_enc_1.safetensors", _add("b_dec_1", torch.zeros(D + 1))),
        r"W_enc_1.safetensors': b_dec_1 has shape \(33,\)",
    ),
    "threshold on some layers": (
        lambda p: _edit(p / "W_enc_1.safetensors", _drop("threshold_1")),
        r"W_enc_1.safetensors': threshold_1 is absent.*every layer or for none",
    ),
    "integer weights": (
        lambda p: _edit(
            p / "W_enc_0.safetensors", _add("b_enc_0", torch.zeros(F, dtype=torch.int32))
        ),
        r"W_enc_0.safetensors': b_enc_0 has dtype I32",
    ),
    "corrupt file": (
        lambda p: (p / "W_dec_2.safetensors").write_bytes(b"not a safetensors file"),
        r"W_dec_2.safetensors' is not a readable safetensors file",
    ),
    "config unknown key": (
        lambda p: (p / "config.yaml").write_text(
            "feature_input_hook: x\nfeature_output_hook: y\nskip: true\n"
        ),
        r"config.yaml': unknown keys \['skip'\]",
    ),
    "config model kind": (
        lambda p: (p / "config.yaml").write_text("model_kind: transcoder_set\n"),
        r"config.yaml': model_kind is 'transcoder_set'",
    ),
    "config not a mapping": (
        lambda p: (p / "config.yaml").write_text("- a\n- b\n"),
        r"config.yaml' must be a mapping",
    ),
    "config bad yaml": (
        lambda p: (p / "config.yaml").write_text("a: [1\n"),
        r"config.yaml' is not valid YAML",
    ),
    "config hook not a string": (
        lambda p: (p / "config.yaml").write_text("feature_input_hook: 3\n"),
        r"config.yaml': feature_input_hook must be a hook name",
    ),
    "no hooks": (
        lambda p: (p / "config.yaml").unlink(),
        r"input hook is unknown: feature_input_hook in .*config.yaml",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_public_folders(public, case):
    mutate, match = BAD_FILES[case]
    mutate(public)
    with pytest.raises(ValueError, match=match):
        sc.load_transcoders(public)


def test_folder_that_does_not_fit_the_model(public):
    model, _ = build("llama", "jumprelu")
    assert sc.load_transcoders(public, model=model).n_layers == 3
    deeper = tiny_model("llama", n_layers=4)
    with pytest.raises(
        ValueError,
        match=r"\(W_enc_0 ... W_enc_2.safetensors\) has 3 layers but the model '.*' has 4 layers",
    ):
        sc.load_transcoders(public, model=deeper)
    wider = tiny_model("llama", d_model=48)
    with pytest.raises(
        ValueError,
        match=r"W_enc_0.safetensors': W_enc_0\) has d_in 32 but the model '.*' has d_model 48",
    ):
        sc.load_transcoders(public, model=wider)
    gpt2 = tiny_model("gpt2")
    with pytest.raises(ValueError, match="hook_typo"):
        sc.load_transcoders(public, model=gpt2, input_hook="mlp.hook_in", output_hook="hook_typo")


def test_hooks_from_arguments_override_config(public):
    (public / "config.yaml").unlink()
    ts = sc.load_transcoders(
        public, input_hook="mlp.hook_in", output_hook="blocks.{layer}.mlp.hook_out"
    )
    assert (
        ts.input_hooks[2] == "blocks.2.mlp.hook_in"
        and ts.output_hooks[0] == "blocks.0.mlp.hook_out"
    )
    assert ts.describe()["source"] == str(public) and ts.describe()["jumprelu"]


def test_bad_saelens_folders(tmp_path):
    clt = _clt("llama", False)
    clt.save_model(tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    _edit(weights, _add("W_dec.1", torch.zeros(F, 3, D)))
    with pytest.raises(
        ValueError,
        match=r"sae_weights.safetensors' does not match .*W_dec.1 has shape \(128, 3, 32\)",
    ):
        sc.load_transcoders(tmp_path)
    clt.save_model(tmp_path)
    _edit(weights, _add("extra", torch.zeros(1)))
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        sc.load_transcoders(tmp_path)
    clt.save_model(tmp_path)
    with pytest.raises(ValueError, match="public per-layer layout only"):
        sc.load_transcoders(tmp_path, lazy_encoder=True)
