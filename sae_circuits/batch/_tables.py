"""Dataset-level tables over a graph store: which features matter across prompts.

Everything starts from :func:`feature_occurrences`, one row per (prompt, feature): the feature's
influence on the graph's targets (``w Â + w Â² + ...``, the quantity pruning ranks nodes by,
summed over the positions where the feature is active) and its largest activation. With pruned
graphs in the store, a feature *occurs* in a prompt when it is in the pruned circuit; with full
graphs only, when it is active (and influence is computed from the full adjacency).

* :func:`feature_table`: features by how often and how strongly they occur across graphs;
* :func:`prompt_top_features`: each prompt's most influential features;
* :func:`compare_groups`: features whose influence differs most between two sets of prompts
  (mean influence per prompt of each group, a feature absent from a graph counting 0).

Labels are ``layer -> list of strings`` (index = feature), e.g.
``sae_circuits.toy.load_toy_labels()``.

Example:
    >>> occ = feature_occurrences(store)
    >>> feature_table(occ, labels=labels).head(10)
    >>> compare_groups(occ, two_hop_keys, one_hop_keys, labels=labels).head(10)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal, cast

import numpy as np
import pandas as pd

from sae_circuits.batch._store import GraphStore
from sae_circuits.graph import AttributionGraph, node_influence

__all__ = [
    "OCCURRENCE_COLUMNS",
    "Labels",
    "compare_groups",
    "feature_occurrences",
    "feature_table",
    "prompt_top_features",
]

logger = logging.getLogger(__name__)

#: Feature labels: ``layer -> labels`` (index = feature).
Labels = Mapping[int, Sequence[str]]

Source = Literal["auto", "pruned", "full"]

OCCURRENCE_COLUMNS = ("key", "prompt", "layer", "feature", "n_positions", "influence", "activation")


def _graph_features(graph: AttributionGraph, *, pruned: bool) -> pd.DataFrame:
    nodes = graph.nodes
    if pruned:
        influence = nodes["influence"].to_numpy(dtype=np.float64)
    else:
        influence = node_influence(graph.adjacency, graph.target_weights)
    is_feature = (nodes["kind"].astype(str) == "feature").to_numpy()
    feats = pd.DataFrame(
        {
            "layer": nodes["layer"].to_numpy(dtype=np.int64, na_value=-1)[is_feature],
            "feature": nodes["feature"].to_numpy(dtype=np.int64, na_value=-1)[is_feature],
            "influence": influence[is_feature],
            "activation": nodes["activation"].to_numpy(dtype=np.float64, na_value=np.nan)[
                is_feature
            ],
        }
    )
    grouped = feats.groupby(["layer", "feature"], sort=True)
    return pd.DataFrame(
        {
            "n_positions": grouped.size(),
            "influence": grouped["influence"].sum(),
            "activation": grouped["activation"].max(),
        }
    ).reset_index()


def feature_occurrences(store: GraphStore, *, source: Source = "auto") -> pd.DataFrame:
    """One row per (prompt, feature) over the store's finished graphs.

    Args:
        store: The graph store.
        source: ``"pruned"`` (the pruned circuits), ``"full"`` (every active feature) or
            ``"auto"`` (pruned where the store keeps them, else full).

    Returns:
        Columns :data:`OCCURRENCE_COLUMNS`: ``key``, ``prompt``, ``layer``, ``feature``,
        ``n_positions`` (positions where it is a node), ``influence`` (summed over them),
        ``activation`` (the largest). Its ``attrs["graphs"]`` maps the key of every graph read
        (also those without features) to its prompt.

    Raises:
        ValueError: Unknown ``source``, or a source the store does not keep.
    """
    if source not in ("auto", "pruned", "full"):
        raise ValueError(f"unknown source {source!r}; valid choices: 'auto', 'pruned', 'full'")
    index = store.index()
    index = index[index["status"] == "ok"]
    parts = []
    graphs: dict[str, str] = {}
    for key, prompt, full_file, pruned_file in zip(
        index["key"], index["prompt"], index["file"], index["pruned_file"], strict=True
    ):
        has_pruned = isinstance(pruned_file, str) and bool(pruned_file)
        has_full = isinstance(full_file, str) and bool(full_file)
        use_pruned = has_pruned if source == "auto" else source == "pruned"
        if (use_pruned and not has_pruned) or (not use_pruned and not has_full):
            kind = "pruned" if use_pruned else "full"
            raise ValueError(f"{store.folder} keeps no {kind} graph of {key!r}; use another source")
        graph = AttributionGraph.load(store.folder / (pruned_file if use_pruned else full_file))
        feats = _graph_features(graph, pruned=use_pruned)
        feats.insert(0, "prompt", prompt)
        feats.insert(0, "key", key)
        parts.append(feats)
        graphs[str(key)] = str(prompt)
    if parts:
        table = pd.concat(parts, ignore_index=True)
    else:
        table = pd.DataFrame({c: pd.Series(dtype=object) for c in OCCURRENCE_COLUMNS})
    table.attrs["graphs"] = graphs
    logger.info("read %d graphs: %d feature occurrences", len(parts), len(table))
    return table


def _occurrences(data: GraphStore | pd.DataFrame) -> pd.DataFrame:
    return feature_occurrences(data) if isinstance(data, GraphStore) else data


def _graphs(occ: pd.DataFrame) -> dict[str, str]:
    """Key -> prompt of every graph behind ``occ`` (its ``attrs``, else its rows)."""
    graphs = occ.attrs.get("graphs")
    if graphs is None:
        graphs = dict(zip(map(str, occ["key"]), map(str, occ["prompt"]), strict=True))
    return dict(graphs)


def _label_column(table: pd.DataFrame, labels: Labels | None) -> pd.Series:
    def label(layer: int, feature: int) -> str | None:
        names = labels.get(int(layer)) if labels is not None else None
        return str(names[int(feature)]) if names is not None and 0 <= feature < len(names) else None

    return pd.Series(
        [label(a, b) for a, b in zip(table["layer"], table["feature"], strict=True)],
        index=table.index,
        dtype=object,
    )


def feature_table(data: GraphStore | pd.DataFrame, *, labels: Labels | None = None) -> pd.DataFrame:
    """Features by how often and how strongly they occur across the store's graphs.

    Args:
        data: A store, or :func:`feature_occurrences` of one.
        labels: Feature labels (``layer -> list``), or ``None``.

    Returns:
        One row per (layer, feature), most total influence first: ``n_graphs`` (graphs it
        occurs in), ``frequency`` (their share of all graphs read), ``mean_influence`` (over the
        graphs it occurs in), ``max_influence``, ``total_influence`` (summed over all graphs),
        ``mean_activation`` (of its largest activation per graph), ``label``.
    """
    occ = _occurrences(data)
    n_graphs = len(_graphs(occ))
    grouped = occ.groupby(["layer", "feature"], sort=True)
    table = pd.DataFrame(
        {
            "n_graphs": grouped["key"].nunique(),
            "mean_influence": grouped["influence"].mean(),
            "max_influence": grouped["influence"].max(),
            "total_influence": grouped["influence"].sum(),
            "mean_activation": grouped["activation"].mean(),
        }
    ).reset_index()
    table.insert(3, "frequency", table["n_graphs"] / max(n_graphs, 1))
    table["label"] = _label_column(table, labels)
    table = table.sort_values(
        ["total_influence", "layer", "feature"], ascending=[False, True, True]
    )
    return table.reset_index(drop=True)


def prompt_top_features(
    data: GraphStore | pd.DataFrame, *, k: int = 5, labels: Labels | None = None
) -> pd.DataFrame:
    """Each prompt's ``k`` most influential features.

    Returns:
        Columns ``key``, ``prompt``, ``rank`` (1 = most influential), ``layer``, ``feature``,
        ``influence``, ``activation``, ``label``; prompts in store order.

    Raises:
        ValueError: ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    occ = _occurrences(data)
    first = {key: i for i, key in enumerate(_graphs(occ))}
    order = occ.assign(_graph=[first[str(k)] for k in occ["key"]]).sort_values(
        ["_graph", "influence", "layer", "feature"], ascending=[True, False, True, True]
    )
    top = order.groupby("_graph", sort=False).head(k).copy()
    top["rank"] = top.groupby("_graph", sort=False).cumcount() + 1
    top["label"] = _label_column(top, labels)
    columns = ["key", "prompt", "rank", "layer", "feature", "influence", "activation", "label"]
    return pd.DataFrame(top[columns]).reset_index(drop=True)


