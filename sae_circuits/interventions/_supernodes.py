"""Supernodes: named groups of features, and small intervention experiments over them.

A *supernode* groups features that play one role in a circuit ("Texas", "say a capital"). It
can be built from rows of ``graph.nodes``, from ``(layer, position, feature)`` triples, or parsed
(offline) from a Neuronpedia graph URL, whose ``supernodes`` query parameter is a JSON list of
``[name, node_id, ...]`` and whose ``pinnedIds`` is a comma-separated list of node ids. Node ids
are ``{layer}_{feature}_{position}`` for features, ``E_{token_id}_{position}`` for tokens,
``{layer}_-1_{position}`` for error nodes and ``{n_layers + 1}_{token_id}_{position}`` for
logits.

An experiment intervenes (see :func:`sae_circuits.interventions.intervene`) and reports, per supernode, its
clean activation (sum or mean of its members'), its activation after the intervention and the
fraction of the clean one, with the top logits before and after; :meth:`SupernodeExperiment.plot`
draws it (needs matplotlib: ``pip install 'sae-circuits[plot]'``).

Example:
    >>> from sae_circuits import supernodes as sn
    >>> sel = sn.from_neuronpedia_url(url, n_layers=model.cfg.n_layers)
    >>> texas, say_capital = sel["Texas"], sel["say a capital"]
    >>> california = sn.Supernode("California", [(1, 7, 412), (2, 7, 88)])  # found on Oakland
    >>> swap = [texas.scale(0.0), sn.activations_from(model, oakland, transcoders, california)]
    >>> exp = sn.experiment(model, dallas, transcoders, [texas, california, say_capital], swap)
    >>> exp.activations, exp.top_logits
    >>> exp.plot("swap.png")
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from transformer_lens import HookedTransformer

from sae_circuits.core.prompts import Prompt
from sae_circuits.graph import AttributionGraph, parse_node_id
from sae_circuits.interventions._intervene import InterventionResult, Interventions, intervene
from sae_circuits.transcoders.sets import TranscoderSet

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "NeuronpediaSelection",
    "Supernode",
    "SupernodeExperiment",
    "activations_from",
    "experiment",
    "from_neuronpedia_url",
    "supernode_activations",
]

logger = logging.getLogger(__name__)

FeatureKey = tuple[int, int, int]
Reduce = Literal["sum", "mean"]


def _as_key(t: Any, where: str) -> FeatureKey:
    try:
        items = tuple(t)
    except TypeError:
        raise ValueError(
            f"{where}: expected a (layer, position, feature) triple, got {t!r}"
        ) from None
    ok = len(items) == 3 and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0 for v in items
    )
    if not ok:
        raise ValueError(
            f"{where}: expected a (layer, position, feature) triple of non-negative integers, got {t!r}"
        )
    layer, pos, feat = (int(v) for v in items)
    return (layer, pos, feat)


@dataclass(frozen=True)
class Supernode:
    """A named group of features.

    Attributes:
        name: The name (e.g. ``"Texas"``).
        features: ``(layer, position, feature)`` triples, in the given order, without repeats.
    """

    name: str
    features: tuple[FeatureKey, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a supernode needs a non-empty name, got {self.name!r}")
        if isinstance(self.features, str | bytes) or not isinstance(self.features, Iterable):
            raise ValueError(
                f"supernode {self.name!r}: features must be (layer, position, feature) triples"
            )
        keys = [
            _as_key(t, f"supernode {self.name!r} member {i}") for i, t in enumerate(self.features)
        ]
        if not keys:
            raise ValueError(f"supernode {self.name!r} has no features")
        object.__setattr__(self, "features", tuple(dict.fromkeys(keys)))

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def from_nodes(cls, name: str, nodes: pd.DataFrame) -> Supernode:
        """From rows of ``graph.nodes`` (feature rows) or any frame with layer/position/feature."""
        missing = [c for c in ("layer", "position", "feature") if c not in nodes.columns]
        if missing:
            raise ValueError(f"supernode {name!r}: the nodes table lacks column(s) {missing}")
        if "kind" in nodes.columns and bool((nodes["kind"].astype(str) != "feature").any()):
            bad = sorted(set(nodes["kind"].astype(str)) - {"feature"})
            raise ValueError(
                f"supernode {name!r}: only feature nodes can be grouped, got {', '.join(bad)} nodes"
            )
        cols = [nodes[c].to_numpy(dtype=np.int64) for c in ("layer", "position", "feature")]
        return cls(name, tuple(zip(*(c.tolist() for c in cols), strict=True)))

    @classmethod
    def from_graph(
        cls, name: str, graph: AttributionGraph, node_indices: Sequence[int]
    ) -> Supernode:
        """From node indices of an attribution graph (feature nodes)."""
        idx = np.asarray(node_indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= graph.n_nodes):
            raise ValueError(
                f"supernode {name!r}: node indices must be in 0..{graph.n_nodes - 1}, got {idx.tolist()}"
            )
        return cls.from_nodes(name, graph.nodes.iloc[idx])

    @property
    def node_ids(self) -> list[str]:
        """Neuronpedia node ids ``{layer}_{feature}_{position}``."""
        return [f"{layer}_{feat}_{pos}" for layer, pos, feat in self.features]

    def frame(self) -> pd.DataFrame:
        """Members as a DataFrame: ``supernode``, ``layer``, ``position``, ``feature``."""
        arr = np.asarray(self.features, dtype=np.int64)
        return pd.DataFrame(
            {
                "supernode": [self.name] * len(arr),
                "layer": arr[:, 0],
                "position": arr[:, 1],
                "feature": arr[:, 2],
            }
        )

    def scale(self, factor: float) -> pd.DataFrame:
        """Interventions multiplying every member's clean activation by ``factor`` (0: off)."""
        return self.frame().assign(scale=float(factor))

    def set(self, value: float) -> pd.DataFrame:
        """Interventions setting every member's activation to ``value``."""
        return self.frame().assign(value=float(value))


