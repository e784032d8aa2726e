"""Steering from the viewer: set or scale features of the served graph and see what changes.

``sae-circuits serve OUT --model M --transcoders T`` gives the page a model. A steering request
(``POST /api/steer``, JSON) names features of the graph by node id, each with a ``value`` (set
the activation) or a ``scale`` (multiply the clean activation), and asks for the top logits
before and after (:func:`sae_circuits.intervene`, attention patterns and norm scales frozen or
not: ``freeze_attention``) and a short greedy continuation with and without the change
(:func:`sae_circuits.generate`, where attention is always live: generated tokens attend to the
changed prompt). The prompt is the graph's own.

Every request is checked before the model runs (:meth:`Steerer.parse`): a JSON object of known
fields, at most :attr:`SteeringLimits.max_features` features, node ids of feature nodes inside
the model's layers, the prompt's positions and the transcoders' widths, finite values and scales
within their ranges, a bounded number of new tokens. One run at a time (another is refused as
busy) and each within a time limit (:meth:`Steerer.run`: an answer after
:attr:`SteeringLimits.time_limit_s` at the latest; a run that takes longer is reported as such,
finishes in the background, and the next one waits for it).

Example:
    >>> steerer = Steerer(model, transcoders, prompt=graph.metadata["tokens"])
    >>> steerer.run({"features": [{"node_id": "2_17_7", "scale": 0.0}], "max_new_tokens": 8})
    {"top_logits": [...], "generation": {...}, "freeze_attention": True, "seconds": 0.4}
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sae_circuits.graph import parse_node_id

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from sae_circuits.transcoders import TranscoderSet

__all__ = [
    "DEFAULT_STEERING_LIMITS",
    "Steerer",
    "SteeringBusyError",
    "SteeringError",
    "SteeringLimits",
    "SteeringTimeoutError",
]

logger = logging.getLogger(__name__)

_FIELDS = ("features", "freeze_attention", "max_new_tokens", "top_k")
_FEATURE_FIELDS = ("node_id", "value", "scale")


class SteeringError(ValueError):
    """A steering request that is malformed or out of range (the message says what and why)."""


class SteeringBusyError(RuntimeError):
    """Another steering run is still going on."""


class SteeringTimeoutError(TimeoutError):
    """A steering run took longer than the time limit."""


@dataclass(frozen=True)
class SteeringLimits:
    """Bounds of a steering request.

    Attributes:
        max_features: Most features one request may change.
        max_abs_value: Largest ``|value|`` a feature may be set to.
        max_abs_scale: Largest ``|scale|`` a clean activation may be multiplied by.
        max_new_tokens: Most tokens a continuation may have (0: no generation).
        max_top_k: Most top logits asked for.
        time_limit_s: Seconds a request may take before it is answered as too slow.
    """

    max_features: int = 64
    max_abs_value: float = 1e4
    max_abs_scale: float = 100.0
    max_new_tokens: int = 32
    max_top_k: int = 20
    time_limit_s: float = 30.0


DEFAULT_STEERING_LIMITS = SteeringLimits()


@dataclass(frozen=True)
class _Request:
    features: tuple[tuple[int, int, int, str, float], ...]  # layer, position, feature, mode, x
    freeze_attention: bool
    max_new_tokens: int
    top_k: int


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any, what: str, bound: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SteeringError(f"{what} must be a number, got {type(v).__name__}")
    x = float(v)
    if not math.isfinite(x) or abs(x) > bound:
        raise SteeringError(f"{what} must be a finite number in [-{bound:g}, {bound:g}], got {v!r}")
    return x


class Steerer:
    """Runs validated steering requests on one prompt with one model and transcoder set.

    Args:
        model: The model (hooked only during a run, by :func:`sae_circuits.intervene` and
            :func:`sae_circuits.generate`).
        transcoders: Transcoders that fit ``model`` (checked here).
        prompt: The graph's prompt: token ids (``graph.metadata["tokens"]``) or text.
        limits: Request bounds and the time limit.

    Raises:
        ValueError: The transcoders do not fit the model, or the prompt does not.
    """

    def __init__(
        self,
        model: HookedTransformer,
        transcoders: TranscoderSet,
        *,
        prompt: Any,
        limits: SteeringLimits = DEFAULT_STEERING_LIMITS,
    ) -> None:
        from sae_circuits.core.prompts import to_tokens
        from sae_circuits.transcoders import check_compatible

        self.model = model
        self.transcoders = check_compatible(model, transcoders).transcoders
        self.tokens = to_tokens(model, prompt)
        self.limits = limits
        self.n_layers = self.transcoders.n_layers
        self.n_positions = len(self.tokens)
        room = int(model.cfg.n_ctx) - self.n_positions
        self._max_new = max(0, min(limits.max_new_tokens, room))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steer")
        self._busy = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What the page shows: the limits, the prompt's length, and that steering is on."""
        limits = asdict(self.limits)
        limits["max_new_tokens"] = self._max_new
        return {
            "enabled": True,
            "reason": None,
            "n_layers": self.n_layers,
            "n_positions": self.n_positions,
            "limits": limits,
        }

    def parse(self, body: Any) -> _Request:
        """Check a request (a decoded JSON value) against the schema and the limits.

        Raises:
            SteeringError: The first problem found, naming the field and the valid range.
        """
        lim = self.limits
        if not isinstance(body, dict):
            raise SteeringError(
                f"the request must be a JSON object with {', '.join(_FIELDS)}; "
                f"got {type(body).__name__}"
            )
        unknown = sorted(str(k)[:40] for k in body if k not in _FIELDS)
        if unknown:
            raise SteeringError(f"unknown fields {unknown}; valid: {', '.join(_FIELDS)}")
        feats = body.get("features")
        if not isinstance(feats, list) or not feats:
            raise SteeringError("features must be a non-empty list of {node_id, value | scale}")
        if len(feats) > lim.max_features:
            raise SteeringError(f"{len(feats)} features; at most {lim.max_features} per request")
        seen: set[tuple[int, int, int]] = set()
        out = []
        for i, f in enumerate(feats):
            where = f"features[{i}]"
            if not isinstance(f, dict):
                raise SteeringError(f"{where} must be an object {{node_id, value | scale}}")
            bad = sorted(str(k)[:40] for k in f if k not in _FEATURE_FIELDS)
            if bad:
                raise SteeringError(f"{where}: unknown fields {bad}; valid: node_id, value, scale")
            try:
                nid = parse_node_id(
                    f.get("node_id"),
                    n_layers=self.n_layers,
                    n_positions=self.n_positions,
                    where=f"{where}.node_id",
                )
            except ValueError as e:
                raise SteeringError(str(e)) from None
            if nid.kind != "feature" or nid.layer is None or nid.feature is None:
                raise SteeringError(
                    f"{where}.node_id {f.get('node_id')!r} is a {nid.kind} node; only features "
                    "(layer_feature_position) can be steered"
                )
            d_sae = int(self.transcoders.d_sae(nid.layer))
            if nid.feature >= d_sae:
                raise SteeringError(
                    f"{where}.node_id: feature {nid.feature} is beyond layer {nid.layer}'s "
                    f"{d_sae} features"
                )
            key = (nid.layer, nid.position, nid.feature)
            if key in seen:
                raise SteeringError(f"{where}: {f['node_id']!r} is given twice")
            seen.add(key)
            has_value, has_scale = "value" in f, "scale" in f
            if has_value == has_scale:
                raise SteeringError(
                    f"{where} needs exactly one of value (set) and scale (multiply)"
                )
            if has_value:
                x = _number(f["value"], f"{where}.value", lim.max_abs_value)
                out.append((*key, "value", x))
            else:
                x = _number(f["scale"], f"{where}.scale", lim.max_abs_scale)
                out.append((*key, "scale", x))
        freeze = body.get("freeze_attention", True)
        if not isinstance(freeze, bool):
            raise SteeringError("freeze_attention must be true or false")
        new = body.get("max_new_tokens", min(8, self._max_new))
        if not _is_int(new) or not 0 <= new <= self._max_new:
            raise SteeringError(f"max_new_tokens must be a whole number in [0, {self._max_new}]")
        top_k = body.get("top_k", 10)
        if not _is_int(top_k) or not 1 <= top_k <= lim.max_top_k:
            raise SteeringError(f"top_k must be a whole number in [1, {lim.max_top_k}]")
        return _Request(tuple(out), freeze, int(new), int(top_k))

    def _compute(self, req: _Request) -> dict[str, Any]:
        import pandas as pd

        from sae_circuits.interventions import generate, intervene

        start = time.perf_counter()
        table = pd.DataFrame(
            {
                "layer": [f[0] for f in req.features],
                "position": [f[1] for f in req.features],
                "feature": [f[2] for f in req.features],
                "value": [f[4] if f[3] == "value" else None for f in req.features],
                "scale": [f[4] if f[3] == "scale" else None for f in req.features],
            }
        )
        result = intervene(
            self.model, self.tokens, self.transcoders, table, freeze_attention=req.freeze_attention
        )
        top = result.top_logits(req.top_k)
        rows = [
            {
                "rank": int(r["rank"]),
                "before_token": str(r["before_token"]),
                "before_probability": float(r["before_probability"]),
                "after_token": str(r["after_token"]),
                "after_probability": float(r["after_probability"]),
            }
            for r in top.to_dict("records")
        ]
        generation = None
        if req.max_new_tokens > 0:
            gen = generate(
                self.model, self.tokens, self.transcoders, table, max_new_tokens=req.max_new_tokens
            )
            n = len(gen.prompt_tokens)
            generation = {
                "clean": gen.clean_completion,
                "steered": gen.completion,
                "clean_tokens": [int(t) for t in gen.clean_tokens[n:].tolist()],
                "steered_tokens": [int(t) for t in gen.tokens[n:].tolist()],
                "max_new_tokens": req.max_new_tokens,
            }
        return {
            "top_logits": rows,
            "generation": generation,
            "freeze_attention": req.freeze_attention,
            "n_features": len(req.features),
            "seconds": time.perf_counter() - start,
        }

    def run(self, body: Any) -> dict[str, Any]:
        """Check and run one request within the time limit.

        Returns:
            ``{"top_logits": [{rank, before_token, before_probability, after_token,
            after_probability}], "generation": {"clean", "steered" (text, ``None`` without a
            tokenizer), "clean_tokens", "steered_tokens" (ids), "max_new_tokens"} or None,
            "freeze_attention", "n_features", "seconds"}``.

        Raises:
            SteeringError: A bad request (nothing runs), or one the interventions refuse.
            SteeringBusyError: Another run is going on.
            SteeringTimeoutError: The run took longer than the time limit (it finishes in the
                background; until then, new runs are refused as busy).
        """
        req = self.parse(body)
        if not self._busy.acquire(blocking=False):
            raise SteeringBusyError("another steering run is still going on; try again shortly")
        try:
            future: Future[dict[str, Any]] = self._pool.submit(self._compute, req)
        except BaseException:
            self._busy.release()
            raise
        future.add_done_callback(lambda _: self._busy.release())
        try:
            return future.result(timeout=self.limits.time_limit_s)
        except FutureTimeout:
            raise SteeringTimeoutError(
                f"the steering run took longer than {self.limits.time_limit_s:g} s; it finishes "
                "in the background (new runs wait for it): ask for fewer new tokens or features"
            ) from None
        except ValueError as e:  # what intervene / generate refuse
            raise SteeringError(str(e)) from e

    def close(self) -> None:
        """Stop the worker (a run in progress finishes first)."""
        self._pool.shutdown(wait=True)
