"""Transcoder configs: named YAML cards saying which transcoders go with which model, and how.

A *transcoder config* is a small YAML file (the shipped ones live in the top-level
``transcoder_configs`` package, one file per config, the config's name being the file name
without ``.yaml``). It names the model (a TransformerLens name), the kind of transcoders
(``per_layer`` or ``cross_layer``), the hooks they read and write, and where the weights come from:

* a SAELens release and one ``sae_id`` per layer (loaded with ``SAE.from_pretrained``),
* a Hugging Face repository and its file layout (per-layer files, or a CLT folder),
* a local folder, or a folder shipped as package data.

``sae_circuits.load_transcoders(name_or_yaml_path)`` and ``sae_circuits.models.load_model(name)``
accept config names and YAML paths. The schema, with every key, is in ``docs/configs.md``; an
example::

    description: GemmaScope transcoders for Gemma-2-2B (16k features, lowest L0 per layer)
    model: gemma-2-2b
    kind: per_layer
    n_layers: 26
    d_model: 2304
    hooks: {input: ln2.hook_normalized, output: hook_mlp_out}
    source:
      saelens_release: gemma-scope-2b-pt-transcoders
      sae_ids: [layer_0/width_16k/average_l0_76, ...]
    neuronpedia: {model: gemma-2-2b, source_set: gemmascope-transcoder-16k}

Example:
    >>> from sae_circuits.transcoders.configs import get_config, list_configs
    >>> sorted(list_configs())[:2]
    ['gemma-2-2b-clt-2.5m', 'gemma-2-2b-clt-426k']
    >>> get_config("gemma-2-2b-gemmascope").source.release
    'gemma-scope-2b-pt-transcoders'
"""

from __future__ import annotations

import difflib
import importlib
import importlib.resources
import logging
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from sae_circuits.core.hooks import INPUT_HOOK_SUFFIXES, OUTPUT_HOOK_SUFFIXES
from sae_circuits.transcoders._sizes import Sizes

__all__ = [
    "CONFIG_PACKAGE",
    "HubSource",
    "LocalSource",
    "NeuronpediaIds",
    "SAELensSource",
    "TranscoderHooks",
    "TranscoderSetConfig",
    "check_saelens_source",
    "configs_markdown_table",
    "get_config",
    "list_configs",
    "load_config",
    "parse_config",
    "resolve_config",
    "unknown_config_error",
]

logger = logging.getLogger(__name__)

#: The package holding the shipped ``*.yaml`` configs.
CONFIG_PACKAGE = "transcoder_configs"

Kind = Literal["per_layer", "cross_layer"]
#: File formats of per-layer files in a Hugging Face repository (``source.format``).
LayerFormat = Literal["circuit_tracer", "gemmascope_npz", "saelens"]
#: Activations a ``circuit_tracer`` source may declare (``source.activation``); ReLU and JumpReLU
#: are read from the files (a threshold tensor or none).
SourceActivation = Literal["topk"]

_TOP_REQUIRED = ("description", "model", "kind", "n_layers", "hooks", "source")
_TOP_OPTIONAL = ("d_model", "neuronpedia", "model_kwargs")
_SOURCE_KEYS = {
    "saelens": (("saelens_release", "sae_ids"), ()),
    "hub": (("repo",), ("revision", "files", "format", "subfolder", "activation", "k")),
    "local": (("path",), ("package",)),
}


@dataclass(frozen=True)
class TranscoderHooks:
    """Hook suffixes (relative to ``blocks.{layer}.``) the transcoders read and write.

    Attributes:
        input: e.g. ``"ln2.hook_normalized"``, ``"mlp.hook_in"``, ``"hook_resid_mid"``.
        output: e.g. ``"hook_mlp_out"``, ``"mlp.hook_out"``.
    """

    input: str
    output: str


@dataclass(frozen=True)
class SAELensSource:
    """Per-layer transcoders from the SAELens registry (``SAE.from_pretrained``).

    Attributes:
        release: A release of SAELens' ``pretrained_saes.yaml``.
        sae_ids: One ``sae_id`` per layer (index = layer).
    """

    release: str
    sae_ids: tuple[str, ...]


