"""``sae-circuits demo``: the Dallas -> Texas -> Austin circuit on the shipped toy model, or
(``--case multilingual``) the multilingual antonym case study on toy-multilingual."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sae_circuits.cli._common import Formatter
from sae_circuits.cli._output import check_out, write_folder

_CASE_TRANSCODERS = {
    "dallas": ("toy-facts", "toy-facts-clt"),
    "multilingual": ("toy-multilingual", "toy-multilingual-clt"),
}


def _demo(args: argparse.Namespace) -> int:
    from sae_circuits.cli._common import CLIError

    allowed = _CASE_TRANSCODERS[args.case]
    if args.transcoders is None:
        args.transcoders = allowed[0]
    if args.transcoders not in allowed:
        raise CLIError(
            f"--transcoders {args.transcoders} does not fit --case {args.case}; valid choices: "
            + ", ".join(allowed)
        )
    if args.out is not None:
        check_out(Path(args.out), overwrite=True)
    if args.case == "multilingual":
        return _multilingual(args)
    return _dallas(args)


def _fmt_top(pairs: Any) -> str:
    return ", ".join(f"{t} {p:.3f}" for t, p in pairs)


def _multilingual(args: argparse.Namespace) -> int:
    from sae_circuits.multilingual_demo import (
        describe_languages,
        run_multilingual_demo,
        write_multilingual_graphs,
    )

    kind = "clt" if args.transcoders.endswith("-clt") else "plt"
    start = time.perf_counter()
    report = run_multilingual_demo(kind=kind, progress=False if args.quiet else None)
    print(
        "toy-multilingual: a 4-layer model trained in this repository on antonyms, synonyms and "
        f"translations of 30 adjective pairs in {describe_languages()}, with its "
        f"{args.transcoders} transcoders"
    )
    print("graphs (top logits):")
    for lang, graph in report.graphs.items():
        top = zip(graph.logits["token"][:3], graph.logits["probability"][:3], strict=False)
        print(f"  {lang}  {report.prompts[lang]!r:<30} -> {_fmt_top(top)}")
    print(
        "supernodes, found by a rule over the graphs and a panel of 360 prompts (both tasks x 3 "
        "languages x 60 adjectives; docs/multilingual.md):"
    )
    for lang, groups in report.supernodes.items():
        parts = []
        for name, s in groups.items():
            counts = Counter(report.labels[lang].get(f"{la}_{f}_{p}") for la, p, f in s.features)
            for key in [k for k in counts if k is None or k.startswith(("mixed", "dead"))]:
                counts.pop(key)
            top = ", ".join(f"{lab} x{n}" for lab, n in counts.most_common(2))
            parts.append(f"{name}: {len(s)}" + (f" ({top}, ...)" if top else ""))
        print(f"  {lang}: " + "; ".join(parts))
    print("experiments (top 3 logits before -> after; attention free to respond):")
    for e in report.experiments:
        top = e.top_logits(3)
        before = zip(top["before_token"], top["before_probability"], strict=True)
        after = zip(top["after_token"], top["after_probability"], strict=True)
        what = f"{e.removed.name} off ({len(e.removed)})"
        if e.added is not None:
            what += f", {e.added.name} on ({len(e.added)})"
        want = e.expected if e.expected is not None else "an answer in another language"
        verdict = "yes" if e.succeeded else "NO"
        print(f"  {e.name} [{e.language}] {e.prompt!r}: {what}")
        print(f"      before: {_fmt_top(before)}")
        print(f"      after:  {_fmt_top(after)}    expected {want}: {verdict}")
    print(
        "what drives the answer, by the graphs: direct edge into the answer logit (share of its "
        "|input|), edge into 'say big', influence on the answer (all paths, as pruning ranks "
        "nodes):"
    )
    for _, row in report.edges.iterrows():
        print(
            f"  {row['language']}  {row['supernode']:<26} {row['n_nodes']:>3} nodes  edge "
            f"{row['edge_to_answer']:+.3f} ({100 * row['share_of_answer_input']:4.1f}%)  "
            f"to say big {row['edge_to_say_big']:+.3f}  influence {row['influence']:.3f}"
        )
    if args.out is not None:
        folders = write_multilingual_graphs(report, args.out)
        for folder in folders.values():
            print(
                f"wrote {folder} (graph with its supernodes); view it: sae-circuits serve {folder}"
            )
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _dallas(args: argparse.Namespace) -> int:
    from sae_circuits.demo import PROMPT, SOURCE, build_demo_features, run_demo

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
        help="the Dallas -> Texas -> Austin circuit (or the multilingual antonym case study) on "
        "a shipped toy model, offline",
        description="Attribute 'The capital of the state containing Dallas is' on the shipped\n"
        "toy-facts model, show the pruned circuit's main features, then switch the Texas\n"
        "features off and the California features (from the Oakland prompt) on. With -o,\n"
        "also write a graph folder for `sae-circuits serve`.\n\n"
        "--case multilingual: 'the opposite of small is' in three toy languages on the\n"
        "toy-multilingual model: supernodes found from the graphs, then the language features\n"
        "off, French off and Chinese on, 'small' replaced by 'big', 'opposite' replaced by\n"
        "'synonym' (top logits before and after; docs/multilingual.md). With -o, one graph\n"
        "folder per language (OUT/en, OUT/fr, OUT/zh) with its supernodes.",
        formatter_class=fmt,
    )
    demo.add_argument(
        "--case",
        choices=tuple(_CASE_TRANSCODERS),
        default="dallas",
        help="dallas (toy-facts, the default) or multilingual (toy-multilingual)",
    )
    demo.add_argument(
        "--transcoders",
        choices=tuple(t for ts in _CASE_TRANSCODERS.values() for t in ts),
        default=None,
        help="per-layer (toy-facts, toy-multilingual) or cross-layer (toy-facts-clt, "
        "toy-multilingual-clt) transcoders of the case's model (default: per-layer)",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.add_argument("-o", "--out", metavar="OUT", help="also write a graph folder here")
    demo.set_defaults(func=_demo)
