"""Offline toy models, transcoders and tokenizers (tests, examples, the built-in demo).

``tiny_model`` / ``tiny_transcoders``: random models for tests. ``synthetic_graph``: random graphs of any
size shaped like attribution graphs (benchmarks, layouts). ``load_toy_model`` /
``load_toy_transcoders``: the shipped "toy-facts" model, trained on a synthetic world of cities
and states, with trained per-layer and cross-layer transcoders (see ``docs/toy_model.md``);
``load_toy_model(name="toy-multilingual")`` its sibling of the multilingual case study, trained on
``build_multilingual_world`` (``docs/multilingual.md``).
"""

from sae_circuits.toy._synthetic import synthetic_graph
from sae_circuits.toy.facts import (
    load_toy_feature_info,
    load_toy_labels,
    load_toy_model,
    load_toy_transcoders,
    load_toy_world,
    toy_transcoders_path,
)
from sae_circuits.toy.multilingual import build_multilingual_world, load_multilingual_world
from sae_circuits.toy.tiny import ARCHS, HOOKS, tiny_clt, tiny_model, tiny_transcoders
from sae_circuits.toy.tokenizer import word_tokenizer
from sae_circuits.toy.world import build_world

__all__ = [
    "ARCHS",
    "HOOKS",
    "build_multilingual_world",
    "build_world",
    "load_multilingual_world",
    "load_toy_feature_info",
    "load_toy_labels",
    "load_toy_model",
    "load_toy_transcoders",
    "load_toy_world",
    "synthetic_graph",
    "tiny_clt",
    "tiny_model",
    "tiny_transcoders",
    "toy_transcoders_path",
    "word_tokenizer",
]
