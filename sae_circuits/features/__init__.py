"""Feature dashboards built locally: what each transcoder feature responds to and writes.

Floor 3 (above :mod:`sae_circuits.replacement_model`). :func:`build_features` runs a model over
a corpus (a text / JSON lines file, a local dataset folder or a Hugging Face dataset name) and
writes, per feature, its top activating contexts with per-token activations, contexts sampled
from activation quantile bands, an activation histogram, its density, and the top / bottom logit
effects of its decoder; streamed (memory bounded by ``k x features``, not the corpus) and
resumable from a checkpoint. The file format (``docs/features.md``) follows circuit-tracer's
local viewer and Neuronpedia; :func:`read_feature_file` reads and checks one file (the viewer
uses it); :func:`export_circuit_tracer` copies a folder into circuit-tracer's viewer layout.

One module per concept: :mod:`._corpus` (reading and windowing), :mod:`._accumulator` (the
streaming statistics), :mod:`._logits` (logit effects), :mod:`._store` (the files),
:mod:`._build` (the run).

Example:
    >>> build_features(model, transcoders, "corpus.txt", "out/features", top_k=10, max_tokens=10_000)
    >>> read_feature_file("out/features", layer=1, feature=7)["top_logits"]
"""

from sae_circuits.features._accumulator import LayerStats
from sae_circuits.features._build import CHECKPOINT, FeatureBuild, build_features, graph_features
from sae_circuits.features._corpus import iter_texts, token_windows
from sae_circuits.features._logits import LogitEffects, logit_effects
from sae_circuits.features._store import (
    FORMAT,
    FeatureFileError,
    circuit_tracer_index,
    export_circuit_tracer,
    feature_path,
    read_feature_file,
    read_index,
    write_feature_files,
    write_index,
)

__all__ = [
    "CHECKPOINT",
    "FORMAT",
    "FeatureBuild",
    "FeatureFileError",
    "LayerStats",
    "LogitEffects",
    "build_features",
    "circuit_tracer_index",
    "export_circuit_tracer",
    "feature_path",
    "graph_features",
    "iter_texts",
    "logit_effects",
    "read_feature_file",
    "read_index",
    "token_windows",
    "write_feature_files",
    "write_index",
]
