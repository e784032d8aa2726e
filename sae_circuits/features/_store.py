"""The feature files: one JSON per feature, and an ``index.json`` for the folder.

The format (``docs/features.md``) is a superset of the feature files circuit-tracer's local
viewer reads (``top_logits``, ``bottom_logits``, ``act_min``, ``act_max``, ``examples_quantiles``
with ``quantile_name`` and ``examples`` of ``tokens`` / ``tokens_acts_list`` /
``train_token_ind``), with what Neuronpedia's dashboards add (density, the activation
histogram, logit effect values, a label). A folder holds ``index.json`` and ``{layer}_{feature}.json``
(the Neuronpedia node id's ``layer_feature`` prefix).

Example:
    >>> write_feature_file("out/features", record)
    >>> read_feature_file("out/features", layer=2, feature=17)["density"]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sae_circuits.core.files import atomic_write, atomic_write_many

__all__ = [
    "FORMAT",
    "FeatureFileError",
    "feature_path",
    "read_feature_file",
    "read_index",
    "write_feature_file",
    "write_feature_files",
    "write_index",
]

#: The ``format`` field of every file this version writes.
FORMAT = "sae-circuits-features/1"

#: Largest feature file read back (the viewer refuses bigger ones).
MAX_FILE_BYTES = 8 * 2**20


class FeatureFileError(ValueError):
    """A feature file (or folder index) that cannot be read; the message says which and why."""


def feature_path(folder: str | Path, layer: int, feature: int) -> Path:
    """``folder/{layer}_{feature}.json``."""
    return Path(folder) / f"{int(layer)}_{int(feature)}.json"


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def write_feature_file(folder: str | Path, record: dict[str, Any]) -> Path:
    """Write one feature's record atomically (see :func:`read_feature_file` for the fields)."""
    path = feature_path(folder, record["layer"], record["feature"])
    body = _dump(record)
    return atomic_write(path, lambda f: f.write(body))


def write_feature_files(folder: str | Path, records: list[dict[str, Any]]) -> int:
    """Write many features' records, each file untouched or complete, with one flush for all."""
    files = {feature_path(".", r["layer"], r["feature"]).name: _dump(r) for r in records}
    return len(atomic_write_many(folder, files))


def write_index(folder: str | Path, index: dict[str, Any]) -> Path:
    """Write ``folder/index.json`` atomically."""
    body = _dump({"format": FORMAT, **index})
    return atomic_write(Path(folder) / "index.json", lambda f: f.write(body))


def read_index(folder: str | Path) -> dict[str, Any]:
    """``folder/index.json``, checked.

    Raises:
        FileNotFoundError: No index.
        FeatureFileError: Not a feature folder index of this format.
    """
    path = Path(folder) / "index.json"
    obj = _load(path)
    if obj.get("format") != FORMAT:
        raise FeatureFileError(f"{path}: format {obj.get('format')!r}, expected {FORMAT!r}")
    return obj


