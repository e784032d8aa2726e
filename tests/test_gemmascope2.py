"""Gemma Scope 2 transcoders (Gemma 3 270M) through SAELens' registry, offline.

A fake Hugging Face cache of ``google/gemma-scope-2-270m-pt`` in the release's layout:
``transcoder_all/layer_{l}_width_16k_l0_small[_affine]/params.safetensors`` with Gemma Scope 2's
keys ``w_enc`` ``(d_in, F)``, ``w_dec`` ``(F, d_out)``, ``b_enc`` ``(F,)``, ``b_dec``
``(d_out,)``, ``threshold`` ``(F,)`` and, in the ``*_affine`` folders, ``affine_skip_connection``
``(d_in, d_out)`` (no ``config.json``: SAELens infers the config from the folder name). The
shipped config is shrunk to a tiny Gemma-3-style model (3 layers, d_model 32).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sae_lens import JumpReLUSkipTranscoder, JumpReLUTranscoder
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from safetensors.torch import save

import sae_circuits as sc
from sae_circuits.toy import tiny_model
from sae_circuits.transcoders import configs as cfgs

from .conftest import PROMPT, fake_repo
from .oracle import FrozenOracle, sample_sources, worst_column_error

N_LAYERS, D, F = 3, 32, 48
REPO = "google/gemma-scope-2-270m-pt"


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_config(affine: bool = False, name: str = "gemma-3-270m-gemmascope2"):
    """The shipped config with the tiny model's sizes (and the *_affine sae_ids if asked)."""
    c = cfgs.get_config(name)
    src = c.source
    assert isinstance(src, cfgs.SAELensSource)
    ids = src.sae_ids[:N_LAYERS]
    if affine:
        ids = tuple(f"{i}_affine" for i in ids)
    return dataclasses.replace(
        c, n_layers=N_LAYERS, d_model=D, source=dataclasses.replace(src, sae_ids=ids)
    )


def write_release(cache, config, *, affine: bool) -> list[dict[str, torch.Tensor]]:
    """params.safetensors per layer, in the release's folders; returns what was written."""
    lookup = get_pretrained_saes_directory()[config.source.release]
    files, written = {}, []
    for layer, sae_id in enumerate(config.source.sae_ids):
        s = 100 * layer
        p = {
            "w_enc": rand(D, F, seed=s) / D**0.5,
            "w_dec": rand(F, D, seed=s + 1) / F**0.5,
            "b_enc": 0.1 * rand(F, seed=s + 2),
            "b_dec": 0.1 * rand(D, seed=s + 3),
            "threshold": 0.2 * rand(F, seed=s + 4).abs(),
        }
        if affine:
            p["affine_skip_connection"] = 0.1 * rand(D, D, seed=s + 5)
        files[f"{lookup.saes_map[sae_id]}/params.safetensors"] = save(p)
        written.append(p)
    fake_repo(cache, lookup.repo_id, files)
    return written


def test_shipped_configs_pick_16k_lowest_l0_per_layer():
    directory = get_pretrained_saes_directory()
    for name, model in (
        ("gemma-3-270m-gemmascope2", "google/gemma-3-270m"),
        ("gemma-3-270m-it-gemmascope2", "google/gemma-3-270m-it"),
    ):
        c = cfgs.get_config(name)
        assert (c.model, c.n_layers, c.d_model) == (model, 18, 640)
        assert (c.hooks.input, c.hooks.output) == ("mlp.hook_in", "hook_mlp_out")
        assert isinstance(c.source, cfgs.SAELensSource)
        lookup = directory[c.source.release]
        assert lookup.conversion_func == "gemma_3" and lookup.model == model
        for layer, sae_id in enumerate(c.source.sae_ids):
            same = [
                s
                for s in lookup.saes_map
                if s.startswith(f"layer_{layer}_width_16k_") and not s.endswith("_affine")
            ]
            assert sae_id == min(same, key=lambda s: lookup.expected_l0[s]), (name, layer)
            assert lookup.saes_map[sae_id] == f"transcoder_all/{sae_id}"


def test_saelens_hook_names_are_mapped():
    """SAELens' names for these hooks, and what they are on a HookedTransformer."""
    from sae_lens.loading.pretrained_sae_loaders import _infer_gemma_3_raw_cfg_dict

    raw = _infer_gemma_3_raw_cfg_dict(REPO, "transcoder_all/layer_4_width_16k_l0_small")
    # the MLP's normalised input (after the norm's weight) = the MLP module's input
    assert raw["hf_hook_point_in"] == "model.layers.4.pre_feedforward_layernorm.output"
    # the MLP's output after the post-MLP norm = what hook_mlp_out holds
    assert raw["hf_hook_point_out"] == "model.layers.4.post_feedforward_layernorm.output"
    model = tiny_model("gemma3", n_layers=N_LAYERS, d_model=D)
    model.set_use_hook_mlp_in(True)
    tokens = torch.tensor([[0, 5, 9, 3, 7, 2, 8, 1, 1, 4, 6]])
    _, cache = model.run_with_cache(tokens)
    block = model.blocks[1]
    want_in = block.ln2(cache["blocks.1.hook_resid_mid"])
    # SAELens' name: on a HookedTransformer, the residual before the norm
    torch.testing.assert_close(cache["blocks.1.hook_mlp_in"], cache["blocks.1.hook_resid_mid"])
    assert not torch.allclose(cache["blocks.1.hook_mlp_in"], want_in)
    ts_in = {}
    h = block.mlp.register_forward_hook(lambda m, a, o: ts_in.update(x=a[0], y=o))
    model(tokens)
    h.remove()
    torch.testing.assert_close(ts_in["x"], want_in)
    torch.testing.assert_close(block.ln2_post(ts_in["y"]), cache["blocks.1.hook_mlp_out"])


