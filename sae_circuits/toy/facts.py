"""The embedded "toy-facts" model: a tiny transformer trained on a synthetic world, offline.

Shipped under ``sae_circuits/toy/weights/toy-facts/``: a 4-layer GPT-2-style
``HookedTransformer`` trained (``sae_circuits.toy.train``) on the sentences of
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, normalizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from sae_circuits.toy.tokenizer import word_tokenizer
from sae_circuits.toy.world import Sentence, World, build_world

__all__ = [
    "CITY_POSITION",
    "TOY_FACTS_DIR",
    "SwapResult",
    "answer_accuracy",
    "encode_sentences",
    "evaluate",
    "load_toy_feature_info",
    "load_toy_labels",
    "load_toy_model",
    "load_toy_transcoders",
    "load_toy_world",
    "model_from_files",
    "place_features",
    "state_swap",
    "toy_tokenizer",
    "toy_transcoders_path",
]

logger = logging.getLogger(__name__)

#: Folder of the shipped weights.
TOY_FACTS_DIR = Path(__file__).parent / "weights" / "toy-facts"

Kind = Literal["plt", "clt"]

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
    vocab = json.loads((folder / "vocab.json").read_text())
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


def load_toy_model(*, device: str = "cpu") -> HookedTransformer:
    """The shipped toy-facts model, with its tokenizer (offline).

    Args:
        device: Device of the weights.

    Returns:
        A float32 4-layer GPT-2-style ``HookedTransformer`` in eval mode.
    """
    return model_from_files(TOY_FACTS_DIR, device=device)


def toy_transcoders_path(kind: Kind = "plt") -> Path:
    """Folder of the shipped transcoders.

    Args:
        kind: ``"plt"`` (per-layer transcoders, ``layer_{i}/`` SAELens folders) or ``"clt"``
            (cross-layer transcoder, ``W_enc_{l}``/``W_dec_{l}`` safetensors + ``config.yaml``).

    Returns:
        The folder.
    """
    if kind not in ("plt", "clt"):
        raise ValueError(f"unknown transcoder kind {kind!r}; valid kinds: 'plt', 'clt'")
    return TOY_FACTS_DIR / ("transcoders" if kind == "plt" else "clt")


def load_toy_transcoders(kind: Kind = "plt") -> Any:
    """The shipped transcoders as a transcoder set (``sae_circuits.load_transcoders``).

    Args:
        kind: ``"plt"`` (four SAELens ``JumpReLUTranscoder``, 512 features each) or ``"clt"``
            (a cross-layer transcoder, 384 features per layer).

    Returns:
        A :class:`~sae_circuits.transcoders.sets.TranscoderSet` (float32, CPU).
    """
    from sae_circuits.transcoders import load_transcoders

    return load_transcoders(toy_transcoders_path(kind))


def load_toy_labels(kind: Kind = "plt") -> dict[int, list[str]]:
    """Human-readable labels of the shipped transcoder features (computed at training time).

    Args:
        kind: ``"plt"`` or ``"clt"``.

    Returns:
        ``layer -> labels`` (index = feature), e.g. ``labels[0][320] == "texas (state of city)"``.
    """
    return {int(k): v for k, v in _labels_file()[kind]["labels"].items()}


def load_toy_feature_info(kind: Kind = "plt") -> dict[int, list[dict[str, Any]]]:
    """Per-feature details behind the labels (place, top words and contexts, density, logit lens).

    Args:
        kind: ``"plt"`` or ``"clt"``.

    Returns:
        ``layer -> list of dicts`` (index = feature).
    """
    return {int(k): v for k, v in _labels_file()[kind]["info"].items()}


@lru_cache(maxsize=1)
def _labels_file() -> dict[str, Any]:
    return json.loads((TOY_FACTS_DIR / "labels.json").read_text())


def load_toy_world() -> World:
    """The world the shipped model was trained on (held-out cities as shipped)."""
    meta = json.loads((TOY_FACTS_DIR / "world.json").read_text())
    world = build_world(seed=meta["seed"], held_out_per_place=meta["held_out_per_place"])
    if sorted(world.held_out) != sorted(meta["held_out"]):
        raise ValueError("world.json's held-out cities differ from build_world's")
    return world


def encode_sentences(
    texts: Sequence[str], vocab: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of whole sentences, ``<bos>`` first, right-padded with ``<pad>``.

    Args:
        texts: Sentences (lowercase words).
        vocab: The vocabulary.

    Returns:
        ``(N, T)`` token ids and ``(N,)`` lengths (``<bos>`` included).
    """
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index["<bos>"], *(index[w] for w in t.split())] for t in texts]
    n = max(len(r) for r in rows)
    tokens = torch.full((len(rows), n), index["<pad>"], dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return tokens, torch.tensor([len(r) for r in rows])


def _prompt_tokens(
    model: HookedTransformer, sentences: Sequence[Sentence]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tok = model.tokenizer
    assert tok is not None
    bos, pad = int(tok.bos_token_id), int(tok.pad_token_id)  # type: ignore[arg-type]
    ids = [[bos, *tok(s.prompt, add_special_tokens=False)["input_ids"]] for s in sentences]
    n = max(len(i) for i in ids)
    tokens = torch.full((len(ids), n), pad, dtype=torch.long)
    for row, i in enumerate(ids):
        tokens[row, : len(i)] = torch.tensor(i)
    last = torch.tensor([len(i) - 1 for i in ids])
    answers = torch.tensor([tok.convert_tokens_to_ids(s.answer) for s in sentences])
    return tokens, last, answers


@torch.no_grad()
def answer_accuracy(
    model: HookedTransformer, sentences: Sequence[Sentence], *, batch_size: int = 512
) -> float:
    """Fraction of sentences whose answer is the model's top-1 next token after the prompt.

    Args:
        model: A model with the toy tokenizer.
        sentences: Sentences of the world (prompt = all words but the last).
        batch_size: Sentences per forward pass.

    Returns:
        Top-1 accuracy in ``[0, 1]`` (``nan`` for no sentences).
    """
    if not sentences:
        return float("nan")
    correct = 0
    for lo in range(0, len(sentences), batch_size):
        tokens, last, answers = _prompt_tokens(model, sentences[lo : lo + batch_size])
        logits = model(tokens.to(model.cfg.device))
        pred = logits[torch.arange(len(last)), last.to(logits.device)].argmax(-1).cpu()
        correct += int((pred == answers).sum())
    return correct / len(sentences)


def evaluate(model: HookedTransformer, world: World) -> dict[str, float]:
    """Answer accuracies on the world's splits.

    Args:
        model: A model with the toy tokenizer.
        world: The world.

    Returns:
        Top-1 accuracies: ``train`` (all training sentences), ``train_two_hop``,
        ``heldout_one_hop`` (``"the state containing X is"`` for held-out cities),
        ``heldout_two_hop`` and per template ``heldout_two_hop_capital`` / ``_region`` /
        ``_language``.
    """
    sents = world.sentences()
    groups = {
        "train": [s for s in sents if s.split == "train"],
        "train_two_hop": [s for s in sents if s.split == "train" and s.hops == 2],
        "heldout_one_hop": [s for s in sents if s.split == "heldout" and s.hops == 1],
        "heldout_two_hop": [s for s in sents if s.split == "heldout" and s.hops == 2],
    }
    for template in ("two_hop_capital", "two_hop_region", "two_hop_language"):
        groups[f"heldout_{template}"] = [
            s for s in sents if s.split == "heldout" and s.template == template
        ]
    return {k: answer_accuracy(model, v) for k, v in groups.items()}


def place_features(
    acts: Mapping[int, torch.Tensor], info: Mapping[int, Sequence[Mapping[str, Any]]], place: str
) -> dict[int, list[int]]:
    """The active features whose label is about ``place`` (``info[layer][f]["place"]``).

    Args:
        acts: ``layer -> (F,)`` activations at one position.
        info: Feature details (:func:`load_toy_feature_info`).
        place: E.g. ``"texas"``.

    Returns:
        ``layer -> feature ids``.
    """
    return {
        layer: [f for f in torch.nonzero(a).flatten().tolist() if info[layer][f]["place"] == place]
        for layer, a in acts.items()
    }


@dataclass(frozen=True)
class SwapResult:
    """Outcome of :func:`state_swap`.

    Attributes:
        removed: ``layer -> features`` turned off (the first place's, at the city).
        added: ``layer -> features`` turned on (the second place's, from the second prompt).
        clean: ``(token, probability)`` of the top 5 next tokens before.
        swapped: ``(token, probability)`` of the top 5 after.
    """

    removed: dict[int, list[int]]
    added: dict[int, list[int]]
    clean: list[tuple[str, float]]
    swapped: list[tuple[str, float]]


@torch.no_grad()
def state_swap(
    model: HookedTransformer,
    transcoders: Any,
    info: Mapping[int, Sequence[Mapping[str, Any]]],
    *,
    prompt: str = "The capital of the state containing Dallas is",
    source: str = "The capital of the state containing Oakland is",
    places: tuple[str, str] = ("texas", "california"),
    position: int = CITY_POSITION,
) -> SwapResult:
    """Swap one place's features for another's at the city position, in the replacement model.

    The prompt runs as its local replacement model with error terms frozen at their clean
    values; at ``position``, in every layer, the active features about ``places[0]`` are set to
    zero and those about ``places[1]`` (active on ``source`` at the same position) are set to
    their activations there. Later features are recomputed.

    Args:
        model: The toy model.
        transcoders: A transcoder set (per-layer or cross-layer).
        info: Feature details of those transcoders (:func:`load_toy_feature_info`).
        prompt: The prompt intervened on.
        source: The prompt the added features' activations come from (same length).
        places: ``(place turned off, place turned on)``.
        position: The city's position in both prompts.

    Returns:
        The :class:`SwapResult`.
    """
    from sae_circuits.attribution import to_tokens
    from sae_circuits.replacement import replacement

    tokens, src = to_tokens(model, prompt), to_tokens(model, source)
    with replacement(model, transcoders) as state:
        model(src[None])
    src_acts = {layer: a.to_dense()[0, position] for layer, a in state.activations.items()}
    with replacement(model, transcoders) as state:
        clean = model(tokens[None])[0, -1]
    errors = dict(state.errors)
    acts = {layer: a.to_dense()[0, position] for layer, a in state.activations.items()}
    removed, added = (
        place_features(acts, info, places[0]),
        place_features(src_acts, info, places[1]),
    )

    def swap(layer: int, a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        a[:, position, removed[layer]] = 0.0
        a[:, position, added[layer]] = src_acts[layer][added[layer]].to(a.dtype)
        return a

    with replacement(model, transcoders, errors=errors, feature_hook=swap):
        swapped = model(tokens[None])[0, -1]
    return SwapResult(removed, added, _top5(model, clean), _top5(model, swapped))


def _top5(model: HookedTransformer, logits: torch.Tensor) -> list[tuple[str, float]]:
    probs, ids = torch.topk(torch.softmax(logits.float(), -1), 5)
    assert model.tokenizer is not None
    return [
        (str(model.tokenizer.decode([int(i)])), round(float(p), 4))
        for p, i in zip(probs, ids, strict=True)
    ]
