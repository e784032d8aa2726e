"""Attribution time and working memory on a Gemma-3-270M-shaped model (not a timed test).

The model is TransformerLens' own ``google/gemma-3-270m`` config (offline: 18 layers, d_model
640, 4 query heads sharing 1 key/value head, d_head 256, vocabulary 262,144, local/global
attention, post-attention and post-MLP norms) with random weights; the transcoders are 8,192-wide
JumpReLU transcoders per layer (``ln2.hook_normalized`` -> ``hook_mlp_out``) calibrated on the
prompt to about 60 active features per token. Random weights do not change the work: the shapes,
the active-feature count and the graph sizes are those of the real model's workload.

Each workload runs in a fresh subprocess. "Working memory" is the peak RSS during ``attribute``
minus the RSS just before it (the peak is reset first through ``/proc/self/clear_refs``).

usage:
    python benchmarks/bench_gemma3_shaped.py [--threads 2] [--repeat 3] [--n-pos 16]
        [--mfn full 1024 4096] [--memory-budget BYTES] [--profile] [--backward generic]

``--backward generic`` keeps every block on the per-block ``torch.func.vjp`` path (the explicit
transposes of ``attribution/_transpose.py`` switched off) for side-by-side timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def build(n_pos: int, seed: int = 0):
    """The model, the prompt and the transcoders (see the module docstring)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    import sae_circuits as sc
    from sae_circuits.toy import tiny_transcoders

    cfg = get_pretrained_model_config("google/gemma-3-270m", device="cpu")
    cfg_dict = cfg.to_dict()
    cfg_dict["n_ctx"] = max(n_pos, 64)
    cfg_dict["seed"] = seed
    cfg_dict["tokenizer_name"] = None  # no tokenizer: token ids only, offline
    torch.manual_seed(seed)
    model = HookedTransformer(HookedTransformerConfig(**cfg_dict))
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, model.cfg.d_vocab, (n_pos,), generator=gen)
    tokens[0] = 2  # BOS
    tcs = tiny_transcoders(
        model,
        "jumprelu",
        d_sae=8192,
        density=60 / 8192,
        calibration_tokens=tokens,
        hooks=("ln2.hook_normalized", "hook_mlp_out"),
    )
    # thresholds from the clean activations' quantiles: ~60 active features per token
    names = [f"blocks.{layer}.ln2.hook_normalized" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=names)
        for layer, tc in enumerate(tcs):
            pre = cache[names[layer]][0, 1:] @ tc.W_enc + tc.b_enc
            q = torch.quantile(pre.flatten(), 1 - 60 / tc.W_enc.shape[1])
            tc.threshold.fill_(float(q))  # type: ignore[operator]
    del cache
    return model, tokens, sc.load_transcoders(tcs)


def one(
    n_pos: int,
    mfn: int | None,
    threads: int,
    repeat: int,
    budget: int | None,
    prof: bool,
    backward: str = "explicit",
):
    import gc

    import torch

    import sae_circuits as sc
    from sae_circuits.attribution import _backward

    torch.set_num_threads(threads)
    if backward == "generic":
        _backward._checked_transpose = lambda *args: None  # type: ignore[assignment]
    model, tokens, ts = build(n_pos)
    times, work, graph = [], [], None
    for _ in range(repeat):
        graph = None
        gc.collect()
        before = _rss_kb("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        graph = sc.attribute(
            model, tokens, ts, max_feature_nodes=mfn, progress=False, memory_budget=budget
        )
        times.append(time.perf_counter() - t0)
        work.append((_rss_kb("VmHWM") - before) / 1024)
    assert graph is not None
    if prof:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
            sc.attribute(
                model, tokens, ts, max_feature_nodes=mfn, progress=False, memory_budget=budget
            )
        print(p.key_averages().table(sort_by="cpu_time_total", row_limit=30), file=sys.stderr)
        print(p.key_averages().table(sort_by="cpu_memory_usage", row_limit=15), file=sys.stderr)
    return {
        "n_pos": n_pos,
        "max_feature_nodes": mfn,
        "backward": backward,
        "seconds": round(statistics.median(times), 2),
        "all_seconds": [round(t, 2) for t in times],
        "working_mb": round(statistics.median(work)),
        "rss_before_mb": round(before / 1024),
        "n_active": graph.metadata["n_active_features"],
        "n_nodes": graph.n_nodes,
        "n_edges": int(graph.adjacency.nnz),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-pos", type=int, default=16)
    ap.add_argument("--mfn", nargs="+", default=["full", "1024", "4096"])
    ap.add_argument("--memory-budget", type=int, default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--backward", choices=["explicit", "generic"], default="explicit")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        mfn = None if args.one == "full" else int(args.one)
        res = one(
            args.n_pos,
            mfn,
            args.threads,
            args.repeat,
            args.memory_budget,
            args.profile,
            args.backward,
        )
        print(json.dumps(res))
        return
    for m in args.mfn:
        cmd = [sys.executable, __file__, "--one", m, "--threads", str(args.threads)]
        cmd += ["--repeat", str(args.repeat), "--n-pos", str(args.n_pos)]
        cmd += ["--backward", args.backward]
        if args.memory_budget is not None:
            cmd += ["--memory-budget", str(args.memory_budget)]
        if args.profile:
            cmd.append("--profile")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if args.profile or not lines:
            print(out.stderr[-12000:], file=sys.stderr)
        print(lines[-1] if lines else f"{m}: failed ({out.returncode})", flush=True)


if __name__ == "__main__":
    main()
