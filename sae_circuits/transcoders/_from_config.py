"""Loading the transcoders a :class:`~sae_circuits.transcoders.configs.TranscoderSetConfig` names.

Routes, by the config's source:

* SAELens release (per-layer): ``SAE.from_pretrained(release, sae_id)`` per layer. The files it
  will read are first fetched through :class:`~sae_circuits.transcoders._hub.Fetcher` (the same
  Hugging Face cache SAELens uses) so that a missing file is reported by name. With a local copy
  (``local_dir=`` / ``SAE_CIRCUITS_TRANSCODERS_DIR``) the same files are read by our own readers
  (:mod:`sae_circuits.transcoders._formats`), as SAELens cannot read a local copy of a release.
  Gemma Scope 2 (SAELens' ``gemma_3`` conversion) is always read by our reader from the cached
  ``params.safetensors``: SAELens' loader reads its tensor shapes over HTTP, never offline.
* Hugging Face repository: per-layer files through ``hf_hub_download`` and our readers (for the
  ``circuit_tracer`` format also the release's ``config.yaml`` next to them, when there is one:
  its ``activation: topk`` and ``k`` make the layers TopK transcoders, :func:`release_topk`); a CLT
  folder (``W_enc_{l}`` / ``W_dec_{l}.safetensors`` for ``l < n_layers``) file by file, then
  :meth:`CrossLayerTranscoderSet.from_folder` on the snapshot folder.
* Local folder or package data: ``load_transcoders(folder)``.

The hooks of the config are set on every layer; the loaded set's layer count and width are
checked against the config, and the config is recorded as ``transcoders.transcoder_config``.

Example:
    >>> ts = load_from_config(get_config("qwen3-0.6b-lowl0"), device="cpu")
"""

from __future__ import annotations

import logging
import os
import posixpath
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from sae_lens import SAE, Transcoder

from sae_circuits.core.devices import default_device
from sae_circuits.transcoders._formats import SAELENS_FILES, LayerMeta, read_layer
from sae_circuits.transcoders._hub import Fetcher, WeightsUnavailableError, resolve_local_dir
from sae_circuits.transcoders._sizes import check_sizes
from sae_circuits.transcoders._sources import load_source
from sae_circuits.transcoders.clt import CrossLayerTranscoderSet
from sae_circuits.transcoders.configs import (
    HubSource,
    LocalSource,
    SAELensSource,
    TranscoderSetConfig,
    check_saelens_source,
    package_folder,
)
from sae_circuits.transcoders.sets import PerLayerTranscoderSet, TranscoderSet

__all__ = ["load_from_config", "release_topk"]

logger = logging.getLogger(__name__)


def load_from_config(
    config: TranscoderSetConfig,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    lazy_decoder: bool = True,
    lazy_encoder: bool = False,
    local_dir: str | os.PathLike[str] | None = None,
    input_hook: str | None = None,
    output_hook: str | None = None,
) -> TranscoderSet:
    """Load the transcoders of ``config`` (see the module docstring for the routes).

    Args:
        config: The config.
        device: Default: ``"cuda"`` if available, else ``"cpu"``.
        dtype: Per-layer default ``"float32"``; CLT default the stored dtype.
        lazy_decoder, lazy_encoder: CLTs only (see ``CrossLayerTranscoderSet.from_folder``).
        local_dir: A local copy of the source repository's files (instead of the cache).
        input_hook, output_hook: Override the config's hook suffixes.

    Returns:
        A :class:`PerLayerTranscoderSet` or :class:`CrossLayerTranscoderSet`.

    Raises:
        WeightsUnavailableError: A file can be neither found nor downloaded (says how to provide).
        ValueError: The weights do not fit the config (layer count, width), or a bad config.
    """
    device = device or default_device()
    dtype_name = _dtype_name(dtype)
    fetch = Fetcher(config.name, resolve_local_dir(config.name, local_dir))
    hooks_in = input_hook or config.hooks.input
    hooks_out = output_hook or config.hooks.output
    src = config.source
    if isinstance(src, LocalSource):
        ts = _local(config, src, device=device, dtype=dtype, lazy=(lazy_decoder, lazy_encoder))
        ts = _rehook(ts, hooks_in, hooks_out)
    elif config.kind == "cross_layer":
        assert isinstance(src, HubSource)
        folder = _clt_folder(config, src, fetch)
        ts = CrossLayerTranscoderSet.from_folder(
            folder,
            input_hook=hooks_in,
            output_hook=hooks_out,
            lazy_decoder=lazy_decoder,
            lazy_encoder=lazy_encoder,
            device=device,
            dtype=dtype,
        )
    else:
        topk = release_topk(config, fetch)
        layers = [
            _layer(config, layer, fetch, hooks_in, hooks_out, device, dtype_name or "float32", topk)
            for layer in range(config.n_layers)
        ]
        ts = PerLayerTranscoderSet(layers, input_hook=hooks_in, output_hook=hooks_out)
    check_sizes(ts.sizes(), config.sizes())
    ts.transcoder_config = config  # type: ignore[attr-defined]
    logger.info(
        "loaded transcoder config %s (%s, %d layers)", config.name, config.kind, ts.n_layers
    )
    return ts


