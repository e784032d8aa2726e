"""``sae-circuits demo``: the Dallas -> Texas -> Austin circuit on the shipped toy model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sae_circuits.cli._common import Formatter
from sae_circuits.cli._output import check_out, write_folder


def _demo(args: argparse.Namespace) -> int:
    from sae_circuits.demo import PROMPT, SOURCE, build_demo_features, run_demo

    if args.out is not None:
        check_out(Path(args.out), overwrite=True)
    report = run_demo(transcoders=args.transcoders, progress=False if args.quiet else None)
    graph = report.graph
    print(
        f"toy-facts: a 4-layer model trained in this repository on a synthetic world, with its {args.transcoders} transcoders"
    )
    print(f"prompt: {PROMPT!r}")
    print("top logits:")
    for token, prob in zip(
        graph.logits["token"][:5], graph.logits["probability"][:5], strict=False
    ):
        print(f"  {token!s:>12}  p={prob:.3f}")
    print(
        f"graph: {graph!r}\n  replacement score {report.scores.replacement:.3f}, "
        f"completeness {report.scores.completeness:.3f}; pruned: {report.pruned!r}"
    )
    print("main features of the pruned circuit (by influence on the logits):")
    for _, f in report.features.iterrows():
        print(
            f"  L{f['layer']} #{f['feature']:<4} at {f['token']!r:<11} {f['label']:<32} "
            f"activation {f['activation']:.2f}  influence {f['influence']:.3f}"
        )
    swap = report.swap
    n_off = int((swap.interventions["value"].to_numpy() == 0).sum())
    n_on = len(swap.interventions) - n_off
    top = swap.top_logits(1).iloc[0]
    print(
        f"swap: {n_off} Texas features off at 'dallas', {n_on} California features on "
        f"(activations from {SOURCE!r})"
    )
    print(
        f"  top logit: {top['before_token']} (p={top['before_probability']:.3f}) -> "
        f"{top['after_token']} (p={top['after_probability']:.3f})"
    )
    if args.out is not None:
        out = Path(args.out)
        pruned = write_folder(out, graph, 0.8, 0.98, slug="toy-facts-dallas", labels=report.labels)
        start = time.perf_counter()
        built = build_demo_features(pruned, out / "features", transcoders=args.transcoders)
        print(
            f"feature dashboards: {built.n_files} features of the pruned graph from "
            f"{built.n_tokens} tokens of the training corpus in {time.perf_counter() - start:.1f}s"
        )
        print(f"view it: sae-circuits serve {out}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``demo`` to the ``sae-circuits`` subcommands."""
    fmt = Formatter
    demo = sub.add_parser(
        "demo",
        help="the Dallas -> Texas -> Austin circuit on the shipped toy model, offline",
        description="Attribute 'The capital of the state containing Dallas is' on the shipped\n"
        "toy-facts model, show the pruned circuit's main features, then switch the Texas\n"
        "features off and the California features (from the Oakland prompt) on. With -o,\n"
        "also write a graph folder for `sae-circuits serve`.",
        formatter_class=fmt,
    )
    demo.add_argument(
        "--transcoders",
        choices=("toy-facts", "toy-facts-clt"),
        default="toy-facts",
        help="per-layer (toy-facts) or cross-layer (toy-facts-clt) transcoders",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.add_argument("-o", "--out", metavar="OUT", help="also write a graph folder here")
    demo.set_defaults(func=_demo)
