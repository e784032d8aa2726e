"""Do these transcoders fit this model? The one check, before any work is done.

Every entry point that puts transcoders on a model (``attribute``, ``intervene``, ``generate``,
``replacement``, ``load_transcoders(model=...)``, ``load_model(transcoders=...)``) goes through
:func:`check_compatible` (layer count, widths, hooks; it returns the hook sites resolved on the
model) or :func:`check_transcoders_match` (the same, plus the model name, also for a config
before any weight is read). Sizes of both sides are :class:`Sizes`, compared by
:func:`check_sizes`, which also checks a config against the weights it loaded.

Example:
    >>> resolved = check_compatible(model, transcoders)
    >>> resolved.inputs[3].name          # where layer 3's transcoder reads
    >>> check_transcoders_match(model, "gemma-2-2b-gemmascope")   # names, sizes, hooks
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from transformer_lens import HookedTransformer

from sae_circuits.core.hooks import (
    INPUT_HOOK_SUFFIXES,
    OUTPUT_HOOK_SUFFIXES,
    HookSite,
    resolve_hook,
)
from sae_circuits.transcoders._sizes import Sizes, check_sizes, model_sizes
from sae_circuits.transcoders.configs import TranscoderSetConfig, resolve_config
from sae_circuits.transcoders.sets import PerLayerTranscoderSet, TranscoderSet

__all__ = [
    "ResolvedTranscoders",
    "Sizes",
    "check_compatible",
    "check_sizes",
    "check_transcoders_match",
    "model_sizes",
]


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
    check_sizes(transcoders.sizes(), model_sizes(model))
    n_layers = model.cfg.n_layers
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


def _canonical(name: str | None) -> str | None:
    """A comparable model name: TransformerLens' official name, lower-cased, without the org."""
    if not name:
        return None
    from transformer_lens.loading_from_pretrained import get_official_model_name

    with contextlib.suppress(ValueError):
        name = get_official_model_name(name)
    return name.split("/")[-1].lower()


def _transcoders_model(ts: TranscoderSet) -> tuple[str | None, str]:
    """The model name a set was made for, and where it comes from (for messages)."""
    config = getattr(ts, "transcoder_config", None)
    if isinstance(config, TranscoderSetConfig):
        return config.model, f"transcoder config {config.name!r} ({config.where})"
    if isinstance(ts, PerLayerTranscoderSet):
        for layer, tc in enumerate(ts.transcoders):
            name = tc.cfg.metadata.model_name
            if name:
                return str(name), f"cfg.metadata.model_name of layer {layer}'s transcoder"
    return None, ""


def check_transcoders_match(
    model: HookedTransformer,
    transcoders: TranscoderSet | TranscoderSetConfig | str | os.PathLike[str],
    *,
    check_name: bool = True,
) -> None:
    """Check that transcoders were made for ``model``.

    Compares the model name (``model.cfg.model_name`` against the config's ``model`` or the
    transcoders' ``cfg.metadata.model_name``, through TransformerLens' official names, when both
    are known), the number of layers and the width; for a transcoder set also that every hook
    exists on the model (:func:`check_compatible`).

    Args:
        model: The model.
        transcoders: A transcoder set, a config, a config name or a YAML config path.
        check_name: Compare model names (turn off for a fine-tuned copy of the model).

    Raises:
        ValueError: The transcoders were made for another model (the message names both), or
            layers, widths or hooks do not fit.
    """
    if isinstance(transcoders, (str, os.PathLike)):
        transcoders = resolve_config(transcoders)
    if isinstance(transcoders, TranscoderSetConfig):
        made_for, where = transcoders.model, f"transcoder config {transcoders.name!r}"
    elif isinstance(transcoders, TranscoderSet):
        made_for, where = _transcoders_model(transcoders)
    else:
        raise TypeError(
            "check_transcoders_match: expected a TranscoderSet, a transcoder config or a config "
            f"name, got {type(transcoders).__name__}"
        )
    mine = model.cfg.model_name
    if check_name and made_for and _canonical(made_for) != _canonical(mine):
        raise ValueError(
            f"the transcoders were made for model {made_for!r} ({where}) but the model is "
            f"{mine!r}; load the matching model (sae_circuits.load_model"
            f"({made_for!r})) or transcoders made for {mine!r} (pass check_name=False for a "
            "fine-tuned copy with the same architecture)"
        )
    if isinstance(transcoders, TranscoderSetConfig):
        _check_config_sizes(model, transcoders)
        return
    check_compatible(model, transcoders)


def _check_config_sizes(model: HookedTransformer, config: TranscoderSetConfig) -> None:
    check_sizes(config.sizes(), model_sizes(model))
    for layer in range(model.cfg.n_layers):
        for suffix, which in ((config.hooks.input, "input"), (config.hooks.output, "output")):
            resolve_hook(
                model,
                f"blocks.{layer}.{suffix}",
                role=f"transcoder config {config.name!r} layer {layer} {which} hook",
            )
