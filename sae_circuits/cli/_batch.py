"""``sae-circuits batch``: the graphs of a file of prompts into a resumable graph store.

PROMPTS_FILE is a text file (one prompt per line; empty lines and lines starting with ``#``
are skipped) or a ``.jsonl`` file (one JSON string, ``{"prompt": TEXT}`` or
``{"tokens": [ids]}`` per line). ``--ray ADDRESS`` runs on a Ray cluster (``auto``, a
``host:port`` or ``ray://host:port`` address, or ``local`` for a new cluster on this machine);
without it everything runs in this process. ``--tables`` also writes the dataset-level tables
(``DIR/tables/``: features.csv, top_features.csv and, with matplotlib, features.png).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path
from typing import Any, cast

from sae_circuits.cli._common import CLIError, Formatter, fraction, positive_int, short
from sae_circuits.cli._loading import (
    TINY,
    load_model_by_name,
    load_transcoders_by_name,
    toy_labels,
)

#: ``--keep`` choices (``sae_circuits.batch.KEEP_CHOICES``).
KEEP = ("full", "pruned", "both")

#: Rows of the tables' plot.
PLOT_ROWS = 20


def read_prompts(path: Path) -> list[str | list[int]]:
    """The prompts of PROMPTS_FILE (see the module docstring).

    Raises:
        CLIError: A missing file, a malformed ``.jsonl`` line (its number named), or no prompts.
    """
    if not path.is_file():
        raise CLIError(f"no prompts file {str(path)!r}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {str(path)!r}: {short(e)}") from e
    out: list[str | list[int]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip() or (path.suffix != ".jsonl" and line.lstrip().startswith("#")):
            continue
        if path.suffix != ".jsonl":
            out.append(line.strip())
            continue
        try:
            item = json.loads(line)
        except ValueError as e:
            raise CLIError(f"{path}:{i}: not JSON ({short(e, 120)})") from e
        if isinstance(item, dict):
            item = item.get("prompt", item.get("tokens"))
        if isinstance(item, str):
            out.append(item)
            continue
        ok_ids = isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        )
        if not ok_ids:
            raise CLIError(
                f'{path}:{i}: expected a string, {{"prompt": TEXT}} or {{"tokens": [ids]}}'
            )
        out.append([int(t) for t in cast("list[int]", item)])
    if not out:
        raise CLIError(f"{str(path)!r} holds no prompts")
    return out


def _specs(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.transcoders == TINY and args.model != TINY:
        raise CLIError(f"--transcoders {TINY} only fits --model {TINY}, not {args.model!r}")
    if args.model == TINY:  # built into the CLI: factories every worker calls
        model: Any = functools.partial(load_model_by_name, TINY)
        transcoders: Any = functools.partial(
            load_transcoders_by_name, args.transcoders, model_name=TINY
        )
        return model, transcoders
    return args.model, args.transcoders


def _executor(args: argparse.Namespace) -> Any:
    if args.ray is None:
        if args.workers is not None:
            raise CLIError("--workers needs --ray (without it the prompts run in this process)")
        return None
    from sae_circuits.batch import RayExecutor

    try:
        return RayExecutor(
            args.ray,
            num_workers=args.workers,
            num_gpus=args.gpus_per_worker,
        )
    except ImportError as e:
        raise CLIError(str(e)) from e


def _labels(args: argparse.Namespace) -> dict[int, list[str]] | None:
    return toy_labels(args.model, args.transcoders)


def _write_tables(args: argparse.Namespace, store: Any) -> None:
    from sae_circuits.batch import feature_occurrences, feature_table, plot_features
    from sae_circuits.batch import prompt_top_features as top_features
    from sae_circuits.core import atomic_write

    folder = store.folder / "tables"
    folder.mkdir(exist_ok=True)
    labels = _labels(args)
    occ = feature_occurrences(store)
    features = feature_table(occ, labels=labels)
    tops = top_features(occ, k=5, labels=labels)
    for name, table in (("features.csv", features), ("top_features.csv", tops)):
        data = table.to_csv(index=False).encode()
        atomic_write(folder / name, lambda f, data=data: f.write(data))
    written = ["features.csv", "top_features.csv"]
    if len(features):
        try:
            fig = plot_features(features, top=PLOT_ROWS)
            atomic_write(folder / "features.png", lambda f: fig.savefig(f, format="png", dpi=110))
            written.append("features.png")
        except ImportError as e:
            logging.getLogger(__name__).warning("no plot: %s", e)
    print(f"tables: {folder}/{{{','.join(written)}}} ({len(features)} features)")
    for row in features.head(5).to_dict("records"):
        label = f"  {row['label']}" if isinstance(row["label"], str) else ""
        print(
            f"  L{row['layer']} #{row['feature']}: in {row['frequency']:.0%} of graphs, mean "
            f"influence {row['mean_influence']:.3f}{label}"
        )


def _batch(args: argparse.Namespace) -> int:
    import sae_circuits as sc
    from sae_circuits.batch import StoreMismatchError

    prompts = read_prompts(Path(args.prompts_file))
    model, transcoders = _specs(args)
    executor = _executor(args)
    knobs = {
        "max_feature_nodes": args.max_feature_nodes,
        "max_n_logits": args.max_n_logits,
        "desired_logit_prob": args.desired_logit_prob,
        "batch_size": args.batch_size,
    }
    where = f"Ray ({args.ray})" if args.ray else "this process"
    print(
        f"attributing {len(prompts)} prompts with {args.model!r} / {args.transcoders!r} in {where}"
    )
    try:
        result = sc.attribute_many(
            model,
            transcoders,
            prompts,
            args.out,
            executor=executor,
            keep=args.keep,
            node_threshold=args.node_threshold,
            edge_threshold=args.edge_threshold,
            retry_failed=not args.no_retry_failed,
            device=args.device,
            progress=False if args.quiet else None,
            **knobs,
        )
    except StoreMismatchError as e:
        raise CLIError(str(e)) from e
    except RuntimeError as e:  # another run holds the store; workers that cannot load
        raise CLIError(short(e), code=1) from e
    rate = f", {result.graphs_per_minute:.0f} graphs/min" if result.n_done else ""
    print(
        f"{result.n_done} attributed, {result.n_skipped} already done, {result.n_failed} failed "
        f"in {result.seconds:.1f} s{rate}"
    )
    table = result.table
    failed = (table["status"] == "failed").to_numpy()
    prompts_failed = table["prompt"].to_numpy()[failed][:5]
    errors = table["error"].to_numpy()[failed][:5]
    for prompt, error in zip(prompts_failed, errors, strict=True):
        print(f"  failed: {prompt!r}: {error}")
    print(f"index: {result.store.index_path}")
    if args.tables:
        _write_tables(args, result.store)
    return 0


def add_parser(sub: Any) -> None:
    """Add ``batch`` to the ``sae-circuits`` subcommands."""
    p = sub.add_parser(
        "batch",
        help="attribute a file of prompts into a resumable graph store (optionally on Ray)",
        description="Attribute every prompt of PROMPTS_FILE into the graph store DIR: one graph\n"
        "file per prompt (DIR/graphs/, DIR/pruned/) and an index (DIR/index.csv: prompt, file,\n"
        "logits, scores, timing, status). Run it again to resume: what is done and valid is\n"
        "skipped. A prompt that fails is recorded with its error and the run goes on.",
        epilog="examples:\n"
        "  sae-circuits batch prompts.txt --model toy-facts --transcoders toy-facts -o out/batch\n"
        "  sae-circuits batch prompts.txt --model toy-facts --transcoders toy-facts \\\n"
        "      -o out/batch --ray local --workers 2 --tables",
        formatter_class=Formatter,
    )
    p.add_argument("prompts_file", metavar="PROMPTS_FILE", help=".txt (one per line) or .jsonl")
    p.add_argument("--model", required=True, help="model (as for `attribute`)")
    p.add_argument("--transcoders", required=True, help="transcoders (as for `attribute`)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="graph store folder")
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run on Ray: 'auto', HOST:PORT, ray://HOST:PORT, or 'local' (a new local cluster)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="Ray actors (default: one per GPU, else per CPU)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per Ray actor (default: 1 if the cluster has GPUs)",
    )
    p.add_argument(
        "--keep", choices=KEEP, default="both", help="graphs kept per prompt (default: both)"
    )
    p.add_argument("--node-threshold", type=fraction("--node-threshold"), default=0.8, metavar="T")
    p.add_argument("--edge-threshold", type=fraction("--edge-threshold"), default=0.98, metavar="T")
    p.add_argument("--max-feature-nodes", type=positive_int, default=None, metavar="N")
    p.add_argument("--max-n-logits", type=positive_int, default=10, metavar="K")
    p.add_argument(
        "--desired-logit-prob", type=fraction("--desired-logit-prob"), default=0.95, metavar="P"
    )
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="B")
    p.add_argument(
        "--device", default=None, help="device of the weights (default: cuda if available)"
    )
    p.add_argument(
        "--no-retry-failed", action="store_true", help="leave prompts that failed before"
    )
    p.add_argument(
        "--tables", action="store_true", help="also write DIR/tables/ (features across graphs)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_batch)
