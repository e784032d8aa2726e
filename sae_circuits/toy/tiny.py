"""Tiny models and transcoders built from configs, offline, for tests, examples and the demo.

Architecture styles that TransformerLens supports and that stress different parts of
attribution:

* ``"gpt2"``: LayerNorm (centring is part of the linear map), learned positional embeddings,
  GELU MLP; transcoders on ``hook_resid_mid`` -> ``hook_mlp_out``.
* ``"llama"``: RMSNorm, gated SiLU MLP, grouped-query attention, rotary; transcoders on the
  MLP's own input/output (``mlp.hook_in`` -> ``mlp.hook_out``, as the public Llama/Qwen releases).
* ``"gemma2"``: RMSNorm before *and* after attention and MLP, attention and output soft-caps,
  alternating local/global attention; transcoders on ``ln2.hook_normalized`` -> ``hook_mlp_out``.
  (``"gemma3"`` adds QK-norm and a second rotary base for the local layers.)
* ``"neox"``: a parallel block (GPT-NeoX, GPT-J: attention and MLP both read the block's input),
  LayerNorm, partial rotary; transcoders on ``ln2.hook_normalized`` -> ``hook_mlp_out``.

Weights are random but deliberately large, so the model is far from linear and an attribution
mistake shows. Transcoder encoder biases are calibrated on a prompt so a chosen fraction of
features fire.

Example:
    >>> model = tiny_model("llama", seed=0)
    >>> transcoders = tiny_transcoders(model, "skip", seed=0)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from sae_lens import JumpReLUTranscoder, SkipTranscoder, Transcoder
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_circuits.toy.tokenizer import word_tokenizer

if TYPE_CHECKING:
    from sae_circuits.transcoders.clt_sae import CrossLayerTranscoder

__all__ = ["ARCHS", "HOOKS", "KINDS", "tiny_clt", "tiny_model", "tiny_transcoders"]

Arch = Literal["gpt2", "llama", "gemma2", "gemma3", "neox"]
Kind = Literal["relu", "jumprelu", "skip", "jumprelu_skip", "topk"]
#: The transcoder kinds :func:`tiny_transcoders` builds.
KINDS: tuple[str, ...] = ("relu", "jumprelu", "skip", "jumprelu_skip", "topk")

#: HookedTransformerConfig keyword arguments of each style (sizes are filled in by tiny_model).
#: What the Gemma-style tiny models share (norms before and after each sublayer, local layers).
_GEMMA: dict[str, Any] = dict(
    act_fn="gelu_pytorch_tanh",
    normalization_type="RMS",
    gated_mlp=True,
    positional_embedding_type="rotary",
    final_rms=True,
    use_normalization_before_and_after=True,
    output_logits_soft_cap=30.0,
    use_local_attn=True,
    window_size=4,
    eps=1e-6,
    n_key_value_heads=2,
)

ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": dict(act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard"),
    "llama": dict(
        act_fn="silu",
        normalization_type="RMS",
        gated_mlp=True,
        positional_embedding_type="rotary",
        final_rms=True,
        eps=1e-5,
        n_key_value_heads=2,
    ),
    "gemma2": dict(_GEMMA, attn_scores_soft_cap=50.0, original_architecture="Gemma2ForCausalLM"),
    # Gemma 3: QK-norm, local layers with their own rotary base, no attention soft-cap
    "gemma3": dict(
        _GEMMA,
        use_qk_norm=True,
        rotary_base=1_000_000,
        rotary_base_local=10_000,
        original_architecture="Gemma3ForCausalLM",
    ),
    # GPT-NeoX: attention and MLP in parallel on the block's input, rotary on half of each head
    "neox": dict(
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM",
    ),
}

#: Transcoder input/output hook suffixes of each style, as the public releases use them.
HOOKS: dict[str, tuple[str, str]] = {
    "gpt2": ("hook_resid_mid", "hook_mlp_out"),
    "llama": ("mlp.hook_in", "mlp.hook_out"),
    "gemma2": ("ln2.hook_normalized", "hook_mlp_out"),
    "neox": ("ln2.hook_normalized", "hook_mlp_out"),
}


def tiny_model(
    arch: Arch = "gpt2",
    *,
    seed: int = 0,
    n_layers: int = 3,
    d_model: int = 32,
    n_heads: int = 4,
    d_vocab: int = 64,
    n_ctx: int = 64,
    weight_scale: float = 1.0,
    n_key_value_heads: int | None = None,
) -> HookedTransformer:
    """A small random ``HookedTransformer`` of one architecture style, with a word tokenizer.

    Args:
        arch: ``"gpt2"``, ``"llama"``, ``"gemma2"``, ``"gemma3"`` or ``"neox"``.
        seed: Seed of the weights.
        n_layers, d_model, n_heads, d_vocab, n_ctx: Sizes.
        weight_scale: Multiplier on the random matrices (larger: more non-linear).
        n_key_value_heads: Key/value heads of a grouped-query style (``"llama"``, the Gemmas;
            ``1``: multi-query attention); default the style's (2).

    Returns:
        A float32 CPU model whose ``tokenizer`` maps words ``t0 ... t{d_vocab-1}`` to ids.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(ARCHS)}")
    kw = dict(ARCHS[arch])
    if n_key_value_heads is not None:
        if "n_key_value_heads" not in kw or n_key_value_heads < 1 or n_heads % n_key_value_heads:
            raise ValueError(
                f"n_key_value_heads={n_key_value_heads} needs a grouped-query style "
                f"(llama, gemma2, gemma3) and must divide n_heads={n_heads}"
            )
        kw["n_key_value_heads"] = n_key_value_heads
    d_head = d_model // n_heads
    kw.update(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=3 * d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        dtype=torch.float32,
        device="cpu",
        seed=seed,
    )
    if kw.get("positional_embedding_type") == "rotary":
        kw["rotary_dim"] = d_head // 2 if kw.get("parallel_attn_mlp") else d_head
    if arch in ("gemma2", "gemma3"):
        kw["attn_types"] = (["global", "local"] * n_layers)[:n_layers]
    model = HookedTransformer(HookedTransformerConfig(**kw))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.endswith(".w") and prm.dim() == 1:
                prm.copy_(1 + 0.2 * torch.randn(prm.shape, generator=gen))
            elif prm.dim() == 2:
                prm.copy_(
                    weight_scale * torch.randn(prm.shape, generator=gen) / prm.shape[-2] ** 0.5
                )
            elif prm.dim() > 2:
                prm.copy_(weight_scale * 0.3 * torch.randn(prm.shape, generator=gen))
            else:
                prm.copy_(0.05 * torch.randn(prm.shape, generator=gen))
    model.tokenizer = word_tokenizer([f"t{i}" for i in range(d_vocab)], bos="t0", unk="t1")
    return model


