"""``sae-circuits attribute``: one prompt's graph, pruned and written as a graph folder.

``--target TOKEN``, ``--logit-diff A B`` and ``--direction LABEL FILE [HOOK]`` (repeatable, kept
in the order given) ask for other targets than the salient logits (see
:mod:`sae_circuits.attribution._targets`); ``--head-loadings`` and ``--qk-heads`` add the heads
that carry the pruned graph's edges and why they attend where they do.
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sae_circuits.cli._common import (
    CLIError,
    Formatter,
    add_server_options,
    count,
    fraction,
    integer,
    positive_int,
    serve_folder,
    short,
)
from sae_circuits.cli._loading import (
    TINY,
    feature_labels,
    load_model_by_name,
    load_transcoders_by_name,
)
from sae_circuits.cli._output import check_out, print_summary, write_folder

if TYPE_CHECKING:
    import pandas as pd

    from sae_circuits.attribution import QKAttribution
    from sae_circuits.graph import AttributionGraph

#: QK attributions computed with ``--head-loadings`` unless ``--qk-heads`` says otherwise.
DEFAULT_QK_HEADS = 8

#: Pairs listed per QK attribution (what ``attention.json`` keeps at most).
QK_PAIRS = 20

#: File types ``--direction`` reads, each holding one tensor.
DIRECTION_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


class _TargetAction(argparse.Action):
    """Appends ``(option, values)`` to the shared ``targets`` list: the order given is kept."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        #: what the help shows (``Formatter``): argparse would write ``LABEL [FILE ...]``
        self.shown_metavar = "LABEL FILE [HOOK]" if "--direction" in option_strings else None

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        values = [values] if isinstance(values, str) else list(values)
        if self.option_strings[0] == "--direction" and not 2 <= len(values) <= 3:
            hint = " (put PROMPT before the options, or end them with --)" if values[3:] else ""
            raise argparse.ArgumentError(
                self,
                f"expected LABEL FILE [HOOK] (2 or 3 values), got {len(values)}: "
                f"{shlex.join(values)}{hint}",
            )
        targets = list(getattr(namespace, self.dest, None) or [])
        targets.append((self.option_strings[0], values))
        setattr(namespace, self.dest, targets)


def _token(text: str) -> int | str:
    """A token id (digits) or a one-token string, as ``attribute(targets=...)`` takes them."""
    return int(text) if text.isascii() and text.isdigit() else text


@dataclass(frozen=True)
class _CLITarget:
    option: str  # how the command line gave it, for error messages
    target: Any  # a sae_circuits.Target


def read_direction(label: str, file: str) -> Any:
    """The direction of ``--direction LABEL FILE``: the one tensor in a ``.npy``, ``.pt``/``.pth``
    (a tensor, or a dict holding one) or ``.safetensors`` file, on the CPU.

    Raises:
        CLIError: A missing or unreadable file, another file type, or a file holding no tensor
            or several (exit status 2).
    """
    where = f"--direction {shlex.join([label, file])}"
    path = Path(file)
    suffix = path.suffix.lower()
    if suffix not in DIRECTION_SUFFIXES:
        raise CLIError(
            f"{where}: cannot read a direction from {file!r}: expected a "
            f"{', '.join(DIRECTION_SUFFIXES)} file holding one tensor"
        )
    if not path.is_file():
        raise CLIError(f"{where}: no such file {file!r}")
    try:
        if suffix == ".npy":
            import numpy as np

            return np.load(path, allow_pickle=False)
        import torch

        if suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"{where}: cannot read {file!r}: {type(e).__name__}: {short(e)}") from e
    if isinstance(loaded, torch.Tensor):
        return loaded
    tensors = list(loaded.items()) if isinstance(loaded, dict) else []
    if len(tensors) == 1 and isinstance(tensors[0][1], torch.Tensor):
        return tensors[0][1]
    held = (
        f"{len(tensors)} entries ({', '.join(str(k) for k, _ in tensors[:5])})"
        if isinstance(loaded, dict)
        else f"a {type(loaded).__name__}"
    )
    raise CLIError(f"{where}: {file!r} holds {held}, not one tensor")


