"""Files that are either untouched or complete: :func:`atomic_write`.

Every file the package writes (graph files, Neuronpedia JSON, viewer folders and annotations)
goes through it, so an error or a full disk in the middle of a write never leaves a partial file
or destroys the previous one.

Example:
    >>> atomic_write("graph.json", lambda f: f.write(b"{}"))
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_many"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Write a file through ``write(binary_file)`` so that ``path`` is either untouched or complete.

    The data goes to a new temporary file in the same folder, is flushed and ``fsync``\\ ed, then
    renamed over ``path`` (``os.replace``, atomic on POSIX and Windows); on any error the
    temporary file is removed and ``path`` is left as it was.

    Args:
        path: Destination file.
        write: Called once with the open binary file.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (POSIX; not possible everywhere)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_write_many(folder: str | os.PathLike[str], files: dict[str, bytes]) -> list[Path]:
    """Write many files of one folder so that each is either untouched or complete.

    Like :func:`atomic_write` per file, but with one flush of the file system (``os.sync``) for
    all of them instead of one ``fsync`` each (thousands of small files, e.g. feature files):
    every file is first written under a temporary name, then all data is flushed, then each is
    renamed over its destination. On an error the temporary files are removed.

    Args:
        folder: The (existing) folder.
        files: File name (inside ``folder``) -> content.

    Returns:
        The paths written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    tmps: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            path = folder / name
            if path.parent != folder:
                raise ValueError(f"{name!r} is not a plain file name inside {folder}")
            tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
            tmps.append((tmp, path))
            with open(tmp, "xb") as f:
                f.write(data)
        if hasattr(os, "sync"):
            os.sync()
        for tmp, path in tmps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    return [path for _, path in tmps]
