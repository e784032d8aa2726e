"""User annotations of a graph folder: node labels, supernodes and pinned nodes.

The viewer saves what a user adds to a graph in ``annotations.json`` next to the graph files::

    {"format": "sae_circuits.viewer_annotations", "version": 1, "revision": 7,
     "labels": {"1_17_3": "Texas"},
     "supernodes": {"sn-4f2a": {"label": "say a capital", "members": ["3_5_8", "3_9_8"]}},
     "pinned": ["1_17_3", "E_42_3"]}

Changes arrive as *patches* that name only what they change, and are merged field by field
under a lock, so two browser tabs (or two people) saving at the same time lose nothing::

    {"labels": {"1_17_3": "Texas", "0_4_2": null},           # set / remove labels
     "supernodes": {"sn-4f2a": {"label": "...", "members": [...]}, "sn-old": null},
     "pinned": {"add": ["1_17_3"], "remove": ["E_42_3"]}}

Every patch is validated (:func:`validate_patch`: known keys only, types, id syntax, string
lengths, counts) before anything is written, and the merged document is written atomically
(temporary file, ``fsync``, ``os.replace``), so a failed or concurrent save never leaves a
half-written file. Between processes (two servers on one folder) an ``fcntl`` lock on
``.annotations.lock`` serialises writers where the platform has one.

Example:
    >>> store = AnnotationStore(Path("out"))
    >>> store.update({"labels": {"1_17_3": "Texas"}})["labels"]
    {'1_17_3': 'Texas'}
    >>> store.read()["revision"]
    1
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_circuits.core.files import atomic_write

try:  # POSIX only; elsewhere writers in one process are still serialised by a thread lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ANNOTATIONS_FILE",
    "AnnotationError",
    "AnnotationFileError",
    "AnnotationLimits",
    "AnnotationStore",
    "apply_patch",
    "empty_annotations",
    "validate_annotations",
    "validate_patch",
]

logger = logging.getLogger(__name__)

ANNOTATIONS_FILE = "annotations.json"
_LOCK_FILE = ".annotations.lock"
FORMAT_NAME = "sae_circuits.viewer_annotations"
FORMAT_VERSION = 1
#: Node ids: Neuronpedia's ``{layer}_{feature}_{position}``, ``E_{token}_{position}``, ... .
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
#: Supernode ids, chosen by the client (``sn-`` + random hex in the viewer).
SUPERNODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PATCH_KEYS = frozenset({"labels", "supernodes", "pinned"})


class AnnotationError(ValueError):
    """A patch or annotation document that breaks the schema (the message says where)."""


class AnnotationFileError(RuntimeError):
    """``annotations.json`` exists but cannot be read; it is left untouched."""


@dataclass(frozen=True)
class AnnotationLimits:
    """Size limits of annotations (per patch and in total).

    Attributes:
        max_label_chars: Longest node or supernode label.
        max_labels: Most node labels in the document.
        max_supernodes: Most supernodes in the document.
        max_members: Most members of one supernode.
        max_pinned: Most pinned nodes.
        max_patch_items: Most entries one patch may set or remove per field.
    """

    max_label_chars: int = 200
    max_labels: int = 20_000
    max_supernodes: int = 1_000
    max_members: int = 1_000
    max_pinned: int = 5_000
    max_patch_items: int = 5_000


DEFAULT_LIMITS = AnnotationLimits()


def empty_annotations() -> dict[str, Any]:
    """A new, empty annotation document (revision 0)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "revision": 0,
        "labels": {},
        "supernodes": {},
        "pinned": [],
    }


# ---------------------------------------------------------------------------------------------
# validation


def _node_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NODE_ID.fullmatch(value):
        raise AnnotationError(
            f"{where}: {value!r:.80} is not a node id (1-64 letters, digits, '_', '.', '-', "
            "e.g. '1_17_3' or 'E_42_3')"
        )
    return value