def cli_targets(given: Sequence[tuple[str, list[str]]], position: int) -> list[_CLITarget]:
    """The ``attribute(targets=...)`` list of ``--target``/``--logit-diff``/``--direction``.

    Args:
        given: ``(option, values)`` in command-line order.
        position: The token position of every target (``--target-position``).

    Raises:
        CLIError: An unreadable direction file (see :func:`read_direction`).
    """
    import sae_circuits as sc

    out = []
    for option, values in given:
        shown = f"{option} {shlex.join(values)}"
        if option == "--target":
            target = sc.Target.logit(_token(values[0]), position=position)
        elif option == "--logit-diff":
            a, b = (_token(v) for v in values)
            target = sc.Target.logit_diff(a, b, position=position)
        else:
            label, file, *hook = values
            direction = read_direction(label, file)
            target = sc.Target(label, direction, position=position, hook=hook[0] if hook else None)
        out.append(_CLITarget(shown, target))
    return out


_TARGET_INDEX = re.compile(r"^targets\[(\d+)\]: ")


def _attribute_error(e: BaseException, targets: Sequence[_CLITarget]) -> CLIError:
    """``attribute``'s ValueError/TypeError as a CLIError naming the option at fault."""
    text = short(e)
    match = _TARGET_INDEX.match(text)
    if match and int(match.group(1)) < len(targets):
        return CLIError(f"{targets[int(match.group(1))].option}: {text[match.end() :]}")
    return CLIError(f"cannot attribute this prompt: {text}")


def top_qk_heads(
    pruned: AttributionGraph, loadings: pd.DataFrame, n: int
) -> list[tuple[int, int, int, int, float]]:
    """The ``n`` (layer, head, query, key) that carry the pruned graph's edges most.

    The head parts (``part == "head"``) of ``loadings`` (``sc.head_loadings(..., pruned)``) are
    grouped by the head and the positions it links: the query at the edge's target, the key at
    its source; direct parts (no head) are left out.

    Returns:
        ``(layer, head, query, key, summed |loading|)``, the largest sum first (ties in
        (layer, head, query, key) order).
    """
    import numpy as np
    import pandas as pd

    if n < 1 or not len(loadings):
        return []
    is_head = loadings["part"].astype(str).to_numpy() == "head"
    if not is_head.any():
        return []

    def column(name: str, dtype: Any) -> np.ndarray:
        # (the direct parts' layer and head are missing: -1 before they are left out)
        return loadings[name].to_numpy(dtype=dtype, na_value=-1)[is_head]

    position = pruned.nodes["position"].to_numpy(dtype=np.int64)
    table = pd.DataFrame(
        {
            "layer": column("layer", np.int64),
            "head": column("head", np.int64),
            "query": position[column("target", np.int64)],
            "key": position[column("source", np.int64)],
            "size": np.abs(column("loading", np.float64)),
        }
    )
    sums = cast("pd.Series", table.groupby(["layer", "head", "query", "key"])["size"].sum())
    top = sums.sort_values(ascending=False, kind="stable").iloc[:n]
    return [(int(a), int(b), int(c), int(d), float(v)) for (a, b, c, d), v in top.items()]


def _attribute(args: argparse.Namespace) -> int:
    import sae_circuits as sc
    from sae_circuits.viewer import check_bind_host
    from sae_circuits.viewer.security import RemoteBindError

    out = Path(args.out)
    check_out(out, args.overwrite)
    if args.transcoders == TINY and args.model != TINY:
        raise CLIError(f"--transcoders {TINY} only fits --model {TINY}, not {args.model!r}")
    if args.serve:  # fail before the slow part, not after
        try:
            check_bind_host(args.host, allow_remote=args.allow_remote)
        except RemoteBindError as e:
            raise CLIError(str(e)) from e
    if args.qk_heads is not None and not args.head_loadings:
        raise CLIError(
            "--qk-heads picks heads by their loadings: give --head-loadings too (or leave "
            "--qk-heads out)"
        )
    if args.target_position is not None and not args.targets:
        raise CLIError(
            "--target-position applies to --target, --logit-diff and --direction targets; "
            "give at least one (the salient logits are at the last position)"
        )
    position = -1 if args.target_position is None else args.target_position
    targets = cli_targets(args.targets or (), position)  # read files before the slow part
    print(f"[1/4] loading model {args.model!r}")
    model = load_model_by_name(args.model, device=args.device)
    print(f"[2/4] loading transcoders {args.transcoders!r}")
    transcoders = load_transcoders_by_name(args.transcoders, model, args.model, device=args.device)
    print(f"[3/4] attributing {args.prompt!r}")
    try:
        graph = sc.attribute(
            model,
            args.prompt,
            transcoders,
            targets=[t.target for t in targets] or None,
            max_n_logits=args.max_n_logits,
            desired_logit_prob=args.desired_logit_prob,
            max_feature_nodes=args.max_feature_nodes,
            batch_size=args.batch_size,
            progress=False if args.quiet else None,
        )
    except (ValueError, TypeError) as e:
        raise _attribute_error(e, targets) from e
    print(f"[4/4] pruning (node {args.node_threshold}, edge {args.edge_threshold}) and writing")
    labels = feature_labels(args.model, args.transcoders, graph)

    def loadings(pruned: AttributionGraph) -> pd.DataFrame:
        return sc.head_loadings(model, args.prompt, transcoders, pruned)

    n_qk = DEFAULT_QK_HEADS if args.qk_heads is None else args.qk_heads

    def attention(pruned: AttributionGraph, loads: pd.DataFrame) -> list[QKAttribution] | None:
        return _qk_attributions(model, args.prompt, transcoders, pruned, loads, n_qk)

    pruned = write_folder(
        out,
        graph,
        args.node_threshold,
        args.edge_threshold,
        slug=args.slug,
        labels=labels,
        head_loadings=loadings if args.head_loadings else None,
        attention=attention if args.head_loadings and n_qk > 0 else None,
    )
    print_summary(graph, pruned, labels, targets=bool(targets))
    if args.serve:
        return serve_folder(out, args.host, args.port, args.allow_remote, args.open)
    print(f"view it: sae-circuits serve {out}")
    return 0


