"""The public per-layer file layout of cross-layer transcoders (as in the ``mntss/clt-*`` releases).

A folder holding a CLT with ``L`` layers, ``F`` features per layer and residual width ``d``::

    W_enc_{l}.safetensors   W_enc_{l} (F, d), b_enc_{l} (F,), b_dec_{l} (d,),
                            optional threshold_{l} (F,) (JumpReLU)
    W_dec_{l}.safetensors   W_dec_{l} (F, L - l, d): what feature f of layer l writes to
                            the outputs of layers l, l + 1, ..., L - 1
    config.yaml             optional: model_kind: cross_layer_transcoder, feature_input_hook,
                            feature_output_hook (hook suffixes, e.g. ln2.hook_normalized), ...

Method: :func:`scan_clt_folder` validates the whole folder from the safetensors *headers* only
(file names, keys, shapes, dtypes; no tensor data is read), so a folder far larger than memory is
checked in milliseconds. :class:`LazyTensor` then reads slices on demand through a memory-mapped
``safetensors.safe_open(..., framework="pt")`` handle that is closed after each read: only the
requested rows are copied into process memory, and the mapping (whose page-cache pages count in
RSS while it is open) is released right away.

Example:
    >>> files = scan_clt_folder(Path("clt"))
    >>> files.n_layers, files.d_sae, files.has_threshold
    (4, 1024, False)
    >>> files.decoder(0).rows(torch.tensor([3, 17]), 1).shape    # layer 0 -> layer 1
    torch.Size([2, 64])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "CONFIG_KEYS",
    "CLTFiles",
    "LazyTensor",
    "is_clt_folder",
    "read_config_yaml",
    "save_clt_folder",
    "scan_clt_folder",
]

logger = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^W_(enc|dec)_(0|[1-9]\d*)\.safetensors$")
#: Keys a ``config.yaml`` of the public layout may hold (circuit-tracer's hub config keys).
CONFIG_KEYS = frozenset(
    {
        "model_kind",
        "model_name",
        "feature_input_hook",
        "feature_output_hook",
        "scan",
        "repo_id",
        "revision",
        "subfolder",
    }
)
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


@dataclass(frozen=True)
class LazyTensor:
    """One tensor of a safetensors file, read slice by slice on demand.

    Attributes:
        path: The ``.safetensors`` file.
        key: The tensor's name in it.
        shape: Its shape (from the header).
    """

    path: Path
    key: str
    shape: tuple[int, ...]

    def read(self) -> torch.Tensor:
        """The whole tensor (materialised)."""
        with safe_open(str(self.path), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
            return f.get_tensor(self.key)

    def rows(self, rows: torch.Tensor, *rest: int) -> torch.Tensor:
        """Rows ``rows`` of the tensor, indexed further by ``rest`` (ints).

        Only these rows are copied out of the file.

        Args:
            rows: ``(k,)`` row ids along the first axis (any order, repeats allowed).
            *rest: Integer indices into the following axes.

        Returns:
            ``(k, *shape[1 + len(rest):])``.
        """
        rows = rows.detach().to("cpu", torch.long).flatten()
        tail = self.shape[1 + len(rest) :]
        if rows.numel() == 0:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
                dtype = _DTYPES.get(f.get_slice(self.key).get_dtype(), torch.float32)
            return torch.zeros((0, *tail), dtype=dtype)
        uniq, inverse = torch.unique(rows, sorted=True, return_inverse=True)
        if int(uniq[0]) < 0 or int(uniq[-1]) >= self.shape[0]:
            raise IndexError(
                f"{self.path.name}: {self.key} has {self.shape[0]} rows; asked for row "
                f"{int(uniq[0]) if int(uniq[0]) < 0 else int(uniq[-1])}"
            )
        ids = uniq.tolist()
        with safe_open(str(self.path), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
            sl = f.get_slice(self.key)
            try:
                out = sl[(ids, *rest)]
            except (TypeError, ValueError, IndexError):
                # older safetensors: no list indexing; read runs of consecutive rows as slices
                out = torch.cat([sl[(slice(lo, hi), *rest)] for lo, hi in _runs(ids)])
        out = out.reshape(len(uniq), *tail)
        return out if len(uniq) == len(rows) and bool((uniq == rows).all()) else out[inverse]


@dataclass(frozen=True)
class CLTFiles:
    """A validated CLT folder in the public layout (nothing but headers read).

    Attributes:
        folder: The folder.
        n_layers: Number of layers ``L``.
        d_sae: Features per layer ``F``.
        d_in: Width read by the encoders.
        d_out: Width written by the decoders.
        dtype: dtype of ``W_enc_0`` (the default dtype of the loaded set).
        has_threshold: Whether ``threshold_{l}`` (JumpReLU) is given.
        config: The ``config.yaml`` content (empty without one).
    """

    folder: Path
    n_layers: int
    d_sae: int
    d_in: int
    d_out: int
    dtype: torch.dtype
    has_threshold: bool
    config: dict[str, Any] = field(default_factory=dict)

    def enc_path(self, layer: int) -> Path:
        return self.folder / f"W_enc_{layer}.safetensors"

    def dec_path(self, layer: int) -> Path:
        return self.folder / f"W_dec_{layer}.safetensors"

    def encoder(self, layer: int) -> LazyTensor:
        """``W_enc_{layer}``, ``(F, d_in)``."""
        return LazyTensor(self.enc_path(layer), f"W_enc_{layer}", (self.d_sae, self.d_in))

    def decoder(self, layer: int) -> LazyTensor:
        """``W_dec_{layer}``, ``(F, L - layer, d_out)``."""
        shape = (self.d_sae, self.n_layers - layer, self.d_out)
        return LazyTensor(self.dec_path(layer), f"W_dec_{layer}", shape)

    def small(self, layer: int) -> dict[str, torch.Tensor]:
        """``b_enc`` ``(F,)``, ``b_dec`` ``(d_out,)`` and (if given) ``threshold`` ``(F,)``."""
        names = {"b_enc": f"b_enc_{layer}", "b_dec": f"b_dec_{layer}"}
        if self.has_threshold:
            names["threshold"] = f"threshold_{layer}"
        with safe_open(str(self.enc_path(layer)), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
            return {name: f.get_tensor(key) for name, key in names.items()}


def is_clt_folder(folder: Path) -> bool:
    """Whether ``folder`` holds files of the public CLT layout."""
    return any(_FILE_RE.match(p.name) for p in folder.glob("W_*.safetensors"))


def read_config_yaml(folder: Path) -> dict[str, Any]:
    """The validated ``config.yaml`` of a CLT folder (``{}`` when there is none).

    Raises:
        ValueError: Unparsable YAML, not a mapping, unknown keys, a ``model_kind`` other than
            ``cross_layer_transcoder``, or hooks that are not strings.
    """
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{str(path)!r} is not valid YAML: {exc}") from exc
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{str(path)!r} must be a mapping of keys to values, got {type(cfg).__name__}"
        )
    unknown = sorted(str(k) for k in cfg if k not in CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"{str(path)!r}: unknown keys {unknown}; a CLT config.yaml may hold "
            f"{', '.join(sorted(CONFIG_KEYS))}"
        )
    kind = cfg.get("model_kind", "cross_layer_transcoder")
    if kind != "cross_layer_transcoder":
        raise ValueError(
            f"{str(path)!r}: model_kind is {kind!r}; this folder layout (W_enc_{{l}} / W_dec_{{l}}) "
            "is a cross_layer_transcoder"
        )
    for key in ("feature_input_hook", "feature_output_hook"):
        if key in cfg and not (isinstance(cfg[key], str) and cfg[key]):
            raise ValueError(f"{str(path)!r}: {key} must be a hook name, got {cfg[key]!r}")
    return cfg


def scan_clt_folder(folder: Path) -> CLTFiles:
    """Validate a CLT folder in the public layout from its file names and headers.

    Args:
        folder: The folder.

    Returns:
        The folder's :class:`CLTFiles`.

    Raises:
        FileNotFoundError: No ``W_enc_{l}`` / ``W_dec_{l}`` files.
        ValueError: Missing or extra layer files, unexpected ``.safetensors`` files, missing or
            unknown keys, shapes that disagree with each other, thresholds on some layers only,
            a non-float tensor or an unreadable file (each message names the file).
    """
    enc: dict[int, Path] = {}
    dec: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(".safetensors"):
            continue
        match = _FILE_RE.match(path.name)
        if match is None:
            raise ValueError(
                f"{str(path)!r}: unexpected file in a CLT folder; the public layout holds only "
                "W_enc_{l}.safetensors and W_dec_{l}.safetensors (l = 0 ... n_layers - 1)"
            )
        (enc if match.group(1) == "enc" else dec)[int(match.group(2))] = path
    if not enc and not dec:
        raise FileNotFoundError(f"{str(folder)!r} holds no W_enc_{{l}}.safetensors files")
    n_layers = max([*enc, *dec]) + 1
    for layer in range(n_layers):
        if layer not in enc and layer not in dec:
            raise ValueError(
                f"{str(folder / f'W_enc_{layer}.safetensors')!r} and W_dec_{layer}.safetensors are "
                f"missing: layer files must be numbered 0 ... {n_layers - 1} (found encoder layers "
                f"{_ranges(enc)}, decoder layers {_ranges(dec)})"
            )
        for have, other, other_which in ((enc, dec, "dec"), (dec, enc, "enc")):
            if layer in have and layer not in other:
                raise ValueError(
                    f"{str(have[layer])!r} has no matching W_{other_which}_{layer}.safetensors "
                    f"in {str(folder)!r} (encoder layers {_ranges(enc)}, decoder layers "
                    f"{_ranges(dec)}): a layer file is missing or extra"
                )
    heads = {layer: _header(enc[layer]) for layer in range(n_layers)}
    dec_heads = {layer: _header(dec[layer]) for layer in range(n_layers)}
    for layer in range(n_layers):
        _check_keys(
            enc[layer],
            heads[layer],
            {f"W_enc_{layer}", f"b_enc_{layer}", f"b_dec_{layer}"},
            {f"threshold_{layer}"},
        )
        _check_keys(dec[layer], dec_heads[layer], {f"W_dec_{layer}"}, set())
    d_sae, d_in = _shape(heads[0], enc[0], "W_enc_0", 2)
    (d_out,) = _shape(heads[0], enc[0], "b_dec_0", 1)
    has_threshold = "threshold_0" in heads[0]
    for layer in range(n_layers):
        path, head = enc[layer], heads[layer]
        if (f"threshold_{layer}" in head) != has_threshold:
            first = "W_enc_0.safetensors"
            raise ValueError(
                f"{str(path)!r}: threshold_{layer} is {'present' if not has_threshold else 'absent'}"
                f" but threshold_0 in {first} is {'present' if has_threshold else 'absent'}; "
                "JumpReLU thresholds must be given for every layer or for none"
            )
        expected = {
            f"W_enc_{layer}": ((d_sae, d_in), "(d_transcoder, d_model) as W_enc_0"),
            f"b_enc_{layer}": ((d_sae,), "(d_transcoder,)"),
            f"b_dec_{layer}": ((d_out,), "(d_model,) as b_dec_0"),
        }
        if has_threshold:
            expected[f"threshold_{layer}"] = ((d_sae,), "(d_transcoder,)")
        for key, (shape, meaning) in expected.items():
            _expect(path, head, key, shape, meaning)
        _expect(
            dec[layer],
            dec_heads[layer],
            f"W_dec_{layer}",
            (d_sae, n_layers - layer, d_out),
            f"(d_transcoder, n_layers - {layer}, d_model) for a {n_layers}-layer CLT",
        )
    dtype = _DTYPES[heads[0]["W_enc_0"][1]]
    return CLTFiles(
        folder=folder,
        n_layers=n_layers,
        d_sae=d_sae,
        d_in=d_in,
        d_out=d_out,
        dtype=dtype,
        has_threshold=has_threshold,
        config=read_config_yaml(folder),
    )


def save_clt_folder(
    folder: str | Path,
    *,
    W_enc: Sequence[torch.Tensor],
    b_enc: Sequence[torch.Tensor],
    b_dec: Sequence[torch.Tensor],
    W_dec: Sequence[torch.Tensor],
    threshold: Sequence[torch.Tensor] | None = None,
    input_hook: str | None = None,
    output_hook: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Write a CLT in the public per-layer layout.

    Args:
        folder: Output folder (created).
        W_enc: Per layer ``(F, d_in)`` (the public layout's orientation).
        b_enc: Per layer ``(F,)``.
        b_dec: Per layer ``(d_out,)``.
        W_dec: Per layer ``(F, L - l, d_out)``.
        threshold: Optional per layer ``(F,)``.
        input_hook, output_hook: Hook suffixes for ``config.yaml`` (written when given).
        model_name: Optional ``model_name`` for ``config.yaml``.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for layer in range(len(W_enc)):
        tensors = {
            f"W_enc_{layer}": W_enc[layer],
            f"b_enc_{layer}": b_enc[layer],
            f"b_dec_{layer}": b_dec[layer],
        }
        if threshold is not None:
            tensors[f"threshold_{layer}"] = threshold[layer]
        save_file(_plain(tensors), str(folder / f"W_enc_{layer}.safetensors"))
        save_file(
            _plain({f"W_dec_{layer}": W_dec[layer]}), str(folder / f"W_dec_{layer}.safetensors")
        )
    cfg: dict[str, Any] = {"model_kind": "cross_layer_transcoder"}
    if model_name is not None:
        cfg["model_name"] = model_name
    if input_hook is not None:
        cfg["feature_input_hook"] = input_hook
    if output_hook is not None:
        cfg["feature_output_hook"] = output_hook
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    logger.info("wrote a %d-layer CLT to %s", len(W_enc), folder)
    return folder


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """``[lo, hi)`` runs of consecutive ids in a sorted list without repeats."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``key -> (shape, dtype code)`` from a safetensors header."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
            out = {}
            for key in f.keys():  # noqa: SIM118
                sl = f.get_slice(key)
                out[key] = (tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype()))
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc
    for key, (_, code) in out.items():
        if code not in _DTYPES:
            raise ValueError(
                f"{str(path)!r}: {key} has dtype {code}; CLT weights must be floating point "
                f"({', '.join(_DTYPES)})"
            )
    return out


