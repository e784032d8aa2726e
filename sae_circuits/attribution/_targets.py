"""Attribution targets: the quantities whose direct causes the graph's top rows give.

By default a graph explains the salient logits at the last position. With ``targets=`` it
explains what the researcher asks for, each a linear read-out of one activation at one position
of the frozen replacement model:

* a **logit** (a token id or a one-token string): the demeaned, pre-softcap logit, read where the
  unembedding reads (after the final norm, its scale frozen), direction
  ``W_U[:, t] - mean_v W_U[:, v]``;
* a **logit difference** :meth:`Target.logit_diff` ``(a, b)``: direction ``W_U[:, a] - W_U[:, b]``
  there (the row is exactly the difference of the two logit rows);
* any **direction** :class:`Target` ``(label, direction)``: ``direction . x`` where ``x`` is the
  unembedding's input (``hook=None``, ``direction`` of ``d_model``), or the activation at
  ``hook=`` (any live hook inside a block, ``direction`` of that hook's size per position: e.g.
  ``blocks.2.hook_resid_mid`` ``(d_model,)``, ``blocks.2.attn.hook_q`` ``(n_heads, d_head)``).

Target nodes come after the token nodes, in the order given; a logit has node kind ``"logit"``,
the others ``"target"``. Each has a **weight** that seeds influence for pruning and scores: a
logit's probability at its position by default (as the reference), a custom target's ``1.0``,
or ``weight=`` (and :meth:`AttributionGraph.with_target_weights` later).

Example:
    >>> graph = sc.attribute(model, prompt, transcoders,
    ...                      targets=[" Austin", sc.Target.logit_diff(" Austin", " Dallas")])
    >>> graph.targets           # label, kind, node, position, token_id, hook, value, weight
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.hooks import HookSite, resolve_hook
from sae_circuits.core.prompts import single_token_id
from sae_circuits.replacement_model import FROZEN_SUFFIXES
from sae_circuits.transcoders import ResolvedTranscoders

__all__ = ["ResolvedTarget", "Target", "TargetKind", "TargetReader", "resolve_targets"]

TargetKind = Literal["logit", "logit_diff", "direction"]


@dataclass(frozen=True, eq=False)
class Target:
    """One attribution target (see the module docstring).

    Attributes:
        label: Shown in tables, the viewer and Neuronpedia exports.
        direction: The read-out direction (``None`` for logits and logit differences, whose
            directions come from the model's unembedding).
        position: Token position (negative counts from the end; ``-1``: the last token).
        hook: ``None``: the unembedding's input; else a hook name inside a block.
        weight: Seed of influence for pruning and scores (``None``: the default, see module).
        tokens: A logit's token, or a logit difference's two tokens (ids or one-token strings).
    """

    label: str
    direction: Any = None
    position: int = field(default=-1, kw_only=True)
    hook: str | None = field(default=None, kw_only=True)
    weight: float | None = field(default=None, kw_only=True)
    tokens: tuple[int | str, ...] = field(default=(), kw_only=True)

    @classmethod
    def logit(
        cls,
        token: int | str,
        *,
        position: int = -1,
        weight: float | None = None,
        label: str | None = None,
    ) -> Target:
        """The demeaned, pre-softcap logit of ``token`` (an id or a one-token string)."""
        return cls(
            label if label is not None else str(token),
            position=position,
            weight=weight,
            tokens=(token,),
        )

    @classmethod
    def logit_diff(
        cls,
        a: int | str,
        b: int | str,
        *,
        position: int = -1,
        weight: float | None = None,
        label: str | None = None,
    ) -> Target:
        """``logit[a] - logit[b]`` (pre-softcap): the direction ``W_U[:, a] - W_U[:, b]``."""
        return cls(
            label if label is not None else f"logit({a}) - logit({b})",
            position=position,
            weight=weight,
            tokens=(a, b),
        )

    @property
    def kind(self) -> TargetKind:
        if len(self.tokens) == 1:
            return "logit"
        if len(self.tokens) == 2:
            return "logit_diff"
        return "direction"


@dataclass(frozen=True, eq=False)
class ResolvedTarget:
    """A target checked against a model and a prompt.

    Attributes:
        label, kind, weight: As given (``weight`` ``None``: the default).
        node_kind: ``"logit"`` or ``"target"``.
        position: Non-negative position.
        token_ids: A logit's id, a logit difference's two ids, else ``()``.
        site: Where it reads: ``None`` for the unembedding's input, else the hook.
        layer: The block the site is in (``n_layers`` for the unembedding's input).
        reads_mlp_input: The site is the layer's transcoder input (a feature-like target).
        direction: ``(numel,)`` float64 custom direction (``None`` for logit kinds).
    """

    label: str
    kind: TargetKind
    node_kind: Literal["logit", "target"]
    position: int
    token_ids: tuple[int, ...]
    site: HookSite | None
    layer: int
    reads_mlp_input: bool
    direction: torch.Tensor | None
    weight: float | None

    @property
    def hook(self) -> str | None:
        return None if self.site is None else self.site.name

    def describe(self) -> dict[str, Any]:
        """As JSON-able metadata (``graph.metadata["targets"]``), direction included."""
        return {
            "kind": self.kind,
            "position": self.position,
            "token_ids": list(self.token_ids),
            "hook": self.hook,
            "direction": None if self.direction is None else self.direction.tolist(),
        }


class TargetReader:
    """What a target reads, from the activation at its site: the one formula (float64).

    For a logit ``t``: ``x . (W_U[:, t] - mean_v W_U[:, v]) + b_U[t] - mean_v b_U[v]``, the
    demeaned pre-softcap logit; for a logit difference ``(a, b)``: ``x . (W_U[:, a] - W_U[:, b])
    + b_U[a] - b_U[b]``; for a direction ``v``: ``x . v`` (``x`` flattened).

    Args:
        model: The model (its unembedding).
    """

    def __init__(self, model: HookedTransformer) -> None:
        self.w_u = model.W_U.detach()
        b_u = getattr(model, "b_U", None)
        self.b_u = torch.zeros(self.w_u.shape[1]) if b_u is None else b_u.detach()
        self._mean: tuple[torch.Tensor, torch.Tensor] | None = None

    #: Vocabulary columns cast to float64 at a time: a float64 copy of a 262k-token ``W_U``
    #: would take 1.3 GB of working memory (``2 * d_vocab * d_model * 4`` bytes more than it);
    #: a block is 10 MB at ``d_model`` 640 (Gemma 3 270M; 16,384 columns took 84 MB per block,
    #: and its peak in a ``max_feature_nodes=1024`` graph was 130 MB higher, for no gain in time).
    _COLUMNS = 2048

    def _blocks(self) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(columns, (d_model, c) float64 block of W_U)`` over the vocabulary, in order."""
        for i in range(0, self.w_u.shape[1], self._COLUMNS):
            cols = slice(i, i + self._COLUMNS)
            yield cols, self.w_u[:, cols].double()

    def _means(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mean is None:
            total = torch.zeros(self.w_u.shape[0], dtype=torch.float64, device=self.w_u.device)
            for _, block in self._blocks():
                total += block.sum(1)
            w_mean = (total / self.w_u.shape[1]).cpu()
            self._mean = (w_mean, self.b_u.double().mean().cpu())
        return self._mean

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(d_vocab,)`` float64 pre-softcap logits of ``x`` (the unembedding's input).

        Computed a block of the vocabulary at a time, without a float64 copy of ``W_U``.
        """
        x = x.detach().to(self.w_u.device, torch.float64).reshape(-1)
        out = torch.empty(self.w_u.shape[1], dtype=torch.float64, device=self.w_u.device)
        for cols, block in self._blocks():
            out[cols] = x @ block
        return out + self.b_u.to(out.device, torch.float64)

    def value(self, target: dict[str, Any], x: torch.Tensor) -> float:
        """The target's value given ``x``, the activation at its site and position.

        Args:
            target: A target as :meth:`ResolvedTarget.describe` gives it.
            x: ``(d_model,)`` the unembedding's input, or the hook's activation at one position.
        """
        x = x.detach().double().cpu().reshape(-1)
        kind, ids = target["kind"], target["token_ids"]
        if kind == "logit":
            w_mean, b_mean = self._means()
            (t,) = ids
            col = self.w_u[:, t].double().cpu() - w_mean
            return float(x @ col + self.b_u[t].double().cpu() - b_mean)
        if kind == "logit_diff":
            a, b = ids
            col = (self.w_u[:, a].double() - self.w_u[:, b].double()).cpu()
            return float(x @ col + (self.b_u[a].double() - self.b_u[b].double()).cpu())
        direction = torch.as_tensor(target["direction"], dtype=torch.float64)
        return float(x @ direction)


def resolve_targets(
    model: HookedTransformer,
    targets: Sequence[Any],
    *,
    n_pos: int,
    resolved: ResolvedTranscoders,
) -> list[ResolvedTarget]:
    """Check ``attribute(targets=...)`` against the model and prompt.

    Args:
        model: The model (tokenizer, vocabulary, hooks, ``d_model``).
        targets: A non-empty list of token ids, one-token strings and :class:`Target` objects.
        n_pos: The prompt's length.
        resolved: The checked transcoders (their input hooks).

    Returns:
        One :class:`ResolvedTarget` per item, in order.

    Raises:
        TypeError: ``targets`` is not a list, or an item is of an unsupported type.
        ValueError: An empty list, a string that is not one token, an id outside the
            vocabulary, a position out of range, an unknown or frozen hook, a direction of the
            wrong size or not finite, or a bad weight (the message names the item).
    """
    if isinstance(targets, torch.Tensor | np.ndarray):
        targets = targets.tolist()
    if isinstance(targets, str | bytes | Target) or not isinstance(targets, Sequence):
        raise TypeError(
            "targets must be None (the salient logits) or a list of token ids, one-token "
            f"strings and sae_circuits.Target objects, got {type(targets).__name__} {targets!r:.60}"
        )
    if len(targets) == 0:
        raise ValueError("targets is empty: pass None for the salient logits, or at least one")
    out = []
    for i, item in enumerate(targets):
        try:
            out.append(_resolve_one(model, item, n_pos=n_pos, resolved=resolved))
        except (TypeError, ValueError) as err:
            raise type(err)(f"targets[{i}]: {err}") from None
    return out


def _resolve_one(
    model: HookedTransformer, item: Any, *, n_pos: int, resolved: ResolvedTranscoders
) -> ResolvedTarget:
    if isinstance(item, str) or (isinstance(item, int | np.integer) and not isinstance(item, bool)):
        item = Target.logit(item if isinstance(item, str) else int(item))
    if not isinstance(item, Target):
        raise TypeError(
            f"unsupported target {type(item).__name__} {item!r:.60}; expected a token id, a "
            "one-token string or an sae_circuits.Target"
        )
    if not isinstance(item.label, str) or not item.label:
        raise ValueError(f"a target's label must be a non-empty string, got {item.label!r:.60}")
    position = _position(item.position, n_pos)
    weight = _weight(item.weight)
    tokenizer = getattr(model, "tokenizer", None)
    d_vocab = model.cfg.d_vocab
    ids = tuple(single_token_id(tokenizer, t, d_vocab=d_vocab) for t in item.tokens)
    n_layers = model.cfg.n_layers
    kind = item.kind
    if kind != "direction":
        if item.direction is not None or item.hook is not None:
            raise ValueError(
                f"{kind} target {item.label!r}: its direction comes from the unembedding; "
                "it takes no direction= or hook="
            )
        if kind == "logit_diff" and ids[0] == ids[1]:
            raise ValueError(f"logit difference {item.label!r} of a token with itself is zero")
        return ResolvedTarget(
            label=item.label,
            kind=kind,
            node_kind="logit" if kind == "logit" else "target",
            position=position,
            token_ids=ids,
            site=None,
            layer=n_layers,
            reads_mlp_input=False,
            direction=None,
            weight=weight,
        )
    direction = _direction(item.direction, item.label)
    site, layer, reads_mlp_input = None, n_layers, False
    if item.hook is not None:
        site, layer, reads_mlp_input = _site(model, item.hook, resolved)
    if site is None or reads_mlp_input:
        width = model.cfg.d_model if site is None else resolved.transcoders.d_in
        if direction.numel() != width:
            where = "the unembedding's input" if site is None else f"{site.name}"
            raise ValueError(
                f"target {item.label!r}: its direction has {direction.numel()} entries "
                f"(shape {tuple(direction.shape)}), but {where} has {width} per position"
            )
    return ResolvedTarget(
        label=item.label,
        kind="direction",
        node_kind="target",
        position=position,
        token_ids=(),
        site=site,
        layer=layer,
        reads_mlp_input=reads_mlp_input,
        direction=direction.reshape(-1),
        weight=weight,
    )


def _position(position: Any, n_pos: int) -> int:
    if not isinstance(position, int | np.integer) or isinstance(position, bool):
        raise TypeError(f"a target's position must be an integer, got {position!r:.60}")
    if not -n_pos <= position < n_pos:
        raise ValueError(
            f"position {int(position)} is out of range for a prompt of {n_pos} tokens; valid "
            f"positions are 0..{n_pos - 1} (or -{n_pos}..-1 from the end)"
        )
    return int(position) % n_pos


def _weight(weight: Any) -> float | None:
    if weight is None:
        return None
    if not isinstance(weight, int | float | np.floating | np.integer) or isinstance(weight, bool):
        raise TypeError(f"a target's weight must be a number, got {weight!r:.60}")
    if not math.isfinite(float(weight)) or weight < 0:
        raise ValueError(f"a target's weight must be finite and >= 0, got {weight!r}")
    return float(weight)


def _direction(direction: Any, label: str) -> torch.Tensor:
    if direction is None:
        raise ValueError(
            f"target {label!r} has no direction; pass Target(label, direction) or use "
            "Target.logit / Target.logit_diff"
        )
    try:
        vec = torch.as_tensor(
            direction.detach().cpu() if isinstance(direction, torch.Tensor) else direction,
            dtype=torch.float64,
        )
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"target {label!r}: the direction must be a tensor or array of numbers ({err})"
        ) from None
    if vec.ndim == 0 or vec.numel() == 0:
        raise ValueError(f"target {label!r}: the direction is empty or a scalar")
    if not torch.isfinite(vec).all():
        raise ValueError(f"target {label!r}: the direction holds non-finite values (nan or inf)")
    if not (vec != 0).any():
        raise ValueError(f"target {label!r}: the direction is all zeros")
    return vec


#: Hooks inside a block that the frozen replacement model does not compute from its sources.
_FROZEN_TARGETS = (*FROZEN_SUFFIXES, "hook_attn_scores")


def _site(
    model: HookedTransformer, hook: Any, resolved: ResolvedTranscoders
) -> tuple[HookSite, int, bool]:
    if not isinstance(hook, str):
        raise TypeError(f"hook must be a hook name (str) or None, got {hook!r:.60}")
    site = resolve_hook(model, hook, role="target hook")
    layer = site.layer
    if layer is None:
        raise ValueError(
            f"target hook {hook!r} is outside the blocks; a target reads inside a block "
            "(blocks.{layer}.<hook>), or, with hook=None, where the unembedding reads"
        )
    suffix = hook.split(".", 2)[2]
    if hook.endswith(_FROZEN_TARGETS):
        raise ValueError(
            f"target hook {hook!r} is frozen in the local replacement model (attention patterns "
            "and norm scales keep their clean values), so no source has a direct effect on it"
        )
    if hook == resolved.inputs[layer].name:
        return site, layer, True
    if suffix.startswith("mlp.") and hook != resolved.outputs[layer].name:
        raise ValueError(
            f"target hook {hook!r} is inside the MLP, which the replacement model replaces by "
            f"its transcoder; read its input {resolved.inputs[layer].name!r} or output "
            f"{resolved.outputs[layer].name!r} instead"
        )
    return site, layer, False
