"""What a worker is given once (:class:`WorkSpec`) and what it does per prompt (:class:`Worker`).

A worker loads the model and transcoders once, from names or factories (never from weights sent
to it), then takes tasks of token ids and file paths: it attributes the prompt, saves the full
and/or pruned graph atomically into the store (a shared folder on a cluster) and returns a small
record (key, checksums, sizes, logits, scores, timings): ids in, graph files out.

Example:
    >>> spec = WorkSpec(model="toy-facts", transcoders="toy-facts")
    >>> worker = Worker(spec)
    >>> worker.tokenize(["The capital of the state containing Dallas is"])
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_circuits.attribution import attribute
from sae_circuits.batch._store import Keep, file_digest, prompt_key
from sae_circuits.core import to_tokens

__all__ = ["KNOBS", "ModelSpec", "Task", "TranscodersSpec", "WorkSpec", "Worker", "describe"]

logger = logging.getLogger(__name__)

#: A model: a name or path for :func:`sae_circuits.load_model`, a factory returning a
#: ``HookedTransformer`` (a module-level function or ``functools.partial``, so that it pickles),
#: or, in-process only, the model itself.
ModelSpec = str | os.PathLike[str] | Callable[[], Any]

#: Transcoders: a name, folder or config for :func:`sae_circuits.load_transcoders`, a factory
#: called with the model, or, in-process only, a transcoder set.
TranscodersSpec = str | os.PathLike[str] | Callable[[Any], Any]

#: The knobs of :func:`sae_circuits.attribute` a batch passes on (``progress`` is the batch's own).
KNOBS = tuple(
    name
    for name, p in inspect.signature(attribute).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "progress"
)

#: How many logits the index's ``logits`` column lists.
INDEX_LOGITS = 5


def describe(spec: Any) -> Any:
    """A JSON description of a model / transcoders spec, for the store's manifest."""
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    if isinstance(spec, functools.partial):
        args = [describe(a) for a in spec.args]
        kwargs = {k: describe(v) for k, v in sorted(spec.keywords.items())}
        return {"factory": describe(spec.func), "args": args, "kwargs": kwargs}
    if isinstance(spec, (int, float, bool)) or spec is None:
        return spec
    if inspect.isfunction(spec) or inspect.isclass(spec) or inspect.isbuiltin(spec):
        return f"{spec.__module__}.{spec.__qualname__}"
    return f"<{type(spec).__module__}.{type(spec).__qualname__} object>"


def is_object(spec: Any) -> bool:
    """Whether a spec is a loaded object (a model, a transcoder set) rather than a name or a
    factory: it cannot be sent to a remote worker without sending its weights."""
    if isinstance(spec, (str, os.PathLike)):
        return False
    if isinstance(spec, (torch.nn.Module, Sequence)):
        return True
    return not callable(spec)


@dataclass(frozen=True)
class WorkSpec:
    """Everything a worker needs besides the prompts (sent once per worker).

    Attributes:
        model: The model (see :data:`ModelSpec`).
        transcoders: The transcoders (see :data:`TranscodersSpec`).
        knobs: Keyword arguments of :func:`sae_circuits.attribute` (:data:`KNOBS`).
        keep: Which graphs are saved: ``"full"``, ``"pruned"`` or ``"both"``.
        node_threshold: Pruning's node threshold.
        edge_threshold: Pruning's edge threshold.
        device: Device of models and transcoders loaded by name (``None``: the loader's).
    """

    model: Any
    transcoders: Any
    knobs: Mapping[str, Any] = field(default_factory=dict)
    keep: Keep = "both"
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    device: str | None = None

    def description(self) -> dict[str, Any]:
        """What the store's manifest records (and a rerun must match)."""
        return {
            "model": describe(self.model),
            "transcoders": describe(self.transcoders),
            "knobs": {k: _json_knob(v) for k, v in sorted(self.knobs.items())},
            "keep": self.keep,
            "node_threshold": self.node_threshold,
            "edge_threshold": self.edge_threshold,
        }


