"""Per-layer transcoder files of the public releases, read into SAELens transcoders.

Formats (``source.format`` of a transcoder config):

* ``circuit_tracer``: one ``.safetensors`` file per layer, as circuit-tracer and the
  ``mntss/*`` / ``mwhanna/*`` repositories write them: ``W_enc`` ``(F, d_in)``, ``W_dec``
  ``(F, d_out)`` (some releases, e.g. ``mntss/skip-transcoder-Llama-3.2-1B-131k-nobos``, store
  ``(d_out, F)``; the orientation is read from the shapes), ``b_enc`` ``(F,)``, ``b_dec``
  ``(d_out,)``, optional ``W_skip`` ``(d_out, d_in)`` (skip ``x @ W_skip.T``) and optional
  ``activation_function.threshold`` / ``threshold`` ``(F,)`` (JumpReLU). A TopK release
  (``facebook/crv-8b-instruct-transcoders``) has the same four tensors; that it is TopK, and its
  ``k``, come from the release's ``config.yaml`` or the transcoder config (``topk=``), or from a
  scalar integer tensor ``k`` that circuit-tracer's ``to_safetensors`` writes for TopK layers;
* ``gemmascope_npz``: GemmaScope's ``params.npz``: ``W_enc`` ``(d_in, F)``, ``W_dec``
  ``(F, d_out)``, ``b_enc``, ``b_dec``, ``threshold`` (JumpReLU);
* ``gemmascope2`` (SAELens' ``gemma_3`` conversion only, not a config format): Gemma Scope 2's
  ``params.safetensors``: ``w_enc`` ``(d_in, F)``, ``w_dec`` ``(F, d_out)``, ``b_enc``,
  ``b_dec``, ``threshold`` (JumpReLU) and, in the ``*_affine`` folders,
  ``affine_skip_connection`` ``(d_in, d_out)`` (skip ``x @ affine_skip_connection``);
* ``saelens``: a folder with ``cfg.json`` + ``sae_weights.safetensors`` (``SAE.load_from_disk``).

The result is a SAELens ``Transcoder`` / ``SkipTranscoder`` / ``JumpReLUTranscoder`` /
``JumpReLUSkipTranscoder`` or a :class:`~sae_circuits.transcoders.topk.TopKTranscoder` in
SAELens' orientation (``W_enc`` ``(d_in, F)``, ``W_dec`` ``(F, d_out)``), with the hooks, model
name and Neuronpedia id in ``cfg.metadata``.

Example:
    >>> tc = read_layer(Path("layer_3.safetensors"), "circuit_tracer", meta, device="cpu",
    ...                 dtype="float32")
    >>> tc.W_enc.shape
    torch.Size([2048, 131072])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_lens import (
    SAE,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    Transcoder,
    TranscoderConfig,
)
from safetensors.torch import load_file

from sae_circuits.transcoders.topk import TopKTranscoder, TopKTranscoderConfig

__all__ = ["SAELENS_FILES", "LayerMeta", "read_layer", "transcoder_classes"]

#: How SAELens' conversion functions lay out one sae_id's files: (format, file of ``path``).
SAELENS_FILES: dict[str | None, tuple[str, str]] = {
    "gemma_2_transcoder": ("gemmascope_npz", "{path}/params.npz"),
    "mwhanna_transcoder": ("circuit_tracer", "{path}"),
    "gemma_3": ("gemmascope2", "{path}/params.safetensors"),
    "sae_lens": ("saelens", "{path}"),
    None: ("saelens", "{path}"),
}

_THRESHOLD_KEYS = ("activation_function.threshold", "threshold")
_KNOWN = {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", "k", *_THRESHOLD_KEYS}


@dataclass(frozen=True)
class LayerMeta:
    """What a transcoder file does not say about itself (from the config).

    Attributes:
        layer: The layer.
        model_name: Model the transcoder was trained on.
        hook_name: Full input hook name.
        hook_name_out: Full output hook name.
        neuronpedia_id: Neuronpedia id, or ``None``.
    """

    layer: int
    model_name: str
    hook_name: str
    hook_name_out: str
    neuronpedia_id: str | None = None


def read_layer(
    path: Path,
    fmt: str,
    meta: LayerMeta,
    *,
    device: str,
    dtype: str,
    topk: int | None = None,
) -> Transcoder:
    """One layer's transcoder from a file (or a folder for ``fmt="saelens"``).

    Args:
        path: The file or folder.
        fmt: ``"circuit_tracer"``, ``"gemmascope_npz"``, ``"gemmascope2"`` or ``"saelens"``.
        meta: Layer, model and hooks to record in ``cfg.metadata``.
        device: Device of the weights.
        dtype: e.g. ``"float32"``.
        topk: ``circuit_tracer`` only: the layer is a TopK transcoder keeping this many features
            (a ``TopKTranscoder``); ``None``: ReLU or JumpReLU, as the file says (or TopK if the
            file holds a ``k`` tensor).

    Returns:
        The SAELens transcoder.

    Raises:
        ValueError: Missing or unknown tensors, shapes that do not fit, a ``k`` out of
            ``1..d_sae`` or disagreeing with ``topk``, a TopK file with a threshold or a skip
            connection (the message names the file).
    """
    if topk is not None and fmt != "circuit_tracer":
        raise ValueError(
            f"{str(path)!r}: topk= is for the circuit_tracer format, not {fmt!r} (a SAELens "
            "folder's cfg.json names its own architecture and k)"
        )
    if fmt == "saelens":
        sae = SAE.load_from_disk(path, device=device, dtype=dtype)
        if not isinstance(sae, Transcoder):
            raise ValueError(f"{str(path)!r} holds a {type(sae).__name__}, not a transcoder")
        _set_meta(sae, meta, keep_neuronpedia=True)
        return sae
    if fmt == "gemmascope_npz":
        with np.load(path) as arrays:
            tensors = {k: torch.from_numpy(np.array(arrays[k])) for k in arrays.files}
        native_enc = "d_in_first"
    elif fmt == "gemmascope2":
        tensors = _gemmascope2(load_file(str(path), device="cpu"), path)
        native_enc = "d_in_first"
    elif fmt == "circuit_tracer":
        tensors = load_file(str(path), device="cpu")
        native_enc = "F_first"
    else:
        raise ValueError(f"unknown transcoder file format {fmt!r}")
    return _build(tensors, path, native_enc, meta, device=device, dtype=dtype, topk=topk)


#: Gemma Scope 2's key names -> ours (as SAELens' gemma_3_sae_huggingface_loader maps them).
_GEMMASCOPE2_KEYS = {
    "w_enc": "W_enc",
    "w_dec": "W_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
}


def _gemmascope2(raw: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    unknown = sorted(set(raw) - {*_GEMMASCOPE2_KEYS, "affine_skip_connection"})
    if unknown:
        raise ValueError(
            f"{str(path)!r}: unknown tensors {unknown}; a Gemma Scope 2 params.safetensors holds "
            f"{', '.join(sorted(_GEMMASCOPE2_KEYS))} and optionally affine_skip_connection"
        )
    out = {ours: raw[theirs] for theirs, ours in _GEMMASCOPE2_KEYS.items() if theirs in raw}
    if "affine_skip_connection" in raw:  # (d_in, d_out); W_skip is (d_out, d_in)
        out["W_skip"] = raw["affine_skip_connection"].T.contiguous()
    return out


def _orient(
    t: torch.Tensor, want: tuple[int, int], native_transposed: bool, what: str
) -> torch.Tensor:
    """``t`` as ``want``; when both orientations fit (square), the format's native one wins."""
    shape = tuple(t.shape)
    flipped = (want[1], want[0])
    if native_transposed and shape == flipped:
        return t.T.contiguous()
    if shape == want:
        return t
    if shape == flipped:
        return t.T.contiguous()
    raise ValueError(f"{what} has shape {shape}; expected {want} or {flipped}")


