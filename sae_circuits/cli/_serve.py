"""``sae-circuits serve``: the local viewer of a graph folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_circuits.cli._common import CLIError, Formatter, add_server_options, serve_folder


def _serve_cmd(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise CLIError(
            f"no graph folder at {str(folder)!r} (write one with `sae-circuits attribute ... -o "
            f"{folder}`)"
        )
    return serve_folder(folder, args.host, args.port, args.allow_remote, args.open)


def add_parser(sub: Any) -> None:
    """Add ``serve`` to the ``sae-circuits`` subcommands."""
    fmt = Formatter
    srv = sub.add_parser(
        "serve",
        help="view a graph folder in the local web viewer",
        description="Serve the interactive viewer of a graph folder (written by `attribute` or\n"
        "`demo -o`) on this machine. Labels, supernodes and pins are saved to\n"
        "FOLDER/annotations.json. Stop with Ctrl-C.",
        epilog="example:\n  sae-circuits serve out/dallas --port 8765 --open",
        formatter_class=fmt,
    )
    srv.add_argument("folder", metavar="FOLDER", help="graph folder")
    add_server_options(srv)
    srv.set_defaults(func=_serve_cmd)
