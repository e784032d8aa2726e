"""Building a folder of feature dashboards: the model over a corpus, streamed and resumable.

:func:`build_features` runs the model over the corpus's token windows in batches (scoped hooks
at the transcoders' inputs, through :func:`~sae_circuits.replacement_model.run_to_output`, and
the transcoders' encoders through :class:`~sae_circuits.replacement_model.ReplacementSemantics`),
feeds one :class:`~._accumulator.LayerStats` per layer, and writes one JSON per feature
(:mod:`._store`). Every ``checkpoint_every`` batches the statistics are saved to
``out/.checkpoint.pt`` atomically (temporary file + ``os.replace``); a run killed half-way and
started again with the same arguments skips the windows the checkpoint holds and ends with the
same files as an uninterrupted run. The checkpoint is removed once the files are written.

Example:
    >>> summary = build_features(model, transcoders, "corpus.txt", "out/features", top_k=10)
    >>> summary.n_files
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer

from sae_circuits.core.files import atomic_write
from sae_circuits.core.progress import progress_bar
from sae_circuits.core.prompts import token_strings
from sae_circuits.features._accumulator import LayerStats
from sae_circuits.features._corpus import iter_texts, token_windows
from sae_circuits.features._logits import logit_effects
from sae_circuits.features._store import FORMAT, write_feature_files, write_index
from sae_circuits.graph import AttributionGraph
from sae_circuits.replacement_model import ReplacementSemantics, run_to_output
from sae_circuits.transcoders import TranscoderSet, check_compatible

__all__ = ["CHECKPOINT", "FeatureBuild", "build_features", "graph_features"]

logger = logging.getLogger(__name__)

#: The checkpoint's file name inside the output folder.
CHECKPOINT = ".checkpoint.pt"


@dataclass(frozen=True)
class FeatureBuild:
    """What :func:`build_features` did.

    Attributes:
        out: The folder written.
        n_windows: Windows of the corpus read (in this and earlier, resumed runs).
        n_tokens: Tokens counted (padding and a leading BOS left out).
        n_files: Feature files written (``0`` when stopped early by ``stop_after``).
        resumed_windows: Windows skipped because a checkpoint held them.
        complete: Whether the files were written (else a checkpoint was left).
    """

    out: Path
    n_windows: int
    n_tokens: int
    n_files: int
    resumed_windows: int
    complete: bool


def build_features(
    model: HookedTransformer,
    transcoders: TranscoderSet,
    corpus: str | Path | Iterable[str],
    out: str | Path,
    *,
    top_k: int = 10,
    samples: int = 12,
    max_tokens: int | None = None,
    context_len: int = 64,
    batch_size: int = 16,
    features: Mapping[int, Sequence[int]] | None = None,
    labels: Mapping[int, Sequence[str]] | None = None,
    n_logits: int = 10,
    bins: int = 32,
    checkpoint_every: int = 20,
    stop_after: int | None = None,
    split: str = "train",
    progress: bool | None = None,
) -> FeatureBuild:
    """Feature dashboards of ``transcoders`` on ``corpus``, written to ``out``.

    Args:
        model: The model.
        transcoders: Its transcoder set (checked against the model).
        corpus: A ``.txt`` (one document per line) / ``.jsonl`` file, a dataset folder or a
            dataset name (:func:`~._corpus.iter_texts`), or the documents themselves (an
            iterable of texts, read again in the same order when resuming).
        out: Output folder (created).
        top_k: Top activating windows per feature.
        samples: Windows sampled per feature for the quantile bands.
        max_tokens: Stop after about this many corpus tokens (whole windows).
        context_len: Tokens per window.
        batch_size: Windows per forward pass.
        features: Only these features (layer -> ids); default: every feature active on the
            corpus.
        labels: Feature labels by layer (``labels[layer][feature]``), written where given.
        n_logits: Top / bottom logit effects per feature.
        bins: Histogram bins.
        checkpoint_every: Batches between checkpoints.
        stop_after: Stop (leaving a checkpoint) after this many batches in this call: for
            time-boxed jobs and tests of resuming.
        split: Dataset split (datasets only).
        progress: Progress bar (``None``: when stderr is a terminal).

    Returns:
        A :class:`FeatureBuild`.

    Raises:
        ValueError: Bad arguments, or a checkpoint in ``out`` from other arguments.
    """
    for name, value in (
        ("top_k", top_k),
        ("batch_size", batch_size),
        ("checkpoint_every", checkpoint_every),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if samples < 0 or (max_tokens is not None and max_tokens < 1):
        raise ValueError("samples must be >= 0 and max_tokens >= 1")
    resolved = check_compatible(model, transcoders)
    n_layers = transcoders.n_layers
    selected = _selection(transcoders, features)
    context_len = min(context_len, model.cfg.n_ctx)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "corpus": str(corpus) if isinstance(corpus, (str, Path)) else "<texts>",
        "split": split,
        "top_k": top_k,
        "samples": samples,
        "max_tokens": max_tokens,
        "context_len": context_len,
        "batch_size": batch_size,
        "bins": bins,
        "features": {str(k): v.tolist() for k, v in selected.items()},
        "d_sae": [transcoders.d_sae(layer) for layer in range(n_layers)],
    }
    stats = {
        layer: LayerStats(len(ids), k=top_k, samples=samples, context_len=context_len, bins=bins)
        for layer, ids in selected.items()
    }
    done, tokens_read = _resume(out / CHECKPOINT, config, stats)
    sem = ReplacementSemantics(transcoders)
    texts = iter_texts(corpus, split=split) if isinstance(corpus, (str, Path)) else iter(corpus)
    windows = token_windows(model, texts, context_len=context_len)
    windows = _limit(windows, max_tokens)
    bar = progress_bar(total=max_tokens or 0, desc="features", progress=progress, unit="tok")
    bar.update(tokens_read)
    n_windows, batches = done, 0
    complete = True
    with bar:
        for batch in _batches(itertools.islice(windows, done, None), batch_size):
            acts = _activations(model, resolved.inputs, sem, batch, selected)
            toks, mask = _pad(model, batch)
            ids = torch.arange(n_windows, n_windows + len(batch))
            for layer, a in acts.items():
                stats[layer].update(a, toks, mask, ids)
            n_windows += len(batch)
            tokens_read += sum(len(w) for w in batch)
            bar.update(sum(len(w) for w in batch))
            batches += 1
            if batches % checkpoint_every == 0:
                _save(out / CHECKPOINT, config, stats, n_windows, tokens_read)
            if stop_after is not None and batches >= stop_after:
                complete = False
                break
    if not complete:
        _save(out / CHECKPOINT, config, stats, n_windows, tokens_read)
        n_tok = next(iter(stats.values())).n_tokens if stats else 0
        return FeatureBuild(out, n_windows, n_tok, 0, done, False)
    n_files, written = _write(model, transcoders, out, stats, selected, labels, n_logits, config)
    n_tok = next(iter(stats.values())).n_tokens if stats else 0
    write_index(
        out,
        {
            "model": str(model.cfg.model_name),
            "transcoders": transcoders.describe(),
            "n_windows": n_windows,
            "n_tokens": n_tok,
            "n_files": n_files,
            "features": written,
            "logit_effects": "sum of all output layers' decoder writes"
            if any(len(transcoders.output_layers(layer)) > 1 for layer in range(n_layers))
            else "decoder write",
            "config": config | {"features": None},
        },
    )
    (out / CHECKPOINT).unlink(missing_ok=True)
    return FeatureBuild(out, n_windows, n_tok, n_files, done, True)


def graph_features(graph: AttributionGraph) -> dict[int, list[int]]:
    """The features present in ``graph``: layer -> sorted feature ids (for ``features=``)."""
    nodes = graph.nodes[graph.nodes["kind"] == "feature"]
    out: dict[int, set[int]] = {}
    for layer, feature in zip(nodes["layer"], nodes["feature"], strict=True):
        out.setdefault(int(layer), set()).add(int(feature))
    return {layer: sorted(ids) for layer, ids in sorted(out.items())}


def _selection(
    ts: TranscoderSet, features: Mapping[int, Sequence[int]] | None
) -> dict[int, torch.Tensor]:
    if features is None:
        return {layer: torch.arange(ts.d_sae(layer)) for layer in range(ts.n_layers)}
    out = {}
    for layer, ids in sorted(features.items()):
        if not 0 <= int(layer) < ts.n_layers:
            raise ValueError(f"layer {layer} is outside [0, {ts.n_layers})")
        t = torch.tensor(sorted({int(i) for i in ids}), dtype=torch.long)
        if t.numel() and (t.min() < 0 or t.max() >= ts.d_sae(layer)):
            raise ValueError(f"layer {layer}: feature ids must lie in [0, {ts.d_sae(layer)})")
        if t.numel():
            out[int(layer)] = t
    return out


def _limit(windows: Iterator[torch.Tensor], max_tokens: int | None) -> Iterator[torch.Tensor]:
    seen = 0
    for w in windows:
        if max_tokens is not None and seen >= max_tokens:
            return
        seen += len(w)
        yield w


def _batches(windows: Iterator[torch.Tensor], size: int) -> Iterator[list[torch.Tensor]]:
    while batch := list(itertools.islice(windows, size)):
        yield batch


def _pad(model: HookedTransformer, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b, n)`` tokens (``-1`` at padding) and the mask of positions that count."""
    n = max(len(w) for w in batch)
    toks = torch.full((len(batch), n), -1, dtype=torch.long)
    for i, w in enumerate(batch):
        toks[i, : len(w)] = w
    mask = toks >= 0
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if model.cfg.default_prepend_bos and bos is not None:
        mask[:, 0] &= toks[:, 0] != bos
    return toks, mask


