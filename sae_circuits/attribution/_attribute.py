"""``attribute``: the attribution graph of a prompt (Ameisen et al. 2025, "Circuit Tracing").

The graph's nodes are the active transcoder features, one error node per (layer, position), one
token node per position and the targets: the salient logits at the last position, or what
``targets=`` asks for (logits, logit differences, any direction at the unembedding's input or at a
hook; see :mod:`._targets`). The weight of edge
``(t, s)`` is the *direct effect* of source ``s`` on target ``t`` in the prompt's local
replacement model with attention patterns, norm scales and error terms frozen: a linear model, so
the effect is exact. For a feature target it is the effect on the feature's pre-activation; for a
logit it is the effect on the demeaned logit before any soft-capping, for a custom target on
``direction . activation``. A source feature acts
through ``a_s * W_dec[s]`` (written at every layer it decodes to), an error node through its error
vector, a token through its embedding.

Rows are computed in batches by backward passes (see ``_backward``) and stored sparse as they come;
with ``max_feature_nodes`` only the features with the most influence on the targets get rows,
chosen as in the paper: target rows first, then, every ``update_interval`` batches, the features
are ranked by their influence computed from the rows so far (seeded by the targets' weights) and
the most influential unvisited ones are visited next.

Example:
    >>> import sae_circuits as sc
    >>> graph = sc.attribute(model, "The capital of the state containing Dallas is", transcoders)
    >>> graph.logits
    >>> graph.edges().nlargest(10, "weight")
    >>> diff = sc.attribute(model, prompt, transcoders,
    ...                     targets=[sc.Target.logit_diff(" austin", " dallas")])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from sae_circuits._version import __version__
from sae_circuits.attribution._backward import RowSlice, Trace, _mem_available, trace
from sae_circuits.attribution._rows import RowStore
from sae_circuits.attribution._targets import (
    ResolvedTarget,
    Target,
    TargetReader,
    resolve_targets,
)
from sae_circuits.core.progress import progress_bar
from sae_circuits.core.prompts import Prompt, to_tokens, token_strings
from sae_circuits.graph import NODE_KINDS, AttributionGraph, NodeLayout, propagate_chunks
from sae_circuits.transcoders import check_compatible
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = ["attribute", "select_logits"]

logger = logging.getLogger(__name__)


def attribute(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    *,
    targets: Sequence[int | str | Target] | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int = 256,
    update_interval: int = 4,
    attention_sink: bool = True,
    memory_budget: int | None = None,
    progress: bool | None = None,
) -> AttributionGraph:
    """Compute the attribution graph of ``prompt``.

    Args:
        model: The user's ``HookedTransformer``; it is only hooked for the call (no hooks,
            ``requires_grad`` flags or modules are left changed, also on error).
        prompt: Text (tokenised with ``model.tokenizer``, BOS as the model's default), a list of
            token ids, or a 1-D tensor of token ids.
        transcoders: A transcoder set covering every layer (see :func:`load_transcoders`).
        targets: What the graph explains. ``None``: the salient logits at the last position
            (``max_n_logits``, ``desired_logit_prob``). Else a list, in the order of the target
            nodes: token ids and one-token strings (that logit at the last position),
            :meth:`Target.logit`, :meth:`Target.logit_diff` and :class:`Target` directions (at
            the unembedding's input or at ``hook=``); see :mod:`sae_circuits.attribution._targets`
            for what each reads and its default weight.
        max_n_logits: At most this many logit nodes (salient logits only).
        desired_logit_prob: Keep the smallest top-k logits whose probability reaches this
            (salient logits only).
        max_feature_nodes: Visit at most this many features, in order of influence on the
            targets; ``None`` for all active features.
        batch_size: Targets per backward pass, at most (long prompts use smaller slices, to
            stay within a memory budget); with ``max_feature_nodes``, also the unit of the
            exploration schedule (re-ranking every ``update_interval * batch_size`` features).
        update_interval: Batches between re-rankings of the features (with ``max_feature_nodes``).
        attention_sink: Treat position 0 as an attention sink: no features or error vector there.
        memory_budget: About how many bytes of working memory one backward slice may hold
            (targets are back-propagated in slices of at most ``batch_size``, fewer where the
            budget asks). ``None`` (default): from the memory free now, an eighth of Linux's
            ``MemAvailable`` between 32 MiB and 1 GiB on CPU, a quarter of the device's free
            memory on CUDA (see docs/performance.md). The graph does not depend on it.
        progress: Show a progress bar; default: when stderr is a terminal.

    Returns:
        The :class:`AttributionGraph`.

    Raises:
        ValueError: Empty or too long prompt, token ids out of range, invalid sizes or
            probabilities, transcoders that do not fit the model, or bad targets (a string that
            is not one token, a direction of the wrong size or not finite, a position out of
            range, an unknown or frozen hook; the message names the target).
        TypeError: A ``str`` prompt for a model without tokenizer, or an unsupported prompt or
            target type.
        FloatingPointError: Non-finite activations in the forward pass.
    """
    _check_sizes(max_n_logits, desired_logit_prob, max_feature_nodes, batch_size, update_interval)
    is_int = isinstance(memory_budget, (int, np.integer)) and not isinstance(memory_budget, bool)
    if memory_budget is not None and (not is_int or memory_budget < 1):
        raise ValueError(
            f"memory_budget must be a number of bytes >= 1 or None, got {memory_budget!r}"
        )
    tokens = to_tokens(model, prompt)
    resolved = check_compatible(model, transcoders)
    specs = None
    if targets is not None:
        specs = resolve_targets(model, targets, n_pos=len(tokens), resolved=resolved)
    started = time.perf_counter()
    hooks = [t.site for t in specs or () if t.site is not None and not t.reads_mlp_input]
    tr = trace(
        model,
        tokens,
        resolved,
        attention_sink=attention_sink,
        memory_budget=memory_budget,
        target_hooks=hooks,
    )
    logit_probs = None
    if specs is None:
        logit_ids, logit_probs = select_logits(tr.logits, max_n_logits, desired_logit_prob)
        specs = [_salient(tr, int(t)) for t in logit_ids.tolist()]
    groups = _target_groups(tr, specs)  # checks directions against their hooks' sizes
    table = _target_table(model, tr, specs, probabilities=logit_probs)
    n_active = tr.n_active
    n_select = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    logger.info(
        "traced %d tokens: %d active features, %d targets; attributing %d features",
        tr.n_pos,
        n_active,
        len(specs),
        n_select,
    )
    bar = progress_bar(
        total=len(specs) + n_select, desc="attribution", progress=progress, unit="row"
    )
    keep = _ranking_keep(tr, n_select, len(specs))
    try:
        rows = RowStore(tr.n_sources, keep=keep)
        _target_rows(tr, groups, rows, batch_size, bar)
        weights = table["weight"].to_numpy(dtype=np.float64)
        visited = _visit_features(tr, rows, weights, n_select, batch_size, update_interval, bar)
        if keep is not None:  # the ranking rows were cut: the graph's rows, computed again
            columns = np.ones(tr.n_sources, dtype=bool)
            columns[: tr.n_active] = False
            columns[visited] = True
            ranking, rows = rows, RowStore(tr.n_sources, columns=columns)
            logger.info(
                "rows computed again for the %d chosen features (ranking rows: %d MB)",
                len(visited),
                ranking.nbytes >> 20,
            )
            del ranking
            bar.reset(total=len(specs) + len(visited))
            _target_rows(tr, groups, rows, batch_size, bar)
            _feature_rows(tr, visited, rows, batch_size, bar)
    finally:
        bar.close()
    settings = {
        "max_n_logits": max_n_logits,
        "desired_logit_prob": desired_logit_prob,
        "max_feature_nodes": max_feature_nodes,
        "batch_size": batch_size,
        "update_interval": update_interval,
        "attention_sink": attention_sink,
        "targets": "salient logits" if targets is None else "given",
        "ranking_row_entries": keep,
    }
    graph = _assemble(model, prompt, tr, rows, visited, specs, table, settings)
    logger.info("attribution done in %.2fs: %r", time.perf_counter() - started, graph)
    return graph


def _salient(tr: Trace, token_id: int) -> ResolvedTarget:
    return ResolvedTarget(
        label=str(token_id),
        kind="logit",
        node_kind="logit",
        position=tr.n_pos - 1,
        token_ids=(token_id,),
        site=None,
        layer=tr.n_layers,
        reads_mlp_input=False,
        direction=None,
        weight=None,
    )


def _target_table(
    model: HookedTransformer,
    tr: Trace,
    specs: Sequence[ResolvedTarget],
    *,
    probabilities: torch.Tensor | None = None,
) -> pd.DataFrame:
    """One row per target: label, kind, position, token_id, token, hook, value, probability,
    weight.

    ``value`` is what the target's row attributes, in the clean run (float64): the demeaned
    pre-softcap logit, the pre-softcap logit difference, or ``direction . activation``.
    ``probability`` is a logit's (the model's softmax at its position); ``weight`` the given
    one, else the probability for a logit and 1.0 for a custom target.
    """
    n = tr.n_pos
    reader = TargetReader(model)
    strings = token_strings(model, [t.token_ids[0] for t in specs if t.kind == "logit"])
    decoded = iter(strings)
    probs_at: dict[int, torch.Tensor] = {}

    def probs(pos: int) -> torch.Tensor:
        if pos not in probs_at:
            if pos == n - 1:
                logits = tr.logits.double()
            else:
                logits = reader.logits(tr.final[pos])
                cap = float(getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0)
                if cap > 0:
                    logits = cap * torch.tanh(logits / cap)
            probs_at[pos] = torch.softmax(logits.double(), dim=-1).float().cpu()
        return probs_at[pos]

    rows = []
    for j, t in enumerate(specs):
        pos, token, prob, hook, label = t.position, None, None, t.hook, t.label
        if t.site is None:
            x = tr.final[pos]
        elif t.reads_mlp_input:
            x = tr.x_in[t.layer][pos]
        else:
            x = tr.extra_values[t.site.name][pos]
        value = reader.value(t.describe(), x)
        if t.kind == "logit":
            (tid,) = t.token_ids
            prob = float(probabilities[j]) if probabilities is not None else float(probs(pos)[tid])
            token = next(decoded)
            label = t.label if t.label != str(tid) or token is None else token
        weight = t.weight if t.weight is not None else (prob if prob is not None else 1.0)
        rows.append(
            {
                "label": label,
                "kind": t.kind,
                "position": pos,
                "token_id": t.token_ids[0] if t.kind == "logit" else None,
                "token": token,
                "hook": hook,
                "value": value,
                "probability": prob,
                "weight": weight,
            }
        )
    table = pd.DataFrame(rows)
    for col in ("token_id", "position"):
        table[col] = pd.array(table[col].tolist(), dtype="Int64")
    table["probability"] = pd.array(table["probability"].tolist(), dtype="Float32")
    table["weight"] = table["weight"].astype(np.float64)
    if probabilities is not None:  # the salient logits keep select_logits' float32 values
        table["weight"] = probabilities.numpy().astype(np.float64)
    for col in ("label", "token", "hook"):
        table[col] = pd.array(table[col].tolist(), dtype="string")
    return table


def _target_groups(
    tr: Trace, specs: Sequence[ResolvedTarget]
) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor, str | None]]:
    """Targets grouped by where they read: ``(indices, layers, positions, vectors, hook)``."""
    by_site: dict[tuple[int, str | None], list[int]] = {}
    for j, t in enumerate(specs):
        hook = t.hook if t.site is not None and not t.reads_mlp_input else None
        by_site.setdefault((t.layer, hook), []).append(j)
    groups = []
    w = tr._unembed
    for (layer, hook), members in by_site.items():
        vecs = []
        for j in members:
            t = specs[j]
            if t.kind == "logit":
                vecs.append(tr.logit_vectors(torch.tensor(t.token_ids))[0])
            elif t.kind == "logit_diff":
                a, b = t.token_ids
                vecs.append(w[:, a] - w[:, b])
            else:
                assert t.direction is not None
                if hook is not None:
                    shape = tuple(tr.extra_values[hook].shape[1:])
                    if t.direction.numel() != int(np.prod(shape)):
                        raise ValueError(
                            f"target {t.label!r}: its direction has {t.direction.numel()} "
                            f"entries, but {hook} holds {shape} per position "
                            f"({int(np.prod(shape))} entries)"
                        )
                vecs.append(t.direction.to(w.device, tr.errors.dtype))
        idx = np.asarray(members, dtype=np.int64)
        groups.append(
            (
                idx,
                torch.full((len(members),), layer),
                torch.tensor([specs[j].position for j in members]),
                torch.stack([v.to(w.device, tr.errors.dtype) for v in vecs]),
                hook,
            )
        )
    return groups


def _check_sizes(
    max_n_logits: int,
    desired_logit_prob: float,
    max_feature_nodes: int | None,
    batch_size: int,
    update_interval: int,
) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(max_n_logits) or max_n_logits < 1:
        raise ValueError(f"max_n_logits must be an integer >= 1, got {max_n_logits!r}")
    if not isinstance(desired_logit_prob, (int, float)) or not 0.0 < desired_logit_prob <= 1.0:
        raise ValueError(f"desired_logit_prob must be in (0, 1], got {desired_logit_prob!r}")
    if max_feature_nodes is not None and (not is_int(max_feature_nodes) or max_feature_nodes < 0):
        raise ValueError(
            f"max_feature_nodes must be None (all features) or an integer >= 0, got {max_feature_nodes!r}"
        )
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not is_int(update_interval) or update_interval < 1:
        raise ValueError(f"update_interval must be an integer >= 1, got {update_interval!r}")


def select_logits(
    logits: torch.Tensor, max_n_logits: int, desired_logit_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest top-k (k <= ``max_n_logits``) whose probability reaches ``desired_logit_prob``.

    Args:
        logits: ``(d_vocab,)`` logits at the last position.
        max_n_logits: Upper bound on k.
        desired_logit_prob: Target cumulative probability.

    Returns:
        ``(k,)`` token ids and ``(k,)`` probabilities, most probable first.
    """
    probs = torch.softmax(logits.double(), dim=-1)
    top_p, top_idx = torch.topk(probs, min(max_n_logits, probs.numel()))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
    cutoff = min(cutoff, len(top_idx))
    return top_idx[:cutoff].cpu(), top_p[:cutoff].float().cpu()


def _visit_features(
    tr: Trace,
    rows: RowStore,
    target_weights: np.ndarray,
    n_select: int,
    batch_size: int,
    update_interval: int,
    bar: Any,
) -> np.ndarray:
    """Compute feature rows; returns the visited features (indices into the active features)."""
    n_active = tr.n_active
    visited = np.zeros(n_active, dtype=bool)
    n_visited = 0
    while n_visited < n_select:
        if n_select == n_active:
            pending = np.arange(n_active)
        else:
            influence = _partial_influence(rows, tr.n_sources, target_weights)
            rank = torch.argsort(torch.from_numpy(influence[:n_active]), descending=True).numpy()
            queue = min(update_interval * batch_size, n_select - n_visited)
            pending = rank[~visited[rank]][:queue]
        _feature_rows(tr, pending, rows, batch_size, bar)  # in an order that is fast
        visited[pending] = True
        n_visited += len(pending)
    return np.flatnonzero(visited)


def _target_rows(tr: Trace, groups: list, rows: RowStore, batch_size: int, bar: Any) -> None:
    """The targets' rows (row nodes ``n_sources + j``), into ``rows``."""
    for idx, layers, positions, vectors, hook in groups:
        for part in tr.row_slices(layers, positions, vectors, hook=hook, max_slice=batch_size):
            nodes = tr.n_sources + idx[part.offset : part.offset + len(part.values)]
            rows.add(nodes, part.values, gap=_gap(tr, part))
            bar.update(len(nodes))


def _feature_rows(
    tr: Trace,
    features: np.ndarray,
    rows: RowStore,
    batch_size: int,
    bar: Any,
) -> None:
    """The rows of ``features`` (indices into the active features), into ``rows``.

    The order changes nothing but speed: one layer at a time, so that each backward pass stops
    at its layer (and leaves out the features above it), and by position within a layer, so
    that each pass's attention backward stops at its last position.
    """
    order = np.lexsort((tr.feature_pos.numpy()[features], tr.feature_layer.numpy()[features]))
    features = features[order]
    layer_of = tr.feature_layer.numpy()[features]
    for idx in np.split(features, np.flatnonzero(np.diff(layer_of)) + 1):
        sel = torch.from_numpy(idx)
        slices = tr.row_slices(
            tr.feature_layer[sel],
            tr.feature_pos[sel],
            tr.encoder_vectors(sel),
            max_slice=batch_size,
        )
        for part in slices:
            nodes = idx[part.offset : part.offset + len(part.values)]
            rows.add(nodes, part.values, gap=_gap(tr, part))
            bar.update(len(nodes))


#: The largest share of the memory available at the start that the rows of a graph with
#: ``max_feature_nodes`` may take before the ranking keeps only each row's largest entries.
_ROW_SHARE = 0.25
#: Fewest entries a ranking row keeps.
_MIN_KEEP = 1024


def _ranking_keep(tr: Trace, n_select: int, n_targets: int) -> int | None:
    """Entries per row a ranking store keeps, or ``None`` to store every row whole.

    With ``max_feature_nodes``, features are ranked by their influence computed from the rows so
    far, over every active feature; a row holds up to ``n_sources`` entries (8 bytes each), so
    on a long prompt (millions of active features) the rows of a few thousand features exceed
    the memory. When their bound, ``(n_select + n_targets) * n_sources * 8`` bytes, exceeds
    ``_ROW_SHARE`` of the memory available, the ranking store keeps each row's largest entries
    (as many as fit) and the exact sum of its magnitudes, and the chosen features' rows are
    computed a second time, keeping only the graph's columns (exact edges, twice the backward
    passes). A full graph (every feature visited) never takes this path.
    """
    n_rows = n_select + n_targets
    if n_select == tr.n_active or n_rows == 0:
        return None
    avail = _mem_available()  # rows are stored in host memory, whatever the device
    if avail is None:
        return None
    budget = int(_ROW_SHARE * avail)
    if n_rows * tr.n_sources * 8 <= budget:
        return None
    keep = max(_MIN_KEEP, budget // (8 * n_rows))
    logger.info(
        "ranking rows keep their %d largest entries of %d (the rows whole would take up to %.1f GB)",
        keep,
        tr.n_sources,
        n_rows * tr.n_sources * 8 / 2**30,
    )
    return keep


def _gap(tr: Trace, part: RowSlice) -> tuple[int, int]:
    """The feature columns a slice leaves out, as :meth:`RowStore.add` takes them."""
    return part.n_features, tr.n_active - part.n_features


def _partial_influence(rows: RowStore, n_sources: int, target_weights: np.ndarray) -> np.ndarray:
    """Influence of every node on the targets from the rows computed so far."""
    seed = np.zeros(n_sources + len(target_weights))
    seed[n_sources:] = target_weights
    return propagate_chunks(rows.chunks(), seed, eps=1e-8, row_sums=rows.row_sums())


def _assemble(
    model: HookedTransformer,
    prompt: Prompt,
    tr: Trace,
    rows: RowStore,
    visited: np.ndarray,
    specs: Sequence[ResolvedTarget],
    table: pd.DataFrame,
    settings: dict[str, Any],
) -> AttributionGraph:
    n_layers, n, n_active = tr.n_layers, tr.n_pos, tr.n_active
    n_sel, n_targets = len(visited), len(specs)
    layout = NodeLayout(n_sel, n_layers, n, n_targets, tuple(t.node_kind for t in specs))
    n_nodes = layout.n_nodes
    adjacency = rows.assemble(
        layout.row_map(visited, n_active), layout.column_map(visited, n_active), n_nodes
    )

    tokens = tr.tokens.tolist()
    tok_str = token_strings(model, tokens)
    is_logit = (table["kind"] == "logit").to_numpy()
    sel = torch.from_numpy(visited)
    na = pd.NA
    before = n_sel + (n_layers + 1) * n  # nodes before the targets
    layer = [*tr.feature_layer[sel].tolist(), *np.repeat(np.arange(n_layers), n).tolist()]
    layer += [na] * (n + n_targets)
    position = [*tr.feature_pos[sel].tolist(), *np.tile(np.arange(n), n_layers).tolist()]
    position += [*range(n), *table["position"].tolist()]
    feature = [*tr.feature_idx[sel].tolist()] + [na] * ((n_layers + 1) * n + n_targets)
    token_id = [na] * (n_sel + n_layers * n) + tokens + table["token_id"].tolist()
    activation = [*tr.feature_act[sel].tolist()] + [na] * ((n_layers + 1) * n + n_targets)
    probability = [na] * before + table["probability"].tolist()
    token = [None] * (n_sel + n_layers * n) + tok_str + table["token"].tolist()
    nodes = pd.DataFrame(
        {
            "kind": pd.Categorical(layout.kinds(), categories=list(NODE_KINDS)),
            "layer": pd.array(layer, dtype="Int64"),
            "position": pd.array(position, dtype="Int64"),
            "feature": pd.array(feature, dtype="Int64"),
            "token_id": pd.array(token_id, dtype="Int64"),
            "activation": pd.array(activation, dtype="Float32"),
            "probability": pd.array(probability, dtype="Float32"),
            "token": pd.array(token, dtype="string"),
            "label": pd.array([None] * before + table["label"].tolist(), dtype="string"),
            "target_value": pd.array([na] * before + table["value"].tolist(), dtype="Float64"),
            "target_weight": pd.array([na] * before + table["weight"].tolist(), dtype="Float64"),
        }
    )
    logit_rows = table.loc[is_logit]
    assert isinstance(logit_rows, pd.DataFrame)
    logits = pd.DataFrame(
        {
            "token_id": logit_rows["token_id"].to_numpy(dtype=np.int64),
            "token": pd.array(logit_rows["token"].tolist(), dtype="string"),
            "probability": logit_rows["probability"].to_numpy(dtype=np.float32),
        }
    )
    metadata: dict[str, Any] = {
        "prompt": prompt if isinstance(prompt, str) else None,
        "tokens": tokens,
        "model_name": getattr(model.cfg, "model_name", None),
        "d_vocab": int(model.cfg.d_vocab),
        "transcoders": tr.transcoders_info,
        "n_active_features": n_active,
        "settings": settings,
        "targets": [t.describe() for t in specs],
        "sae_circuits_version": __version__,
    }
    return AttributionGraph(adjacency=adjacency, nodes=nodes, logits=logits, metadata=metadata)
