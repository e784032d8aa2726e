"""Models, transcoders and shipped labels by the names the command line takes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sae_circuits.cli._common import CLIError, short
from sae_circuits.graph import node_id

if TYPE_CHECKING:
    from sae_circuits.graph import AttributionGraph

#: The model built into the CLI (random weights; anything else goes to
#: ``sae_circuits.models.load_model``).
TINY = "tiny"

#: Transcoder configs of the toy-facts model, and which shipped labels fit them.
_TOY_FACTS_TRANSCODERS = {"toy-facts": "plt", "toy-facts-clt": "clt"}
#: Transcoder configs of every shipped toy model: name -> (model, kind of labels).
_TOY_TRANSCODERS = {
    **{k: ("toy-facts", v) for k, v in _TOY_FACTS_TRANSCODERS.items()},
    "toy-multilingual": ("toy-multilingual", "plt"),
    "toy-multilingual-clt": ("toy-multilingual", "clt"),
}


def toy_labels(model_name: str, transcoders: str) -> dict[int, list[str]] | None:
    """The shipped labels of a toy model's transcoders (``None``: not a shipped toy pair)."""
    entry = _TOY_TRANSCODERS.get(transcoders)
    if entry is None or entry[0] != model_name:
        return None
    from sae_circuits.toy.facts import load_toy_labels

    return load_toy_labels(entry[1], name=entry[0])  # type: ignore[arg-type]


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
        raise CLIError(f"cannot load model {name!r}: {short(e)} (or {TINY!r}, built in)") from e
    except Exception as e:
        raise CLIError(f"cannot load model {name!r}: {type(e).__name__}: {short(e)}", 1) from e


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
            f"{type(e).__name__}: {short(e)}"
        ) from e


def feature_labels(model_name: str, transcoders: str, graph: AttributionGraph) -> dict[str, str]:
    """Automatic labels (node id -> text) where the transcoders ship them (the toy models)."""
    try:
        labels = toy_labels(model_name, transcoders)
    except Exception as e:  # labels are a nicety: never fail the run for them
        logging.getLogger(__name__).warning("no toy-facts feature labels: %s", e)
        return {}
    if labels is None:
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
