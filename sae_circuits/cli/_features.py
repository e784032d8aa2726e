"""``sae-circuits features``: feature dashboards of a transcoder set on a corpus."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sae_circuits.cli._common import CLIError, Formatter, at_least, short


def _graph_selection(path: str) -> dict[int, list[int]]:
    """The features of a graph file (``.zip``) or folder (its ``pruned.zip``, else ``graph.zip``)."""
    from sae_circuits.features import graph_features
    from sae_circuits.graph import AttributionGraph

    p = Path(path)
    if p.is_dir():
        p = next((p / n for n in ("pruned.zip", "graph.zip") if (p / n).is_file()), p / "graph.zip")
    if not p.is_file():
        raise CLIError(f"--graph {path!r}: no graph file (a .zip, or a folder with pruned.zip)")
    try:
        return graph_features(AttributionGraph.load(p))
    except Exception as e:
        raise CLIError(f"--graph {path!r}: cannot read {p.name}: {short(e)}") from e


def _features_cmd(args: argparse.Namespace) -> int:
    from sae_circuits.cli._loading import load_model_by_name, load_transcoders_by_name
    from sae_circuits.features import build_features

    selection = _graph_selection(args.graph) if args.graph is not None else None
    model = load_model_by_name(args.model, device=args.device)
    transcoders = load_transcoders_by_name(args.transcoders, model, args.model, device=args.device)
    start = time.perf_counter()
    try:
        result = build_features(
            model,
            transcoders,
            args.corpus,
            args.out,
            top_k=args.top_k,
            max_tokens=args.max_tokens,
            context_len=args.context_len,
            batch_size=args.batch_size,
            features=selection,
            split=args.split,
            progress=False if args.quiet else None,
        )
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise CLIError(f"cannot build features: {short(e)}") from e
    seconds = time.perf_counter() - start
    if result.resumed_windows:
        print(f"resumed after {result.resumed_windows} windows (checkpoint in {args.out})")
    print(
        f"{result.n_files} feature files from {result.n_windows} windows ({result.n_tokens} "
        f"tokens) in {seconds:.1f}s: {result.out}"
    )
    print(f"view them: sae-circuits serve GRAPH_FOLDER --features {result.out}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``features`` to the ``sae-circuits`` subcommands."""
    p = sub.add_parser(
        "features",
        help="build feature dashboards (top contexts, histogram, logit effects) from a corpus",
        description="Run the model over a corpus and write one JSON file per feature: top-k\n"
        "activating contexts with per-token activations, samples from activation quantile\n"
        "bands, an activation histogram, density, and the top/bottom logit effects of the\n"
        "decoder (docs/features.md). Resumable: rerun the same command after an interruption.",
        epilog="examples:\n"
        "  sae-circuits features --model toy-facts --transcoders toy-facts --corpus c.txt -o out/f\n"
        "  sae-circuits features --model gpt2 --transcoders T --corpus NeelNanda/pile-10k \\\n"
        "      --graph out/dallas --max-tokens 1000000 -o out/dallas/features",
        formatter_class=Formatter,
    )
    p.add_argument("--model", required=True, help="model (as in `attribute --model`)")
    p.add_argument("--transcoders", required=True, help="transcoders (as in `attribute`)")
    p.add_argument(
        "--corpus",
        required=True,
        metavar="FILE|DATASET",
        help=".txt (one document per line), .jsonl ('text' field), a dataset folder or a "
        "Hugging Face dataset name",
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--graph", metavar="G", help="only the features of this graph (folder or .zip)")
    p.add_argument("--top-k", type=at_least(1), default=10, metavar="K", help="top contexts (10)")
    p.add_argument("--max-tokens", type=at_least(1), default=None, metavar="N", help="token cap")
    p.add_argument(
        "--context-len", type=at_least(2), default=64, metavar="C", help="window length (64)"
    )
    p.add_argument(
        "--batch-size", type=at_least(1), default=16, metavar="B", help="windows per pass (16)"
    )
    p.add_argument("--split", default="train", help="dataset split (datasets only)")
    p.add_argument("--device", default=None, help="device of the model (default: the loader's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_features_cmd)