@dataclass(frozen=True)
class NeuronpediaSelection:
    """What a Neuronpedia graph URL selects.

    Attributes:
        supernodes: Named groups (duplicate names get `` (2)``, `` (3)``...).
        pinned: Pinned feature nodes, ``(layer, position, feature)``.
        pinned_tokens: Pinned token (embedding) nodes, ``(position, token_id)``.
        pinned_logits: Pinned logit nodes, ``(position, token_id)`` (recognised with ``n_layers``).
        pinned_errors: Pinned error nodes ``{layer}_-1_{position}``, as ``(layer, position)``.
        skipped: Node ids inside supernodes that are not features (tokens, logits, errors).
    """

    supernodes: tuple[Supernode, ...] = ()
    pinned: tuple[FeatureKey, ...] = ()
    pinned_tokens: tuple[tuple[int, int], ...] = ()
    pinned_logits: tuple[tuple[int, int], ...] = ()
    pinned_errors: tuple[tuple[int, int], ...] = ()
    skipped: tuple[str, ...] = field(default=())

    def __getitem__(self, name: str) -> Supernode:
        for node in self.supernodes:
            if node.name == name:
                return node
        names = ", ".join(repr(n.name) for n in self.supernodes) or "none"
        raise KeyError(f"no supernode named {name!r}; the URL has {names}")

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.supernodes]


def _parse_id(node_id: Any, n_layers: int | None, where: str) -> tuple[str, tuple[int, int, int]]:
    """``("feature", (layer, pos, feat))``, ``("token", (pos, token_id, 0))``,
    ``("logit", (pos, token_id, 0))`` or ``("error", (layer, pos, 0))``
    (:func:`sae_circuits.graph.parse_node_id` does the parsing)."""
    node = parse_node_id(node_id, n_layers=n_layers, where=where)
    layer = -1 if node.layer is None else node.layer
    if node.kind == "feature":
        return "feature", (layer, node.position, -1 if node.feature is None else node.feature)
    if node.kind == "error":
        return "error", (layer, node.position, 0)
    return node.kind, (node.position, -1 if node.token_id is None else node.token_id, 0)


_URL_EXAMPLE = (
    "https://www.neuronpedia.org/<model>/graph?slug=...&pinnedIds=...&"
    'supernodes=[["name","3_1234_5",...]]'
)


