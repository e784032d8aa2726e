"""Command line: ``sae-circuits demo`` (more subcommands build on the same parser).

Example:
    $ sae-circuits demo            # offline: attribute a prompt on the built-in example
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import sae_circuits as sc
    from sae_circuits.toy import tiny_model, tiny_transcoders

    torch.manual_seed(0)
    model = tiny_model("llama", seed=0, n_layers=4, d_model=64, d_vocab=128)
    transcoders = sc.load_transcoders(tiny_transcoders(model, "skip", d_sae=256))
    prompt = args.prompt
    graph = sc.attribute(model, prompt, transcoders, progress=not args.quiet)
    out = sys.stdout
    print("built-in example: a random 4-layer Llama-style model with skip transcoders", file=out)
    print(f"prompt: {prompt!r}", file=out)
    print(f"graph: {graph!r}", file=out)
    print("top logits:", file=out)
    for token, prob in zip(graph.logits["token"], graph.logits["probability"], strict=True):
        print(f"  {token!s:>8}  p={prob:.3f}", file=out)
    edges = graph.edges()
    order = np.argsort(-np.abs(edges["weight"].to_numpy()), kind="stable")[:8]
    print("strongest edges:", file=out)
    for _, e in edges.iloc[order].iterrows():
        print(f"  {_name(e, 'source')} -> {_name(e, 'target')}: {e['weight']:+.3f}", file=out)
    return 0


def _name(e: pd.Series, end: str) -> str:
    kind, layer, pos = str(e[f"{end}_kind"]), e[f"{end}_layer"], e[f"{end}_position"]
    if kind == "feature":
        return f"feature L{layer}/p{pos}/#{e[f'{end}_feature']}"
    if kind == "error":
        return f"error L{layer}/p{pos}"
    return f"{kind} {e[f'{end}_token']!s}@p{pos}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-circuits",
        description="Attribution graphs (circuit tracing) with SAELens transcoders.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run attribution on the built-in example, offline")
    demo.add_argument("--prompt", default="t5 t9 t3 t7 t2 t8 t11 t4 t6", help="prompt to attribute")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
