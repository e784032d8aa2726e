"""circuit-tracer 0.5.0 on the real models, for ``bench_real.py --reference`` (run in the reference
venv, ``$REF_HOME/ref``, with TransformerLens 2.18; never imported by ``sae_circuits``).

usage: _ref_real_runner.py FIXTURE TOKENS MODE SAVE
Reads the fixture ``bench_real`` wrote (``out/real_models/ref-fixture-{FIXTURE}/``, FIXTURE = ``{model}-w{width}``: ``model.json``
TransformerLens config, ``model.safetensors`` state dict, ``logits.json`` our last-position
logits on a probe, the transcoders' files), the prompt ``SAVE.tokens.json`` and our graph
(``SAVE.adj.npz``, ``SAVE.keys.json``); prints one JSON line: time, peak RSS, the reference
model's logits vs ours, node-set agreement and the largest edge difference relative to the
largest reference edge.

Gemma 3: TL 2.18 itself builds the right rotary table per layer (``rotary_base_local`` 10,000 for
the local, sliding-window layers; ``rotary_base`` 1,000,000 for the global ones), but
circuit-tracer's ``_configure_replacement_model`` then runs ``_deduplicate_attention_buffers``,
which shares the last block's table across all layers: every layer gets one base. This script
gives each layer its own table again after that call -- in this script, not in the package
(``--no-rotary-patch`` runs it unpatched) -- and reports how many layers that changed and the
reference model's logits against ours. The transcoders read and write the hooks ours do
(``hooks.json`` in the fixture); the context is cut to ``max(2048, TOKENS)`` (TL 2.18 keeps an
``n_ctx`` x ``n_ctx`` mask per layer).
"""

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("SAE_CIRCUITS_REAL_DIR") or HERE.parent / "out" / "real_models")


def node_keys(nodes) -> list[str]:
    """``kind:layer:pos:feature`` keys of our graph's nodes (as ``compare.py``)."""

    def iv(x):
        return -1 if x is None or str(x) in ("<NA>", "nan", "None") else int(x)

    keys = []
    for kind, layer, pos, feat, tok in zip(
        nodes["kind"],
        nodes["layer"],
        nodes["position"],
        nodes["feature"],
        nodes["token_id"],
        strict=True,
    ):
        kind = str(kind)
        if kind == "feature":
            keys.append(f"feature:{iv(layer)}:{iv(pos)}:{iv(feat)}")
        elif kind == "error":
            keys.append(f"error:{iv(layer)}:{iv(pos)}:-1")
        elif kind in ("token", "logit"):
            keys.append(f"{kind}:-1:{iv(pos)}:{iv(tok)}")
        else:
            keys.append(f"{kind}:?")
    return keys


def _per_layer_rotary(model, kw: dict) -> int:
    """Give each layer its own rotary table again; returns how many layers it changed.

    circuit-tracer's ``_deduplicate_attention_buffers`` (run by ``_configure_replacement_model``)
    shares one ``rotary_sin``/``rotary_cos`` pair, the last block's, across all layers. Gemma 3's
    local layers use ``rotary_base_local`` (10,000) and its global layers ``rotary_base``
    (1,000,000), so after that call every layer has the table of the last layer's kind. Here each
    layer gets a fresh table for its own base (new tensors: the shared one is not written to).
    """
    import torch

    local_base = kw.get("rotary_base_local")
    if local_base is None:
        return 0
    cfg = model.cfg
    changed = 0
    for block in model.blocks:
        attn = block.attn
        if not hasattr(attn, "rotary_sin"):
            continue
        base = local_base if attn.attn_type == "local" else cfg.rotary_base
        sin, cos = attn.calculate_sin_cos_rotary(
            cfg.rotary_dim, attn.rotary_sin.shape[0], base=base, dtype=cfg.dtype
        )
        changed += int(not torch.equal(sin, attn.rotary_sin))
        attn.rotary_sin = sin
        attn.rotary_cos = cos
    return changed


def _load(fx: Path, patch_rotary: bool, n_ctx: int):
    import torch
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder import TranscoderSet
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    kw = json.loads((fx / "model.json").read_text())
    known = set(HookedTransformerConfig.__dataclass_fields__)
    dropped = sorted(k for k in kw if k not in known)
    # model.json stores the dtype as a string; TL 2.18 wants the torch dtype itself
    kw["dtype"] = getattr(torch, kw.get("dtype") or "float32")
    # TL 2.18 registers an n_ctx x n_ctx causal mask per layer (Gemma 3: 32,768^2 bytes = 1 GiB
    # each); the prompt needs far less, and a shorter context changes nothing below n_ctx
    kw["n_ctx"] = min(int(kw["n_ctx"]), max(2048, n_ctx))
    cfg = HookedTransformerConfig(**{k: v for k, v in kw.items() if k in known})
    model = TransformerLensReplacementModel(cfg)
    # the reference's own rotary tables, not ours: our state dict's rotary_* buffers are dropped
    sd = {
        k: v
        for k, v in load_file(fx / "model.safetensors").items()
        if not k.endswith(("rotary_sin", "rotary_cos", "mask", "IGNORE"))
    }
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))]
    assert not unexpected and not bad, (bad, unexpected)
    layers = {}
    for i in range(cfg.n_layers):
        w = load_file(fx / "transcoders" / f"layer_{i}.safetensors")
        d, f = w["W_enc"].shape
        t = SingleLayerTranscoder(
            d, f, JumpReLU(w["threshold"], 0.1), i, device=torch.device("cpu"), dtype=cfg.dtype
        )
        with torch.no_grad():
            t.W_enc.copy_(w["W_enc"].T)
            t.W_dec.copy_(w["W_dec"])
            t.b_enc.copy_(w["b_enc"])
            t.b_dec.copy_(w["b_dec"])
        layers[i] = t
    # the hooks our transcoders read and write, as ``blocks.{l}.``-relative names
    hooks = json.loads((fx / "hooks.json").read_text()) if (fx / "hooks.json").exists() else {}
    tcs = TranscoderSet(
        layers,
        feature_input_hook=hooks.get("input", "mlp.hook_in"),
        feature_output_hook=hooks.get("output", "hook_mlp_out"),
        scan="real",
    )
    model._configure_replacement_model(tcs)
    patched = _per_layer_rotary(model, kw) if patch_rotary else 0
    return model, dropped, patched


