"""The embedded default: the Dallas -> Texas -> Austin circuit on the shipped toy-facts model.

Offline, in seconds on a laptop CPU: attribute "The capital of the state containing Dallas is",
show the logits and the pruned circuit's main features (labelled by what they respond to in the
training corpus), then test what the graph claims: switch off the Texas features at the city
position and switch on the California features taken from the Oakland prompt, and watch the
answer move from Austin to Sacramento. Used by ``sae-circuits demo``.

Example:
    >>> report = run_demo()
    >>> report.swap.top_logits(1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sae_circuits.attribution import attribute
from sae_circuits.core.prompts import to_tokens
from sae_circuits.features import FeatureBuild, build_features, graph_features
from sae_circuits.graph import AttributionGraph, GraphScores, node_id
from sae_circuits.interventions import InterventionResult, intervene
from sae_circuits.models import load_model
from sae_circuits.transcoders import load_transcoders

__all__ = ["DEMO_FEATURE_TOKENS", "DemoReport", "build_demo_features", "run_demo"]

#: Tokens of the toy-facts training corpus the demo's feature dashboards read (a cap that keeps
#: ``sae-circuits demo`` at a few seconds).
DEMO_FEATURE_TOKENS = 3000

PROMPT = "The capital of the state containing Dallas is"
SOURCE = "The capital of the state containing Oakland is"


@dataclass(frozen=True)
class DemoReport:
    """What the demo computed.

    Attributes:
        graph: The full attribution graph of :data:`PROMPT`.
        pruned: ``graph.prune()`` (default thresholds).
        scores: The full graph's replacement and completeness scores.
        features: The pruned graph's main features: ``layer``, ``position``, ``token``,
            ``feature``, ``label``, ``activation``, ``influence``, most influential first.
        swap: The intervention (Texas features off, Oakland's California features on).
        labels: Feature labels of the graph by Neuronpedia-style node id ``layer_feature_pos``.
    """

    graph: AttributionGraph
    pruned: AttributionGraph
    scores: GraphScores
    features: pd.DataFrame
    swap: InterventionResult
    labels: dict[str, str]


def run_demo(
    *, transcoders: str = "toy-facts", progress: bool | None = False, top: int = 8
) -> DemoReport:
    """Attribute the Dallas prompt on toy-facts and run the swap experiment.

    Args:
        transcoders: ``"toy-facts"`` (per-layer) or ``"toy-facts-clt"`` (cross-layer).
        progress: Show the attribution progress bar (``None``: when stderr is a terminal).
        top: How many main features to report.

    Returns:
        The :class:`DemoReport`.
    """
    from sae_circuits.toy.facts import load_toy_feature_info, load_toy_labels

    kind = {"toy-facts": "plt", "toy-facts-clt": "clt"}.get(transcoders)
    if kind is None:
        raise ValueError(
            f"unknown demo transcoders {transcoders!r}; valid choices: toy-facts, toy-facts-clt"
        )
    model = load_model("toy-facts")
    ts = load_transcoders(transcoders)
    labels_by_layer = load_toy_labels(kind)  # type: ignore[arg-type]
    info = load_toy_feature_info(kind)  # type: ignore[arg-type]

    graph = attribute(model, PROMPT, ts, progress=progress)
    pruned = graph.prune()
    nodes = pruned.nodes
    feature_rows = np.flatnonzero((nodes["kind"] == "feature").to_numpy())
    influence = nodes["influence"].to_numpy(dtype=float)[feature_rows]
    feats = nodes.iloc[feature_rows[np.argsort(-influence, kind="stable")[:top]]]
    tokens = model.tokenizer.convert_ids_to_tokens(to_tokens(model, PROMPT).tolist())  # type: ignore[union-attr]
    features = pd.DataFrame(
        {
            "layer": feats["layer"].astype(int).to_numpy(),
            "position": feats["position"].astype(int).to_numpy(),
            "token": [tokens[int(p)] for p in feats["position"]],
            "feature": feats["feature"].astype(int).to_numpy(),
            "label": [
                labels_by_layer[int(la)][int(f)]
                for la, f in zip(feats["layer"], feats["feature"], strict=True)
            ],
            "activation": feats["activation"].astype(float).to_numpy(),
            "influence": feats["influence"].astype(float).to_numpy(),
        }
    )
    labels = {}
    all_feats = graph.nodes[graph.nodes["kind"] == "feature"]
    for layer, feature, pos in zip(
        all_feats["layer"], all_feats["feature"], all_feats["position"], strict=True
    ):
        labels[node_id("feature", layer=int(layer), feature=int(feature), position=int(pos))] = (
            labels_by_layer[int(layer)][int(feature)]
        )

    # the swap: Texas features off at the city, Oakland's California features on
    city = tokens.index("dallas")
    clean = intervene(model, PROMPT, ts, None, freeze_attention=False)
    oakland = intervene(model, SOURCE, ts, None, freeze_attention=False)
    interventions: list[tuple[int, int, int, float]] = []
    for place, run, value_from_run in (("texas", clean, False), ("california", oakland, True)):
        for layer, acts in run.clean_activations.items():
            dense = acts.to_dense()
            for f in dense[city].nonzero().flatten().tolist():
                if info[layer][f]["place"] == place:
                    value = float(dense[city, f]) if value_from_run else 0.0
                    interventions.append((layer, city, f, value))
    swap = intervene(model, PROMPT, ts, interventions, freeze_attention=False)
    return DemoReport(graph, pruned, graph.scores(), features, swap, labels)


def build_demo_features(
    graph: AttributionGraph,
    out: str | Path,
    *,
    transcoders: str = "toy-facts",
    max_tokens: int = DEMO_FEATURE_TOKENS,
    progress: bool | None = False,
) -> FeatureBuild:
    """Feature dashboards of ``graph``'s features from the toy-facts training corpus.

    Args:
        graph: A demo graph (its features are the ones written).
        out: The features folder (e.g. ``out/demo/features``, where ``sae-circuits serve
            out/demo`` looks).
        transcoders: ``"toy-facts"`` or ``"toy-facts-clt"``.
        max_tokens: Tokens of the training corpus to read (its sentences, in order).
        progress: Progress bar.

    Returns:
        The :class:`~sae_circuits.features.FeatureBuild`.
    """
    from sae_circuits.toy.facts import load_toy_labels, load_toy_world

    kind = {"toy-facts": "plt", "toy-facts-clt": "clt"}[transcoders]
    texts = [s.text for s in load_toy_world().split("train")]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
    return build_features(
        load_model("toy-facts"),
        load_transcoders(transcoders),
        texts,
        out,
        top_k=8,
        samples=8,
        max_tokens=max_tokens,
        context_len=32,
        batch_size=128,
        features=graph_features(graph),
        labels=load_toy_labels(kind),  # type: ignore[arg-type]
        progress=progress,
    )