def _qk_attributions(
    model: Any,
    prompt: str,
    transcoders: Any,
    pruned: AttributionGraph,
    loads: pd.DataFrame,
    n: int,
) -> list[QKAttribution] | None:
    """QK attributions of the ``n`` (head, query, key) that carry the pruned graph most
    (:func:`top_qk_heads`), with a summary line; ``None`` (and the reason) when the model's
    attention cannot be followed."""
    import sae_circuits as sc

    start = time.perf_counter()
    chosen = top_qk_heads(pruned, loads, n)
    sink = bool((pruned.metadata.get("settings") or {}).get("attention_sink", True))
    out = []
    try:
        for layer, head, query, key, _ in chosen:
            qk = sc.attribute_attention(
                model, prompt, transcoders, layer=layer, head=head, query=query, key=key,
                top_pairs=QK_PAIRS, attention_sink=sink,
            )  # fmt: skip
            out.append(qk)
    except (ValueError, TypeError) as e:
        print(f"QK attributions: none written ({short(e, 200)})")
        return None
    shown = ", ".join(f"L{a}H{b} {c}<-{d}" for a, b, c, d, _ in chosen[:4])
    more = f", +{len(chosen) - 4}" if len(chosen) > 4 else ""
    print(
        f"QK attributions: {len(out)} (head, query <- key) carrying the most loading "
        f"({shown}{more}), top {QK_PAIRS} pairs each, in {time.perf_counter() - start:.1f} s"
    )
    return out