def _dtype_name(dtype: str | torch.dtype | None) -> str | None:
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; e.g. 'float32', 'bfloat16'")
    return name


def _meta(config: TranscoderSetConfig, layer: int, hin: str, hout: str) -> LayerMeta:
    return LayerMeta(
        layer=layer,
        model_name=config.model,
        hook_name=f"blocks.{layer}.{hin}",
        hook_name_out=f"blocks.{layer}.{hout}",
        neuronpedia_id=config.neuronpedia_id(layer),
    )


def _layer(
    config: TranscoderSetConfig,
    layer: int,
    fetch: Fetcher,
    hin: str,
    hout: str,
    device: str,
    dtype: str,
    topk: int | None = None,
) -> Transcoder:
    src = config.source
    meta = _meta(config, layer, hin, hout)
    if isinstance(src, HubSource):
        assert src.format is not None
        path = _per_layer_path(src, layer, fetch)
        return read_layer(path, src.format, meta, device=device, dtype=dtype, topk=topk)
    assert isinstance(src, SAELensSource)
    return _saelens_layer(config, src, layer, fetch, meta, device, dtype)


def release_topk(config: TranscoderSetConfig, fetch: Fetcher) -> int | None:
    """The ``k`` of a TopK release in circuit-tracer's format, or ``None`` if it is not TopK.

    circuit-tracer describes a per-layer release by a ``config.yaml`` next to its
    ``layer_{l}.safetensors`` files; a TopK release says ``activation: topk`` there and gives ``k``
    (``facebook/crv-8b-instruct-transcoders`` gives no ``k``; circuit-tracer hardcodes 128 for it,
    our config gives ``source.k: 128``). That file is read when the repository (or the local copy)
    has it; the config's ``source.activation`` / ``source.k`` must agree with it and fill in what
    it leaves out.

    Args:
        config: A per-layer config (other sources give ``None``).
        fetch: Where the files come from.

    Returns:
        ``k``, or ``None`` for ReLU / JumpReLU layers.

    Raises:
        ValueError: The two disagree (activation or ``k``), the release's ``k`` is not a positive
            integer, or a TopK release has no ``k`` anywhere (the message names both places).
    """
    src = config.source
    if not isinstance(src, HubSource) or src.format != "circuit_tracer" or src.files is None:
        return None
    folder = posixpath.dirname(src.files)
    name = posixpath.join(folder, "config.yaml") if folder else "config.yaml"
    release: dict[str, Any] = {}
    where = f"the release's {name} ({src.repo})"
    try:
        path = fetch.file(src.repo, name, src.revision)
    except WeightsUnavailableError:
        logger.debug(
            "%s: no %s; the activation is what the config and the files say", src.repo, name
        )
        where = f"the release's {name} ({src.repo}: not in the repository)"
    else:
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{str(path)!r} ({src.repo}/{name}): not valid YAML: {exc}") from exc
        release = raw if isinstance(raw, dict) else {}
    act, k = release.get("activation"), release.get("k")
    if act is not None and act != "topk" and src.activation == "topk":
        raise ValueError(
            f"{config.where}: source.activation is 'topk' but {where} says activation: {act!r}"
        )
    if act != "topk" and src.activation != "topk":
        return None
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
        raise ValueError(f"{where}: k must be a positive integer, got {k!r}")
    if src.k is not None and k is not None and src.k != k:
        raise ValueError(f"{config.where}: source.k = {src.k} but {where} says k: {k}")
    k = src.k if src.k is not None else k
    if k is None:
        said = (
            f"{where} says activation: topk but gives no k, and the config has no source.k"
            if act == "topk"
            else f"source.activation is topk but neither source.k nor {where} gives k"
        )
        raise ValueError(
            f"{config.where}: missing k: {said}; set source.k to the number of features the "
            "release keeps per position (an integer in 1..d_sae)"
        )
    if src.activation is None:
        logger.info("%s says activation: topk (k = %d): loading TopK transcoders", where, k)
    return k


