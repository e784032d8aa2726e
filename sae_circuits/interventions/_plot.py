"""Drawing of a supernode experiment (matplotlib, imported lazily; the ``plot`` extra).

Left: one box per supernode, at its members' mean position (x) and mean layer (y), coloured by
the fraction of its clean activation left after the intervention (red below 1, blue above), with
arrows for the summed graph edges between supernodes when a graph is given. Right: the top
tokens' probabilities before and after.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sae_circuits.graph import AttributionGraph
    from sae_circuits.interventions._supernodes import SupernodeExperiment

__all__ = ["plot_experiment"]

_EXTRA = "sae-circuits[plot]"


def _matplotlib() -> Any:
    try:
        from matplotlib import cm, colors, patches
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            f"plotting supernodes needs matplotlib, which is not installed; install the optional "
            f"extra: pip install '{_EXTRA}' (or pip install matplotlib)"
        ) from e
    return cm, colors, patches, Figure


def _layout(exp: SupernodeExperiment) -> np.ndarray:
    """``(k, 2)`` box centres (position, layer), spread where boxes would overlap."""
    xy = np.array([np.asarray(s.features, dtype=float)[:, [1, 0]].mean(0) for s in exp.supernodes])
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(xy):
        cells.setdefault((round(x), round(y)), []).append(i)
    for members in cells.values():
        if len(members) > 1:
            offsets = np.linspace(-0.35, 0.35, len(members))
            for i, dx in zip(members, offsets, strict=True):
                xy[i, 0] += dx
    return xy


def _edges(exp: SupernodeExperiment, graph: AttributionGraph) -> np.ndarray:
    """``(k, k)`` summed edge weights ``[target, source]`` between supernodes (0 where unknown)."""
    nodes = graph.nodes
    idx = graph.node_indices("feature")
    index = {
        (int(a), int(b), int(c)): int(i)
        for a, b, c, i in zip(
            nodes["layer"].to_numpy()[idx],
            nodes["position"].to_numpy()[idx],
            nodes["feature"].to_numpy()[idx],
            idx,
            strict=True,
        )
    }
    members = [[index[f] for f in s.features if f in index] for s in exp.supernodes]
    k = len(members)
    out = np.zeros((k, k))
    adj = graph.adjacency
    for t in range(k):
        for s in range(k):
            if t != s and members[t] and members[s]:
                out[t, s] = float(adj[members[t]][:, members[s]].sum())
    return out


def plot_experiment(
    exp: SupernodeExperiment, *, graph: AttributionGraph | None = None, title: str | None = None
) -> Figure:
    """The figure of :meth:`SupernodeExperiment.plot` (see there)."""
    cm, colors, patches, figure_cls = _matplotlib()
    fig = figure_cls(figsize=(11, 5.5))
    grid = fig.add_gridspec(1, 2, width_ratios=[2.4, 1.0], wspace=0.3)
    ax = fig.add_subplot(grid[0, 0])
    bars = fig.add_subplot(grid[0, 1])
    xy = _layout(exp)
    frac = exp.activations["fraction"].to_numpy(dtype=float)
    norm = colors.TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    cmap = colors.LinearSegmentedColormap.from_list("frac", ["#c0392b", "#f7f7f7", "#2471a3"])
    if graph is not None:
        w = _edges(exp, graph)
        top = np.abs(w).max() if w.size else 0.0
        for t in range(len(xy)):
            for s in range(len(xy)):
                if top > 0 and abs(w[t, s]) >= 0.05 * top:
                    ax.annotate(
                        "",
                        xy=xy[t],
                        xytext=xy[s],
                        arrowprops=dict(
                            arrowstyle="-|>",
                            color="#1f618d" if w[t, s] > 0 else "#922b21",
                            lw=0.5 + 3.5 * abs(w[t, s]) / top,
                            alpha=0.7,
                            shrinkA=18,
                            shrinkB=18,
                        ),
                    )
    for (x, y), s, f in zip(xy, exp.supernodes, frac, strict=True):
        shown = "n/a" if np.isnan(f) else f"{100 * f:.0f}%"
        face = "#dddddd" if np.isnan(f) else cmap(norm(float(np.clip(f, 0.0, 2.0))))
        ax.text(
            x,
            y,
            f"{s.name}\n{shown}",
            ha="center",
            va="center",
            fontsize=9,
            bbox=dict(boxstyle="round,pad=0.4", facecolor=face, edgecolor="#444444"),
        )
    n_pos = len(exp.result.tokens)
    n_layers = len(exp.result.clean_activations)
    ax.set_xlim(-0.7, n_pos - 0.3)
    ax.set_ylim(-0.7, n_layers - 0.3)
    tok = exp.result.tokenizer
    labels = [str(i) for i in range(n_pos)]
    if tok is not None:
        with contextlib.suppress(Exception):  # keep position numbers
            labels = [tok.decode([int(t)]) for t in exp.result.tokens.tolist()]
    ax.set_xticks(range(n_pos), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("position")
    ax.set_ylabel("layer")
    ax.grid(alpha=0.2)
    fig.colorbar(
        cm.ScalarMappable(norm=norm, cmap=cmap),
        ax=ax,
        fraction=0.04,
        pad=0.02,
        label="activation / clean",
    )
    if graph is not None:
        legend = [
            patches.Patch(color="#1f618d", label="excitatory edge"),
            patches.Patch(color="#922b21", label="inhibitory edge"),
        ]
        ax.legend(handles=legend, loc="lower right", fontsize=8)
    top = exp.top_logits
    k = len(top)
    ypos = np.arange(k)
    before = [f"{t}" for t in top["before_token"].fillna("?").astype(str)]
    after = [f"{t}" for t in top["after_token"].fillna("?").astype(str)]
    bars.barh(ypos + 0.2, top["before_probability"], height=0.38, color="#aaaaaa", label="before")
    bars.barh(ypos - 0.2, top["after_probability"], height=0.38, color="#2471a3", label="after")
    for i in range(k):
        bars.text(
            float(top["before_probability"].iloc[i]),
            i + 0.2,
            f" {before[i]}",
            va="center",
            fontsize=8,
        )
        bars.text(
            float(top["after_probability"].iloc[i]),
            i - 0.2,
            f" {after[i]}",
            va="center",
            fontsize=8,
        )
    bars.set_yticks(ypos, [f"#{r}" for r in top["rank"]])
    bars.invert_yaxis()
    bars.set_xlim(0, 1.15)
    bars.set_xlabel("probability")
    bars.set_title("top tokens", fontsize=10)
    bars.legend(loc="lower right", fontsize=8)
    ax.set_title(
        title or f"supernode activation after the intervention ({exp.reduce})", fontsize=11
    )
    return fig
