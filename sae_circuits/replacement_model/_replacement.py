"""The local replacement model, as a scoped set of hooks on the user's ``HookedTransformer``.

The replacement model of "Circuit Tracing" (Ameisen et al. 2025) replaces every MLP by its
transcoder: the MLP's output becomes the transcoder's reconstruction plus an *error term*, the
part the transcoder misses (``error = mlp_out - reconstruction``). With the error term the
replacement model computes exactly what the original model computes, but the MLP's work is now
written in terms of sparse features. :func:`replacement` installs this for the duration of a
``with`` block; on exit (also after an exception) the model is as it was.

Example:
    >>> import sae_circuits as sc
    >>> with sc.replacement(model, transcoders) as rm:
    ...     logits = model(tokens)              # same logits as without the block
    >>> rm.activations[3]                       # (batch, pos, d_sae) sparse, layer 3 features
    >>> rm.errors[3]                            # (batch, pos, d_model) error term of layer 3
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.hooks import scoped_hooks
from sae_circuits.replacement_model._semantics import ReplacementSemantics
from sae_circuits.transcoders import TranscoderSet, check_compatible

__all__ = ["ReplacementState", "replacement"]

FeatureHook = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class ReplacementState:
    """What the replacement model saw in its last forward pass.

    Attributes:
        activations: ``layer -> (batch, pos, d_sae)`` sparse COO feature activations.
        errors: ``layer -> (batch, pos, d_model)`` error terms (MLP output minus reconstruction).
    """

    activations: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def replacement(
    model: HookedTransformer,
    transcoders: TranscoderSet,
    *,
    errors: dict[int, torch.Tensor] | None = None,
    feature_hook: FeatureHook | None = None,
) -> Iterator[ReplacementState]:
    """Run ``model`` as its local replacement model inside a ``with`` block.

    Each MLP's output is replaced by the transcoder reconstruction plus the error term. Without
    ``errors`` the error term is recomputed in each forward pass from the real MLP, so the logits
    equal the original model's (to float32 rounding). With ``errors`` it is held fixed, as when
    features are intervened on.

    Args:
        model: The user's model (hooks are added for the block and removed after it).
        transcoders: A transcoder set covering every layer.
        errors: Optional fixed error terms, ``layer -> (pos, d_model)`` or
            ``(batch, pos, d_model)``.
        feature_hook: Optional ``fn(layer, acts) -> acts`` applied to the dense
            ``(batch, pos, d_sae)`` feature activations before they are decoded (an intervention).

    Yields:
        A :class:`ReplacementState` filled by each forward pass.
    """
    resolved = check_compatible(model, transcoders)
    sem = ReplacementSemantics(resolved.transcoders)
    state = ReplacementState()
    inputs: dict[int, torch.Tensor] = {}
    dense: dict[int, torch.Tensor] = {}

    def read(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            inputs[layer] = x
            acts = sem.features(layer, x)
            if feature_hook is not None:
                acts = feature_hook(layer, acts)
            dense[layer] = acts
            state.activations[layer] = acts.detach().to_sparse()

        return fn

    def write(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(out: torch.Tensor) -> torch.Tensor:
            recon = sem.reconstruction(layer, inputs[layer], dense, like=out)
            if errors is not None and layer in errors:
                err = errors[layer].to(out.device, out.dtype)
            else:
                err = sem.error(recon, out).detach()
            state.errors[layer] = err.expand_as(out).detach()
            return sem.output(recon, err)

        return fn

    hooks = [(site, read(layer)) for layer, site in enumerate(resolved.inputs)]
    hooks += [(site, write(layer)) for layer, site in enumerate(resolved.outputs)]
    try:
        with scoped_hooks(model, hooks):
            yield state
    finally:
        inputs.clear()
        dense.clear()
