"""Evaluating the toy-facts model: answer accuracy, the place features, the state swap.

Used by the training pipeline (:mod:`toy_training.train`) and the toy-facts tests; not part of
the installed package, which keeps only the weights and their loaders (:mod:`sae_circuits.toy`).

Example:
    >>> from toy_training.evaluate import evaluate, state_swap
    >>> evaluate(load_toy_model(), load_toy_world())
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_circuits.toy.facts import CITY_POSITION
from sae_circuits.toy.world import Sentence, World

__all__ = [
    "SwapResult",
    "answer_accuracy",
    "encode_sentences",
    "evaluate",
    "place_features",
    "state_swap",
]


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
    from sae_circuits.core.prompts import to_tokens
    from sae_circuits.replacement_model import replacement

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