def compare_groups(
    data: GraphStore | pd.DataFrame,
    group_a: Sequence[str],
    group_b: Sequence[str],
    *,
    labels: Labels | None = None,
) -> pd.DataFrame:
    """Features whose influence differs most between two sets of prompts.

    Args:
        data: A store, or :func:`feature_occurrences` of one.
        group_a: Prompts of group A, as store keys or as prompt texts.
        group_b: Prompts of group B, the same way.
        labels: Feature labels, or ``None``.

    Returns:
        One row per feature occurring in either group, largest ``|difference|`` first:
        ``mean_a`` and ``mean_b`` (mean influence per graph of the group, 0 where it does not
        occur), ``difference`` (``mean_a - mean_b``), ``frequency_a``, ``frequency_b``
        (shares of each group's graphs it occurs in), ``label``. ``attrs["n_a"]`` and
        ``attrs["n_b"]`` are the groups' numbers of graphs.

    Raises:
        ValueError: A group that names no finished graph of the store, or prompts in both
            groups.
    """
    occ = _occurrences(data)
    keys_a, keys_b = _group_keys(occ, group_a, "group_a"), _group_keys(occ, group_b, "group_b")
    both = keys_a & keys_b
    if both:
        raise ValueError(f"{len(both)} prompts are in both groups (e.g. {sorted(both)[0]!r})")
    columns = {}
    for name, keys in (("a", keys_a), ("b", keys_b)):
        part = occ[occ["key"].isin(sorted(keys))]
        grouped = part.groupby(["layer", "feature"])
        columns[f"sum_{name}"] = cast("pd.Series", grouped["influence"].sum()) / len(keys)
        columns[f"freq_{name}"] = cast("pd.Series", grouped["key"].nunique()) / len(keys)
    table = pd.DataFrame(columns).fillna(0.0).reset_index()
    out = pd.DataFrame(
        {
            "layer": table["layer"].astype(np.int64),
            "feature": table["feature"].astype(np.int64),
            "mean_a": table["sum_a"],
            "mean_b": table["sum_b"],
            "difference": table["sum_a"] - table["sum_b"],
            "frequency_a": table["freq_a"],
            "frequency_b": table["freq_b"],
        }
    )
    out["label"] = _label_column(out, labels)
    out = out.iloc[np.lexsort((out["feature"], out["layer"], -out["difference"].abs()))]
    out = out.reset_index(drop=True)
    out.attrs.update(n_a=len(keys_a), n_b=len(keys_b))
    return out


def _group_keys(occ: pd.DataFrame, group: Sequence[str], name: str) -> set[str]:
    if isinstance(group, str):
        raise TypeError(f"{name} must be a list of keys or prompts, not one string")
    graphs = _graphs(occ)
    by_prompt: dict[str, set[str]] = {}
    for key, prompt in graphs.items():
        by_prompt.setdefault(prompt, set()).add(key)
    known = set(graphs)
    keys: set[str] = set()
    missing = []
    for item in group:
        if item in known:
            keys.add(item)
        elif item in by_prompt:
            keys |= by_prompt[item]
        else:
            missing.append(item)
    if missing:
        raise ValueError(
            f"{name}: {len(missing)} prompts are not finished graphs of the store (e.g. "
            f"{missing[0]!r}); give store keys or prompt texts from store.index()"
        )
    if not keys:
        raise ValueError(f"{name} is empty")
    return keys
