"""QK attribution time and peak memory for one head on 128- and 1,024-token prompts.

Each workload runs in a fresh subprocess (its peak RSS is its own), on a tiny Llama-style model
(4 layers, d_model 64, 8 heads of 8, GQA 2 key heads) with random per-layer transcoders, the
head at the last layer and the last position: one key, the five keys it attends to most, and,
beside them, the graph of the same prompt with ``max_feature_nodes=1024``.

usage:
    python benchmarks/bench_attention.py [--threads 2] [--workloads llama-128 llama-1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# name: (n_pos, d_sae, density)
WORKLOADS = {"llama-128": (128, 1024, 0.03), "llama-1024": (1024, 1024, 0.02)}


def _one(name: str, threads: int) -> dict:
    import resource
    import time

    import torch

    import sae_circuits as sc
    from sae_circuits.toy import tiny_model, tiny_transcoders

    torch.set_num_threads(threads)
    n_pos, d_sae, density = WORKLOADS[name]
    model = tiny_model("llama", n_layers=4, d_model=64, n_heads=8, d_vocab=512, n_ctx=n_pos)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 512, (n_pos,), generator=gen)
    tokens[0] = 0
    ts = sc.load_transcoders(
        tiny_transcoders(model, "relu", d_sae=d_sae, density=density, calibration_tokens=tokens)
    )
    where = {"layer": 3, "head": 5, "query": n_pos - 1}
    t0 = time.perf_counter()
    one = sc.attribute_attention(model, tokens, ts, key=n_pos // 2, top_pairs=100, **where)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    five = sc.attribute_attention_keys(model, tokens, ts, n_keys=5, top_pairs=100, **where)
    t_five = time.perf_counter() - t0
    rss_qk = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    graph = sc.attribute(model, tokens, ts, max_feature_nodes=1024, progress=False)
    t_graph = time.perf_counter() - t0
    return {
        "workload": name,
        "n_active": graph.metadata["n_active_features"],
        "query_side_sources": len(one.query_side),
        "key_side_sources": len(one.key_side),
        "one_key_s": round(t_one, 2),
        "five_keys_s": round(t_five, 2),
        "peak_rss_mb_qk": round(rss_qk),
        "graph_s": round(t_graph, 2),
        "peak_rss_mb_with_graph": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "top_pair_share": round(float(abs(one.pairs["contribution"]).sum()), 4),
        "residual": float(f"{one.residual:.4g}"),
        "score": float(f"{one.score:.4g}"),
        "keys": [qk.key for qk in five],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(_one(a.one, a.threads)))
        return
    for name in a.workloads:
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"{name}: exit status {out.returncode}\n{out.stderr[-2000:]}")
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
