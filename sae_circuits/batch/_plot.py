"""Plots of the dataset-level tables (matplotlib, imported lazily; the ``plot`` extra).

:func:`plot_features`: the top features of :func:`feature_table` as horizontal bars of mean
influence, annotated with the share of graphs they occur in; or, given a
:func:`compare_groups` table, the features whose influence differs most, one bar per group.

Example:
    >>> fig = plot_features(feature_table(store, labels=labels), top=15)
    >>> fig.savefig("features.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_features"]


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib, which is not installed; install the optional extra: "
            "pip install 'sae-circuits[plot]' (or pip install matplotlib)"
        ) from e
    return Figure


def _names(table: pd.DataFrame) -> list[str]:
    out = []
    for layer, feature, label in zip(table["layer"], table["feature"], table["label"], strict=True):
        name = f"L{int(layer)} #{int(feature)}"
        out.append(f"{name}  {label}" if isinstance(label, str) and label else name)
    return out


def plot_features(
    table: pd.DataFrame,
    *,
    top: int = 20,
    title: str | None = None,
    group_names: tuple[str, str] = ("A", "B"),
) -> Figure:
    """Bars of the ``top`` rows of a feature table or a two-group comparison.

    Args:
        table: :func:`feature_table` (bars: ``mean_influence``, text: ``frequency``) or
            :func:`compare_groups` (bars: ``mean_a`` and ``mean_b`` side by side).
        top: Rows shown (the table's first, i.e. its most important).
        title: Figure title (default: what is shown).
        group_names: The two groups' names in a comparison's legend.

    Returns:
        A matplotlib ``Figure`` (not shown; ``fig.savefig(path)``).

    Raises:
        ValueError: A table of neither kind, or ``top`` < 1.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    comparison = {"mean_a", "mean_b", "difference"} <= set(table.columns)
    if not comparison and "mean_influence" not in table.columns:
        raise ValueError(
            "expected a feature_table (mean_influence, frequency) or a compare_groups table "
            f"(mean_a, mean_b, difference); got columns {list(table.columns)}"
        )
    rows = table.head(top).iloc[::-1]
    Figure = _figure_class()
    fig = Figure(figsize=(8, 0.32 * len(rows) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    if comparison:
        ax.barh(y + 0.2, rows["mean_a"], height=0.4, label=group_names[0], color="tab:blue")
        ax.barh(y - 0.2, rows["mean_b"], height=0.4, label=group_names[1], color="tab:orange")
        ax.legend(loc="lower right")
        ax.set_xlabel("mean influence per graph (0 where absent)")
        default = (
            f"features whose influence differs most between {group_names[0]} and {group_names[1]}"
        )
    else:
        ax.barh(y, rows["mean_influence"], color="tab:blue")
        for yi, (value, share) in enumerate(
            zip(rows["mean_influence"], rows["frequency"], strict=True)
        ):
            ax.text(value, yi, f" {share:.0%}", va="center", fontsize=8)
        ax.set_xlabel("mean influence where present (text: share of graphs)")
        default = "features across the dataset"
    ax.set_yticks(y, _names(rows), fontsize=8)
    ax.set_title(title or default)
    return fig
