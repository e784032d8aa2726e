"""Train the toy-facts model and its transcoders on the synthetic world, on a CPU, in minutes.

Method:

1. **Model.** A 4-layer GPT-2-style ``HookedTransformer`` (LayerNorm, GELU, learned positions,
   no dropout, unembedding tied to the embedding) is trained with AdamW (weight decay 2.0) on
   next-token prediction over the world's *training* sentences (:mod:`sae_circuits.toy.world`),
   one sentence per sequence, ``<bos>`` first. Held-out sentences (two-hop questions about
   held-out cities) are never seen. Two choices make the two-hop answer go through a place
   representation *at the city's position*, read there by attention (the circuit the demo
   shows) rather than through the city's identity copied to the last position and looked up
   again: block 0's attention is switched off (its output weights are zero and frozen, so no
   token can be copied before MLP 0 has looked up the city's place), and a curriculum first
   trains only place facts and sentences where the place comes right after the city.
2. **Activations.** The transcoders' data are the model's activations on *every* sentence of the
   world (training and held-out: the transcoders describe the model, they are not tested for
   generalisation), one row per distinct context (a causal model's activation depends only on
   the prefix), the ``<bos>`` and answer positions left out: inputs at
   ``blocks.{l}.ln2.hook_normalized``, targets at ``blocks.{l}.hook_mlp_out``.
3. **Per-layer transcoders (PLT).** One ReLU transcoder per layer, loss = fraction of variance
   unexplained + ``l1`` * sum of activations times decoder norms; then a JumpReLU threshold per
   feature that drops its smallest activations (``drop_mass`` of its activation mass), and a
   least-squares refit of decoders and biases on the final sparse codes. Saved as SAELens
   ``JumpReLUTranscoder`` folders ``layer_{i}/`` (``save_model``).
4. **Cross-layer transcoder (CLT).** Features read layer ``l``'s input and write to the MLP
   outputs of layers ``l..L-1``; the loss sums every output layer's FVU; same sparsity,
   thresholds and refit; saved in the public per-layer layout (``W_enc_{l}.safetensors`` with
   ``W_enc_{l}`` ``(d_sae, d_model)``, ``b_enc_{l}``, ``b_dec_{l}``, ``threshold_{l}``;
   ``W_dec_{l}.safetensors`` with ``W_dec_{l}`` ``(d_sae, L - l, d_model)``; ``config.yaml``).
5. **Labels** (:mod:`toy_training.labels`), the Dallas graph and swap checks, a training log
   (``training_log.json``) and, with ``--plot``, a PNG of the curves (matplotlib, imported only
   there).

Everything is seeded; retraining gives the same weights on the same machine, thread count and
library versions.

Example:
    $ python -m toy_training.train --out /tmp/toy-facts --plot /tmp/curves.png  # 2-8 min
    $ python -m toy_training.train --out /tmp/t --quick             # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_circuits.toy.facts import toy_tokenizer
from sae_circuits.toy.world import World, build_world
from toy_training.coders import (
    OUTPUT_HOOK,
    coder_stats,
    collect_activations,
    cosine_schedule,
    replacement_accuracy,
    save_clt,
    save_plt,
    train_coder,
)
from toy_training.evaluate import encode_sentences, evaluate

__all__ = [
    "CURRICULUM_TEMPLATES",
    "TrainConfig",
    "city_patch_flip_rate",
    "main",
    "model_config",
    "run",
    "save_model",
    "train_model",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Sizes and optimisation settings of the model and the transcoders."""

    seed: int = 0
    held_out_per_place: int = 2
    # model
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 16
    model_steps: int = 900
    curriculum_steps: int = 300
    mlp_only_first_block: bool = True
    model_batch: int = 64
    model_lr: float = 3e-3
    weight_decay: float = 2.0
    warmup: int = 100
    eval_every: int = 100
    # transcoders
    d_sae: int = 512
    clt_d_sae: int = 384
    tc_steps: int = 800
    tc_batch: int = 512
    tc_lr: float = 3e-3
    l1: float = 0.1
    clt_l1: float = 0.05
    drop_mass: float = 0.02
    storage_dtype: str = "float16"

    @classmethod
    def quick(cls) -> TrainConfig:
        """A tiny configuration for smoke tests (seconds)."""
        return cls(
            n_layers=2, d_model=32, n_heads=2, d_mlp=64, model_steps=30, curriculum_steps=10,
            model_batch=32,
            eval_every=10, d_sae=32, clt_d_sae=32, tc_steps=20, tc_batch=128,
        )  # fmt: skip


