"""Hook resolution: real and virtual (mlp.hook_in / mlp.hook_out) hooks, scoped and reversible."""

from __future__ import annotations

import pytest
import torch

from sae_circuits.core.hooks import HookNotFoundError, resolve_hook, scoped_hooks

from .conftest import assert_same_model, build, model_fingerprint
from .tolerance import assert_close, assert_differs

TOKENS = torch.tensor([[0, 5, 9, 3, 7]])


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_mlp_hook_in_is_the_mlp_input_after_the_norm_weight(arch):
    model, _ = build(arch)
    seen = {}
    site = resolve_hook(model, "blocks.1.mlp.hook_in")
    assert (site.kind, site.module_name, site.layer) == ("pre", "blocks.1.mlp", 1)
    with scoped_hooks(model, [(site, lambda x: seen.__setitem__("in", x.detach()))]):
        _, cache = model.run_with_cache(TOKENS)
    resid = cache["blocks.1.hook_resid_mid"]
    expected = model.blocks[1].ln2(resid)  # the norm *with* its weight (and bias)
    assert_close(seen["in"], expected, what="mlp.hook_in")
    # TransformerLens 3.x's hook_normalized is before the weight: a different activation
    assert_differs(cache["blocks.1.ln2.hook_normalized"], expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_mlp_hook_out_is_the_mlp_module_output(arch):
    model, _ = build(arch)
    seen = {}
    with scoped_hooks(
        model, [("blocks.2.mlp.hook_out", lambda x: seen.__setitem__("out", x.detach()))]
    ):
        _, cache = model.run_with_cache(TOKENS)
    mlp_out = cache["blocks.2.hook_mlp_out"]
    if arch == "gemma2":  # post-MLP norm sits between the MLP and hook_mlp_out
        assert_differs(seen["out"], mlp_out)
        scale = cache["blocks.2.ln2_post.hook_scale"]
        assert_close(seen["out"] / scale * model.blocks[2].ln2_post.w, mlp_out, what="normed")
    else:
        assert_close(seen["out"], mlp_out, what="mlp.hook_out")


def test_hooks_replace_activations_only_inside_the_block():
    model, _ = build("llama")
    before = model_fingerprint(model)
    clean = model(TOKENS)
    with scoped_hooks(model, [("blocks.0.mlp.hook_in", lambda x: torch.zeros_like(x))]):
        changed = model(TOKENS)
    assert_differs(changed, clean)
    assert torch.equal(model(TOKENS), clean)
    assert_same_model(before, model_fingerprint(model))
    with (
        pytest.raises(ZeroDivisionError),
        scoped_hooks(model, [("blocks.0.hook_mlp_out", lambda x: x * 2)]),
    ):
        1 / 0  # noqa: B018
    assert torch.equal(model(TOKENS), clean)
    assert_same_model(before, model_fingerprint(model))


def test_users_own_hooks_survive():
    model, _ = build("gpt2")
    model.add_hook("blocks.0.hook_resid_post", lambda t, hook: t * 1.0)
    model.add_perma_hook("blocks.1.hook_resid_post", lambda t, hook: t * 1.0)
    n_before = len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks)
    with scoped_hooks(model, [("blocks.0.hook_resid_post", lambda x: None)]):
        model(TOKENS)
    assert len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks) == n_before
    assert len(model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks) == 1


def test_unknown_hooks_name_close_matches():
    model, _ = build("gpt2")
    with pytest.raises(HookNotFoundError, match=r"blocks\.1\.hook_resid_mid"):
        resolve_hook(model, "blocks.1.hook_resid_mdi", role="layer 1 transcoder input hook")
    with pytest.raises(HookNotFoundError, match="layer 1 transcoder input hook"):
        resolve_hook(model, "blocks.1.hook_resid_mdi", role="layer 1 transcoder input hook")
    with pytest.raises(HookNotFoundError, match="3 layers"):
        resolve_hook(model, "blocks.7.mlp.hook_in")
    with pytest.raises(HookNotFoundError, match="valid choices"):
        resolve_hook(model, "blocks.0.hook_resid_post", allowed_suffixes=("hook_mlp_out",))


def test_word_tokenizer_special_words_match_whole_words_only():
    from sae_circuits.toy import word_tokenizer

    tok = word_tokenizer([f"t{i}" for i in range(20)], bos="t0", unk="t1")
    assert tok("t11 t5 t10 t1 t0 nope", add_special_tokens=False)["input_ids"] == [
        11,
        5,
        10,
        1,
        0,
        1,
    ]
    assert tok.decode([11]) == "t11"
