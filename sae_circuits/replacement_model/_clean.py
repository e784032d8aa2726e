"""The clean forward pass of a prompt: what the frozen replacement model holds fixed.

One no-grad forward pass of the user's model (scoped hooks) records each transcoder's input and
output, the feature activations, the clean reconstruction and skip terms, and, when asked, every
attention pattern and norm scale and any other named activations. Attribution and interventions
both start from it; features, decoder writes and skip terms come from :mod:`._semantics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.hooks import HookSite
from sae_circuits.replacement_model._output import run_to_output
from sae_circuits.replacement_model._semantics import ReplacementSemantics
from sae_circuits.transcoders import ResolvedTranscoders

__all__ = ["FROZEN_SUFFIXES", "CleanRun", "clean_run"]

#: Hook points whose clean values the frozen model keeps: attention patterns and norm scales.
FROZEN_SUFFIXES = ("hook_pattern", "hook_scale")


@dataclass
class CleanRun:
    """What a clean forward pass of the prompt recorded (tensors on the model's device).

    Attributes:
        tokens: ``(n,)`` token ids (CPU).
        x_in: Per layer, ``(n, d_in)`` transcoder input.
        out: Per layer, ``(n, d_out)`` MLP output (clean reconstruction + clean error).
        recon: Per layer, ``(n, d_out)`` clean reconstruction (decoder bias included, no skip).
        skip: Per layer, ``(n, d_out)`` clean skip term or ``None``.
        acts: Per layer, ``(n, F)`` sparse COO clean feature activations (transcoders' device).
        frozen: Hook name -> clean attention pattern / norm scale (when recorded).
        logits: ``(n, d_vocab)`` logits (CPU); ``(1, d_vocab)``, the last position's, with
            ``last_logits_only``.
        logits_presoftcap: ``(d_vocab,)`` last-position logits before any soft-cap (CPU).
        extra: Hook name -> clean activation of the hooks named in ``record`` (batch dim kept).
    """

    tokens: torch.Tensor
    x_in: list[torch.Tensor]
    out: list[torch.Tensor]
    recon: list[torch.Tensor]
    skip: list[torch.Tensor | None]
    acts: list[torch.Tensor]
    frozen: dict[str, torch.Tensor]
    logits: torch.Tensor
    logits_presoftcap: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def error(self, layer: int) -> torch.Tensor:
        """``(n, d_out)`` the clean error term of ``layer``: output minus reconstruction + skip."""
        recon = self.recon[layer]
        skip = self.skip[layer]
        return ReplacementSemantics.error(recon if skip is None else recon + skip, self.out[layer])

    def activation(
        self, layer: int, positions: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """Clean activations at ``(positions, features)`` of ``layer``: ``(k,)``."""
        dense = self.acts[layer].to_dense()
        return dense[positions.to(dense.device), features.to(dense.device)]


def clean_run(
    model: HookedTransformer,
    tokens: torch.Tensor,
    resolved: ResolvedTranscoders,
    *,
    freeze: bool,
    record: Sequence[str | HookSite] = (),
    last_logits_only: bool = False,
    attention_sink: bool = False,
) -> CleanRun:
    """Run the prompt once, recording what the frozen replacement model holds fixed.

    Args:
        model: The user's model (hooks are scoped to the pass).
        tokens: ``(n,)`` token ids.
        resolved: Transcoders checked against the model.
        freeze: Also record every attention pattern and norm scale.
        record: Other hooks (names or sites) whose activations to keep (in
            :attr:`CleanRun.extra`, by name).
        last_logits_only: Keep only the last position's logits.
        attention_sink: Zero the features at position 0 (they are then neither recorded nor
            decoded).

    Returns:
        The :class:`CleanRun`.

    Raises:
        FloatingPointError: Non-finite transcoder inputs, outputs or activations.
    """
    ts = resolved.transcoders
    n_layers = len(resolved.inputs)
    x_in: list[torch.Tensor | None] = [None] * n_layers
    out: list[torch.Tensor | None] = [None] * n_layers
    frozen: dict[str, torch.Tensor] = {}

    def keep(store: list, layer: int) -> Callable[[torch.Tensor], None]:
        def fn(t: torch.Tensor) -> None:
            store[layer] = t.detach()[0].clone()

        return fn

    def remember(name: str) -> Callable[[torch.Tensor], None]:
        def fn(t: torch.Tensor) -> None:
            frozen[name] = t.detach().clone()

        return fn

    hooks: list[tuple[HookSite | str, Any]] = []
    if freeze:
        hooks += [(n, remember(n)) for n in model.hook_dict if n.endswith(FROZEN_SUFFIXES)]
    hooks += [(site, keep(x_in, layer)) for layer, site in enumerate(resolved.inputs)]
    hooks += [(site, keep(out, layer)) for layer, site in enumerate(resolved.outputs)]
    extra: dict[str, torch.Tensor] = {}
    for site in record:
        name = site.name if isinstance(site, HookSite) else site
        hooks.append((site, lambda t, name=name: extra.__setitem__(name, t.detach())))
    device = model.W_E.device
    with torch.no_grad():
        output = run_to_output(
            model, tokens[None].to(device), hooks, positions="last" if last_logits_only else "all"
        )
    missing = [layer for layer in range(n_layers) if x_in[layer] is None or out[layer] is None]
    if missing:
        raise RuntimeError(f"transcoder hooks did not fire for layers {missing}")
    xs = [x for x in x_in if x is not None]
    outs = [o for o in out if o is not None]
    sem = ReplacementSemantics(ts)
    acts, recon, skip = [], [], []
    with torch.no_grad():
        for layer in range(n_layers):
            x = xs[layer]
            if not torch.isfinite(x).all():
                raise FloatingPointError(
                    f"non-finite values at {resolved.inputs[layer].name} (layer {layer} transcoder input)"
                )
            a = sem.features(layer, x)
            if not torch.isfinite(a).all():
                raise FloatingPointError(f"non-finite feature activations at layer {layer}")
            if attention_sink:
                a[0] = 0
            acts.append(a.to_sparse().coalesce())
        for layer in range(n_layers):
            recon.append(sem.decode(layer, acts).to(device, outs[layer].dtype))
            sk = sem.skip(layer, xs[layer])
            skip.append(None if sk is None else sk.to(device, outs[layer].dtype))
    return CleanRun(
        tokens=tokens.cpu(),
        x_in=xs,
        out=outs,
        recon=recon,
        skip=skip,
        acts=acts,
        frozen=frozen,
        logits=output.logits[0].detach().cpu(),
        logits_presoftcap=output.logits_presoftcap[0, -1].detach().cpu(),
        extra=extra,
    )
