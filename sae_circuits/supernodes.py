"""Supernodes (``sc.supernodes``): re-exported from :mod:`sae_circuits.interventions`.

Kept as a module because earlier versions documented ``sc.supernodes.experiment(...)``.

Example:
    >>> sc.supernodes.experiment(model, prompt, transcoders, supernodes)
"""

from sae_circuits.interventions import (
    NeuronpediaSelection,
    Supernode,
    SupernodeExperiment,
    activations_from,
    experiment,
    from_neuronpedia_url,
    supernode_activations,
)

__all__ = [
    "NeuronpediaSelection",
    "Supernode",
    "SupernodeExperiment",
    "activations_from",
    "experiment",
    "from_neuronpedia_url",
    "supernode_activations",
]
