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

from sae_circuits.hooks import (
    INPUT_HOOK_SUFFIXES,
    OUTPUT_HOOK_SUFFIXES,
    HookSite,
    resolve_hook,
    scoped_hooks,
)
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = ["ReplacementState", "ResolvedTranscoders", "check_compatible", "replacement"]

FeatureHook = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ResolvedTranscoders:
    """A transcoder set whose hooks were checked against a model.

    Attributes:
        transcoders: The set.
        inputs: Per layer, where the transcoder reads.
        outputs: Per layer, where it writes.
    """

    transcoders: TranscoderSet
    inputs: tuple[HookSite, ...]
    outputs: tuple[HookSite, ...]


def check_compatible(model: HookedTransformer, transcoders: TranscoderSet) -> ResolvedTranscoders:
    """Check that ``transcoders`` fit ``model`` before any work is done.

    Args:
        model: The model.
        transcoders: The transcoder set.

    Returns:
        The resolved hook sites.

    Raises:
        ValueError: Wrong number of layers, widths that differ from ``d_model``, hook names the
            model lacks (the message names the hook, the layer and close valid names), or a hook
            in another block than the transcoder's layer.
    """
    if not isinstance(transcoders, TranscoderSet):
        raise TypeError(
            f"expected a TranscoderSet (see sae_circuits.load_transcoders), got {type(transcoders).__name__}"
        )
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    if transcoders.n_layers != n_layers:
        raise ValueError(
            f"the transcoders cover {transcoders.n_layers} layers but the model has {n_layers}; "
            "attribution needs one transcoder per layer"
        )
    for width, which in ((transcoders.d_in, "d_in"), (transcoders.d_out, "d_out")):
        if width != d_model:
            raise ValueError(
                f"the transcoders' {which} is {width} but the model's d_model is {d_model}"
            )
    ins, outs = [], []
    for layer in range(n_layers):
        pairs = (
            (transcoders.input_hooks[layer], "input", INPUT_HOOK_SUFFIXES, ins),
            (transcoders.output_hooks[layer], "output", OUTPUT_HOOK_SUFFIXES, outs),
        )
        for name, which, allowed, into in pairs:
            site = resolve_hook(
                model, name, role=f"layer {layer} transcoder {which} hook", allowed_suffixes=allowed
            )
            if site.layer != layer:
                raise ValueError(
                    f"layer {layer} transcoder {which} hook {name!r} is in block {site.layer}; "
                    f"expected blocks.{layer}.*"
                )
            into.append(site)
    return ResolvedTranscoders(transcoders, tuple(ins), tuple(outs))


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
    ts = resolved.transcoders
    state = ReplacementState()
    inputs: dict[int, torch.Tensor] = {}
    dense: dict[int, torch.Tensor] = {}

    def read(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            inputs[layer] = x
            acts = ts.activation_fn(layer, ts.pre_activations(layer, x))
            if feature_hook is not None:
                acts = feature_hook(layer, acts)
            dense[layer] = acts
            state.activations[layer] = acts.detach().to_sparse()

        return fn

    def write(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(out: torch.Tensor) -> torch.Tensor:
            needed = {s: dense[s] for s in ts.source_layers(layer)}
            recon = ts.decode(layer, needed)
            skip = ts.skip(layer, inputs[layer])
            if skip is not None:
                recon = recon + skip
            recon = recon.to(out.dtype)
            if errors is not None and layer in errors:
                err = errors[layer].to(out.device, out.dtype)
            else:
                err = (out - recon).detach()
            state.errors[layer] = err.expand_as(out).detach()
            return recon + err

        return fn

    hooks = [(site, read(layer)) for layer, site in enumerate(resolved.inputs)]
    hooks += [(site, write(layer)) for layer, site in enumerate(resolved.outputs)]
    try:
        with scoped_hooks(model, hooks):
            yield state
    finally:
        inputs.clear()
        dense.clear()
