"""Attribution time and peak memory on workloads of growing size (not a timed test).

Each workload runs in a fresh subprocess, so that its peak RSS is its own. Two modes:

* default: tiny models built in-repo (``sae_circuits.toy``) with growing prompts and feature
  counts, full graphs and influence-limited ones;
* ``--reference``: the fixtures of ``../shared/reference`` (built by its ``setup.sh`` under
  ``REF_HOME``), side by side with the reference implementation (circuit-tracer, run in its own
  venv by ``ct_attribute.py``), reporting time and memory ratios and checking results agree
  (``compare.py``).

usage:
    python benchmarks/bench_attribution.py [--threads 2] [--quick]
    python benchmarks/bench_attribution.py --reference [--ref-home DIR] [--repeat 3]
        [--workloads big8-1024 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "reference"

# name: (arch, n_layers, d_model, n_pos, d_sae, density, max_feature_nodes)
TOY = {
    "gpt2-16tok": ("gpt2", 4, 64, 16, 1024, 0.03, None),
    "llama-64tok": ("llama", 4, 64, 64, 1024, 0.03, None),
    "llama-256tok-2048": ("llama", 4, 64, 256, 1024, 0.03, 2048),
    "gemma2-128tok": ("gemma2", 4, 64, 128, 1024, 0.03, None),
    "llama-1024tok-1024": ("llama", 4, 64, 1024, 1024, 0.02, 1024),
    "llama-4096tok-1024": ("llama", 4, 64, 4096, 1024, 0.02, 1024),
}
QUICK = ("gpt2-16tok", "llama-64tok")

# reference workloads: name -> (fixture folder, make_fixture args, max_feature_nodes)
REF = {
    "gpt2-relu": ("gpt2-relu", None, None),
    "llama-skip": ("llama-skip", None, None),
    "gemma2-jumprelu": ("gemma2-jumprelu", None, None),
    "llama-long": ("llama-long", None, None),
    "big8-1024": (
        "big8",
        "--arch llama --kind relu --n-layers 8 --n-pos 24 --d-transcoder 8192 --density 0.03 --seed 1",
        1024,
    ),
    "big8-full": (
        "big8",
        "--arch llama --kind relu --n-layers 8 --n-pos 24 --d-transcoder 8192 --density 0.03 --seed 1",
        None,
    ),
    "long256-2048": (
        "long256",
        "--arch llama --kind relu --n-pos 256 --density 0.03 --seed 2",
        2048,
    ),
}


def _one_toy(name: str, threads: int, repeat: int) -> dict:
    import resource
    import statistics
    import time

    import torch

    import sae_circuits as sc
    from sae_circuits.toy import tiny_model, tiny_transcoders

    torch.set_num_threads(threads)
    arch, n_layers, d_model, n_pos, d_sae, density, mfn = TOY[name]
    model = tiny_model(arch, n_layers=n_layers, d_model=d_model, d_vocab=512, n_ctx=max(64, n_pos))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 512, (n_pos,), generator=gen)
    tokens[0] = 0
    ts = sc.load_transcoders(
        tiny_transcoders(model, "relu", d_sae=d_sae, density=density, calibration_tokens=tokens)
    )
    times, graph = [], None
    for _ in range(repeat):
        del graph
        t0 = time.perf_counter()
        graph = sc.attribute(model, tokens, ts, max_feature_nodes=mfn, progress=False)
        times.append(time.perf_counter() - t0)
    assert graph is not None
    return {
        "workload": name,
        "seconds": round(statistics.median(times), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "n_active": graph.metadata["n_active_features"],
        "n_nodes": graph.n_nodes,
        "n_edges": int(graph.adjacency.nnz),
        "max_feature_nodes": mfn,
    }


def _run_json(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        how = (
            f"killed by signal {-out.returncode}"
            + (" (SIGKILL: the out-of-memory killer?)" if out.returncode == -9 else "")
            if out.returncode < 0
            else f"exit status {out.returncode}"
        )
        raise RuntimeError(f"{Path(cmd[1]).name}: {how}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def _one_fixture(folder: str, mfn: int | None, threads: int, repeat: int) -> dict:
    """Our attribution alone on a reference fixture (no dense comparison: any graph size)."""
    import resource
    import statistics
    import time

    import torch

    import sae_circuits as sc

    sys.path.insert(0, str(SHARED))
    from compare import load_model  # the reference tools' own fixture loader

    torch.set_num_threads(threads)
    meta = json.loads((Path(folder) / "fixture.json").read_text())
    model = load_model(folder)
    sub = "clt" if meta["kind"] == "clt" else "transcoders"
    ts = sc.load_transcoders(str(Path(folder) / sub))
    tokens = torch.tensor(meta["tokens"])
    times, graph = [], None
    for _ in range(repeat):
        del graph
        t0 = time.perf_counter()
        graph = sc.attribute(
            model,
            tokens,
            ts,
            max_n_logits=10,
            desired_logit_prob=0.95,
            max_feature_nodes=mfn,
            progress=False,
        )
        times.append(time.perf_counter() - t0)
    assert graph is not None
    return {
        "attribute_s": [round(statistics.median(times), 3)],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "n_nodes": graph.n_nodes,
        "n_edges": int(graph.adjacency.nnz),
    }


def _reference(names: list[str], ref_home: Path, threads: int, repeat: int) -> list[dict]:
    """Each workload: the reference, then ours on the same fixture, each in a fresh process.

    Times are the median of ``repeat`` runs in one process; peak RSS is that process's peak
    over all of them, imports included. Where the reference fails (out of memory), ours runs
    alone (``--one-fixture``) and the row says how the reference ended.
    """
    ref_py = ref_home / "ref" / "bin" / "python"
    tools_py = ref_home / "tools" / "bin" / "python"
    if not ref_py.exists():
        raise SystemExit(f"no reference environment at {ref_home} (run {SHARED}/setup.sh)")
    env = {**os.environ, "BENCH_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    rows = []
    for name in names:
        folder, make_args, mfn = REF[name]
        fx = ref_home / folder
        if not (fx / "fixture.json").exists():
            if make_args is None:
                raise SystemExit(f"fixture {fx} is missing (run {SHARED}/setup.sh)")
            subprocess.run(
                [str(tools_py), str(SHARED / "make_fixture.py"), str(fx), *make_args.split()],
                check=True,
            )
        extra = ["--max-feature-nodes", str(mfn)] if mfn else []
        extra += ["--repeat", str(repeat)]
        ref_npz = ref_home / f"bench-ref-{name}.npz"
        try:
            ref = _run_json(
                [str(ref_py), str(SHARED / "ct_attribute.py"), str(fx), str(ref_npz), *extra], env
            )
        except RuntimeError as err:
            ref = {"failed": str(err).splitlines()[0]}
        if "failed" in ref:
            cmd = [sys.executable, __file__, "--one-fixture", str(fx), "--threads", str(threads)]
            cmd += ["--repeat", str(repeat), *(["--mfn", str(mfn)] if mfn else [])]
            ours = _run_json(cmd, env)
            row = {
                "workload": name,
                "ours_s": ours["attribute_s"][0],
                "ours_rss_mb": ours["peak_rss_mb"],
                "n_nodes": ours["n_nodes"],
                "n_edges": ours["n_edges"],
                "reference": f"failed: {ref['failed']}",
            }
        else:
            ours = _run_json(
                [sys.executable, str(SHARED / "compare.py"), str(fx), str(ref_npz), *extra], env
            )
            ours_s = statistics.median(ours["attribute_s"])
            ref_s = statistics.median(ref["attribute_s"])
            row = {
                "workload": name,
                "ours_s": round(ours_s, 3),
                "ref_s": round(ref_s, 3),
                "speedup": round(ref_s / ours_s, 2),
                "ours_rss_mb": ours["peak_rss_mb"],
                "ref_rss_mb": ref["peak_rss_mb"],
                "memory_ratio": round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3),
                "n_nodes": ours["n_nodes"],
                "same_nodes": ours["only_ours"] == 0 and ours["only_ref"] == 0,
                "rel_err": ours["rel_err"],
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="only the smallest toy workloads")
    p.add_argument("--reference", action="store_true", help="side by side with circuit-tracer")
    p.add_argument(
        "--ref-home",
        type=Path,
        default=Path(os.environ.get("REF_HOME", Path.home() / ".cache/sae_circuits_reference")),
    )
    p.add_argument("--workloads", nargs="*", help="names to run (default: all of the mode)")
    p.add_argument("--repeat", type=int, default=3, help="runs per process; times are their median")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--one-fixture", help=argparse.SUPPRESS)
    p.add_argument("--mfn", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(_one_toy(a.one, a.threads, a.repeat)))
        return
    if a.one_fixture:
        print(json.dumps(_one_fixture(a.one_fixture, a.mfn, a.threads, a.repeat)))
        return
    if a.reference:
        _reference(a.workloads or list(REF), a.ref_home, a.threads, a.repeat)
        return
    names = a.workloads or (list(QUICK) if a.quick else list(TOY))
    for name in names:
        row = _run_json(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--threads",
                str(a.threads),
                "--repeat",
                str(a.repeat),
            ],
            dict(os.environ),
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