def _build(
    tensors: Mapping[str, torch.Tensor],
    path: Path,
    native_enc: str,
    meta: LayerMeta,
    *,
    device: str,
    dtype: str,
    topk: int | None = None,
) -> Transcoder:
    where = str(path)
    if "log_thresholds" in tensors:
        raise ValueError(f"{where!r}: log_thresholds are not supported; store thresholds instead")
    unknown = sorted(set(tensors) - _KNOWN)
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec"} - set(tensors))
    if unknown or missing:
        raise ValueError(
            f"{where!r}: "
            + "; ".join(
                ([f"missing tensors {missing}"] if missing else [])
                + ([f"unknown tensors {unknown}"] if unknown else [])
            )
            + f"; a transcoder file holds {', '.join(sorted(_KNOWN))}"
        )
    b_enc, b_dec = tensors["b_enc"], tensors["b_dec"]
    if b_enc.dim() != 1 or b_dec.dim() != 1:
        raise ValueError(f"{where!r}: b_enc and b_dec must be vectors")
    F, d_out = b_enc.shape[0], b_dec.shape[0]
    enc = tensors["W_enc"]
    if enc.dim() != 2 or F not in enc.shape:
        raise ValueError(
            f"{where!r}: W_enc has shape {tuple(enc.shape)}; expected (d_sae, d_in) or "
            f"(d_in, d_sae) with d_sae = {F} (the length of b_enc)"
        )
    d_in = enc.shape[1] if enc.shape[0] == F else enc.shape[0]
    try:
        state: dict[str, torch.Tensor] = {
            "W_enc": _orient(enc, (d_in, F), native_enc == "F_first", "W_enc"),
            "W_dec": _orient(tensors["W_dec"], (F, d_out), False, "W_dec"),
            "b_enc": b_enc,
            "b_dec": b_dec,
        }
        threshold = next((tensors[k] for k in _THRESHOLD_KEYS if k in tensors), None)
        if threshold is not None:
            if tuple(threshold.shape) != (F,):
                raise ValueError(f"threshold has shape {tuple(threshold.shape)}; expected ({F},)")
            state["threshold"] = threshold
        if "W_skip" in tensors:
            skip = tensors["W_skip"]
            if tuple(skip.shape) != (d_out, d_in):
                raise ValueError(
                    f"W_skip has shape {tuple(skip.shape)}; expected ({d_out}, {d_in})"
                )
            state["W_skip"] = skip
    except ValueError as exc:
        raise ValueError(
            f"{where!r}: {exc} (d_sae {F} from b_enc, d_out {d_out} from b_dec)"
        ) from exc
    topk = _topk_of(tensors, topk, state, where)
    extra: dict[str, Any] = {} if topk is None else {"k": topk}
    cls, cfg_cls = transcoder_classes(
        jumprelu="threshold" in state, skip="W_skip" in state, topk=topk is not None
    )
    try:
        cfg = cfg_cls(
            d_in=d_in,
            d_sae=F,
            d_out=d_out,
            dtype=dtype,
            device="meta",
            apply_b_dec_to_input=False,
            normalize_activations="none",
            **extra,
        )
    except ValueError as exc:
        raise ValueError(f"{where!r}: {exc} (d_sae {F} from b_enc)") from exc
    sae = cls(cfg)  # on the meta device: no memory for random initial weights
    sae.cfg.device = device
    sae.process_state_dict_for_loading(state)
    sae.load_state_dict(state, assign=True)
    sae = sae.to(device=device, dtype=getattr(torch, dtype))
    _set_meta(sae, meta, keep_neuronpedia=False)
    return sae