def _per_layer_path(src: HubSource, layer: int, fetch: Fetcher) -> Path:
    name = src.layer_file(layer)
    if src.format != "saelens":
        return fetch.file(src.repo, name, src.revision)
    cfg = fetch.file(src.repo, f"{name}/cfg.json", src.revision)
    fetch.file(src.repo, f"{name}/sae_weights.safetensors", src.revision)
    return cfg.parent


def _saelens_layer(
    config: TranscoderSetConfig,
    src: SAELensSource,
    layer: int,
    fetch: Fetcher,
    meta: LayerMeta,
    device: str,
    dtype: str,
) -> Transcoder:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    if layer == 0:
        check_saelens_source(config)
    lookup = get_pretrained_saes_directory()[src.release]
    sae_id = src.sae_ids[layer]
    path = lookup.saes_map[sae_id]
    overrides: dict[str, Any] = dict(lookup.config_overrides or {})
    revision = overrides.get("revision")
    conversion = lookup.conversion_func
    layout = SAELENS_FILES.get(conversion)
    if fetch.local_dir is not None:
        if layout is None:
            raise ValueError(
                f"{config.where}: a local copy (local_dir / SAE_CIRCUITS_TRANSCODERS_DIR) is not "
                f"supported for SAELens release {src.release!r} (conversion {conversion!r}); "
                "use the Hugging Face cache (HF_HUB_CACHE) instead"
            )
        fmt, pattern = layout
        local = fetch.local_dir / pattern.format(path=path)
        if not local.exists():
            raise WeightsUnavailableError(
                f"{str(local)!r} does not exist: the local copy {str(fetch.local_dir)!r} of "
                f"{lookup.repo_id} for transcoder config {config.name!r} must hold the file of "
                f"sae_id {sae_id!r} at {pattern.format(path=path)!r}"
            )
        return read_layer(local, fmt, meta, device=device, dtype=dtype)
    if conversion == "gemma_3":
        # SAELens' gemma_3 loader reads the file's tensor shapes by HTTP range requests, past the
        # cache (never offline): the same params.safetensors, through the cache, is read by our
        # reader instead (the same key mapping: w_enc, w_dec, ..., affine_skip_connection.T)
        assert layout is not None
        fmt, pattern = layout
        file = fetch.file(lookup.repo_id, pattern.format(path=path), revision)
        return read_layer(file, fmt, meta, device=device, dtype=dtype)
    _prefetch(fetch, lookup.repo_id, path, conversion, revision)
    try:
        with warnings.catch_warnings():
            # load_model already loads models without processing, as this warning asks
            warnings.filterwarnings("ignore", message=r"(?s).*model_from_pretrained_kwargs")
            sae = SAE.from_pretrained(src.release, sae_id, device=device, dtype=dtype)
    except WeightsUnavailableError:
        raise
    except Exception as exc:
        raise RuntimeError(
            f"{config.where}: layer {layer}: SAE.from_pretrained({src.release!r}, {sae_id!r}) "
            f"failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(sae, Transcoder):
        raise ValueError(
            f"{config.where}: SAELens release {src.release!r} sae_id {sae_id!r} is a "
            f"{type(sae).__name__}, not a transcoder"
        )
    md: Any = sae.cfg.metadata
    if (md.hook_name, md.hook_name_out) != (meta.hook_name, meta.hook_name_out):
        logger.debug(
            "layer %d: hooks %s -> %s from %s replace SAELens' %s -> %s",
            layer, meta.hook_name, meta.hook_name_out, config.where, md.hook_name, md.hook_name_out,
        )  # fmt: skip
    md.hook_name, md.hook_name_out = meta.hook_name, meta.hook_name_out
    if not md.model_name:
        md.model_name = meta.model_name
    if not md.neuronpedia_id and meta.neuronpedia_id:
        md.neuronpedia_id = meta.neuronpedia_id
    return sae


def _prefetch(
    fetch: Fetcher, repo: str, path: str, conversion: str | None, revision: str | None
) -> None:
    """Fetch the files SAELens' loader will read, so a missing one is reported by name."""
    if conversion == "gemma_2_transcoder":
        fetch.file(repo, f"{path}/params.npz", revision)
    elif conversion == "mwhanna_transcoder":
        try:
            fetch.file(repo, "wandb-config.yaml")
        except WeightsUnavailableError as missing:
            try:
                fetch.file(repo, "wanb-config.yaml")  # a typo some releases have
            except WeightsUnavailableError:
                raise missing from missing.__cause__
        try:
            fetch.file(repo, "config.yaml")  # not in every release (SAELens then uses the repo id)
        except WeightsUnavailableError:
            logger.debug("%s: no config.yaml", repo)
        fetch.file(repo, path, revision)
    elif conversion in (None, "sae_lens"):
        fetch.file(repo, f"{path}/cfg.json", revision)
        fetch.file(repo, f"{path}/sae_weights.safetensors", revision)


def _clt_folder(config: TranscoderSetConfig, src: HubSource, fetch: Fetcher) -> Path:
    sub = f"{src.subfolder.strip('/')}/" if src.subfolder else ""
    first: Path | None = None
    for layer in range(config.n_layers):
        for kind in ("enc", "dec"):
            path = fetch.file(src.repo, f"{sub}W_{kind}_{layer}.safetensors", src.revision)
            first = first or path
    assert first is not None
    return first.parent


def _local(
    config: TranscoderSetConfig,
    src: LocalSource,
    *,
    device: str,
    dtype: str | torch.dtype | None,
    lazy: tuple[bool, bool],
) -> TranscoderSet:
    if src.package is not None:
        folder = package_folder(src.package) / src.path
    elif not Path(src.path).is_absolute() and config.path is not None:
        folder = config.path.parent / src.path
    else:
        folder = Path(src.path).expanduser()
    if not folder.is_dir():
        where = f"package {src.package!r}, " if src.package else ""
        raise FileNotFoundError(
            f"{config.where}: the transcoders' folder {str(folder)!r} ({where}source.path "
            f"{src.path!r}) does not exist"
        )
    ts = load_source(
        folder,
        input_hook=None,
        output_hook=None,
        device=device,
        dtype=_dtype_name(dtype) or ("float32" if config.kind == "per_layer" else None),
        lazy_decoder=lazy[0],
        lazy_encoder=lazy[1],
    )
    want = PerLayerTranscoderSet if config.kind == "per_layer" else CrossLayerTranscoderSet
    if not isinstance(ts, want):
        raise ValueError(
            f"{config.where}: kind is {config.kind} but {str(folder)!r} holds a {type(ts).__name__}"
        )
    return ts


def _rehook(ts: TranscoderSet, hin: str, hout: str) -> TranscoderSet:
    """The config's hooks on every layer of a set loaded from a folder."""
    ins = tuple(f"blocks.{layer}.{hin}" for layer in range(ts.n_layers))
    outs = tuple(f"blocks.{layer}.{hout}" for layer in range(ts.n_layers))
    if (ins, outs) != (ts.input_hooks, ts.output_hooks):
        logger.info("setting the config's hooks %s -> %s on every layer", hin, hout)
        if isinstance(ts, PerLayerTranscoderSet):
            return PerLayerTranscoderSet(ts.transcoders, input_hook=hin, output_hook=hout)
        ts.input_hooks, ts.output_hooks = ins, outs
    return ts
