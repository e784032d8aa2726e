"""Local checkpoints: a Hugging Face folder or a GGUF file, read into a ``HookedTransformer``.

:func:`load_local_model` reads the checkpoint with ``transformers`` (``AutoModelForCausalLM``
in float32: a GGUF file's tensors are dequantised there, a bfloat16 folder upcast exactly), maps
its config to a ``HookedTransformerConfig`` (:func:`hf_to_tl_config`), converts the weights with
TransformerLens' own converters (the ones ``from_pretrained`` uses for the same architecture) and
loads them with no weight processing, as :func:`sae_circuits.models.load_model` does for names.
The tokenizer comes from the folder or the file, never from the Hub.

Supported architectures (:data:`SUPPORTED_ARCHITECTURES`): Llama (``LlamaForCausalLM``, e.g.
Llama 3.x, SmolLM2) and text-only Gemma 3 (``Gemma3ForCausalLM``: 270M, 1B). Anything else is
an error naming the architecture and the supported ones.

:func:`without_gguf_quantization` is for the other route, a name with ``hf_model=`` a
``transformers`` model read from a GGUF file: transformers has dequantised its weights already,
but its config still carries the ``quantization_config`` that TransformerLens refuses.

Example:
    >>> model = load_local_model("models/SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    >>> model = load_local_model("models/gemma-3-270m", device="cpu")   # config.json + weights
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_circuits.core.progress import show_progress

__all__ = [
    "MAX_N_CTX",
    "SUPPORTED_ARCHITECTURES",
    "hf_to_tl_config",
    "is_local_checkpoint",
    "load_local_model",
    "without_gguf_quantization",
]

logger = logging.getLogger(__name__)

#: ``model_type`` of a supported ``transformers`` config -> its architecture (what messages
#: name, and TransformerLens' ``original_architecture``).
SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
#: ``general.architecture`` of a supported GGUF file.
_GGUF_ARCHITECTURES = ("llama", "gemma3")
#: The longest context a local model gets unless ``n_ctx=`` says otherwise (TransformerLens'
#: "safe default" for Gemma 3; its attention masks are ``n_ctx x n_ctx``).
MAX_N_CTX = 8192
#: Keyword arguments :func:`load_local_model` takes besides ``device`` and ``dtype``.
LOCAL_KWARGS = ("default_prepend_bos", "default_padding_side", "model_name", "n_ctx", "tokenizer")

_SUPPORTED_TEXT = (
    "Llama (model_type 'llama', LlamaForCausalLM) and text-only Gemma 3 (model_type "
    "'gemma3_text', Gemma3ForCausalLM: 270M, 1B)"
)
_EXPECTED = (
    "expected a Hugging Face checkpoint folder (config.json, *.safetensors and the tokenizer "
    "files, as save_pretrained writes them) or a .gguf file"
)


def is_local_checkpoint(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` stands for a local checkpoint rather than a model name.

    A path object, a string ending in ``.gguf``, a string written as a path (absolute, or
    starting with ``./``, ``../`` or ``~``), an existing file, or an existing folder that holds a
    ``config.json`` or is not a TransformerLens model name. A name such as ``"gemma-2-2b"`` or
    ``"google/gemma-3-270m"`` is a name unless a folder of that name with a ``config.json``
    exists (the local folder wins, as in ``transformers``).
    """
    if not isinstance(name, str):
        return True
    if name.lower().endswith(".gguf") or name.startswith(("./", "../", "~", ".\\", "..\\")):
        return True
    if os.path.isabs(name):
        return True
    path = Path(name)
    if path.is_file() or (path / "config.json").is_file():
        return True
    return path.is_dir() and not _is_tl_name(name)


def _is_tl_name(name: str) -> bool:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError:
        return False
    return True