@pytest.mark.parametrize("affine", [False, True], ids=["jumprelu", "affine_skip"])
def test_load_and_attribute_exactly(hf_cache, affine):
    c = tiny_config(affine)
    written = write_release(hf_cache, c, affine=affine)
    ts = sc.load_transcoders(c, device="cpu")
    assert isinstance(ts, sc.PerLayerTranscoderSet) and len(ts) == N_LAYERS
    want_cls = JumpReLUSkipTranscoder if affine else JumpReLUTranscoder
    assert all(type(t) is want_cls for t in ts.transcoders)
    for layer, p in enumerate(written):
        tc = ts[layer]
        assert torch.equal(tc.W_enc.detach(), p["w_enc"])
        assert torch.equal(tc.W_dec.detach(), p["w_dec"])
        for key in ("b_enc", "b_dec", "threshold"):
            assert torch.equal(getattr(tc, key).detach(), p[key]), key
        if affine:
            assert torch.equal(tc.W_skip.detach(), p["affine_skip_connection"].T)
        assert ts.input_hooks[layer] == f"blocks.{layer}.mlp.hook_in"
        assert ts.output_hooks[layer] == f"blocks.{layer}.hook_mlp_out"
        assert tc.cfg.metadata.model_name == "google/gemma-3-270m"
    assert ts.transcoder_config is c  # type: ignore[attr-defined]

    model = tiny_model("gemma3", n_layers=N_LAYERS, d_model=D)
    graph = sc.attribute(model, PROMPT, ts, batch_size=64)
    tokens = torch.tensor(graph.metadata["tokens"])
    oracle = FrozenOracle(model, ts, tokens)
    sources = sample_sources(graph, np.random.default_rng(0))
    assert len(sources) >= 10
    assert worst_column_error(graph, oracle, sources) < 1e-4


@pytest.mark.parametrize("affine", [False, True], ids=["jumprelu", "affine_skip"])
def test_same_weights_as_saelens_own_loader(hf_cache, monkeypatch, affine):
    """SAE.from_pretrained on the same cache (its HTTP header read replaced by the file's)."""
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from safetensors import safe_open

    c = tiny_config(affine)
    write_release(hf_cache, c, affine=affine)

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        from huggingface_hub import hf_hub_download

        with safe_open(hf_hub_download(repo_id, filename), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118

    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", shapes)
    ours = sc.load_transcoders(c, device="cpu")
    for layer, sae_id in enumerate(c.source.sae_ids):  # type: ignore[union-attr]
        theirs = SAE.from_pretrained(c.source.release, sae_id, device="cpu")  # type: ignore[union-attr]
        assert type(theirs) is type(ours[layer])
        assert theirs.cfg.metadata.hook_name == f"blocks.{layer}.hook_mlp_in"  # SAELens' name
        mine, ref = ours[layer].state_dict(), theirs.state_dict()
        assert mine.keys() == ref.keys()
        for key in ref:
            assert torch.equal(mine[key], ref[key]), (layer, key)


def test_it_release_loads_too(hf_cache):
    c = tiny_config(name="gemma-3-270m-it-gemmascope2")
    written = write_release(hf_cache, c, affine=False)
    ts = sc.load_transcoders(c, device="cpu")
    assert torch.equal(ts[2].W_enc.detach(), written[2]["w_enc"])
    assert ts[0].cfg.metadata.model_name == "google/gemma-3-270m-it"


def test_missing_file_is_named(hf_cache):
    with pytest.raises(
        FileNotFoundError, match=r"transcoder_all/layer_0_width_16k_l0_small/params"
    ):
        sc.load_transcoders(tiny_config(), device="cpu")


def test_local_copy_of_the_release(hf_cache):
    """local_dir= holds the repository's files at the same paths (no cache)."""
    c = tiny_config()
    snapshot_cache = hf_cache.parent / "other"
    written = write_release(snapshot_cache, c, affine=False)
    copy = next((snapshot_cache / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    ts = sc.load_transcoders(c, device="cpu", local_dir=copy)
    assert torch.equal(ts[1].W_dec.detach(), written[1]["w_dec"])
    assert ts.input_hooks[1] == "blocks.1.mlp.hook_in"