def add_parser(sub: Any) -> None:
    """Add ``attribute`` to the ``sae-circuits`` subcommands."""
    fmt = Formatter
    att = sub.add_parser(
        "attribute",
        help="compute, prune and save the attribution graph of a prompt",
        description="Compute the attribution graph of PROMPT, prune it, print a summary and write\n"
        "a graph folder: OUT/graph.zip (the full graph), OUT/pruned.zip (the pruned graph)\n"
        "and OUT/graph.json (the viewer's / Neuronpedia's JSON; with --head-loadings also\n"
        "OUT/head_loadings.csv and OUT/attention.json). View it with `sae-circuits serve OUT`.",
        epilog="targets:\n"
        "  Without --target, --logit-diff or --direction the graph explains the salient logits\n"
        "  at the last position (--max-n-logits, --desired-logit-prob). With them it explains\n"
        "  exactly those, in the order given on the command line, all at --target-position.\n"
        "  A TOKEN (or A, B) of digits is a token id, anything else a string that must be one\n"
        "  token (mind the leading space: ' Austin'). A direction FILE is a .npy, .pt/.pth or\n"
        "  .safetensors file holding one tensor: d_model numbers read where the unembedding\n"
        "  reads, or, with HOOK (e.g. blocks.2.hook_resid_mid), that hook's size per position.\n"
        "\n"
        "examples:\n"
        '  sae-circuits attribute "The capital of the state containing Dallas is" \\\n'
        "      --model toy-facts --transcoders toy-facts -o out/dallas --serve\n"
        '  sae-circuits attribute "t5 t9 t3 t7" --model tiny --transcoders tiny -o out/tiny\n'
        '  sae-circuits attribute "The capital of the state containing Dallas is" \\\n'
        "      --model toy-facts --transcoders toy-facts -o out/austin \\\n"
        "      --target austin --logit-diff austin sacramento",
        formatter_class=fmt,
    )
    att.add_argument("prompt", metavar="PROMPT", help="the text to attribute")
    att.add_argument(
        "--model",
        required=True,
        help=f"model: {TINY!r} (built-in random model), 'toy-facts' (the shipped toy model), a "
        "transcoder config name (its model), a TransformerLens model name, or a local Llama / "
        "Gemma 3 checkpoint (a Hugging Face folder or a .gguf file)",
    )
    att.add_argument(
        "--transcoders",
        required=True,
        help="transcoders: a transcoder config name (e.g. 'toy-facts', 'gemma-2-2b-gemmascope'), "
        "a YAML config file, a folder (layer_{i}/ SAELens transcoders, or a CLT), "
        f"or {TINY!r} with --model {TINY}",
    )
    att.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    att.add_argument(
        "--max-feature-nodes",
        type=positive_int,
        default=None,
        metavar="N",
        help="attribute at most N features, the most influential first (default: all)",
    )
    att.add_argument(
        "--target",
        action=_TargetAction,
        dest="targets",
        metavar="TOKEN",
        help="explain this logit: a token id (digits) or a one-token string; repeatable",
    )
    att.add_argument(
        "--logit-diff",
        action=_TargetAction,
        dest="targets",
        nargs=2,
        metavar=("A", "B"),
        help="explain logit(A) - logit(B) (ids or one-token strings); repeatable",
    )
    att.add_argument(
        "--direction",
        action=_TargetAction,
        dest="targets",
        nargs="+",
        help="explain direction . activation, named LABEL, the direction read from FILE "
        f"({', '.join(DIRECTION_SUFFIXES)}: one tensor), at HOOK (default: where the "
        "unembedding reads); repeatable",
    )
    att.add_argument(
        "--target-position",
        type=integer,
        default=None,
        metavar="P",
        help="token position of the targets given (negative: from the end; default: -1, the last)",
    )
    att.add_argument(
        "--max-n-logits",
        type=positive_int,
        default=10,
        metavar="K",
        help="at most K logit nodes (default: 10; ignored when targets are given)",
    )
    att.add_argument(
        "--desired-logit-prob",
        type=fraction("--desired-logit-prob"),
        default=0.95,
        metavar="P",
        help="keep the fewest top logits reaching probability P (default: 0.95; ignored when "
        "targets are given)",
    )
    att.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        metavar="B",
        help="targets per backward pass (default: 256)",
    )
    att.add_argument(
        "--node-threshold",
        type=fraction("--node-threshold"),
        default=0.8,
        metavar="T",
        help="pruning: keep the nodes holding this share of influence (default: 0.8)",
    )
    att.add_argument(
        "--edge-threshold",
        type=fraction("--edge-threshold"),
        default=0.98,
        metavar="T",
        help="pruning: keep the edges holding this share of influence (default: 0.98)",
    )
    att.add_argument(
        "--head-loadings",
        action="store_true",
        help="also split each edge of the pruned graph over the attention heads that carry it "
        "(sae_circuits.head_loadings; one trace of the pruned graph's targets per head, so slow "
        "on large models); saved as OUT/head_loadings.csv and shown in the viewer",
    )
    att.add_argument(
        "--qk-heads",
        type=count,
        default=None,
        metavar="N",
        help="with --head-loadings: also explain why the N (head, query, key) carrying the most "
        f"loading attended there (sae_circuits.attribute_attention, top {QK_PAIRS} query/key "
        f"feature pairs each); saved as OUT/attention.json and shown in the viewer "
        f"(default: {DEFAULT_QK_HEADS}; 0: none)",
    )
    att.add_argument("--slug", help="graph name in graph.json (default: from the prompt)")
    att.add_argument("--device", help="device of the model (default: the loader's)")
    att.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a graph already in OUT (keeps annotations)",
    )
    att.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    att.add_argument("--serve", action="store_true", help="serve the viewer on OUT afterwards")
    add_server_options(att)
    att.set_defaults(func=_attribute)
