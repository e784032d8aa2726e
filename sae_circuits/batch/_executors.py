"""Where a batch runs: in this process (the default) or on a Ray cluster, one actor per GPU.

An executor is started with a :class:`~sae_circuits.batch._worker.WorkSpec` (names or
factories: each worker loads the weights itself, once), tokenizes the text prompts on a worker
(the driver needs no model), then takes :class:`~sae_circuits.batch._worker.Task`\\ s (token ids
and file paths) and yields their records as they finish.

:class:`RayExecutor` gives every actor up to ``in_flight`` tasks. An actor that dies (killed,
out of host memory, its node lost) fails its tasks with a Ray actor error: the executor starts a
replacement actor and resubmits those prompts, each at most ``max_attempts`` times in all (then
it is recorded as failed: a prompt that kills every worker does not stop the run).

Example:
    >>> import ray
    >>> executor = RayExecutor(address="auto")                 # an existing cluster
    >>> sc.attribute_many("toy-facts", "toy-facts", prompts, "out/batch", executor=executor)
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from sae_circuits.batch._worker import Task, Worker, WorkSpec, is_object

__all__ = ["LOCAL_INIT", "Executor", "InProcessExecutor", "RayExecutor"]

logger = logging.getLogger(__name__)

#: ``ray.init`` arguments of a new local cluster: its node address is 127.0.0.1 (what it
#: advertises and connects to) and it has no dashboard (whose processes cost ~1 s and 200 MB).
#: Ray 2.60's gRPC servers still listen on every interface; Ray's token authentication (on by
#: default there) guards them.
LOCAL_INIT: Mapping[str, Any] = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}


class Executor(Protocol):
    """What :func:`attribute_many` needs from an executor."""

    def start(self, spec: WorkSpec) -> None:
        """Start the workers (each loads the model and transcoders once)."""
        ...

    def tokenize(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int] | str]:
        """Token ids of every prompt, or its error (a string)."""
        ...

    def run(self, tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        """Records of the tasks, in the order they finish (``attempts`` set)."""
        ...

    def close(self) -> None:
        """Stop the workers (and a cluster this executor started)."""
        ...


class InProcessExecutor:
    """Runs every prompt in this process, one after the other (no Ray needed)."""

    def __init__(self) -> None:
        self._worker: Worker | None = None

    def start(self, spec: WorkSpec) -> None:
        self._worker = Worker(spec)

    def _get(self) -> Worker:
        if self._worker is None:
            raise RuntimeError("the executor is not started (call start(spec) first)")
        return self._worker

    def tokenize(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int] | str]:
        return self._get().tokenize(prompts)

    def run(self, tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        worker = self._get()
        for task in tasks:
            yield {**worker.run(task), "attempts": 1}

    def close(self) -> None:
        self._worker = None

    def __repr__(self) -> str:
        return "InProcessExecutor()"


class RayExecutor:
    """Runs prompts on Ray actors: one per GPU of the cluster, else one per ``num_cpus`` CPUs.

    Args:
        address: The cluster (``ray.init(address=...)``: ``"auto"``, ``"ray://host:10001"``,
            ``"host:6379"``); ``None``: the cluster this process is connected to, else one
            named by ``RAY_ADDRESS``, else a new local one; ``"local"``: a new local one.
            Ignored when Ray is already initialised.
        num_workers: Actors to start (default: the cluster's GPUs if it has any, else its CPUs
            divided by ``num_cpus``).
        num_gpus: GPUs per actor (default: 1 on a cluster with GPUs, else 0).
        num_cpus: CPUs per actor; an actor without a GPU runs torch on that many threads
            (rounded down, at least 1), so that ``n`` actors on ``n`` cores do not compete.
        in_flight: Tasks queued on each actor at a time (2 keeps an actor busy while the driver
            records the previous one).
        max_attempts: Times a prompt is tried when workers die under it.
        init_kwargs: More arguments of ``ray.init`` (e.g. ``num_cpus``) when this executor
            starts the cluster. A new local cluster (``address=None``) has the node address
            127.0.0.1 and no dashboard (:data:`LOCAL_INIT`) unless these say otherwise.

    Raises:
        ImportError: Ray is not installed (``pip install 'sae-circuits[ray]'``).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_workers: int | None = None,
        num_gpus: float | None = None,
        num_cpus: float = 1,
        in_flight: int = 2,
        max_attempts: int = 3,
        init_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in (("in_flight", in_flight), ("max_attempts", max_attempts)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 (or None), got {num_workers}")
        self.ray = _import_ray()
        self.address = address
        self.num_workers = num_workers
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.in_flight = in_flight
        self.max_attempts = max_attempts
        self.init_kwargs = dict(init_kwargs or {})
        self._started_ray = False
        self._spec: WorkSpec | None = None
        self._actors: list[Any] = []
        self._pids: dict[int, Any] = {}  # slot -> ObjectRef of the actor's pid
        self.replaced = 0  # actors replaced after dying

    # -- workers ------------------------------------------------------------------------------

    def start(self, spec: WorkSpec) -> None:
        ray = self.ray
        for what, value in (("model", spec.model), ("transcoders", spec.transcoders)):
            if is_object(value):
                raise TypeError(
                    f"a RayExecutor needs the {what} as a name, a path or a factory (a "
                    "module-level function or functools.partial) that each worker calls; a "
                    f"loaded {type(value).__name__} would send its weights to every worker"
                )
        if not ray.is_initialized():
            local = LOCAL_INIT if self.address in (None, "local") else {}
            address = None if self.address == "local" else self.address
            ray.init(address=address, **{**local, **self.init_kwargs})
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        num_gpus = (1.0 if gpus >= 1 else 0.0) if self.num_gpus is None else self.num_gpus
        n = self.num_workers
        if n is None:
            n = (
                int(gpus // num_gpus)
                if num_gpus > 0
                else int(resources.get("CPU", 1) // self.num_cpus)
            )
        n = max(1, n)
        self._spec = spec
        self._threads = None if num_gpus > 0 else max(1, int(self.num_cpus))
        self._remote = ray.remote(max_restarts=0, max_task_retries=0)(Worker).options(
            num_cpus=self.num_cpus, num_gpus=num_gpus
        )
        self._actors = [self._new_actor(slot) for slot in range(n)]
        try:
            ray.get(list(self._pids.values()))
        except Exception as e:
            self.close()
            raise RuntimeError(
                f"the Ray workers could not load the model and transcoders: {e}"
            ) from e
        logger.info("%d Ray workers ready (%s GPU, %s CPU each)", n, num_gpus, self.num_cpus)

    def _new_actor(self, slot: int) -> Any:
        actor = self._remote.remote(self._spec, threads=self._threads)
        self._pids[slot] = actor.ready.remote()
        return actor

    def worker_pids(self) -> list[int]:
        """Process ids of the current actors (waits until they are loaded)."""
        return [int(p) for p in self.ray.get([self._pids[s] for s in range(len(self._actors))])]

    def tokenize(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int] | str]:
        if not self._actors:
            raise RuntimeError("the executor is not started (call start(spec) first)")
        return self.ray.get(self._actors[0].tokenize.remote(list(prompts)))

    # -- the run ------------------------------------------------------------------------------

    def run(self, tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        ray = self.ray
        if not self._actors:
            raise RuntimeError("the executor is not started (call start(spec) first)")
        from ray.exceptions import RayError, RayTaskError  # pyright: ignore[reportMissingImports]

        queue: deque[Task] = deque(tasks)
        attempts: dict[str, int] = {}
        inflight: dict[Any, tuple[int, Any, Task]] = {}  # ref -> (slot, actor, task)
        load = [0] * len(self._actors)

        def fill() -> None:
            for slot, actor in enumerate(self._actors):
                while queue and load[slot] < self.in_flight:
                    task = queue.popleft()
                    attempts[task.key] = attempts.get(task.key, 0) + 1
                    inflight[actor.run.remote(task)] = (slot, actor, task)
                    load[slot] += 1

        fill()
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            slot, actor, task = inflight.pop(ref)
            if self._actors[slot] is actor:
                load[slot] -= 1
            try:
                record = ray.get(ref)
            except RayTaskError as e:  # the worker raised outside its own handling
                record = _failed(task, f"worker error: {e}")
            except RayError as e:  # the actor died: replace it, try the prompt again
                if self._actors[slot] is actor:
                    logger.warning(
                        "Ray worker %d died (%s); starting a new one", slot, type(e).__name__
                    )
                    self._actors[slot] = self._new_actor(slot)
                    load[slot] = 0
                    self.replaced += 1
                if attempts[task.key] < self.max_attempts:
                    queue.appendleft(task)
                    fill()
                    continue
                record = _failed(
                    task, f"workers died {attempts[task.key]} times on it: {type(e).__name__}"
                )
            record["attempts"] = attempts[task.key]
            yield record
            fill()

    def close(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already dead
                logger.debug("could not kill an actor", exc_info=True)
        self._actors = []
        self._pids = {}
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, num_workers={self.num_workers!r})"


def _failed(task: Task, error: str) -> dict[str, Any]:
    return {
        "key": task.key,
        "prompt": task.prompt,
        "n_tokens": len(task.token_ids),
        "status": "failed",
        "error": error[:2000],
    }


def _import_ray() -> Any:
    try:
        import ray  # pyright: ignore[reportMissingImports]
    except ImportError as e:
        raise ImportError(
            "running on Ray needs the ray package: pip install 'sae-circuits[ray]' (or leave "
            "executor=None to run in this process)"
        ) from e
    return ray
