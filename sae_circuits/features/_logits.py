"""The direct logit effects of features' decoders: ``W_dec @ W_U`` with the final norm frozen.

A feature's decoder vector ``d`` (what it writes per unit activation) reaches the logits through
the final norm and the unembedding. With the norm's scale frozen (a positive number per position,
so it does not change the ranking), the effect is ``norm(d) @ W_U`` where ``norm`` is the norm's
linear part: centring across ``d_model`` for LayerNorm, then the norm's weight ``w``. The result
is demeaned over the vocabulary (a constant added to every logit changes no probability).

A cross-layer transcoder feature writes to several layers; every write reaches the residual
stream, so its effect here is that of the **sum** of its writes (all output layers).

Example:
    >>> top, bottom = logit_effects(model, transcoders, layer=2, n=10)
    >>> top.values.shape, top.indices.shape      # (F, 10), (F, 10)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformer_lens import HookedTransformer

from sae_circuits.transcoders import TranscoderSet

__all__ = ["LogitEffects", "logit_effects"]


class LogitEffects(NamedTuple):
    """The ``n`` largest and smallest effects per feature.

    Attributes:
        top: ``torch.return_types.topk``: ``values``/``indices`` ``(F, n)``, largest first.
        bottom: The same for the smallest (most negative first).
    """

    top: torch.return_types.topk
    bottom: torch.return_types.topk


@torch.no_grad()
def logit_effects(
    model: HookedTransformer,
    transcoders: TranscoderSet,
    layer: int,
    *,
    n: int = 10,
    chunk: int = 1024,
) -> LogitEffects:
    """Top and bottom demeaned logit effects of every feature of ``layer``.

    Args:
        model: The model (``W_U``, the final norm).
        transcoders: The transcoder set.
        layer: The features' layer.
        n: Tokens per side.
        chunk: Features per matrix product (bounds memory to ``chunk x d_vocab``).

    Returns:
        :class:`LogitEffects`.
    """
    w_u = model.W_U.detach()
    w_u = w_u - w_u.mean(1, keepdim=True)  # demeaned over the vocabulary
    norm_w = getattr(getattr(model, "ln_final", None), "w", None)
    n = min(n, w_u.shape[1])
    tops, bots = [], []
    f_all = transcoders.d_sae(layer)
    for start in range(0, f_all, chunk):
        feats = torch.arange(start, min(start + chunk, f_all), device=transcoders.device)
        d = sum(
            transcoders.decoder_vectors(layer, feats, out).float()
            for out in transcoders.output_layers(layer)
        )
        assert isinstance(d, torch.Tensor)
        d = d.to(w_u.device)
        if model.cfg.normalization_type in ("LN", "LNPre"):
            d = d - d.mean(-1, keepdim=True)
        if isinstance(norm_w, torch.Tensor):
            d = d * norm_w.detach().float()
        eff = d @ w_u.float()
        tops.append(eff.topk(n, dim=1))
        bots.append((-eff).topk(n, dim=1))
    top = torch.return_types.topk(
        (torch.cat([t.values for t in tops]).cpu(), torch.cat([t.indices for t in tops]).cpu())
    )
    bottom = torch.return_types.topk(
        (-torch.cat([t.values for t in bots]).cpu(), torch.cat([t.indices for t in bots]).cpu())
    )
    return LogitEffects(top, bottom)
