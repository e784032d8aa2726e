"""Hook resolution and scoped hooks on a ``HookedTransformer``.

Transcoders name the activations they read and write by TransformerLens hook names
(``blocks.3.hook_resid_mid``, ``blocks.3.ln2.hook_normalized``, ``blocks.3.hook_mlp_out``).
Public transcoder releases (the Llama and Qwen transcoders) also use ``blocks.{l}.mlp.hook_in`` /
``blocks.{l}.mlp.hook_out``: the input and output of the MLP module. A plain ``HookedTransformer``
has no such hook points, so we resolve them to PyTorch forward pre-/post-hooks on
``blocks.{l}.mlp`` for the duration of a call. The MLP's input is the output of ``ln2``
*after* its weight (and bias); TransformerLens 3.x's ``ln2.hook_normalized`` is taken before the
weight, so it is not the same activation.

Every hook added here is a PyTorch ``RemovableHandle`` kept by :func:`scoped_hooks` and removed in
``finally``: hooks the user added to the model before (TransformerLens' own, permanent or not)
are never touched.

Example:
    >>> site = resolve_hook(model, "blocks.0.mlp.hook_in")
    >>> with scoped_hooks(model, [(site, lambda x: x * 0)]):
    ...     logits = model(tokens)           # MLP 0 sees zeros
    >>> # here the model is exactly as before
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformer_lens import HookedTransformer

__all__ = [
    "INPUT_HOOK_SUFFIXES",
    "OUTPUT_HOOK_SUFFIXES",
    "HookNotFoundError",
    "HookSite",
    "resolve_hook",
    "scoped_hooks",
]

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]

#: Hook points (relative to ``blocks.{l}.``) a transcoder may read from: the MLP's input or the
#: residual stream just before the MLP's norm.
INPUT_HOOK_SUFFIXES = ("hook_resid_mid", "hook_mlp_in", "ln2.hook_normalized", "mlp.hook_in")
#: Hook points a transcoder may write to: what the MLP adds to the residual stream.
OUTPUT_HOOK_SUFFIXES = ("hook_mlp_out", "mlp.hook_out")

_VIRTUAL = {"mlp.hook_in": "pre", "mlp.hook_out": "post"}
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class HookNotFoundError(ValueError):
    """A hook name that the model does not have (the message lists close valid names)."""


@dataclass(frozen=True)
class HookSite:
    """Where a named activation lives in a model.

    Attributes:
        name: The full hook name, e.g. ``"blocks.3.mlp.hook_in"``.
        layer: The block index, or ``None`` for hooks outside the blocks.
        module_name: Name of the module the PyTorch hook is attached to.
        kind: ``"hook"`` for a TransformerLens ``HookPoint`` (its output is the activation),
            ``"pre"`` for a module's first input, ``"post"`` for a module's output.
    """

    name: str
    layer: int | None
    module_name: str
    kind: Literal["hook", "pre", "post"]


def _valid_names(model: HookedTransformer) -> list[str]:
    names = list(model.hook_dict)
    for layer in range(model.cfg.n_layers):
        if hasattr(model.blocks[layer], "mlp"):
            names += [f"blocks.{layer}.{suffix}" for suffix in _VIRTUAL]
    return names


def resolve_hook(
    model: HookedTransformer,
    name: str,
    *,
    role: str = "hook",
    allowed_suffixes: Sequence[str] | None = None,
) -> HookSite:
    """Check that ``name`` exists on ``model`` and say how to hook it.

    Args:
        model: The model.
        name: A full hook name (``blocks.{l}.<suffix>`` or a top-level TransformerLens hook).
        role: Words used in error messages, e.g. ``"layer 3 transcoder input hook"``.
        allowed_suffixes: If given, the part after ``blocks.{l}.`` must be one of these.

    Returns:
        The resolved :class:`HookSite`.

    Raises:
        HookNotFoundError: The model has no such hook (the message names close valid names), or
            the hook is not one of ``allowed_suffixes``.
    """
    match = _LAYER_RE.match(name)
    layer = int(match.group(1)) if match else None
    suffix = match.group(2) if match else name
    if allowed_suffixes is not None and suffix not in allowed_suffixes:
        raise HookNotFoundError(
            f"{role} {name!r} is not a supported hook for this role; "
            f"valid choices are blocks.{{layer}}.{{{', '.join(allowed_suffixes)}}}"
        )
    if suffix in _VIRTUAL and layer is not None:
        if layer < model.cfg.n_layers and hasattr(model.blocks[layer], "mlp"):
            kind: Literal["pre", "post"] = "pre" if _VIRTUAL[suffix] == "pre" else "post"
            return HookSite(name, layer, f"blocks.{layer}.mlp", kind)
    elif name in model.hook_dict:
        return HookSite(name, layer, name, "hook")
    close = difflib.get_close_matches(name, _valid_names(model), n=5, cutoff=0.6)
    hint = f"; close valid names: {', '.join(close)}" if close else ""
    where = f" (the model has {model.cfg.n_layers} layers)" if layer is not None else ""
    raise HookNotFoundError(f"{role} {name!r} is not a hook of this model{where}{hint}")


def _attach(module: nn.Module, site: HookSite, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
    if site.kind == "pre":

        def pre_hook(_module: nn.Module, args: tuple) -> tuple | None:
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return module.register_forward_pre_hook(pre_hook)

    def post_hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return fn(output)

    return module.register_forward_hook(post_hook)


@contextmanager
def scoped_hooks(
    model: HookedTransformer, hooks: Sequence[tuple[HookSite | str, HookFn]]
) -> Iterator[None]:
    """Add forward hooks for the duration of a ``with`` block.

    Args:
        model: The model.
        hooks: ``(site, fn)`` pairs; ``fn(activation)`` returns a replacement tensor or ``None``
            to leave the activation as it is. Several hooks on one site run in the given order.

    Yields:
        Nothing; on exit (normal or by exception) every hook added here is removed.
    """
    modules = dict(model.named_modules())
    handles = []
    try:
        for site, fn in hooks:
            if isinstance(site, str):
                site = resolve_hook(model, site)
            handles.append(_attach(modules[site.module_name], site, fn))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()
