"""Generation with feature interventions (re-exported by :mod:`sae_circuits.interventions`).

The prompt is run once with the interventions (the replacement model with frozen clean error
terms, attention *not* frozen), filling a key-value cache; then tokens are generated one at a
time, with the model's own MLPs at generated positions plus, with ``apply_to_generated``, the
intervened features' changed decoder writes. The same loop without hooks gives the clean
continuation; both share the sampling seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer, TransformerLensKeyValueCache

from sae_circuits.core.prompts import Prompt, to_tokens
from sae_circuits.interventions._hooks import (
    Recorded,
    clean_run,
    intervened_hooks,
    make_plan,
    step_hooks,
)
from sae_circuits.interventions._inputs import Interventions, parse_interventions
from sae_circuits.replacement_model import run_to_output
from sae_circuits.transcoders import check_compatible
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = ["GenerationResult", "generate"]


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """Continuations of a prompt with and without interventions (tensors on the CPU).

    Attributes:
        prompt_tokens: ``(n,)`` prompt token ids.
        tokens: Prompt plus the continuation with the interventions.
        clean_tokens: Prompt plus the continuation of the unchanged model.
        text, clean_text: The decoded sequences (``None`` without tokenizer).
        completion, clean_completion: The decoded continuations only.
        next_token_logits, clean_next_token_logits: ``(d_vocab,)`` logits of the first
            generated token.
        interventions: The parsed interventions (as in :class:`InterventionResult`).
        settings: The generation settings (seed included when sampling).
    """

    prompt_tokens: torch.Tensor
    tokens: torch.Tensor
    clean_tokens: torch.Tensor
    text: str | None
    clean_text: str | None
    completion: str | None
    clean_completion: str | None
    next_token_logits: torch.Tensor
    clean_next_token_logits: torch.Tensor
    interventions: pd.DataFrame
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[len(self.prompt_tokens) :]

    @property
    def clean_new_tokens(self) -> torch.Tensor:
        return self.clean_tokens[len(self.prompt_tokens) :]


def _check_generation(
    max_new_tokens: int, temperature: float, top_k: int | None, seed: int | None
) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int | np.integer) and not isinstance(v, bool)

    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if seed is not None and not is_int(seed):
        raise ValueError(f"seed must be None or an integer, got {seed!r}")


def _loop(
    model: HookedTransformer,
    tokens: torch.Tensor,
    prompt_hooks: list,
    later_hooks: list,
    *,
    max_new_tokens: int,
    pick: Any,
    eos: int | None,
) -> tuple[list[int], torch.Tensor]:
    device = model.W_E.device
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
    seq = tokens.tolist()
    with torch.no_grad():
        ones = torch.ones(1, len(seq), dtype=torch.long, device=device)
        # logits at the last position only, without TransformerLens' copy of the unembedding
        out = run_to_output(
            model, tokens[None].to(device), prompt_hooks, past_kv_cache=cache, attention_mask=ones
        )
        logits = out.logits[0, -1]
        first = logits.detach().cpu()
        for step in range(max_new_tokens):
            nxt = pick(logits)
            seq.append(nxt)
            if nxt == eos or step == max_new_tokens - 1:
                break
            step_in = torch.tensor([[nxt]], device=device)
            one = torch.ones(1, 1, dtype=torch.long, device=device)
            out = run_to_output(
                model, step_in, later_hooks, past_kv_cache=cache, attention_mask=one
            )
            logits = out.logits[0, -1]
    return seq, first


def generate(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    interventions: Interventions,
    *,
    max_new_tokens: int = 20,
    apply_to_generated: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
) -> GenerationResult:
    """Continue ``prompt`` with and without feature interventions.

    On the prompt's positions the model is the replacement model of :func:`intervene` with
    ``freeze_attention=False``: **attention patterns and norm scales are not frozen** (generated
    tokens attend to the changed prompt), the error terms stay at their clean values, and
    downstream features respond. At generated positions there is no clean run, so the model's own
    MLPs run there; with ``apply_to_generated`` each intervened feature is also changed at every
    generated position (feature-wise: a ``value`` is set; a ``scale`` multiplies the activation
    the feature has there; if a feature is intervened at several prompt positions, the one at the
    latest position is used), which adds its changed decoder writes to the MLP output. Generation
    uses a key-value cache; both continuations use the same sampling seed.

    Args:
        model: The user's model (hooked only for the call).
        prompt: Text, a list of token ids or a 1-D tensor of ids.
        transcoders: A transcoder set covering every layer.
        interventions: As in :func:`intervene` (positions are prompt positions).
        max_new_tokens: Tokens to generate (fewer if EOS comes first and ``stop_at_eos``).
        apply_to_generated: Also apply the interventions, feature-wise, at generated positions.
        do_sample: Sample instead of greedy decoding.
        temperature: Softmax temperature when sampling.
        top_k: Sample among the ``top_k`` most likely tokens only.
        seed: Seed of the sampler; default: drawn from torch's global generator (recorded in
            ``settings``).
        stop_at_eos: Stop at the tokenizer's EOS token, if it has one.

    Returns:
        A :class:`GenerationResult`.

    Raises:
        ValueError: Bad sizes or settings, a prompt plus ``max_new_tokens`` longer than
            ``n_ctx``, malformed interventions (as in :func:`intervene`).
    """
    _check_generation(max_new_tokens, temperature, top_k, seed)
    tokens = to_tokens(model, prompt)
    if len(tokens) + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"the prompt ({len(tokens)} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
            f"model's n_ctx={model.cfg.n_ctx}; use at most {model.cfg.n_ctx - len(tokens)}"
        )
    resolved = check_compatible(model, transcoders)
    ts = resolved.transcoders
    table = parse_interventions(
        interventions, n_layers=ts.n_layers, n_pos=len(tokens), d_sae=ts.d_sae
    )
    clean = clean_run(model, tokens, resolved, freeze=False)
    plan = make_plan(table, clean, resolved, generated=apply_to_generated)
    if do_sample and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    tokenizer = getattr(model, "tokenizer", None)
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None

    def picker() -> Any:
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)

        def pick(logits: torch.Tensor) -> int:
            if not do_sample:
                return int(logits.argmax())
            scaled = logits.detach().float().cpu() / temperature
            if top_k is not None and top_k < scaled.numel():
                cut = torch.topk(scaled, top_k).values[-1]
                scaled = scaled.masked_fill(scaled < cut, float("-inf"))
            return int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=gen))

        return pick

    clean_seq, clean_first = _loop(
        model, tokens, [], [], max_new_tokens=max_new_tokens, pick=picker(), eos=eos
    )
    hooks = intervened_hooks(
        model,
        resolved,
        clean,
        plan,
        mode="replacement",
        freeze=False,
        targets={},
        record=Recorded(),
    )
    later = step_hooks(resolved, plan) if apply_to_generated else []
    seq, first = _loop(
        model, tokens, hooks, later, max_new_tokens=max_new_tokens, pick=picker(), eos=eos
    )

    def decode(ids: list[int]) -> str | None:
        return None if tokenizer is None else tokenizer.decode(ids)

    n = len(tokens)
    assert plan.table is not None
    return GenerationResult(
        prompt_tokens=tokens,
        tokens=torch.tensor(seq, dtype=torch.long),
        clean_tokens=torch.tensor(clean_seq, dtype=torch.long),
        text=decode(seq),
        clean_text=decode(clean_seq),
        completion=decode(seq[n:]),
        clean_completion=decode(clean_seq[n:]),
        next_token_logits=first,
        clean_next_token_logits=clean_first,
        interventions=plan.table,
        settings={
            "max_new_tokens": max_new_tokens,
            "apply_to_generated": apply_to_generated,
            "do_sample": do_sample,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
            "stop_at_eos": stop_at_eos,
        },
    )
