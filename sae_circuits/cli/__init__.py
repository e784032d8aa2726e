"""Command line: ``sae-circuits attribute``, ``serve``, ``demo``, ``batch`` and ``features``.

Example:
    $ sae-circuits attribute "The capital of the state containing Dallas is" \\
          --model toy-facts --transcoders toy-facts -o out/dallas
    $ sae-circuits serve out/dallas               # http://127.0.0.1:8765/
    $ sae-circuits demo -o out/demo               # offline: the built-in example
    $ sae-circuits batch prompts.txt --model toy-facts --transcoders toy-facts -o out/batch

One module per subcommand (``_attribute``, ``_serve``, ``_demo``), each adding its parser with
``add_parser(sub)``; what they share lives in ``_common`` (errors, argument types, the server's
options), ``_loading`` (models and transcoders by name) and ``_output`` (the summary and the graph
folder).

``attribute`` writes a graph folder (``graph.zip``: the full graph, ``pruned.zip``: the pruned
graph, ``graph.json``: the viewer's / Neuronpedia's JSON; with ``--head-loadings`` also
``head_loadings.csv``, the pruned graph's edges split over the attention heads that carry them,
see :func:`sae_circuits.head_loadings`, and ``attention.json``, the QK attributions of the
``--qk-heads`` heads that carry them most, see :func:`sae_circuits.attribute_attention`);
``serve`` opens it in the local viewer (:mod:`sae_circuits.viewer`). Errors are reported in one
line on stderr with a non-zero exit status: 2 for bad input (arguments, names, folders), 1 for
failures while running.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sae_circuits.cli import _attribute, _batch, _demo, _features, _serve
from sae_circuits.cli._attribute import read_direction, top_qk_heads
from sae_circuits.cli._common import CLIError, Formatter
from sae_circuits.cli._loading import load_model_by_name, load_transcoders_by_name

__all__ = [
    "CLIError",
    "build_parser",
    "load_model_by_name",
    "load_transcoders_by_name",
    "main",
    "read_direction",
    "top_qk_heads",
]

#: The subcommands, in the order ``--help`` lists them.
_COMMANDS = (_attribute, _serve, _demo, _batch, _features)


def build_parser() -> argparse.ArgumentParser:
    """The ``sae-circuits`` argument parser."""
    from sae_circuits._version import __version__

    parser = argparse.ArgumentParser(
        prog="sae-circuits",
        description="Attribution graphs (circuit tracing) with SAELens transcoders.",
        epilog="examples:\n"
        '  sae-circuits attribute "t5 t9 t3 t7" --model tiny --transcoders tiny -o out/tiny\n'
        "  sae-circuits serve out/tiny\n"
        "  sae-circuits demo -o out/demo",
        formatter_class=Formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        return int(args.func(args))
    except CLIError as e:
        print(f"sae-circuits: error: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
