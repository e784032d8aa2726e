"""Command line: ``sae-circuits attribute``, ``serve`` and ``demo``.

Example:
    $ sae-circuits attribute "The capital of the state containing Dallas is" \\
          --model toy-facts --transcoders toy-facts -o out/dallas
    $ sae-circuits serve out/dallas               # http://127.0.0.1:8765/
    $ sae-circuits demo -o out/demo               # offline: the built-in example

By default ``attribute`` explains the salient logits at the last position; ``--target TOKEN``,
``--logit-diff A B`` and ``--direction LABEL FILE [HOOK]`` (repeatable, kept in the order given)
ask for other targets (see :mod:`sae_circuits.attribution._targets`).

``attribute`` writes a graph folder (``graph.zip``: the full graph, ``pruned.zip``: the pruned
graph, ``graph.json``: the viewer's / Neuronpedia's JSON; with ``--head-loadings`` also
``head_loadings.csv``, the pruned graph's edges split over the attention heads that carry them,
see :func:`sae_circuits.head_loadings`, and ``attention.json``, the QK attributions of the
``--qk-heads`` heads that carry them most, see :func:`sae_circuits.attribute_attention`);
``serve`` opens it in the local viewer
(:mod:`sae_circuits.viewer`). Errors are reported in one line on stderr with a non-zero exit
status: 2 for bad input (arguments, names, folders), 1 for failures while running.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shlex
import sys
import time
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sae_circuits.graph import node_id

if TYPE_CHECKING:
    import pandas as pd

    from sae_circuits.attribution import QKAttribution
    from sae_circuits.graph import AttributionGraph

__all__ = ["CLIError", "build_parser", "main"]

DEFAULT_PORT = 8765
#: The model built into the CLI (random weights; anything else goes to
#: ``sae_circuits.models.load_model``).
TINY = "tiny"
#: Transcoder configs of the toy-facts model, and which shipped labels fit them.
_TOY_FACTS_TRANSCODERS = {"toy-facts": "plt", "toy-facts-clt": "clt"}
_GRAPH_FILES = ("graph.zip", "pruned.zip", "graph.json")
#: QK attributions computed with ``--head-loadings`` unless ``--qk-heads`` says otherwise.
DEFAULT_QK_HEADS = 8
#: Pairs listed per QK attribution (what ``attention.json`` keeps at most).
QK_PAIRS = 20


class CLIError(Exception):
    """An error reported to the user in one line, with an exit status (2: bad input)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _short(e: BaseException, limit: int = 400) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# argument types


def _fraction(name: str) -> Callable[[str], float]:
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


def _at_least(minimum: int):
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


_positive_int = _at_least(1)
_count = _at_least(0)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a number in 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number in 0..65535, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# attribution targets (--target, --logit-diff, --direction)

#: File types ``--direction`` reads, each holding one tensor.
DIRECTION_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


class _TargetAction(argparse.Action):
    """Appends ``(option, values)`` to the shared ``targets`` list: the order given is kept."""

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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``--direction LABEL FILE [HOOK]`` (argparse would write ``LABEL [FILE ...]``)."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if isinstance(action, _TargetAction) and "--direction" in action.option_strings:
            return "LABEL FILE [HOOK]"
        return super()._format_args(action, default_metavar)


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
        raise CLIError(f"{where}: cannot read {file!r}: {type(e).__name__}: {_short(e)}") from e
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
    text = _short(e)
    match = _TARGET_INDEX.match(text)
    if match and int(match.group(1)) < len(targets):
        return CLIError(f"{targets[int(match.group(1))].option}: {text[match.end() :]}")
    return CLIError(f"cannot attribute this prompt: {text}")


# ---------------------------------------------------------------------------------------------
# models and transcoders (call sites to switch to sae_circuits.models once it exists)


def _tiny_model() -> Any:
    import torch

    from sae_circuits.toy import tiny_model

    torch.manual_seed(0)
    return tiny_model("llama", seed=0, n_layers=4, d_model=64, d_vocab=128)