def _id_tokenizer(d_vocab: int, bos_id: int):
    """A word-level tokenizer over token ids (``t{i}`` -> ``i``) whose BOS is ``bos_id``.

    circuit-tracer's ``ensure_tokenized`` prepends its tokenizer's BOS unless the prompt starts
    with it: the BOS must be the model's own (Gemma's is 2), or the reference attributes a
    prompt one token longer than ours (the shared ``toy_tokenizer`` has BOS 0).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(d_vocab)}, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=f"t{bos_id}", unk_token="t1")


def _trim() -> None:
    """Give memory that is free but still mapped back to the system (glibc ``malloc_trim``),
    so that RSS before ``attribute`` holds only what is in use (repeats ``bench_real._trim``:
    this runner cannot import ``bench_real``)."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _csr_rows_cols(path: str, idx: np.ndarray) -> np.ndarray:
    """Dense ``A[idx][:, idx]`` of a CSR matrix saved by ``scipy.sparse.save_npz`` (read with
    numpy: the reference venv has no scipy)."""
    z = np.load(path)
    fmt = z["format"].item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    assert fmt == "csr", fmt
    data, indices, indptr = z["data"], z["indices"], z["indptr"]
    n = int(z["shape"][1])
    col = np.full(n, -1)
    col[idx] = np.arange(len(idx))
    out = np.zeros((len(idx), len(idx)), dtype=np.float64)
    for i, r in enumerate(idx):
        lo, hi = indptr[r], indptr[r + 1]
        c = col[indices[lo:hi]]
        keep = c >= 0
        out[i, c[keep]] = data[lo:hi][keep]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("fixture")
    p.add_argument("tokens", type=int)
    p.add_argument("mode")
    p.add_argument("save")
    p.add_argument("--no-rotary-patch", action="store_true")
    a = p.parse_args()
    import torch
    from circuit_tracer import attribute

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    fx = OUT / f"ref-fixture-{a.fixture}"
    t0 = time.perf_counter()
    model, dropped, patched = _load(fx, not a.no_rotary_patch, a.tokens)
    t_load = time.perf_counter() - t0
    probe = json.loads((fx / "logits.json").read_text())
    with torch.no_grad():
        lg = model(torch.tensor([probe["tokens"]]))[0, -1]
    ours_lg = torch.tensor(probe["logits"])
    logits_rel = float((lg - ours_lg).abs().max() / ours_lg.abs().max())
    tokens = torch.tensor(json.loads(Path(a.save + ".tokens.json").read_text()))
    model.tokenizer = _id_tokenizer(model.cfg.d_vocab, int(tokens[0]))
    _trim()  # the same baseline as bench_real: freed memory back to the system first
    rss_before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: the working memory
    t1 = time.perf_counter()
    g = attribute(
        tokens,
        model,
        max_n_logits=10,
        desired_logit_prob=0.95,
        batch_size=256,
        max_feature_nodes=None if a.mode == "full" else int(a.mode.removeprefix("max")),
    )
    t_attr = time.perf_counter() - t1
    working = _status_mb("VmHWM") - rss_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    af = g.active_features[g.selected_features].numpy()
    n_layers, n_pos = model.cfg.n_layers, len(tokens)
    keys = [f"feature:{int(ly)}:{int(q)}:{int(f)}" for ly, q, f in af]
    keys += [f"error:{ly}:{q}:-1" for ly in range(n_layers) for q in range(n_pos)]
    keys += [f"token:-1:{q}:{int(tokens[q])}" for q in range(n_pos)]
    lt = g.logit_token_ids if hasattr(g, "logit_token_ids") else g.logit_tokens
    keys += [f"logit:-1:{n_pos - 1}:{int(t)}" for t in lt]
    ref = g.adjacency_matrix.numpy()
    our_keys = json.loads(Path(a.save + ".keys.json").read_text())
    pos = {k: i for i, k in enumerate(keys)}
    io = np.array([i for i, k in enumerate(our_keys) if k in pos])
    ir = np.array([pos[k] for k in our_keys if k in pos])
    sub_ours = _csr_rows_cols(a.save + ".adj.npz", io)
    sub_ref = ref[np.ix_(ir, ir)]
    scale = float(np.abs(sub_ref).max()) or 1.0
    print(
        json.dumps(
            dict(
                load_s=round(t_load, 1),
                attribute_s=round(t_attr, 1),
                peak_rss_mb=round(peak),
                working_mb=round(working),
                n_active=len(g.active_features),
                n_nodes=len(keys),
                only_ours=len(our_keys) - len(io),
                only_ref=len(keys) - len(io),
                rel_err=float(np.abs(sub_ours - sub_ref).max()) / scale,
                logits_rel_err_vs_ours=logits_rel,
                rotary_layers_patched=patched,
                cfg_keys_unknown_to_tl218=dropped,
            )
        )
    )


if __name__ == "__main__":
    main()
