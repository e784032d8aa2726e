"""Human-readable labels of the toy-facts transcoder features, from what they respond to.

Method: a feature's activations over every distinct context of the world's sentences (see
``coders.collect_activations``) are read as a distribution of *activation mass*. Each context
has a few descriptions: its current word (``dallas``), the state or country of that word when it
is a city or a place (``texas``), that place's region (``south``), the place the sentence is
about when the context names one (``texas`` at ``is`` in ``"the capital of the state containing
dallas is"``), the word that must come next when the context determines it (``austin``), and the
word's category (any city, any state, any country). The label is the most *specific*
description (in the order listed below) that covers at least half of the mass and not much less
(:data:`SPECIFICITY_SLACK`) than the broadest one; else a *generic* one; else the top words:

* ``"dallas"``: fires on one name;
* ``"texas (state of city)"`` / ``"france (country of city)"``: fires on the cities of a place;
  ``"texas (place or its cities)"``: on the place's name and its cities;
* ``"say austin"``: fires where the next word is ``austin``;
* ``"texas (in context)"``: fires after a mention of a Texas city or of Texas;
* ``"south (region of place or city)"``: fires on the places of a region and their cities;
* generic: ``"any city"`` / ``"any state"`` / ``"any country"``; ``"'is' (capital question)"``:
  one word in questions about one relation; ``"'is' (word)"``: one word, whatever the context;
* ``"mixed: a/b/c"``: nothing covers half of the mass (the top current words).

Alongside, each feature's *output* is summarised by the logit lens of its decoder (the tokens its
direct path to the unembedding promotes most). Labels are computed at training time and shipped
as ``labels.json``; :func:`sae_circuits.toy.facts.load_toy_labels` reads them.

Example:
    >>> labels = compute_labels(model, world, data, coder)     # coder: coders.SparseCoder
    >>> labels["labels"]["0"][320], labels["info"]["0"][320]["out"]
    ('texas (state of city)', ['texas', 'spain', 'chinese'])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_circuits.toy.world import World

__all__ = ["compute_labels", "label_features"]

#: Minimum share of a feature's activation mass a description must cover to name it.
MIN_COVERAGE = 0.5
#: A more specific description wins over a broader one that covers at most this much more.
SPECIFICITY_SLACK = 0.3


def _contexts(
    world: World, sentence: Sequence[int], position: Sequence[int]
) -> list[dict[str, Any]]:
    """Descriptions of each context (row): word, place of word, place in context, next word."""
    sents = world.sentences()
    place_names = {p.name for p in world.places}
    # next words of every prefix (a prefix shared by sentences with different continuations
    # has no determined next word)
    nexts: dict[tuple[str, ...], set[str]] = defaultdict(set)
    relations: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for s in sents:
        words = s.text.split()
        for p in range(1, len(words)):
            nexts[tuple(words[:p])].add(words[p])
            relations[tuple(words[:p])].add(s.relation)
    out = []
    for si, pos in zip(sentence, position, strict=True):
        words = sents[si].text.split()
        prefix = words[:pos]  # position 0 is <bos>, position p is word p - 1
        word = prefix[-1]
        if word in place_names:
            place_of_word = word
        elif word in world.cities:
            place_of_word = world.place_of(word).name
        else:
            place_of_word = None
        mentioned = [
            w if w in place_names else world.place_of(w).name
            for w in prefix
            if w in place_names or w in world.cities
        ]
        nxt = nexts.get(tuple(prefix), set())
        if word in place_names:
            category = f"any {world.place(word).kind}"
        elif word in world.cities:
            category = "any city"
        else:
            category = None
        out.append(
            {
                "word": word,
                "category": category,
                "region": world.place(place_of_word).region if place_of_word else None,
                "place_of_word": place_of_word,
                "is_city": word in world.cities,
                "context_place": mentioned[-1] if mentioned else None,
                "next": next(iter(nxt)) if len(nxt) == 1 else None,
                "question": _question(word, relations.get(tuple(prefix), set())),
                "text": " ".join([*prefix[:-1], f"[{word}]"]),
            }
        )
    return out


def _question(word: str, relations: set[str]) -> str | None:
    """``"'is' (capital question)"`` for a word whose sentences all ask for one relation."""
    if len(relations) != 1 or next(iter(relations)) == "place":
        return None
    return f"'{word}' ({next(iter(relations))} question)"


def _coverage(acts: torch.Tensor, keys: Sequence[str | None]) -> tuple[str | None, float]:
    """The key with the most activation mass and its share."""
    mass: dict[str, float] = defaultdict(float)
    for a, k in zip(acts.tolist(), keys, strict=True):
        if k is not None and a > 0:
            mass[k] += a
    if not mass:
        return None, 0.0
    best = max(mass, key=lambda k: mass[k])
    return best, mass[best] / float(acts.sum())


def label_features(
    world: World,
    contexts: list[dict[str, Any]],
    acts: torch.Tensor,
    out_tokens: list[list[str]] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Labels and details of the features of one layer.

    Args:
        world: The world.
        contexts: Descriptions of the ``M`` contexts (from ``_contexts``).
        acts: ``(M, F)`` feature activations at those contexts.
        out_tokens: Per feature, the tokens its decoder promotes most (logit lens), or ``None``.

    Returns:
        ``(labels, info)``: ``F`` label strings and ``F`` dicts (``density``, ``max``,
        ``place`` (the place the label is about, or ``None``), ``words`` (top current words and
        mass shares), ``top`` (top two contexts, current word in brackets), ``out``).
    """
    names = {p.name for p in world.places} | set(world.cities)
    kinds = {p.name: p.kind for p in world.places}
    content = names | {p.region for p in world.places} | {p.language for p in world.places}
    keys = {
        k: [c[k] for c in contexts]
        for k in ("word", "category", "region", "context_place", "question")
    }
    keys["place_of_city"] = [c["place_of_word"] if c["is_city"] else None for c in contexts]
    keys["place_of_word"] = [c["place_of_word"] for c in contexts]
    keys["next"] = [c["next"] if c["next"] in content else None for c in contexts]
    labels, info = [], []
    for f in range(acts.shape[1]):
        a = acts[:, f]
        item: dict[str, Any] = {"density": round(float((a > 0).float().mean()), 4)}
        item["max"] = round(float(a.max()), 3)
        if out_tokens is not None:
            item["out"] = out_tokens[f]
        if float(a.sum()) <= 0:
            labels.append("dead")
            item.update(place=None, words=[], top=[])
            info.append(item)
            continue
        chosen = _choose(a, keys, names, kinds)
        labels.append(chosen)
        item["place"] = _place_of_label(world, chosen)
        item["words"] = [[w, round(s, 3)] for w, s in _top_keys(a, keys["word"], 3)]
        top = torch.argsort(a, descending=True)[:2]
        item["top"] = [
            [contexts[i]["text"], round(float(a[i]), 3)] for i in top.tolist() if a[i] > 0
        ]
        info.append(item)
    return labels, info