@dataclass(frozen=True)
class HubSource:
    """Weights in a Hugging Face repository.

    Attributes:
        repo: ``"org/name"``.
        revision: Branch, tag or commit (``None``: ``main``).
        files: Per-layer only: the file of each layer, with ``{layer}``
            (e.g. ``"layer_{layer}.safetensors"``; a folder for ``format: saelens``).
        format: Per-layer only: how those files are written (see :data:`LayerFormat`).
        subfolder: Cross-layer only: the folder of the CLT inside the repository.
        activation: ``format: circuit_tracer`` only: ``"topk"`` for TopK transcoders (as
            circuit-tracer's ``activation: topk`` in the release's ``config.yaml``, which is read
            too when present); ``None``: what the release's ``config.yaml`` says, else ReLU or
            JumpReLU as the files say.
        k: With ``activation: topk``: features kept per position (circuit-tracer's ``k``); needed
            when the release's ``config.yaml`` does not give it.
    """

    repo: str
    revision: str | None = None
    files: str | None = None
    format: LayerFormat | None = None
    subfolder: str | None = None
    activation: SourceActivation | None = None
    k: int | None = None

    def layer_file(self, layer: int) -> str:
        """The repository path of ``layer``'s file (per-layer sources)."""
        if self.files is None:
            raise ValueError(f"{self.repo}: no per-layer 'files' template")
        return self.files.replace("{layer}", str(layer))


@dataclass(frozen=True)
class LocalSource:
    """Weights in a local folder, or a folder shipped as package data.

    Attributes:
        path: The folder; relative paths are relative to ``package``'s folder if ``package`` is
            given, else to the YAML file's folder.
        package: Optional importable package the path is relative to (``importlib.resources``).
    """

    path: str
    package: str | None = None


Source = SAELensSource | HubSource | LocalSource


@dataclass(frozen=True)
class NeuronpediaIds:
    """Neuronpedia ids of the features: layer ``l`` is ``f"{model}/{l}-{source_set}"``.

    Attributes:
        model: Neuronpedia model id (the graph ``scan``), e.g. ``"gemma-2-2b"``.
        source_set: Neuronpedia source set, e.g. ``"gemmascope-transcoder-16k"``.
    """

    model: str
    source_set: str

    def layer_id(self, layer: int) -> str:
        return f"{self.model}/{layer}-{self.source_set}"


@dataclass(frozen=True)
class TranscoderSetConfig:
    """A validated transcoder config (see the module docstring and ``docs/configs.md``).

    Attributes:
        name: The config's name (the YAML file name without ``.yaml``).
        description: One line for humans.
        model: TransformerLens name of the model the transcoders were trained on.
        kind: ``"per_layer"`` or ``"cross_layer"``.
        n_layers: Number of layers covered (the model's layer count).
        hooks: Input/output hook suffixes.
        source: Where the weights come from.
        d_model: The model's width, when known (checked against the loaded weights).
        neuronpedia: Neuronpedia ids of the features, when known.
        model_kwargs: Extra keyword arguments for
            ``HookedTransformer.from_pretrained_no_processing`` (``load_model``).
        path: The YAML file it was read from (``None`` if built in code).
    """

    name: str
    description: str
    model: str
    kind: Kind
    n_layers: int
    hooks: TranscoderHooks
    source: Source
    d_model: int | None = None
    neuronpedia: NeuronpediaIds | None = None
    model_kwargs: Mapping[str, Any] = field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )
    path: Path | None = field(default=None, compare=False)

    @property
    def where(self) -> str:
        """How to name this config in messages (its file, else its name)."""
        return str(self.path) if self.path is not None else f"transcoder config {self.name!r}"

    def sizes(self) -> Sizes:
        """Layer count and width the config promises, for the fit check."""
        return Sizes(
            f"transcoder config {self.name!r}",
            self.n_layers,
            self.d_model,
            self.d_model,
            width_name="d_model",
        )

    def neuronpedia_id(self, layer: int) -> str | None:
        """Neuronpedia id of ``layer``'s features (``None`` when unknown)."""
        return self.neuronpedia.layer_id(layer) if self.neuronpedia is not None else None


# -- parsing ---------------------------------------------------------------------------------


def _fail(where: str, what: str) -> ValueError:
    return ValueError(f"{where}: {what}")


def _check_keys(
    raw: Mapping[str, Any], where: str, section: str, required: tuple[str, ...], optional=()
) -> None:
    valid = (*required, *optional)
    label = f"in {section!r}" if section else "at the top level"
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(
                where,
                f"unknown key {key!r} {label}{hint}; valid keys: {', '.join(valid)}",
            )
    for key in required:
        if key not in raw:
            raise _fail(where, f"missing key {key!r} {label}; required keys: {', '.join(required)}")


