"""``sae-circuits serve``: the local viewer of a graph folder (or the difference of two), with
steering from the page when a model is given."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_circuits.cli._common import CLIError, Formatter, add_server_options, serve_folder


def _folder(name: str) -> Path:
    folder = Path(name)
    if not folder.is_dir():
        raise CLIError(
            f"no graph folder at {str(folder)!r} (write one with `sae-circuits attribute ... -o "
            f"{folder}`)"
        )
    return folder


def _prompt_of(folder: Path) -> Any:
    """The token ids of the folder's graph (pruned.zip, else graph.zip), else its prompt text."""
    from sae_circuits.viewer import GraphSource

    tokens = GraphSource(folder).prompt()
    if tokens is None:
        raise CLIError(
            f"{folder} holds no prompt to steer (no pruned.zip or graph.zip, and graph.json has "
            "no metadata.prompt)"
        )
    return tokens


def _steerer(args: argparse.Namespace, folder: Path) -> Any:
    if args.model is None and args.transcoders is None:
        return None
    if args.model is None or args.transcoders is None:
        raise CLIError("steering needs both --model and --transcoders")
    from sae_circuits.cli._loading import load_model_by_name, load_transcoders_by_name
    from sae_circuits.viewer import Steerer, SteeringLimits

    prompt = _prompt_of(folder)
    model = load_model_by_name(args.model, device=args.device)
    transcoders = load_transcoders_by_name(args.transcoders, model, args.model, device=args.device)
    try:
        return Steerer(
            model,
            transcoders,
            prompt=prompt,
            limits=SteeringLimits(time_limit_s=args.steer_time_limit),
        )
    except ValueError as e:
        raise CLIError(f"cannot steer {folder} with --model {args.model}: {e}") from e


def _serve_cmd(args: argparse.Namespace) -> int:
    folder = _folder(args.folder)
    other = args.other if args.other is not None else args.compare
    if args.other is not None and args.compare is not None:
        raise CLIError("give the second folder once: `serve A B` or `serve A --compare B`")
    compare = _folder(other) if other is not None else None
    steerer = _steerer(args, folder)
    return serve_folder(
        folder,
        args.host,
        args.port,
        args.allow_remote,
        args.open,
        compare=compare,
        steerer=steerer,
        features=Path(args.features) if args.features is not None else None,
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"a time limit in (0, 600] seconds, got {text}")
    return value


def add_parser(sub: Any) -> None:
    """Add ``serve`` to the ``sae-circuits`` subcommands."""
    fmt = Formatter
    srv = sub.add_parser(
        "serve",
        help="view a graph folder in the local web viewer",
        description="Serve the interactive viewer of a graph folder (written by `attribute` or\n"
        "`demo -o`) on this machine. Labels, supernodes and pins are saved to\n"
        "FOLDER/annotations.json. With a second folder the page shows the difference of\n"
        "the two graphs; with --model and --transcoders it can steer features. Stop with\n"
        "Ctrl-C.",
        epilog="examples:\n  sae-circuits serve out/dallas --port 8765 --open\n"
        "  sae-circuits serve out/dallas out/oakland\n"
        "  sae-circuits serve out/demo --model toy-facts --transcoders toy-facts",
        formatter_class=fmt,
    )
    srv.add_argument("folder", metavar="FOLDER", help="graph folder")
    srv.add_argument(
        "other", metavar="OTHER", nargs="?", default=None, help="a second graph folder to compare"
    )
    srv.add_argument("--compare", metavar="OTHER", help="a second graph folder to compare")
    srv.add_argument(
        "--features",
        metavar="DIR",
        help="feature dashboards (`sae-circuits features -o DIR`; default: FOLDER/features)",
    )
    srv.add_argument("--model", help="model to steer with (as in `attribute --model`)")
    srv.add_argument("--transcoders", help="transcoders to steer with (as in `attribute`)")
    srv.add_argument("--device", default=None, help="device of the model (default: the loader's)")
    srv.add_argument(
        "--steer-time-limit",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="longest a steering request may take (default: 30)",
    )
    add_server_options(srv)
    srv.set_defaults(func=_serve_cmd)
