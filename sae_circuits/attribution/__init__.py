"""Attribution: the graph of direct effects in the frozen local replacement model.

Floor 3 (above :mod:`sae_circuits.replacement_model` and :mod:`sae_circuits.graph`).
:func:`attribute` runs in phases: the clean pass (``replacement_model``), each block's frozen
replay and its vector-Jacobian product (:mod:`._backward`, with the batched frozen-attention rule
of :mod:`._frozen_attention`), rows of targets in bounded slices stored sparse (:mod:`._rows`),
influence-ordered visiting of features, the targets (:mod:`._targets`: logits, logit differences,
directions at the unembedding's input or at a hook), and assembly into an ``AttributionGraph`` by the node
layout of :mod:`sae_circuits.graph`.

Example:
    >>> graph = attribute(model, "The capital of the state containing Dallas is", transcoders)
"""

from sae_circuits.attribution._attention import (
    QKAttribution,
    attribute_attention,
    attribute_attention_for_edge,
    attribute_attention_keys,
    qk_sites,
)
from sae_circuits.attribution._attribute import attribute, select_logits
from sae_circuits.attribution._backward import RowSlice, Trace, trace
from sae_circuits.attribution._heads import head_loadings
from sae_circuits.attribution._targets import (
    ResolvedTarget,
    Target,
    TargetKind,
    TargetReader,
    resolve_targets,
)

__all__ = [
    "QKAttribution",
    "ResolvedTarget",
    "RowSlice",
    "Target",
    "TargetKind",
    "TargetReader",
    "Trace",
    "attribute",
    "attribute_attention",
    "attribute_attention_for_edge",
    "attribute_attention_keys",
    "head_loadings",
    "qk_sites",
    "resolve_targets",
    "select_logits",
    "trace",
]