def load_local_model(
    path: str | os.PathLike[str],
    *,
    device: str,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> HookedTransformer:
    """A local Llama or Gemma 3 checkpoint (folder or GGUF file) as a ``HookedTransformer``.

    Args:
        path: A folder with ``config.json``, the weights (``*.safetensors`` or ``*.bin``) and the
            tokenizer files, or a ``.gguf`` file (any quantisation ``transformers`` can
            dequantise; the tokenizer is built from the file's metadata).
        device: Device of the weights.
        dtype: dtype of the weights (they are read and converted in float32 first).
        **kwargs: ``default_prepend_bos`` (default: whether the checkpoint's tokenizer adds a
            BOS token itself, so that ``model.to_tokens(text)`` gives the ids the tokenizer
            gives), ``default_padding_side``, ``model_name`` (default: the folder's name or the
            file's stem; ``model.cfg.model_name`` is what transcoders are matched against),
            ``n_ctx`` (default: the config's context length, at most :data:`MAX_N_CTX`),
            ``tokenizer`` (a tokenizer to use instead of the checkpoint's).

    Returns:
        The model in eval mode, float32 unless ``dtype`` says otherwise, with its tokenizer.

    Raises:
        FileNotFoundError: ``path`` does not exist, a folder has no ``config.json`` or no
            tokenizer.
        ValueError: The architecture cannot be mapped (the message names it and the supported
            ones), the file is neither a folder nor a ``.gguf`` file, or a keyword is unknown.
        ImportError: A GGUF file and the ``gguf`` package is not installed
            (``pip install 'sae-circuits[gguf]'``).
    """
    unknown = sorted(set(kwargs) - set(LOCAL_KWARGS))
    if unknown:
        raise ValueError(
            f"load_model: unknown keyword argument(s) {', '.join(unknown)} for a local checkpoint "
            f"(valid: device, dtype, transcoders, {', '.join(LOCAL_KWARGS)})"
        )
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"load_model: {str(path)!r} does not exist; {_EXPECTED}")
    if path.is_dir():
        hf_model, tokenizer = _read_folder(path, kwargs.get("tokenizer"))
        default_name = path.resolve().name
    elif path.suffix.lower() == ".gguf":
        hf_model, tokenizer = _read_gguf(path, kwargs.get("tokenizer"))
        default_name = path.stem
    else:
        raise ValueError(f"load_model: {str(path)!r} is a file but not a .gguf file; {_EXPECTED}")

    cfg_dict = hf_to_tl_config(hf_model.config, n_ctx=kwargs.get("n_ctx"))
    cfg_dict["model_name"] = kwargs.get("model_name") or default_name
    cfg = HookedTransformerConfig(
        **cfg_dict, device=device, dtype=torch.float32, init_weights=False
    )
    state_dict = _convert_weights(hf_model, cfg)
    del hf_model
    model = HookedTransformer(cfg, move_to_device=True)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    del state_dict
    if dtype != torch.float32:
        model = model.to(dtype)
    _attach_tokenizer(
        model,
        tokenizer,
        default_prepend_bos=kwargs.get("default_prepend_bos"),
        padding_side=kwargs.get("default_padding_side"),
    )
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# reading the checkpoint with transformers


def _read_folder(path: Path, tokenizer: Any) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = (
            f"; it holds GGUF files: pass one of them ({', '.join(ggufs)})"
            if ggufs
            else " (save a transformers model and its tokenizer there with save_pretrained)"
        )
        raise FileNotFoundError(f"load_model: the folder {str(path)!r} has no config.json{hint}")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    _check_architecture(config, f"the folder {str(path)!r}")
    hf_to_tl_config(config)  # an unmapped feature fails before the weights are read
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise FileNotFoundError(
                f"load_model: the folder {str(path)!r} has no usable tokenizer (tokenizer.json "
                "or tokenizer_config.json with its vocabulary files; save one with "
                "tokenizer.save_pretrained(folder), or pass tokenizer=): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    with _transformers_bars():
        hf_model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch.float32, local_files_only=True
        )
    return hf_model, tokenizer


def _read_gguf(path: Path, tokenizer: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf import read_gguf_metadata

    # transformers' own header reader (no gguf package; string arrays are left as counts, so
    # this takes milliseconds where gguf.GGUFReader parses a 262k-token vocabulary for seconds)
    metadata, _ = read_gguf_metadata(str(path))
    architecture = metadata.get("general.architecture")
    name = str(metadata.get("general.name") or "")
    if architecture == "llama" and "mistral" in name.lower():
        architecture = "mistral"  # transformers reads such a file as model_type 'mistral'
    if architecture not in _GGUF_ARCHITECTURES:
        raise ValueError(
            f"load_model: the GGUF file {str(path)!r} holds architecture {architecture!r}, "
            f"which cannot be mapped to a HookedTransformer here; supported: {_SUPPORTED_TEXT} "
            f"(GGUF general.architecture {' or '.join(map(repr, _GGUF_ARCHITECTURES))})"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"load_model: reading the GGUF file {str(path)!r} needs the 'gguf' package, which is "
            "not installed: pip install 'sae-circuits[gguf]' (or pip install gguf)"
        )
    folder, file = str(path.parent), path.name
    with _transformers_bars():
        hf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file, dtype=torch.float32, local_files_only=True
        )
    _check_architecture(hf_model.config, f"the GGUF file {str(path)!r}")
    hf_to_tl_config(hf_model.config)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
    return hf_model, tokenizer