def load_model_by_name(name: str, *, device: str | None = None) -> Any:
    """A ``HookedTransformer`` by name: ``tiny`` (built in), else ``sae_circuits.models.load_model``.

    Args:
        name: ``"tiny"``, ``"toy-facts"``, a transcoder config name (its model), a
            TransformerLens model name, or a local Llama / Gemma 3 checkpoint (a Hugging Face
            folder or a ``.gguf`` file).
        device: Device of the weights (default: the loader's).

    Returns:
        The model.

    Raises:
        CLIError: The model cannot be loaded (the message says why); exit status 2 for an
            unknown name, 1 for other failures (e.g. weights that cannot be downloaded).
    """
    if name == TINY:
        return _tiny_model()
    from sae_circuits.models import load_model

    try:
        return load_model(name, device=device)
    except ValueError as e:
        raise CLIError(f"cannot load model {name!r}: {_short(e)} (or {TINY!r}, built in)") from e
    except Exception as e:
        raise CLIError(f"cannot load model {name!r}: {type(e).__name__}: {_short(e)}", 1) from e


def load_transcoders_by_name(
    source: str, model: Any, model_name: str, *, device: str | None = None
) -> Any:
    """A transcoder set by name or folder, checked against ``model``.

    Args:
        source: ``"tiny"`` (with ``--model tiny``), a folder, a YAML config file or a config
            name (``sae_circuits.transcoders.list_configs()``, e.g. ``toy-facts``).
        model: The model the transcoders must fit.
        model_name: The model's name on the command line.
        device: Device of the weights (default: the loader's).

    Returns:
        The transcoder set.

    Raises:
        CLIError: Unknown name, missing folder, or transcoders that do not fit the model.
    """
    import sae_circuits as sc

    if source == TINY:
        if model_name != TINY:
            raise CLIError(f"--transcoders {TINY} only fits --model {TINY}, not {model_name!r}")
        from sae_circuits.toy import tiny_transcoders

        return sc.load_transcoders(tiny_transcoders(model, "skip", d_sae=256))
    try:
        return sc.load_transcoders(source, model=model, device=device)
    except Exception as e:
        raise CLIError(
            f"cannot load transcoders {source!r} for model {model_name!r}: "
            f"{type(e).__name__}: {_short(e)}"
        ) from e


def _feature_labels(model_name: str, transcoders: str, graph: AttributionGraph) -> dict[str, str]:
    """Automatic labels (node id -> text) where the transcoders ship them (toy-facts)."""
    kind = _TOY_FACTS_TRANSCODERS.get(transcoders)
    if model_name != "toy-facts" or kind is None:
        return {}
    try:
        from sae_circuits.toy.facts import load_toy_labels

        labels = load_toy_labels(kind)  # type: ignore[arg-type]
    except Exception as e:  # labels are a nicety: never fail the run for them
        logging.getLogger(__name__).warning("no toy-facts feature labels: %s", e)
        return {}
    out = {}
    feats = graph.nodes[graph.nodes["kind"] == "feature"]
    for layer, feature, pos in zip(
        feats["layer"], feats["feature"], feats["position"], strict=True
    ):
        layer_labels = labels.get(int(layer), [])
        if int(feature) < len(layer_labels):
            out[node_id("feature", layer=int(layer), feature=int(feature), position=int(pos))] = (
                str(layer_labels[int(feature)])
            )
    return out


# ---------------------------------------------------------------------------------------------
# shared steps


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"output {str(out)!r} exists and is not a folder")
    existing = [n for n in _GRAPH_FILES if (out / n).exists()]
    if existing and not overwrite:
        raise CLIError(
            f"{str(out)!r} already holds a graph ({', '.join(existing)}); pass --overwrite to "
            "replace it (annotations.json is kept) or choose another folder"
        )


def _describe(row: Any) -> str:
    kind = str(row["kind"])
    if kind == "feature":
        return f"L{row['layer']} #{row['feature']} @{row['position']}"
    if kind == "error":
        return f"error L{row['layer']} @{row['position']}"
    return f"{kind} {row['token']!s}@{row['position']}"


def _fmt(x: Any, spec: str = ".3f") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return format(v, spec) if math.isfinite(v) else "nan"


def print_targets(graph: AttributionGraph) -> None:
    """Print the graph's targets: label, kind, position (and hook), value (and probability)."""
    rows = []
    for _, row in graph.targets.iterrows():
        where = f"@{row['position']}" + ("" if _missing(row["hook"]) else f" {row['hook']}")
        prob = "" if _missing(row["probability"]) else f"  p={_fmt(row['probability'])}"
        rows.append((str(row["label"]), str(row["kind"]), where, _fmt(row["value"], ".4g"), prob))
    width = [min(max((len(r[i]) for r in rows), default=0), 40) for i in range(3)]
    print("targets:")
    for label, kind, where, value, prob in rows:
        print(
            f"  {label:<{width[0]}}  {kind:<{width[1]}}  {where:<{width[2]}}  value={value}{prob}"
        )


