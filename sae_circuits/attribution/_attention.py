"""QK attributions: why a head attended where it did, split over pairs of sources.

In the prompt's frozen local replacement model (attention patterns, every norm's scale, including
QK-norms, and the error terms at their clean values) the query vector ``q`` of head ``h`` at the
query position and the key vector ``k`` at the key position are affine in the sources (active
features through their decoder writes, error nodes, token embeddings): ``q = sum_s Q_s + q_0``,
``k = sum_s K_s + k_0``, where ``Q_s`` is source ``s``'s direct effect on ``q`` (a row of the
graph's kind, one per query component, read at ``hook_rot_q`` after rotary embeddings, else at
``hook_q``) and ``q_0`` the **bias** term: every constant (projection and norm biases, positional
embeddings, what the attention-sink position holds). Rotary embeddings are linear maps of each
position's vector, and a QK-norm with its scale frozen is one too, so the attention score (the
bilinear part, before any soft-cap, the causal or local mask and ALiBi-like additive biases)
splits exactly:

    score = q . k / attn_scale = sum_{s, s'} Q_s . K_{s'} / attn_scale       (s, s' incl. bias)

``query_side`` gives each query-side source's share ``Q_s . k / attn_scale`` (its row of pairs
summed), ``key_side`` each key-side source's ``q . K_s / attn_scale``; ``pairs`` the largest pairs
by magnitude (found blockwise with the Cauchy-Schwarz bound ``|Q_s . K_s'| <= |Q_s| |K_s'|``,
never forming the whole query-by-key matrix), with the rest in ``residual``.

Example:
    >>> qk = sc.attribute_attention(model, prompt, transcoders, layer=2, head=1, query=8, key=7)
    >>> qk.score, qk.pairs.head(), qk.query_side.nlargest(5, "contribution")
    >>> for qk in sc.attribute_attention_keys(model, prompt, transcoders, layer=2, head=1, query=8):
    ...     print(qk.key, qk.pattern, qk.score)
    >>> for loading, qk in sc.attribute_attention_for_edge(model, prompt, transcoders, graph,
    ...                                                     source=445, target=1244):
    ...     print(loading["layer"], loading["head"], loading["share"], qk.pairs.head(3))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from sae_circuits.attribution._backward import Trace, trace
from sae_circuits.attribution._heads import head_loadings
from sae_circuits.core.hooks import resolve_hook
from sae_circuits.core.prompts import Prompt, to_tokens, token_strings
from sae_circuits.graph import node_id
from sae_circuits.transcoders import check_compatible
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = [
    "QKAttribution",
    "attribute_attention",
    "attribute_attention_for_edge",
    "attribute_attention_keys",
    "qk_sites",
]

logger = logging.getLogger(__name__)

#: Pair values computed at once (query columns x key columns) in the top-pairs search.
_BLOCK = 2**22

#: Source id of the constant (bias) term of a side.
BIAS = "bias"


@dataclass(frozen=True, eq=False)
class QKAttribution:
    """The attention score of one head at one (query, key) split over sources.

    Attributes:
        layer, head, query, key: Where (``head`` a query head; GQA's key head is
            ``head // (n_heads // n_key_value_heads)``).
        score: ``q . k / attn_scale`` in the clean run, before any soft-cap and the mask.
        pattern: The clean attention weight of the key at the query (after softmax).
        pairs: The ``top_pairs`` largest pairs by magnitude: ``query_node``, ``key_node`` (node
            ids, ``"bias"`` for a constant term), ``contribution``, and the ``kind``, ``layer``,
            ``position``, ``feature`` of both ends (``query_*`` / ``key_*``).
        query_side: Every query-side source with a non-zero share: ``node``, ``kind``,
            ``layer``, ``position``, ``feature``, ``token_id``, ``contribution``
            (``Q_s . k / attn_scale``; they sum to ``score``), by decreasing magnitude.
        key_side: The same for the key side (``q . K_s / attn_scale``).
        residual: ``score`` minus the listed pairs' sum (the pairs not listed).
        metadata: Prompt, tokens, hooks read, settings.
    """

    layer: int
    head: int
    query: int
    key: int
    score: float
    pattern: float
    pairs: pd.DataFrame
    query_side: pd.DataFrame
    key_side: pd.DataFrame
    residual: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"QKAttribution(layer={self.layer}, head={self.head}, query={self.query}, "
            f"key={self.key}, score={self.score:.4g}, pattern={self.pattern:.3g}, "
            f"{len(self.query_side)} query-side and {len(self.key_side)} key-side sources)"
        )


def attribute_attention(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    *,
    layer: int,
    head: int,
    query: int,
    key: int,
    top_pairs: int = 50,
    attention_sink: bool = True,
) -> QKAttribution:
    """Split one head's attention score at ``(query, key)`` into pairs of sources.

    Args:
        model: The user's model (only hooked for the call).
        prompt: Text, token ids or a 1-D tensor (as in :func:`attribute`).
        transcoders: The transcoder set the graph uses (its features are the sources).
        layer, head: The attention head (``head`` a query head).
        query, key: Positions (negative counts from the end); in a causal model
            ``key <= query``.
        top_pairs: How many pairs to list (the largest by magnitude).
        attention_sink: As in :func:`attribute`: position 0's features and errors are not
            sources (their contribution is in the bias terms).

    Returns:
        A :class:`QKAttribution`.

    Raises:
        ValueError: A layer, head or position out of range (the message gives the valid
            ranges), a key after the query in a causal model, ``top_pairs < 1``, or an
            attention the method cannot follow (named).
    """
    return _attribute_keys(
        model, prompt, transcoders, layer=layer, head=head, query=query, keys=[key],
        top_pairs=top_pairs, attention_sink=attention_sink,
    )[0]  # fmt: skip


def attribute_attention_keys(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    *,
    layer: int,
    head: int,
    query: int,
    n_keys: int = 3,
    top_pairs: int = 50,
    attention_sink: bool = True,
) -> list[QKAttribution]:
    """:func:`attribute_attention` for the ``n_keys`` keys the head attends to most at ``query``.

    One trace and one query-side backward pass serve every key.

    Returns:
        One :class:`QKAttribution` per key, by decreasing attention weight.
    """
    if not _is_int(n_keys) or n_keys < 1:
        raise ValueError(f"n_keys must be an integer >= 1, got {n_keys!r}")
    return _attribute_keys(
        model, prompt, transcoders, layer=layer, head=head, query=query, keys=None,
        n_keys=n_keys, top_pairs=top_pairs, attention_sink=attention_sink,
    )  # fmt: skip


def qk_sites(model: HookedTransformer, layer: int) -> tuple[str, str]:
    """The hooks whose values a head's scores are the dot products of: ``(query, key)``.

    ``attn.hook_rot_q`` / ``attn.hook_rot_k`` (after rotary embeddings and any QK-norm) in a
    rotary model, else ``attn.hook_q`` / ``attn.hook_k``.

    Raises:
        ValueError: An attention whose scores are not the dot products at those hooks (QK-norm
            without rotary embeddings, log-n scaling, 4-bit weights), named.
    """
    cfg = model.cfg
    prefix = f"blocks.{layer}.attn."
    rotary = cfg.positional_embedding_type == "rotary"
    problems = []
    if getattr(cfg, "use_qk_norm", False) and not rotary:
        problems.append("QK-norm without rotary embeddings (no hook after the norm)")
    if getattr(cfg, "use_logn_attn", False):
        problems.append("log-n attention scaling (applied after the last query hook)")
    if getattr(cfg, "load_in_4bit", False):
        problems.append("4-bit attention weights")
    if getattr(cfg, "original_architecture", None) in (
        "OlmoeForCausalLM",
        "Olmo2ForCausalLM",
        "Olmo3ForCausalLM",
    ):
        problems.append("OLMo's QK-norm over all heads")
    if problems:
        raise ValueError(
            "attribute_attention cannot follow this model's attention: " + "; ".join(problems)
        )
    names = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
    q_name, k_name = (prefix + n for n in names)
    for name in (q_name, k_name):
        if name not in model.hook_dict:
            raise ValueError(f"attribute_attention needs the hook {name!r}, which this model lacks")
    return q_name, k_name


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check(
    model: HookedTransformer, n: int, layer: Any, head: Any, query: Any
) -> tuple[int, int, int]:
    cfg = model.cfg
    for name, value, limit in (("layer", layer, cfg.n_layers), ("head", head, cfg.n_heads)):
        if not _is_int(value) or not 0 <= value < limit:
            raise ValueError(f"{name} must be an integer in 0..{limit - 1}, got {value!r}")
    return int(layer), int(head), _position("query", query, n)


def _position(name: str, value: Any, n: int) -> int:
    if not _is_int(value) or not -n <= value < n:
        raise ValueError(
            f"{name} position must be an integer in 0..{n - 1} (or -{n}..-1 from the end) for "
            f"a prompt of {n} tokens, got {value!r}"
        )
    return int(value) % n


def _attribute_keys(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    *,
    layer: Any,
    head: Any,
    query: Any,
    keys: list[Any] | None,
    n_keys: int = 1,
    top_pairs: int,
    attention_sink: bool,
) -> list[QKAttribution]:
    tokens = to_tokens(model, prompt)
    n = len(tokens)
    layer, head, query = _check(model, n, layer, head, query)
    if not _is_int(top_pairs) or top_pairs < 1:
        raise ValueError(f"top_pairs must be an integer >= 1, got {top_pairs!r}")
    causal = model.cfg.attention_dir == "causal"
    if keys is not None:
        keys = [_position("key", k, n) for k in keys]
        late = [k for k in keys if causal and k > query]
        if late:
            raise ValueError(
                f"key position {late[0]} is after the query position {query}: in a causal "
                f"model a query attends to keys 0..{query}"
            )
    q_name, k_name = qk_sites(model, layer)
    resolved = check_compatible(model, transcoders)
    sites = [resolve_hook(model, q_name), resolve_hook(model, k_name)]
    tr = trace(model, tokens, resolved, attention_sink=attention_sink, target_hooks=sites)
    attn = model.blocks[layer].attn
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    kv_head = head // (model.cfg.n_heads // n_kv)
    pattern = tr.frozen_pattern(layer)[head, query]  # (n,) clean attention weights
    if keys is None:
        allowed = torch.arange(n) <= query if causal else torch.ones(n, dtype=torch.bool)
        weights = torch.where(
            allowed, pattern.double().cpu(), torch.tensor(-1.0, dtype=torch.float64)
        )
        keys = torch.argsort(weights, descending=True, stable=True)[
            : min(n_keys, int(allowed.sum()))
        ].tolist()
    scale = float(attn.attn_scale)
    q_clean = tr.extra_values[q_name][query, head].double().cpu()
    Q = _component_rows(tr, q_name, layer, query, head)  # (d_head, n_sources) float64
    q_bias = q_clean - Q.sum(dim=1)
    k_rows = {}
    for key in keys:
        k_rows[key] = _component_rows(tr, k_name, layer, key, kv_head)
    sources = _source_table(model, tr)
    out = []
    for key in keys:
        K = k_rows[key]
        k_clean = tr.extra_values[k_name][key, kv_head].double().cpu()
        k_bias = k_clean - K.sum(dim=1)
        score = float(q_clean @ k_clean) / scale
        q_all = torch.cat([Q, q_bias[:, None]], dim=1)  # the bias as the last source
        k_all = torch.cat([K, k_bias[:, None]], dim=1)
        query_side = _side(sources, (k_clean @ q_all) / scale)
        key_side = _side(sources, (q_clean @ k_all) / scale)
        pairs = _top_pairs(q_all, k_all, scale, top_pairs, sources)
        out.append(
            QKAttribution(
                layer=layer,
                head=head,
                query=query,
                key=int(key),
                score=score,
                pattern=float(pattern[key]),
                pairs=pairs,
                query_side=query_side,
                key_side=key_side,
                residual=score - float(pairs["contribution"].to_numpy().sum()),
                metadata={
                    "prompt": prompt if isinstance(prompt, str) else None,
                    "tokens": tr.tokens.tolist(),
                    "hooks": {"query": q_name, "key": k_name},
                    "attn_scale": scale,
                    "kv_head": kv_head,
                    "attention_sink": attention_sink,
                    "top_pairs": top_pairs,
                },
            )
        )
    logger.info("QK attributions of L%dH%d at query %d: keys %s", layer, head, query, keys)
    return out


def _component_rows(tr: Trace, hook: str, layer: int, position: int, head: int) -> torch.Tensor:
    """``(d_head, n_sources)`` direct effects of every source on each component of one head's
    vector at ``hook`` (``(pos, heads, d_head)``) and ``position``."""
    shape = tuple(tr.extra_values[hook].shape[1:])
    n_heads, d_head = shape
    vectors = torch.zeros(d_head, n_heads * d_head)
    vectors[torch.arange(d_head), head * d_head + torch.arange(d_head)] = 1.0
    rows = tr.rows(
        torch.full((d_head,), layer), torch.full((d_head,), position), vectors, hook=hook
    )
    return rows.double().cpu()


def _source_table(model: HookedTransformer, tr: Trace) -> pd.DataFrame:
    """One row per source column of a trace, then the bias: node id, kind, layer, position,
    feature, token_id."""
    n_layers, n = tr.n_layers, tr.n_pos
    layer = [*tr.feature_layer.tolist(), *np.repeat(np.arange(n_layers), n).tolist()]
    position = [*tr.feature_pos.tolist(), *np.tile(np.arange(n), n_layers).tolist()]
    feature = [*tr.feature_idx.tolist(), *([None] * (n_layers * n))]
    kind = ["feature"] * tr.n_active + ["error"] * (n_layers * n)
    tokens = tr.tokens.tolist()
    ids = [
        node_id(k, layer=lay, position=p, feature=f)
        for k, lay, p, f in zip(kind, layer, position, feature, strict=True)
    ]
    ids += [node_id("token", position=p, token_id=t) for p, t in enumerate(tokens)]
    strings = token_strings(model, tokens)
    return pd.DataFrame(
        {
            "node": pd.array([*ids, BIAS], dtype="string"),
            "kind": pd.array([*kind, *(["token"] * n), "bias"], dtype="string"),
            "layer": pd.array([*layer, *([None] * n), None], dtype="Int64"),
            "position": pd.array([*position, *range(n), None], dtype="Int64"),
            "feature": pd.array([*feature, *([None] * n), None], dtype="Int64"),
            "token_id": pd.array([*([None] * len(kind)), *tokens, None], dtype="Int64"),
            "token": pd.array([*([None] * len(kind)), *strings, None], dtype="string"),
        }
    )


def _side(sources: pd.DataFrame, contribution: torch.Tensor) -> pd.DataFrame:
    values = contribution.numpy()
    keep = np.flatnonzero(values != 0)
    keep = keep[np.argsort(-np.abs(values[keep]), kind="stable")]
    table = sources.iloc[keep].reset_index(drop=True)
    return table.assign(contribution=values[keep])


def _top_pairs(
    q_all: torch.Tensor, k_all: torch.Tensor, scale: float, top: int, sources: pd.DataFrame
) -> pd.DataFrame:
    """The ``top`` largest ``|q_all[:, i] . k_all[:, j]| / scale`` pairs, blockwise.

    Columns are visited by decreasing norm; a block of query columns stops the search when even
    its largest norm times the largest key norm cannot beat the current ``top``-th pair, and only
    key columns that can are multiplied (Cauchy-Schwarz), so the work and memory follow the
    pairs that matter, never the whole matrix.
    """
    qn, kn = q_all.norm(dim=0), k_all.norm(dim=0)
    qi = torch.nonzero(qn > 0).flatten()
    ki = torch.nonzero(kn > 0).flatten()
    qi = qi[torch.argsort(qn[qi], descending=True, stable=True)]
    ki = ki[torch.argsort(kn[ki], descending=True, stable=True)]
    best_v = torch.empty(0, dtype=torch.float64)
    best_q = torch.empty(0, dtype=torch.long)
    best_k = torch.empty(0, dtype=torch.long)
    threshold = 0.0
    start = 0
    while start < len(qi) and len(ki):
        lead = float(qn[qi[start]])
        if len(best_v) == top and lead * float(kn[ki[0]]) <= threshold:
            break
        n_k = len(ki) if len(best_v) < top else int((kn[ki] * lead > threshold).sum())
        n_k = max(n_k, 1)
        width = max(1, min(len(qi) - start, _BLOCK // n_k))
        cols_q, cols_k = qi[start : start + width], ki[:n_k]
        vals = (q_all[:, cols_q].T @ k_all[:, cols_k]).flatten()  # (width * n_k,)
        take = min(top, len(vals))
        flat = torch.topk(vals.abs(), take).indices
        cand_v = torch.cat([best_v, vals[flat]])
        cand_q = torch.cat([best_q, cols_q[flat // n_k]])
        cand_k = torch.cat([best_k, cols_k[flat % n_k]])
        keep = torch.topk(cand_v.abs(), min(top, len(cand_v))).indices
        best_v, best_q, best_k = cand_v[keep], cand_q[keep], cand_k[keep]
        if len(best_v) == top:
            threshold = float(best_v.abs().min())
        start += width
    order = torch.argsort(best_v.abs(), descending=True, stable=True)
    best_v, best_q, best_k = best_v[order], best_q[order], best_k[order]
    cols = ["node", "kind", "layer", "position", "feature"]
    q_rows = sources.iloc[best_q.numpy()][cols].reset_index(drop=True).add_prefix("query_")
    k_rows = sources.iloc[best_k.numpy()][cols].reset_index(drop=True).add_prefix("key_")
    table = pd.concat([q_rows, k_rows], axis=1)
    return table.assign(contribution=(best_v / scale).numpy())


def attribute_attention_for_edge(
    model: HookedTransformer,
    prompt: Prompt,
    transcoders: TranscoderSet,
    graph: Any,
    *,
    source: int,
    target: int,
    n_heads: int = 3,
    top_pairs: int = 50,
) -> list[tuple[dict[str, Any], QKAttribution]]:
    """Why the heads that carry a graph edge attended where they did.

    The edge's head loadings (:func:`sae_circuits.head_loadings`) name the heads that deliver
    it to the target; for each of the ``n_heads`` largest by magnitude, the QK attribution at
    the target's position (the query) and the source's position (the key: the head's key on
    every one-head path; on longer paths its key may be elsewhere, see
    :func:`attribute_attention_keys`).

    Args:
        model, prompt, transcoders: As for the graph.
        graph: The attribution graph (pruned or not).
        source, target: Node indices of an edge of ``graph``.
        n_heads: How many of the carrying heads to explain.
        top_pairs: Pairs listed per head.

    Returns:
        ``(loading, qk)`` pairs, by decreasing |loading|: ``loading`` a row of the head loadings
        (``layer``, ``head``, ``loading``, ``share`` of the edge), ``qk`` its
        :class:`QKAttribution`. Edges carried by no head (same position) give an empty list.

    Raises:
        ValueError: Not an edge of the graph, a target that is not at a layer's MLP input or the
            unembedding (no query position), or ``n_heads < 1``.
    """
    if not _is_int(n_heads) or n_heads < 1:
        raise ValueError(f"n_heads must be an integer >= 1, got {n_heads!r}")
    edge = pd.DataFrame({"source": [int(source)], "target": [int(target)]})
    loads = head_loadings(model, prompt, transcoders, graph, edges=edge)
    is_head = (loads["part"] == "head").to_numpy()
    values = loads["loading"].to_numpy(dtype=np.float64)[is_head]
    layers = loads["layer"].to_numpy(dtype=np.int64, na_value=-1)[is_head]
    head_ids = loads["head"].to_numpy(dtype=np.int64, na_value=-1)[is_head]
    weights = loads["weight"].to_numpy(dtype=np.float64)[is_head]
    order = np.argsort(-np.abs(values), kind="stable")[:n_heads]
    nodes = graph.nodes
    query = int(nodes["position"].iloc[int(target)])
    key = int(nodes["position"].iloc[int(source)])
    sink = bool((graph.metadata.get("settings") or {}).get("attention_sink", True))
    out = []
    for i in order.tolist():
        qk = attribute_attention(
            model, prompt, transcoders, layer=int(layers[i]), head=int(head_ids[i]), query=query,
            key=key, top_pairs=top_pairs, attention_sink=sink,
        )  # fmt: skip
        loading = {
            "layer": int(layers[i]),
            "head": int(head_ids[i]),
            "loading": float(values[i]),
            "share": float(values[i] / weights[i]),
        }
        out.append((loading, qk))
    return out
