"""Prompts: text or token ids, checked against the model once, in one place.

Example:
    >>> tokens = to_tokens(model, "The capital of the state containing Dallas is")   # (n,) ids
    >>> token_strings(model, tokens.tolist())
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformer_lens import HookedTransformer

__all__ = ["Prompt", "single_token_id", "to_tokens", "token_strings"]

logger = logging.getLogger(__name__)

#: What every entry point takes as a prompt: text, a list of token ids or a 1-D tensor of ids.
Prompt = str | Sequence[int] | torch.Tensor


def to_tokens(model: HookedTransformer, prompt: Prompt) -> torch.Tensor:
    """Turn a prompt into a ``(n,)`` CPU tensor of token ids, checked against the model.

    Args:
        model: The model (its tokenizer for text, ``d_vocab`` and ``n_ctx`` for checks).
        prompt: Text, a list of ids or a 1-D tensor of ids.

    Returns:
        ``(n,)`` int64 tensor.

    Raises:
        TypeError: Text without a tokenizer, or an unsupported prompt type.
        ValueError: Empty prompt, longer than ``n_ctx``, or ids outside ``[0, d_vocab)``.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        if getattr(model, "tokenizer", None) is None:
            raise TypeError(
                "a text prompt needs model.tokenizer, and this model has none; pass token ids "
                "(a list or 1-D tensor) or set model.tokenizer"
            )
        tokens = _tokenize(model, prompt)
    elif isinstance(prompt, torch.Tensor):
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1:
            raise ValueError(
                f"a tensor prompt must be 1-D token ids, got shape {tuple(prompt.shape)}"
            )
        if prompt.dtype.is_floating_point or prompt.dtype == torch.bool:
            raise TypeError(f"token ids must be integers, got dtype {prompt.dtype}")
        tokens = prompt.detach().to("cpu", torch.long)
    elif isinstance(prompt, Sequence):
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt):
            raise TypeError("a list prompt must hold integer token ids")
        tokens = torch.tensor(list(prompt), dtype=torch.long)
    else:
        raise TypeError(
            f"unsupported prompt type {type(prompt).__name__}; expected str, list of ids or 1-D tensor"
        )
    if tokens.numel() == 0:
        raise ValueError("the prompt is empty")
    if tokens.numel() > model.cfg.n_ctx:
        raise ValueError(
            f"the prompt has {tokens.numel()} tokens, more than the model's n_ctx={model.cfg.n_ctx}"
        )
    bad = (tokens < 0) | (tokens >= model.cfg.d_vocab)
    if bad.any():
        raise ValueError(
            f"token ids {tokens[bad].tolist()[:5]} are outside [0, d_vocab={model.cfg.d_vocab})"
        )
    return tokens


def _tokenize(model: HookedTransformer, text: str) -> torch.Tensor:
    if model.cfg.tokenizer_prepends_bos is not None:  # set up by model.set_tokenizer
        return model.to_tokens(text)[0].cpu()
    # a tokenizer assigned directly (model.tokenizer = ...): BOS as the model's default
    tok = model.tokenizer
    assert tok is not None
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    bos = tok.bos_token_id
    if model.cfg.default_prepend_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return torch.tensor(ids, dtype=torch.long)


def single_token_id(tokenizer: object, token: object, *, d_vocab: int | None = None) -> int:
    """The id of one token, given as an id or as a string that is exactly one token.

    Args:
        tokenizer: A Hugging Face tokenizer (``model.tokenizer``) or ``None``.
        token: A token id, or a string that tokenises (without special tokens) to one token.
        d_vocab: If given, ids must lie in ``[0, d_vocab)``.

    Returns:
        The token id.

    Raises:
        TypeError: ``token`` is neither an integer nor a string.
        ValueError: A string without a tokenizer, a string of several (or no) tokens, or an id
            outside the vocabulary; the message names it.
    """
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        tid = int(token)
        if d_vocab is not None and not 0 <= tid < d_vocab:
            raise ValueError(f"token id {tid} is outside the vocabulary [0, d_vocab={d_vocab})")
        return tid
    if not isinstance(token, str):
        raise TypeError(
            f"expected a token id or a string, got {type(token).__name__} {token!r:.60}"
        )
    if tokenizer is None:
        raise ValueError(f"cannot look up {token!r}: the model has no tokenizer; pass a token id")
    ids = list(tokenizer(token, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    if len(ids) != 1:
        raise ValueError(
            f"{token!r} is {len(ids)} tokens ({ids}), not one; pass a single token (mind the "
            "leading space of BPE vocabularies, e.g. ' Austin') or its id"
        )
    return int(ids[0])


def token_strings(model: HookedTransformer, ids: Sequence[int]) -> list[str | None]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [None] * len(ids)
    try:
        return [tok.decode([int(i)]) for i in ids]
    except Exception:  # a tokenizer that cannot decode single ids: leave strings out
        logger.debug("could not decode token ids", exc_info=True)
        return [None] * len(ids)
