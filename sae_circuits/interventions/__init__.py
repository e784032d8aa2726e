"""Interventions: test what a graph claims by changing features and measuring the effect.

Floor 4 (above :mod:`sae_circuits.attribution`): :func:`intervene` (set or scale features, with
frozen or live attention, in the replacement model with the clean error terms), :func:`generate`
(continuations with interventions), predictions from a graph and their comparison with
measurement, and supernodes (groups of features, e.g. from a Neuronpedia selection).

Example:
    >>> result = intervene(model, prompt, transcoders, [(0, 7, 320, 0.0)])
    >>> result.top_logits(3)
"""

from sae_circuits.interventions._generate import GenerationResult, generate
from sae_circuits.interventions._inputs import Interventions, parse_interventions
from sae_circuits.interventions._intervene import (
    InterventionResult,
    compare_with_graph,
    intervene,
    predict_changes,
)
from sae_circuits.interventions._supernodes import (
    NeuronpediaSelection,
    Supernode,
    SupernodeExperiment,
    activations_from,
    experiment,
    from_neuronpedia_url,
    supernode_activations,
)

__all__ = [
    "GenerationResult",
    "InterventionResult",
    "Interventions",
    "NeuronpediaSelection",
    "Supernode",
    "SupernodeExperiment",
    "activations_from",
    "compare_with_graph",
    "experiment",
    "from_neuronpedia_url",
    "generate",
    "intervene",
    "parse_interventions",
    "predict_changes",
    "supernode_activations",
]
