"""bfloat16 / float16 against float32: graph error and memory (not a timed test).

On the trained toy-facts model (its per-layer transcoders, and the cross-layer ones) and on a
tiny random Gemma-2-style model, attributes the same prompt with model and transcoders in float32,
bfloat16 and float16 (rows always accumulate in float32) and reports:

* ``edge error``: ``max |A_16 - A_32| / max |A_32|`` over the nodes both graphs have (features
  active in both, errors, tokens, targets), and the median of ``|A_16 - A_32| / |A_32|`` over the
  edges above 1% of the largest;
* ``features``: active features in common / in the float32 graph;
* ``top logit`` kept, replacement / completeness scores of both;
* memory: bytes of the model's and the transcoders' weights, and what attribution holds after
  the clean pass (the trace's tensors and its autograd graphs' saved tensors, weights left out).

usage:
    python benchmarks/bench_precision.py [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sae_circuits as sc
from sae_circuits.attribution import trace
from sae_circuits.core.prompts import to_tokens
from sae_circuits.toy import load_toy_model, tiny_model, tiny_transcoders, toy_transcoders_path
from sae_circuits.transcoders import check_compatible

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's tests/
from tests.test_memory import held_bytes, reachable_storages

PROMPT = "The capital of the state containing Dallas is"
DTYPES = ("float32", "bfloat16", "float16")


def _key(graph) -> list[tuple]:
    n = graph.nodes
    return list(
        zip(
            n["kind"].astype(str),
            n["layer"].fillna(-1).astype(int),
            n["position"].fillna(-1).astype(int),
            n["feature"].fillna(-1).astype(int),
            n["token_id"].fillna(-1).astype(int),
            strict=True,
        )
    )


def compare(g32, g16) -> dict[str, float]:
    """Edge errors of ``g16`` against ``g32`` on the nodes both have."""
    k32 = {k: i for i, k in enumerate(_key(g32))}
    common = [(k32[k], j) for j, k in enumerate(_key(g16)) if k in k32]
    i32 = np.array([a for a, _ in common])
    i16 = np.array([b for _, b in common])
    a32 = g32.adjacency[i32][:, i32].toarray().astype(np.float64)
    a16 = g16.adjacency[i16][:, i16].toarray().astype(np.float64)
    scale = np.abs(a32).max()
    big = np.abs(a32) > 0.01 * scale
    rel = np.abs(a16 - a32)[big] / np.abs(a32)[big]
    f32 = int((g32.nodes["kind"] == "feature").sum())
    f_common = sum(1 for k in _key(g16) if k[0] == "feature" and k in k32)
    return {
        "max_edge_error": float(np.abs(a16 - a32).max() / scale),
        "median_rel_error_big_edges": float(np.median(rel)),
        "p99_rel_error_big_edges": float(np.quantile(rel, 0.99)),
        "features_common_share": f_common / max(f32, 1),
    }


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def trace_bytes(model, tokens, ts) -> int:
    """Bytes a trace holds after the clean pass (its tensors and its autograd graphs' saved
    tensors), the model's and the transcoders' own weights left out."""
    tr = trace(model, tokens, check_compatible(model, ts))
    user = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    return held_bytes(tr, user | set(reachable_storages(ts)))


def cases():
    """(name, model, transcoders by dtype name, prompt)."""
    model = load_toy_model()
    for kind in ("plt", "clt"):
        path = toy_transcoders_path(kind)
        yield f"toy-facts {kind}", model, lambda d, p=path: sc.load_transcoders(p, dtype=d), PROMPT
    m = tiny_model("gemma2", seed=0)
    tcs = tiny_transcoders(m, "jumprelu", seed=0)

    def tiny(dname: str):
        return sc.load_transcoders([copy.deepcopy(t).to(getattr(torch, dname)) for t in tcs])

    yield "tiny gemma2 jumprelu", m, tiny, "t5 t9 t3 t7 t2 t8"


def cast(model, dtype: torch.dtype):
    m = copy.deepcopy(model).to(dtype)
    m.cfg.dtype = dtype
    m.tokenizer = model.tokenizer
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for name, model, load, prompt in cases():
        graphs = {}
        for dname in DTYPES:
            dtype = getattr(torch, dname)
            m = cast(model, dtype)
            ts = load(dname)
            started = time.perf_counter()
            graph = sc.attribute(m, prompt, ts)
            seconds = time.perf_counter() - started
            graphs[dname] = graph
            scores = graph.scores()
            row = {
                "case": name,
                "dtype": dname,
                "seconds": round(seconds, 3),
                "model_bytes": tensor_bytes([*m.parameters(), *m.buffers()]),
                "transcoder_bytes": sum(reachable_storages(ts).values()),
                "trace_bytes": trace_bytes(m, to_tokens(m, prompt), ts),
                "top_logit": graph.logits["token"][0],
                "replacement": round(scores.replacement, 4),
                "completeness": round(scores.completeness, 4),
                "n_features": int((graph.nodes["kind"] == "feature").sum()),
            }
            if dname != "float32":
                row.update(
                    {k: float(f"{v:.3g}") for k, v in compare(graphs["float32"], graph).items()}
                )
            results.append(row)
            print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
