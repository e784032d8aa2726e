"""``load_transcoders``: one entry point that turns what a researcher has into a transcoder set.

Accepted sources:

* a folder holding ``layer_{i}/`` SAELens transcoder folders (``cfg.json`` +
  ``sae_weights.safetensors``, as ``SAE.save_model`` writes them): each is loaded with
  ``SAE.load_from_disk``, so the class comes from the SAELens registry (``architecture`` in
  ``cfg.json``);
* a sequence of SAELens ``Transcoder`` / ``SkipTranscoder`` / ``JumpReLUTranscoder`` objects
  (index = layer);
* a cross-layer transcoder (CLT): a folder in the public per-layer layout (``W_enc_{l}`` /
  ``W_dec_{l}.safetensors`` + ``config.yaml``, as the ``mntss/clt-*`` releases), a folder written
  by ``CrossLayerTranscoder.save_model``, or a
  :class:`~sae_circuits.transcoders.clt_sae.CrossLayerTranscoder` object; decoders of folders are
  read lazily (only active features' rows are materialised), see ``docs/clt.md``;
* an existing :class:`~sae_circuits.transcoders.sets.TranscoderSet` (returned as is);
* the name of a shipped transcoder config (``"gemma-2-2b-gemmascope"``, ``"qwen3-4b"``,
  ``"toy-facts"``, ...), the path of a YAML config file, or a
  :class:`~sae_circuits.transcoders.configs.TranscoderSetConfig`: the weights come from the
  SAELens registry (``SAE.from_pretrained``), a Hugging Face repository or a local folder, with
  the config's hooks; see ``docs/configs.md``.

A string is a path if it names an existing file or folder (or contains a path separator), a YAML
config file if it ends in ``.yaml`` / ``.yml``, else a config name.

Example:
    >>> import sae_circuits as sc
    >>> transcoders = sc.load_transcoders("path/to/folder")
    >>> transcoders.input_hooks[:2]
    ('blocks.0.mlp.hook_in', 'blocks.1.mlp.hook_in')
    >>> gemmascope = sc.load_transcoders("gemma-2-2b-gemmascope")   # downloads on first use
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_lens import Transcoder
from transformer_lens import HookedTransformer

from sae_circuits.transcoders._fit import check_transcoders_match
from sae_circuits.transcoders._from_config import load_from_config
from sae_circuits.transcoders._sources import load_source
from sae_circuits.transcoders.clt_sae import CrossLayerTranscoder, HookSpec
from sae_circuits.transcoders.configs import TranscoderSetConfig, get_config, load_config
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = ["load_transcoders"]


def load_transcoders(
    source: str
    | os.PathLike[str]
    | Sequence[Transcoder]
    | CrossLayerTranscoder
    | TranscoderSet
    | TranscoderSetConfig,
    *,
    input_hook: HookSpec | None = None,
    output_hook: HookSpec | None = None,
    device: str | None = None,
    dtype: str | None = None,
    lazy_decoder: bool = True,
    lazy_encoder: bool = False,
    model: HookedTransformer | None = None,
    local_dir: str | os.PathLike[str] | None = None,
) -> TranscoderSet:
    """Load the transcoders that replace a model's MLPs.

    Args:
        source: A folder of ``layer_{i}/`` SAELens transcoder folders, a CLT folder (public
            per-layer layout or a ``CrossLayerTranscoder.save_model`` folder), a sequence of
            SAELens transcoders (index = layer), a ``CrossLayerTranscoder``, a transcoder set,
            a transcoder config name (``sae_circuits.transcoders.list_configs()``), the path of
            a YAML config file, or a ``TranscoderSetConfig``.
        input_hook: Override of every layer's input hook suffix (e.g. ``"mlp.hook_in"``);
            default: each transcoder's ``cfg.metadata.hook_name`` (a CLT folder:
            ``feature_input_hook`` of its ``config.yaml``). For a CLT also a ``{layer}``
            template or a list of full names.
        output_hook: Override of every layer's output hook suffix (e.g. ``"hook_mlp_out"``);
            default: each transcoder's ``cfg.metadata.hook_name_out`` (a CLT folder:
            ``feature_output_hook``).
        device: Device to load weights to (default: the saved config's, usually ``"cpu"``;
            ``"cpu"`` for a CLT folder; for a transcoder config ``"cuda"`` if
            ``torch.cuda.is_available()`` else ``"cpu"``).
        dtype: dtype to load weights as, e.g. ``"float32"`` (default: the saved one; for a
            per-layer transcoder config ``"float32"``).
        lazy_decoder: CLT folders only: read decoder rows on demand instead of loading all
            decoders (default ``True``).
        lazy_encoder: CLT folders in the public layout only: read encoders on demand too.
        model: Optional model to check the transcoders against now (layers, widths, hooks;
            for a config also the model name, see ``sae_circuits.check_transcoders_match``);
            for a CLT folder the messages name the offending file.
        local_dir: Transcoder configs only: a folder holding a copy of the source repository's
            files at their paths in the repository, read instead of the Hugging Face cache
            (default: ``$SAE_CIRCUITS_TRANSCODERS_DIR/<config name>`` if it exists).

    Returns:
        A :class:`TranscoderSet` whose hooks are checked against a model when it is used.

    Raises:
        FileNotFoundError: The folder does not exist or holds no transcoders.
        ValueError: Layer folders are not numbered ``0..L-1``, a folder is not a transcoder, a
            CLT folder is malformed (missing/extra layer files, unknown keys, shapes that
            disagree; the message names the file), or the transcoders do not fit ``model``.
            For a config name: no such config (the message lists valid names and close matches);
            weights that do not fit the config.
        WeightsUnavailableError: (a ``FileNotFoundError``) A file a config needs is neither
            cached nor downloadable; the message names the repository and file and how to
            provide them (Hugging Face cache, ``local_dir``, ``SAE_CIRCUITS_TRANSCODERS_DIR``).
        TypeError: ``source`` is of an unsupported type.
    """
    config = _as_config(source)
    if config is not None:
        if not isinstance(input_hook, (str, type(None))) or not isinstance(
            output_hook, (str, type(None))
        ):
            raise TypeError("load_transcoders: a transcoder config takes hook suffixes (str) only")
        ts = load_from_config(
            config,
            device=device,
            dtype=dtype,
            lazy_decoder=lazy_decoder,
            lazy_encoder=lazy_encoder,
            local_dir=local_dir,
            input_hook=input_hook,
            output_hook=output_hook,
        )
    else:
        if local_dir is not None:
            raise TypeError(
                "load_transcoders: local_dir is for transcoder configs (names or YAML files); "
                "pass the folder itself as the source"
            )
        ts = load_source(
            source,
            input_hook=input_hook,
            output_hook=output_hook,
            device=device,
            dtype=dtype,
            lazy_decoder=lazy_decoder,
            lazy_encoder=lazy_encoder,
        )
    if model is not None:
        check_transcoders_match(model, ts)
    return ts


def _as_config(source: Any) -> TranscoderSetConfig | None:
    """The config ``source`` names, or ``None`` if it is something else (see the module doc)."""
    if isinstance(source, TranscoderSetConfig):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return None
    text = os.fspath(source)
    if not isinstance(text, str):
        return None
    path = Path(text)
    if text.endswith((".yaml", ".yml")) and not path.is_dir():
        return load_config(path)
    if path.exists() or not isinstance(source, str) or "/" in text or os.sep in text:
        return None
    return get_config(text)