def tiny_transcoders(
    model: HookedTransformer,
    kind: Kind = "relu",
    *,
    seed: int = 0,
    d_sae: int = 128,
    density: float = 0.05,
    calibration_tokens: torch.Tensor | None = None,
    hooks: tuple[str, str] | None = None,
    k: int | None = None,
) -> list[Transcoder]:
    """Random SAELens transcoders for every layer of ``model``, with hooks in their metadata.

    Args:
        model: A model from :func:`tiny_model` (or any small ``HookedTransformer``).
        kind: ``"relu"`` (``Transcoder``), ``"jumprelu"``, ``"skip"``, ``"jumprelu_skip"``
            (SAELens' ``JumpReLUSkipTranscoder``, as Gemma Scope 2's ``*_affine`` releases) or
            ``"topk"`` (:class:`~sae_circuits.transcoders.TopKTranscoder`).
        seed: Seed of the weights.
        d_sae: Features per layer.
        density: About this fraction of features have a positive pre-activation on
            ``calibration_tokens`` (they fire, except for TopK, which keeps ``k`` of them).
        calibration_tokens: ``(n,)`` ids used to set encoder biases; default a random prompt.
        hooks: ``(input, output)`` hook suffixes; default the architecture's (:data:`HOOKS`).
        k: ``"topk"`` only: features kept per position; default ``ceil(density * d_sae / 2)``
            (4 of 128), about half of those with a positive pre-activation, so that the
            selection drops positive features at most positions (and keeps the largest negative
            ones where fewer than ``k`` are positive).

    Returns:
        One SAELens transcoder per layer (index = layer).

    Raises:
        ValueError: Unknown ``kind``, or ``k`` given for another kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown transcoder kind {kind!r}; valid choices: {', '.join(KINDS)}")
    if k is not None and kind != "topk":
        raise ValueError(f"k is for kind 'topk' only, got kind {kind!r}")
    cfg = model.cfg
    style = (
        "gemma2"
        if cfg.use_normalization_before_and_after
        else "neox"
        if cfg.parallel_attn_mlp
        else ("llama" if cfg.gated_mlp else "gpt2")
    )
    hin, hout = hooks or HOOKS[style]
    gen = torch.Generator().manual_seed(seed + 2)
    if calibration_tokens is None:
        calibration_tokens = torch.randint(0, cfg.d_vocab, (16,), generator=gen)
    # the transcoder inputs on the calibration prompt (mlp.hook_in = the MLP module's input)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    from sae_circuits.core.hooks import resolve_hook, scoped_hooks
    from sae_circuits.transcoders import transcoder_classes

    sites = [resolve_hook(model, f"blocks.{layer}.{hin}") for layer in range(cfg.n_layers)]
    for layer, site in enumerate(sites):
        handles.append((site, lambda t, layer=layer: captured.__setitem__(layer, t.detach()[0])))
    with torch.no_grad(), scoped_hooks(model, handles):
        model(calibration_tokens[None])
    jumprelu, skip = kind in ("jumprelu", "jumprelu_skip"), kind in ("skip", "jumprelu_skip")
    cls, ccls = transcoder_classes(jumprelu=jumprelu, skip=skip, topk=kind == "topk")
    extra: dict[str, Any] = {}
    if kind == "topk":
        extra["k"] = k if k is not None else max(1, math.ceil(density * d_sae / 2))
    d = cfg.d_model
    out = []
    for layer in range(cfg.n_layers):
        c = ccls(d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False, **extra)
        c.metadata.hook_name = f"blocks.{layer}.{hin}"
        c.metadata.hook_name_out = f"blocks.{layer}.{hout}"
        tc = cls(c)
        with torch.no_grad():
            w_enc = torch.randn(d, d_sae, generator=gen) * 2.0 / d**0.5
            pre = captured[layer][1:] @ w_enc
            threshold = 0.2 + 0.3 * torch.rand(d_sae, generator=gen)
            q = torch.quantile(pre.flatten(), 1 - density)
            shift = threshold.mean() if jumprelu else 0.0
            tc.W_enc.copy_(w_enc)
            tc.b_enc.copy_(-q + shift - 0.1 * torch.rand(d_sae, generator=gen))
            tc.W_dec.copy_(torch.randn(d_sae, d, generator=gen) * 3.0 / d_sae**0.5)
            tc.b_dec.copy_(0.05 * torch.randn(d, generator=gen))
            if isinstance(tc, JumpReLUTranscoder):
                tc.threshold.copy_(threshold)
            if isinstance(tc, SkipTranscoder):
                tc.W_skip.copy_(0.1 * torch.randn(d, d, generator=gen) / d**0.5)
        out.append(tc)
    return out


def tiny_clt(transcoders: list[Transcoder], *, seed: int = 0) -> CrossLayerTranscoder:
    """A random cross-layer transcoder built on calibrated per-layer toy transcoders.

    Encoders (and JumpReLU thresholds) are those of ``transcoders`` (so a few % of features
    fire); decoders to the feature's own layer and every later one are random.

    Args:
        transcoders: Per-layer transcoders from :func:`tiny_transcoders` (ReLU or JumpReLU).
        seed: Seed of the decoders.

    Returns:
        A :class:`~sae_circuits.transcoders.clt_sae.CrossLayerTranscoder` with ``{layer}`` hook
        templates taken from the per-layer transcoders.
    """
    from sae_circuits.transcoders import TopKTranscoder
    from sae_circuits.transcoders.clt_sae import CrossLayerTranscoder, CrossLayerTranscoderConfig

    first = transcoders[0]
    if isinstance(first, TopKTranscoder):
        raise ValueError(
            "tiny_clt: cross-layer transcoders are ReLU or JumpReLU; build it on 'relu' or "
            "'jumprelu' transcoders, not TopK ones"
        )
    jumprelu = isinstance(first, JumpReLUTranscoder)
    n_layers, d, n_features = len(transcoders), first.cfg.d_in, first.cfg.d_sae
    cfg = CrossLayerTranscoderConfig(
        d_in=d,
        d_sae=n_features,
        d_out=first.cfg.d_out,
        n_layers=n_layers,
        activation="jumprelu" if jumprelu else "relu",
    )
    hook_in, hook_out = first.cfg.metadata.hook_name, first.cfg.metadata.hook_name_out
    if not hook_in or not hook_out:
        raise ValueError("tiny_clt: the transcoders' metadata lacks hook_name / hook_name_out")
    cfg.metadata.hook_name = hook_in.replace("blocks.0.", "blocks.{layer}.")
    cfg.metadata.hook_name_out = hook_out.replace("blocks.0.", "blocks.{layer}.")
    clt = CrossLayerTranscoder(cfg)
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        clt.W_enc.copy_(torch.stack([tc.W_enc for tc in transcoders]))
        clt.b_enc.copy_(torch.stack([tc.b_enc for tc in transcoders]))
        clt.b_dec.copy_(torch.stack([tc.b_dec for tc in transcoders]))
        if jumprelu:
            clt.threshold.copy_(torch.stack([tc.threshold for tc in transcoders]))  # type: ignore[attr-defined]
        for layer in range(n_layers):
            shape = (n_features, n_layers - layer, first.cfg.d_out)
            clt.W_dec[layer].copy_(torch.randn(shape, generator=gen) * 2.0 / n_features**0.5)
    return clt
