"""Transcoder sets: the transcoders that replace a model's MLPs, one entry point for all kinds.

A *transcoder set* covers every layer of a model. For each layer ``l`` it reads the activation at
its input hook (e.g. ``blocks.l.mlp.hook_in``), computes sparse feature activations, and
reconstructs what the MLP writes at its output hook (e.g. ``blocks.l.hook_mlp_out``).

:class:`TranscoderSet` is the interface that replacement, attribution and interventions use;
:class:`PerLayerTranscoderSet` implements it over SAELens ``Transcoder`` / ``SkipTranscoder`` /
``JumpReLUTranscoder`` / ``JumpReLUSkipTranscoder`` objects and this package's
:class:`~sae_circuits.transcoders.topk.TopKTranscoder` (one per layer). A cross-layer
transcoder, whose features write to their own layer and every later one, implements the same
interface (see ``transcoders.clt``).

Example:
    >>> from sae_lens import Transcoder
    >>> ts = PerLayerTranscoderSet([Transcoder.load_from_disk(f"tc/layer_{i}") for i in range(4)])
    >>> ts.input_hooks[0], ts.output_hooks[0]
    ('blocks.0.mlp.hook_in', 'blocks.0.hook_mlp_out')
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from sae_lens import JumpReLUTranscoder, SkipTranscoder, Transcoder

from sae_circuits.transcoders._sizes import Sizes
from sae_circuits.transcoders.topk import TopKTranscoder, check_k, topk_activation

__all__ = ["PerLayerTranscoderSet", "TranscoderSet"]


class TranscoderSet(abc.ABC):
    """Interface of a set of transcoders covering all layers of a model.

    Shapes use ``n`` for positions, ``F`` for the number of features of a layer, ``d_in`` /
    ``d_out`` for the input / output widths and ``k`` for a number of selected features.
    """

    #: Full hook names read by each layer, e.g. ``("blocks.0.mlp.hook_in", ...)``.
    input_hooks: tuple[str, ...]
    #: Full hook names written by each layer, e.g. ``("blocks.0.hook_mlp_out", ...)``.
    output_hooks: tuple[str, ...]

    @property
    def n_layers(self) -> int:
        return len(self.input_hooks)

    @property
    @abc.abstractmethod
    def d_in(self) -> int:
        """Width of the activation read at the input hooks."""

    @property
    @abc.abstractmethod
    def d_out(self) -> int:
        """Width of the activation written at the output hooks."""

    @abc.abstractmethod
    def d_sae(self, layer: int) -> int:
        """Number of features of ``layer``."""

    @property
    @abc.abstractmethod
    def has_skip(self) -> bool:
        """Whether some layer has a linear skip connection (input -> output)."""

    @abc.abstractmethod
    def output_layers(self, layer: int) -> range:
        """The layers whose outputs the features of ``layer`` write to."""

    def source_layers(self, out_layer: int) -> list[int]:
        """The layers whose features write to ``out_layer`` (``[out_layer]`` for per-layer sets)."""
        return [s for s in range(out_layer + 1) if out_layer in self.output_layers(s)]

    @abc.abstractmethod
    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``x @ W_enc + b_enc``: ``(n, d_in) -> (n, F)``."""

    @abc.abstractmethod
    def activation_fn(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations: ``(n, F) -> (n, F)``."""

    @abc.abstractmethod
    def encoder_vectors(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Encoder directions of ``features`` (``(k,)`` ids): ``(k, d_in)``."""

    @abc.abstractmethod
    def decoder_vectors(self, layer: int, features: torch.Tensor, out_layer: int) -> torch.Tensor:
        """What ``features`` of ``layer`` write, per unit activation, to ``out_layer``: ``(k, d_out)``."""

    @abc.abstractmethod
    def decode(self, out_layer: int, acts: dict[int, torch.Tensor]) -> torch.Tensor:
        """Reconstruction at ``out_layer`` from feature activations (no skip term).

        Args:
            out_layer: The output layer.
            acts: ``layer -> (n, F)`` activations of every layer that writes to ``out_layer``
                (dense or sparse COO).

        Returns:
            ``(n, d_out)`` reconstruction, decoder bias included.
        """

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The skip connection's output ``x @ W_skip.T`` at ``layer``, or ``None`` if it has none."""
        del layer, x
        return None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def sizes(self) -> Sizes:
        """Layer count and widths, for the fit check (:mod:`sae_circuits.transcoders._fit`)."""
        return Sizes("the transcoders", self.n_layers, self.d_in, self.d_out, verb="have")

    def describe(self) -> dict[str, Any]:
        """A JSON-able identity of the set (kind, sizes, hooks) for graph metadata."""
        return {
            "kind": type(self).__name__,
            "n_layers": self.n_layers,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "d_sae": [self.d_sae(layer) for layer in range(self.n_layers)],
            "input_hooks": list(self.input_hooks),
            "output_hooks": list(self.output_hooks),
        }


_SUPPORTED = (Transcoder,)


class PerLayerTranscoderSet(TranscoderSet):
    """One SAELens transcoder per layer (index = layer).

    Activations (:meth:`activation_fn`): ReLU for ``Transcoder`` / ``SkipTranscoder``;
    ``relu(pre) * (pre > threshold)`` for the JumpReLU classes; for a ``TopKTranscoder`` the
    ``k`` largest pre-activations of each position, unchanged, ties to the lowest feature index
    (:func:`~sae_circuits.transcoders.topk.topk_activation`).

    Args:
        transcoders: SAELens ``Transcoder`` objects (any subclass: ``SkipTranscoder``,
            ``JumpReLUTranscoder``, ``JumpReLUSkipTranscoder``, ``TopKTranscoder``), one per
            layer, in layer order.
        input_hook: Override of the input hook suffix for every layer (e.g. ``"mlp.hook_in"``);
            by default each transcoder's ``cfg.metadata.hook_name``.
        output_hook: Override of the output hook suffix; by default ``cfg.metadata.hook_name_out``.

    Raises:
        TypeError: An entry is not a SAELens transcoder.
        ValueError: Empty input, a transcoder without hook names, widths that disagree, a TopK
            transcoder whose ``k`` is not in ``1..d_sae`` (naming both), or a normalisation SAELens applies at run time (which would make features nonlinear
            in their input beyond the activation function).
    """

    def __init__(
        self,
        transcoders: Sequence[Transcoder],
        *,
        input_hook: str | None = None,
        output_hook: str | None = None,
    ) -> None:
        transcoders = list(transcoders)
        if not transcoders:
            raise ValueError("no transcoders given: expected one SAELens transcoder per layer")
        ins, outs = [], []
        for layer, tc in enumerate(transcoders):
            if not isinstance(tc, _SUPPORTED):
                raise TypeError(
                    f"layer {layer}: expected a SAELens Transcoder (Transcoder, SkipTranscoder, "
                    f"JumpReLUTranscoder, JumpReLUSkipTranscoder or TopKTranscoder), got "
                    f"{type(tc).__name__}"
                )
            norm = tc.cfg.normalize_activations
            if norm not in ("none", None):
                raise ValueError(
                    f"layer {layer}: transcoder has normalize_activations={norm!r}; attribution "
                    "needs features that are affine in their input before the activation "
                    "function. Fold the normalisation into the weights first "
                    "(e.g. sae.fold_activation_norm_scaling_factor) or use 'none'."
                )
            if isinstance(tc, TopKTranscoder):
                check_k(tc.cfg.k, tc.cfg.d_sae, where=f"layer {layer}: TopK transcoder")
            if tc.cfg.reshape_activations != "none":
                raise ValueError(
                    f"layer {layer}: reshape_activations={tc.cfg.reshape_activations!r} is not "
                    "supported (transcoders must read a (pos, d_model) activation)"
                )
            ins.append(
                _hook_name(layer, input_hook, tc.cfg.metadata.hook_name, "input", "hook_name")
            )
            outs.append(
                _hook_name(
                    layer, output_hook, tc.cfg.metadata.hook_name_out, "output", "hook_name_out"
                )
            )
        d_in = {tc.cfg.d_in for tc in transcoders}
        d_out = {tc.cfg.d_out for tc in transcoders}
        if len(d_in) != 1 or len(d_out) != 1:
            raise ValueError(
                f"transcoders disagree on their widths: d_in {sorted(d_in)}, d_out {sorted(d_out)}"
            )
        self.transcoders = transcoders
        self.input_hooks = tuple(ins)
        self.output_hooks = tuple(outs)

    def __len__(self) -> int:
        return len(self.transcoders)

    def __getitem__(self, layer: int) -> Transcoder:
        return self.transcoders[layer]

    @property
    def d_in(self) -> int:
        return self.transcoders[0].cfg.d_in

    @property
    def d_out(self) -> int:
        return self.transcoders[0].cfg.d_out

    def d_sae(self, layer: int) -> int:
        return self.transcoders[layer].cfg.d_sae

    @property
    def has_skip(self) -> bool:
        return any(isinstance(tc, SkipTranscoder) for tc in self.transcoders)

    @property
    def dtype(self) -> torch.dtype:
        return self.transcoders[0].W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.transcoders[0].W_enc.device

    def output_layers(self, layer: int) -> range:
        return range(layer, layer + 1)

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        tc = self.transcoders[layer]
        return x.to(tc.W_enc.dtype) @ tc.W_enc + tc.b_enc

    def activation_fn(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        tc = self.transcoders[layer]
        if isinstance(tc, TopKTranscoder):
            return topk_activation(pre, k=tc.cfg.k)
        acts = tc.activation_fn(pre)
        if isinstance(tc, JumpReLUTranscoder):
            acts = acts * (pre > tc.threshold)
        return acts

    def encoder_vectors(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        return self.transcoders[layer].W_enc[:, features].T

    def decoder_vectors(self, layer: int, features: torch.Tensor, out_layer: int) -> torch.Tensor:
        if out_layer != layer:
            raise ValueError(f"per-layer transcoder {layer} does not write to layer {out_layer}")
        return self.transcoders[layer].W_dec[features]

    def decode(self, out_layer: int, acts: dict[int, torch.Tensor]) -> torch.Tensor:
        tc = self.transcoders[out_layer]
        a = acts[out_layer].to(tc.W_dec.dtype)
        out = torch.sparse.mm(a, tc.W_dec) if a.is_sparse else a @ tc.W_dec
        return out + tc.b_dec

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        tc = self.transcoders[layer]
        if not isinstance(tc, SkipTranscoder):
            return None
        return x.to(tc.W_skip.dtype) @ tc.W_skip.T

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["architectures"] = [tc.cfg.architecture() for tc in self.transcoders]
        info["neuronpedia_ids"] = [tc.cfg.metadata.neuronpedia_id for tc in self.transcoders]
        if any(isinstance(tc, TopKTranscoder) for tc in self.transcoders):
            info["topk_k"] = [
                tc.cfg.k if isinstance(tc, TopKTranscoder) else None for tc in self.transcoders
            ]
        return info


def _hook_name(layer: int, override: str | None, meta: str | None, which: str, key: str) -> str:
    if override is not None:
        return override if override.startswith("blocks.") else f"blocks.{layer}.{override}"
    if not meta:
        raise ValueError(
            f"layer {layer}: the transcoder's cfg.metadata.{key} is not set, so its {which} hook "
            f"is unknown; set it or pass {which}_hook='<suffix>' (e.g. "
            f"{'mlp.hook_in' if which == 'input' else 'hook_mlp_out'})"
        )
    return meta
