"""Attribution on the real models at realistic widths: time and peak memory.

SmolLM2-135M-Instruct (30 layers) and Gemma 3 270M (18 layers) from their PyPI GGUF packages,
with calibrated JumpReLU transcoders of 16,384 features per layer and ~100 active per token
(``benchmarks/real_transcoders.py``; built on first use, ~2-5 min per model). For 16, 64, 256
and 1,024 tokens of English text, full graphs (``max_feature_nodes=None``) and
``max_feature_nodes=1024``; every case runs in its own process (peak RSS = the child's
``ru_maxrss``; "after load" = RSS once model and transcoders are loaded). A full graph is
skipped when its estimated size (``n_active * (n_active + sources) / 4`` stored edges, 12 bytes
each: the causal half of the half with any path) exceeds ``--mem-gb``; the line says so.

``--reference`` also runs circuit-tracer 0.5.0 (its TransformerLens 2.18 backend, in the
reference venv ``$REF_HOME/ref``, never a dependency of ours) on the same weights, through
``benchmarks/_ref_real_runner.py``: for Gemma 3 that script gives each layer its rotary table
back (local layers base 10,000, global layers 1,000,000: circuit-tracer's
``_deduplicate_attention_buffers`` shares one table across all layers), in the runner, not in
the package. It reports whether the node sets are equal and the largest
edge difference relative to the largest edge.

Usage (from the repository root; the code under test is this checkout's ``sae_circuits``):
    .venv/bin/python -m benchmarks.bench_real                     # everything
    .venv/bin/python -m benchmarks.bench_real --model gemma3 --tokens 16 64 --reference
Results: one JSON line per case on stdout and appended to ``out/real_models/bench_real.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import real_transcoders as rt

WIDTH = 16384
TOKENS = (16, 64, 256, 1024)
MODES = ("full", "max1024", "max4096")
DEFAULT_MODES = ("full", "max1024")
TEXT = (
    "The history of the river valley begins long before the first farmers arrived. Glaciers "
    "carved the hills, and the water that followed left fertile soil on both banks. Villages "
    "grew into towns, and the towns traded grain, wool and timber with the coast. In the "
    "nineteenth century a railway reached the valley, and with it came mills, schools and a "
    "newspaper that reported on harvests, elections and the weather. "
)
RESULTS = rt.OUT / "bench_real.jsonl"


def prompt_tokens(model, n: int) -> torch.Tensor:
    """``n`` tokens of English text, BOS first."""
    ids = model.to_tokens(TEXT * (1 + n // 60))[0]
    assert len(ids) >= n, (len(ids), n)
    return ids[:n]


def max_feature_nodes(mode: str) -> int | None:
    """``full`` -> ``None``; ``max1024`` -> 1024."""
    return None if mode == "full" else int(mode.removeprefix("max"))


def _hwm_mb() -> float:
    """Peak RSS since the last :func:`_reset_peak` (``VmHWM``)."""
    return _status_mb("VmHWM")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(key: str) -> float:
    """``key`` (``VmRSS``, ``VmHWM``) of this process from ``/proc/self/status``, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _page_in(ts) -> None:
    """Read every transcoder tensor once, so that ``RSS before`` holds them.

    SAELens' loaders return tensors backed by the safetensors file's memory map: their pages
    enter RSS on first touch, during the first ``attribute`` (Gemma 3 16k: ~1.3 GB, every
    ``W_enc`` and the decoder rows of the active features). The reference copies its weights
    into its own modules before its measurement starts, so without this our working memory
    would count our inputs being read and its would not.
    """
    with torch.no_grad():
        for tc in ts.transcoders:
            for t in tc.state_dict().values():
                t.sum()


def _trim() -> None:
    """Give memory that is free but still mapped back to the system (glibc ``malloc_trim``).

    Without it, memory freed before the measurement (the loader's buffers, the model forward
    that counts active features) stays in RSS, and ``attribute`` reuses it without raising
    the peak: working memory would read near zero.
    """
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _n_active(model, ts, tokens: torch.Tensor) -> int:
    from sae_circuits.core.hooks import resolve_hook, scoped_hooks

    count = [0]

    def enc(layer):
        def fn(t):
            a = ts.activation_fn(layer, ts.pre_activations(layer, t.detach()[0, 1:]))
            count[0] += int((a != 0).sum())

        return fn

    hooks = [(resolve_hook(model, h), enc(layer)) for layer, h in enumerate(ts.input_hooks)]
    with torch.no_grad(), scoped_hooks(model, hooks):
        model(tokens[None])
    return count[0]


def write_ref_fixture(name: str, width: int, model, ts) -> Path:
    """The model and transcoders for ``_ref_real_runner.py`` (cached): TransformerLens config,
    state dict, our last-position logits on the Dallas prompt, per-layer transcoder tensors."""
    from safetensors.torch import save_file

    fx = rt.OUT / f"ref-fixture-{name}-w{width}"
    if (fx / "logits.json").exists():
        return fx
    (fx / "transcoders").mkdir(parents=True, exist_ok=True)
    kw = {}
    for k, v in model.cfg.to_dict().items():
        try:
            kw[k] = json.loads(json.dumps(v))
        except TypeError:
            continue  # dtype, device, tokenizer objects: the runner sets its own
    kw.update(dtype="float32", device="cpu")
    (fx / "model.json").write_text(json.dumps(kw, indent=1))
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(fx / "model.safetensors"))
    for layer, tc in enumerate(ts.transcoders):
        save_file(
            {
                k: getattr(tc, k).detach().contiguous()
                for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
            },
            str(fx / "transcoders" / f"layer_{layer}.safetensors"),
        )
    rel = {}  # the hooks as TransformerLens names relative to blocks.{l} (same for every layer)
    for which, names in (("input", ts.input_hooks), ("output", ts.output_hooks)):
        suffixes = {n.split(".", 2)[2] for n in names}
        assert len(suffixes) == 1 and all(n.startswith("blocks.") for n in names), names
        rel[which] = suffixes.pop()
    (fx / "hooks.json").write_text(json.dumps(rel))
    probe = model.to_tokens("The capital of the state containing Dallas is")[0]
    with torch.no_grad():
        logits = model(probe[None])[0, -1]
    (fx / "logits.json").write_text(
        json.dumps({"tokens": probe.tolist(), "logits": logits.tolist()})
    )
    return fx


