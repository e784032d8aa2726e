"""Train the toy-multilingual model and its transcoders: antonyms and synonyms in three languages.

The sibling of toy-facts (:mod:`toy_training.train`) for the multilingual case study of "Circuit
Tracing" ("the opposite of 'small' is" in English, French and Chinese; ``docs/multilingual.md``).

Method:

1. **World** (:mod:`sae_circuits.toy.multilingual`): 30 adjective pairs, each pole a shared
   concept with a main and a synonym word per language; opposite, synonym and translation
   sentences; per language, the opposite sentences of 6 pairs and the synonym sentences of 6
   others are held out.
2. **Model**: the toy-facts architecture (4 layers, ``d_model`` 128, 4 heads, ``d_mlp`` 512,
   LayerNorm, GELU, tied unembedding, block 0's attention switched off so that MLP 0 turns each
   adjective into its concept at the adjective's position), AdamW on next-token prediction over
   the training sentences (loss on the answer token only: the prompts are templates).
3. **Transcoders**: per-layer (PLT) and cross-layer (CLT), as toy-facts
   (:func:`toy_training.coders.train_coder`), on the activations of every sentence.
4. **Labels** (:func:`compute_labels`): what each feature responds to in the corpus (a concept
   across languages, a language, a task word, the next word's concept).

Everything is seeded; ``--threads 1`` and torch's deterministic algorithms make two runs on one
machine byte-identical. ``--seeds 0 1 2`` trains one run per seed and writes a summary of the
measured accuracies and demo experiments (the margins of ``tests/test_toy_multilingual.py``).

Example:
    $ python -m toy_training.multilingual --out out/toy-multilingual --threads 1
    $ python -m toy_training.multilingual --out out/ml-seeds --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_circuits.toy.facts import toy_tokenizer
from sae_circuits.toy.multilingual import (
    MultilingualSentence,
    MultilingualWorld,
    build_multilingual_world,
)
from toy_training.coders import (
    coder_stats,
    collect_activations,
    cosine_schedule,
    replacement_accuracy,
    save_clt,
    save_plt,
    train_coder,
)
from toy_training.evaluate import answer_accuracy, encode_sentences
from toy_training.labels import _coverage, _top_keys

__all__ = [
    "MultilingualConfig",
    "compute_labels",
    "evaluate",
    "main",
    "model_config",
    "run",
    "train_model",
]

logger = logging.getLogger(__name__)

MODEL_NAME = "toy-multilingual"


@dataclass
class MultilingualConfig:
    """Sizes and optimisation settings of the model and the transcoders."""

    seed: int = 0
    held_out_pairs: int = 6
    mixed: float = 0.5
    # model
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 8
    model_steps: int = 2500
    model_batch: int = 64
    model_lr: float = 3e-3
    weight_decay: float = 1.5
    warmup: int = 100
    eval_every: int = 250
    answer_loss_only: bool = True
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


def model_config(vocab_size: int, tc: MultilingualConfig) -> dict[str, Any]:
    """JSON-able ``HookedTransformerConfig`` keyword arguments of the model."""
    return {
        "model_name": MODEL_NAME,
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


def _groups(world: MultilingualWorld) -> dict[str, list[MultilingualSentence]]:
    groups: dict[str, list[MultilingualSentence]] = defaultdict(list)
    for s in world.sentences():
        groups[s.split].append(s)
        if s.task == "translation":
            groups[f"{s.split}_translation"].append(s)
        elif s.is_pure:
            groups[f"{s.split}_{s.task}_{s.language}"].append(s)
            groups[f"{s.split}_{s.task}"].append(s)
        else:
            groups[f"{s.split}_{s.task}_mixed"].append(s)
    return dict(groups)


def evaluate(model: HookedTransformer, world: MultilingualWorld) -> dict[str, float]:
    """Top-1 answer accuracies: ``train``, ``heldout``, and per ``{split}_{task}[_{language}]``.

    Args:
        model: A model with the toy tokenizer.
        world: The world.

    Returns:
        Accuracies in ``[0, 1]`` by group name (e.g. ``heldout_opposite_zh``).
    """
    return {k: answer_accuracy(model, v) for k, v in sorted(_groups(world).items())}


def train_model(
    world: MultilingualWorld, tc: MultilingualConfig, log: list[dict[str, Any]] | None = None
) -> HookedTransformer:
    """Train the model on the world's training sentences (block 0 an MLP only, tied unembedding).

    Args:
        world: The world.
        tc: Settings.
        log: If given, evaluation rows (step, loss, accuracies) are appended to it.

    Returns:
        The trained model (eval mode, with the toy tokenizer).
    """
    torch.manual_seed(tc.seed)
    vocab = world.vocabulary()
    cfg = HookedTransformerConfig(**model_config(len(vocab), tc), dtype=torch.float32, device="cpu")
    model = HookedTransformer(cfg)
    model.tokenizer = toy_tokenizer(vocab)
    model.cfg.tokenizer_prepends_bos = False
    tokens, lengths = encode_sentences([s.text for s in world.split("train")], vocab)
    model.unembed.W_U.requires_grad_(False)
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
    order, cursor = torch.randperm(len(tokens), generator=gen), 0
    running: list[float] = []
    start = time.perf_counter()
    for step in range(tc.model_steps + 1):
        if step % tc.eval_every == 0 or step == tc.model_steps:
            _tie(model)
            model.eval()
            row: dict[str, Any] = {"step": step, "loss": sum(running) / max(1, len(running))}
            acc = evaluate(model, world)
            row.update({k: v for k, v in acc.items() if k.count("_") <= 1})
            row["time_s"] = time.perf_counter() - start
            logger.info("model step %d: %s", step, _fmt(row))
            if log is not None:
                log.append(row)
            running = []
            if step == tc.model_steps:
                break
        model.train()
        if cursor + tc.model_batch > len(order):
            order, cursor = torch.randperm(len(tokens), generator=gen), 0
        idx = order[cursor : cursor + tc.model_batch]
        cursor += tc.model_batch
        n = int(lengths[idx].max())
        batch = tokens[idx, :n]
        resid = model(batch[:, :-1], stop_at_layer=tc.n_layers)
        logits = model.ln_final(resid) @ model.W_E.T + model.unembed.b_U
        pos = torch.arange(n - 1)[None]
        if tc.answer_loss_only:
            mask = pos == (lengths[idx, None] - 2)
        else:
            mask = pos < (lengths[idx, None] - 1)
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


def _fmt(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def round_model(model: HookedTransformer, dtype: str) -> None:
    """Round the weights to the storage dtype (in place, kept float32): the shipped model."""
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(prm.to(getattr(torch, dtype)).float())


def save_model(
    model: HookedTransformer, world: MultilingualWorld, folder: Path, tc: MultilingualConfig
) -> None:
    """``config.json``, ``model.safetensors`` (storage dtype), ``vocab.json``, ``world.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model.cfg.d_vocab, tc)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (folder / "vocab.json").write_text(json.dumps(world.vocabulary()) + "\n")
    dtype = getattr(torch, tc.storage_dtype)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.named_parameters()}
    save_file(state, folder / "model.safetensors")
    meta = {
        "seed": tc.seed,
        "held_out_pairs": tc.held_out_pairs,
        "mixed": tc.mixed,
        "held_out": {f"{t}_{lang}": sorted(v) for (t, lang), v in world.held_out.items()},
    }
    (folder / "world.json").write_text(json.dumps(meta, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# labels

#: Minimum share of a feature's activation mass a description must cover to name it.
MIN_COVERAGE = 0.5


def _contexts(world: MultilingualWorld, sentence: Sequence[int], position: Sequence[int]):
    """Descriptions of each context: word, concept, language, task, next word's concept."""
    sents = world.sentences()
    nexts: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for s in sents:
        words = s.text.split()
        for p in range(1, len(words)):
            nexts[tuple(words[:p])].add(words[p])
    out = []
    for si, pos in zip(sentence, position, strict=True):
        s = sents[si]
        prefix = s.text.split()[:pos]
        word = prefix[-1]
        concept = world.word_info(word)[0].concept if world.is_adjective(word) else None
        nxt = nexts.get(tuple(prefix), set())
        nxt_word = next(iter(nxt)) if len(nxt) == 1 else None
        say = (
            world.word_info(nxt_word)[0].concept
            if nxt_word is not None and world.is_adjective(nxt_word)
            else None
        )
        task = s.task if s.task != "translation" or pos > 1 else None
        # the current word's language (an adjective's, else the question's or the tag's)
        language = world.word_info(word)[1] if world.is_adjective(word) else s.target_language
        out.append(
            {
                "word": word,
                "concept": concept,
                "language": language,
                "task": task if pos >= 2 or s.language != "zh" else None,
                "say": say,
                "text": " ".join([*prefix[:-1], f"[{word}]"]),
            }
        )
    return out


def _label(a: torch.Tensor, keys: dict[str, list[Any]]) -> str:
    cov = {k: _coverage(a, v) for k, v in keys.items()}
    cands = []
    if cov["say"][0] is not None:
        cands.append((cov["say"][1], f"say {cov['say'][0]}"))
    if cov["concept"][0] is not None:
        cands.append((cov["concept"][1], f"{cov['concept'][0]} (concept)"))
    if cov["word"][0] is not None:
        cands.append((cov["word"][1], f"'{cov['word'][0]}' (word)"))
    if cov["task"][0] is not None:
        cands.append((cov["task"][1], f"{cov['task'][0]} (task)"))
    if cov["language"][0] is not None:
        cands.append((cov["language"][1], f"{cov['language'][0]} (language)"))
    for c, lab in cands:
        if c >= MIN_COVERAGE:
            return lab
    return "mixed: " + "/".join(w for w, _ in _top_keys(a, keys["word"], 3))


@torch.no_grad()
def compute_labels(
    model: HookedTransformer, world: MultilingualWorld, data: Any, coder: Any
) -> dict[str, Any]:
    """Labels of every feature of a trained coder, from what it responds to in the corpus.

    A label is the first description, in the order ``say {concept}`` (the next word is that
    concept's word, in any language), ``{concept} (concept)`` (the current word is one of that
    pole's six words), ``'{word}' (word)``, ``{task} (task)``, ``{language} (language)``, that
    covers at least half of the feature's activation mass over the corpus' contexts; else
    ``mixed: ...`` (top words).

    Args:
        model: The model (its unembedding gives the logit lens of decoders).
        world: The world.
        data: ``coders.Activations``.
        coder: ``coders.SparseCoder``.

    Returns:
        ``{"labels": {layer: [F labels]}, "info": {layer: [F dicts]}}`` (``density``, ``max``,
        ``language`` / ``concept`` / ``task`` shares, ``words``, ``top`` contexts, ``out``).
    """
    contexts = _contexts(world, data.sentence.tolist(), data.position.tolist())
    keys = {k: [c[k] for c in contexts] for k in ("word", "concept", "language", "task", "say")}
    acts = coder.encode(data.x)
    vocab = world.vocabulary()
    W_U = model.W_U.detach()
    labels: dict[str, list[str]] = {}
    info: dict[str, list[dict[str, Any]]] = {}
    for layer in range(acts.shape[0]):
        logits = coder.W_dec[layer].sum(1) @ W_U
        logits = logits - logits.mean(-1, keepdim=True)
        top = torch.topk(logits, 3, dim=-1).indices.tolist()
        labs, infos = [], []
        for f in range(acts.shape[-1]):
            a = acts[layer, :, f]
            item: dict[str, Any] = {"density": round(float((a > 0).float().mean()), 4)}
            item["max"] = round(float(a.max()), 3)
            item["out"] = [vocab[i] for i in top[f]]
            if float(a.sum()) <= 0:
                labs.append("dead")
                item.update(words=[], top=[])
                infos.append(item)
                continue
            labs.append(_label(a, keys))
            for k in ("language", "concept", "task"):
                item[k] = [[w, round(s, 3)] for w, s in _top_keys(a, keys[k], 3)]
            item["words"] = [[w, round(s, 3)] for w, s in _top_keys(a, keys["word"], 3)]
            best = torch.argsort(a, descending=True)[:2].tolist()
            item["top"] = [[contexts[i]["text"], round(float(a[i]), 3)] for i in best if a[i] > 0]
            infos.append(item)
        labels[str(layer)] = labs
        info[str(layer)] = infos
    return {"labels": labels, "info": info}


# --------------------------------------------------------------------------------------------
# the whole run


def run(out: str | Path, tc: MultilingualConfig | None = None) -> dict[str, Any]:
    """Train the model, both transcoders and the labels; save everything to ``out``.

    Args:
        out: Output folder (created): ``config.json``, ``model.safetensors``, ``vocab.json``,
            ``world.json``, ``transcoders/``, ``clt/``, ``labels.json``, ``training_log.json``.
        tc: Settings (default :class:`MultilingualConfig`).

    Returns:
        The training log (``config``, ``model`` and ``transcoders`` curves, ``summary``).
    """
    tc = tc or MultilingualConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = build_multilingual_world(seed=tc.seed, held_out_pairs=tc.held_out_pairs, mixed=tc.mixed)
    log: dict[str, Any] = {"config": dataclasses.asdict(tc), "model": [], "transcoders": []}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = train_model(world, tc, log["model"])
    round_model(model, tc.storage_dtype)
    save_model(model, world, out, tc)
    timings["model_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    data = collect_activations(model, world)  # type: ignore[arg-type]
    common: dict[str, Any] = dict(steps=tc.tc_steps, batch_size=tc.tc_batch, lr=tc.tc_lr)
    common.update(seed=tc.seed, drop_mass=tc.drop_mass, log=log["transcoders"])
    plt_coder = train_coder(data, cross=False, n_features=tc.d_sae, l1=tc.l1, **common)
    timings["plt_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    clt_coder = train_coder(data, cross=True, n_features=tc.clt_d_sae, l1=tc.clt_l1, **common)
    timings["clt_s"] = time.perf_counter() - t2
    save_plt(plt_coder, out / "transcoders")
    save_clt(clt_coder, out / "clt")
    _rename_coders(out)
    t3 = time.perf_counter()
    labels = {
        kind: compute_labels(model, world, data, coder)
        for kind, coder in (("plt", plt_coder), ("clt", clt_coder))
    }
    text = json.dumps(labels, separators=(",", ":"))
    (out / "labels.json").write_text(text + "\n")
    timings["labels_s"] = time.perf_counter() - t3
    summary: dict[str, Any] = {"n_sentences": len(world.sentences())}
    summary["n_train_sentences"] = len(world.split("train"))
    summary["n_contexts"] = int(data.x.shape[1])
    summary["accuracy"] = evaluate(model, world)
    for kind, coder in (("plt", plt_coder), ("clt", clt_coder)):
        summary[kind] = coder_stats(coder, data)
        summary[kind]["replacement_accuracy"] = {
            split: replacement_accuracy(model, coder, world.split(split))  # type: ignore[arg-type]
            for split in ("train", "heldout")
        }
    t4 = time.perf_counter()
    summary["demo"] = _demo_summary(out)
    timings["demo_s"] = time.perf_counter() - t4
    timings["total_s"] = time.perf_counter() - t0
    summary["timings"] = timings
    log["summary"] = summary
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    logger.info("summary: %s", json.dumps(summary, indent=1))
    return log


def _rename_coders(out: Path) -> None:
    """``model_name`` of the saved transcoders: toy-multilingual (``save_*`` write toy-facts)."""
    for path in [*out.glob("transcoders/layer_*/cfg.json"), out / "clt" / "config.yaml"]:
        text = path.read_text()
        path.write_text(text.replace("toy-facts", MODEL_NAME))


def _demo_summary(out: Path) -> dict[str, Any]:
    """The case study's experiments on the saved files (both transcoder kinds)."""
    from sae_circuits.multilingual_demo import run_multilingual_demo

    result: dict[str, Any] = {}
    for kind in ("plt", "clt"):
        try:
            report = run_multilingual_demo(kind=kind, folder=out)
        except Exception as exc:  # keep the trained files even if an experiment breaks
            logger.exception("demo on %s failed", kind)
            result[kind] = {"error": repr(exc)}
            continue
        result[kind] = report.summary()
    return result


def measure(folders: Sequence[str | Path]) -> dict[str, Any]:
    """Accuracies and the case study's experiments of trained folders, and their minimum.

    Args:
        folders: Output folders of :func:`run` (e.g. one per seed).

    Returns:
        ``{"runs": {folder: {"accuracy": ..., "demo": ...}}, "min": {...}}``: ``min`` holds, per
        accuracy group, and per experiment x language x kind the probability of the expected
        outcome after the intervention, the minimum over the folders.
    """
    from sae_circuits.toy.facts import model_from_files
    from sae_circuits.toy.multilingual import load_multilingual_world

    runs: dict[str, Any] = {}
    for folder in folders:
        model = model_from_files(folder)
        world = load_multilingual_world(folder=folder)
        runs[str(folder)] = {
            "accuracy": evaluate(model, world),
            "demo": _demo_summary(Path(folder)),
        }
    lows: dict[str, float] = {}
    for run_ in runs.values():
        for k, v in run_["accuracy"].items():
            lows[f"accuracy/{k}"] = min(lows.get(f"accuracy/{k}", 1.0), v)
        for kind, rep in run_["demo"].items():
            for e in rep.get("experiments", []):
                key = f"{kind}/{e['name']}/{e['language']}"
                for field in ("expected_probability_after", "language_probability_after"):
                    if field in e:
                        lows[f"{key}/{field}"] = min(lows.get(f"{key}/{field}", 1.0), e[field])
                lows[f"{key}/succeeded"] = min(lows.get(f"{key}/succeeded", 1.0), e["succeeded"])
    return {"runs": runs, "min": dict(sorted(lows.items()))}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m toy_training.multilingual --out DIR``: train everything, save it to ``DIR``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=None, help="one run per seed into OUT/seed_{s}"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields"
    )
    parser.add_argument(
        "--measure",
        nargs="*",
        default=None,
        metavar="FOLDER",
        help="only measure trained folders (accuracies, experiments, minimum) into OUT (a JSON)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    tc = MultilingualConfig()
    for item in args.set:
        key, value = item.split("=", 1)
        kind = type(getattr(tc, key))
        setattr(tc, key, value.lower() in ("1", "true") if kind is bool else kind(value))
    if args.measure is not None:
        text = json.dumps(measure(args.measure), indent=1, ensure_ascii=False)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        return 0
    if args.seeds is None:
        run(args.out, tc)
        return 0
    summaries = {}
    for seed in args.seeds:
        log = run(Path(args.out) / f"seed_{seed}", dataclasses.replace(tc, seed=seed))
        summaries[seed] = log["summary"]
    path = Path(args.out) / "seeds_summary.json"
    path.write_text(json.dumps(summaries, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