def model_config(vocab_size: int, tc: TrainConfig) -> dict[str, Any]:
    """JSON-able ``HookedTransformerConfig`` keyword arguments of the toy model."""
    return {
        "model_name": "toy-facts",
        "n_layers": tc.n_layers,
        "d_model": tc.d_model,
        "n_heads": tc.n_heads,
        "d_head": tc.d_model // tc.n_heads,
        "d_mlp": tc.d_mlp,
        "d_vocab": vocab_size,
        "n_ctx": tc.n_ctx,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
        "default_prepend_bos": True,
        "seed": tc.seed,
    }


#: Templates of the first ``curriculum_steps`` steps: facts about places, and city -> place
#: where the place is the very next word (so the place is computed at the city's position).
CURRICULUM_TEMPLATES = frozenset(
    {
        "capital_of", "is_capital_of", "region_of", "language_of", "largest_in",
        "lives_in", "moved_to", "flew_to", "city_place_is",
    }
)  # fmt: skip


def train_model(
    world: World, tc: TrainConfig, log: list[dict[str, Any]] | None = None
) -> HookedTransformer:
    """Train the toy model on the world's training sentences.

    The unembedding is tied to the embedding (``W_U = W_E.T``, as GPT-2), so a representation
    that predicts ``texas`` is also one that later layers read as the token ``texas``. The first
    ``curriculum_steps`` steps see only :data:`CURRICULUM_TEMPLATES`: the model first learns each
    city's place *at the city's position*, and later learns the remaining one-hop and two-hop
    templates on top of that representation (instead of looking the city up again elsewhere).

    Args:
        world: The world.
        tc: Settings.
        log: If given, evaluation rows (step, loss, accuracies) are appended to it.

    Returns:
        The trained model (eval mode, with the toy tokenizer; ``W_U`` holds ``W_E.T``).
    """
    torch.manual_seed(tc.seed)
    vocab = world.vocabulary()
    cfg = HookedTransformerConfig(**model_config(len(vocab), tc), dtype=torch.float32, device="cpu")
    model = HookedTransformer(cfg)
    model.tokenizer = toy_tokenizer(vocab)
    model.cfg.tokenizer_prepends_bos = False
    train = world.split("train")
    phases = [
        [s.text for s in train if s.template in CURRICULUM_TEMPLATES],
        [s.text for s in train],
    ]
    encoded = [encode_sentences(texts, vocab) for texts in phases]
    model.unembed.W_U.requires_grad_(False)
    if tc.mlp_only_first_block:
        with torch.no_grad():
            model.blocks[0].attn.W_O.zero_()
            model.blocks[0].attn.b_O.zero_()
        for prm in model.blocks[0].attn.parameters():
            prm.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
            {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=tc.model_lr,
        betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(tc.seed)
    phase, order, cursor = -1, torch.zeros(0, dtype=torch.long), 0
    running: list[float] = []
    start = time.perf_counter()
    for step in range(tc.model_steps + 1):
        if step % tc.eval_every == 0 or step == tc.model_steps:
            _tie(model)
            model.eval()
            row = {"step": step, "loss": sum(running) / max(1, len(running))}
            row.update(evaluate(model, world))
            row["time_s"] = time.perf_counter() - start
            logger.info("model step %d: %s", step, _fmt(row))
            if log is not None:
                log.append(row)
            running = []
            if step == tc.model_steps:
                break
        model.train()
        want = 0 if step < tc.curriculum_steps else 1
        tokens, lengths = encoded[want]
        if want != phase or cursor + tc.model_batch > len(order):
            phase, order, cursor = want, torch.randperm(len(tokens), generator=gen), 0
        idx = order[cursor : cursor + tc.model_batch]
        cursor += tc.model_batch
        n = int(lengths[idx].max())
        batch = tokens[idx, :n]
        resid = model(batch[:, :-1], stop_at_layer=tc.n_layers)
        logits = model.ln_final(resid) @ model.W_E.T + model.unembed.b_U
        mask = torch.arange(n - 1)[None] < (lengths[idx, None] - 1)
        loss = F.cross_entropy(logits[mask], batch[:, 1:][mask])
        for group in opt.param_groups:
            group["lr"] = tc.model_lr * cosine_schedule(step, tc.model_steps, tc.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        running.append(float(loss.detach()))
    _tie(model)
    model.eval()
    return model


def _tie(model: HookedTransformer) -> None:
    with torch.no_grad():
        model.unembed.W_U.copy_(model.W_E.T)


@torch.no_grad()
def city_patch_flip_rate(model: HookedTransformer, world: World, max_pairs: int = 200) -> float:
    """How often the city position's MLP outputs alone carry the place to the answer.

    For pairs of held-out cities ``(a, b)`` in different places, the MLP outputs of every layer
    at the city's position in the two-hop capital question about ``b`` are patched into the one
    about ``a``; the rate at which the answer becomes ``b``'s capital. High: the place is
    computed at the city's position and read from there (the circuit the demo shows).

    Args:
        model: The model.
        world: The world.
        max_pairs: Pairs evaluated (the first ones in a fixed order).

    Returns:
        The flip rate in ``[0, 1]``.
    """
    from toy_training.evaluate import _prompt_tokens

    held = [s for s in world.split("heldout") if s.template == "two_hop_capital"]
    pairs = [
        (a, b) for a in held for b in held
        if world.place_of(a.subject).name != world.place_of(b.subject).name
    ][:: max(1, len(held) ** 2 // (2 * max_pairs))][:max_pairs]  # fmt: skip
    src_tokens, _, _ = _prompt_tokens(model, [b for _, b in pairs])
    dst_tokens, last, _ = _prompt_tokens(model, [a for a, _ in pairs])
    tok = model.tokenizer
    assert tok is not None
    answers = torch.tensor([tok.convert_tokens_to_ids(b.answer) for _, b in pairs])
    pos = 7  # "<bos> the capital of the state containing CITY is"
    names = [f"blocks.{li}.{OUTPUT_HOOK}" for li in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(src_tokens, names_filter=lambda n: n in names)

    def patch(out: torch.Tensor, hook: Any) -> torch.Tensor:
        out = out.clone()
        out[:, pos] = cache[hook.name][:, pos]
        return out

    logits = model.run_with_hooks(dst_tokens, fwd_hooks=[(n, patch) for n in names])
    pred = logits[torch.arange(len(last)), last].argmax(-1)
    return float((pred == answers).float().mean())


def _fmt(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def round_model(model: HookedTransformer, dtype: str) -> None:
    """Round the weights to the storage dtype (in place, kept float32): the shipped model."""
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(prm.to(getattr(torch, dtype)).float())


def save_model(model: HookedTransformer, world: World, folder: Path, tc: TrainConfig) -> None:
    """``config.json``, ``model.safetensors`` (parameters, storage dtype) and ``vocab.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model.cfg.d_vocab, tc)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (folder / "vocab.json").write_text(json.dumps(world.vocabulary()) + "\n")
    dtype = getattr(torch, tc.storage_dtype)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.named_parameters()}
    save_file(state, folder / "model.safetensors")


def plot_log(log: dict[str, Any], path: Path) -> None:
    """PNG of the training curves (matplotlib: a training-time tool, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    rows = log["model"]
    steps = [r["step"] for r in rows]
    ax = axes[0]
    ax.plot(steps[1:], [r["loss"] for r in rows[1:]], color="k")
    ax.set(title="model: training loss (all next tokens)", xlabel="step", ylabel="cross-entropy")
    ax = axes[1]
    for key, label in (
        ("train", "train sentences"),
        ("heldout_one_hop", "held-out one-hop"),
        ("heldout_two_hop", "held-out two-hop"),
        ("heldout_two_hop_capital", "held-out two-hop capital"),
    ):
        ax.plot(steps, [r[key] for r in rows], label=label, marker=".")
    ax.set(title="model: answer accuracy (top-1)", xlabel="step", ylim=(-0.02, 1.02))
    ax.legend()
    for ax in axes[:2]:
        ax.axvline(log["config"]["curriculum_steps"], color="grey", ls=":", lw=1)
        ax.text(log["config"]["curriculum_steps"], ax.get_ylim()[1], " curriculum ends",
                va="top", fontsize=8, color="grey")  # fmt: skip
    ax = axes[2]
    for kind, style in (("plt", "-"), ("clt", "--")):
        tr = [r for r in log["transcoders"] if r["kind"] == kind]
        ax.plot([r["step"] for r in tr], [r["fvu"] for r in tr], style, label=f"{kind} FVU")
        ax.plot([r["step"] for r in tr], [r["l0"] / 100 for r in tr], style, label=f"{kind} L0/100")
    ax.set(title="transcoders (mean over layers)", xlabel="step", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _demo_summary(model: HookedTransformer, out: Path, labels: dict[str, Any]) -> dict[str, Any]:
    """The demo's numbers: Dallas graph (top logits, scores) and the Texas -> California swap."""
    from sae_circuits import attribute
    from sae_circuits.toy.world import DEMO_PROMPT
    from sae_circuits.transcoders import load_transcoders
    from toy_training.evaluate import state_swap

    result: dict[str, Any] = {}
    for kind, folder in (("plt", "transcoders"), ("clt", "clt")):
        try:
            ts = load_transcoders(out / folder)
        except (ValueError, TypeError, FileNotFoundError) as exc:  # a loader without CLTs
            result[kind] = {"skipped": str(exc)}
            continue
        if model.cfg.n_layers != ts.n_layers:
            continue
        graph = attribute(model, DEMO_PROMPT, ts)
        info = {int(k): v for k, v in labels[kind]["info"].items()}
        swap = state_swap(model, ts, info)
        result[kind] = {
            "top_logits": graph.logits[["token", "probability"]].values.tolist()[:5],
            "n_features": len(graph.node_indices("feature")),
            "scores": dict(graph.scores()),
            "texas_features": {k: v for k, v in swap.removed.items() if v},
            "california_features": {k: v for k, v in swap.added.items() if v},
            "swap_clean": swap.clean,
            "swap_swapped": swap.swapped,
        }
    return result


def run(
    out: str | Path,
    tc: TrainConfig | None = None,
    *,
    model_from: str | Path | None = None,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Train the model, both transcoders and the labels; save everything to ``out``.

    Args:
        out: Output folder (created): ``config.json``, ``model.safetensors``, ``vocab.json``,
            ``world.json``, ``transcoders/``, ``clt/``, ``labels.json``, ``training_log.json``.
        tc: Settings (default :class:`TrainConfig`).
        model_from: Reuse the model saved in this folder instead of training one.
        plot: Write the training curves to this PNG (needs matplotlib).

    Returns:
        The training log (``config``, ``model`` and ``transcoders`` curves, ``summary``).
    """
    from sae_circuits.toy.facts import model_from_files
    from toy_training.labels import compute_labels

    tc = tc or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = build_world(seed=tc.seed, held_out_per_place=tc.held_out_per_place)
    log: dict[str, Any] = {"config": dataclasses.asdict(tc), "model": [], "transcoders": []}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if model_from is not None:
        model = model_from_files(model_from)
        previous = json.loads((Path(model_from) / "training_log.json").read_text())
        log["model"] = previous["model"]
    else:
        model = train_model(world, tc, log["model"])
        round_model(model, tc.storage_dtype)
    save_model(model, world, out, tc)
    meta = {"seed": tc.seed, "held_out_per_place": tc.held_out_per_place,
            "held_out": sorted(world.held_out)}  # fmt: skip
    (out / "world.json").write_text(json.dumps(meta, indent=1) + "\n")
    timings["model_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    data = collect_activations(model, world)
    common: dict[str, Any] = dict(steps=tc.tc_steps, batch_size=tc.tc_batch, lr=tc.tc_lr)
    common.update(seed=tc.seed, drop_mass=tc.drop_mass, log=log["transcoders"])
    plt_coder = train_coder(data, cross=False, n_features=tc.d_sae, l1=tc.l1, **common)
    timings["plt_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    clt_coder = train_coder(data, cross=True, n_features=tc.clt_d_sae, l1=tc.clt_l1, **common)
    timings["clt_s"] = time.perf_counter() - t2
    save_plt(plt_coder, out / "transcoders")
    save_clt(clt_coder, out / "clt")
    t3 = time.perf_counter()
    labels = {
        kind: compute_labels(model, world, data, coder)
        for kind, coder in (("plt", plt_coder), ("clt", clt_coder))
    }
    (out / "labels.json").write_text(json.dumps(labels, separators=(",", ":")) + "\n")
    timings["labels_s"] = time.perf_counter() - t3
    sents = world.sentences()
    summary: dict[str, Any] = {"n_sentences": len(sents), "n_contexts": int(data.x.shape[1])}
    summary["n_train_sentences"] = sum(s.split == "train" for s in sents)
    summary["accuracy"] = evaluate(model, world)
    summary["city_patch_flip_rate"] = city_patch_flip_rate(model, world)
    for kind, coder in (("plt", plt_coder), ("clt", clt_coder)):
        summary[kind] = coder_stats(coder, data)
        summary[kind]["replacement_accuracy"] = {
            split: replacement_accuracy(model, coder, [s for s in sents if s.split == split])
            for split in ("train", "heldout")
        }
    summary["demo"] = _demo_summary(model, out, labels)
    timings["total_s"] = time.perf_counter() - t0
    summary["timings"] = timings
    log["summary"] = summary
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    logger.info("summary: %s", json.dumps(summary, indent=1))
    if plot is not None:
        plot_log(log, Path(plot))
    return log


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m toy_training.train --out DIR``: train everything, save it to ``DIR``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--model-from", default=None, help="reuse the model saved in this folder")
    parser.add_argument("--plot", default=None, help="write the training curves to this PNG")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    # run to run reproducible on one machine: without this, CPU scatter-adds (embedding and
    # index backward passes) sum in thread order and two runs of the same command end in other
    # weights (measured here: they differed from step ~400 on); another CPU still rounds
    # differently (docs/toy_model.md)
    torch.use_deterministic_algorithms(True, warn_only=True)
    tc = TrainConfig.quick() if args.quick else TrainConfig()
    for item in args.set:
        key, value = item.split("=", 1)
        kind = type(getattr(tc, key))
        setattr(tc, key, value.lower() in ("1", "true") if kind is bool else kind(value))
    run(args.out, tc, model_from=args.model_from, plot=args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
