"""What every subcommand shares: the one-line error, argument types, the help formatter and the
local server's options."""

from __future__ import annotations

import argparse
import math
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8765


class CLIError(Exception):
    """An error reported to the user in one line, with an exit status (2: bad input)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def short(e: BaseException, limit: int = 400) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fraction(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number in [0, 1], got {text!r}"
            ) from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"{name} must be in [0, 1] (the share of influence to keep), got {text!r}"
            )
        return value

    return parse


def at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


positive_int = at_least(1)

count = at_least(0)


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a number in 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number in 0..65535, got {text!r}")
    return value


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; an action with a ``shown_metavar`` is shown by it
    (argparse would write ``--direction LABEL FILE [HOOK]`` as ``LABEL [FILE ...]``)."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        shown = getattr(action, "shown_metavar", None)
        return shown if shown else super()._format_args(action, default_metavar)


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; other machines need --allow-remote)",
    )
    p.add_argument(
        "--port",
        type=port,
        default=DEFAULT_PORT,
        help=f"port (default: {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines can reach (anyone who reaches it can edit annotations)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")


def serve_folder(
    folder: Path,
    host: str,
    port: int,
    allow_remote: bool,
    open_browser: bool,
    *,
    compare: Path | None = None,
    steerer: Any = None,
    features: Path | None = None,
) -> int:
    from sae_circuits.viewer import GraphFolderError, RemoteBindError, make_server

    try:
        server = make_server(
            folder,
            host=host,
            port=port,
            allow_remote=allow_remote,
            compare=compare,
            steerer=steerer,
            features=features,
        )
    except RemoteBindError as e:
        raise CLIError(str(e)) from e
    except (FileNotFoundError, GraphFolderError) as e:
        raise CLIError(str(e)) from e
    except OSError as e:
        raise CLIError(f"cannot listen on {host}:{port}: {e.strerror or e}", code=1) from e
    url = server.url
    what = f"{server.folder} vs {compare}" if compare is not None else f"{server.folder}"
    print(f"serving {what} at {url}  (Ctrl-C to stop)")
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
