"""What the local replacement model computes at an MLP: the one implementation.

At layer ``l``, with ``x_l`` the activation at the transcoder's input hook, the replacement MLP
writes at its output hook

    out_l = decode_l({a_s : s writes to l}) + skip_l(x_l) + e_l

where ``a_s = activation_s(encode_s(x_s))`` are the feature activations of the layers whose
features write to ``l`` (``l`` alone for per-layer transcoders, every ``s <= l`` for a
cross-layer transcoder), ``decode`` includes the decoder bias, ``skip_l`` is a skip transcoder's
linear path (zero without one) and ``e_l`` is the *error term*.

* With the error computed from the real MLP, ``e_l = mlp_out_l - decode - skip``, the replacement
  model is the original model (the clean pass, :func:`~sae_circuits.replacement`).
* With ``e_l`` frozen at its clean value, the MLP responds to a change only through the features
  and the skip path: interventions change features, attribution perturbs sources and takes the
  linear effect (the features themselves frozen too, so only the skip path stays live).

:class:`ReplacementSemantics` holds this formula; every user (the ``replacement()`` context
manager, the clean pass, attribution's per-block replay, interventions, generation) calls it.
:meth:`ReplacementSemantics.frozen_output` computes ``out_l`` with the clean error in the form
``clean_out + (decode now - decode clean) + (skip now - skip clean)``, which passes clean values
through bit for bit where nothing changed.

Example:
    >>> sem = ReplacementSemantics(transcoders)
    >>> acts = {0: sem.features(0, x0)}
    >>> recon = sem.reconstruction(0, x0, acts)          # decode + skip
    >>> sem.output(recon, sem.error(recon, mlp_out))     # == mlp_out
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from sae_circuits.transcoders import TranscoderSet

if TYPE_CHECKING:
    from sae_circuits.replacement_model._clean import CleanRun

__all__ = ["ReplacementSemantics"]


class ReplacementSemantics:
    """The replacement MLPs of a transcoder set.

    Shapes: ``n`` positions, ``F`` features of a layer, ``d_in`` / ``d_out`` the widths read and
    written; a leading batch dimension is allowed wherever ``n`` is.

    Args:
        transcoders: The set (its device and dtype are where features are computed).
    """

    def __init__(self, transcoders: TranscoderSet) -> None:
        self.transcoders = transcoders

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``(n, d_in)`` input -> ``(n, F)`` encoder pre-activations of ``layer``."""
        ts = self.transcoders
        return ts.pre_activations(layer, x.to(ts.device))

    def activations(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """``(n, F)`` pre-activations -> dense feature activations (JumpReLU thresholds etc.)."""
        return self.transcoders.activation_fn(layer, pre)

    def features(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``(n, d_in)`` input -> ``(n, F)`` dense feature activations of ``layer``."""
        return self.activations(layer, self.pre_activations(layer, x))

    def decode(
        self, layer: int, acts: Mapping[int, torch.Tensor] | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """``(n, d_out)`` decoder writes at ``layer``'s output (bias included, no skip).

        Args:
            layer: The output layer.
            acts: Activations (dense or sparse ``(n, F)``) of every layer in
                ``transcoders.source_layers(layer)``, by layer (a mapping, or a list of all
                layers); others are ignored.
        """
        ts = self.transcoders
        return ts.decode(layer, {s: acts[s] for s in ts.source_layers(layer)})

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """``(n, d_out)`` the linear skip path from ``x``, or ``None`` without one."""
        ts = self.transcoders
        return ts.skip(layer, x.to(ts.device))

    def reconstruction(
        self,
        layer: int,
        x: torch.Tensor,
        acts: Mapping[int, torch.Tensor],
        *,
        like: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the transcoders write at ``layer``: ``decode + skip(x)``.

        Args:
            layer: The output layer.
            x: ``(n, d_in)`` the input of ``layer``'s transcoder (for the skip path).
            acts: As in :meth:`decode`.
            like: Cast the result to this tensor's device and dtype.
        """
        recon = self.decode(layer, acts)
        skip = self.skip(layer, x)
        if skip is not None:
            recon = recon + skip.to(recon.dtype)
        return recon if like is None else recon.to(like.device, like.dtype)

    @staticmethod
    def error(reconstruction: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        """The error term: what the MLP wrote minus what the transcoders reconstruct."""
        return mlp_out - reconstruction.to(mlp_out.device, mlp_out.dtype)

    @staticmethod
    def output(reconstruction: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
        """The replacement MLP's output: reconstruction plus error term."""
        return reconstruction + error.to(reconstruction.device, reconstruction.dtype)

    def frozen_output(
        self,
        layer: int,
        clean: CleanRun,
        *,
        x: torch.Tensor | None = None,
        decoded: torch.Tensor | None = None,
        decoded_change: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(n, d_out)`` the output with the error term frozen at its clean value.

        ``decode + skip(x) + e_clean``, computed as ``clean_out + change of the decoder writes +
        change of the skip path``: where nothing changed the clean output comes back unchanged.

        Args:
            layer: The output layer.
            clean: The clean run (its output, reconstruction, skip term and input at ``layer``).
            x: The live transcoder input, when it may differ from the clean one (the skip path
                follows it; differentiable: attribution takes its VJP); ``None``: the clean input.
            decoded: The decoder writes now (:meth:`decode` of the live or intervened
                activations); ``None``: the clean ones.
            decoded_change: Instead of ``decoded``, the change of the decoder writes (e.g.
                from :meth:`decoder_change`).
        """
        out = clean.out[layer]
        if decoded is not None:
            out = out + (decoded.to(out.device, out.dtype) - clean.recon[layer])
        elif decoded_change is not None:
            out = out + decoded_change.to(out.device, out.dtype)
        skip_clean = clean.skip[layer]
        if x is not None and skip_clean is not None:
            skip = self.skip(layer, x)
            assert skip is not None
            out = out + (skip.to(out.device, out.dtype) - skip_clean)
        return out

    def decoder_change(
        self,
        source: int,
        layer: int,
        positions: torch.Tensor | None,
        features: torch.Tensor,
        change: torch.Tensor,
        *,
        n: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """What a change of some activations of layer ``source`` changes at ``layer``'s output.

        Args:
            source: Layer of the features.
            layer: Output layer (one ``source`` writes to).
            positions: ``(k,)`` positions of the changes, or ``None`` for feature-wise changes
                given for every position (``change`` is then ``(n, k)``).
            features: ``(k,)`` feature indices.
            change: ``(k,)`` activation changes (new minus old), or ``(n, k)`` without positions.
            n: Number of positions of the output (with ``positions``).
            dtype: Accumulation dtype (default: at least float32).

        Returns:
            ``(n, d_out)`` the change of the decoder writes.
        """
        dec = self.transcoders.decoder_vectors(source, features, layer).detach()  # (k, d_out)
        dtype = dtype or torch.promote_types(dec.dtype, torch.float32)
        dec = dec.to(dtype)
        if positions is None:
            return change.to(dec.device, dtype) @ dec
        assert n is not None
        out = torch.zeros(n, dec.shape[1], dtype=dtype, device=dec.device)
        return out.index_add_(
            0, positions.to(dec.device), change.to(dec.device, dtype)[:, None] * dec
        )
