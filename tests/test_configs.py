"""Transcoder configs: schema validation, the shipped configs, and loading through the real paths.

Every load goes through the real code (SAELens' ``SAE.from_pretrained`` and its conversion
functions, ``huggingface_hub.hf_hub_download``, ``CrossLayerTranscoderSet.from_folder``) against a
temporary Hugging Face cache in the real layout (``models--org--name/{blobs,refs,snapshots}``),
offline, with files in the public formats at tiny sizes.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants
from sae_lens import JumpReLUTranscoder, SkipTranscoder, Transcoder
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from safetensors.torch import save

import sae_circuits as sc
from sae_circuits.core.devices import default_device
from sae_circuits.transcoders import configs as cfgs
from sae_circuits.transcoders._hub import ENV_DIR, Fetcher, WeightsUnavailableError

from .conftest import build, fake_repo
from .tolerance import assert_close

D, F = 8, 16
SHIPPED = {
    "gemma-2-2b-gemmascope",
    "gemma-3-270m-gemmascope2",
    "gemma-3-270m-it-gemmascope2",
    "llama-3.1-8b-instruct-topk",
    "gemma-2-2b-clt-426k",
    "gemma-2-2b-clt-2.5m",
    "llama-3.2-1b-skip",
    "qwen3-0.6b-lowl0",
    "qwen3-1.7b-lowl0",
    "qwen3-4b",
    "qwen3-8b",
    "qwen3-14b",
    "qwen3-14b-lowl0",
    "toy-facts",
    "toy-facts-clt",
    "toy-multilingual",
    "toy-multilingual-clt",
}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "configs.md"


def npz(**arrays: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.numpy() for k, v in arrays.items()})
    return buf.getvalue()


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def write_yaml(folder: Path, name: str, body: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def tiny(name: str) -> cfgs.TranscoderSetConfig:
    """A shipped config with the tiny test width."""
    return dataclasses.replace(cfgs.get_config(name), d_model=D)


# -- the shipped configs -----------------------------------------------------------------------


def test_shipped_configs_validate_against_saelens_and_transformerlens():
    from transformer_lens.loading_from_pretrained import (
        get_official_model_name,
        get_pretrained_model_config,
    )

    configs = cfgs.list_configs()
    assert set(configs) == SHIPPED
    directory = get_pretrained_saes_directory()
    for name, c in configs.items():
        assert c.name == name and c.path is not None and c.path.name == f"{name}.yaml"
        cfgs.check_saelens_source(c)  # real release, real sae_ids, Neuronpedia ids agree
        if c.model not in ("toy-facts", "toy-multilingual"):
            official = get_official_model_name(c.model)  # a TransformerLens model name
        src = c.source
        if isinstance(src, cfgs.SAELensSource):
            lookup = directory[src.release]
            assert get_official_model_name(lookup.model) == official, name
            for layer, sae_id in enumerate(src.sae_ids):
                assert re.search(rf"layer_{layer}(?![0-9])", sae_id), (name, layer, sae_id)
                assert c.neuronpedia_id(layer) == lookup.neuronpedia_id[sae_id]
    # TransformerLens knows these models' shapes offline
    for name, model in (
        ("gemma-2-2b-gemmascope", "gemma-2-2b"),
        ("llama-3.2-1b-skip", None),
        ("llama-3.1-8b-instruct-topk", None),
        ("gemma-3-270m-gemmascope2", None),
        ("gemma-3-270m-it-gemmascope2", None),
    ):
        c = configs[name]
        tl = get_pretrained_model_config(model or c.model)
        assert (tl.n_layers, tl.d_model) == (c.n_layers, c.d_model)
    for name in ("gemma-2-2b-clt-426k", "gemma-2-2b-clt-2.5m"):
        assert (configs[name].n_layers, configs[name].d_model) == (26, 2304)


def test_gemmascope_config_is_lowest_l0_and_matches_saelens_hooks():
    c = cfgs.get_config("gemma-2-2b-gemmascope")
    assert isinstance(c.source, cfgs.SAELensSource)
    lookup = get_pretrained_saes_directory()[c.source.release]
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_transcoder_config_from_hf

    for layer, sae_id in enumerate(c.source.sae_ids):
        same_layer = [s for s in lookup.saes_map if s.startswith(f"layer_{layer}/width_16k/")]
        assert sae_id == min(same_layer, key=lambda s: lookup.expected_l0[s])
        got = get_gemma_2_transcoder_config_from_hf(lookup.repo_id, lookup.saes_map[sae_id])
        assert got["hook_name"] == f"blocks.{layer}.{c.hooks.input}"
        assert got["hook_name_out"] == f"blocks.{layer}.{c.hooks.output}"


def test_docs_list_every_config():
    text = DOCS.read_text()
    assert cfgs.configs_markdown_table() in text, "regenerate the table in docs/configs.md"
    for name in SHIPPED:
        assert f"`{name}`" in text


# -- schema errors ---------------------------------------------------------------------------

GOOD = {
    "description": "test",
    "model": "custom",
    "kind": "per_layer",
    "n_layers": 2,
    "hooks": {"input": "mlp.hook_in", "output": "mlp.hook_out"},
    "source": {"repo": "org/tc", "files": "layer_{layer}.safetensors", "format": "circuit_tracer"},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, r"unknown key 'colour' at the top level; valid keys: description, model"),
        ({"modle": "x"}, r"unknown key 'modle' .*did you mean 'model'"),
        ({"model": None}, r"'model' must be a non-empty string"),
        ({"kind": "both"}, r"'kind' is 'both'; valid kinds: per_layer, cross_layer"),
        ({"n_layers": 0}, r"'n_layers' must be a positive integer"),
        ({"hooks": {"input": "mlp.hook_in"}}, r"missing key 'output' in 'hooks'"),
        ({"hooks": {"input": "blocks.0.mlp.hook_in", "output": "mlp.hook_out"}}, r"one of:"),
        ({"source": {"repo": "org/tc", "files": "x", "format": "circuit_tracer"}}, r"\{layer\}"),
        ({"source": {**GOOD["source"], "format": "pickle"}}, r"valid formats: circuit_tracer"),
        ({"source": {**GOOD["source"], "revison": "x"}}, r"did you mean 'revision'"),
        ({"source": {"path": "x", "repo": "o/r"}}, r"exactly one of the keys"),
        ({"source": {"saelens_release": "r", "sae_ids": ["a"]}}, r"has 1 entries but n_layers"),
        ({"kind": "cross_layer", "source": {"saelens_release": "r", "sae_ids": "l{layer}"}}, "per-layer transcoders only"),
        ({"kind": "cross_layer"}, r"'files' and 'format' are for per_layer"),
        ({"neuronpedia": {"model": "m"}}, r"missing key 'source_set' in 'neuronpedia'"),
    ],
)  # fmt: skip
def test_schema_errors_name_file_and_key(tmp_path, change, message):
    body = {**GOOD, **change}
    path = write_yaml(tmp_path, "bad", body)
    with pytest.raises(ValueError, match=message) as info:
        cfgs.load_config(path)
    assert str(path) in str(info.value)


def test_missing_key_and_bad_yaml(tmp_path):
    body = {k: v for k, v in GOOD.items() if k != "hooks"}
    path = write_yaml(tmp_path, "bad", body)
    with pytest.raises(ValueError, match=r"bad.yaml: missing key 'hooks' at the top level"):
        sc.load_transcoders(path)
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        sc.load_transcoders(str(tmp_path / "broken.yaml"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sc.load_transcoders(tmp_path / "absent.yaml")


def test_unknown_config_name_lists_names_and_close_matches():
    with pytest.raises(ValueError, match="close matches: gemma-2-2b-gemmascope") as info:
        sc.load_transcoders("gemma-2-2b-gemascope")
    for name in SHIPPED:
        assert name in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a folder"):  # paths keep their errors
        sc.load_transcoders("no/such/folder")


def test_saelens_source_checked_against_registry(tmp_path):
    body = {
        **GOOD,
        "source": {"saelens_release": "gemma-scope-2b-pt-transcoder", "sae_ids": "l{layer}"},
    }
    with pytest.raises(ValueError, match="close matches: gemma-scope-2b-pt-transcoders"):
        cfgs.check_saelens_source(cfgs.load_config(write_yaml(tmp_path, "a", body)))
    body["source"] = {"saelens_release": "mwhanna-qwen3-4b-transcoders", "sae_ids": "layer{layer}"}
    with pytest.raises(ValueError, match="layer 0: sae_id 'layer0' is not in SAELens release"):
        cfgs.check_saelens_source(cfgs.load_config(write_yaml(tmp_path, "b", body)))
    body["source"]["sae_ids"] = "layer_{layer}"
    body["neuronpedia"] = {"model": "qwen3-4b", "source_set": "transcoder"}
    with pytest.raises(ValueError, match="differs from SAELens' 'qwen3-4b/0-transcoder-hp'"):
        cfgs.check_saelens_source(cfgs.load_config(write_yaml(tmp_path, "c", body)))


def test_default_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"


# -- loading the shipped configs from a fake cache, through SAELens and the hub -----------------


def test_gemmascope_through_saelens(hf_cache, monkeypatch):
    c = tiny("gemma-2-2b-gemmascope")
    lookup = get_pretrained_saes_directory()["gemma-scope-2b-pt-transcoders"]
    # SAELens' gemma_2_transcoder config getter takes the sizes from the repo and folder names
    # (2304 x 16k); the release's config_overrides shrink them to the tiny files
    monkeypatch.setattr(lookup, "config_overrides", {"d_in": D, "d_out": D, "d_sae": F})
    params = {}
    for layer, sae_id in enumerate(c.source.sae_ids):  # type: ignore[union-attr]
        p = {
            "W_enc": rand(D, F, seed=layer),
            "W_dec": rand(F, D, seed=100 + layer),
            "b_enc": rand(F, seed=200 + layer),
            "b_dec": rand(D, seed=300 + layer),
            "threshold": rand(F, seed=400 + layer).abs(),
        }
        params[f"{lookup.saes_map[sae_id]}/params.npz"] = npz(**p)
        if layer == 3:
            ref3 = p
    fake_repo(hf_cache, "google/gemma-scope-2b-pt-transcoders", params)
    ts = sc.load_transcoders(c, device="cpu")
    assert isinstance(ts, sc.PerLayerTranscoderSet) and len(ts) == 26
    assert all(type(t) is JumpReLUTranscoder for t in ts.transcoders)
    assert ts.input_hooks[3] == "blocks.3.ln2.hook_normalized"
    assert ts.output_hooks[25] == "blocks.25.hook_mlp_out"
    assert ts.describe()["neuronpedia_ids"][5] == "gemma-2-2b/5-gemmascope-transcoder-16k"
    assert ts.transcoder_config is c  # type: ignore[attr-defined]
    for key, value in ref3.items():
        assert torch.equal(getattr(ts[3], key).detach(), value), key
    x = rand(5, D, seed=9)
    want = torch.relu(x @ ref3["W_enc"] + ref3["b_enc"])
    want = want * (x @ ref3["W_enc"] + ref3["b_enc"] > ref3["threshold"])
    assert_close(ts.activation_fn(3, ts.pre_activations(3, x)), want, what="GemmaScope activations")


def _qwen_files(n_layers: int) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    wandb = {"d_model": {"value": D}, "d_feature": {"value": F}, "batch_size": {"value": 4}}
    files = {
        "wandb-config.yaml": yaml.safe_dump(wandb).encode(),
        "config.yaml": yaml.safe_dump({"model_name": "Qwen/Qwen3-0.6B"}).encode(),
    }
    ref = {}
    for layer in range(n_layers):
        t = {
            "W_enc": rand(F, D, seed=layer),  # circuit-tracer's (d_sae, d_model)
            "W_dec": rand(F, D, seed=50 + layer),
            "b_enc": rand(F, seed=90 + layer),
            "b_dec": rand(D, seed=130 + layer),
        }
        files[f"layer_{layer}.safetensors"] = save(t)
        if layer == 7:
            ref = t
    return files, ref


def test_qwen_through_saelens_mwhanna_loader(hf_cache):
    files, ref = _qwen_files(28)
    fake_repo(hf_cache, "mwhanna/qwen3-0.6b-transcoders-lowl0", files)
    ts = sc.load_transcoders(tiny("qwen3-0.6b-lowl0"), device="cpu")
    assert isinstance(ts, sc.PerLayerTranscoderSet) and len(ts) == 28
    tc = ts[7]
    assert type(tc) is Transcoder
    assert torch.equal(tc.W_enc, ref["W_enc"].T) and torch.equal(tc.W_dec, ref["W_dec"])
    assert (ts.input_hooks[7], ts.output_hooks[7]) == (
        "blocks.7.mlp.hook_in",
        "blocks.7.mlp.hook_out",
    )
    assert tc.cfg.metadata.model_name == "Qwen/Qwen3-0.6B"
    assert tc.cfg.metadata.neuronpedia_id == "qwen3-0.6b/7-transcoder-hp-lowl0"


def test_local_dir_and_env_var_read_a_copy_without_the_cache(hf_cache, tmp_path, monkeypatch):
    files, ref = _qwen_files(28)
    copy = tmp_path / "copy"
    for name, data in files.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    ts = sc.load_transcoders(tiny("qwen3-0.6b-lowl0"), device="cpu", local_dir=copy)
    assert torch.equal(ts[7].W_enc, ref["W_enc"].T)
    assert ts[7].cfg.metadata.neuronpedia_id == "qwen3-0.6b/7-transcoder-hp-lowl0"
    env = tmp_path / "env"
    (env / "qwen3-0.6b-lowl0").parent.mkdir()
    copy.rename(env / "qwen3-0.6b-lowl0")
    monkeypatch.setenv(ENV_DIR, str(env))
    ts = sc.load_transcoders(tiny("qwen3-0.6b-lowl0"), device="cpu")
    assert torch.equal(ts[7].W_dec, ref["W_dec"])
    (env / "qwen3-0.6b-lowl0" / "layer_5.safetensors").unlink()
    with pytest.raises(WeightsUnavailableError, match=r"layer_5\.safetensors.*sae_id 'layer_5'"):
        sc.load_transcoders(tiny("qwen3-0.6b-lowl0"), device="cpu")


def test_llama_skip_transcoders_from_a_hub_branch(hf_cache):
    files, ref = {}, {}
    for layer in range(16):
        t = {
            "W_enc": rand(F, D, seed=layer),
            "W_dec": rand(D, F, seed=20 + layer),  # this release stores (d_model, d_sae)
            "b_enc": rand(F, seed=40 + layer),
            "b_dec": rand(D, seed=60 + layer),
            "W_skip": rand(D, D, seed=80 + layer),
        }
        files[f"layer_{layer}.safetensors"] = save(t)
        ref[layer] = t
    repo = "mntss/skip-transcoder-Llama-3.2-1B-131k-nobos"
    fake_repo(hf_cache, repo, files, revision="new-training")
    ts = sc.load_transcoders(tiny("llama-3.2-1b-skip"), device="cpu")
    assert isinstance(ts, sc.PerLayerTranscoderSet) and ts.has_skip and len(ts) == 16
    assert type(ts[2]) is SkipTranscoder
    assert ts.input_hooks[2] == "blocks.2.hook_resid_mid"
    x = rand(3, D, seed=5)
    t = ref[2]
    acts = torch.relu(x @ t["W_enc"].T + t["b_enc"])
    want = acts @ t["W_dec"].T + t["b_dec"] + x @ t["W_skip"].T
    got = ts.decode(2, {2: ts.activation_fn(2, ts.pre_activations(2, x))}) + ts.skip(2, x)
    assert_close(got, want, what="skip transcoder output")


def test_clt_from_the_hub_layout(hf_cache):
    L = 26
    files, ref = {}, {}
    for layer in range(L):
        enc = {
            f"W_enc_{layer}": rand(4, D, seed=layer),
            f"b_enc_{layer}": rand(4, seed=30 + layer),
            f"b_dec_{layer}": rand(D, seed=60 + layer),
        }
        files[f"W_enc_{layer}.safetensors"] = save(enc)
        files[f"W_dec_{layer}.safetensors"] = save(
            {f"W_dec_{layer}": rand(4, L - layer, D, seed=layer)}
        )
        ref[layer] = enc
    cfg = {"model_kind": "cross_layer_transcoder", "model_name": "google/gemma-2-2b",
           "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out"}  # fmt: skip
    files["config.yaml"] = yaml.safe_dump(cfg).encode()
    fake_repo(hf_cache, "mntss/clt-gemma-2-2b-426k", files)
    ts = sc.load_transcoders(tiny("gemma-2-2b-clt-426k"), device="cpu")
    assert isinstance(ts, sc.CrossLayerTranscoderSet) and ts.lazy_decoder
    assert ts.output_layers(3) == range(3, L) and ts.input_hooks[0] == "blocks.0.hook_resid_mid"
    x = rand(2, D, seed=3)
    assert_close(ts.pre_activations(4, x), x @ ref[4]["W_enc_4"].T + ref[4]["b_enc_4"])
    eager = sc.load_transcoders(tiny("gemma-2-2b-clt-426k"), device="cpu", lazy_decoder=False)
    acts = {layer: torch.relu(rand(2, 4, seed=layer)) for layer in range(6)}
    assert_close(ts.decode(5, acts), eager.decode(5, acts), what="lazy vs eager decode")


def test_yaml_config_end_to_end_on_a_tiny_model(hf_cache, tmp_path, monkeypatch):
    model, tcs = build("llama", "skip")
    files = {}
    for layer, tc in enumerate(tcs):
        files[f"tc/layer_{layer}.safetensors"] = save(
            {
                "W_enc": tc.W_enc.detach().T.contiguous(),
                "W_dec": tc.W_dec.detach().contiguous(),
                "b_enc": tc.b_enc.detach(),
                "b_dec": tc.b_dec.detach(),
                "W_skip": tc.W_skip.detach().contiguous(),
            }
        )
    fake_repo(hf_cache, "me/tiny-llama-transcoders", files, revision="v1")
    body = {
        "description": "tiny",
        "model": model.cfg.model_name,
        "kind": "per_layer",
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "hooks": {"input": "mlp.hook_in", "output": "mlp.hook_out"},
        "source": {"repo": "me/tiny-llama-transcoders", "revision": "v1",
                   "files": "tc/layer_{layer}.safetensors", "format": "circuit_tracer"},
        "neuronpedia": {"model": "tiny", "source_set": "tc"},
    }  # fmt: skip
    path = write_yaml(tmp_path, "tiny-llama", body)
    ts = sc.load_transcoders(str(path), model=model)  # device defaults to what is available
    assert ts.device.type == default_device()
    ts = sc.load_transcoders(path, device="cpu", model=model)
    ref = sc.load_transcoders(tcs)
    x = rand(4, model.cfg.d_model, seed=1)
    for layer in range(model.cfg.n_layers):
        a = ts.activation_fn(layer, ts.pre_activations(layer, x))
        assert_close(a, ref.activation_fn(layer, ref.pre_activations(layer, x)))
        assert_close(ts.decode(layer, {layer: a}), ref.decode(layer, {layer: a}))
        assert_close(ts.skip(layer, x), ref.skip(layer, x))
    assert ts.describe()["neuronpedia_ids"] == ["tiny/0-tc", "tiny/1-tc", "tiny/2-tc"]
    # the same file as a shipped config, loaded by name
    monkeypatch.setattr(cfgs, "_config_dir", lambda: tmp_path)
    cfgs._shipped.cache_clear()
    try:
        assert list(cfgs.list_configs()) == ["tiny-llama"]
        by_name = sc.load_transcoders("tiny-llama", device="cpu")
        assert by_name.transcoder_config.path == path  # type: ignore[attr-defined]
        assert torch.equal(by_name[2].W_skip, tcs[2].W_skip)
    finally:
        cfgs._shipped.cache_clear()
    # GemmaScope's npz format, from the same weights (zero thresholds: JumpReLU == ReLU)
    arrays = {
        f"p/{i}/params.npz": npz(
            W_enc=tc.W_enc.detach(),
            W_dec=tc.W_dec.detach(),
            b_enc=tc.b_enc.detach(),
            b_dec=tc.b_dec.detach(),
            threshold=torch.zeros(tc.cfg.d_sae),
        )
        for i, tc in enumerate(tcs)
    }
    fake_repo(hf_cache, "me/npz", arrays)
    body["source"] = {"repo": "me/npz", "files": "p/{layer}/params.npz", "format": "gemmascope_npz"}
    ts2 = sc.load_transcoders(write_yaml(tmp_path, "npz", body), device="cpu")
    assert type(ts2[0]) is JumpReLUTranscoder
    assert torch.equal(ts2[1].W_enc, tcs[1].W_enc.detach())
    assert torch.equal(ts2[1].W_dec, tcs[1].W_dec.detach())


def test_saelens_folder_format(hf_cache, tmp_path):
    model, tcs = build("gpt2", "jumprelu")
    files = {}
    for layer, tc in enumerate(tcs):
        tc.save_model(tmp_path / "saved" / f"layer_{layer}")
        for f in ("cfg.json", "sae_weights.safetensors"):
            files[f"l{layer}/{f}"] = (tmp_path / "saved" / f"layer_{layer}" / f).read_bytes()
    fake_repo(hf_cache, "me/saelens-format", files)
    body = {**GOOD, "n_layers": 3, "hooks": {"input": "hook_resid_mid", "output": "hook_mlp_out"},
            "source": {"repo": "me/saelens-format", "files": "l{layer}", "format": "saelens"}}  # fmt: skip
    ts = sc.load_transcoders(write_yaml(tmp_path, "s", body), device="cpu", model=model)
    assert type(ts[2]) is JumpReLUTranscoder and torch.equal(ts[2].threshold, tcs[2].threshold)


# -- when the weights cannot be had ----------------------------------------------------------


def test_offline_missing_file_says_what_and_how(hf_cache):
    with pytest.raises(WeightsUnavailableError) as info:
        sc.load_transcoders("gemma-2-2b-gemmascope", device="cpu")
    msg = str(info.value)
    for part in (
        "'google/gemma-scope-2b-pt-transcoders'",
        "layer_0/width_16k/average_l0_76/params.npz",
        "offline mode is on",
        str(hf_cache),
        "hf download google/gemma-scope-2b-pt-transcoders",
        "local_dir=FOLDER",
        ENV_DIR,
    ):
        assert part in msg, part
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(
        WeightsUnavailableError, match=r"'W_enc_0\.safetensors'.*mntss/clt-gemma-2-2b-2\.5M"
    ):
        sc.load_transcoders("gemma-2-2b-clt-2.5m")
    with pytest.raises(
        WeightsUnavailableError, match=r"'layer_0\.safetensors'.*--revision new-training"
    ):
        sc.load_transcoders("llama-3.2-1b-skip")
    with pytest.raises(
        WeightsUnavailableError, match=r"'wandb-config\.yaml'.*mwhanna/qwen3-8b-transcoders"
    ):
        sc.load_transcoders("qwen3-8b")
    with pytest.raises(FileNotFoundError, match=r"local_dir .* is not a folder"):
        sc.load_transcoders("qwen3-8b", local_dir=hf_cache / "nope")


def test_gated_repo_message(monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(**kwargs):
        response = httpx2.Response(403, request=httpx2.Request("GET", "https://huggingface.co"))
        raise GatedRepoError("Access to this model is restricted", response=response)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(
        WeightsUnavailableError,
        match=r"gated: accept its conditions on https://huggingface\.co/org/m and log in",
    ):
        Fetcher("x", None).file("org/m", "a.bin")


def test_toy_configs(monkeypatch):
    from sae_circuits.toy.facts import toy_transcoders_path

    for name, kind, toy in (
        ("toy-facts", "plt", "toy-facts"),
        ("toy-facts-clt", "clt", "toy-facts"),
        ("toy-multilingual", "plt", "toy-multilingual"),
        ("toy-multilingual-clt", "clt", "toy-multilingual"),
    ):
        c = cfgs.get_config(name)
        assert isinstance(c.source, cfgs.LocalSource) and c.source.package == "sae_circuits.toy"
        folder = cfgs.package_folder("sae_circuits.toy") / c.source.path
        assert folder == toy_transcoders_path(kind, name=toy)  # type: ignore[arg-type]
        if not folder.is_dir():
            with pytest.raises(FileNotFoundError, match=re.escape(str(folder))):
                sc.load_transcoders(name)
            continue
        ts = sc.load_transcoders(name, device="cpu")
        want = sc.PerLayerTranscoderSet if kind == "plt" else sc.CrossLayerTranscoderSet
        assert isinstance(ts, want) and ts.n_layers == c.n_layers and ts.d_in == c.d_model
        assert ts.input_hooks[1] == f"blocks.1.{c.hooks.input}"
