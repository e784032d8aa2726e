"""The feature dashboards the viewer shows: a folder of feature files (:mod:`sae_circuits.features`).

``sae-circuits serve DIR`` looks in ``DIR/features`` (where ``sae-circuits demo -o DIR`` and
``sae-circuits features -o DIR/features`` write them); ``--features OTHER`` points elsewhere.
The server answers ``GET /api/features`` (whether there are dashboards, and the labels the index
holds) and ``GET /api/feature?layer=L&feature=F`` (one file, checked with
:func:`sae_circuits.features.read_feature_file`).

Example:
    >>> source = DashboardSource("out/demo/features")
    >>> source.status()["available"], source.feature(2, 17)["density"]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sae_circuits.features import FeatureFileError, read_feature_file, read_index

__all__ = ["DashboardSource", "NoDashboardError"]

logger = logging.getLogger(__name__)


class NoDashboardError(LookupError):
    """No dashboard for that feature (no folder, or no file for it)."""


class DashboardSource:
    """A feature folder, or none.

    Args:
        folder: The folder of feature files (``None``: the viewer shows no dashboards).
        explicit: Whether the user named it (then a missing folder is an error at start-up).

    Raises:
        FileNotFoundError: ``explicit`` and ``folder`` is not a folder.
    """

    def __init__(self, folder: str | Path | None, *, explicit: bool = False) -> None:
        self.folder = Path(folder) if folder is not None else None
        if explicit and (self.folder is None or not self.folder.is_dir()):
            raise FileNotFoundError(
                f"no feature folder at {str(folder)!r} (write one with `sae-circuits features "
                f"... -o {folder}`)"
            )
        self._status: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        """``{"available", "reason", "n_files", "labels": {"layer_feature": text}}`` (cached)."""
        if self._status is None:
            self._status = self._read_status()
        return self._status

    def _read_status(self) -> dict[str, Any]:
        if self.folder is None or not self.folder.is_dir():
            return {
                "available": False,
                "reason": "no feature dashboards: build them with `sae-circuits features ... -o "
                "FOLDER/features` (or serve with --features DIR)",
                "n_files": 0,
                "labels": {},
            }
        try:
            index = read_index(self.folder)
        except FileNotFoundError:
            return {
                "available": True,
                "reason": f"{self.folder} has no index.json: files are read one by one",
                "n_files": None,
                "labels": {},
            }
        except (FeatureFileError, OSError) as e:
            logger.warning("feature index: %s", e)
            return {"available": True, "reason": str(e), "n_files": None, "labels": {}}
        features = index.get("features")
        labels = {}
        if isinstance(features, dict):
            labels = {k: v for k, v in features.items() if isinstance(v, str) and v}
        return {
            "available": True,
            "reason": None,
            "n_files": index.get("n_files"),
            "labels": labels,
        }

    def feature(self, layer: int, feature: int) -> dict[str, Any]:
        """One feature's record.

        Raises:
            NoDashboardError: No folder, or no file for that feature.
            FeatureFileError: A file that cannot be read (the message says why).
        """
        if self.folder is None or not self.folder.is_dir():
            raise NoDashboardError(self.status()["reason"])
        try:
            return read_feature_file(self.folder, layer=layer, feature=feature)
        except FileNotFoundError:
            raise NoDashboardError(
                f"no dashboard for layer {layer} feature {feature} in {self.folder}"
            ) from None
        except OSError as e:
            raise FeatureFileError(
                f"cannot read the file of layer {layer} feature {feature}: {e}"
            ) from e