def _check_keys(path: Path, head: dict, required: set[str], optional: set[str]) -> None:
    missing = sorted(required - set(head))
    unknown = sorted(set(head) - required - optional)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unknown:
            parts.append(f"unknown keys {unknown}")
        expect = ", ".join(sorted(required))
        if optional:
            expect += f" and optionally {', '.join(sorted(optional))}"
        raise ValueError(f"{str(path)!r}: {'; '.join(parts)}; expected {expect}")


def _shape(head: dict, path: Path, key: str, ndim: int) -> tuple[int, ...]:
    if key not in head:
        raise ValueError(f"{str(path)!r}: missing key {key!r}")
    shape = head[key][0]
    if len(shape) != ndim:
        raise ValueError(f"{str(path)!r}: {key} has shape {shape}; expected {ndim} dimensions")
    return shape


def _expect(path: Path, head: dict, key: str, shape: tuple[int, ...], meaning: str) -> None:
    got = head[key][0]
    if got != shape:
        raise ValueError(
            f"{str(path)!r}: {key} has shape {got}; expected {shape} ({meaning}); "
            "the layer files disagree with each other"
        )


def _ranges(layers: dict[int, Path]) -> str:
    if not layers:
        return "none"
    return ", ".join(str(layer) for layer in sorted(layers))
