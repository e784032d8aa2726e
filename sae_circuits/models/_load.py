"""Loading models for attribution, and checking that transcoders were made for them.

:func:`load_model` returns a ``HookedTransformer`` with the settings attribution needs:
``HookedTransformer.from_pretrained_no_processing`` (no weight processing), float32 by default.
It accepts a TransformerLens model name (Gemma 3 included: ``"google/gemma-3-270m"``, from the
Hub), a transcoder config name or YAML file (the config's model), ``"toy-facts"`` (the shipped
toy model, offline), and a local checkpoint: a Hugging Face folder or a GGUF file of a Llama or
Gemma 3 model (:mod:`sae_circuits.models._local`; weights dequantised to float32, tokenizer from
the folder or file, no Hub).

``load_model(..., transcoders=...)`` checks them with
:func:`sae_circuits.transcoders.check_transcoders_match` (model name, layer count, width, hooks).

Example:
    >>> import sae_circuits as sc
    >>> from sae_circuits.models import load_model
    >>> model = load_model("gemma-2-2b-gemmascope")          # the config's model: gemma-2-2b
    >>> transcoders = sc.load_transcoders("gemma-2-2b-gemmascope")
    >>> check_transcoders_match(model, transcoders)
    >>> toy = load_model("toy-facts")                        # offline
    >>> local = load_model("models/SmolLM2-135M-Instruct.Q4_1.gguf")   # offline (needs gguf)
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.devices import default_device
from sae_circuits.models._local import (
    is_local_checkpoint,
    load_local_model,
    without_gguf_quantization,
)
from sae_circuits.transcoders import (
    TranscoderSetConfig,
    check_transcoders_match,
    list_configs,
    load_config,
)

__all__ = ["TOY_MODEL", "ModelUnavailableError", "load_model"]

logger = logging.getLogger(__name__)

#: Name of the shipped toy model.
TOY_MODEL = "toy-facts"
#: Names of all shipped toy models (toy-multilingual: the multilingual case study).
TOY_MODELS = ("toy-facts", "toy-multilingual")


class ModelUnavailableError(FileNotFoundError):
    """A model's weights are neither cached nor downloadable (the message says how to provide
    them)."""


def load_model(
    name: str | os.PathLike[str] | TranscoderSetConfig,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    transcoders: Any = None,
    **kwargs: Any,
) -> HookedTransformer:
    """A ``HookedTransformer`` set up for exact attribution.

    The model is loaded with ``HookedTransformer.from_pretrained_no_processing``: none of
    TransformerLens' weight processing, because each changes what the hooks hold and so what
    transcoders read and write there:

    * ``fold_ln`` would fold the norms' weights into the next layers: ``mlp.hook_in`` (the MLP's
      input, after ``ln2`` and its weight) would become the unweighted normalised residual,
      no longer the activation the transcoders were trained on;
    * ``center_writing_weights`` would remove the mean from everything written to the residual
      stream: ``hook_resid_mid``, ``hook_mlp_out`` and ``mlp.hook_out`` would all change;
    * ``center_unembed`` and ``fold_value_biases`` shift logits and attention outputs
      (logit attributions and error nodes would no longer match the original model).

    Weights stay as the checkpoint has them, in float32 unless ``dtype`` says otherwise, so
    attributions are exact with respect to the original model.

    Args:
        name: A TransformerLens model name (``"gemma-2-2b"``, ``"meta-llama/Llama-3.2-1B"``,
            ``"google/gemma-3-270m"``), a transcoder config name or YAML file (its ``model``,
            with its ``model_kwargs``), a :class:`TranscoderSetConfig`, ``"toy-facts"`` (the
            shipped toy model, offline; the configs ``"toy-facts"`` / ``"toy-facts-clt"`` give it
            too) or ``"toy-multilingual"`` (its sibling of the multilingual case study), or a local checkpoint of a Llama or text-only Gemma 3 model, offline: a
            Hugging Face folder (``config.json``, ``*.safetensors``, tokenizer files) or a
            ``.gguf`` file (needs ``pip install 'sae-circuits[gguf]'``), as a path object or a
            string (a string is a path when it ends in ``.gguf``, is written as a path -- ``/``,
            ``./``, ``../``, ``~`` -- or names an existing file, or a folder with a
            ``config.json`` or that is not a model name).
        device: Default ``"cuda"`` if ``torch.cuda.is_available()`` else ``"cpu"``.
        dtype: Default ``float32``.
        transcoders: Optional transcoders (a set, config name or config) to check the model
            against (:func:`check_transcoders_match`).
        **kwargs: For a name, more keyword arguments for ``from_pretrained_no_processing``
            (e.g. ``hf_model=`` a ``transformers`` model loaded from a local folder or a GGUF
            file, with ``tokenizer=``); for a local checkpoint ``default_prepend_bos`` (default:
            whether its tokenizer adds a BOS itself), ``default_padding_side``, ``model_name``
            (default: the folder's name or the file's stem), ``n_ctx`` (default: the config's,
            at most 8192), ``tokenizer``.

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: ``name`` is neither a config nor a TransformerLens model name (the message
            lists config names and close model names); ``transcoders`` do not fit; a local
            checkpoint of an architecture that cannot be mapped (the message names it and the
            supported ones).
        FileNotFoundError: A local path that does not exist, or a folder without
            ``config.json`` or tokenizer.
        ImportError: A GGUF file without the ``gguf`` package.
        ModelUnavailableError: The weights are not cached and cannot be downloaded (offline,
            gated model); the message names the Hugging Face repository and how to provide it.
    """
    device = device or default_device()
    model_name, config_kwargs = _model_name(name)
    if model_name in TOY_MODELS:
        from sae_circuits.toy.facts import load_toy_model

        model = load_toy_model(name=model_name, device=device)  # type: ignore[arg-type]
        if dtype is not None:
            model = model.to(_torch_dtype(dtype))
    elif is_local_checkpoint(model_name):
        model = load_local_model(
            model_name,
            device=device,
            dtype=_torch_dtype(dtype or "float32"),
            **{**config_kwargs, **kwargs},
        )
    else:
        official = _official_name(os.fspath(model_name))
        args = {**config_kwargs, **kwargs}
        try:
            with without_gguf_quantization(args.get("hf_model")):
                model = HookedTransformer.from_pretrained_no_processing(
                    official, device=device, dtype=_torch_dtype(dtype or "float32"), **args
                )
        except (OSError, ConnectionError, RuntimeError) as exc:
            error = _unavailable(official, exc)
            if error is None:
                raise
            raise error from exc
    model.eval()
    if transcoders is not None:
        check_transcoders_match(model, transcoders)
    return model


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; e.g. 'float32', 'bfloat16'")
    return value


def _model_name(name: Any) -> tuple[str | os.PathLike[str], dict[str, Any]]:
    """The model a name stands for (a path object stays one: it is a local checkpoint), and the
    config's ``model_kwargs``."""
    config = _config_for(name)
    if config is not None:
        return config.model, dict(config.model_kwargs)
    return (name if isinstance(name, os.PathLike) else str(name)), {}