def _str(raw: Mapping[str, Any], key: str, where: str, section: str = "") -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        name = f"{section}.{key}" if section else key
        raise _fail(where, f"{name!r} must be a non-empty string, got {value!r}")
    return value


def _opt_str(raw: Mapping[str, Any], key: str, where: str, section: str) -> str | None:
    return None if raw.get(key) is None else _str(raw, key, where, section)


def _mapping(value: Any, where: str, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"{name!r} must be a mapping of keys to values, got {value!r}")
    return value


def _int(raw: Mapping[str, Any], key: str, where: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(where, f"{key!r} must be a positive integer, got {value!r}")
    return value


def _hooks(raw: Any, where: str) -> TranscoderHooks:
    raw = _mapping(raw, where, "hooks")
    _check_keys(raw, where, "hooks", ("input", "output"))
    out = []
    for key, allowed in (("input", INPUT_HOOK_SUFFIXES), ("output", OUTPUT_HOOK_SUFFIXES)):
        value = _str(raw, key, where, "hooks")
        if value not in allowed:
            raise _fail(
                where,
                f"hooks.{key} is {value!r}; it must be a hook suffix relative to "
                f"blocks.{{layer}}., one of: {', '.join(allowed)}",
            )
        out.append(value)
    return TranscoderHooks(*out)


def _source(raw: Any, where: str, kind: Kind, n_layers: int) -> Source:
    raw = _mapping(raw, where, "source")
    forms = [form for form, (req, _) in _SOURCE_KEYS.items() if req[0] in raw]
    if len(forms) != 1:
        firsts = " / ".join(repr(req[0]) for req, _ in _SOURCE_KEYS.values())
        found = "none of them" if not forms else " and ".join(repr(f) for f in forms)
        raise _fail(
            where,
            f"'source' must have exactly one of the keys {firsts} (SAELens release, Hugging Face "
            f"repository, local folder); found {found}",
        )
    form = forms[0]
    required, optional = _SOURCE_KEYS[form]
    _check_keys(raw, where, "source", required, optional)
    if form == "saelens":
        if kind != "per_layer":
            raise _fail(
                where,
                "a SAELens release provides per-layer transcoders only (SAELens has no "
                "cross-layer transcoder release); use 'repo' (e.g. mntss/clt-gemma-2-2b-426k) "
                "for kind: cross_layer",
            )
        ids = raw["sae_ids"]
        if isinstance(ids, str) and "{layer}" in ids:
            sae_ids = tuple(ids.replace("{layer}", str(layer)) for layer in range(n_layers))
        elif isinstance(ids, list) and all(isinstance(i, str) and i for i in ids):
            if len(ids) != n_layers:
                raise _fail(
                    where, f"source.sae_ids has {len(ids)} entries but n_layers is {n_layers}"
                )
            sae_ids = tuple(ids)
        else:
            raise _fail(
                where,
                "source.sae_ids must be a list of one sae_id per layer or a template with "
                f"'{{layer}}' (e.g. 'layer_{{layer}}'), got {ids!r}",
            )
        return SAELensSource(_str(raw, "saelens_release", where, "source"), sae_ids)
    if form == "local":
        return LocalSource(
            _str(raw, "path", where, "source"), _opt_str(raw, "package", where, "source")
        )
    revision = raw.get("revision")
    if revision is not None and not isinstance(revision, str):
        revision = str(revision)  # e.g. a numeric tag
    k = raw.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
        raise _fail(
            where,
            f"source.k must be a positive integer (the TopK k, at most d_sae), got {k!r}",
        )
    src = HubSource(
        repo=_str(raw, "repo", where, "source"),
        revision=revision,
        files=_opt_str(raw, "files", where, "source"),
        format=_opt_str(raw, "format", where, "source"),  # type: ignore[arg-type]
        subfolder=_opt_str(raw, "subfolder", where, "source"),
        activation=_opt_str(raw, "activation", where, "source"),  # type: ignore[arg-type]
        k=k,
    )
    if src.repo.count("/") != 1:
        raise _fail(where, f"source.repo must be 'org/name', got {src.repo!r}")
    if kind == "per_layer":
        if src.files is None or "{layer}" not in src.files:
            raise _fail(
                where,
                "a per-layer Hugging Face source needs source.files, the path of each layer's "
                "file with '{layer}' (e.g. 'layer_{layer}.safetensors')",
            )
        formats = get_args(LayerFormat)
        if src.format not in formats:
            raise _fail(
                where, f"source.format is {src.format!r}; valid formats: {', '.join(formats)}"
            )
        if src.subfolder is not None:
            raise _fail(where, "source.subfolder is for cross_layer sources; put it in 'files'")
        _check_activation(src, where)
    elif src.activation is not None or src.k is not None:
        raise _fail(
            where,
            "source.activation and source.k are for per_layer sources in format circuit_tracer "
            "(cross-layer transcoders are ReLU or JumpReLU, read from their files)",
        )
    elif src.files is not None or src.format is not None:
        raise _fail(
            where,
            "a cross-layer source is a folder in the public CLT layout (W_enc_{l} / "
            "W_dec_{l}.safetensors); 'files' and 'format' are for per_layer sources "
            "(use 'subfolder' for a folder inside the repository)",
        )
    return src


def _check_activation(src: HubSource, where: str) -> None:
    """``source.activation`` / ``source.k`` of a per-layer Hugging Face source."""
    if src.activation is not None:
        valid = get_args(SourceActivation)
        if src.activation not in valid:
            raise _fail(
                where,
                f"source.activation is {src.activation!r}; valid: {', '.join(valid)} (ReLU and "
                "JumpReLU need no key: they are read from the files)",
            )
        if src.format != "circuit_tracer":
            raise _fail(
                where,
                f"source.activation is for format circuit_tracer, not {src.format!r} (a saelens "
                "folder's cfg.json names its architecture and k)",
            )
    elif src.k is not None:
        raise _fail(where, f"source.k ({src.k}) is given without source.activation: topk")


def parse_config(raw: Any, *, name: str, path: Path | None = None) -> TranscoderSetConfig:
    """Validate a config mapping (a parsed YAML file).

    Args:
        raw: The mapping.
        name: The config's name.
        path: The file it came from (for messages and relative paths).

    Returns:
        The config.

    Raises:
        ValueError: Unknown or missing keys, wrong types or values; the message names the file
            and the key (and the valid keys or values).
    """
    where = str(path) if path is not None else f"transcoder config {name!r}"
    raw = _mapping(raw, where, "the config")
    _check_keys(raw, where, "", _TOP_REQUIRED, _TOP_OPTIONAL)
    kind = raw["kind"]
    if kind not in get_args(Kind):
        raise _fail(where, f"'kind' is {kind!r}; valid kinds: {', '.join(get_args(Kind))}")
    n_layers = _int(raw, "n_layers", where)
    neuronpedia = None
    if raw.get("neuronpedia") is not None:
        np_raw = _mapping(raw["neuronpedia"], where, "neuronpedia")
        _check_keys(np_raw, where, "neuronpedia", ("model", "source_set"))
        neuronpedia = NeuronpediaIds(
            _str(np_raw, "model", where, "neuronpedia"),
            _str(np_raw, "source_set", where, "neuronpedia"),
        )
    model_kwargs = _mapping(raw.get("model_kwargs") or {}, where, "model_kwargs")
    return TranscoderSetConfig(
        name=name,
        description=_str(raw, "description", where),
        model=_str(raw, "model", where),
        kind=kind,
        n_layers=n_layers,
        hooks=_hooks(raw["hooks"], where),
        source=_source(raw["source"], where, kind, n_layers),
        d_model=_int(raw, "d_model", where) if raw.get("d_model") is not None else None,
        neuronpedia=neuronpedia,
        model_kwargs=types.MappingProxyType({str(k): v for k, v in model_kwargs.items()}),
        path=path,
    )


def load_config(path: str | os.PathLike[str]) -> TranscoderSetConfig:
    """Read and validate one YAML config file (its name is the file name without ``.yaml``).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Invalid YAML or an invalid config (the message names the file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transcoder config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(raw, name=path.name.rsplit(".", 1)[0], path=path)


# -- the shipped configs ---------------------------------------------------------------------


def _config_dir() -> Path:
    """Folder of the shipped configs: the installed package, else the source checkout's."""
    try:
        root = importlib.resources.files(CONFIG_PACKAGE)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / CONFIG_PACKAGE
        if checkout.is_dir():
            logger.debug("%s is not installed; reading configs from %s", CONFIG_PACKAGE, checkout)
            return checkout
        raise FileNotFoundError(
            f"the {CONFIG_PACKAGE!r} package with the shipped transcoder configs is not "
            "installed (reinstall sae-circuits)"
        ) from None
    return Path(str(root))


@lru_cache(maxsize=1)
def _shipped() -> dict[str, TranscoderSetConfig]:
    folder = _config_dir()
    configs = [load_config(p) for p in folder.glob("*.yaml")]
    return {c.name: c for c in sorted(configs, key=lambda c: c.name)}


def list_configs() -> dict[str, TranscoderSetConfig]:
    """The shipped configs by name (sorted)."""
    return dict(_shipped())


def unknown_config_error(name: str) -> ValueError:
    """The error for a name that is no config: lists the valid names and close matches."""
    names = sorted(_shipped())
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return ValueError(
        f"unknown transcoder config {name!r}{hint}. Valid config names: {', '.join(names)}; "
        "or pass the path of a YAML config file or of a folder of transcoders"
    )


def get_config(name: str) -> TranscoderSetConfig:
    """A shipped config by name.

    Raises:
        ValueError: No such config (the message lists valid names and close matches).
    """
    configs = _shipped()
    if name not in configs:
        raise unknown_config_error(name)
    return configs[name]


def resolve_config(name_or_path: str | os.PathLike[str]) -> TranscoderSetConfig:
    """A config from a shipped name or a YAML file path (``*.yaml`` / ``*.yml``)."""
    text = os.fspath(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text:
        return load_config(text)
    return get_config(text)


def check_saelens_source(config: TranscoderSetConfig) -> None:
    """Check a SAELens source against SAELens' registry (release, sae_ids, Neuronpedia ids).

    Raises:
        ValueError: Unknown release or sae_id, or Neuronpedia ids that disagree with SAELens'.
    """
    src = config.source
    if not isinstance(src, SAELensSource):
        return
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if src.release not in directory:
        close = difflib.get_close_matches(src.release, list(directory), n=3, cutoff=0.5)
        hint = f" (close matches: {', '.join(close)})" if close else ""
        raise _fail(
            config.where,
            f"source.saelens_release {src.release!r} is not a release of SAELens' "
            f"pretrained_saes.yaml{hint}",
        )
    lookup = directory[src.release]
    for layer, sae_id in enumerate(src.sae_ids):
        if sae_id not in lookup.saes_map:
            close = difflib.get_close_matches(sae_id, list(lookup.saes_map), n=3, cutoff=0.5)
            raise _fail(
                config.where,
                f"layer {layer}: sae_id {sae_id!r} is not in SAELens release {src.release!r}"
                + (f" (close matches: {', '.join(close)})" if close else ""),
            )
        known = lookup.neuronpedia_id.get(sae_id)
        mine = config.neuronpedia_id(layer)
        if known and mine and known != mine:
            raise _fail(
                config.where,
                f"layer {layer}: Neuronpedia id {mine!r} differs from SAELens' {known!r} for "
                f"{src.release}/{sae_id}",
            )


def _source_text(config: TranscoderSetConfig) -> str:
    src = config.source
    if isinstance(src, SAELensSource):
        return f"SAELens `{src.release}`"
    if isinstance(src, HubSource):
        rev = f"@{src.revision}" if src.revision else ""
        sub = f"/{src.subfolder}" if src.subfolder else ""
        topk = f" (TopK, k = {src.k})" if src.activation == "topk" and src.k else ""
        return f"HF `{src.repo}{rev}{sub}`{topk}"
    return f"package `{src.package}/{src.path}`" if src.package else f"folder `{src.path}`"


def configs_markdown_table() -> str:
    """The Markdown table of the shipped configs (as in ``docs/configs.md``)."""
    rows = [
        "| name | model | kind | layers | hooks (input -> output) | weights | Neuronpedia |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in _shipped().items():
        npd = f"`{c.neuronpedia.model}/{{l}}-{c.neuronpedia.source_set}`" if c.neuronpedia else "-"
        rows.append(
            f"| `{name}` | `{c.model}` | {c.kind} | {c.n_layers} | "
            f"`{c.hooks.input}` -> `{c.hooks.output}` | {_source_text(c)} | {npd} |"
        )
    return "\n".join(rows)


def package_folder(package: str) -> Path:
    """The folder of an importable package on the file system.

    Raises:
        ValueError: The package cannot be imported or is not on the file system.
    """
    try:
        root = importlib.resources.files(importlib.import_module(package))
    except ModuleNotFoundError as exc:
        raise ValueError(f"source.package {package!r} cannot be imported: {exc}") from exc
    folder = Path(str(root))
    if not folder.is_dir():
        raise ValueError(f"package {package!r} is not a folder on the file system ({root})")
    return folder
