"""load_model (settings, names, configs, offline errors) and check_transcoders_match."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from transformer_lens import HookedTransformer

import sae_circuits as sc
from sae_circuits.models import ModelUnavailableError, load_model
from sae_circuits.transcoders import configs as cfgs
from sae_circuits.transcoders._fit import check_transcoders_match

from .conftest import build
from .test_configs import GOOD, write_yaml


@pytest.fixture
def fake_from_pretrained(monkeypatch):
    """Record from_pretrained_no_processing's arguments; return a tiny model instead."""
    calls = []

    def fake(name, **kwargs):
        calls.append((name, kwargs))
        model, _ = build("llama", "skip")
        model.cfg.model_name = name.split("/")[-1]
        return model

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", fake)
    return calls


def test_load_model_settings(fake_from_pretrained, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = load_model("gemma-2-2b")
    name, kwargs = fake_from_pretrained[-1]
    assert name == "google/gemma-2-2b"
    assert kwargs == {"device": "cpu", "dtype": torch.float32}
    assert not model.training
    load_model("qwen3-4b", device="meta", dtype="bfloat16", n_devices=1)  # a config name
    assert fake_from_pretrained[-1] == (
        "Qwen/Qwen3-4B",
        {"device": "meta", "dtype": torch.bfloat16, "n_devices": 1},
    )


def test_load_model_from_yaml_uses_model_kwargs(fake_from_pretrained, tmp_path):
    body = {
        **GOOD,
        "model": "meta-llama/Llama-3.2-1B",
        "model_kwargs": {"default_prepend_bos": False},
    }
    path = write_yaml(tmp_path, "mine", body)
    load_model(path, device="cpu")
    assert fake_from_pretrained[-1] == (
        "meta-llama/Llama-3.2-1B",
        {"device": "cpu", "dtype": torch.float32, "default_prepend_bos": False},
    )


def test_load_model_checks_transcoders(fake_from_pretrained):
    with pytest.raises(
        ValueError, match=r"made for model 'gemma-2-2b' .* but the model is 'Qwen3-4B'"
    ):
        load_model("Qwen/Qwen3-4B", device="cpu", transcoders="gemma-2-2b-gemmascope")


def test_unknown_model_name():
    with pytest.raises(
        ValueError,
        match=r"unknown model 'gema-2-2b'.*gemma-2-2b-gemmascope.*close model names: .*gemma-2-2b",
    ):
        load_model("gema-2-2b", device="cpu")


def test_offline_model_error_names_repo_and_how(hf_cache):
    with pytest.raises(ModelUnavailableError) as info:
        load_model("gemma-2-2b-gemmascope", device="cpu")
    msg = str(info.value)
    for part in (
        "'google/gemma-2-2b'",
        "offline mode is on",
        "hf download google/gemma-2-2b",
        "HF_HUB_CACHE",
        "hf_model=",
    ):
        assert part in msg, part


def test_toy_model():
    from sae_circuits.toy.facts import TOY_FACTS_DIR

    if not (TOY_FACTS_DIR / "model.safetensors").is_file():
        with pytest.raises(FileNotFoundError):
            load_model("toy-facts", device="cpu")
        pytest.skip("the toy-facts weights are not shipped yet")
    model = load_model("toy-facts", device="cpu")
    assert model.cfg.model_name == "toy-facts" and not model.training
    assert load_model("toy-facts-clt", device="cpu").cfg.n_layers == model.cfg.n_layers
    check_transcoders_match(model, "toy-facts")
    check_transcoders_match(model, sc.load_transcoders("toy-facts", device="cpu"))


def test_check_against_configs():
    model, _ = build("gemma2", "jumprelu")  # 3 layers, d_model 32, model_name 'custom'
    gemmascope = cfgs.get_config("gemma-2-2b-gemmascope")
    with pytest.raises(
        ValueError,
        match=r"made for model 'gemma-2-2b' \(transcoder config 'gemma-2-2b-gemmascope'\) but the model is 'custom'",
    ):
        check_transcoders_match(model, "gemma-2-2b-gemmascope")
    with pytest.raises(
        ValueError,
        match="transcoder config 'gemma-2-2b-gemmascope' has 26 layers but the model 'custom' has 3 layers",
    ):
        check_transcoders_match(model, gemmascope, check_name=False)
    mine = dataclasses.replace(gemmascope, model="custom", n_layers=3)
    with pytest.raises(ValueError, match="has d_model 2304 but the model 'custom' has d_model 32"):
        check_transcoders_match(model, mine)
    check_transcoders_match(model, dataclasses.replace(mine, d_model=32))
    bad_hook = dataclasses.replace(
        mine, d_model=None, hooks=cfgs.TranscoderHooks("mlp.hook_in", "hook_mlp_out")
    )
    check_transcoders_match(model, bad_hook)
    model2, _ = build("gpt2")
    model2.cfg.model_name = "custom"
    del model2.blocks[0].mlp  # no MLP module: mlp.hook_in cannot exist
    with pytest.raises(
        ValueError, match=re.escape("layer 0 input hook 'blocks.0.mlp.hook_in' is not a hook")
    ):
        check_transcoders_match(model2, bad_hook)


def test_check_against_transcoder_sets():
    model, tcs = build("llama", "skip")
    ts = sc.load_transcoders(tcs)
    check_transcoders_match(model, ts)  # no model name recorded: sizes and hooks only
    for tc in tcs:
        tc.cfg.metadata.model_name = "gpt2-small"
    try:
        with pytest.raises(
            ValueError,
            match=r"made for model 'gpt2-small' \(cfg.metadata.model_name of layer 0's transcoder\)",
        ):
            check_transcoders_match(model, ts)
        with pytest.raises(ValueError, match="made for model 'gpt2-small'"):
            sc.load_transcoders(tcs, model=model)
        model.cfg.model_name = "gpt2"  # the same model under its official name
        check_transcoders_match(model, ts)
        check_transcoders_match(model, ts, check_name=False)
    finally:
        for tc in tcs:
            tc.cfg.metadata.model_name = None
    other, _ = build("llama", "skip")
    small = HookedTransformer(dataclasses.replace(other.cfg, n_layers=2))
    with pytest.raises(
        ValueError, match=r"the transcoders have 3 layers but the model .* has 2 layers"
    ):
        check_transcoders_match(small, ts)
    with pytest.raises(TypeError, match="expected a TranscoderSet"):
        check_transcoders_match(model, tcs)  # type: ignore[arg-type]