def _load(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise FeatureFileError(f"{path.name} is {size} bytes, more than {MAX_FILE_BYTES}")
    try:
        obj = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeatureFileError(f"{path.name} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise FeatureFileError(f"{path.name} must hold a JSON object")
    return obj


def _numbers(obj: dict[str, Any], key: str, name: str, *, length: int | None = None) -> list:
    value = obj.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise FeatureFileError(f"{name}: {key!r} must be a list of finite numbers")
    if length is not None and len(value) != length:
        raise FeatureFileError(f"{name}: {key!r} has {len(value)} entries, expected {length}")
    return value


def _check_example(ex: Any, name: str) -> None:
    if not isinstance(ex, dict):
        raise FeatureFileError(f"{name}: every example must be an object")
    tokens = ex.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise FeatureFileError(f"{name}: an example's 'tokens' must be a list of strings")
    _numbers(ex, "tokens_acts_list", name, length=len(tokens))


def read_feature_file(folder: str | Path, *, layer: int, feature: int) -> dict[str, Any]:
    """One feature's record, checked.

    Fields (all present in files this package writes; ``docs/features.md``): ``format``,
    ``layer``, ``feature``, ``index`` (= ``feature``), ``label`` (text or ``null``),
    ``density``, ``n_tokens``, ``act_min``, ``act_max``, ``mean_act`` (over active tokens),
    ``histogram`` (``{"bin_edges": [B+1], "counts": [B]}``), ``top_logits`` / ``bottom_logits``
    (token strings), ``top_logit_values`` / ``bottom_logit_values``, ``examples_quantiles``
    (``[{"quantile_name", "examples": [{"tokens", "tokens_acts_list", "train_token_ind",
    "is_repeated_datapoint", "window"}]}]``, the first band "Top activations").

    Raises:
        FileNotFoundError: No file for that feature.
        FeatureFileError: A file that is not such a record (the message says what is wrong).
    """
    path = feature_path(folder, layer, feature)
    obj = _load(path)
    name = path.name
    if obj.get("format") != FORMAT:
        raise FeatureFileError(f"{name}: format {obj.get('format')!r}, expected {FORMAT!r}")
    if obj.get("layer") != layer or obj.get("feature") != feature:
        raise FeatureFileError(
            f"{name}: holds layer {obj.get('layer')} feature {obj.get('feature')}"
        )
    density = obj.get("density")
    if not isinstance(density, (int, float)) or not 0 <= density <= 1:
        raise FeatureFileError(f"{name}: 'density' must be a number in [0, 1]")
    hist = obj.get("histogram")
    if not isinstance(hist, dict):
        raise FeatureFileError(f"{name}: 'histogram' must be an object")
    counts = _numbers(hist, "counts", name)
    _numbers(hist, "bin_edges", name, length=len(counts) + 1)
    for side in ("top", "bottom"):
        logits = obj.get(f"{side}_logits")
        if not isinstance(logits, list) or not all(isinstance(t, str) for t in logits):
            raise FeatureFileError(f"{name}: '{side}_logits' must be a list of strings")
        _numbers(obj, f"{side}_logit_values", name, length=len(logits))
    bands = obj.get("examples_quantiles")
    if not isinstance(bands, list):
        raise FeatureFileError(f"{name}: 'examples_quantiles' must be a list")
    for band in bands:
        if not isinstance(band, dict) or not isinstance(band.get("quantile_name"), str):
            raise FeatureFileError(f"{name}: every quantile band needs a 'quantile_name'")
        examples = band.get("examples")
        if not isinstance(examples, list):
            raise FeatureFileError(f"{name}: a band's 'examples' must be a list")
        for ex in examples:
            _check_example(ex, name)
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise FeatureFileError(f"{name}: 'label' must be text or null")
    return obj


def circuit_tracer_index(layer: int, feature: int) -> int:
    """The feature number circuit-tracer's viewer uses: the Cantor pairing of (layer, feature).

    circuit-tracer 0.5.0's ``Node.feature_node`` writes ``(l + f)(l + f + 1) / 2 + f`` into a
    node's ``feature`` field and its frontend reads ``{scan}/{that number}.json``.
    """
    s = int(layer) + int(feature)
    return s * (s + 1) // 2 + int(feature)


def export_circuit_tracer(folder: str | Path, out: str | Path) -> int:
    """Copy a feature folder into circuit-tracer's local layout: ``out/{cantor}.json``.

    Our files hold every field circuit-tracer's feature panel reads (``examples_quantiles``,
    ``top_logits``, ``bottom_logits``, ``act_min``, ``act_max``) under the same names, so each is
    written as it is, renamed to :func:`circuit_tracer_index` of its layer and feature. Serve
    ``out``'s parent with circuit-tracer's ``serve(data_dir, features_dir=...)`` and the graph's
    ``scan`` set to the folder's name (its frontend then fetches ``/features/{scan}/N.json``).

    Args:
        folder: A feature folder (``index.json`` and ``{layer}_{feature}.json``).
        out: Where to write (created; existing files of the same names are replaced).

    Returns:
        The number of files written.

    Raises:
        FileNotFoundError, FeatureFileError: ``folder`` is not a feature folder of this format.
    """
    read_index(folder)
    files = {}
    for path in sorted(Path(folder).glob("*_*.json")):
        layer, _, feature = path.stem.partition("_")
        if not (layer.isdigit() and feature.isdigit()):
            continue
        record = read_feature_file(folder, layer=int(layer), feature=int(feature))
        files[f"{circuit_tracer_index(int(layer), int(feature))}.json"] = _dump(record)
    Path(out).mkdir(parents=True, exist_ok=True)
    return len(atomic_write_many(out, files))
