"""``TopKTranscoder``: a per-layer transcoder whose features are the ``k`` largest pre-activations.

A TopK transcoder is a SAELens ``Transcoder`` (``W_enc`` ``(d_in, F)``, ``b_enc`` ``(F,)``,
``W_dec`` ``(F, d_out)``, ``b_dec`` ``(d_out,)``) with the activation

    pre = x @ W_enc + b_enc                                   (n, F)
    a   = pre * top_k(pre)        top_k: 1 on the k largest entries of each row, 0 elsewhere

which is circuit-tracer's ``TopK`` activation, the one the public TopK releases were loaded with
(``facebook/crv-8b-instruct-transcoders``, circuit-tracer PR #94): the selected pre-activations
are kept **as they are, negative ones included** (there is no ReLU; SAELens' TopK *SAE* applies a
ReLU to the selected values, a different rule). On a row with fewer than ``k`` positive
pre-activations, the largest negative ones are selected too.

**Ties.** Where several entries equal the ``k``-th largest value of a row and not all of them fit,
the ones with the lowest feature index are selected (``torch.topk`` leaves that choice
unspecified; here it is fixed, so the active set is the same on every device and run). Exactly
``k`` features of each row are selected (some may have the activation ``0``).

The class is registered with SAELens under :data:`ARCHITECTURE` (in
:mod:`sae_circuits.transcoders._registry`), so ``save_model`` / ``SAE.load_from_disk`` round-trip
it (``k`` is in ``cfg.json``) and ``load_transcoders(folder)`` reads ``layer_{i}/`` folders of it.

Example:
    >>> cfg = TopKTranscoderConfig(d_in=64, d_sae=1024, d_out=64, k=32)
    >>> cfg.metadata.hook_name = "blocks.0.mlp.hook_in"
    >>> cfg.metadata.hook_name_out = "blocks.0.mlp.hook_out"
    >>> tc = TopKTranscoder(cfg)
    >>> (tc.encode(torch.randn(5, 64)) != 0).sum(-1)        # at most k = 32 per row
    >>> tc.save_model("layer_0"); SAE.load_from_disk("layer_0")   # a TopKTranscoder again
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import Transcoder, TranscoderConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.util import filter_valid_dataclass_fields

# pyright: reportIncompatibleVariableOverride=false, reportIncompatibleMethodOverride=false

__all__ = [
    "ARCHITECTURE",
    "TopKTranscoder",
    "TopKTranscoderConfig",
    "check_k",
    "topk_activation",
    "topk_mask",
]

logger = logging.getLogger(__name__)

#: The SAELens architecture name of :class:`TopKTranscoder` (namespaced to this package).
ARCHITECTURE = "sae_circuits.topk_transcoder"


def check_k(k: Any, d_sae: int, *, where: str = "TopK transcoder") -> int:
    """``k`` if it is a valid number of selected features for ``d_sae`` features.

    Args:
        k: The number of features a TopK activation keeps per row.
        d_sae: The number of features.
        where: What to name in the message.

    Returns:
        ``k`` as an ``int``.

    Raises:
        ValueError: ``k`` is not an integer, or not in ``1 .. d_sae`` (the message names both).
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{where}: k must be an integer in 1..d_sae (d_sae = {d_sae}), got {k!r}")
    if k < 1:
        raise ValueError(f"{where}: k must be at least 1 (valid: 1..{d_sae}), got k = {k}")
    if k > d_sae:
        raise ValueError(
            f"{where}: k = {k} is larger than d_sae = {d_sae}; a TopK transcoder keeps k of its "
            f"d_sae features per position (valid: 1..{d_sae})"
        )
    return k


