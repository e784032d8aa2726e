"""The streaming statistics of one layer's features: top-k contexts, samples, histogram, density.

Memory is ``(k + samples) x features x context_len`` (the kept contexts) plus ``bins x
features``, whatever the corpus size. Every update is a deterministic function of the windows
seen, in order, so a run resumed from a checkpoint (:meth:`LayerStats.state_dict`) ends exactly
where an uninterrupted one does.

- **Top-k**: per feature the ``k`` windows with the highest maximum activation, with the window's
  tokens and the feature's activation at every token.
- **Samples**: per feature a uniform sample of the windows where it is active (a bottom-k sketch:
  the windows with the smallest hash of ``(window index, feature)``, independent of batching),
  from which the quantile bands are drawn at the end.
- **Histogram**: ``bins`` equal bins over ``[0, hi)`` with ``hi`` the smallest power of two above
  the feature's maximum; when a larger activation arrives, bins merge in pairs (exact, since
  ``hi`` only doubles), so the result does not depend on the order.
- **Density**: active tokens / tokens seen (padding and a leading BOS left out).

Example:
    >>> stats = LayerStats(n_features=512, k=10, samples=10, context_len=32)
    >>> stats.update(acts, tokens, mask, window_ids)   # (b, n, F), (b, n), (b, n), (b,)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LayerStats"]

_EMPTY = float("-inf")


@dataclass
class _Kept:
    """Per feature, ``n`` kept windows ranked by ``key`` (highest first once sorted)."""

    key: torch.Tensor  # (n, F) ranking key (-inf: empty slot)
    value: torch.Tensor  # (n, F) the window's maximum activation
    window: torch.Tensor  # (n, F) int64 window index (-1: empty)
    tokens: torch.Tensor  # (n, F, C) int64 token ids (-1: padding)
    acts: torch.Tensor  # (n, F, C) float32 activations at each token

    @classmethod
    def empty(cls, n: int, f: int, c: int) -> _Kept:
        return cls(
            key=torch.full((n, f), _EMPTY),
            value=torch.zeros(n, f),
            window=torch.full((n, f), -1, dtype=torch.long),
            tokens=torch.full((n, f, c), -1, dtype=torch.long),
            acts=torch.zeros(n, f, c),
        )

    def merge(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        window: torch.Tensor,
        tokens: torch.Tensor,
        acts: torch.Tensor,
    ) -> None:
        """Keep the best of the kept and ``b`` new windows: ``key``/``value`` ``(b, F)``,
        ``window`` ``(b,)``, ``tokens`` ``(b, C)``, ``acts`` ``(b, C, F)``."""
        n = self.key.shape[0]
        better = (key > self.key[-1:]).any(0) if n else torch.zeros(key.shape[1], dtype=torch.bool)
        cols = better.nonzero().flatten()
        if cols.numel() == 0:
            return
        b = key.shape[0]
        all_key = torch.cat([self.key[:, cols], key[:, cols]])
        order = torch.sort(all_key, dim=0, descending=True, stable=True).indices[:n]  # (n, f')
        old = order < n
        new = (order - n).clamp(min=0)
        idx = order.clamp(max=n - 1)

        def pick(kept: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            k = kept[:, cols].gather(0, _expand(idx, kept))
            f = fresh.gather(0, _expand(new, fresh))
            return torch.where(_expand(old, k), k, f)

        self.key[:, cols] = all_key.gather(0, order)
        self.value[:, cols] = pick(self.value, value[:, cols])
        self.window[:, cols] = torch.where(old, self.window[:, cols].gather(0, idx), window[new])
        ctx = tokens.shape[1]
        fresh_tokens = tokens[:, None, :].expand(b, cols.numel(), ctx)
        self.tokens[:, cols] = pick(self.tokens, fresh_tokens)
        self.acts[:, cols] = pick(self.acts, acts[:, :, cols].transpose(1, 2))


def _expand(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``index`` ``(n, f)`` broadcast to ``like``'s trailing dims (``(n, f, C)``)."""
    if like.ndim == 2:
        return index
    return index[:, :, None].expand(index.shape[0], index.shape[1], like.shape[2])