def _json_knob(value: Any) -> Any:
    if isinstance(value, (int, float, bool, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_knob(v) for v in value]
    return repr(value)


@dataclass(frozen=True)
class Task:
    """One prompt for a worker: its key, token ids and where its files go.

    Attributes:
        key: The store key (:func:`prompt_key`).
        prompt: The prompt as given (text, or ids shown as text), for the index.
        token_ids: The ids (what is attributed).
        graph_path: Absolute path of the full graph file, or ``None`` (not kept).
        pruned_path: Absolute path of the pruned graph file, or ``None``.
        store: The store folder (files are recorded relative to it).
    """

    key: str
    prompt: str
    token_ids: tuple[int, ...]
    graph_path: str | None
    pruned_path: str | None
    store: str


def _load_model(spec: WorkSpec) -> Any:
    if isinstance(spec.model, (str, os.PathLike)):
        from sae_circuits.models import load_model

        return load_model(spec.model, device=spec.device)
    if is_object(spec.model):
        return spec.model
    return spec.model()


def _load_transcoders(spec: WorkSpec, model: Any) -> Any:
    from sae_circuits.transcoders import TranscoderSet, load_transcoders

    source = spec.transcoders
    if isinstance(source, (str, os.PathLike)):
        return load_transcoders(source, model=model, device=spec.device)
    if isinstance(source, TranscoderSet):
        return source
    if not is_object(source):
        source = source(model)
    return source if isinstance(source, TranscoderSet) else load_transcoders(source, model=model)


class Worker:
    """Loads the model and transcoders once, then attributes prompts given as token ids.

    Args:
        spec: What to load and how to attribute.
        threads: Torch's CPU threads in this process (``torch.set_num_threads``; ``None``: as
            it is). A Ray actor on a CPU slot of ``num_cpus`` CPUs gets that many, so that the
            actors of one machine do not oversubscribe its cores.
    """

    def __init__(self, spec: WorkSpec, *, threads: int | None = None) -> None:
        started = time.perf_counter()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 (or None), got {threads}")
            torch.set_num_threads(threads)
        self.spec = spec
        self.model = _load_model(spec)
        self.transcoders = _load_transcoders(spec, self.model)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        logger.info("worker %s loaded in %.1f s", self.name, time.perf_counter() - started)

    def ready(self) -> int:
        """The worker's process id (answered once loading is done)."""
        return os.getpid()

    def threads(self) -> int:
        """Torch's CPU threads in this worker's process."""
        return torch.get_num_threads()

    def tokenize(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int] | str]:
        """Token ids of each prompt, or the error that makes it unusable (a string)."""
        out: list[list[int] | str] = []
        for prompt in prompts:
            try:
                out.append(to_tokens(self.model, prompt).tolist())
            except (ValueError, TypeError) as e:
                out.append(f"{type(e).__name__}: {e}")
        return out

    def run(self, task: Task) -> dict[str, Any]:
        """Attribute one prompt, save its graph files, return its index record.

        A failure of this prompt (bad input, out of memory, non-finite activations) is returned
        as a ``failed`` record with the error; the worker goes on with the next task.
        """
        started = time.perf_counter()
        record: dict[str, Any] = {
            "key": task.key,
            "prompt": task.prompt,
            "n_tokens": len(task.token_ids),
            "worker": self.name,
        }
        if prompt_key(task.token_ids) != task.key:
            raise ValueError(f"task {task.key!r}: the key does not match its token ids")
        try:
            record.update(self._run(task))
            record["status"] = "ok"
        except Exception as e:  # recorded, and the run goes on
            logger.warning("prompt %s failed: %s\n%s", task.key, e, traceback.format_exc())
            record.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
            if isinstance(e, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
        record["seconds"] = time.perf_counter() - started
        return record

    def _run(self, task: Task) -> dict[str, Any]:
        spec = self.spec
        tokens = torch.tensor(task.token_ids, dtype=torch.long)
        t0 = time.perf_counter()
        graph = attribute(self.model, tokens, self.transcoders, progress=False, **spec.knobs)
        out: dict[str, Any] = {"attribute_seconds": time.perf_counter() - t0}
        nodes = graph.nodes
        out.update(
            n_nodes=int(graph.n_nodes),
            n_edges=int(graph.adjacency.nnz),
            n_features=int(np.count_nonzero(nodes["kind"].astype(str).to_numpy() == "feature")),
        )
        logits = graph.logits
        if len(logits):
            out["top_token"] = str(logits["token"].iloc[0])
            out["top_probability"] = float(logits["probability"].iloc[0])
            out["logits"] = " ".join(
                f"{tok}:{p:.4f}"
                for tok, p in zip(
                    logits["token"].iloc[:INDEX_LOGITS],
                    logits["probability"].iloc[:INDEX_LOGITS],
                    strict=True,
                )
            )
        scores = graph.scores()
        out.update(replacement=float(scores.replacement), completeness=float(scores.completeness))
        store = Path(task.store)
        if task.pruned_path is not None:
            pruned = graph.prune(
                node_threshold=spec.node_threshold, edge_threshold=spec.edge_threshold
            )
            path = Path(pruned.save(task.pruned_path))
            sha, size = file_digest(path)
            out.update(
                pruned_file=str(path.relative_to(store)),
                pruned_sha256=sha,
                pruned_size=size,
                pruned_nodes=int(pruned.n_nodes),
                pruned_edges=int(pruned.adjacency.nnz),
            )
        if task.graph_path is not None:
            path = Path(graph.save(task.graph_path))
            sha, size = file_digest(path)
            out.update(file=str(path.relative_to(store)), sha256=sha, size=size)
        return out
