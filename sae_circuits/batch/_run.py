"""``attribute_many``: the graphs of many prompts into a graph store, resumable.

Example:
    >>> import sae_circuits as sc
    >>> result = sc.attribute_many("toy-facts", "toy-facts", prompts, "out/batch")
    >>> result.table[["prompt", "status", "top_token", "replacement"]]
    >>> sc.attribute_many("toy-facts", "toy-facts", prompts, "out/batch",
    ...                   executor=sc.batch.RayExecutor("auto"))     # the same, on a cluster
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd

from sae_circuits.batch._executors import Executor, InProcessExecutor
from sae_circuits.batch._store import (
    INDEX_COLUMNS,
    KEEP_CHOICES,
    GraphStore,
    Keep,
    prompt_key,
)
from sae_circuits.batch._worker import KNOBS, ModelSpec, Task, TranscodersSpec, WorkSpec
from sae_circuits.core import progress_bar
from sae_circuits.graph import check_threshold

__all__ = ["BatchResult", "attribute_many"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """What a batch run did.

    Attributes:
        store: The graph store (all prompts it holds, from this run and earlier ones).
        table: The index rows of this run's prompts (one per distinct prompt, in the order
            given; columns :data:`~sae_circuits.batch.INDEX_COLUMNS`).
        n_done: Prompts attributed by this run.
        n_skipped: Prompts already done and valid in the store (not attributed again).
        n_failed: Prompts that failed (their ``error`` says why).
        seconds: Wall time of the run, loading the workers included.
    """

    store: GraphStore
    table: pd.DataFrame
    n_done: int
    n_skipped: int
    n_failed: int
    seconds: float

    @property
    def graphs_per_minute(self) -> float:
        """Prompts attributed per minute of wall time (loading included)."""
        return 60.0 * self.n_done / self.seconds if self.seconds > 0 else float("nan")

    def __repr__(self) -> str:
        return (
            f"BatchResult({self.store.folder}, {len(self.table)} prompts: {self.n_done} done, "
            f"{self.n_skipped} skipped, {self.n_failed} failed, {self.seconds:.1f} s)"
        )


def _check_prompts(prompts: Any) -> list[str | list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(
            "prompts must be a list of prompts (strings, or lists of token ids), got "
            f"{type(prompts).__name__}"
        )
    out: list[str | list[int]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, Sequence) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in p
        ):
            out.append([int(t) for t in p])
        elif hasattr(p, "tolist"):  # a tensor or array of ids
            out.append([int(t) for t in cast("Any", p).tolist()])
        else:
            raise TypeError(f"prompt {i} is a {type(p).__name__}; expected a string or token ids")
    return out


def attribute_many(
    model: ModelSpec,
    transcoders: TranscodersSpec,
    prompts: Sequence[str | Sequence[int]],
    out_dir: str | os.PathLike[str],
    *,
    executor: Executor | None = None,
    keep: Keep = "both",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    retry_failed: bool = True,
    device: str | None = None,
    progress: bool | None = None,
    **knobs: Any,
) -> BatchResult:
    """Attribute every prompt into a graph store; a rerun skips what is done and valid.

    Args:
        model: A model name or path (:func:`sae_circuits.load_model`), a factory returning the
            model (a module-level function or ``functools.partial``: it is called on each
            worker), or, with the in-process executor, the model itself.
        transcoders: A transcoder name, folder or config (:func:`sae_circuits.load_transcoders`),
            a factory called with the model, or, in-process, a transcoder set.
        prompts: Texts or lists of token ids. One prompt given twice is attributed once.
        out_dir: The store's folder (created; an existing store must have been made with the
            same model, transcoders and settings).
        executor: Where to run: ``None`` (this process), :class:`InProcessExecutor` or
            :class:`RayExecutor`.
        keep: Graphs saved per prompt: ``"full"``, ``"pruned"`` or ``"both"``.
        node_threshold: Pruning's node threshold (for ``"pruned"``/``"both"``), in ``[0, 1]``.
        edge_threshold: Pruning's edge threshold, in ``[0, 1]``.
        retry_failed: Attribute again the prompts whose last attempt failed.
        device: Device of a model and transcoders loaded by name.
        progress: Show a progress bar (default: when stderr is a terminal).
        **knobs: Keyword arguments of :func:`sae_circuits.attribute` (``max_feature_nodes``,
            ``max_n_logits``, ``batch_size``, ...; ``progress`` excepted).

    Returns:
        A :class:`BatchResult`; the store's ``index.csv`` is rewritten at the end.

    Raises:
        ValueError: An unknown knob or ``keep``, a threshold outside ``[0, 1]``, or a store made
            with other settings (:class:`~sae_circuits.batch.StoreMismatchError`).
        TypeError: Prompts that are neither strings nor token ids; a loaded model given to a
            :class:`RayExecutor`.
        RuntimeError: Another run is writing the store.
    """
    started = time.perf_counter()
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown attribute() knobs {unknown}; valid knobs: {', '.join(KNOBS)}")
    if keep not in KEEP_CHOICES:
        raise ValueError(
            f"unknown keep {keep!r}; valid choices: {', '.join(map(repr, KEEP_CHOICES))}"
        )
    check_threshold("node_threshold", node_threshold)
    check_threshold("edge_threshold", edge_threshold)
    given = _check_prompts(prompts)
    spec = WorkSpec(
        model=model,
        transcoders=transcoders,
        knobs=dict(knobs),
        keep=keep,
        node_threshold=float(node_threshold),
        edge_threshold=float(edge_threshold),
        device=device,
    )
    store = GraphStore(out_dir)
    store.open_for(spec.description())
    executor = InProcessExecutor() if executor is None else executor
    with store.lock():
        store.repair_journal()
        store.clean_temporary()
        executor.start(spec)
        try:
            counts = _run(
                store, executor, spec, given, retry_failed=retry_failed, progress=progress
            )
        finally:
            executor.close()
        store.write_index()
    latest = store.latest()
    keys = counts.pop("keys")
    table = pd.DataFrame([latest[k] for k in keys if k in latest], columns=list(INDEX_COLUMNS))
    result = BatchResult(store=store, table=table, seconds=time.perf_counter() - started, **counts)
    logger.info("%r", result)
    return result


def _run(
    store: GraphStore,
    executor: Executor,
    spec: WorkSpec,
    prompts: list[str | list[int]],
    *,
    retry_failed: bool,
    progress: bool | None,
) -> dict[str, Any]:
    texts = [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompts]
    ids = executor.tokenize(prompts)
    latest = store.latest()
    keys: list[str] = []
    tasks: list[Task] = []
    seen: set[str] = set()
    n_skipped = n_failed = 0
    for text, tokens in zip(texts, ids, strict=True):
        if isinstance(tokens, str):  # unusable prompt: recorded under a key of its text
            key = "bad-" + prompt_key([ord(c) for c in text])[:12]
            if key not in seen:
                seen.add(key)
                keys.append(key)
                store.append(_bad_record(key, text, tokens))
                n_failed += 1
            continue
        key = prompt_key(tokens)
        if key in seen:
            continue
        seen.add(key)
        keys.append(key)
        rec = latest.get(key)
        if rec is not None and (
            store.is_done(rec) or (rec.get("status") == "failed" and not retry_failed)
        ):
            n_skipped += 1
            continue
        tasks.append(
            Task(
                key=key,
                prompt=text,
                token_ids=tuple(tokens),
                graph_path=str(store.graph_path(key)) if spec.keep != "pruned" else None,
                pruned_path=str(store.pruned_path(key)) if spec.keep != "full" else None,
                store=str(store.folder),
            )
        )
    logger.info("%d prompts: %d to attribute, %d done before", len(keys), len(tasks), n_skipped)
    n_done = 0
    bar = progress_bar(total=len(tasks), desc="graphs", progress=progress, unit="graph")
    try:
        for record in executor.run(tasks):
            record.setdefault("finished", time.time())
            store.append(record)
            if record.get("status") == "ok":
                n_done += 1
            else:
                n_failed += 1
                logger.warning("prompt %r failed: %s", record.get("prompt"), record.get("error"))
            bar.update(1)
    finally:
        bar.close()
    return {"keys": keys, "n_done": n_done, "n_skipped": n_skipped, "n_failed": n_failed}


def _bad_record(key: str, text: str, error: str) -> Mapping[str, Any]:
    return {
        "key": key,
        "prompt": text,
        "status": "failed",
        "error": error,
        "attempts": 0,
        "finished": time.time(),
    }