def run_one(
    name: str, n: int, mode: str, mem_gb: float, save: str | None, width: int = WIDTH
) -> dict:
    """One case in this process (the parent starts a fresh process per case)."""
    import sae_circuits as sc

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    t0 = time.perf_counter()
    model = rt.load_real_model(name)
    ts = rt.load(name, width)
    t_load = time.perf_counter() - t0
    tokens = prompt_tokens(model, n)
    n_active = _n_active(model, ts, tokens)
    row = dict(
        impl="sae_circuits",
        model=name,
        tokens=n,
        mode=mode,
        width=width,
        n_active=n_active,
        active_per_token=round(n_active / (n - 1) / model.cfg.n_layers, 1),
        load_s=round(t_load, 1),
        rss_after_load_mb=round(_rss_mb()),
    )
    sources = n_active + (model.cfg.n_layers + 1) * n
    est_gb = n_active * sources / 4 * 12 / 2**30
    if mode == "full" and est_gb > mem_gb:
        return {**row, "skipped": f"full graph ~{est_gb:.0f} GB (> --mem-gb {mem_gb:g})"}
    _page_in(ts)
    _trim()
    rss_before = _rss_mb()
    _reset_peak()
    t1 = time.perf_counter()
    graph = sc.attribute(
        model,
        tokens,
        ts,
        max_n_logits=10,
        desired_logit_prob=0.95,
        batch_size=256,
        max_feature_nodes=max_feature_nodes(mode),
    )
    t_attr = time.perf_counter() - t1
    working = _hwm_mb() - rss_before
    if save:
        from scipy import sparse

        write_ref_fixture(name, width, model, ts)
        Path(save + ".tokens.json").write_text(json.dumps(tokens.tolist()))

        from benchmarks._ref_real_runner import node_keys

        sparse.save_npz(save + ".adj.npz", sparse.csr_matrix(graph.adjacency))
        Path(save + ".keys.json").write_text(json.dumps(node_keys(graph.nodes)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **row,
        "attribute_s": round(t_attr, 1),
        "n_nodes": len(graph.nodes),
        "n_edges": int(graph.adjacency.nnz),
        "peak_rss_mb": round(peak),
        "working_mb": round(working),
        "ranking_row_entries": graph.metadata["settings"].get("ranking_row_entries"),
    }


def _child(args: list[str], python: str = sys.executable) -> dict:
    out = subprocess.run([python, *args], capture_output=True, text=True, cwd=rt.ROOT, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        # the failure, not what a destructor printed after it (circuit-tracer's __del__ raises
        # again on a half-built model and would hide the cause)
        err = (out.stderr or out.stdout).split("Exception ignored in")[0]
        return {"error": err[-600:], "rc": out.returncode}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=rt.MODELS, nargs="+", default=list(rt.MODELS))
    p.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    p.add_argument("--mode", choices=MODES, nargs="+", default=list(DEFAULT_MODES))
    p.add_argument("--width", type=int, default=WIDTH, help="features per layer")
    p.add_argument("--mem-gb", type=float, default=6.0, help="largest full graph to attempt")
    p.add_argument("--reference", action="store_true", help="also run circuit-tracer 0.5.0")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "TOKENS", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], int(a.one[1]), a.one[2], a.mem_gb, a.save, a.width)))
        return
    for name in a.model:
        rt.build(name, a.width)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    ref_py = Path(os.environ.get("REF_HOME", Path.home() / ".cache/sae_circuits_reference"))
    ref_py = ref_py / "ref" / "bin" / "python"
    for n in sorted(a.tokens):  # the big ones last
        for name in a.model:
            for mode in a.mode:
                save = str(rt.OUT / f"bench-{name}-w{a.width}-{n}-{mode}") if a.reference else None
                args = [
                    "-m",
                    "benchmarks.bench_real",
                    "--one",
                    name,
                    str(n),
                    mode,
                    "--mem-gb",
                    str(a.mem_gb),
                    "--width",
                    str(a.width),
                ] + (["--save", save] if save else [])
                row = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **_child(args)}
                print(json.dumps(row), flush=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                if a.reference and save and "attribute_s" in row:
                    ref = _child(
                        [
                            "benchmarks/_ref_real_runner.py",
                            f"{name}-w{a.width}",
                            str(n),
                            mode,
                            save,
                        ],
                        python=str(ref_py),
                    )
                    ref = {
                        "when": row["when"],
                        "impl": "circuit-tracer",
                        "model": name,
                        "tokens": n,
                        "mode": mode,
                        **ref,
                    }
                    print(json.dumps(ref), flush=True)
                    with RESULTS.open("a") as f:
                        f.write(json.dumps(ref) + "\n")


if __name__ == "__main__":
    main()