def _label(value: Any, where: str, limits: AnnotationLimits, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: a label must be a string, got {type(value).__name__}")
    if len(value) > limits.max_label_chars:
        raise AnnotationError(
            f"{where}: label of {len(value)} characters; at most {limits.max_label_chars}"
        )
    if _CONTROL.search(value):
        raise AnnotationError(f"{where}: labels cannot hold control characters (newlines, tabs)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AnnotationError(
            f"{where}: the label is not valid Unicode text (it holds a lone surrogate, e.g. "
            "from '\\ud800' in the JSON)"
        ) from None
    if not allow_empty and not value.strip():
        raise AnnotationError(f"{where}: the label is empty")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise AnnotationError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _id_list(value: Any, where: str, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise AnnotationError(f"{where} must be a list of node ids, got {type(value).__name__}")
    if len(value) > limit:
        raise AnnotationError(f"{where} has {len(value)} entries; at most {limit}")
    ids = [_node_id(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f"{where} lists a node id twice")
    return ids


def _supernode(value: Any, where: str, limits: AnnotationLimits) -> dict[str, Any]:
    obj = _object(value, where)
    extra = set(obj) - {"label", "members"}
    if extra:
        raise AnnotationError(f"{where}: unknown keys {sorted(extra)}; valid: label, members")
    if "label" not in obj or "members" not in obj:
        raise AnnotationError(f"{where} needs both 'label' and 'members'")
    label = _label(obj["label"], f"{where}.label", limits, allow_empty=False)
    members = _id_list(obj["members"], f"{where}.members", limits.max_members)
    if not members:
        raise AnnotationError(f"{where}.members is empty; a supernode needs at least one node")
    return {"label": label, "members": members}


def validate_patch(patch: Any, limits: AnnotationLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Check a patch and return it normalised.

    Args:
        patch: The decoded JSON body (see the module docstring).
        limits: Size limits.

    Returns:
        ``{"labels": {id: str | None}, "supernodes": {id: {...} | None},
        "pinned": {"add": [...], "remove": [...]}}`` (missing fields empty).

    Raises:
        AnnotationError: Unknown keys, wrong types, bad ids, labels too long or holding control
            characters, too many entries.
    """
    obj = _object(patch, "the patch")
    extra = set(obj) - _PATCH_KEYS
    if extra:
        raise AnnotationError(
            f"unknown patch keys {sorted(extra)}; valid keys: {', '.join(sorted(_PATCH_KEYS))}"
        )
    out: dict[str, Any] = {"labels": {}, "supernodes": {}, "pinned": {"add": [], "remove": []}}
    labels = _object(obj.get("labels", {}), "labels")
    if len(labels) > limits.max_patch_items:
        raise AnnotationError(f"labels: {len(labels)} entries; at most {limits.max_patch_items}")
    for key, value in labels.items():
        _node_id(key, "labels")
        where = f"labels[{key!r}]"
        out["labels"][key] = (
            None if value is None else _label(value, where, limits, allow_empty=True)
        )
    supernodes = _object(obj.get("supernodes", {}), "supernodes")
    if len(supernodes) > limits.max_patch_items:
        raise AnnotationError(
            f"supernodes: {len(supernodes)} entries; at most {limits.max_patch_items}"
        )
    for key, value in supernodes.items():
        if not SUPERNODE_ID.fullmatch(key):
            raise AnnotationError(
                f"supernodes: {key!r:.80} is not a supernode id (1-64 letters, digits, '_', '-')"
            )
        where = f"supernodes[{key!r}]"
        out["supernodes"][key] = None if value is None else _supernode(value, where, limits)
    pinned = _object(obj.get("pinned", {}), "pinned")
    extra = set(pinned) - {"add", "remove"}
    if extra:
        raise AnnotationError(f"pinned: unknown keys {sorted(extra)}; valid: add, remove")
    for op in ("add", "remove"):
        out["pinned"][op] = _id_list(pinned.get(op, []), f"pinned.{op}", limits.max_patch_items)
    return out


def validate_annotations(doc: Any, limits: AnnotationLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Check a whole annotation document (as read from disk).

    Args:
        doc: The decoded JSON.
        limits: Size limits.

    Returns:
        The document, normalised (exactly the documented keys).

    Raises:
        AnnotationError: Not an annotation document, a newer version, or a schema violation.
    """
    obj = _object(doc, "the annotation document")
    if obj.get("format") != FORMAT_NAME:
        raise AnnotationError(f"not an annotation document (format is not {FORMAT_NAME!r})")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise AnnotationError(
            f"annotation format version {version!r}; this sae_circuits reads up to {FORMAT_VERSION}"
        )
    revision = obj.get("revision", 0)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise AnnotationError(f"invalid revision {revision!r}")
    labels = _object(obj.get("labels", {}), "labels")
    supernodes = _object(obj.get("supernodes", {}), "supernodes")
    for name, limit, n in (
        ("labels", limits.max_labels, len(labels)),
        ("supernodes", limits.max_supernodes, len(supernodes)),
    ):
        if n > limit:
            raise AnnotationError(f"{name}: {n} entries; at most {limit}")
    out = empty_annotations()
    out["revision"] = revision
    for key, value in labels.items():
        _node_id(key, "labels")
        out["labels"][key] = _label(value, f"labels[{key!r}]", limits, allow_empty=False)
    for key, value in supernodes.items():
        if not SUPERNODE_ID.fullmatch(key):
            raise AnnotationError(f"supernodes: {key!r:.80} is not a supernode id")
        out["supernodes"][key] = _supernode(value, f"supernodes[{key!r}]", limits)
    out["pinned"] = _id_list(obj.get("pinned", []), "pinned", limits.max_pinned)
    return out


def apply_patch(
    doc: Mapping[str, Any], patch: Mapping[str, Any], limits: AnnotationLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Merge a validated patch into a document, field by field.

    Labels and supernodes named in the patch are set (an empty label or ``None`` removes it);
    others are kept. Pins are a set with ``add`` then ``remove`` applied, in first-pinned order.
    The revision goes up by one.

    Args:
        doc: A valid document (:func:`validate_annotations` or :func:`empty_annotations`).
        patch: A patch from :func:`validate_patch`.
        limits: Size limits of the result.

    Returns:
        A new document.

    Raises:
        AnnotationError: The result would exceed a limit.
    """
    out = copy.deepcopy(dict(doc))
    for key, value in patch["labels"].items():
        if value is None or not value.strip():
            out["labels"].pop(key, None)
        else:
            out["labels"][key] = value
    for key, value in patch["supernodes"].items():
        if value is None:
            out["supernodes"].pop(key, None)
        else:
            out["supernodes"][key] = value
    removed = set(patch["pinned"]["remove"])
    pinned = [p for p in out["pinned"] if p not in removed]
    have = set(pinned)
    for p in patch["pinned"]["add"]:
        if p not in have and p not in removed:
            pinned.append(p)
            have.add(p)
    out["pinned"] = pinned
    for name, limit, n in (
        ("labels", limits.max_labels, len(out["labels"])),
        ("supernodes", limits.max_supernodes, len(out["supernodes"])),
        ("pinned", limits.max_pinned, len(out["pinned"])),
    ):
        if n > limit:
            raise AnnotationError(f"{name} would have {n} entries; at most {limit}")
    out["revision"] = int(out.get("revision", 0)) + 1
    return out


# ---------------------------------------------------------------------------------------------
# the store


class AnnotationStore:
    """Reads and updates ``annotations.json`` of one graph folder, safely under concurrency.

    Args:
        folder: The graph folder.
        limits: Size limits.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """

    def __init__(self, folder: str | Path, limits: AnnotationLimits = DEFAULT_LIMITS) -> None:
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} is not a folder")
        self.limits = limits
        self.path = self.folder / ANNOTATIONS_FILE
        self._lock = threading.Lock()

    def _check_path(self) -> None:
        # never follow a link out of the folder (the file is written by os.replace, which
        # replaces a link rather than its target, but reading would follow it)
        if self.path.is_symlink():
            raise AnnotationFileError(
                f"{self.path} is a symbolic link; the viewer only reads and writes a regular "
                "annotations.json inside the graph folder: replace the link by the file"
            )

    def _read_unlocked(self) -> dict[str, Any]:
        self._check_path()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return empty_annotations()
        try:
            return validate_annotations(json.loads(raw.decode("utf-8")), self.limits)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AnnotationError) as e:
            raise AnnotationFileError(
                f"{self.path} cannot be read ({e}); it was left as it is: fix or move it away "
                "to save new annotations"
            ) from e

    def read(self) -> dict[str, Any]:
        """The current document (an empty one if there is no file yet).

        Raises:
            AnnotationFileError: The file is not valid JSON / not a valid document, or a link.
        """
        with self._lock:
            return self._read_unlocked()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        with open(self.folder / _LOCK_FILE, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def update(self, patch: Any) -> dict[str, Any]:
        """Validate ``patch``, merge it into the file and write the file atomically.

        Args:
            patch: A decoded patch (see the module docstring).

        Returns:
            The merged document as written.

        Raises:
            AnnotationError: The patch is invalid or the result would exceed a limit (nothing is
                written).
            AnnotationFileError: The existing file cannot be read (nothing is written).
        """
        clean = validate_patch(patch, self.limits)
        with self._lock, self._file_lock():
            merged = apply_patch(self._read_unlocked(), clean, self.limits)
            data = json.dumps(merged, indent=1, ensure_ascii=False).encode("utf-8")
            atomic_write(self.path, lambda f: f.write(data))
        logger.info("saved annotations revision %d to %s", merged["revision"], self.path)
        return merged