def _choose(
    a: torch.Tensor, keys: dict[str, list[Any]], names: set[str], kinds: dict[str, str]
) -> str:
    """The label of one feature: the best-covering specific description, else a generic one."""
    cov = {k: _coverage(a, v) for k, v in keys.items()}
    word, c_word = cov["word"]
    # specific descriptions, in order of preference among near-equal coverages
    specific: list[tuple[float, str]] = []
    if word in names:
        specific.append((c_word, word))
    city_place, c_city_place = cov["place_of_city"]
    place, c_place = cov["place_of_word"]
    if city_place is not None and c_city_place >= c_place - 1e-6:
        specific.append((c_city_place, f"{city_place} ({kinds[city_place]} of city)"))
    elif place is not None:
        specific.append((c_place, f"{place} (place or its cities)"))
    nxt, c_next = cov["next"]
    if nxt is not None:
        specific.append((c_next, f"say {nxt}"))
    ctx, c_ctx = cov["context_place"]
    if ctx is not None:
        specific.append((c_ctx, f"{ctx} (in context)"))
    region, c_region = cov["region"]
    if region is not None:
        specific.append((c_region, f"{region} (region of place or city)"))
    # generic descriptions
    generic: list[tuple[float, str]] = []
    category, c_category = cov["category"]
    if category is not None:
        generic.append((c_category, category))
    question, c_question = cov["question"]
    if question is not None:
        generic.append((c_question, question))
    if word is not None and word not in names:
        generic.append((c_word, f"'{word}' (word)"))
    for cands in (specific, generic):
        if not cands:
            continue
        # the most specific description that covers enough, and not much less than the best
        best = max(c for c, _ in cands)
        for c, lab in cands:
            if c >= MIN_COVERAGE and c >= best - SPECIFICITY_SLACK:
                return lab
    return "mixed: " + "/".join(w for w, _ in _top_keys(a, keys["word"], 3))


def _place_of_label(world: World, label: str) -> str | None:
    """The place a label is about (``"dallas"`` -> ``"texas"``, ``"say austin"`` -> ``"texas"``)."""
    if label.startswith(("mixed:", "'", "dead", "any ")) or "(region" in label:
        return None
    name = label.removeprefix("say ").split(" (")[0]
    places = {p.name for p in world.places}
    if name in places:
        return name
    if name in world.cities:
        return world.place_of(name).name
    return None


def _top_keys(acts: torch.Tensor, keys: Sequence[str | None], k: int) -> list[tuple[str, float]]:
    mass: dict[str, float] = defaultdict(float)
    for a, key in zip(acts.tolist(), keys, strict=True):
        if key is not None and a > 0:
            mass[key] += a
    total = sum(mass.values()) or 1.0
    ranked = sorted(mass.items(), key=lambda kv: -kv[1])[:k]
    return [(key, m / total) for key, m in ranked]


@torch.no_grad()
def compute_labels(model: HookedTransformer, world: World, data: Any, coder: Any) -> dict[str, Any]:
    """Labels of every feature of a trained coder (``coders.SparseCoder``) on its data.

    Args:
        model: The toy model (its unembedding gives the logit lens of decoders).
        world: The world.
        data: ``coders.Activations`` (inputs ``x`` ``(L, M, d)``, ``sentence``, ``position``).
        coder: ``coders.SparseCoder`` (``encode``, ``W_dec``).

    Returns:
        ``{"labels": {layer: [F labels]}, "info": {layer: [F dicts]}}`` (JSON-able; layer keys
        are strings).
    """
    contexts = _contexts(world, data.sentence.tolist(), data.position.tolist())
    acts = coder.encode(data.x)
    vocab = world.vocabulary()
    W_U = model.W_U.detach()
    labels, info = {}, {}
    for layer in range(acts.shape[0]):
        direct = coder.W_dec[layer].sum(1)  # (F, d): everything the feature writes
        logits = direct @ W_U
        logits = logits - logits.mean(-1, keepdim=True)
        top = torch.topk(logits, 3, dim=-1).indices.tolist()
        out_tokens = [[vocab[i] for i in row] for row in top]
        lab, inf = label_features(world, contexts, acts[layer], out_tokens)
        labels[str(layer)] = lab
        info[str(layer)] = inf
    return {"labels": labels, "info": info}
