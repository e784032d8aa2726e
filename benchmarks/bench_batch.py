"""Graphs per minute of ``attribute_many`` on the toy-facts model (not a timed test).

Modes, each over the same prompts (a subset of the toy world's 1,600 sentences, spread evenly)
into a fresh store, full and pruned graph saved per prompt:

* ``loop``: the plain loop a user writes: ``sc.attribute`` + ``save`` + ``prune`` + ``save``;
* ``inprocess``: ``sc.attribute_many`` in this process (1 worker);
* ``ray1``, ``ray2``: ``sc.attribute_many`` on a new local Ray cluster (127.0.0.1, no
  dashboard) with 1 and 2 actors of 1 CPU each (torch on 1 thread per actor).

Torch runs on ``--threads`` threads (default 1) in ``loop`` and ``inprocess`` so that the
1-worker figures compare with one actor. Reported per mode: graphs per minute over the whole run
(``wall``: loading the model and transcoders, starting Ray and its actors included) and in the
steady state (``steady``: between the first and the last graph finished, from the store's
journal, or the loop's own clock), and the overhead of ``inprocess`` against ``loop``.

usage:
    python benchmarks/bench_batch.py [--n 200] [--modes loop inprocess ray1 ray2]
        [--transcoders toy-facts] [--threads 1] [--json out/bench_batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import sae_circuits as sc
from sae_circuits.batch import LOCAL_INIT, GraphStore, RayExecutor

MODES = ("loop", "inprocess", "ray1", "ray2")


def prompts(n: int) -> list[str]:
    """``n`` of the toy world's sentences, spread evenly over them."""
    every = [s.prompt for s in sc.toy.load_toy_world().sentences()]
    n = min(n, len(every))
    return [every[i * len(every) // n] for i in range(n)]


def run_loop(texts: list[str], out: Path, transcoders: str) -> dict[str, float]:
    started = time.perf_counter()
    model = sc.load_model("toy-facts")
    ts = sc.load_transcoders(transcoders, model=model)
    (out / "graphs").mkdir(parents=True)
    (out / "pruned").mkdir()
    finished = []
    for i, text in enumerate(texts):
        graph = sc.attribute(model, text, ts, progress=False)
        graph.save(out / "graphs" / f"{i}.zip")
        graph.prune(node_threshold=0.8, edge_threshold=0.98).save(out / "pruned" / f"{i}.zip")
        finished.append(time.perf_counter())
    return _rates(len(texts), time.perf_counter() - started, finished)


def run_batch(texts: list[str], out: Path, transcoders: str, mode: str) -> dict[str, float]:
    executor = None
    if mode.startswith("ray"):
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=2, log_to_driver=False, **LOCAL_INIT)
        executor = RayExecutor(num_workers=int(mode[3:]), num_cpus=1)
    started = time.perf_counter()
    result = sc.attribute_many("toy-facts", transcoders, texts, out, executor=executor)
    wall = time.perf_counter() - started
    assert result.n_done == len(texts), result
    finished = sorted(r["finished"] for r in GraphStore(out).records())
    return _rates(len(texts), wall, finished)


def _rates(n: int, wall: float, finished: list[float]) -> dict[str, float]:
    steady = finished[-1] - finished[0]
    return {
        "graphs": n,
        "wall_s": wall,
        "per_min_wall": 60 * n / wall,
        "per_min_steady": 60 * (n - 1) / steady if steady > 0 else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="prompts (of 1,600)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--transcoders", default="toy-facts", help="toy-facts or toy-facts-clt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of loop/inprocess")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode (median reported)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = prompts(args.n)
    figures: dict[str, dict[str, float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        for mode in args.modes:
            runs = []
            for r in range(args.repeat):
                out = tmp / f"{mode}-{r}"
                if mode == "loop":
                    runs.append(run_loop(texts, out, args.transcoders))
                else:
                    runs.append(run_batch(texts, out, args.transcoders, mode))
                shutil.rmtree(out)
            figures[mode] = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            f = figures[mode]
            print(
                f"{mode:10s} {f['graphs']:5.0f} graphs  {f['wall_s']:7.1f} s  "
                f"{f['per_min_wall']:7.0f}/min wall  {f['per_min_steady']:7.0f}/min steady",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "loop" in figures and "inprocess" in figures:
        a, b = figures["loop"], figures["inprocess"]
        print(
            f"overhead of attribute_many in-process against the loop: "
            f"{100 * (a['per_min_steady'] / b['per_min_steady'] - 1):+.1f} % steady, "
            f"{100 * (b['wall_s'] / a['wall_s'] - 1):+.1f} % wall"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "n": len(texts),
            "transcoders": args.transcoders,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "torch": torch.__version__,
        }
        args.json.write_text(json.dumps({"meta": meta, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