@torch.no_grad()
def _activations(
    model: HookedTransformer,
    inputs: Sequence[Any],
    sem: ReplacementSemantics,
    batch: list[torch.Tensor],
    selected: Mapping[int, torch.Tensor],
) -> dict[int, torch.Tensor]:
    """``(b, n, F_sel)`` activations of the selected features of each layer."""
    toks, _ = _pad(model, batch)
    x_in: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        def fn(t: torch.Tensor) -> None:
            x_in[layer] = t.detach()

        return fn

    hooks = [(inputs[layer], keep(layer)) for layer in selected]
    # right padding: a causal model's earlier positions never see it (any id will do)
    run_to_output(model, toks.clamp(min=0).to(model.W_E.device), hooks, positions="last")
    out = {}
    for layer, ids in selected.items():
        x = x_in[layer]
        b, n, d = x.shape
        a = sem.features(layer, x.reshape(b * n, d))
        out[layer] = a[:, ids.to(a.device)].reshape(b, n, len(ids)).float().cpu()
    return out


def _save(
    path: Path, config: dict[str, Any], stats: Mapping[int, LayerStats], windows: int, tokens: int
) -> None:
    state = {
        "config": config,
        "windows": windows,
        "tokens": tokens,
        "stats": {layer: s.state_dict() for layer, s in stats.items()},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    logger.info("checkpoint: %d windows in %s", windows, path)


def _resume(path: Path, config: dict[str, Any], stats: Mapping[int, LayerStats]) -> tuple[int, int]:
    if not path.is_file():
        return 0, 0
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"cannot read the checkpoint {path} ({type(e).__name__}); remove it to start over"
        ) from e
    if state.get("config") != config:
        raise ValueError(
            f"{path} is the checkpoint of a run with other arguments; rerun with the same "
            "arguments to resume, or remove it to start over"
        )
    for layer, s in stats.items():
        s.load_state_dict(state["stats"][layer])
    logger.info("resuming after %d windows from %s", state["windows"], path)
    return int(state["windows"]), int(state["tokens"])


