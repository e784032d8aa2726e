"""Graphs per minute of ``attribute_many`` on the toy-facts model (not a timed test).

Modes, each over the same prompts (a subset of the toy world's 1,600 sentences, spread evenly)
into a fresh store, full and pruned graph saved per prompt:

* ``loop``: the plain loop a user writes: ``sc.attribute`` + ``save`` + ``prune`` + ``save``;
* ``inprocess``: ``sc.attribute_many`` in this process (1 worker);
* ``ray1``, ``ray2``: ``sc.attribute_many`` on a new local Ray cluster (127.0.0.1, no
  dashboard) with 1 and 2 actors of 1 CPU each (torch on 1 thread per actor).

Each run is a fresh subprocess with ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` set to ``--threads`` (default 1) and torch on as many threads, so that
the 1-worker figures compare with one Ray actor (which Ray runs on 1 thread per CPU it holds) and
no library's thread pool spins on cores the others need. Reported per mode: graphs per minute over the whole run
(``wall``: loading the model and transcoders, starting Ray and its actors included) and in the
steady state (``steady``: between the first and the last graph finished, from the store's
journal, or the loop's own clock), and the overhead of ``inprocess`` against ``loop``.

usage:
    python benchmarks/bench_batch.py [--n 200] [--modes loop inprocess ray1 ray2]
        [--transcoders toy-facts] [--threads 1] [--json out/bench_batch.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import sae_circuits as sc
from sae_circuits.batch import LOCAL_INIT, GraphStore, RayExecutor

MODES = ("loop", "inprocess", "ray1", "ray2")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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

        ray.init(num_cpus=2, log_to_driver=False, **LOCAL_INIT)
        executor = RayExecutor(num_workers=int(mode[3:]), num_cpus=1)
    started = time.perf_counter()
    try:
        result = sc.attribute_many("toy-facts", transcoders, texts, out, executor=executor)
    finally:
        if executor is not None:
            executor.ray.shutdown()
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
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a child: one run
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    texts = prompts(args.n)
    if args.one:
        torch.set_num_threads(args.threads)
        run = run_loop if args.one == "loop" else functools.partial(run_batch, mode=args.one)
        print(json.dumps(run(texts, args.out, args.transcoders)))
        return
    figures: dict[str, dict[str, float]] = {}
    runs: dict[str, list[dict[str, float]]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    env = {**os.environ, **{v: str(args.threads) for v in THREAD_VARS}}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        for r in range(args.repeat):
            for mode in args.modes:
                out = tmp / f"{mode}-{r}"
                cmd = [sys.executable, __file__, "--one", mode, "--out", str(out)]
                cmd += ["--n", str(args.n), "--transcoders", args.transcoders]
                cmd += ["--threads", str(args.threads)]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
                runs.setdefault(mode, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
                got = runs[mode][-1]
                print(f"  run {r + 1} {mode}: {got['per_min_steady']:.0f}/min steady", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        for mode in args.modes:
            figures[mode] = {k: statistics.median(x[k] for x in runs[mode]) for k in runs[mode][0]}
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