def _missing(x: Any) -> bool:
    import pandas as pd

    return x is None or bool(pd.isna(x))


def print_summary(
    graph: AttributionGraph,
    pruned: AttributionGraph,
    labels: dict[str, str],
    top: int = 10,
    *,
    targets: bool = False,
) -> None:
    """Print the targets (``targets``: given ones) or top logits, sizes, scores and the most
    influential features."""
    if targets:
        print_targets(graph)
    else:
        print("top logits:")
        for token, prob in zip(graph.logits["token"], graph.logits["probability"], strict=True):
            print(f"  {token!s:>12}  p={prob:.3f}")
    for name, g in (("graph", graph), ("pruned", pruned)):
        counts = g.nodes["kind"].value_counts()
        kinds = ("feature", "error", "token", "logit", *(("target",) if "target" in counts else ()))
        parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in kinds)
        try:
            scores = g.scores()
            shown = (
                f"replacement {_fmt(scores.replacement)}, completeness {_fmt(scores.completeness)}"
            )
        except ValueError as e:
            shown = f"no scores ({e})"
        print(f"{name}: {g.n_nodes} nodes ({parts}), {g.adjacency.nnz} edges; {shown}")
    feats = cast("pd.DataFrame", pruned.nodes[pruned.nodes["kind"] == "feature"])
    if len(feats):
        print(f"top features by influence (of {len(feats)} kept):")
        for _, row in feats.nlargest(top, "influence").iterrows():
            layer, feature, position = (int(row[c]) for c in ("layer", "feature", "position"))  # type: ignore[arg-type]
            key = node_id("feature", layer=layer, feature=feature, position=position)
            label = f"  {labels[key]}" if key in labels else ""
            print(
                f"  {_describe(row):<18} act={_fmt(row['activation'])}  "
                f"influence={_fmt(row['influence'], '.3g')}{label}"
            )


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


def _write(
    out: Path,
    graph: AttributionGraph,
    node_threshold: float,
    edge_threshold: float,
    *,
    slug: str | None,
    labels: dict[str, str],
    head_loadings: Callable[[AttributionGraph], pd.DataFrame] | None = None,
    attention: Callable[[AttributionGraph, pd.DataFrame], list[QKAttribution] | None] | None = None,
) -> AttributionGraph:
    """Prune ``graph`` and write the folder; ``head_loadings(pruned)``, when given, computes the
    pruned graph's head loadings for it, and ``attention(pruned, loadings)`` the QK attributions
    to save with them (``None``: none)."""
    from sae_circuits.viewer import default_slug, write_graph_folder

    try:
        pruned = graph.prune(node_threshold, edge_threshold)
    except ValueError as e:
        raise CLIError(f"cannot prune the graph: {_short(e)}", code=1) from e
    loads = None
    if head_loadings is not None:
        start = time.perf_counter()
        try:
            loads = head_loadings(pruned)
        except (ValueError, TypeError) as e:
            raise CLIError(f"cannot compute the head loadings: {_short(e)}", code=1) from e
        n_edges = loads.groupby(["source", "target"]).ngroups if len(loads) else 0
        print(
            f"head loadings: {n_edges} of {pruned.adjacency.nnz} edges of the pruned graph split "
            f"over the heads that carry them ({len(loads)} parts) in "
            f"{time.perf_counter() - start:.1f} s"
        )
    qks = attention(pruned, loads) if attention is not None and loads is not None else None
    slug = slug or default_slug(graph.metadata.get("prompt"))
    try:
        files = write_graph_folder(
            out, graph, pruned, slug=slug, labels=labels, head_loadings=loads, attention=qks
        )
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot write the graph folder {str(out)!r}: {_short(e)}", code=1) from e
    written = [files.graph, files.pruned, files.document, files.head_loadings, files.attention]
    print(f"wrote {', '.join(str(f) for f in written if f is not None)}")
    return pruned


def _serve(folder: Path, host: str, port: int, allow_remote: bool, open_browser: bool) -> int:
    from sae_circuits.viewer import GraphFolderError, RemoteBindError, make_server

    try:
        server = make_server(folder, host=host, port=port, allow_remote=allow_remote)
    except RemoteBindError as e:
        raise CLIError(str(e)) from e
    except (FileNotFoundError, GraphFolderError) as e:
        raise CLIError(str(e)) from e
    except OSError as e:
        raise CLIError(f"cannot listen on {host}:{port}: {e.strerror or e}", code=1) from e
    url = server.url
    print(f"serving {server.folder} at {url}  (Ctrl-C to stop)")
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


