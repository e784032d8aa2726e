"""``CrossLayerTranscoder``: a cross-layer transcoder (CLT) as a SAELens ``SAE`` architecture.

A CLT (Ameisen et al. 2025) has, for every layer ``l``, ``F`` features that read the residual
stream at layer ``l``'s input hook and write to the MLP outputs of layer ``l`` *and every later
layer*. The reconstruction of MLP ``o`` is ``b_dec[o] + sum_{l <= o} a_l @ W_dec[l][:, o - l]``.

One ``CrossLayerTranscoder`` object is the whole CLT (all layers), since no layer's output can be
reconstructed from one layer's features alone. Parameters (``L`` layers, ``F = d_sae`` features
per layer):

* ``W_enc`` ``(L, d_in, F)`` and ``b_enc`` ``(L, F)``: SAELens' orientation, per layer;
* ``W_dec``: an ``nn.ParameterList``, ``W_dec[l]`` ``(F, L - l, d_out)`` (state-dict keys
  ``W_dec.0`` ... ``W_dec.{L-1}``);
* ``b_dec`` ``(L, d_out)``;
* ``threshold`` ``(L, F)`` when ``cfg.activation == "jumprelu"``:
  ``a = relu(pre) * (pre > threshold)`` (SAELens' JumpReLU).

Hooks live in ``cfg.metadata``: ``hook_name`` (read) and ``hook_name_out`` (written) are each
either a template with ``{layer}`` (``"blocks.{layer}.ln2.hook_normalized"``, the form this
module writes), a suffix relative to ``blocks.{layer}.`` (``"hook_mlp_out"``) or a list of ``L``
full hook names. :func:`layer_hooks` expands them.

The class is registered with SAELens under :data:`ARCHITECTURE` when this module is imported
(re-imports and reloads are safe), so ``save_model`` / ``SAE.load_from_disk`` round-trip it, and
``SAE.from_pretrained(repo_id, folder)`` loads one pushed to the hub in that format.

Example:
    >>> cfg = CrossLayerTranscoderConfig(d_in=64, d_sae=1024, d_out=64, n_layers=4)
    >>> cfg.metadata.hook_name = "blocks.{layer}.ln2.hook_normalized"
    >>> cfg.metadata.hook_name_out = "blocks.{layer}.hook_mlp_out"
    >>> clt = CrossLayerTranscoder(cfg)
    >>> clt.save_model("my_clt")
    >>> clt2 = SAE.load_from_disk("my_clt")          # a CrossLayerTranscoder again
    >>> out = clt2(torch.randn(7, 4, 64))           # (..., L, d_in) -> (..., L, d_out)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from sae_lens import SAE, SAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.util import filter_valid_dataclass_fields
from torch import nn

# pyright: reportIncompatibleVariableOverride=false, reportIncompatibleMethodOverride=false

__all__ = [
    "ARCHITECTURE",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "layer_hooks",
]

logger = logging.getLogger(__name__)

#: The SAELens architecture name of :class:`CrossLayerTranscoder` (namespaced to this package).
ARCHITECTURE = "sae_circuits.cross_layer_transcoder"

Activation = Literal["relu", "jumprelu"]
HookSpec = str | Sequence[str]


@dataclass
class CrossLayerTranscoderConfig(SAEConfig):
    """Config of a :class:`CrossLayerTranscoder`.

    Attributes:
        d_in: Width read at each layer's input hook.
        d_sae: Features per layer ``F``.
        d_out: Width written at each output hook (``0``: same as ``d_in``).
        n_layers: Number of layers ``L`` (one encoder per layer).
        activation: ``"relu"`` or ``"jumprelu"`` (then a ``threshold`` ``(L, F)`` parameter).
    """

    d_out: int = 0
    n_layers: int = 0
    activation: Activation = "relu"
    apply_b_dec_to_input: bool = False

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_out <= 0:
            self.d_out = self.d_in
        if self.n_layers < 1:
            raise ValueError(
                f"CrossLayerTranscoderConfig: n_layers must be >= 1, got {self.n_layers}"
            )
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(
                f"CrossLayerTranscoderConfig: d_in and d_sae must be >= 1, got {self.d_in}, "
                f"{self.d_sae}"
            )
        if self.activation not in ("relu", "jumprelu"):
            raise ValueError(
                f"CrossLayerTranscoderConfig: activation must be 'relu' or 'jumprelu', got "
                f"{self.activation!r}"
            )
        if self.apply_b_dec_to_input:
            raise ValueError("apply_b_dec_to_input is not supported for cross-layer transcoders")
        if self.normalize_activations != "none":
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported for "
                "cross-layer transcoders; fold the normalisation into the weights and use 'none'"
            )
        if self.reshape_activations != "none":
            raise ValueError("reshape_activations must be 'none' for cross-layer transcoders")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> CrossLayerTranscoderConfig:
        res = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            res.metadata = SAEMetadata(**config_dict["metadata"])
        return res


class CrossLayerTranscoder(SAE[CrossLayerTranscoderConfig]):
    """A cross-layer transcoder: features of layer ``l`` write to layers ``l ... L-1``.

    ``encode`` / ``decode`` / ``forward`` work on all layers at once, ``(..., L, d_in)`` ->
    ``(..., L, F)`` -> ``(..., L, d_out)``; :meth:`pre_activations` and :meth:`encode_layer` on
    one layer.

    Args:
        cfg: The config.
    """

    cfg: CrossLayerTranscoderConfig
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.ParameterList  # type: ignore[assignment]
    b_dec: nn.Parameter
    threshold: nn.Parameter

    def __init__(self, cfg: CrossLayerTranscoderConfig):
        super().__init__(cfg)
        self.cfg = cfg

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    def initialize_weights(self) -> None:
        """Random encoders/decoders (uniform, scaled by fan-in), zero biases and thresholds."""
        L, d_in, F, d_out = self.cfg.n_layers, self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out
        kw: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        w_enc = torch.empty(L, d_in, F, **kw)
        nn.init.uniform_(w_enc, -(d_in**-0.5), d_in**-0.5)
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(L, F, **kw))
        decs = []
        for layer in range(L):
            w = torch.empty(F, L - layer, d_out, **kw)
            nn.init.uniform_(w, -(F**-0.5), F**-0.5)
            decs.append(nn.Parameter(w))
        self.W_dec = nn.ParameterList(decs)
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, **kw))
        if self.cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(L, F, **kw))

    # -- one layer ---------------------------------------------------------------------------

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations of layer ``layer``'s features: ``(..., d_in) -> (..., F)``."""
        return x.to(self.dtype) @ self.W_enc[layer] + self.b_enc[layer]

    def activation(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations of ``layer``: ``(..., F) -> (..., F)``."""
        acts = torch.relu(pre)
        if self.cfg.activation == "jumprelu":
            acts = acts * (pre > self.threshold[layer])
        return acts

    def encode_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of layer ``layer``: ``(..., d_in) -> (..., F)``."""
        return self.activation(layer, self.pre_activations(layer, x))

    # -- all layers --------------------------------------------------------------------------

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        return self.hook_sae_input(sae_in.to(self.dtype))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of every layer.

        Args:
            x: ``(..., L, d_in)`` the input of each layer.

        Returns:
            ``(..., L, F)``.
        """
        self._check_layers(x, "encode", "d_in")
        sae_in = self.process_sae_in(x)
        pre = self.hook_sae_acts_pre(
            torch.einsum("...ld,ldf->...lf", sae_in, self.W_enc) + self.b_enc
        )
        acts = torch.relu(pre)
        if self.cfg.activation == "jumprelu":
            acts = acts * (pre > self.threshold)
        return self.hook_sae_acts_post(acts)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction of every layer's output, decoder bias included.

        Args:
            feature_acts: ``(..., L, F)``.

        Returns:
            ``(..., L, d_out)``; entry ``o`` sums the decoders of layers ``<= o``.
        """
        self._check_layers(feature_acts, "decode", "d_sae")
        acts = feature_acts.to(self.dtype)
        writes = [
            torch.einsum("...f,fjd->...jd", acts[..., layer, :], self.W_dec[layer])
            for layer in range(self.n_layers)
        ]
        outs = [
            self.b_dec[out] + sum(writes[layer][..., out - layer, :] for layer in range(out + 1))
            for out in range(self.n_layers)
        ]
        return self.hook_sae_recons(torch.stack(outs, dim=-2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: ``(..., L, d_in) -> (..., L, d_out)``."""
        return self.hook_sae_output(self.decode(self.encode(x)))

    def _check_layers(self, t: torch.Tensor, what: str, width: str) -> None:
        size = self.cfg.d_in if width == "d_in" else self.cfg.d_sae
        if t.dim() < 2 or t.shape[-2] != self.n_layers or t.shape[-1] != size:
            raise ValueError(
                f"CrossLayerTranscoder.{what}: expected (..., n_layers={self.n_layers}, "
                f"{width}={size}), got {tuple(t.shape)}"
            )

    # -- SAELens maintenance -----------------------------------------------------------------

    @torch.no_grad()
    def get_W_dec_norm(self) -> torch.Tensor:
        """Norm of each feature's decoder over all the layers it writes to: ``(L, F)``."""
        return torch.stack(
            [w.flatten(1).norm(dim=-1).clamp(min=1e-8) for w in self.W_dec]  # type: ignore[union-attr]
        )

    @torch.no_grad()
    def fold_and_get_W_dec_norm(self) -> torch.Tensor:
        """Scale decoders to unit norm, moving the norm into encoder, bias and threshold."""
        norms = self.get_W_dec_norm()
        for layer, w in enumerate(self.W_dec):
            w.data.div_(norms[layer][:, None, None])
        self.W_enc.data.mul_(norms[:, None, :])
        self.b_enc.data.mul_(norms)
        if self.cfg.activation == "jumprelu":
            self.threshold.data.mul_(norms)
        return norms

    def fold_W_dec_norm(self) -> None:
        self.fold_and_get_W_dec_norm()

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold a constant input scaling (inputs were multiplied by it) into the weights."""
        self.W_enc.data *= scaling_factor
        for w in self.W_dec:
            w.data /= scaling_factor
        self.b_dec.data /= scaling_factor
        self.cfg.normalize_activations = "none"

    def fold_activation_whitening(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "activation whitening is not supported for cross-layer transcoders"
        )

    # -- the public per-layer file layout ----------------------------------------------------

    @classmethod
    def from_public_layout(
        cls,
        folder: str | Path,
        *,
        input_hook: HookSpec | None = None,
        output_hook: HookSpec | None = None,
        device: str = "cpu",
        dtype: str | None = None,
    ) -> CrossLayerTranscoder:
        """Load (eagerly) a CLT saved in the public per-layer layout.

        Args:
            folder: Folder of ``W_enc_{l}.safetensors`` / ``W_dec_{l}.safetensors``.
            input_hook, output_hook: Hooks (suffix, ``{layer}`` template or list); default the
                folder's ``config.yaml`` (``feature_input_hook`` / ``feature_output_hook``).
            device: Device of the parameters.
            dtype: e.g. ``"float32"``; default the dtype of ``W_enc_0``.

        Returns:
            The CLT with every weight in memory (use ``load_transcoders`` for lazy decoders).
        """
        from sae_lens.util import dtype_to_str

        from sae_circuits.transcoders._clt_files import scan_clt_folder

        files = scan_clt_folder(Path(folder))
        cfg = CrossLayerTranscoderConfig(
            d_in=files.d_in,
            d_sae=files.d_sae,
            d_out=files.d_out,
            n_layers=files.n_layers,
            activation="jumprelu" if files.has_threshold else "relu",
            dtype=dtype or dtype_to_str(files.dtype),
            device="meta",
        )
        hin = input_hook if input_hook is not None else files.config.get("feature_input_hook")
        hout = output_hook if output_hook is not None else files.config.get("feature_output_hook")
        cfg.metadata.hook_name = _as_template(hin)
        cfg.metadata.hook_name_out = _as_template(hout)
        if files.config.get("model_name"):
            cfg.metadata.model_name = files.config["model_name"]
        state: dict[str, torch.Tensor] = {}
        smalls = [files.small(layer) for layer in range(files.n_layers)]
        state["W_enc"] = torch.stack(
            [files.encoder(layer).read().T for layer in range(files.n_layers)]
        )
        state["b_enc"] = torch.stack([s["b_enc"] for s in smalls])
        state["b_dec"] = torch.stack([s["b_dec"] for s in smalls])
        if files.has_threshold:
            state["threshold"] = torch.stack([s["threshold"] for s in smalls])
        for layer in range(files.n_layers):
            state[f"W_dec.{layer}"] = files.decoder(layer).read()
        clt = cls(cfg)
        target = torch.device(device)
        clt.load_state_dict(
            {k: v.to(target, clt.dtype).contiguous() for k, v in state.items()}, assign=True
        )
        clt.cfg.device = device
        clt.device = target
        return clt

    def save_public_layout(self, folder: str | Path) -> Path:
        """Write this CLT in the public per-layer layout (with a ``config.yaml`` of its hooks).

        Hooks are written as suffixes when they are of the form ``blocks.{layer}.<suffix>``.

        Args:
            folder: Output folder.

        Returns:
            The folder.
        """
        from sae_circuits.transcoders._clt_files import save_clt_folder

        hooks = []
        for spec in (self.cfg.metadata.hook_name, self.cfg.metadata.hook_name_out):
            full = layer_hooks(spec, self.n_layers, "hook") if spec else None
            suffixes = {h.split(".", 2)[2] for h in full} if full else set()
            ok = full and all(h == f"blocks.{i}.{h.split('.', 2)[2]}" for i, h in enumerate(full))
            hooks.append(suffixes.pop() if ok and len(suffixes) == 1 else None)
        with torch.no_grad():
            return save_clt_folder(
                folder,
                W_enc=[self.W_enc[layer].T for layer in range(self.n_layers)],
                b_enc=list(self.b_enc),
                b_dec=list(self.b_dec),
                W_dec=list(self.W_dec),
                threshold=list(self.threshold) if self.cfg.activation == "jumprelu" else None,
                input_hook=hooks[0],
                output_hook=hooks[1],
                model_name=self.cfg.metadata.model_name,
            )


def layer_hooks(spec: HookSpec, n_layers: int, which: str) -> tuple[str, ...]:
    """Full hook names of every layer from a hook spec.

    Args:
        spec: A template with ``{layer}`` (``"blocks.{layer}.hook_mlp_out"``), a suffix relative to
            ``blocks.{layer}.`` (``"hook_mlp_out"``), or a sequence of ``n_layers`` full names.
        n_layers: Number of layers.
        which: What the hooks are (for messages), e.g. ``"input hook"``.

    Returns:
        ``n_layers`` full hook names.

    Raises:
        ValueError: A full name for a multi-layer CLT, or a list of the wrong length.
    """
    if isinstance(spec, str):
        if "{layer}" in spec:
            return tuple(spec.format(layer=layer) for layer in range(n_layers))
        if spec.startswith("blocks."):
            if n_layers == 1:
                return (spec,)
            raise ValueError(
                f"CLT {which} {spec!r} names a single hook but the CLT spans {n_layers} layers; "
                f"give a suffix (e.g. {spec.split('.', 2)[-1]!r}) or a template with '{{layer}}' "
                "(e.g. 'blocks.{layer}." + spec.split(".", 2)[-1] + "')"
            )
        return tuple(f"blocks.{layer}.{spec}" for layer in range(n_layers))
    names = [str(s) for s in spec]
    if len(names) != n_layers:
        raise ValueError(
            f"CLT {which}: {len(names)} hook names given for a CLT with {n_layers} layers"
        )
    return tuple(names)


def _as_template(spec: HookSpec | None) -> str | list[str] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        if "{layer}" in spec or spec.startswith("blocks."):
            return spec
        return f"blocks.{{layer}}.{spec}"
    return [str(s) for s in spec]
