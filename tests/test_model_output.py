"""The model's output without TransformerLens' unembedding module (replacement_model._output).

``Unembed.forward`` copies the whole transposed unembedding on every call; attribution,
interventions and generation compute logits with ``x @ W_U`` instead. These tests fail if any of
them calls the module again, if the logits stop being the model's (soft-cap included), or if hooks
on the unembedding's sites stop firing or stop replacing what they return.
"""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc
from sae_circuits.replacement_model import run_to_output, unembed_input_site, unembed_site

from .conftest import build
from .tolerance import assert_close

TOKENS = torch.tensor([0, 5, 9, 3, 7, 2, 8])


def _count_unembed_calls(model) -> tuple[list[int], object]:
    calls = [0]
    handle = model.unembed.register_forward_pre_hook(
        lambda m, a: calls.__setitem__(0, calls[0] + 1)
    )
    return calls, handle


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_logits_are_the_models_without_the_unembed_module(arch):
    model, tcs = build(arch, "relu")
    ts = sc.load_transcoders(tcs)
    with torch.no_grad():
        expected = model(TOKENS[None])[0]  # TransformerLens' own forward (soft-cap included)
    calls, handle = _count_unembed_calls(model)
    try:
        with torch.no_grad():
            every = run_to_output(model, TOKENS[None], positions="all")
            last = run_to_output(model, TOKENS[None], positions="last")
        result = sc.intervene(model, TOKENS, ts, None)
        sc.generate(model, TOKENS, ts, None, max_new_tokens=2)
        sc.attribute(model, TOKENS, ts, max_n_logits=2, progress=False)
    finally:
        handle.remove()
    assert calls[0] == 0, "the unembedding module ran (its forward copies W_U)"
    assert every.logits.shape == (1, len(TOKENS), model.cfg.d_vocab)
    assert last.logits.shape == (1, 1, model.cfg.d_vocab)
    assert_close(every.logits[0], expected, what=f"{arch}: logits at every position")
    assert_close(last.logits[0, 0], expected[-1], what=f"{arch}: last-position logits")
    assert_close(result.clean_logits, expected, what=f"{arch}: intervene's clean logits")
    if model.cfg.output_logits_soft_cap > 0:  # the soft-cap changes these logits measurably
        with torch.no_grad():
            uncapped = model.unembed(every.final)[0]
        assert_close(every.logits_presoftcap[0], uncapped, what=f"{arch}: pre-soft-cap logits")
        assert (uncapped - expected).abs().max() > 1e-3 * expected.abs().max()


def test_hooks_on_the_unembedding_sites_fire_and_replace():
    model, _ = build("gemma2", "relu")
    seen: dict[str, tuple[int, ...]] = {}

    def double_input(t: torch.Tensor) -> torch.Tensor:
        seen["input"] = tuple(t.shape)
        return 2 * t

    def read_output(t: torch.Tensor) -> None:
        seen["output"] = tuple(t.shape)

    with torch.no_grad():
        plain = run_to_output(model, TOKENS[None], positions="last")
        out = run_to_output(
            model,
            TOKENS[None],
            [(unembed_input_site(), double_input), (unembed_site().name, read_output)],
            positions="last",
        )
        zeroed = run_to_output(
            model, TOKENS[None], [(unembed_site(), torch.zeros_like)], positions="all"
        )
        doubled = model.unembed(2 * plain.final[:, -1:])
    assert seen == {
        "input": (1, len(TOKENS), model.cfg.d_model),
        "output": (1, 1, model.cfg.d_vocab),
    }
    assert_close(out.final, 2 * plain.final, what="the input hook's replacement")
    assert_close(out.logits_presoftcap, doubled, what="logits of the replaced input")
    assert torch.equal(zeroed.logits, torch.zeros_like(zeroed.logits))
    with pytest.raises(ValueError, match="'last' or 'all'"):
        run_to_output(model, TOKENS[None], positions="first")  # type: ignore[arg-type]
