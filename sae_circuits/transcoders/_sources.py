"""Reading a transcoder set from what a user holds: a folder (SAELens per-layer or CLT) or objects.

Shared by :func:`~sae_circuits.transcoders.load_transcoders` (a folder given directly) and the
config loader (a config whose ``source`` is a local folder or package data).

Example:
    >>> ts = load_source("tc", input_hook=None, output_hook=None, device="cpu", dtype=None,
    ...                  lazy_decoder=False, lazy_encoder=False)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_lens import SAE, Transcoder

from sae_circuits.transcoders._clt_files import is_clt_folder
from sae_circuits.transcoders.clt import CrossLayerTranscoderSet
from sae_circuits.transcoders.clt_sae import ARCHITECTURE, CrossLayerTranscoder, HookSpec
from sae_circuits.transcoders.sets import PerLayerTranscoderSet, TranscoderSet

__all__ = ["load_source"]

_LAYER_DIR = re.compile(r"^layer_(\d+)$")


def load_source(
    source: Any,
    *,
    input_hook: HookSpec | None,
    output_hook: HookSpec | None,
    device: str | None,
    dtype: str | None,
    lazy_decoder: bool,
    lazy_encoder: bool,
) -> TranscoderSet:
    if isinstance(source, TranscoderSet):
        return source
    if isinstance(source, CrossLayerTranscoder):
        return CrossLayerTranscoderSet.from_sae(
            source, input_hook=input_hook, output_hook=output_hook
        )
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if folder.is_dir() and _is_clt(folder):
            return CrossLayerTranscoderSet.from_folder(
                folder,
                input_hook=input_hook,
                output_hook=output_hook,
                lazy_decoder=lazy_decoder,
                lazy_encoder=lazy_encoder,
                device=device or "cpu",
                dtype=dtype,
            )
        transcoders = _load_source(folder, device=device, dtype=dtype)
    elif isinstance(source, Sequence):
        transcoders = list(source)
        if any(isinstance(tc, CrossLayerTranscoder) for tc in transcoders):
            raise TypeError(
                "load_transcoders: a CrossLayerTranscoder covers every layer by itself; pass it "
                "alone, not in a sequence"
            )
    else:
        raise TypeError(
            f"load_transcoders: unsupported source of type {type(source).__name__}; expected a "
            "folder path, a sequence of SAELens transcoders, a CrossLayerTranscoder, or a "
            "TranscoderSet"
        )
    if not isinstance(input_hook, (str, type(None))) or not isinstance(
        output_hook, (str, type(None))
    ):
        raise TypeError("load_transcoders: per-layer transcoders take hook suffixes (str) only")
    return PerLayerTranscoderSet(transcoders, input_hook=input_hook, output_hook=output_hook)


def _is_clt(folder: Path) -> bool:
    """A public-layout CLT folder, or a SAELens folder whose cfg.json is a CLT."""
    if is_clt_folder(folder):
        return True
    cfg = folder / "cfg.json"
    if not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and raw.get("architecture") == ARCHITECTURE


def _load_source(folder: Path, *, device: str | None, dtype: str | None) -> list[Transcoder]:
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
