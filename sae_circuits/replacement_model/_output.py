"""The model's output without TransformerLens' full-vocabulary copy of the unembedding.

TransformerLens 3.9's ``Unembed.forward`` runs ``F.linear(x, W_U.T.contiguous(), b_U)``: every
forward pass copies the whole ``(d_vocab, d_model)`` unembedding (671 MB for Gemma 3's 262k x
640) and computes logits at every position (``n x d_vocab`` floats: 1 GiB for a 1,024-token
Gemma 3 prompt). What the callers here need is the unembedding's input and the logits at the
last position (attribution, generation) or at every position without the copy (interventions).
:func:`run_to_output` runs the model to the final norm's output (``return_type=None``: the
unembedding module is never called), and :func:`unembed` multiplies by ``W_U`` as stored
(``x @ W_U``: no copy) at the positions asked for, then applies the model's logit soft-cap.

Hooks on the two unembedding sites (:func:`unembed_input_site`, :func:`unembed_site`) are honoured
although the module does not run: they are called here, in the same order and with the same
shapes as a full forward pass would (``(batch, positions, ...)``); a hook that returns a tensor
replaces the activation, as in :func:`~sae_circuits.core.hooks.scoped_hooks`.

Example:
    >>> out = run_to_output(model, tokens[None], hooks, positions="last")
    >>> out.logits.shape, out.final.shape      # (1, 1, d_vocab), (1, n, d_model)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.hooks import HookFn, HookSite, resolve_hook, scoped_hooks

__all__ = ["ModelOutput", "run_to_output", "unembed", "unembed_input_site", "unembed_site"]


def unembed_site() -> HookSite:
    """The unembedding's output: the logits before any soft-cap."""
    return HookSite("unembed.output", None, "unembed", "post")


def unembed_input_site() -> HookSite:
    """The unembedding's input: the residual stream after the final norm (what targets read)."""
    return HookSite("unembed.input", None, "unembed", "pre")


def _final_site(model: HookedTransformer) -> HookSite:
    """Where the unembedding's input is computed: the final norm's output (or the last block's
    output for a model without one)."""
    if model.cfg.normalization_type is not None:
        return HookSite("ln_final.output", None, "ln_final", "post")
    return resolve_hook(model, f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")


@dataclass(frozen=True)
class ModelOutput:
    """One forward pass, up to the logits asked for.

    Attributes:
        final: ``(batch, n, d_model)`` the unembedding's input (after the final norm).
        logits_presoftcap: ``(batch, m, d_vocab)`` logits before any soft-cap at the positions
            asked for (``m = 1`` for ``"last"``, ``n`` for ``"all"``).
        logits: ``(batch, m, d_vocab)`` the model's logits there (soft-capped where the model
            caps them; the same tensor as ``logits_presoftcap`` otherwise).
    """

    final: torch.Tensor
    logits_presoftcap: torch.Tensor
    logits: torch.Tensor


def unembed(model: HookedTransformer, final: torch.Tensor, *, softcap: bool = True) -> torch.Tensor:
    """Logits of ``final`` (``(..., d_model)``): ``final @ W_U + b_U`` with ``W_U`` as stored.

    Args:
        model: The model.
        final: The unembedding's input at some positions.
        softcap: Apply the model's logit soft-cap (``cfg.output_logits_soft_cap``), if any.

    Returns:
        ``(..., d_vocab)`` logits.
    """
    w = model.W_U
    logits = torch.matmul(final.to(w.dtype), w) + model.b_U
    return _softcap(model, logits) if softcap else logits


def _softcap(model: HookedTransformer, logits: torch.Tensor) -> torch.Tensor:
    """The model's logit soft-cap (``cap * tanh(logits / cap)``; none when ``cap <= 0``)."""
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def _call(fns: Sequence[HookFn], t: torch.Tensor) -> torch.Tensor:
    for fn in fns:
        new = fn(t)
        if new is not None:
            t = new
    return t


def run_to_output(
    model: HookedTransformer,
    tokens: torch.Tensor,
    hooks: Sequence[tuple[HookSite | str, HookFn]] = (),
    *,
    positions: Literal["last", "all"] = "last",
    **forward_kwargs: Any,
) -> ModelOutput:
    """Run ``model`` on ``tokens`` under scoped ``hooks``; logits only where asked for.

    Args:
        model: The user's model (hooks are scoped to the pass).
        tokens: ``(batch, n)`` token ids (on the model's device).
        hooks: ``(site, fn)`` pairs as :func:`~sae_circuits.core.hooks.scoped_hooks` takes
            them; hooks on :func:`unembed_input_site` / :func:`unembed_site` see ``(batch, n,
            d_model)`` / ``(batch, m, d_vocab)``.
        positions: ``"last"``: logits at the last position only; ``"all"``: at every position.
        **forward_kwargs: Passed to ``model(...)`` (e.g. ``past_kv_cache``, ``attention_mask``).

    Returns:
        The :class:`ModelOutput` (tensors on the model's device, not detached).
    """
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    at_input, at_output, others = [], [], []
    for site, fn in hooks:
        name = site.name if isinstance(site, HookSite) else site
        if name == unembed_input_site().name:
            at_input.append(fn)
        elif name == unembed_site().name:
            at_output.append(fn)
        else:
            others.append((site, fn))
    box: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor) -> None:
        box["final"] = t

    with scoped_hooks(model, [*others, (_final_site(model), keep)]):
        model(tokens, return_type=None, **forward_kwargs)
    final = _call(at_input, box["final"])
    x = final[:, -1:] if positions == "last" else final
    pre = _call(at_output, unembed(model, x, softcap=False))
    return ModelOutput(final=final, logits_presoftcap=pre, logits=_softcap(model, pre))