def _priority(window: torch.Tensor, n_features: int) -> torch.Tensor:
    """``(b, F)`` a deterministic pseudo-random number in ``[0, 1)`` per (window, feature)."""
    w = window[:, None].to(torch.int64)
    f = torch.arange(n_features, dtype=torch.int64)[None]
    h = (w * 0x9E3779B1 + f * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h = (h ^ (h >> 15)) * 0x2C1B3C6D & 0xFFFFFFFF
    h = (h ^ (h >> 12)) * 0x297A2D39 & 0xFFFFFFFF
    h = h ^ (h >> 15)
    return h.to(torch.float64) / 2.0**32


class LayerStats:
    """Streaming statistics of one layer's ``n_features`` features.

    Args:
        n_features: Features of the layer (``F``).
        k: Top activating windows kept per feature.
        samples: Windows sampled per feature for the quantile bands.
        context_len: Longest window (``C``).
        bins: Histogram bins (even).
    """

    def __init__(
        self, n_features: int, *, k: int, samples: int, context_len: int, bins: int = 32
    ) -> None:
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.n_features, self.context_len, self.bins = n_features, context_len, bins
        self.n_tokens = 0
        self.active = torch.zeros(n_features, dtype=torch.long)
        self.total = torch.zeros(n_features, dtype=torch.float64)
        self.max = torch.zeros(n_features)
        self.hi = torch.zeros(n_features)  # histogram range: a power of two above max, 0: none
        self.hist = torch.zeros(n_features, bins, dtype=torch.long)
        self.top = _Kept.empty(k, n_features, context_len)
        self.sample = _Kept.empty(samples, n_features, context_len)

    def update(
        self, acts: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, window: torch.Tensor
    ) -> None:
        """Add a batch of ``b`` windows.

        Args:
            acts: ``(b, n, F)`` feature activations (``n <= C``).
            tokens: ``(b, n)`` token ids (``-1`` at padding).
            mask: ``(b, n)`` the positions that count (not padding, not a leading BOS).
            window: ``(b,)`` the windows' indices in the corpus.
        """
        n, f = acts.shape[1:]
        a = acts.detach().float().cpu() * mask[:, :, None]
        self.n_tokens += int(mask.sum())
        self.active += (a > 0).sum((0, 1))
        self.total += a.sum((0, 1), dtype=torch.float64)
        self._histogram(a)
        wmax = a.amax(1)  # (b, F)
        pad = self.context_len - n
        toks = torch.nn.functional.pad(tokens.cpu(), (0, pad), value=-1)
        a_pad = torch.nn.functional.pad(a, (0, 0, 0, pad))
        key = torch.where(wmax > 0, wmax, torch.full_like(wmax, _EMPTY))
        self.top.merge(key, wmax, window, toks, a_pad)
        prio = -_priority(window, f).float()
        skey = torch.where(wmax > 0, prio, torch.full_like(prio, _EMPTY))
        self.sample.merge(skey, wmax, window, toks, a_pad)

    def _histogram(self, a: torch.Tensor) -> None:
        m = a.amax((0, 1))
        self.max = torch.maximum(self.max, m)
        new_hi = torch.where(
            self.max > 0, torch.exp2(torch.floor(torch.log2(self.max)) + 1), self.hi
        )
        grow = (new_hi > self.hi) & (self.hi > 0)
        for factor in torch.unique((new_hi[grow] / self.hi[grow]).round().long()).tolist():
            rows = (grow & ((new_hi / self.hi.clamp(min=1e-30)).round().long() == factor)).nonzero()
            rows = rows.flatten()
            r = min(int(factor), self.bins)
            merged = self.hist[rows].view(len(rows), self.bins // r, r).sum(-1)
            self.hist[rows] = 0
            self.hist[rows, : merged.shape[1]] = merged
        self.hi = new_hi
        pos = (a > 0).nonzero()
        if pos.numel():
            feat = pos[:, 2]
            v = a[pos[:, 0], pos[:, 1], feat]
            idx = torch.floor(v * self.bins / self.hi[feat]).long().clamp(0, self.bins - 1)
            self.hist.index_put_((feat, idx), torch.ones_like(idx), accumulate=True)

    def state_dict(self) -> dict[str, object]:
        """Everything :meth:`load_state_dict` needs (CPU tensors)."""
        out: dict[str, object] = {
            "n_tokens": self.n_tokens,
            "active": self.active,
            "total": self.total,
            "max": self.max,
            "hi": self.hi,
            "hist": self.hist,
        }
        for name in ("top", "sample"):
            kept: _Kept = getattr(self, name)
            for field in ("key", "value", "window", "tokens", "acts"):
                out[f"{name}.{field}"] = getattr(kept, field)
        return out

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` (shapes checked)."""
        self.n_tokens = int(state["n_tokens"])  # type: ignore[arg-type]
        for name in ("active", "total", "max", "hi", "hist"):
            self._set(self, name, state[name])
        for name in ("top", "sample"):
            kept = getattr(self, name)
            for field in ("key", "value", "window", "tokens", "acts"):
                self._set(kept, field, state[f"{name}.{field}"])

    @staticmethod
    def _set(obj: object, name: str, value: object) -> None:
        old = getattr(obj, name)
        if not isinstance(value, torch.Tensor) or value.shape != old.shape:
            raise ValueError(
                f"checkpoint field {name!r} does not fit (expected {tuple(old.shape)})"
            )
        setattr(obj, name, value.to(old.dtype))