def _query_params(url: str) -> dict[str, list[str]]:
    """The query parameters of a Neuronpedia graph URL (or of a bare query string).

    A full URL must be ``http(s)://<host>/.../graph?...``; the message of the ``ValueError``
    names the bad part (scheme, host, port, path).
    """
    text = url.strip()
    if not text:
        raise ValueError(f"the URL is empty; expected a Neuronpedia graph URL like {_URL_EXAMPLE}")
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as e:  # e.g. an unclosed '[' of an IPv6 host
        raise ValueError(f"the URL {text[:80]!r} cannot be parsed ({e})") from None
    if not parts.scheme:  # a query string, or a URL without scheme: the part after '?'
        return urllib.parse.parse_qs(parts.query if "?" in text else text, keep_blank_values=True)
    where = f"the URL {text[:80]!r}"
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(
            f"{where} has the scheme {parts.scheme!r}; a Neuronpedia graph URL is http(s), "
            f"like {_URL_EXAMPLE}"
        )
    if not parts.hostname:
        raise ValueError(f"{where} has no host; expected one like {_URL_EXAMPLE}")
    try:
        parts.port  # noqa: B018 (parsing the port raises on a bad one)
    except ValueError:
        raise ValueError(f"{where} has an invalid port in {parts.netloc!r:.60}") from None
    if not re.fullmatch(r"(/[^/]+)*/graph/?", parts.path):
        raise ValueError(
            f"{where} has the path {parts.path[:60]!r}, which is not a graph page; expected "
            f"/<model>/graph, like {_URL_EXAMPLE}"
        )
    return urllib.parse.parse_qs(parts.query, keep_blank_values=True)


def _unquote(value: str) -> str:
    """Undo extra rounds of percent-encoding (URLs copied from encoded links)."""
    for _ in range(3):
        if "%" not in value:
            break
        value = urllib.parse.unquote(value)
    return value


def from_neuronpedia_url(url: str, *, n_layers: int | None = None) -> NeuronpediaSelection:
    """Parse the ``supernodes`` and ``pinnedIds`` of a Neuronpedia graph URL (offline).

    Args:
        url: The full URL (or just its query string), percent-encoded or not.
        n_layers: The model's number of layers: tells logit nodes (``{n_layers + 1}_...``) from
            features and rejects layers the model lacks. Without it every ``a_b_c`` id is a feature.

    Returns:
        A :class:`NeuronpediaSelection`.

    Raises:
        TypeError: ``url`` is not a string.
        ValueError: No ``supernodes`` or ``pinnedIds`` parameter, invalid JSON, a supernode that is
            not ``[name, node_id, ...]``, or a malformed node id (the message names it and the
            valid formats).
    """
    if not isinstance(url, str):
        raise TypeError(f"expected the URL as a string, got {type(url).__name__}")
    if n_layers is not None and (
        not isinstance(n_layers, int | np.integer) or isinstance(n_layers, bool) or n_layers < 1
    ):
        raise ValueError(f"n_layers must be a whole number >= 1, got {n_layers!r}")
    params = _query_params(url)
    if "supernodes" not in params and "pinnedIds" not in params:
        raise ValueError(
            "the URL has neither a 'supernodes' nor a 'pinnedIds' query parameter; expected a "
            f"Neuronpedia graph URL like {_URL_EXAMPLE}"
        )
    for name in ("supernodes", "pinnedIds"):
        if len(params.get(name, ())) > 1:
            raise ValueError(
                f"the URL has {len(params[name])} {name!r} query parameters; expected at most one"
            )
    supernodes: list[Supernode] = []
    skipped: list[str] = []
    raw = _unquote(params.get("supernodes", ["[]"])[0]) or "[]"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"the 'supernodes' parameter is not valid JSON ({e.msg} at character {e.pos}); "
            "expected a list of [name, node_id, ...] lists"
        ) from None
    except (ValueError, RecursionError) as e:  # integers of too many digits, deep nesting
        problem = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:100]
        raise ValueError(
            f"the 'supernodes' parameter is not valid JSON ({problem}); "
            "expected a list of [name, node_id, ...] lists"
        ) from None
    if not isinstance(data, list):
        raise ValueError(
            f"the 'supernodes' parameter must be a JSON list of [name, node_id, ...], got {raw[:60]!r}"
        )
    counts: dict[str, int] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
            raise ValueError(
                f"supernode {i} is {entry!r:.80}; expected [name, node_id, ...] with a string name"
            )
        if not entry[0].strip():
            raise ValueError(f"supernode {i} has an empty name; expected [name, node_id, ...]")
        name = entry[0]
        counts[name] = counts.get(name, 0) + 1
        unique = name if counts[name] == 1 else f"{name} ({counts[name]})"
        feats = []
        for node_id in entry[1:]:
            kind, key = _parse_id(node_id, n_layers, f"supernode {name!r}")
            if kind == "feature":
                feats.append(key)
            else:
                skipped.append(node_id)
        if feats:
            supernodes.append(Supernode(unique, tuple(feats)))
        else:
            logger.warning("supernode %r has no feature members; it is left out", unique)
    pinned: list[FeatureKey] = []
    tokens: list[tuple[int, int]] = []
    logits: list[tuple[int, int]] = []
    errors: list[tuple[int, int]] = []
    pinned_raw = _unquote(params.get("pinnedIds", [""])[0])
    for node_id in filter(None, (p.strip() for p in pinned_raw.split(","))):
        kind, key = _parse_id(node_id, n_layers, "pinnedIds")
        if kind == "feature":
            pinned.append(key)
        elif kind == "token":
            tokens.append((key[0], key[1]))
        elif kind == "error":
            errors.append((key[0], key[1]))
        else:
            logits.append((key[0], key[1]))
    return NeuronpediaSelection(
        supernodes=tuple(supernodes),
        pinned=tuple(dict.fromkeys(pinned)),
        pinned_tokens=tuple(dict.fromkeys(tokens)),
        pinned_logits=tuple(dict.fromkeys(logits)),
        pinned_errors=tuple(dict.fromkeys(errors)),
        skipped=tuple(skipped),
    )


