"""Attribution over a dataset: many prompts into a resumable graph store, in this process or
on a Ray cluster, and dataset-level tables over the store.

Floor 5 (uses :mod:`sae_circuits.models`, :mod:`sae_circuits.attribution` and
:mod:`sae_circuits.graph`). See ``docs/batch.md``.

* :func:`attribute_many`: every prompt's graph into a :class:`GraphStore` (one graph file per
  prompt, written atomically, and an index of prompt, file, logits, scores, timing, status); a
  rerun skips what is done and valid, a failing prompt is recorded with its error.
* :class:`InProcessExecutor` (the default) and :class:`RayExecutor` (one actor per GPU or per
  CPU slot, each loading the model and transcoders once; token ids go to the actors, graph files
  come out into the store; dead actors are replaced and their prompts retried).
* :func:`feature_occurrences`, :func:`feature_table`, :func:`prompt_top_features`,
  :func:`compare_groups` (pandas tables) and :func:`plot_features`.

Example:
    >>> import sae_circuits as sc
    >>> from sae_circuits.batch import RayExecutor, feature_table
    >>> result = sc.attribute_many("toy-facts", "toy-facts", prompts, "out/batch")
    >>> result.table[["prompt", "status", "top_token", "replacement", "seconds"]]
    >>> feature_table(result.store, labels=sc.toy.load_toy_labels()).head()
    >>> sc.attribute_many("toy-facts", "toy-facts", prompts, "out/batch",
    ...                   executor=RayExecutor("auto"))
"""

from sae_circuits.batch._executors import LOCAL_INIT, Executor, InProcessExecutor, RayExecutor
from sae_circuits.batch._plot import plot_features
from sae_circuits.batch._run import BatchResult, attribute_many
from sae_circuits.batch._store import (
    INDEX_COLUMNS,
    KEEP_CHOICES,
    GraphStore,
    Keep,
    StoreMismatchError,
    prompt_key,
)
from sae_circuits.batch._tables import (
    OCCURRENCE_COLUMNS,
    Labels,
    compare_groups,
    feature_occurrences,
    feature_table,
    prompt_top_features,
)
from sae_circuits.batch._worker import KNOBS, ModelSpec, Task, TranscodersSpec, Worker, WorkSpec

__all__ = [
    "INDEX_COLUMNS",
    "KEEP_CHOICES",
    "KNOBS",
    "LOCAL_INIT",
    "OCCURRENCE_COLUMNS",
    "BatchResult",
    "Executor",
    "GraphStore",
    "InProcessExecutor",
    "Keep",
    "Labels",
    "ModelSpec",
    "RayExecutor",
    "StoreMismatchError",
    "Task",
    "TranscodersSpec",
    "WorkSpec",
    "Worker",
    "attribute_many",
    "compare_groups",
    "feature_occurrences",
    "feature_table",
    "plot_features",
    "prompt_key",
    "prompt_top_features",
]