def _config_for(name: Any) -> TranscoderSetConfig | None:
    if isinstance(name, TranscoderSetConfig):
        return name
    text = os.fspath(name)
    if text.endswith((".yaml", ".yml")):
        return load_config(text)
    return list_configs().get(text)


def _official_name(name: str) -> str:
    from transformer_lens.loading_from_pretrained import (
        OFFICIAL_MODEL_NAMES,
        get_official_model_name,
    )

    try:
        return get_official_model_name(name)
    except ValueError:
        close = difflib.get_close_matches(name, OFFICIAL_MODEL_NAMES, n=3, cutoff=0.5)
        raise ValueError(
            f"unknown model {name!r}: neither a transcoder config (valid: "
            f"{', '.join(sorted(list_configs()))}) nor a TransformerLens model name"
            + (f" (close model names: {', '.join(close)})" if close else "")
            + ", nor an existing local checkpoint (a Hugging Face folder with config.json, or a "
            ".gguf file)"
        ) from None


def _unavailable(official: str, exc: BaseException) -> ModelUnavailableError | None:
    """A clear error for weights that cannot be had, or ``None`` for another failure."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    text = f"{type(exc).__name__}: {exc}"
    gated = isinstance(exc, GatedRepoError) or "gated" in text.lower()
    missing = isinstance(exc, LocalEntryNotFoundError) or any(
        s in text.lower()
        for s in ("offline", "couldn't connect", "not find", "cannot find", "does not appear")
    )
    if not (gated or missing):
        return None
    if gated:
        reason = (
            f"the repository is gated: accept its license on https://huggingface.co/{official} "
            "and log in (`hf auth login`, or set HF_TOKEN)"
        )
    elif constants.HF_HUB_OFFLINE:
        reason = f"offline mode is on (HF_HUB_OFFLINE) and it is not in the cache {constants.HF_HUB_CACHE!r}"
    else:
        reason = f"it is not in the cache {constants.HF_HUB_CACHE!r} and could not be downloaded"
    return ModelUnavailableError(
        f"load_model: the weights of {official!r} (Hugging Face repository {official}) are "
        f"needed but {reason} ({text}). To provide them: download them where there is network "
        f"(`hf download {official}`, into the cache; set HF_HUB_CACHE or HF_HOME before starting "
        "Python to use another cache folder), or, for Llama and Gemma 3, pass the local "
        "folder or GGUF file itself: load_model(FOLDER) / load_model('model.gguf'), or load a "
        "transformers model from a local folder and pass it: load_model(name, "
        "hf_model=AutoModelForCausalLM.from_pretrained(FOLDER), "
        "tokenizer=AutoTokenizer.from_pretrained(FOLDER))"
    )