# --------------------------------------------------------------------------------------------
# experiments


def _supernode_list(
    supernodes: Supernode | Iterable[Supernode] | NeuronpediaSelection,
) -> list[Supernode]:
    if isinstance(supernodes, NeuronpediaSelection):
        supernodes = supernodes.supernodes
    items = [supernodes] if isinstance(supernodes, Supernode) else list(supernodes)
    for i, s in enumerate(items):
        if not isinstance(s, Supernode):
            raise TypeError(f"supernodes[{i}] is a {type(s).__name__}, expected a Supernode")
    names = [s.name for s in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"supernode names must be unique; repeated: {dup}")
    return items


def _member_values(acts: Mapping[int, Any], members: Sequence[FeatureKey]) -> np.ndarray:
    out = np.zeros(len(members))
    dense: dict[int, Any] = {}
    for i, (layer, pos, feat) in enumerate(members):
        if layer not in acts:
            raise ValueError(
                f"layer {layer} has no transcoder; valid layers are 0..{len(acts) - 1}"
            )
        if layer not in dense:
            dense[layer] = acts[layer].to_dense()
        d = dense[layer]
        if pos >= d.shape[0] or feat >= d.shape[1]:
            raise ValueError(
                f"feature (layer={layer}, position={pos}, feature={feat}) is out of range: the "
                f"prompt has {d.shape[0]} positions and layer {layer} has {d.shape[1]} features"
            )
        out[i] = float(d[pos, feat])
    return out