@contextlib.contextmanager
def _transformers_bars() -> Iterator[None]:
    """transformers' own progress bars follow the package's rule (only on a terminal)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not show_progress(None):
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_architecture(config: Any, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type in SUPPORTED_ARCHITECTURES:
        return
    architectures = getattr(config, "architectures", None) or []
    named = f"model_type {model_type!r}" + (
        f" ({', '.join(architectures)})" if architectures else ""
    )
    extra = ""
    if model_type == "gemma3":
        extra = (
            "; this is a multimodal Gemma 3 checkpoint (4B and larger): load it by name "
            "(load_model('google/gemma-3-4b-it'), from the Hub) instead"
        )
    raise ValueError(
        f"load_model: {where} holds {named}, which cannot be mapped to a HookedTransformer "
        f"here; supported: {_SUPPORTED_TEXT}{extra}. For another architecture TransformerLens "
        "knows, pass its name and the loaded model: load_model(NAME, hf_model="
        "AutoModelForCausalLM.from_pretrained(FOLDER), tokenizer=AutoTokenizer.from_pretrained"
        "(FOLDER))"
    )


# ---------------------------------------------------------------------------------------------
# the config and the weights


def hf_to_tl_config(config: Any, *, n_ctx: int | None = None) -> dict[str, Any]:
    """A ``transformers`` Llama or Gemma 3 text config as ``HookedTransformerConfig`` fields.

    The same fields TransformerLens sets for the architecture (its ``LlamaForCausalLM`` branch,
    its ``google/gemma-3-*`` entries), read from the config rather than from a name, so that any
    size maps; ``tests/test_local_models.py`` checks both against TransformerLens' own.

    Args:
        config: A ``LlamaConfig`` or ``Gemma3TextConfig``.
        n_ctx: Context length (default: ``max_position_embeddings``, at most :data:`MAX_N_CTX`).

    Returns:
        Keyword arguments for ``HookedTransformerConfig`` (without device, dtype, model_name).

    Raises:
        ValueError: An architecture or a feature of it (a RoPE type, biases, bidirectional
            attention) that is not mapped.
    """
    _check_architecture(config, "the config")
    model_type = str(config.model_type)
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    context = int(config.max_position_embeddings)
    if n_ctx is None:
        n_ctx = min(context, MAX_N_CTX)
        if n_ctx < context:
            logger.info("n_ctx %d (the config allows %d; pass n_ctx= for more)", n_ctx, context)
    common: dict[str, Any] = {
        "d_model": config.hidden_size,
        "d_head": d_head,
        "n_heads": n_heads,
        "d_mlp": config.intermediate_size,
        "n_layers": config.num_hidden_layers,
        "n_ctx": int(n_ctx),
        "eps": config.rms_norm_eps,
        "d_vocab": config.vocab_size,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "final_rms": True,
        "gated_mlp": True,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "original_architecture": SUPPORTED_ARCHITECTURES[model_type],
    }
    if getattr(config, "initializer_range", None) is not None:
        common["initializer_range"] = config.initializer_range
    if model_type == "llama":
        return {**common, **_llama_fields(config, n_heads)}
    return {**common, **_gemma3_fields(config)}


def _llama_fields(config: Any, n_heads: int) -> dict[str, Any]:
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ValueError(
                f"load_model: a Llama config with {flag}=True cannot be mapped (TransformerLens' "
                "Llama weights have no biases)"
            )
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    rope = _rope(config)
    fields: dict[str, Any] = {
        "act_fn": config.hidden_act,
        # TransformerLens uses grouped-query attention whenever n_key_value_heads is set
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "rotary_adjacent_pairs": False,
        "rotary_base": rope.get("rope_theta", 10000.0),
    }
    kind = _rope_type(rope)
    if kind == "llama3":
        fields.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=rope.get(
                "original_max_position_embeddings", config.max_position_embeddings
            ),
            NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=rope.get("factor", 1.0),
        )
    elif kind == "linear":
        fields["rotary_scaling_factor"] = float(rope.get("factor", 1.0))
    elif kind != "default":
        raise ValueError(_rope_error(kind, "Llama", ("default", "linear", "llama3")))
    return fields


def _gemma3_fields(config: Any) -> dict[str, Any]:
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError(
            "load_model: a Gemma 3 config with use_bidirectional_attention=True (an embedding "
            "model) cannot be mapped; only causal Gemma 3 language models"
        )
    layer_types = list(getattr(config, "layer_types", None) or [])
    kinds = {"sliding_attention": "local", "full_attention": "global"}
    bad = sorted({t for t in layer_types if t not in kinds})
    if len(layer_types) != config.num_hidden_layers or bad:
        raise ValueError(
            f"load_model: Gemma 3 layer_types {layer_types!r} cannot be mapped (expected "
            f"{config.num_hidden_layers} of 'sliding_attention' / 'full_attention')"
        )
    attn_types = [kinds[t] for t in layer_types]
    local, full = _rope(config, "sliding_attention"), _rope(config, "full_attention")
    if _rope_type(local) != "default":
        raise ValueError(_rope_error(_rope_type(local), "Gemma 3 sliding-window", ("default",)))
    fields: dict[str, Any] = {
        "act_fn": config.hidden_activation,
        "n_key_value_heads": config.num_key_value_heads,
        "rotary_base": full.get("rope_theta", 1_000_000.0),
        "rotary_base_local": local.get(
            "rope_theta", getattr(config, "rope_local_base_freq", 10000.0)
        ),
        "use_attn_scale": True,
        # HF scales the scores by query_pre_attn_scalar ** -0.5 (256 = head_dim for 270M, 1B)
        "attn_scale": math.sqrt(config.query_pre_attn_scalar),
        "use_normalization_before_and_after": True,
        "use_qk_norm": True,
        "attn_types": attn_types,
    }
    kind = _rope_type(full)
    if kind == "linear":
        fields["rotary_scaling_factor"] = float(full.get("factor", 1.0))
    elif kind != "default":
        raise ValueError(_rope_error(kind, "Gemma 3 global", ("default", "linear")))
    if "local" in attn_types:
        fields.update(use_local_attn=True, window_size=int(config.sliding_window))
    if getattr(config, "attn_logit_softcapping", None) is not None:
        fields["attn_scores_soft_cap"] = float(config.attn_logit_softcapping)
    if getattr(config, "final_logit_softcapping", None) is not None:
        fields["output_logits_soft_cap"] = float(config.final_logit_softcapping)
    return fields


def _rope(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """RoPE parameters (transformers 5 ``rope_parameters``, per layer type for Gemma 3; or the
    4.x ``rope_theta`` / ``rope_scaling``)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    if isinstance(params, dict) and params:
        return dict(params)
    params = dict(getattr(config, "rope_scaling", None) or {})
    if layer_type == "sliding_attention" and getattr(config, "rope_local_base_freq", None):
        params["rope_theta"] = config.rope_local_base_freq
    elif getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _rope_type(rope: dict[str, Any]) -> str:
    return str(rope.get("rope_type") or rope.get("type") or "default")


