"""The shipped toy-multilingual model: the multilingual antonym case study, offline.

The model answers "the opposite of X is" / "a synonym of X is" in three toy languages, also for
pair x language x task combinations it never saw, and the case study's interventions move its
answer the way the graphs say. Floors are the minimum over three training seeds measured by
``python -m toy_training.multilingual --measure`` (docs/multilingual.md), minus a stated margin;
the tests run on the shipped weights only.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

import sae_circuits as sc
from sae_circuits.toy.facts import load_toy_labels, load_toy_model, toy_dir
from sae_circuits.toy.multilingual import (
    LANGUAGES,
    PAIRS,
    build_multilingual_world,
    load_multilingual_world,
    prompt,
)

#: Margin under the minimum over seeds (accuracies: about two of the 24 held-out sentences of a
#: language x task; probabilities: absolute).
ACCURACY_MARGIN = 0.1
PROBABILITY_MARGIN = 0.1
#: Minimum over seeds 0-2 of the held-out accuracy per task and language (docs/multilingual.md;
#: the shipped seed 0 is at 0.79-1.0, seed 2 at 0.21-0.54: generalisation to unseen pair x
#: language x task combinations depends on the seed).
HELDOUT_MIN = {
    ("opposite", "en"): 0.375,
    ("opposite", "fr"): 0.458,
    ("opposite", "zh"): 0.292,
    ("synonym", "en"): 0.542,
    ("synonym", "fr"): 0.5,
    ("synonym", "zh"): 0.208,
}
#: Minimum over seeds of the held-out mixed questions' accuracy (both tasks).
MIXED_MIN = 0.976
#: French off: the largest total probability of French-like words left, over seeds (from ~1).
FRENCH_OFF_MAX = 0.606
#: French off, Chinese on: the smallest total probability of Chinese-like words, over seeds.
FRENCH_TO_CHINESE_MIN = 0.99
#: "small" -> "big": the smallest probability of the expected word (small / petit / 小).
SMALL_TO_BIG_MIN = {"en": 0.999, "fr": 0.660, "zh": 0.998}
#: "opposite" -> "synonym" at every position: the smallest probability of the synonym word.
SYNONYM_EVERY_POSITION_MIN = {"en": 0.999, "fr": 0.998, "zh": 0.999}


@functools.lru_cache(maxsize=1)
def _model():
    return load_toy_model(name="toy-multilingual")


@functools.lru_cache(maxsize=1)
def _world():
    return load_multilingual_world()


@functools.lru_cache(maxsize=2)
def _report(kind: str = "plt"):
    from sae_circuits.multilingual_demo import run_multilingual_demo

    return run_multilingual_demo(kind=kind)  # type: ignore[arg-type]


def _experiment(name: str, language: str):
    found = [e for e in _report().experiments if e.name == name and e.language == language]
    assert len(found) == 1, f"experiment {name!r} [{language}] did not run (empty supernode?)"
    return found[0]


def _concept_probability(exp, concept: str, language: str) -> float:
    world = _world()
    words = [world.word(concept, language, v) for v in ("main", "synonym")]  # type: ignore[arg-type]
    return sum(exp.probability(w) for w in words)


# -- the world --------------------------------------------------------------------------------


def test_world_vocabulary_and_held_out_structure():
    world = build_multilingual_world()
    vocab = world.vocabulary()
    assert len(vocab) == len(set(vocab)) and len(PAIRS) == 30
    sents = world.sentences()
    pure = [s for s in sents if s.task != "translation" and s.is_pure]
    held = [s for s in pure if s.split == "heldout"]
    for task in ("opposite", "synonym"):
        for lang in LANGUAGES:
            group = [s for s in held if s.task == task and s.language == lang]
            assert len(group) == 24  # 6 pairs x 2 poles x 2 variants
    # no held-out pair x task x language leaks into training, not even as a mixed question
    held_keys = {(s.task, s.language, s.pair) for s in held}
    for s in sents:
        if s.split == "train" and s.task != "translation":
            assert (s.task, s.language, s.pair) not in held_keys, s.text
            assert (s.task, s.target_language, s.pair) not in held_keys, s.text
    # every held-out pair x task is trained in the other two languages
    for task, lang, pair in held_keys:
        others = {s.language for s in pure if (s.task, s.pair, s.split) == (task, pair, "train")}
        assert others == set(LANGUAGES) - {lang}
    # the demo pair is trained everywhere; the shipped world is the one built from world.json
    assert all(s.split == "train" for s in pure if s.pair == 0)
    assert {k: sorted(v) for k, v in _world().held_out.items()} == {
        k: sorted(v) for k, v in build_multilingual_world(seed=0).held_out.items()
    }


def test_prompts_and_tokens():
    model = _model()
    assert prompt("opposite", "zh", "小") == "小 的 反义词 是"
    tokens = model.to_str_tokens("le contraire de petit est")
    assert tokens == ["<bos>", "le", "contraire", "de", "petit", "est"]
    assert "<unk>" not in model.to_str_tokens("小 的 近义词 是")


# -- loaders ----------------------------------------------------------------------------------


def test_loaders_by_name():
    from sae_circuits.models import load_model

    model = load_model("toy-multilingual", device="cpu")
    assert model.cfg.model_name == "toy-multilingual" and model.cfg.n_layers == 4
    for name, cls in (
        ("toy-multilingual", sc.PerLayerTranscoderSet),
        ("toy-multilingual-clt", sc.CrossLayerTranscoderSet),
    ):
        ts = sc.load_transcoders(name, device="cpu")
        assert isinstance(ts, cls) and ts.n_layers == 4 and ts.d_in == 128
    labels = load_toy_labels("plt", name="toy-multilingual")
    assert len(labels) == 4 and len(labels[0]) == 512
    # toy-facts stays the default everywhere
    assert load_toy_model().cfg.model_name == "toy-facts"
    assert toy_dir("toy-multilingual").name == "toy-multilingual"
    with pytest.raises(ValueError, match="valid names"):
        toy_dir("toy-nothing")  # type: ignore[arg-type]


def test_shipped_files_are_small():
    total = sum(p.stat().st_size for p in toy_dir("toy-multilingual").rglob("*") if p.is_file())
    assert total < 10 * 2**20
    meta = json.loads((toy_dir("toy-multilingual") / "world.json").read_text())
    assert meta["seed"] == 0


# -- accuracy ---------------------------------------------------------------------------------


@torch.no_grad()
def _accuracy(sentences) -> float:
    model, tok = _model(), _model().tokenizer
    prompts = [s.prompt for s in sentences]
    tokens = model.to_tokens(prompts)  # one template per group: one length
    pred = model(tokens)[:, -1].argmax(-1)
    answers = torch.tensor([tok.convert_tokens_to_ids(s.answer) for s in sentences])
    return float((pred == answers).float().mean())


@pytest.mark.parametrize("task", ["opposite", "synonym"])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_accuracy_per_language_and_task(task, lang):
    sents = [s for s in _world().sentences() if s.task == task and s.is_pure and s.language == lang]
    train = [s for s in sents if s.split == "train"]
    held = [s for s in sents if s.split == "heldout"]
    assert _accuracy(train) >= 0.99
    floor = HELDOUT_MIN[(task, lang)] - ACCURACY_MARGIN
    assert _accuracy(held) >= floor, (task, lang)


def test_accuracy_mixed_and_translation():
    sents = _world().sentences()
    trans = [s for s in sents if s.task == "translation"]
    # translations have three-word sentences: one length per batch
    assert _accuracy(trans) >= 0.99
    mixed_held = [s for s in sents if s.task != "translation" and not s.is_pure]
    mixed_held = [s for s in mixed_held if s.split == "heldout"]
    by_len: dict[int, list] = {}
    for s in mixed_held:
        by_len.setdefault(len(s.prompt.split()), []).append(s)
    accs = [_accuracy(group) for group in by_len.values()]
    assert min(accs) >= MIXED_MIN - ACCURACY_MARGIN


# -- the case study ---------------------------------------------------------------------------


def test_graphs_answer_the_antonym():
    report = _report()
    for lang, graph in report.graphs.items():
        assert graph.logits["token"].iloc[0] == _world().word("big", lang)
        assert graph.logits["probability"].iloc[0] > 0.9
        names = set(report.supernodes[lang])
        for base in ("language", "small", "big", "opposite", "synonym", "say big"):
            assert f"{base} ({lang})" in names, (lang, base)


def test_supernodes_follow_the_rule():
    """Language features: active on the language's prompts, silent on the others' (re-checked
    on prompts about synonym words, which the rule's panel of main words does not hold)."""
    from sae_circuits.multilingual_demo import LAST_POS
    from sae_circuits.replacement_model import replacement

    report, world = _report(), _world()
    model, ts = _model(), sc.load_transcoders("toy-multilingual")
    lang_feats = {(la, f) for la, p, f in report.supernodes["fr"]["language (fr)"].features
                  if p == LAST_POS["fr"]}  # fmt: skip
    assert lang_feats
    words = {
        lang: [world.word(p.concept, lang, "synonym") for pair in PAIRS[:10] for p in pair]  # type: ignore[arg-type]
        for lang in LANGUAGES
    }
    acts = {}
    for lang in LANGUAGES:
        with replacement(model, ts) as state:
            model(model.to_tokens([prompt("opposite", lang, w) for w in words[lang]]))
        acts[lang] = {la: a.to_dense()[:, LAST_POS[lang]] for la, a in state.activations.items()}
    on = sum(float(acts["fr"][la][:, f].mean()) for la, f in lang_feats)
    off = max(sum(float(acts[o][la][:, f].mean()) for la, f in lang_feats) for o in ("en", "zh"))
    assert on > 0 and off < 0.2 * on


def test_french_off_leaves_french():
    exp = _experiment("language off", "fr")
    assert exp.language_probability("fr", after=False) > 0.9
    assert exp.language_probability("fr") <= FRENCH_OFF_MAX + PROBABILITY_MARGIN
    # the concept survives: the answer is still "big", in some language
    big = sum(_concept_probability(exp, "big", lang) for lang in LANGUAGES)
    assert big > 0.9


def test_french_off_chinese_on_answers_in_chinese():
    exp = _experiment("French off, Chinese on", "fr")
    assert exp.language_probability("zh", after=False) < 0.01
    assert exp.language_probability("zh") >= FRENCH_TO_CHINESE_MIN - PROBABILITY_MARGIN
    assert exp.succeeded  # the top answer is a Chinese-like word for "big" (大 or 巨大)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_small_to_big_flips_the_antonym(lang):
    exp = _experiment("small -> big", lang)
    assert exp.probability(_world().word("big", lang), after=False) > 0.9
    assert exp.probability(exp.expected) >= SMALL_TO_BIG_MIN[lang] - PROBABILITY_MARGIN
    assert exp.succeeded


@pytest.mark.parametrize("lang", LANGUAGES)
def test_opposite_to_synonym(lang):
    """From the task word on, the swap wins in Chinese-like on every seed, and in English and
    French-like only on one of three (not asserted); at every position it wins everywhere."""
    syn = _world().word("small", lang, "synonym")
    exp = _experiment("opposite -> synonym", lang)
    assert exp.probability(syn) >= exp.probability(syn, after=False)
    if lang == "zh":
        assert exp.succeeded
    every = _experiment("opposite -> synonym, every position", lang)
    assert every.probability(syn) >= SYNONYM_EVERY_POSITION_MIN[lang] - PROBABILITY_MARGIN


def test_edges_explain_the_weak_task_word():
    """By the graphs, the adjective (its token and its features) drives the answer far more than
    the task word and the "opposite" features do (measured on the shipped seed: 0.90-0.98 vs
    0.12-0.15 influence)."""
    edges = _report().edges
    for lang in LANGUAGES:
        rows = edges[edges["language"] == lang].set_index("supernode")
        adjective = rows.filter(like="(adjective)", axis=0)["influence"].sum()
        adjective += rows.loc[f"small ({lang})", "influence"]
        task = rows.filter(like="(task word)", axis=0)["influence"].sum()
        task += rows.loc[f"opposite ({lang})", "influence"]
        assert adjective > 2 * task, lang
        # in English and French-like the first word carries as much of the task as the task word
        if lang != "zh":
            first = rows.filter(like="(first word)", axis=0)["influence"].sum()
            word = rows.filter(like="(task word)", axis=0)["influence"].sum()
            assert first > 0.5 * word, lang


# -- the command line -------------------------------------------------------------------------


def test_demo_command_multilingual(tmp_path: Path, capsys):
    from sae_circuits.cli import main
    from sae_circuits.viewer.annotations import AnnotationStore

    out = tmp_path / "ml"
    assert main(["demo", "--case", "multilingual", "-q", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "French off, Chinese on" in stdout and "small -> big" in stdout
    assert "opposite -> synonym" in stdout and "before:" in stdout and "after:" in stdout
    for lang in LANGUAGES:
        for name in ("graph.zip", "pruned.zip", "graph.json"):
            assert (out / lang / name).is_file()
        supernodes = AnnotationStore(out / lang).read()["supernodes"]
        labels = {s["label"] for s in supernodes.values()}
        assert {f"language ({lang})", f"small ({lang})", f"opposite ({lang})"} <= labels
        assert all(s["members"] for s in supernodes.values())
    assert main(["demo", "--case", "multilingual", "--transcoders", "toy-facts"]) == 2
    assert "does not fit" in capsys.readouterr().err