def _topk_of(
    tensors: Mapping[str, torch.Tensor],
    topk: int | None,
    state: Mapping[str, torch.Tensor],
    where: str,
) -> int | None:
    """The layer's ``k`` (``None``: not TopK) from ``topk=`` and the file's ``k`` tensor."""
    if "k" in tensors:
        t = tensors["k"]
        if t.numel() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(
                f"{where!r}: tensor 'k' must be one integer (the TopK k, as circuit-tracer writes "
                f"it), got shape {tuple(t.shape)} and dtype {t.dtype}"
            )
        k_file = int(t.item())
        if topk is not None and topk != k_file:
            raise ValueError(
                f"{where!r}: the file's k = {k_file} disagrees with the config's k = {topk}"
            )
        topk = k_file
    if topk is None:
        return None
    if "threshold" in state:
        raise ValueError(
            f"{where!r}: a TopK transcoder (k = {topk}) has no JumpReLU threshold, but the file "
            f"holds {next(k for k in _THRESHOLD_KEYS if k in tensors)!r}"
        )
    if "W_skip" in state:
        raise ValueError(
            f"{where!r}: TopK transcoders with a skip connection (W_skip) are not supported"
        )
    return topk


def transcoder_classes(
    *, jumprelu: bool, skip: bool, topk: bool = False
) -> tuple[type[Transcoder], type[TranscoderConfig]]:
    """The transcoder class and config class of a kind.

    Args:
        jumprelu: JumpReLU (a threshold per feature).
        skip: With a linear skip connection.
        topk: TopK (:class:`~sae_circuits.transcoders.topk.TopKTranscoder`; its config needs
            ``k``); neither JumpReLU nor skip.

    Returns:
        ``(SAE class, config class)``: SAELens' ``Transcoder`` / ``JumpReLUTranscoder`` /
        ``SkipTranscoder`` / ``JumpReLUSkipTranscoder`` or ``TopKTranscoder``.

    Raises:
        ValueError: ``topk`` together with ``jumprelu`` or ``skip``.
    """
    if topk:
        if jumprelu or skip:
            raise ValueError(
                "TopK transcoders have neither a JumpReLU threshold nor a skip connection"
            )
        return TopKTranscoder, TopKTranscoderConfig
    return _KINDS[(jumprelu, skip)]


_KINDS: dict[tuple[bool, bool], tuple[type[Transcoder], type[TranscoderConfig]]] = {
    (False, False): (Transcoder, TranscoderConfig),
    (True, False): (JumpReLUTranscoder, JumpReLUTranscoderConfig),
    (False, True): (SkipTranscoder, SkipTranscoderConfig),
    (True, True): (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig),
}


def _set_meta(sae: Transcoder, meta: LayerMeta, *, keep_neuronpedia: bool) -> None:
    md: Any = sae.cfg.metadata
    md.hook_name = meta.hook_name
    md.hook_name_out = meta.hook_name_out
    if not md.model_name:
        md.model_name = meta.model_name
    if meta.neuronpedia_id and not (keep_neuronpedia and md.neuronpedia_id):
        md.neuronpedia_id = meta.neuronpedia_id