def _rope_error(kind: str, where: str, valid: tuple[str, ...]) -> str:
    return (
        f"load_model: RoPE type {kind!r} of the {where} attention cannot be mapped "
        f"(supported: {', '.join(valid)})"
    )


def _convert_weights(hf_model: Any, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_llama_weights,
    )

    for param in hf_model.parameters():
        param.requires_grad = False
    if cfg.original_architecture == "LlamaForCausalLM":
        return convert_llama_weights(hf_model, cfg)
    return convert_gemma_weights(hf_model, cfg)


def _attach_tokenizer(
    model: HookedTransformer,
    tokenizer: Any,
    *,
    default_prepend_bos: bool | None,
    padding_side: str | None,
) -> None:
    """What ``HookedTransformer.set_tokenizer`` sets, without its reach for the Hub (it reloads
    the tokenizer by name to add a BOS token)."""
    model.tokenizer = tokenizer
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    elif tokenizer.padding_side is None:
        tokenizer.padding_side = "right"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None and tokenizer.eos_token is not None:
        tokenizer.bos_token = tokenizer.eos_token
    prepends = len(tokenizer.encode("")) > 0
    model.cfg.tokenizer_prepends_bos = prepends
    model.cfg.default_prepend_bos = prepends if default_prepend_bos is None else default_prepend_bos


# ---------------------------------------------------------------------------------------------
# a name with hf_model= read from a GGUF file


@contextlib.contextmanager
def without_gguf_quantization(hf_model: Any) -> Iterator[None]:
    """While TransformerLens converts ``hf_model``: its config without a GGUF
    ``quantization_config``.

    ``transformers`` dequantises every tensor of a GGUF file when it loads one (to the dtype
    asked for) but keeps ``quantization_config = {'quant_method': 'gguf', ...}`` on the config,
    which ``HookedTransformer.from_pretrained`` refuses. The weights are checked to be plain
    floating-point tensors first; any other quantisation (or none) is left as it is, for
    TransformerLens to judge. The config is restored afterwards.

    Raises:
        ValueError: A GGUF-quantised model whose weights are not all floating point.
    """
    config: Any = getattr(hf_model, "config", None)
    quantization = getattr(config, "quantization_config", None)
    method = (
        quantization.get("quant_method")
        if isinstance(quantization, dict)
        else getattr(quantization, "quant_method", None)
    )
    method = getattr(method, "value", method)
    if method != "gguf":
        yield
        return
    for name, param in hf_model.named_parameters():
        if not param.dtype.is_floating_point or param.dtype.itemsize < 2:
            raise ValueError(
                f"load_model: hf_model was read from a GGUF file but {name} has dtype "
                f"{param.dtype}, not dequantised floating point"
            )
    delattr(config, "quantization_config")
    try:
        yield
    finally:
        config.quantization_config = quantization
