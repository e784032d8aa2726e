"""Progress bars: one rule for the whole package.

A bar is shown when the caller asks for one (``progress=True``) or, by default
(``progress=None``), only when standard error is a terminal: a log file or a pipe
(``make demo > log 2>&1``) never gets tqdm frames.

Example:
    >>> with progress_bar(total=100, desc="attribution", progress=None) as bar:
    ...     bar.update(10)
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar", "show_progress"]


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a bar: ``progress`` if given, else whether stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(*, total: int, desc: str, progress: bool | None, unit: str = "it") -> Any:
    """A tqdm bar (disabled by :func:`show_progress`'s rule) writing to stderr."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not show_progress(progress))