def supernode_activations(
    result: InterventionResult,
    supernodes: Supernode | Iterable[Supernode] | NeuronpediaSelection,
    *,
    reduce: Reduce = "sum",
) -> pd.DataFrame:
    """Activation of each supernode, clean and after an intervention.

    Args:
        result: An :func:`intervene` result.
        supernodes: The groups.
        reduce: ``"sum"`` or ``"mean"`` of the member activations.

    Returns:
        DataFrame with ``supernode``, ``n_features``, ``clean_activation``, ``activation`` and
        ``fraction`` (= activation / clean_activation; NaN where the clean one is 0).
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    rows = []
    for s in _supernode_list(supernodes):
        clean = _member_values(result.clean_activations, s.features)
        after = _member_values(result.activations, s.features)
        c, a = (float(v.sum() if reduce == "sum" else v.mean()) for v in (clean, after))
        rows.append((s.name, len(s), c, a, a / c if c != 0 else np.nan))
    cols = ["supernode", "n_features", "clean_activation", "activation", "fraction"]
    return pd.DataFrame(rows, columns=cols)


def activations_from(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    features: Supernode | Iterable[Supernode] | pd.DataFrame,
    *,
    scale: float = 1.0,
    position_map: Mapping[int, int] | None = None,
) -> pd.DataFrame:
    """Interventions that turn features on with their activations from another prompt.

    The features (found on ``prompt``, e.g. "California" on the Oakland prompt) are read from
    ``prompt``'s clean run, multiplied by ``scale``, and set at the matching positions of the
    prompt that is intervened on (the same positions, or ``position_map[p]``).

    Args:
        model: The model.
        prompt: The prompt the features come from.
        transcoders: The transcoder set.
        features: Supernodes, or a DataFrame with ``layer``, ``position``, ``feature``.
        scale: Multiplier of the activations.
        position_map: Position on ``prompt`` -> position on the intervened prompt.

    Returns:
        DataFrame with ``layer``, ``position``, ``feature``, ``value`` (and ``supernode`` when
        given supernodes), ready for :func:`intervene`.
    """
    if isinstance(features, pd.DataFrame):
        frame = Supernode.from_nodes("features", features).frame().drop(columns="supernode")
    else:
        frame = pd.concat([s.frame() for s in _supernode_list(features)], ignore_index=True)
    clean = intervene(model, prompt, transcoders, None)
    members = list(zip(frame["layer"], frame["position"], frame["feature"], strict=True))
    values = _member_values(clean.clean_activations, members)
    inactive = int((values == 0).sum())
    if inactive:
        logger.warning(
            "%d of %d features are inactive on the source prompt (value 0)", inactive, len(values)
        )
    frame = frame.assign(value=float(scale) * values)
    if position_map is not None:
        missing = sorted(set(frame["position"]) - set(position_map))
        if missing:
            raise ValueError(f"position_map has no entry for source positions {missing}")
        frame["position"] = (
            frame["position"].map(lambda p: int(position_map[int(p)])).astype(np.int64)
        )
    return frame


@dataclass(frozen=True, eq=False)
class SupernodeExperiment:
    """An intervention seen through supernodes.

    Attributes:
        supernodes: The groups.
        result: The underlying :class:`~sae_circuits.interventions.InterventionResult`.
        activations: :func:`supernode_activations`' table.
        top_logits: ``result.top_logits(k)``: top tokens before and after.
        reduce: How member activations were combined.
    """

    supernodes: tuple[Supernode, ...]
    result: InterventionResult
    activations: pd.DataFrame
    top_logits: pd.DataFrame
    reduce: str = "sum"

    def plot(
        self,
        path: str | None = None,
        *,
        graph: AttributionGraph | None = None,
        title: str | None = None,
    ) -> Figure:
        """Draw the supernodes (by layer and position) with their activation fractions.

        Args:
            path: Save the figure there (format from the extension, e.g. ``.png``).
            graph: The prompt's attribution graph: adds arrows for the summed edges between
                supernodes.
            title: Figure title.

        Returns:
            The matplotlib ``Figure``.

        Raises:
            ImportError: matplotlib is not installed (``pip install 'sae-circuits[plot]'``).
        """
        from sae_circuits.interventions._plot import plot_experiment

        fig = plot_experiment(self, graph=graph, title=title)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig


def experiment(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    supernodes: Supernode | Iterable[Supernode] | NeuronpediaSelection,
    interventions: Interventions = None,
    *,
    reduce: Reduce = "sum",
    k: int = 5,
    freeze_attention: bool = True,
    direct_effects: bool = False,
) -> SupernodeExperiment:
    """Intervene and report each supernode's activation as a fraction of its clean one.

    Args:
        model: The model.
        prompt: The prompt.
        transcoders: The transcoder set.
        supernodes: The groups to report.
        interventions: As in :func:`sae_circuits.interventions.intervene` (e.g. ``texas.scale(0)``, or a list
            of such frames); ``None``: only the clean activations.
        reduce: ``"sum"`` or ``"mean"`` of the member activations.
        k: Top logits to report.
        freeze_attention: As in :func:`sae_circuits.interventions.intervene`.
        direct_effects: As in :func:`sae_circuits.interventions.intervene`.

    Returns:
        A :class:`SupernodeExperiment`.
    """
    groups = _supernode_list(supernodes)
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    result = intervene(
        model,
        prompt,
        transcoders,
        interventions,
        freeze_attention=freeze_attention,
        direct_effects=direct_effects,
    )
    table = supernode_activations(result, groups, reduce=reduce)
    return SupernodeExperiment(
        supernodes=tuple(groups),
        result=result,
        activations=table,
        top_logits=result.top_logits(k),
        reduce=reduce,
    )
