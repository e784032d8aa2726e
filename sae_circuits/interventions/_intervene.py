"""Interventions on transcoder features: test what an attribution graph claims.

An attribution graph claims how features affect each other and the logits. :func:`intervene`
tests such claims on the model itself: it runs the prompt's *replacement model* (every MLP is its
transcoder's reconstruction plus the error term frozen at its clean value) and, at chosen
``(layer, position, feature)`` entries, sets a feature's activation to a value or multiplies its
clean activation by a scale. That changes what the feature writes (for a cross-layer transcoder:
to its own layer and every later one); downstream features recompute their activations from their
changed inputs, and the logits move.

* ``freeze_attention=True`` (default) keeps attention patterns and every norm's scale at their
  clean values, as in the graph's local replacement model.
* ``direct_effects=True`` also freezes every transcoder's *output*: other features keep their
  clean outputs, only the intervened features' changed decoder writes (and linear skip paths)
  pass. Then the model is the graph's linear model and, for every feature pre-activation and
  demeaned pre-softcap logit ``t``, ``delta_t = sum_s adjacency[t, s] * (new_s - a_s) / a_s``
  over the intervened sources ``s`` exactly: :func:`compare_with_graph` checks it.

:func:`generate` continues a prompt with and without interventions (attention is not frozen
there; see its docstring).

Example:
    >>> import sae_circuits as sc
    >>> graph = sc.attribute(model, prompt, transcoders)
    >>> texas = graph.nodes.query("kind == 'feature' and layer == 2").assign(scale=0.0)
    >>> result = sc.intervene(model, prompt, transcoders, texas)
    >>> result.top_logits(5)                          # before / after
    >>> result.activation_table.head()                # layer, position, feature, activation, ...
    >>> check = sc.intervene(model, prompt, transcoders, texas, direct_effects=True, targets=graph)
    >>> sc.compare_with_graph(check, graph)           # predicted vs measured, per target node
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from sae_circuits.attribution import TargetReader
from sae_circuits.core.hooks import HookSite
from sae_circuits.core.prompts import Prompt, single_token_id, to_tokens
from sae_circuits.graph import TARGET_KINDS, AttributionGraph
from sae_circuits.interventions._generate import GenerationResult, generate
from sae_circuits.interventions._hooks import Recorded, clean_run, intervened_hooks, make_plan
from sae_circuits.interventions._inputs import (
    Interventions,
    Targets,
    as_tensor,
    parse_interventions,
    parse_targets,
)
from sae_circuits.replacement_model import run_to_output, unembed_input_site
from sae_circuits.transcoders import check_compatible
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = [
    "GenerationResult",
    "InterventionResult",
    "Interventions",
    "compare_with_graph",
    "generate",
    "intervene",
    "predict_changes",
]

logger = logging.getLogger(__name__)


def _decode_one(tokenizer: Any, token_id: int) -> str | None:
    if tokenizer is None:
        return None
    try:
        return tokenizer.decode([int(token_id)])
    except Exception:  # a tokenizer that cannot decode single ids
        return None


def _sparse_table(acts: Mapping[int, torch.Tensor], name: str) -> pd.DataFrame:
    parts = []
    for layer in sorted(acts):
        a = acts[layer].coalesce()
        pos, feat = a.indices().cpu().numpy()
        vals = a.values().float().cpu().numpy()
        keep = vals != 0
        parts.append(
            pd.DataFrame(
                {
                    "layer": np.full(int(keep.sum()), layer, dtype=np.int64),
                    "position": pos[keep].astype(np.int64),
                    "feature": feat[keep].astype(np.int64),
                    name: vals[keep],
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=["layer", "position", "feature", name])
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True, eq=False)
class InterventionResult:
    """The outcome of :func:`intervene` (tensors on the CPU).

    Attributes:
        tokens: ``(n,)`` token ids of the prompt.
        logits: ``(n, d_vocab)`` logits after the intervention.
        clean_logits: ``(n, d_vocab)`` logits of the clean run.
        logits_presoftcap: ``(d_vocab,)`` last-position logits after the intervention, before any
            output soft-cap (what attribution's logit nodes measure, once demeaned).
        clean_logits_presoftcap: ``(d_vocab,)`` the same in the clean run.
        activations: ``layer -> (n, d_sae)`` sparse COO feature activations after the
            intervention (with ``direct_effects`` what each feature *reads*; outputs stay frozen).
        clean_activations: ``layer -> (n, d_sae)`` sparse COO clean activations.
        pre_activations: One row per requested target: ``layer``, ``position``, ``feature``,
            ``clean_pre_activation``, ``pre_activation``.
        target_values: With ``targets=graph``, one row per target node of the graph: ``node``,
            ``label``, ``kind``, ``clean_value`` and ``value`` (what the target reads, as in
            ``graph.targets["value"]``, float64); else empty.
        interventions: The parsed interventions: ``layer``, ``position``, ``feature``, ``value``,
            ``scale`` (NaN where not given), ``clean_activation`` and ``new_activation``.
        settings: ``freeze_attention`` and ``direct_effects``.
        tokenizer: The model's tokenizer (for token strings), if any.
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    clean_logits: torch.Tensor
    logits_presoftcap: torch.Tensor
    clean_logits_presoftcap: torch.Tensor
    activations: Mapping[int, torch.Tensor]
    clean_activations: Mapping[int, torch.Tensor]
    pre_activations: pd.DataFrame
    interventions: pd.DataFrame
    target_values: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: Any = field(default=None, repr=False)

    @property
    def last_logits(self) -> torch.Tensor:
        """``(d_vocab,)`` last-position logits after the intervention."""
        return self.logits[-1]

    @property
    def clean_last_logits(self) -> torch.Tensor:
        """``(d_vocab,)`` last-position logits of the clean run."""
        return self.clean_logits[-1]

    @property
    def logit_changes(self) -> torch.Tensor:
        """``(d_vocab,)`` change of the demeaned pre-softcap last-position logits."""
        new, old = self.logits_presoftcap.double(), self.clean_logits_presoftcap.double()
        return (new - new.mean()) - (old - old.mean())

    @cached_property
    def activation_table(self) -> pd.DataFrame:
        """Features active in either run: ``layer``, ``position``, ``feature``, ``activation``,
        ``clean_activation`` (0 where inactive), sorted by (layer, position, feature)."""
        new = _sparse_table(self.activations, "activation")
        old = _sparse_table(self.clean_activations, "clean_activation")
        key = ["layer", "position", "feature"]
        df = new.merge(old, on=key, how="outer").fillna(0.0)
        for c in key:
            df[c] = df[c].astype(np.int64)
        return df.sort_values(key, ignore_index=True)

    def top_logits(self, k: int = 5) -> pd.DataFrame:
        """Top-``k`` last-position tokens before and after the intervention.

        Returns:
            DataFrame with ``rank`` and, for ``before`` and ``after``, ``*_token_id``,
            ``*_token`` and ``*_probability``.
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        cols: dict[str, Any] = {"rank": np.arange(1, min(k, self.logits.shape[-1]) + 1)}
        for which, logits in (("before", self.clean_last_logits), ("after", self.last_logits)):
            p, idx = torch.softmax(logits.double(), -1).topk(len(cols["rank"]))
            cols[f"{which}_token_id"] = idx.numpy().astype(np.int64)
            cols[f"{which}_token"] = pd.array(
                [_decode_one(self.tokenizer, i) for i in idx.tolist()], dtype="string"
            )
            cols[f"{which}_probability"] = p.numpy()
        return pd.DataFrame(cols)

    def logit_difference(self, a: int | str, b: int | str) -> tuple[float, float]:
        """``logit[a] - logit[b]`` at the last position: ``(clean, after)``.

        Args:
            a, b: Token ids or single-token strings.
        """
        ia, ib = single_token_id(self.tokenizer, a), single_token_id(self.tokenizer, b)
        return (
            float(self.clean_last_logits[ia] - self.clean_last_logits[ib]),
            float(self.last_logits[ia] - self.last_logits[ib]),
        )


def intervene(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    interventions: Interventions,
    *,
    freeze_attention: bool = True,
    direct_effects: bool = False,
    targets: Targets = None,
) -> InterventionResult:
    """Run the prompt's replacement model with feature activations set or scaled.

    Args:
        model: The user's model (hooked only for the call; left as it was, also on error).
        prompt: Text, a list of token ids or a 1-D tensor of ids (as in :func:`attribute`).
        transcoders: A transcoder set covering every layer (per-layer transcoders or a CLT).
        interventions: ``(layer, position, feature, value)`` tuples (set the activation), or a
            DataFrame, e.g. rows of ``graph.nodes``, with ``layer``, ``position``, ``feature`` and
            a ``value`` column (set) or a ``scale`` column (multiply the clean activation); a
            DataFrame may hold both columns if each row fills exactly one. A list may mix tuples
            and DataFrames. ``None`` or empty: no intervention.
        freeze_attention: Keep attention patterns and norm scales at their clean values.
        direct_effects: Also keep every transcoder output at its clean value except for the
            intervened features' changed writes (and linear skip paths): only direct effects
            pass. Needs ``freeze_attention=True``.
        targets: Features whose pre-activations to record (clean and after), as
            ``(layer, position, feature)`` triples, a DataFrame with those columns, or an
            attribution graph: all its feature nodes, and what its target nodes read (logits,
            logit differences, directions at the unembedding's input or at hooks), in
            :attr:`InterventionResult.target_values`.

    Returns:
        An :class:`InterventionResult`.

    Raises:
        ValueError: Malformed or out-of-range interventions or targets (the message names the
            problem and the valid choices), ``direct_effects`` without ``freeze_attention``, bad
            prompts or transcoders that do not fit the model.
        TypeError: Unsupported types of prompt, interventions or targets.
        FloatingPointError: Non-finite activations in the clean run.
    """
    if direct_effects and not freeze_attention:
        raise ValueError(
            "direct_effects=True needs freeze_attention=True: direct effects are defined with "
            "attention patterns and norm scales frozen"
        )
    tokens = to_tokens(model, prompt)
    resolved = check_compatible(model, transcoders)
    ts = resolved.transcoders
    n_layers, n_pos = ts.n_layers, len(tokens)
    table = parse_interventions(interventions, n_layers=n_layers, n_pos=n_pos, d_sae=ts.d_sae)
    tgt = parse_targets(targets, n_layers=n_layers, n_pos=n_pos, d_sae=ts.d_sae)
    read_targets = _graph_targets(targets)
    reads = _read_sites(read_targets)
    clean = clean_run(model, tokens, resolved, freeze=freeze_attention, record=reads)
    plan = make_plan(table, clean, resolved)
    by_layer = {
        layer: (
            as_tensor(tgt.loc[tgt["layer"] == layer, "position"], ts.device),
            as_tensor(tgt.loc[tgt["layer"] == layer, "feature"], ts.device),
        )
        for layer in sorted(set(tgt["layer"].tolist()))
    }
    record = Recorded()
    hooks = intervened_hooks(
        model,
        resolved,
        clean,
        plan,
        mode="direct" if direct_effects else "replacement",
        freeze=freeze_attention,
        targets=by_layer,
        record=record,
        reads=reads,
    )
    device = model.W_E.device
    with torch.no_grad():  # logits at every position, without TransformerLens' W_U copy
        out = run_to_output(model, tokens[None].to(device), hooks, positions="all")
        logits = out.logits[0].detach().cpu()
    assert record.logits_presoftcap is not None
    pre = tgt.copy()
    clean_pre = np.zeros(len(tgt), dtype=np.float64)
    new_pre = np.zeros(len(tgt), dtype=np.float64)
    with torch.no_grad():
        for layer, (pos, feat) in by_layer.items():
            rows = (tgt["layer"] == layer).to_numpy()
            x = clean.x_in[layer].to(ts.device)
            clean_pre[rows] = ts.pre_activations(layer, x)[pos, feat].double().cpu().numpy()
            new_pre[rows] = record.pre[layer].double().cpu().numpy()
    pre["clean_pre_activation"] = clean_pre
    pre["pre_activation"] = new_pre
    clean_reads = {name: t[0] for name, t in clean.extra.items()}
    target_values = _target_values(model, read_targets, clean_reads, record.reads)
    logger.info(
        "intervened on %d features (%s) over %d tokens",
        len(table),
        "direct effects" if direct_effects else "full replacement model",
        len(tokens),
    )
    assert plan.table is not None
    return InterventionResult(
        tokens=tokens,
        logits=logits,
        clean_logits=clean.logits,
        logits_presoftcap=record.logits_presoftcap.cpu(),
        clean_logits_presoftcap=clean.logits_presoftcap,
        activations={layer: a.cpu() for layer, a in sorted(record.acts.items())},
        clean_activations={layer: a.cpu() for layer, a in enumerate(clean.acts)},
        pre_activations=pre,
        interventions=plan.table,
        target_values=target_values,
        settings={"freeze_attention": freeze_attention, "direct_effects": direct_effects},
        tokenizer=getattr(model, "tokenizer", None),
    )


def _graph_targets(targets: Any) -> list[tuple[int, str, dict[str, Any]]]:
    """``(node, label, description)`` of each target node of a graph given as ``targets``."""
    if not isinstance(targets, AttributionGraph):
        return []
    described = targets.metadata.get("targets")
    idx = targets.target_indices
    if not isinstance(described, list) or len(described) != len(idx):
        return []  # a graph from before custom targets: its logits are compared by logit_changes
    labels = targets.targets["label"].tolist()
    return [(int(i), str(lab), d) for i, lab, d in zip(idx, labels, described, strict=True)]


def _read_sites(read_targets: list[tuple[int, str, dict[str, Any]]]) -> list[HookSite | str]:
    hooks = sorted({d["hook"] for _, _, d in read_targets if d.get("hook") is not None})
    return [unembed_input_site(), *hooks] if read_targets else []


def _target_values(
    model: HookedTransformer,
    read_targets: list[tuple[int, str, dict[str, Any]]],
    clean_reads: Mapping[str, torch.Tensor],
    reads: Mapping[str, torch.Tensor],
) -> pd.DataFrame:
    reader = TargetReader(model)
    rows = []
    for node, label, d in read_targets:
        site, pos = d.get("hook") or unembed_input_site().name, int(d["position"])
        rows.append(
            {
                "node": node,
                "label": label,
                "kind": d["kind"],
                "clean_value": reader.value(d, clean_reads[site][pos]),
                "value": reader.value(d, reads[site][pos]),
            }
        )
    columns = ["node", "label", "kind", "clean_value", "value"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# the graph's side


def _graph_feature_index(graph: AttributionGraph) -> dict[tuple[int, int, int], int]:
    nodes = graph.nodes
    idx = graph.node_indices("feature")
    lay = nodes["layer"].to_numpy()[idx]
    pos = nodes["position"].to_numpy()[idx]
    feat = nodes["feature"].to_numpy()[idx]
    return {
        (int(a), int(b), int(c)): int(i) for a, b, c, i in zip(lay, pos, feat, idx, strict=True)
    }


def predict_changes(graph: AttributionGraph, interventions: pd.DataFrame) -> pd.DataFrame:
    """What the graph predicts an intervention does to every feature and target node.

    Uses ``delta_t = sum_s adjacency[t, s] * (new_s - a_s) / a_s`` over the intervened sources;
    exact for the graph's frozen linear model (:func:`intervene` with ``direct_effects=True``).

    Args:
        graph: The attribution graph of the prompt.
        interventions: Rows with ``layer``, ``position``, ``feature`` and ``new_activation``
            (as in ``InterventionResult.interventions``) or ``value`` / ``scale``.

    Returns:
        DataFrame of the graph's feature and target nodes: ``node``, ``kind``, ``layer``,
        ``position``, ``feature``, ``token_id``, ``predicted``.

    Raises:
        ValueError: An intervened feature is not a feature node of the graph (inactive, not
            visited, or at an attention-sink position) or rows lack a new value.
    """
    index = _graph_feature_index(graph)
    act = graph.nodes["activation"].to_numpy(dtype=np.float64, na_value=np.nan)
    coef = np.zeros(graph.n_nodes, dtype=np.float64)
    n = len(interventions)

    def column(name: str) -> list[float]:
        if name not in interventions.columns:
            return [np.nan] * n
        return interventions[name].to_numpy(dtype=np.float64, na_value=np.nan).tolist()

    keys = zip(*(interventions[c].tolist() for c in ("layer", "position", "feature")), strict=True)
    news = zip(column("new_activation"), column("value"), column("scale"), strict=True)
    for (layer, pos, feat), (new, value, scale) in zip(keys, news, strict=True):
        key = (int(layer), int(pos), int(feat))
        if key not in index:
            raise ValueError(
                f"feature (layer={key[0]}, position={key[1]}, feature={key[2]}) is not a feature "
                "node of the graph (inactive on this prompt, not visited, or at an attention-sink "
                "position), so the graph predicts nothing about it"
            )
        node = index[key]
        a = act[node]
        if np.isnan(new):
            new = value if not np.isnan(value) else scale * a
        if np.isnan(new):
            raise ValueError(
                f"intervention on {key} has no new value (value, scale or new_activation)"
            )
        coef[node] += (new - a) / a
    predicted = graph.adjacency.astype(np.float64) @ coef
    kinds = graph.nodes["kind"].astype(str).to_numpy()
    sel = np.flatnonzero(np.isin(kinds, ("feature", *TARGET_KINDS)))
    cols = ["kind", "layer", "position", "feature", "token_id"]
    out = graph.nodes.iloc[sel][cols].reset_index(drop=True)
    out.insert(0, "node", sel.astype(np.int64))
    out["predicted"] = predicted[sel]
    return out


def compare_with_graph(result: InterventionResult, graph: AttributionGraph) -> pd.DataFrame:
    """The graph's predicted change of each target next to the change :func:`intervene` measured.

    Feature nodes compare pre-activations (recorded for the ``targets`` given to
    :func:`intervene`; NaN for the others), target nodes what they read (with
    ``intervene(..., targets=graph)``; else logits at the last position compare the demeaned
    pre-softcap logits and custom targets are NaN). The two agree (to float rounding) when
    ``result`` came from ``direct_effects=True``.

    Args:
        result: An intervention on the graph's prompt.
        graph: Its attribution graph.

    Returns:
        :func:`predict_changes`' table with a ``measured`` column.

    Raises:
        ValueError: The result is of another prompt than the graph.
    """
    tokens = list(graph.metadata.get("tokens", []))
    if tokens and tokens != result.tokens.tolist():
        raise ValueError(
            "the intervention ran on another prompt than the graph "
            f"({len(result.tokens)} vs {len(tokens)} tokens, or different ids)"
        )
    if not result.settings.get("direct_effects"):
        logger.warning(
            "compare_with_graph: the intervention did not use direct_effects=True, so indirect "
            "effects are included and predictions are only first-order"
        )
    table = predict_changes(graph, result.interventions)
    pre = result.pre_activations
    measured = dict(
        zip(
            zip(pre["layer"], pre["position"], pre["feature"], strict=True),
            pre["pre_activation"] - pre["clean_pre_activation"],
            strict=True,
        )
    )
    changes = result.logit_changes.numpy()
    tv = result.target_values
    read = dict(zip(tv["node"], tv["value"] - tv["clean_value"], strict=True)) if len(tv) else {}
    last = len(result.tokens) - 1
    out = np.full(len(table), np.nan)
    cols = (table[c].tolist() for c in ("node", "kind", "layer", "position", "feature", "token_id"))
    for i, (node, kind, layer, pos, feat, token) in enumerate(zip(*cols, strict=True)):
        if node in read:
            out[i] = read[node]
        elif kind == "logit" and int(pos) == last:
            out[i] = changes[int(token)]
        elif kind == "feature":
            out[i] = measured.get((int(layer), int(pos), int(feat)), np.nan)
    table["measured"] = out
    return table
