"""replacement(): the local replacement model equals the original and is fully reversible."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc

from .conftest import KINDS, assert_same_model, build, model_fingerprint
from .tolerance import assert_close, assert_differs, max_abs

TOKENS = torch.tensor([[0, 5, 9, 3, 7, 2, 8]])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_logits_equal_original_inside(arch, kind):
    model, tcs = build(arch, kind)
    ts = sc.load_transcoders(tcs)
    before = model_fingerprint(model)
    with torch.no_grad():
        clean = model(TOKENS)
        with sc.replacement(model, ts) as state:
            inside = model(TOKENS)
        after = model(TOKENS)
    assert_close(inside, clean, what="logits inside the replacement")
    assert torch.equal(after, clean)
    assert_same_model(before, model_fingerprint(model))
    # the state holds what SAELens itself computes
    _, cache = model.run_with_cache(TOKENS)
    for layer, tc in enumerate(tcs):
        x = _transcoder_input(model, cache, tc.cfg.metadata.hook_name, layer)
        ref = tc.encode(x)
        # rounding on the scale of what is summed: the pre-activations, the reconstruction
        pre = max_abs(ts.pre_activations(layer, x[0]))
        assert_close(state.activations[layer], ref, scale=pre, what=f"activations {layer}")
        out = _transcoder_output(model, cache, tc.cfg.metadata.hook_name_out, layer)
        recon = tc(x)
        scale = max(max_abs(recon), max_abs(out))
        assert_close(recon + state.errors[layer], out, scale=scale, what=f"output {layer}")
        assert state.activations[layer].is_sparse


def _transcoder_input(model, cache, hook, layer):
    if hook.endswith("mlp.hook_in"):
        return model.blocks[layer].ln2(cache[f"blocks.{layer}.hook_resid_mid"])
    return cache[hook]


def _transcoder_output(model, cache, hook, layer):
    if hook.endswith("mlp.hook_out"):  # no post-MLP norm in these styles
        return cache[f"blocks.{layer}.hook_mlp_out"]
    return cache[hook]


def test_restored_after_exception():
    model, tcs = build("gemma2", "skip")
    ts = sc.load_transcoders(tcs)
    before = model_fingerprint(model)
    clean = model(TOKENS)
    with pytest.raises(RuntimeError, match="boom"), sc.replacement(model, ts):
        model(TOKENS)
        raise RuntimeError("boom")
    assert torch.equal(model(TOKENS), clean)
    assert_same_model(before, model_fingerprint(model))


def test_fixed_errors_and_feature_hook():
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    with torch.no_grad():
        clean = model(TOKENS)
        with sc.replacement(model, ts) as state:
            model(TOKENS)
        errors = {layer: e.clone() for layer, e in state.errors.items()}
        with sc.replacement(model, ts, errors=errors):
            fixed = model(TOKENS)
        assert_close(fixed, clean, what="logits with fixed errors")
        # zeroing every feature changes the output, with frozen errors
        with sc.replacement(model, ts, errors=errors, feature_hook=lambda layer, a: a * 0) as st:
            ablated = model(TOKENS)
        assert_differs(ablated, clean)
        assert all(st.activations[layer]._nnz() == 0 for layer in range(model.cfg.n_layers))
