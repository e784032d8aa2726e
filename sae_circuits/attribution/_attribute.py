"""``attribute``: the attribution graph of a prompt (Ameisen et al. 2025, "Circuit Tracing").

The graph's nodes are the active transcoder features, one error node per (layer, position), one
token node per position and the salient logits at the last position. The weight of edge
``(t, s)`` is the *direct effect* of source ``s`` on target ``t`` in the prompt's local
replacement model with attention patterns, norm scales and error terms frozen: a linear model, so
the effect is exact. For a feature target it is the effect on the feature's pre-activation; for a
logit it is the effect on the demeaned logit before any soft-capping. A source feature acts
through ``a_s * W_dec[s]`` (written at every layer it decodes to), an error node through its error
vector, a token through its embedding.

Rows are computed in batches by backward passes (see ``_backward``) and stored sparse as they come;
with ``max_feature_nodes`` only the features with the most influence on the logits get rows,
chosen as in the paper: logit rows first, then, every ``update_interval`` batches, the features
are ranked by their influence computed from the rows so far and the most influential unvisited
ones are visited next.

Example:
    >>> import sae_circuits as sc
    >>> graph = sc.attribute(model, "The capital of the state containing Dallas is", transcoders)
    >>> graph.logits
    >>> graph.edges().nlargest(10, "weight")
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from sae_circuits._version import __version__
from sae_circuits.attribution._backward import RowSlice, Trace, trace
from sae_circuits.attribution._rows import RowStore
from sae_circuits.core.progress import progress_bar
from sae_circuits.core.prompts import Prompt, to_tokens, token_strings
from sae_circuits.graph import AttributionGraph, NodeLayout, propagate_chunks
from sae_circuits.transcoders import check_compatible
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = ["attribute", "select_logits"]

logger = logging.getLogger(__name__)


def attribute(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int = 256,
    update_interval: int = 4,
    attention_sink: bool = True,
    progress: bool | None = None,
) -> AttributionGraph:
    """Compute the attribution graph of ``prompt``.

    Args:
        model: The user's ``HookedTransformer``; it is only hooked for the call (no hooks,
            ``requires_grad`` flags or modules are left changed, also on error).
        prompt: Text (tokenised with ``model.tokenizer``, BOS as the model's default), a list of
            token ids, or a 1-D tensor of token ids.
        transcoders: A transcoder set covering every layer (see :func:`load_transcoders`).
        max_n_logits: At most this many logit nodes.
        desired_logit_prob: Keep the smallest top-k logits whose probability reaches this.
        max_feature_nodes: Visit at most this many features, in order of influence on the
            logits; ``None`` for all active features.
        batch_size: Targets per backward pass, at most (long prompts use smaller slices, to
            stay within a memory budget); with ``max_feature_nodes``, also the unit of the
            exploration schedule (re-ranking every ``update_interval * batch_size`` features).
        update_interval: Batches between re-rankings of the features (with ``max_feature_nodes``).
        attention_sink: Treat position 0 as an attention sink: no features or error vector there.
        progress: Show a progress bar; default: when stderr is a terminal.

    Returns:
        The :class:`AttributionGraph`.

    Raises:
        ValueError: Empty or too long prompt, token ids out of range, invalid sizes or
            probabilities, or transcoders that do not fit the model.
        TypeError: A ``str`` prompt for a model without tokenizer, or an unsupported prompt type.
        FloatingPointError: Non-finite activations in the forward pass.
    """
    _check_sizes(max_n_logits, desired_logit_prob, max_feature_nodes, batch_size, update_interval)
    tokens = to_tokens(model, prompt)
    resolved = check_compatible(model, transcoders)
    started = time.perf_counter()
    tr = trace(model, tokens, resolved, attention_sink=attention_sink)
    logit_ids, logit_probs = select_logits(tr.logits, max_n_logits, desired_logit_prob)
    n_active = tr.n_active
    n_select = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    logger.info(
        "traced %d tokens: %d active features, %d logits; attributing %d features",
        tr.n_pos,
        n_active,
        len(logit_ids),
        n_select,
    )
    bar = progress_bar(
        total=len(logit_ids) + n_select, desc="attribution", progress=progress, unit="row"
    )
    try:
        rows = RowStore(tr.n_sources)
        k = len(logit_ids)  # logit rows: node ids n_sources + j
        slices = tr.row_slices(
            torch.full((k,), tr.n_layers),
            torch.full((k,), tr.n_pos - 1),
            tr.logit_vectors(logit_ids),
            max_slice=batch_size,
        )
        for part in slices:
            first = tr.n_sources + part.offset
            nodes = np.arange(first, first + len(part.values))
            rows.add(nodes, part.values, gap=_gap(tr, part))
            bar.update(len(nodes))
        visited = _visit_features(tr, rows, logit_probs, n_select, batch_size, update_interval, bar)
    finally:
        bar.close()
    settings = {
        "max_n_logits": max_n_logits,
        "desired_logit_prob": desired_logit_prob,
        "max_feature_nodes": max_feature_nodes,
        "batch_size": batch_size,
        "update_interval": update_interval,
        "attention_sink": attention_sink,
    }
    graph = _assemble(model, prompt, tr, rows, visited, logit_ids, logit_probs, settings)
    logger.info("attribution done in %.2fs: %r", time.perf_counter() - started, graph)
    return graph


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
    logit_probs: torch.Tensor,
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
            influence = _partial_influence(rows, tr.n_sources, logit_probs.numpy())
            rank = torch.argsort(torch.from_numpy(influence[:n_active]), descending=True).numpy()
            queue = min(update_interval * batch_size, n_select - n_visited)
            pending = rank[~visited[rank]][:queue]
        # the order within a queue changes nothing but speed: one layer at a time, so that
        # each backward pass stops at its layer (and leaves out the features above it), and
        # by position, so that each pass's attention backward stops at its last position
        layer_of = tr.feature_layer.numpy()[pending]
        order = np.lexsort((tr.feature_pos.numpy()[pending], layer_of))
        pending, layer_of = pending[order], layer_of[order]
        bounds = np.flatnonzero(np.diff(layer_of)) + 1
        for idx in np.split(pending, bounds):
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
            visited[idx] = True
            n_visited += len(idx)
    return np.flatnonzero(visited)


def _gap(tr: Trace, part: RowSlice) -> tuple[int, int]:
    """The feature columns a slice leaves out, as :meth:`RowStore.add` takes them."""
    return part.n_features, tr.n_active - part.n_features


def _partial_influence(rows: RowStore, n_sources: int, logit_probs: np.ndarray) -> np.ndarray:
    """Influence of every node on the logits from the rows computed so far."""
    seed = np.zeros(n_sources + len(logit_probs))
    seed[n_sources:] = logit_probs
    return propagate_chunks(rows.chunks(), seed, eps=1e-8)


def _assemble(
    model: HookedTransformer,
    prompt: Prompt,
    tr: Trace,
    rows: RowStore,
    visited: np.ndarray,
    logit_ids: torch.Tensor,
    logit_probs: torch.Tensor,
    settings: dict[str, Any],
) -> AttributionGraph:
    n_layers, n, n_active = tr.n_layers, tr.n_pos, tr.n_active
    n_sel, n_logits = len(visited), len(logit_ids)
    layout = NodeLayout(n_sel, n_layers, n, n_logits)
    n_nodes = layout.n_nodes
    adjacency = rows.assemble(
        layout.row_map(visited, n_active), layout.column_map(visited, n_active), n_nodes
    )

    tokens = tr.tokens.tolist()
    logit_list = logit_ids.tolist()
    tok_str = token_strings(model, tokens)
    logit_str = token_strings(model, logit_list)
    sel = torch.from_numpy(visited)
    na = pd.NA
    kind = layout.kinds()
    layer = [*tr.feature_layer[sel].tolist(), *np.repeat(np.arange(n_layers), n).tolist()]
    layer += [na] * (n + n_logits)
    position = [*tr.feature_pos[sel].tolist(), *np.tile(np.arange(n), n_layers).tolist()]
    position += [*range(n), *([n - 1] * n_logits)]
    feature = [*tr.feature_idx[sel].tolist()] + [na] * ((n_layers + 1) * n + n_logits)
    token_id = [na] * (n_sel + n_layers * n) + tokens + logit_list
    activation = [*tr.feature_act[sel].tolist()] + [na] * ((n_layers + 1) * n + n_logits)
    probability = [na] * (n_nodes - n_logits) + logit_probs.tolist()
    token = [None] * (n_sel + n_layers * n) + tok_str + logit_str
    nodes = pd.DataFrame(
        {
            "kind": pd.Categorical(kind, categories=["feature", "error", "token", "logit"]),
            "layer": pd.array(layer, dtype="Int64"),
            "position": pd.array(position, dtype="Int64"),
            "feature": pd.array(feature, dtype="Int64"),
            "token_id": pd.array(token_id, dtype="Int64"),
            "activation": pd.array(activation, dtype="Float32"),
            "probability": pd.array(probability, dtype="Float32"),
            "token": pd.array(token, dtype="string"),
        }
    )
    logits = pd.DataFrame(
        {
            "token_id": np.asarray(logit_list, dtype=np.int64),
            "token": pd.array(logit_str, dtype="string"),
            "probability": logit_probs.numpy().astype(np.float32),
        }
    )
    metadata: dict[str, Any] = {
        "prompt": prompt if isinstance(prompt, str) else None,
        "tokens": tokens,
        "model_name": getattr(model.cfg, "model_name", None),
        "transcoders": tr.resolved.transcoders.describe(),
        "n_active_features": n_active,
        "settings": settings,
        "sae_circuits_version": __version__,
    }
    return AttributionGraph(adjacency=adjacency, nodes=nodes, logits=logits, metadata=metadata)
