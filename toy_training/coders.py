"""Sparse coders of the toy-facts model: per-layer and cross-layer transcoders, trained on a CPU.

Method: the data are the model's activations at every distinct context of the world's
sentences (:func:`collect_activations`: inputs at ``blocks.{l}.ln2.hook_normalized``, targets
at ``blocks.{l}.hook_mlp_out``). :func:`train_coder` trains ReLU features with loss = fraction
of variance unexplained of each output layer + ``l1`` * sum of activations weighted by decoder
norms (targets scaled to unit total variance per layer); features of a cross-layer transcoder
write to their own layer and every later one. It then sets a JumpReLU threshold per feature
that drops its smallest activations (``drop_mass`` of its activation mass) and refits decoders
and biases by least squares on the final sparse codes. :func:`save_plt` writes SAELens
``JumpReLUTranscoder`` folders, :func:`save_clt` the public per-layer CLT layout.

Example:
    >>> data = collect_activations(model, world)
    >>> coder = train_coder(data, n_features=512, l1=0.1, steps=800, seed=0)
    >>> coder_stats(coder, data)["fvu"]
    >>> save_plt(coder, Path("out/transcoders"))
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformer_lens import HookedTransformer

from sae_circuits.toy.world import World
from toy_training.evaluate import encode_sentences

__all__ = [
    "INPUT_HOOK",
    "OUTPUT_HOOK",
    "Activations",
    "SparseCoder",
    "coder_stats",
    "collect_activations",
    "cosine_schedule",
    "replacement_accuracy",
    "save_clt",
    "save_plt",
    "train_coder",
]

logger = logging.getLogger(__name__)

INPUT_HOOK = "ln2.hook_normalized"
OUTPUT_HOOK = "hook_mlp_out"


@dataclass
class Activations:
    """Transcoder data: one row per distinct context of the world's sentences.

    Attributes:
        x: ``(L, M, d)`` inputs (``blocks.{l}.ln2.hook_normalized``).
        y: ``(L, M, d)`` targets (``blocks.{l}.hook_mlp_out``).
        sentence: ``(M,)`` index into ``world.sentences()`` of the first sentence with the context.
        position: ``(M,)`` position in it (``<bos>`` = 0).
        count: ``(M,)`` how many sentences share the context.
    """

    x: torch.Tensor
    y: torch.Tensor
    sentence: torch.Tensor
    position: torch.Tensor
    count: torch.Tensor


@torch.no_grad()
def collect_activations(model: HookedTransformer, world: World) -> Activations:
    """Transcoder inputs and targets at every distinct context (no ``<bos>``, no answer position).

    Args:
        model: The trained model.
        world: The world (all sentences, training and held-out).

    Returns:
        The :class:`Activations`.
    """
    vocab = world.vocabulary()
    tokens, lengths = encode_sentences([s.text for s in world.sentences()], vocab)
    L = model.cfg.n_layers
    names = [f"blocks.{li}.{h}" for li in range(L) for h in (INPUT_HOOK, OUTPUT_HOOK)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    seen: dict[tuple[int, ...], int] = {}
    rows: list[tuple[int, int]] = []
    count: list[int] = []
    for i, n in enumerate(lengths.tolist()):
        for p in range(1, n - 1):
            key = tuple(tokens[i, : p + 1].tolist())
            if key in seen:
                count[seen[key]] += 1
            else:
                seen[key] = len(rows)
                rows.append((i, p))
                count.append(1)
    si = torch.tensor([r[0] for r in rows])
    pi = torch.tensor([r[1] for r in rows])
    x = torch.stack([cache[f"blocks.{li}.{INPUT_HOOK}"][si, pi] for li in range(L)])
    y = torch.stack([cache[f"blocks.{li}.{OUTPUT_HOOK}"][si, pi] for li in range(L)])
    return Activations(x, y, si, pi, torch.tensor(count))


@dataclass
class SparseCoder:
    """A per-layer (``cross=False``) or cross-layer transcoder's weights, in float32.

    Attributes:
        W_enc: ``(L, d, F)``.
        b_enc: ``(L, F)``.
        threshold: ``(L, F)`` JumpReLU thresholds (0 = ReLU).
        W_dec: per source layer ``l``, ``(F, L - l, d)`` (cross-layer) or ``(F, 1, d)``.
        b_dec: ``(L, d)`` decoder bias of each output layer.
        cross: Whether features write to later layers too.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    threshold: torch.Tensor
    W_dec: list[torch.Tensor]
    b_dec: torch.Tensor
    cross: bool

    @property
    def n_layers(self) -> int:
        return self.W_enc.shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(L, n, d)`` inputs -> ``(L, n, F)`` activations (JumpReLU)."""
        pre = torch.einsum("lnd,ldf->lnf", x, self.W_enc) + self.b_enc[:, None]
        return F.relu(pre) * (pre > self.threshold[:, None])

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """``(L, n, F)`` activations -> ``(L, n, d)`` reconstructions of every output layer."""
        out = self.b_dec[:, None].expand(self.n_layers, acts.shape[1], -1).clone()
        for li, w in enumerate(self.W_dec):
            k = w.shape[1]
            out[li : li + k] += torch.einsum("nf,fkd->knd", acts[li], w)
        return out


def _fvu(y: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """``(L, n, d)`` targets and reconstructions -> ``(L,)`` fraction of variance unexplained."""
    var = (y - y.mean(1, keepdim=True)).pow(2).sum((1, 2))
    return (y - rec).pow(2).sum((1, 2)) / var


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_coder(
    data: Activations,
    *,
    cross: bool,
    n_features: int,
    l1: float,
    steps: int,
    batch_size: int = 512,
    lr: float = 3e-3,
    drop_mass: float = 0.02,
    seed: int = 0,
    log: list[dict[str, Any]] | None = None,
) -> SparseCoder:
    """Train per-layer or cross-layer transcoders (ReLU + L1, then JumpReLU thresholds, refit).

    Args:
        data: Activations (:func:`collect_activations`).
        cross: Cross-layer (features write to their layer and all later ones).
        n_features: Features per layer.
        l1: Sparsity coefficient.
        steps: Adam steps (the L1 coefficient ramps up over the first 20%).
        batch_size: Contexts per step.
        lr: Peak learning rate (warm-up, cosine decay).
        drop_mass: Share of each feature's activation mass under its JumpReLU threshold.
        seed: Seed of the initialisation and batches.
        log: If given, training rows (kind, step, loss, fvu, l0, time_s) are appended.

    Returns:
        The trained :class:`SparseCoder` (decoders in the model's units).
    """
    gen = torch.Generator().manual_seed(seed + (2 if cross else 1))
    L, M, d = data.x.shape
    kind = "clt" if cross else "plt"
    mean = data.y.mean(1, keepdim=True)
    scale = (data.y - mean).pow(2).sum(-1).mean(1).sqrt()[:, None, None]  # (L, 1, 1)
    yn = (data.y - mean) / scale
    W_enc = (torch.randn(L, d, n_features, generator=gen) / d**0.5).requires_grad_()
    b_enc = torch.zeros(L, n_features, requires_grad=True)
    W_dec = [
        (
            0.1 * torch.randn(n_features, (L - li) if cross else 1, d, generator=gen) / d**0.5
        ).requires_grad_()
        for li in range(L)
    ]
    b_dec = torch.zeros(L, d, requires_grad=True)
    coder = SparseCoder(W_enc, b_enc, torch.zeros(L, n_features), W_dec, b_dec, cross)
    opt = torch.optim.Adam([W_enc, b_enc, b_dec, *W_dec], lr=lr)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, M, (batch_size,), generator=gen)
        acts = coder.encode(data.x[:, idx])
        rec = coder.decode(acts)
        mse = (rec - yn[:, idx]).pow(2).sum(-1).mean(1)  # (L,)
        norms = torch.stack([w.pow(2).sum((1, 2)).sqrt() for w in W_dec])  # (L, F)
        sparsity = (acts * norms[:, None]).sum(-1).mean(1)
        ramp = min(1.0, (step + 1) / (0.2 * steps))
        loss = (mse + ramp * l1 * sparsity).sum()
        for group in opt.param_groups:
            group["lr"] = lr * cosine_schedule(step, steps, steps // 20 + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and (step % 100 == 0 or step == steps - 1):
            row = {
                "kind": kind,
                "step": step,
                "loss": float(loss.detach()) / L,
                "fvu": float(mse.detach().mean()),
                "l0": float((acts > 0).float().sum(-1).mean()),
                "time_s": time.perf_counter() - start,
            }
            log.append(row)
            logger.info("%s step %d: fvu=%.4f l0=%.2f", kind, step, row["fvu"], row["l0"])
    with torch.no_grad():
        coder = SparseCoder(
            W_enc.detach(), b_enc.detach(), torch.zeros(L, n_features),
            [w.detach() for w in W_dec], b_dec.detach(), cross,
        )  # fmt: skip
        coder.threshold = _thresholds(coder.encode(data.x), drop_mass)
        _refit(coder, coder.encode(data.x), data.y)
    return coder


def _thresholds(acts: torch.Tensor, drop_mass: float) -> torch.Tensor:
    """Per-feature thresholds under which ``drop_mass`` of the activation mass lies."""
    L, _, n_feat = acts.shape
    out = torch.zeros(L, n_feat)
    if drop_mass <= 0:
        return out
    for li in range(L):
        a, _ = torch.sort(acts[li], dim=0)  # (M, F), zeros first
        cum = torch.cumsum(a, 0)
        below = cum <= drop_mass * cum[-1:]  # activations dropped
        # threshold = the largest dropped activation (a feature keeps pre > threshold)
        out[li] = torch.where(below, a, torch.zeros_like(a)).max(0).values
    return out


def _refit(coder: SparseCoder, acts: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> None:
    """Least-squares decoders and biases of every output layer given fixed sparse codes."""
    L, M, _ = y.shape
    for out in range(L):
        sources = [li for li in range(L) if out - li in range(coder.W_dec[li].shape[1])]
        a = torch.cat([acts[li] for li in sources] + [torch.ones(M, 1)], 1).double()
        gram = a.T @ a
        gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        sol = torch.linalg.solve(gram, a.T @ y[out].double()).float()
        n_feat = acts.shape[-1]
        for i, li in enumerate(sources):
            coder.W_dec[li][:, out - li] = sol[i * n_feat : (i + 1) * n_feat]
        coder.b_dec[out] = sol[-1]


def coder_stats(coder: SparseCoder, data: Activations) -> dict[str, list[float]]:
    """FVU and L0 per layer on the activation data (distinct contexts)."""
    acts = coder.encode(data.x)
    fvu = _fvu(data.y, coder.decode(acts))
    l0 = (acts > 0).float().sum(-1).mean(1)
    dead = (acts.sum(1) == 0).float().mean(-1)
    return {"fvu": fvu.tolist(), "l0": l0.tolist(), "dead_fraction": dead.tolist()}


@torch.no_grad()
def replacement_accuracy(
    model: HookedTransformer, coder: SparseCoder, sentences: Sequence[Any]
) -> float:
    """Top-1 answer accuracy with every MLP replaced by the transcoders (no error terms)."""
    from toy_training.evaluate import _prompt_tokens

    tokens, last, answers = _prompt_tokens(model, list(sentences))
    L = model.cfg.n_layers
    inputs: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}

    def read(x: torch.Tensor, hook: Any) -> None:
        inputs[hook.layer()] = x

    def write(out: torch.Tensor, hook: Any) -> torch.Tensor:
        li = hook.layer()
        b, n, d = inputs[li].shape
        pre = inputs[li].reshape(-1, d) @ coder.W_enc[li] + coder.b_enc[li]
        acts[li] = F.relu(pre) * (pre > coder.threshold[li])
        rec = coder.b_dec[li].expand(b * n, d).clone()
        for s in range(li + 1):
            if li - s < coder.W_dec[s].shape[1]:
                rec += acts[s] @ coder.W_dec[s][:, li - s]
        return rec.reshape(b, n, d)

    hooks: list[Any] = [(f"blocks.{li}.{INPUT_HOOK}", read) for li in range(L)]
    hooks += [(f"blocks.{li}.{OUTPUT_HOOK}", write) for li in range(L)]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    pred = logits[torch.arange(len(last)), last].argmax(-1)
    return float((pred == answers).float().mean())


def save_plt(coder: SparseCoder, folder: Path) -> None:
    """Per-layer transcoders as SAELens ``JumpReLUTranscoder`` folders ``layer_{i}/``."""
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig

    for li in range(coder.n_layers):
        d, n_feat = coder.W_enc[li].shape
        cfg = JumpReLUTranscoderConfig(
            d_in=d, d_sae=n_feat, d_out=d, dtype="float32", device="cpu",
            apply_b_dec_to_input=False,
        )  # fmt: skip
        cfg.metadata.model_name = "toy-facts"
        cfg.metadata.hook_name = f"blocks.{li}.{INPUT_HOOK}"
        cfg.metadata.hook_name_out = f"blocks.{li}.{OUTPUT_HOOK}"
        tcd = JumpReLUTranscoder(cfg)
        with torch.no_grad():
            tcd.W_enc.copy_(coder.W_enc[li])
            tcd.b_enc.copy_(coder.b_enc[li])
            tcd.W_dec.copy_(coder.W_dec[li][:, 0])
            tcd.b_dec.copy_(coder.b_dec[li])
            tcd.threshold.copy_(coder.threshold[li])
        tcd.save_model(folder / f"layer_{li}")


def save_clt(coder: SparseCoder, folder: Path) -> None:
    """The cross-layer transcoder in the public per-layer layout (float32) + ``config.yaml``."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for li in range(coder.n_layers):
        enc = {
            f"W_enc_{li}": coder.W_enc[li].T.contiguous(),
            f"b_enc_{li}": coder.b_enc[li].contiguous(),
            f"b_dec_{li}": coder.b_dec[li].contiguous(),
            f"threshold_{li}": coder.threshold[li].contiguous(),
        }
        save_file(enc, folder / f"W_enc_{li}.safetensors")
        save_file({f"W_dec_{li}": coder.W_dec[li].contiguous()}, folder / f"W_dec_{li}.safetensors")
    cfg = {
        "model_kind": "cross_layer_transcoder",
        "model_name": "toy-facts",
        "feature_input_hook": INPUT_HOOK,
        "feature_output_hook": OUTPUT_HOOK,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