class _Decoder:
    """Token strings by id, decoded once each."""

    def __init__(self, model: HookedTransformer) -> None:
        self.model, self.cache = model, {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        missing = [i for i in set(ids) if i not in self.cache]
        if missing:
            for i, s in zip(missing, token_strings(self.model, missing), strict=True):
                self.cache[i] = s if s is not None else f"<{i}>"
        return [self.cache[i] for i in ids]


def _examples(kept: Any, j: int, decode: _Decoder) -> list[dict[str, Any]]:
    out = []
    for r in range(kept.key.shape[0]):
        if not torch.isfinite(kept.key[r, j]):
            continue
        toks = kept.tokens[r, j]
        n = int((toks >= 0).sum())
        acts = kept.acts[r, j, :n]
        out.append(
            {
                "tokens": decode(toks[:n].tolist()),
                "token_ids": toks[:n].tolist(),
                "tokens_acts_list": [round(float(v), 5) for v in acts],
                "train_token_ind": int(acts.argmax()),
                "is_repeated_datapoint": False,
                "window": int(kept.window[r, j]),
                "max_act": round(float(kept.value[r, j]), 5),
            }
        )
    return out


def _bands(samples: list[dict[str, Any]], n_bands: int = 4) -> list[dict[str, Any]]:
    ordered = sorted(samples, key=lambda e: (e["max_act"], e["window"]))
    bands = []
    for i, part in enumerate(np.array_split(np.arange(len(ordered)), n_bands)):
        if not len(part):
            continue
        chosen = [ordered[p] for p in part]
        lo, hi = chosen[0]["max_act"], chosen[-1]["max_act"]
        bands.append(
            {
                "quantile_name": f"Quantile {i + 1}/{n_bands} of a random sample ({lo:.3g} to {hi:.3g})",
                "examples": chosen[::-1],
            }
        )
    return bands[::-1]


def _write(
    model: HookedTransformer,
    ts: TranscoderSet,
    out: Path,
    stats: Mapping[int, LayerStats],
    selected: Mapping[int, torch.Tensor],
    labels: Mapping[int, Sequence[str]] | None,
    n_logits: int,
    config: dict[str, Any],
) -> tuple[int, dict[str, str | None]]:
    """Write the feature files; returns their number and ``{"layer_feature": label}``."""
    decode = _Decoder(model)
    only_active = config["features"] == {
        str(layer): list(range(ts.d_sae(layer))) for layer in range(ts.n_layers)
    }
    n_files = 0
    written: dict[str, str | None] = {}
    for layer, s in stats.items():
        effects = logit_effects(model, ts, layer, n=n_logits)
        records: list[dict[str, Any]] = []
        for j, f in enumerate(selected[layer].tolist()):
            active = int(s.active[j])
            if only_active and active == 0:
                continue
            hi = float(s.hi[j])
            edges = [hi * b / s.bins for b in range(s.bins + 1)]
            top_ids = effects.top.indices[f].tolist()
            bot_ids = effects.bottom.indices[f].tolist()
            label = None
            if labels is not None and layer in labels and f < len(labels[layer]):
                label = str(labels[layer][f])
            record = {
                "format": FORMAT,
                "layer": layer,
                "feature": f,
                "index": f,
                "label": label,
                "n_tokens": s.n_tokens,
                "density": active / s.n_tokens if s.n_tokens else 0.0,
                "act_min": 0.0,
                "act_max": round(float(s.max[j]), 5),
                "mean_act": float(s.total[j]) / active if active else 0.0,
                "histogram": {"bin_edges": edges, "counts": s.hist[j].tolist()},
                "top_logits": decode(top_ids),
                "top_logit_ids": top_ids,
                "top_logit_values": [round(float(v), 5) for v in effects.top.values[f]],
                "bottom_logits": decode(bot_ids),
                "bottom_logit_ids": bot_ids,
                "bottom_logit_values": [round(float(v), 5) for v in effects.bottom.values[f]],
                "examples_quantiles": [
                    {"quantile_name": "Top activations", "examples": _examples(s.top, j, decode)},
                    *_bands(_examples(s.sample, j, decode)),
                ],
            }
            records.append(record)
            written[f"{layer}_{f}"] = label
        n_files += write_feature_files(out, records)
    return n_files, written