# ---------------------------------------------------------------------------------------------
# subcommands


def _attribute(args: argparse.Namespace) -> int:
    import sae_circuits as sc
    from sae_circuits.viewer import check_bind_host
    from sae_circuits.viewer.security import RemoteBindError

    out = Path(args.out)
    _check_out(out, args.overwrite)
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
    labels = _feature_labels(args.model, args.transcoders, graph)

    def loadings(pruned: AttributionGraph) -> pd.DataFrame:
        return sc.head_loadings(model, args.prompt, transcoders, pruned)

    n_qk = DEFAULT_QK_HEADS if args.qk_heads is None else args.qk_heads

    def attention(pruned: AttributionGraph, loads: pd.DataFrame) -> list[QKAttribution] | None:
        return _qk_attributions(model, args.prompt, transcoders, pruned, loads, n_qk)

    pruned = _write(
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
        return _serve(out, args.host, args.port, args.allow_remote, args.open)
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
        print(f"QK attributions: none written ({_short(e, 200)})")
        return None
    shown = ", ".join(f"L{a}H{b} {c}<-{d}" for a, b, c, d, _ in chosen[:4])
    more = f", +{len(chosen) - 4}" if len(chosen) > 4 else ""
    print(
        f"QK attributions: {len(out)} (head, query <- key) carrying the most loading "
        f"({shown}{more}), top {QK_PAIRS} pairs each, in {time.perf_counter() - start:.1f} s"
    )
    return out


def _serve_cmd(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise CLIError(
            f"no graph folder at {str(folder)!r} (write one with `sae-circuits attribute ... -o "
            f"{folder}`)"
        )
    return _serve(folder, args.host, args.port, args.allow_remote, args.open)


def _demo(args: argparse.Namespace) -> int:
    from sae_circuits.demo import PROMPT, SOURCE, run_demo

    if args.out is not None:
        _check_out(Path(args.out), overwrite=True)
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
        _write(out, graph, 0.8, 0.98, slug="toy-facts-dallas", labels=report.labels)
        print(f"view it: sae-circuits serve {out}")
    return 0


def _name(e: pd.Series, end: str) -> str:
    kind, layer, pos = str(e[f"{end}_kind"]), e[f"{end}_layer"], e[f"{end}_position"]
    if kind == "feature":
        return f"feature L{layer}/p{pos}/#{e[f'{end}_feature']}"
    if kind == "error":
        return f"error L{layer}/p{pos}"
    return f"{kind} {e[f'{end}_token']!s}@p{pos}"


# ---------------------------------------------------------------------------------------------
# parser


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; other machines need --allow-remote)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"port (default: {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines can reach (anyone who reaches it can edit annotations)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")


def build_parser() -> argparse.ArgumentParser:
    """The ``sae-circuits`` argument parser."""
    from sae_circuits._version import __version__

    fmt = _Formatter
    parser = argparse.ArgumentParser(
        prog="sae-circuits",
        description="Attribution graphs (circuit tracing) with SAELens transcoders.",
        epilog="examples:\n"
        '  sae-circuits attribute "t5 t9 t3 t7" --model tiny --transcoders tiny -o out/tiny\n'
        "  sae-circuits serve out/tiny\n"
        "  sae-circuits demo -o out/demo",
        formatter_class=fmt,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        type=_positive_int,
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
        type=_integer,
        default=None,
        metavar="P",
        help="token position of the targets given (negative: from the end; default: -1, the last)",
    )
    att.add_argument(
        "--max-n-logits",
        type=_positive_int,
        default=10,
        metavar="K",
        help="at most K logit nodes (default: 10; ignored when targets are given)",
    )
    att.add_argument(
        "--desired-logit-prob",
        type=_fraction("--desired-logit-prob"),
        default=0.95,
        metavar="P",
        help="keep the fewest top logits reaching probability P (default: 0.95; ignored when "
        "targets are given)",
    )
    att.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        metavar="B",
        help="targets per backward pass (default: 256)",
    )
    att.add_argument(
        "--node-threshold",
        type=_fraction("--node-threshold"),
        default=0.8,
        metavar="T",
        help="pruning: keep the nodes holding this share of influence (default: 0.8)",
    )
    att.add_argument(
        "--edge-threshold",
        type=_fraction("--edge-threshold"),
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
        type=_count,
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
    _add_server_options(att)
    att.set_defaults(func=_attribute)

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
    _add_server_options(srv)
    srv.set_defaults(func=_serve_cmd)

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