def topk_mask(pre: torch.Tensor, *, k: int) -> torch.Tensor:
    """Which entries a TopK activation selects: the ``k`` largest of each row, ties to low indices.

    Args:
        pre: ``(..., F)`` pre-activations.
        k: Entries to select per row, ``1 <= k <= F``.

    Returns:
        ``(..., F)`` boolean mask with exactly ``k`` ``True`` per row (for finite ``pre``).

    Raises:
        ValueError: ``k`` out of range.
    """
    width = pre.shape[-1]
    check_k(k, width, where="topk_mask")
    flat = pre.reshape(-1, width)
    kth = torch.topk(flat, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    keep = flat >= kth
    over = keep.sum(dim=-1) > k  # ties at the k-th value that do not all fit
    if bool(over.any()):
        rows = over.nonzero().squeeze(1)
        sub, sub_kth = flat[rows], kth[rows]
        above = sub > sub_kth
        ties = sub == sub_kth
        room = k - above.sum(dim=-1, keepdim=True)
        keep[rows] = above | (ties & (ties.cumsum(dim=-1) <= room))
    return keep.reshape(pre.shape)


def topk_activation(pre: torch.Tensor, *, k: int) -> torch.Tensor:
    """The TopK activation: the ``k`` largest pre-activations of each row, unchanged; 0 elsewhere.

    Args:
        pre: ``(..., F)`` pre-activations.
        k: Features kept per row, ``1 <= k <= F``.

    Returns:
        ``(..., F)`` activations, ``pre * topk_mask(pre, k=k)`` (a NaN stays NaN).
    """
    return pre * topk_mask(pre, k=k)


@dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """Config of a :class:`TopKTranscoder`.

    Attributes:
        k: Features kept per position, ``1 <= k <= d_sae`` (required).
        apply_b_dec_to_input: Always ``False`` for transcoders (the default here).
    """

    k: int = 0
    apply_b_dec_to_input: bool = False

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k == 0:
            raise ValueError(
                f"TopKTranscoderConfig: k is required: the number of features kept per position, "
                f"1..d_sae (d_sae = {self.d_sae})"
            )
        check_k(self.k, self.d_sae, where="TopKTranscoderConfig")
        if self.normalize_activations != "none":
            raise ValueError(
                f"TopKTranscoderConfig: normalize_activations={self.normalize_activations!r} is "
                "not supported; fold the normalisation into the weights and use 'none'"
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoderConfig:
        res = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            res.metadata = SAEMetadata(**config_dict["metadata"])
        return res


class TopKTranscoder(Transcoder):
    """A per-layer transcoder with a TopK activation (see the module docstring for the rule).

    ``encode``: ``(..., d_in) -> (..., F)`` with exactly ``k`` selected features per position;
    ``decode``: ``(..., F) -> (..., d_out)`` (decoder bias included), as SAELens' ``Transcoder``.

    In the replacement model (``sae_circuits.replacement_model``) a TopK layer is treated as a
    JumpReLU layer is:

    * **Attribution** freezes every feature at its clean activation: the active set is the top
      ``k`` of the clean pre-activations, each feature node writes ``a_s * W_dec[s]``, and an edge
      into a feature is the linear effect on its *pre-activation*; the selection itself (like a
      JumpReLU threshold) is not differentiated.
    * **Interventions** (``sc.intervene``, ``sc.generate``) re-encode a layer whose input changed
      with the activation function, so, as a JumpReLU feature can cross its threshold, the top
      ``k`` are selected again from the live pre-activations (features enter and leave the active
      set). An intervened feature's value is written after the activation: setting a feature
      that is not among the top ``k`` does not evict another one (the layer then has ``k + 1``
      active features at that position). In ``direct`` mode nothing is re-encoded.

    Args:
        cfg: The config (its ``k`` is read at every call, so changing ``cfg.k`` takes effect).
    """

    cfg: TopKTranscoderConfig

    def __init__(self, cfg: TopKTranscoderConfig):
        super().__init__(cfg)
        self.cfg = cfg

    @property
    def k(self) -> int:
        """Features kept per position."""
        return self.cfg.k

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._select_top_k

    def _select_top_k(self, pre: torch.Tensor) -> torch.Tensor:
        return topk_activation(pre, k=self.cfg.k)

    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "folding decoder norms into a TopK transcoder's encoder rescales its pre-activations "
            "feature by feature and so changes which k features are selected; not supported"
        )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoder:
        return cls(TopKTranscoderConfig.from_dict(config_dict))
