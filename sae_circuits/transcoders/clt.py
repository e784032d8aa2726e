"""Cross-layer transcoders as a :class:`~sae_circuits.transcoders.sets.TranscoderSet`.

A cross-layer transcoder (CLT) has, per layer ``l``, features that read layer ``l``'s input hook
and write to the output hooks of layers ``l, l + 1, ..., L - 1``. As a transcoder set:

* ``output_layers(l) == range(l, L)``;
* ``decode(o, acts)`` is ``b_dec[o] + sum_{l <= o} acts[l] @ W_dec[l][:, o - l]``;
* in an attribution graph a CLT feature is one node whose column carries its writes to every
  later layer, and error nodes stay per layer (the replacement and tracing code is generic).

:class:`CrossLayerTranscoderSet` works over two kinds of weights:

* an in-memory :class:`~sae_circuits.transcoders.clt_sae.CrossLayerTranscoder` (the SAELens
  ``SAE`` subclass; :meth:`CrossLayerTranscoderSet.from_sae`), read live, so edits to the SAE
  show;
* a folder (:meth:`CrossLayerTranscoderSet.from_folder`), either in the public per-layer layout
  (``W_enc_{l}.safetensors`` / ``W_dec_{l}.safetensors`` / ``config.yaml``, as the
  ``mntss/clt-*`` releases) or a folder written by ``CrossLayerTranscoder.save_model``. Decoders
  are read lazily by default: each call memory-maps the file, copies out the rows of the
  requested (active) features only, and unmaps it, so a CLT far larger than RAM can be used.
  ``lazy_encoder=True`` does the same for the encoders of the public layout (a layer's encoder is
  then read in full, transiently, for each forward pass through that layer).

Example:
    >>> ts = CrossLayerTranscoderSet.from_folder("clt")           # lazy decoders
    >>> ts.output_layers(1)
    range(1, 4)
    >>> graph = sc.attribute(model, "The capital of Texas is", ts)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from safetensors import safe_open

from sae_circuits.transcoders._clt_files import CLTFiles, LazyTensor, scan_clt_folder
from sae_circuits.transcoders._sizes import Sizes
from sae_circuits.transcoders.clt_sae import (
    ARCHITECTURE,
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    HookSpec,
    layer_hooks,
)
from sae_circuits.transcoders.sets import TranscoderSet

__all__ = ["CrossLayerTranscoder", "CrossLayerTranscoderConfig", "CrossLayerTranscoderSet"]

logger = logging.getLogger(__name__)

_Stored = torch.Tensor | LazyTensor


class _SAEWeights:
    """Weights read live from a :class:`CrossLayerTranscoder`."""

    lazy_encoder = False
    lazy_decoder = False

    def __init__(self, sae: CrossLayerTranscoder) -> None:
        self.sae = sae
        cfg = sae.cfg
        self.n_layers, self.d_in, self.d_out, self.d_sae = (
            cfg.n_layers,
            cfg.d_in,
            cfg.d_out,
            cfg.d_sae,
        )
        self.source = f"in-memory {type(sae).__name__}"

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.sae.W_enc.device

    @property
    def b_enc(self) -> torch.Tensor:
        return self.sae.b_enc

    @property
    def b_dec(self) -> torch.Tensor:
        return self.sae.b_dec

    @property
    def threshold(self) -> torch.Tensor | None:
        return self.sae.threshold if self.sae.cfg.activation == "jumprelu" else None

    def enc_matrix(self, layer: int) -> torch.Tensor:
        return self.sae.W_enc[layer]

    def enc_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        return self.sae.W_enc[layer][:, features].T

    def dec_rows(self, layer: int, features: torch.Tensor, offset: int) -> torch.Tensor:
        return self.sae.W_dec[layer][features, offset]

    def dec_matrix(self, layer: int, offset: int) -> torch.Tensor | None:
        return self.sae.W_dec[layer][:, offset]


class _FileWeights:
    """Weights from a folder: small tensors in memory, encoders/decoders in memory or lazy.

    In-memory encoders are ``(d_in, F)`` (SAELens' orientation), lazy ones ``(F, d_in)`` (the
    public layout's); decoders are ``(F, L - l, d_out)``.
    """

    def __init__(
        self,
        *,
        enc: list[_Stored],
        dec: list[_Stored],
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        threshold: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
        source: str,
    ) -> None:
        self.enc, self.dec = enc, dec
        self.b_enc, self.b_dec, self.threshold = b_enc, b_dec, threshold
        self.dtype, self.device, self.source = dtype, device, source
        self.n_layers = len(enc)
        self.lazy_encoder = isinstance(enc[0], LazyTensor)
        self.lazy_decoder = isinstance(dec[0], LazyTensor)
        shape = enc[0].shape
        self.d_sae, self.d_in = (shape[0], shape[1]) if self.lazy_encoder else (shape[1], shape[0])
        self.d_out = int(b_dec.shape[-1])

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype)

    def enc_matrix(self, layer: int) -> torch.Tensor:
        w = self.enc[layer]
        return self._to(w.read()).T if isinstance(w, LazyTensor) else w

    def enc_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        w = self.enc[layer]
        if isinstance(w, LazyTensor):
            return self._to(w.rows(features))
        return w[:, features.to(w.device)].T

    def dec_rows(self, layer: int, features: torch.Tensor, offset: int) -> torch.Tensor:
        w = self.dec[layer]
        if isinstance(w, LazyTensor):
            return self._to(w.rows(features, offset))
        return w[features.to(w.device), offset]

    def dec_matrix(self, layer: int, offset: int) -> torch.Tensor | None:
        w = self.dec[layer]
        return None if isinstance(w, LazyTensor) else w[:, offset]


_Weights = _SAEWeights | _FileWeights


class CrossLayerTranscoderSet(TranscoderSet):
    """A cross-layer transcoder covering every layer of a model.

    Build one with :meth:`from_sae` or :meth:`from_folder` (or ``load_transcoders``).

    Args:
        weights: Internal weight source.
        input_hooks, output_hooks: Full hook names per layer.
        files: The validated public-layout folder, when loaded from one (for messages).
    """

    def __init__(
        self,
        weights: _Weights,
        input_hooks: Sequence[str],
        output_hooks: Sequence[str],
        *,
        files: CLTFiles | None = None,
    ) -> None:
        self._w = weights
        self._files = files
        self.input_hooks = tuple(input_hooks)
        self.output_hooks = tuple(output_hooks)
        threshold = weights.threshold
        if threshold is not None and bool((threshold < 0).any()):
            logger.warning(
                "%s: some JumpReLU thresholds are negative; activations are "
                "relu(pre) * (pre > threshold) (SAELens' JumpReLU), so pre-activations in "
                "(threshold, 0] give 0",
                weights.source,
            )

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_sae(
        cls,
        clt: CrossLayerTranscoder,
        *,
        input_hook: HookSpec | None = None,
        output_hook: HookSpec | None = None,
    ) -> CrossLayerTranscoderSet:
        """A set over an in-memory :class:`CrossLayerTranscoder` (weights read live).

        Args:
            clt: The CLT.
            input_hook, output_hook: Override of the hooks (suffix, ``{layer}`` template or list);
                default ``clt.cfg.metadata.hook_name`` / ``hook_name_out``.

        Raises:
            TypeError: ``clt`` is not a :class:`CrossLayerTranscoder`.
            ValueError: No hooks known.
        """
        if not isinstance(clt, CrossLayerTranscoder):
            raise TypeError(f"expected a CrossLayerTranscoder, got {type(clt).__name__}")
        meta = clt.cfg.metadata
        L = clt.cfg.n_layers
        ins = _hooks(input_hook, meta.hook_name, L, "input", "cfg.metadata.hook_name")
        outs = _hooks(output_hook, meta.hook_name_out, L, "output", "cfg.metadata.hook_name_out")
        return cls(_SAEWeights(clt), ins, outs)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        input_hook: HookSpec | None = None,
        output_hook: HookSpec | None = None,
        lazy_decoder: bool = True,
        lazy_encoder: bool = False,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> CrossLayerTranscoderSet:
        """A set over a CLT folder: the public per-layer layout or a SAELens ``save_model`` folder.

        Args:
            folder: The folder.
            input_hook, output_hook: Hooks (suffix, ``{layer}`` template or list); default the
                folder's ``config.yaml`` (public layout) or ``cfg.json`` metadata (SAELens).
            lazy_decoder: Read decoder rows on demand (only active features' rows are ever
                materialised) instead of loading all decoders.
            lazy_encoder: Also read encoders on demand (public layout only).
            device: Device of the weights used in computations.
            dtype: e.g. ``"float32"``; default the stored dtype.

        Raises:
            FileNotFoundError, ValueError: See :func:`~sae_circuits.transcoders._clt_files.scan_clt_folder`;
                also missing hooks and a SAELens folder that does not hold a CLT.
        """
        folder = Path(folder)
        if (folder / "cfg.json").is_file():
            return cls._from_saelens_folder(
                folder, input_hook, output_hook, lazy_decoder, lazy_encoder, device, dtype
            )
        files = scan_clt_folder(folder)
        L = files.n_layers
        ins = _hooks(
            input_hook,
            files.config.get("feature_input_hook"),
            L,
            "input",
            f"feature_input_hook in {str(folder / 'config.yaml')!r}",
        )
        outs = _hooks(
            output_hook,
            files.config.get("feature_output_hook"),
            L,
            "output",
            f"feature_output_hook in {str(folder / 'config.yaml')!r}",
        )
        dev = torch.device(device)
        dt = _dtype(dtype) or files.dtype
        smalls = [files.small(layer) for layer in range(L)]

        def stack(name: str) -> torch.Tensor:
            return torch.stack([s[name] for s in smalls]).to(dev, dt)

        enc: list[_Stored] = [files.encoder(layer) for layer in range(L)]
        dec: list[_Stored] = [files.decoder(layer) for layer in range(L)]
        if not lazy_encoder:
            enc = [e.read().T.to(dev, dt).contiguous() for e in enc if isinstance(e, LazyTensor)]
        if not lazy_decoder:
            dec = [d.read().to(dev, dt) for d in dec if isinstance(d, LazyTensor)]
        weights = _FileWeights(
            enc=enc,
            dec=dec,
            b_enc=stack("b_enc"),
            b_dec=stack("b_dec"),
            threshold=stack("threshold") if files.has_threshold else None,
            dtype=dt,
            device=dev,
            source=str(folder),
        )
        logger.info(
            "CLT %s: %d layers x %d features, decoders %s, encoders %s",
            folder,
            L,
            files.d_sae,
            "lazy" if lazy_decoder else "in memory",
            "lazy" if lazy_encoder else "in memory",
        )
        return cls(weights, ins, outs, files=files)

    @classmethod
    def _from_saelens_folder(
        cls,
        folder: Path,
        input_hook: HookSpec | None,
        output_hook: HookSpec | None,
        lazy_decoder: bool,
        lazy_encoder: bool,
        device: str | torch.device,
        dtype: str | torch.dtype | None,
    ) -> CrossLayerTranscoderSet:
        cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(cfg_path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("architecture") != ARCHITECTURE:
            arch = raw.get("architecture") if isinstance(raw, dict) else None
            raise ValueError(
                f"{str(cfg_path)!r} has architecture {arch!r}, not {ARCHITECTURE!r} (a "
                "cross-layer transcoder); per-layer transcoders go in layer_{i}/ folders"
            )
        if not weights_path.is_file():
            raise FileNotFoundError(f"{str(weights_path)!r} is missing")
        dt = _dtype(dtype)
        if not lazy_decoder:
            if lazy_encoder:
                raise ValueError("lazy_encoder=True needs a CLT folder in the public layout")
            kwargs: dict[str, Any] = {"device": str(device)}
            if dt is not None:
                kwargs["dtype"] = str(dt).removeprefix("torch.")
            sae = SAE.load_from_disk(folder, **kwargs)
            assert isinstance(sae, CrossLayerTranscoder)
            return cls.from_sae(sae, input_hook=input_hook, output_hook=output_hook)
        if lazy_encoder:
            raise ValueError(
                f"{str(folder)!r}: lazy_encoder=True is supported for the public per-layer layout "
                "only (W_enc_{l}.safetensors); this is a SAELens save_model folder"
            )
        cfg = CrossLayerTranscoderConfig.from_dict(raw)
        L, F = cfg.n_layers, cfg.d_sae
        expected = {
            "W_enc": (L, cfg.d_in, F),
            "b_enc": (L, F),
            "b_dec": (L, cfg.d_out),
            **{f"W_dec.{layer}": (F, L - layer, cfg.d_out) for layer in range(L)},
        }
        if cfg.activation == "jumprelu":
            expected["threshold"] = (L, F)
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            bad = {k: shapes.get(k) for k, v in expected.items() if shapes.get(k) != v}
            extra = sorted(set(shapes) - set(expected))
            if bad or extra:
                raise ValueError(
                    f"{str(weights_path)!r} does not match {str(cfg_path)!r}: "
                    + "; ".join(
                        [f"{k} has shape {s} (expected {expected[k]})" for k, s in bad.items()]
                        + ([f"unknown keys {extra}"] if extra else [])
                    )
                )
            small = {
                k: f.get_tensor(k) for k in ("W_enc", "b_enc", "b_dec", "threshold") if k in shapes
            }
        dev = torch.device(device)
        dt = dt or small["W_enc"].dtype
        meta = cfg.metadata
        ins = _hooks(
            input_hook, meta.hook_name, L, "input", f"metadata.hook_name in {str(cfg_path)!r}"
        )
        outs = _hooks(
            output_hook,
            meta.hook_name_out,
            L,
            "output",
            f"metadata.hook_name_out in {str(cfg_path)!r}",
        )
        weights = _FileWeights(
            enc=[small["W_enc"][layer].to(dev, dt).contiguous() for layer in range(L)],
            dec=[
                LazyTensor(weights_path, f"W_dec.{layer}", expected[f"W_dec.{layer}"])
                for layer in range(L)
            ],
            b_enc=small["b_enc"].to(dev, dt),
            b_dec=small["b_dec"].to(dev, dt),
            threshold=small["threshold"].to(dev, dt) if "threshold" in small else None,
            dtype=dt,
            device=dev,
            source=str(folder),
        )
        return cls(weights, ins, outs)

    # -- the TranscoderSet interface ---------------------------------------------------------

    @property
    def sae(self) -> CrossLayerTranscoder | None:
        """The in-memory :class:`CrossLayerTranscoder`, or ``None`` for a folder-backed set."""
        return self._w.sae if isinstance(self._w, _SAEWeights) else None

    @property
    def lazy_decoder(self) -> bool:
        return self._w.lazy_decoder

    @property
    def lazy_encoder(self) -> bool:
        return self._w.lazy_encoder

    @property
    def d_in(self) -> int:
        return self._w.d_in

    @property
    def d_out(self) -> int:
        return self._w.d_out

    def d_sae(self, layer: int) -> int:
        return self._w.d_sae

    @property
    def has_skip(self) -> bool:
        return False

    @property
    def dtype(self) -> torch.dtype:
        return self._w.dtype

    @property
    def device(self) -> torch.device:
        return self._w.device

    def output_layers(self, layer: int) -> range:
        return range(layer, self.n_layers)

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        w = self._w
        return x.to(w.device, w.dtype) @ w.enc_matrix(layer) + w.b_enc[layer]

    def activation_fn(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        acts = torch.relu(pre)
        threshold = self._w.threshold
        if threshold is not None:
            acts = acts * (pre > threshold[layer])
        return acts

    def encoder_vectors(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        return self._w.enc_rows(layer, features)

    def decoder_vectors(self, layer: int, features: torch.Tensor, out_layer: int) -> torch.Tensor:
        if out_layer not in self.output_layers(layer):
            raise ValueError(
                f"CLT features of layer {layer} write to layers {layer} ... {self.n_layers - 1}, "
                f"not to layer {out_layer}"
            )
        return self._w.dec_rows(layer, features, out_layer - layer)

    def decode(self, out_layer: int, acts: dict[int, torch.Tensor]) -> torch.Tensor:
        """Reconstruction at ``out_layer``: the decoders of all features of layers ``<= out_layer``.

        Args:
            out_layer: The output layer.
            acts: ``layer -> (..., F)`` activations, dense or sparse COO, for every layer
                ``0 ... out_layer`` (later layers are ignored). With lazy decoders only the rows
                of active features are read.

        Returns:
            ``(..., d_out)`` reconstruction, decoder bias included.

        Raises:
            ValueError: A layer ``<= out_layer`` is missing from ``acts``.
        """
        missing = [layer for layer in range(out_layer + 1) if layer not in acts]
        if missing:
            raise ValueError(
                f"CLT decode at layer {out_layer} needs the activations of layers 0 ... "
                f"{out_layer} (every layer writes to it); missing {missing}"
            )
        w = self._w
        out = None
        for layer in range(out_layer + 1):
            part = self._write(layer, out_layer - layer, acts[layer])
            out = part if out is None else out + part
        assert out is not None
        return out + w.b_dec[out_layer]

    def _write(self, layer: int, offset: int, a: torch.Tensor) -> torch.Tensor:
        w = self._w
        F = w.d_sae
        if a.shape[-1] != F:
            raise ValueError(
                f"CLT layer {layer} has {F} features; activations have shape {tuple(a.shape)}"
            )
        if a.is_sparse:
            a = a.coalesce()
            lead = tuple(a.shape[:-1])
            idx = a.indices().to(w.device)
            rows = _flat_index(idx[:-1], lead)
            feats, inverse = torch.unique(idx[-1], return_inverse=True)
            dec = w.dec_rows(layer, feats, offset)  # (u, d_out)
            vals = a.values().to(w.device, w.dtype)
            flat = torch.zeros(math.prod(lead), w.d_out, dtype=w.dtype, device=w.device)
            flat = flat.index_add(0, rows, vals[:, None] * dec[inverse])
            return flat.reshape(*lead, w.d_out)
        a = a.to(w.device, w.dtype)
        matrix = w.dec_matrix(layer, offset)
        if matrix is not None:
            return a @ matrix
        active = torch.nonzero((a != 0).reshape(-1, F).any(dim=0)).flatten()
        return a[..., active] @ w.dec_rows(layer, active, offset)

    def sizes(self) -> Sizes:
        """Layer count and widths, naming the files they were read from."""
        files = self._files
        detail = {}
        if files is not None:
            detail = {
                "n_layers": f" (W_enc_0 ... W_enc_{self.n_layers - 1}.safetensors)",
                "d_in": f" ({str(files.enc_path(0))!r}: W_enc_0)",
                "d_out": f" ({str(files.enc_path(0))!r}: b_dec_0)",
            }
        return Sizes(f"the CLT in {self._w.source!r}", self.n_layers, self.d_in, self.d_out, detail)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["architecture"] = ARCHITECTURE
        info["source"] = self._w.source
        info["jumprelu"] = self._w.threshold is not None
        info["lazy_decoder"] = self.lazy_decoder
        info["lazy_encoder"] = self.lazy_encoder
        return info


def _flat_index(idx: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """Row-major flat index of ``idx`` ``(len(lead), nnz)`` into a tensor of shape ``lead``."""
    flat = torch.zeros(idx.shape[1], dtype=torch.long, device=idx.device)
    for dim, size in enumerate(lead):
        flat = flat * size + idx[dim]
    return flat


def _hooks(
    override: HookSpec | None, stored: Any, n_layers: int, which: str, where: str
) -> tuple[str, ...]:
    spec = override if override is not None else stored
    if not spec:
        raise ValueError(
            f"the CLT's {which} hook is unknown: {where} is not set; pass {which}_hook='<suffix>' "
            f"(e.g. {'ln2.hook_normalized' if which == 'input' else 'hook_mlp_out'})"
        )
    return layer_hooks(spec, n_layers, f"{which} hook")


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; e.g. 'float32', 'bfloat16'")
    return value
