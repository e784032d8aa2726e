"""Sizes of a transcoder set, a config or a model, compared with messages naming both sides.

The size part of the fit check (:mod:`sae_circuits.transcoders._fit`), below the sets and configs
that report their own :class:`Sizes`.

Example:
    >>> check_sizes(transcoders.sizes(), model_sizes(model))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sizes", "check_sizes", "model_sizes"]


@dataclass(frozen=True)
class Sizes:
    """Layer count and widths of one side of a fit check, and how to name them in messages.

    Attributes:
        where: What the sizes belong to, e.g. ``"the transcoders"``, ``"the model 'gpt2'"``.
        n_layers: Number of layers.
        d_in: Width read at the input hooks (``None``: unknown, not checked).
        d_out: Width written at the output hooks (``None``: unknown).
        detail: Per field (``"n_layers"``, ``"d_in"``, ``"d_out"``), where the number comes from
            (e.g. the file it was read from), added to messages.
        width_name: How this side names its widths: ``"d_in"``/``"d_out"`` for transcoders,
            ``"d_model"`` for a model.
        verb: ``"has"``, or ``"have"`` for a plural ``where``.
    """

    where: str
    n_layers: int
    d_in: int | None
    d_out: int | None
    detail: Mapping[str, str] = field(default_factory=dict)
    width_name: str | None = None
    verb: str = "has"

    def describe(self, what: str) -> str:
        value = getattr(self, what)
        if what == "n_layers":
            return f"{value} layers"
        return f"{self.width_name or what} {value}"


def model_sizes(model: Any) -> Sizes:
    """The sizes a transcoder set must have to fit ``model``."""
    d_model = int(model.cfg.d_model)
    return Sizes(
        where=f"the model {model.cfg.model_name!r}",
        n_layers=int(model.cfg.n_layers),
        d_in=d_model,
        d_out=d_model,
        width_name="d_model",
    )


def check_sizes(have: Sizes, need: Sizes) -> None:
    """Raise a ``ValueError`` naming both sides if layer counts or known widths differ."""
    for what in ("n_layers", "d_in", "d_out"):
        a, b = getattr(have, what), getattr(need, what)
        if a is None or b is None or a == b:
            continue
        detail = have.detail.get(what, "")
        hint = "; attribution needs one transcoder per layer" if what == "n_layers" else ""
        raise ValueError(
            f"{have.where}{detail} {have.verb} {have.describe(what)} but {need.where} {need.verb} "
            f"{need.describe(what)}{hint}"
        )
