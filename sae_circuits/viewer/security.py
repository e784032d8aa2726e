"""Safety rules of the viewer server: where it may bind, which Host it answers, which files.

The viewer serves one *graph folder* to a browser on the same machine. Three rules keep it from
becoming a way into the rest of the machine:

* **binding**: only loopback addresses (``127.0.0.1``, ``::1``, ``localhost``) unless the caller
  passes ``allow_remote=True`` explicitly (:func:`check_bind_host`);
* **Host header**: on a loopback bind, requests must name a loopback host, which defeats DNS
  rebinding (a web page whose domain resolves to ``127.0.0.1``) (:func:`host_header_ok`);
* **paths**: a file is only ever read or written through :func:`resolve_inside`, which accepts a
  relative path of plain names inside the folder, refuses ``..``, absolute paths, hidden names,
  backslashes and NUL bytes, and resolves symbolic links before checking that the result is
  still inside the folder.

Example:
    >>> check_bind_host("127.0.0.1", allow_remote=False)  # fine
    >>> check_bind_host("0.0.0.0", allow_remote=False)
    Traceback (most recent call last):
    ...
    sae_circuits.viewer.security.RemoteBindError: refusing to serve on '0.0.0.0' ...
    >>> resolve_inside(Path("out"), "../etc/passwd") is None
    True
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path, PurePosixPath

__all__ = [
    "RemoteBindError",
    "check_bind_host",
    "host_header_ok",
    "is_loopback",
    "resolve_inside",
]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


class RemoteBindError(ValueError):
    """A bind address that is reachable from other machines, without ``allow_remote=True``."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IPv4/IPv6 address, brackets allowed) is this machine only.

    Args:
        host: ``"127.0.0.1"``, ``"::1"``, ``"[::1]"``, ``"localhost"``, ``"0.0.0.0"``, ...

    Returns:
        ``True`` for ``localhost`` and loopback addresses; ``False`` for anything else,
        including ``""`` and ``"0.0.0.0"`` (all interfaces).
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_host(host: str, *, allow_remote: bool) -> None:
    """Refuse to bind to an address other machines can reach, unless explicitly allowed.

    Args:
        host: The address to bind.
        allow_remote: The caller's explicit permission to bind a non-loopback address.

    Raises:
        RemoteBindError: ``host`` is not a loopback address and ``allow_remote`` is false.
    """
    if allow_remote or is_loopback(host):
        return
    raise RemoteBindError(
        f"refusing to serve on {host!r}: that address can be reachable from other machines, and "
        "the viewer can write to the graph folder. Use 127.0.0.1 (the default), ::1 or "
        "localhost, or pass --allow-remote (allow_remote=True) if you really mean it"
    )


def host_header_ok(host_header: str | None, port: int) -> bool:
    """Whether a request's ``Host`` header names this machine on the server's port.

    Args:
        host_header: The ``Host`` header (``None`` when missing).
        port: The port the server listens on.

    Returns:
        ``True`` for ``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT`` (the port may be
        left out); ``False`` for anything else, which is what a DNS-rebinding page sends.
    """
    if not host_header:
        return False
    value = host_header.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return False
        name, rest = value[: end + 1], value[end + 1 :]
    else:
        name, _, port_part = value.partition(":")
        rest = f":{port_part}" if port_part else ""
    if rest and rest != f":{port}":
        return False
    return is_loopback(name)


def resolve_inside(root: str | os.PathLike[str], relative: str) -> Path | None:
    """The path of ``relative`` inside ``root``, or ``None`` if it would leave ``root``.

    Args:
        root: The served folder.
        relative: A decoded, ``/``-separated relative path from a request (no ``%`` decoding is
            done here: decode exactly once before calling).

    Returns:
        The resolved path (symbolic links followed) when it is inside the resolved ``root`` and
        every component is a plain, non-hidden name; otherwise ``None``. The path need not
        exist.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    if relative.startswith(("/", "~")):
        return None
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    if any(":" in p for p in parts):  # drive letters and alternate data streams on Windows
        return None
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base.joinpath(*parts)))
    if target == base or base not in target.parents:
        return None
    return target
