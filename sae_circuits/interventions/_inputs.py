"""Input checking of interventions and their targets (for :mod:`sae_circuits.interventions`).

Interventions (tuples, DataFrames, or lists mixing both) become one checked table with
``layer``, ``position``, ``feature``, ``value`` and ``scale`` columns; every problem is reported
with what was given and the valid choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from sae_circuits.graph import AttributionGraph

__all__ = [
    "INTERVENTION_COLUMNS",
    "Interventions",
    "Targets",
    "as_tensor",
    "parse_interventions",
    "parse_targets",
]

#: Columns of a parsed intervention table.
INTERVENTION_COLUMNS = ("layer", "position", "feature", "value", "scale")
_KEY = ("layer", "position", "feature")

#: ``(layer, position, feature, value)`` tuples, a DataFrame with ``layer``, ``position``,
#: ``feature`` and ``value`` (set) and/or ``scale`` (multiply the clean activation) columns, or a
#: list mixing both.
Interventions = pd.DataFrame | Sequence[tuple[int, int, int, float] | pd.DataFrame] | None
#: ``(layer, position, feature)`` triples, a DataFrame with those columns, or a graph.
Targets = AttributionGraph | pd.DataFrame | Sequence[tuple[int, int, int]] | None


def _is_int(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return False
    if isinstance(v, int | np.integer):
        return True
    return isinstance(v, float | np.floating) and float(v).is_integer()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def _frame_rows(df: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in _KEY if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {missing}; expected columns layer, position, feature and "
            "one of value (set the activation) or scale (multiply the clean activation)"
        )
    has_value, has_scale = "value" in df.columns, "scale" in df.columns
    if not has_value and not has_scale:
        raise ValueError(
            f"{where} has neither a 'value' column (set the activation) nor a 'scale' column "
            "(multiply the clean activation); add one of them"
        )
    if "kind" in df.columns:
        bad = df.index[(df["kind"].astype(str) != "feature").to_numpy()]
        if len(bad):
            kinds = sorted(set(df.loc[bad, "kind"].astype(str)))
            raise ValueError(
                f"{where}: rows {list(bad)[:5]} are {', '.join(kinds)} nodes; only feature nodes "
                "can be intervened on (filter with nodes.query(\"kind == 'feature'\"))"
            )
    out = pd.DataFrame(
        {
            "layer": df["layer"].to_numpy(dtype=object),
            "position": df["position"].to_numpy(dtype=object),
            "feature": df["feature"].to_numpy(dtype=object),
            "value": df["value"].to_numpy(dtype=object) if has_value else [None] * len(df),
            "scale": df["scale"].to_numpy(dtype=object) if has_scale else [None] * len(df),
        }
    )
    out["where"] = [f"{where} row {i!r}" for i in df.index]
    return out


def _tuple_row(item: Sequence[Any], i: int) -> dict[str, Any]:
    if len(item) != 4:
        raise ValueError(
            f"intervention {i}: expected a (layer, position, feature, value) tuple, got {tuple(item)!r} "
            f"({len(item)} entries); to scale a clean activation use a DataFrame with a 'scale' column"
        )
    layer, pos, feat, value = item
    return {
        "layer": layer,
        "position": pos,
        "feature": feat,
        "value": value,
        "scale": None,
        "where": f"intervention {i} {tuple(item)!r}",
    }


def _null(v: Any) -> bool:
    return v is None or (isinstance(v, float | np.floating) and np.isnan(v)) or v is pd.NA


def parse_interventions(
    interventions: Any,
    *,
    n_layers: int,
    n_pos: int,
    d_sae: Callable[[int], int],
) -> pd.DataFrame:
    """Turn interventions into a checked table.

    Args:
        interventions: ``None``, a DataFrame (columns ``layer``, ``position``, ``feature`` and
            ``value`` and/or ``scale``, exactly one of them non-null per row), a sequence of
            ``(layer, position, feature, value)`` tuples, or a sequence mixing tuples and
            DataFrames.
        n_layers: Layers with a transcoder.
        n_pos: Positions of the prompt.
        d_sae: Features of a layer.

    Returns:
        DataFrame with ``layer``, ``position``, ``feature`` (int64), ``value``, ``scale``
        (float64, NaN where not given), one row per intervention, in the given order.

    Raises:
        ValueError: Malformed input, out-of-range layers, positions or features, non-finite
            values, duplicates.
        TypeError: An unsupported type.
    """
    if interventions is None:
        parts: list[pd.DataFrame] = []
    elif isinstance(interventions, pd.DataFrame):
        parts = [_frame_rows(interventions, "interventions DataFrame")]
    elif isinstance(interventions, Sequence) and not isinstance(interventions, str | bytes):
        parts, rows = [], []
        for i, item in enumerate(interventions):
            if isinstance(item, pd.DataFrame):
                parts.append(_frame_rows(item, f"interventions[{i}] (DataFrame)"))
            elif isinstance(item, Sequence) and not isinstance(item, str | bytes):
                rows.append(_tuple_row(item, i))
            else:
                raise TypeError(
                    f"intervention {i}: expected a (layer, position, feature, value) tuple or a "
                    f"DataFrame, got {type(item).__name__}"
                )
        if rows:
            parts.append(pd.DataFrame(rows))
    else:
        raise TypeError(
            f"unsupported interventions of type {type(interventions).__name__}; expected a list of "
            "(layer, position, feature, value) tuples or a DataFrame with layer, position, feature "
            "and a value or scale column"
        )
    raw = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=[*INTERVENTION_COLUMNS, "where"])
    )
    layers, poss, feats, values, scales = [], [], [], [], []
    columns = [raw[c].tolist() for c in ("where", *_KEY, "value", "scale")]
    for where, *key, value, scale in zip(*columns, strict=True):
        for name, v in zip(_KEY, key, strict=True):
            if _null(v) or not _is_int(v):
                raise ValueError(f"{where}: {name} must be an integer, got {v!r}")
        layer, pos, feat = (int(v) for v in key)
        if not 0 <= layer < n_layers:
            raise ValueError(
                f"{where}: layer {layer} has no transcoder; valid layers are 0..{n_layers - 1} "
                f"(the transcoders cover {n_layers} layers)"
            )
        if not 0 <= pos < n_pos:
            raise ValueError(
                f"{where}: position {pos} is out of range for a prompt of {n_pos} tokens; valid "
                f"positions are 0..{n_pos - 1}"
            )
        width = d_sae(layer)
        if not 0 <= feat < width:
            raise ValueError(
                f"{where}: feature {feat} is out of range for layer {layer}, which has "
                f"d_sae={width} features; valid features are 0..{width - 1}"
            )
        if _null(value) == _null(scale):
            what = (
                "gives both a value and a scale"
                if not _null(value)
                else "gives neither a value nor a scale"
            )
            raise ValueError(
                f"{where} {what}; give exactly one: value (set the activation) or scale "
                "(multiply the clean activation)"
            )
        num = value if not _null(value) else scale
        if not _is_number(num) or not np.isfinite(float(num)):
            which = "value" if not _null(value) else "scale"
            raise ValueError(f"{where}: {which} must be a finite number, got {num!r}")
        layers.append(layer)
        poss.append(pos)
        feats.append(feat)
        values.append(np.nan if _null(value) else float(value))
        scales.append(np.nan if _null(scale) else float(scale))
    table = pd.DataFrame(
        {
            "layer": np.asarray(layers, dtype=np.int64),
            "position": np.asarray(poss, dtype=np.int64),
            "feature": np.asarray(feats, dtype=np.int64),
            "value": np.asarray(values, dtype=np.float64),
            "scale": np.asarray(scales, dtype=np.float64),
        }
    )
    dup = table.duplicated(subset=list(_KEY), keep=False)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(
            f"feature (layer={layers[i]}, position={poss[i]}, feature={feats[i]}) is "
            "intervened on more than once (e.g. it is in two groups); give each "
            "(layer, position, feature) at most once"
        )
    return table


def parse_targets(
    targets: Any, *, n_layers: int, n_pos: int, d_sae: Callable[[int], int]
) -> pd.DataFrame:
    """Targets whose pre-activations are recorded: ``(layer, position, feature)`` triples.

    Accepts ``None``, a sequence of triples, a DataFrame with ``layer``, ``position``,
    ``feature`` (other node kinds are skipped), or an object with a ``nodes`` DataFrame (an
    attribution graph: all its feature nodes).
    """
    if targets is None:
        return pd.DataFrame({c: np.zeros(0, dtype=np.int64) for c in _KEY})
    nodes = getattr(targets, "nodes", None)
    if isinstance(nodes, pd.DataFrame):
        targets = nodes
    if isinstance(targets, pd.DataFrame):
        missing = [c for c in _KEY if c not in targets.columns]
        if missing:
            raise ValueError(
                f"targets DataFrame lacks column(s) {missing}; expected layer, position, feature"
            )
        df = targets
        if "kind" in df.columns:
            df = df[(df["kind"].astype(str) == "feature").to_numpy()]
        triples = list(zip(df["layer"], df["position"], df["feature"], strict=True))
    elif isinstance(targets, Iterable) and not isinstance(targets, str | bytes):
        triples = [tuple(t) for t in targets]
    else:
        raise TypeError(
            f"unsupported targets of type {type(targets).__name__}; expected (layer, position, "
            "feature) triples, a DataFrame or an attribution graph"
        )
    rows = []
    for i, t in enumerate(triples):
        if len(t) != 3 or not all(_is_int(v) and not _null(v) for v in t):
            raise ValueError(
                f"target {i}: expected an integer (layer, position, feature) triple, got {t!r}"
            )
        layer, pos, feat = (int(v) for v in t)
        if not 0 <= layer < n_layers:
            raise ValueError(
                f"target {i}: layer {layer} has no transcoder; valid layers are 0..{n_layers - 1}"
            )
        if not 0 <= pos < n_pos:
            raise ValueError(
                f"target {i}: position {pos} is out of range; valid positions are 0..{n_pos - 1}"
            )
        if not 0 <= feat < d_sae(layer):
            raise ValueError(
                f"target {i}: feature {feat} is out of range for layer {layer}; valid features are "
                f"0..{d_sae(layer) - 1}"
            )
        rows.append((layer, pos, feat))
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    out = pd.DataFrame({c: arr[:, i] for i, c in enumerate(_KEY)})
    return out.drop_duplicates(ignore_index=True)


def as_tensor(values: Any, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A fresh tensor from a pandas column or numpy array (no shared, read-only memory)."""
    return torch.tensor(np.array(values), dtype=dtype, device=device)
