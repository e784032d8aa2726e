"""``load_transcoders``: one entry point that turns what a researcher has into a transcoder set.

Accepted sources:

* a folder holding ``layer_{i}/`` SAELens transcoder folders (``cfg.json`` +
  ``sae_weights.safetensors``, as ``SAE.save_model`` writes them): each is loaded with
  ``SAE.load_from_disk``, so the class comes from the SAELens registry (``architecture`` in
  ``cfg.json``);
* a sequence of SAELens ``Transcoder`` / ``SkipTranscoder`` / ``JumpReLUTranscoder`` objects
  (index = layer);
* an existing :class:`~sae_circuits.transcoders.sets.TranscoderSet` (returned as is).

Example:
    >>> import sae_circuits as sc
    >>> transcoders = sc.load_transcoders("path/to/folder")
    >>> transcoders.input_hooks[:2]
    ('blocks.0.mlp.hook_in', 'blocks.1.mlp.hook_in')
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_lens import SAE, Transcoder

from sae_circuits.transcoders.sets import PerLayerTranscoderSet, TranscoderSet

__all__ = ["load_transcoders"]

_LAYER_DIR = re.compile(r"^layer_(\d+)$")


def load_transcoders(
    source: str | os.PathLike[str] | Sequence[Transcoder] | TranscoderSet,
    *,
    input_hook: str | None = None,
    output_hook: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> TranscoderSet:
    """Load the transcoders that replace a model's MLPs.

    Args:
        source: A folder of ``layer_{i}/`` SAELens transcoder folders, a sequence of SAELens
            transcoders (index = layer), or a transcoder set.
        input_hook: Override of every layer's input hook suffix (e.g. ``"mlp.hook_in"``);
            default: each transcoder's ``cfg.metadata.hook_name``.
        output_hook: Override of every layer's output hook suffix (e.g. ``"hook_mlp_out"``);
            default: each transcoder's ``cfg.metadata.hook_name_out``.
        device: Device to load weights to (default: the saved config's, usually ``"cpu"``).
        dtype: dtype to load weights as, e.g. ``"float32"`` (default: the saved config's).

    Returns:
        A :class:`TranscoderSet` whose hooks are checked against a model when it is used.

    Raises:
        FileNotFoundError: The folder does not exist or holds no ``layer_{i}`` folders.
        ValueError: Layer folders are not numbered ``0..L-1`` or a folder is not a transcoder.
        TypeError: ``source`` is of an unsupported type.
    """
    if isinstance(source, TranscoderSet):
        return source
    if isinstance(source, (str, os.PathLike)):
        transcoders = _load_folder(Path(source), device=device, dtype=dtype)
    elif isinstance(source, Sequence):
        transcoders = list(source)
    else:
        raise TypeError(
            f"load_transcoders: unsupported source of type {type(source).__name__}; expected a "
            "folder path, a sequence of SAELens transcoders, or a TranscoderSet"
        )
    return PerLayerTranscoderSet(transcoders, input_hook=input_hook, output_hook=output_hook)


def _load_folder(folder: Path, *, device: str | None, dtype: str | None) -> list[Transcoder]:
    if not folder.is_dir():
        raise FileNotFoundError(f"load_transcoders: {str(folder)!r} is not a folder")
    layers: dict[int, Path] = {}
    for child in folder.iterdir():
        match = _LAYER_DIR.match(child.name)
        if match and child.is_dir():
            layers[int(match.group(1))] = child
    if not layers:
        raise FileNotFoundError(
            f"load_transcoders: {str(folder)!r} holds no layer_{{i}}/ transcoder folders "
            "(each with cfg.json and sae_weights.safetensors, as SAE.save_model writes them)"
        )
    expected = list(range(len(layers)))
    if sorted(layers) != expected:
        missing = sorted(set(range(max(layers) + 1)) - set(layers))
        raise ValueError(
            f"load_transcoders: {str(folder)!r} has layer folders {sorted(layers)}; expected "
            f"layer_0 ... layer_{max(layers)} (missing: {', '.join(f'layer_{m}' for m in missing)})"
        )
    kwargs: dict[str, Any] = {}
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = dtype
    out = []
    for layer in expected:
        path = layers[layer]
        for needed in ("cfg.json", "sae_weights.safetensors"):
            if not (path / needed).is_file():
                raise FileNotFoundError(f"load_transcoders: {str(path / needed)!r} is missing")
        sae = SAE.load_from_disk(path, **kwargs)
        if not isinstance(sae, Transcoder):
            raise ValueError(
                f"load_transcoders: {str(path)!r} holds a {type(sae).__name__} "
                f"(architecture {sae.cfg.architecture()!r}), not a transcoder"
            )
        out.append(sae)
    return out
