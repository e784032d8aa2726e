"""The embedded "toy-facts" model: a tiny transformer trained on a synthetic world, offline.

Shipped under ``sae_circuits/toy/weights/toy-facts/``: a 4-layer GPT-2-style
``HookedTransformer`` trained (``toy_training.train``, outside the package) on the sentences of
:mod:`sae_circuits.toy.world`, its per-layer transcoders (``transcoders/layer_{i}/``, SAELens
format), a cross-layer transcoder (``clt/``, the public per-layer CLT layout) and feature labels
(``labels.json``). It answers two-hop questions it never saw, such as
``"The capital of the state containing Dallas is"`` -> ``austin``, through an intermediate
representation of the state at the city's position.

The tokenizer is word-level and lowercases its input (``"Dallas"`` == ``"dallas"``); names of
several words are single tokens joined by underscores (``new_york``, ``san_antonio``).

Example:
    >>> import sae_circuits as sc
    >>> from sae_circuits.toy.facts import load_toy_model, load_toy_transcoders
    >>> model = load_toy_model()
    >>> transcoders = load_toy_transcoders("plt")
    >>> graph = sc.attribute(model, "The capital of the state containing Dallas is", transcoders)
    >>> graph.logits.token[0]
    'austin'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, normalizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from sae_circuits.toy.tokenizer import word_tokenizer
from sae_circuits.toy.world import World, build_world

__all__ = [
    "TOY_FACTS_DIR",
    "TOY_MULTILINGUAL_DIR",
    "TOY_NAMES",
    "ToyName",
    "load_toy_feature_info",
    "load_toy_labels",
    "load_toy_model",
    "load_toy_transcoders",
    "load_toy_world",
    "model_from_files",
    "toy_dir",
    "toy_tokenizer",
    "toy_transcoders_path",
]

logger = logging.getLogger(__name__)

#: Folder of the shipped weights.
TOY_FACTS_DIR = Path(__file__).parent / "weights" / "toy-facts"
#: Folder of the sibling model of the multilingual case study (:mod:`sae_circuits.toy.multilingual`).
TOY_MULTILINGUAL_DIR = Path(__file__).parent / "weights" / "toy-multilingual"

Kind = Literal["plt", "clt"]
#: The shipped toy models.
ToyName = Literal["toy-facts", "toy-multilingual"]
TOY_NAMES: tuple[str, ...] = ("toy-facts", "toy-multilingual")


def toy_dir(name: ToyName = "toy-facts") -> Path:
    """Folder of a shipped toy model's files.

    Args:
        name: ``"toy-facts"`` or ``"toy-multilingual"``.

    Returns:
        The folder.
    """
    if name == "toy-facts":
        return TOY_FACTS_DIR
    if name == "toy-multilingual":
        return TOY_MULTILINGUAL_DIR
    raise ValueError(f"unknown toy model {name!r}; valid names: {', '.join(TOY_NAMES)}")


#: Position of the city in ``"<bos> the capital of the state containing CITY is"``.
CITY_POSITION = 7


def toy_tokenizer(vocab: Sequence[str]) -> PreTrainedTokenizerFast:
    """The toy word tokenizer: whitespace split, lowercased, ``<bos>``/``<pad>``/``<unk>``.

    Args:
        vocab: Words in id order (``world.vocabulary()``).

    Returns:
        A fast tokenizer to assign to ``model.tokenizer``.
    """
    tok = word_tokenizer(list(vocab), bos="<bos>", unk="<unk>")
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    # specials also when glued to a word: TransformerLens prepends BOS as "<bos>" + text
    specials = {"bos_token": "<bos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    added: dict[str, Any] = {
        k: AddedToken(w, single_word=False, normalized=False) for k, w in specials.items()
    }
    tok.add_special_tokens(added)
    return tok


def model_from_files(folder: str | Path, *, device: str = "cpu") -> HookedTransformer:
    """A model saved by ``train.save_model``: ``config.json``, ``model.safetensors``, ``vocab.json``.

    Args:
        folder: The folder.
        device: Device of the weights.

    Returns:
        A float32 ``HookedTransformer`` in eval mode, with the toy tokenizer.
    """
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    cfg = {**cfg, "device": device, "dtype": torch.float32}
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    state = {k: v.to(torch.float32) for k, v in load_file(folder / "model.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k in dict(model.named_parameters())]
    if missing or unexpected:
        raise ValueError(f"{folder}: missing weights {missing}, unexpected weights {unexpected}")
    model.eval()
    model.tokenizer = toy_tokenizer(vocab)
    # to_tokens / to_str_tokens work: BOS is prepended by TransformerLens, not the tokenizer
    model.cfg.tokenizer_prepends_bos = False
    return model


def load_toy_model(*, name: ToyName = "toy-facts", device: str = "cpu") -> HookedTransformer:
    """A shipped toy model, with its tokenizer (offline).

    Args:
        name: ``"toy-facts"`` (cities and capitals, the default) or ``"toy-multilingual"``
            (antonyms and synonyms in three toy languages, ``docs/multilingual.md``).
        device: Device of the weights.

    Returns:
        A float32 4-layer GPT-2-style ``HookedTransformer`` in eval mode.
    """
    return model_from_files(toy_dir(name), device=device)


def toy_transcoders_path(kind: Kind = "plt", *, name: ToyName = "toy-facts") -> Path:
    """Folder of the shipped transcoders.

    Args:
        kind: ``"plt"`` (per-layer transcoders, ``layer_{i}/`` SAELens folders) or ``"clt"``
            (cross-layer transcoder, ``W_enc_{l}``/``W_dec_{l}`` safetensors + ``config.yaml``).
        name: The toy model (``"toy-facts"`` or ``"toy-multilingual"``).

    Returns:
        The folder.
    """
    if kind not in ("plt", "clt"):
        raise ValueError(f"unknown transcoder kind {kind!r}; valid kinds: 'plt', 'clt'")
    return toy_dir(name) / ("transcoders" if kind == "plt" else "clt")


def load_toy_transcoders(kind: Kind = "plt", *, name: ToyName = "toy-facts") -> Any:
    """The shipped transcoders as a transcoder set (``sae_circuits.load_transcoders``).

    Args:
        kind: ``"plt"`` (four SAELens ``JumpReLUTranscoder``, 512 features each) or ``"clt"``
            (a cross-layer transcoder, 384 features per layer).
        name: The toy model (``"toy-facts"`` or ``"toy-multilingual"``).

    Returns:
        A :class:`~sae_circuits.transcoders.sets.TranscoderSet` (float32, CPU).
    """
    from sae_circuits.transcoders import load_transcoders

    return load_transcoders(toy_transcoders_path(kind, name=name))


def load_toy_labels(kind: Kind = "plt", *, name: ToyName = "toy-facts") -> dict[int, list[str]]:
    """Human-readable labels of the shipped transcoder features (computed at training time).

    Args:
        kind: ``"plt"`` or ``"clt"``.
        name: The toy model (``"toy-facts"`` or ``"toy-multilingual"``).

    Returns:
        ``layer -> labels`` (index = feature), e.g. ``labels[0][320] == "texas (state of city)"``.
    """
    return {int(k): v for k, v in _labels_file(toy_dir(name))[kind]["labels"].items()}


def load_toy_feature_info(
    kind: Kind = "plt", *, name: ToyName = "toy-facts"
) -> dict[int, list[dict[str, Any]]]:
    """Per-feature details behind the labels (place, top words and contexts, density, logit lens).

    Args:
        kind: ``"plt"`` or ``"clt"``.
        name: The toy model (``"toy-facts"`` or ``"toy-multilingual"``).

    Returns:
        ``layer -> list of dicts`` (index = feature).
    """
    return {int(k): v for k, v in _labels_file(toy_dir(name))[kind]["info"].items()}


@lru_cache(maxsize=4)
def _labels_file(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "labels.json").read_text(encoding="utf-8"))


def load_toy_world() -> World:
    """The world the shipped model was trained on (held-out cities as shipped)."""
    meta = json.loads((TOY_FACTS_DIR / "world.json").read_text())
    world = build_world(seed=meta["seed"], held_out_per_place=meta["held_out_per_place"])
    if sorted(world.held_out) != sorted(meta["held_out"]):
        raise ValueError("world.json's held-out cities differ from build_world's")
    return world
