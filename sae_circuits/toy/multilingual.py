"""A multilingual toy world: 30 adjective pairs in three toy languages, antonyms and synonyms.

The world of the *toy-multilingual* model (a sibling of toy-facts, see ``docs/multilingual.md``),
built to reproduce the multilingual case study of "Circuit Tracing" (Ameisen et al. 2025): "the
opposite of 'small' is" in English, French and Chinese.

* **Concepts.** 30 adjective pairs (:data:`PAIRS`); each of the 60 *poles* (``small``,
  ``big``, ...) is a language-independent concept with a *main* word and a *synonym* word in
  each language: English ``small`` / ``little``, French-like ``petit`` / ``menu``, Chinese-like
  ``小`` / ``微小``. Every word is one token (360 adjective tokens).
* **Tasks**, one sentence each, the answer last:

  | task | en | fr | zh |
  |---|---|---|---|
  | opposite | ``the opposite of small is big`` | ``le contraire de petit est grand`` | ``小 的 反义词 是 大`` |
  | synonym | ``a synonym of small is little`` | ``un synonyme de petit est menu`` | ``小 的 近义词 是 微小`` |
  | translation | ``small fr petit`` (word, target language tag, its translation) | | |

  The opposite of a main word is the other pole's main word, of a synonym word the other
  pole's synonym word (``the opposite of little is huge``); the synonym of a main word is its
  synonym word and back. The Chinese-like language has another word order (the adjective
  first, then its own task words ``反义词`` / ``近义词``), so its two tasks' prompts share their
  first two words (in English and French-like they differ from the first word on). Translations (every word into both other languages, same
  pole and variant) tie the three vocabularies to shared concepts.
* **Held out** (:meth:`MultilingualWorld.split`): per language, the opposite sentences of 6
  pairs and the synonym sentences of 6 other pairs are never trained on (disjoint across
  languages, so every held-out pair x task is trained in the other two languages, and every
  pair x language in the other task). Answering them needs the concept's antonym (or synonym)
  learnt in other languages and the word in this language learnt from translations. The demo
  pair ``small`` / ``big`` is trained in every language.

Example:
    >>> world = build_multilingual_world()
    >>> [s.text for s in world.sentences() if s.subject == "petit" and s.task == "opposite"]
    ['le contraire de petit est grand']
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEMO_ADJECTIVE",
    "LANGUAGES",
    "LANGUAGE_NAMES",
    "PAIRS",
    "SPECIAL",
    "Language",
    "MultilingualSentence",
    "MultilingualWorld",
    "Task",
    "build_multilingual_world",
    "load_multilingual_world",
    "prompt",
]

Language = Literal["en", "fr", "zh"]
Task = Literal["opposite", "synonym", "translation"]
Variant = Literal["main", "synonym"]

#: The three toy languages.
LANGUAGES: tuple[Language, ...] = ("en", "fr", "zh")
#: Human-readable names.
LANGUAGE_NAMES = {"en": "English", "fr": "French-like", "zh": "Chinese-like"}
#: Special tokens (ids 0, 1, 2), as in toy-facts.
SPECIAL = ("<bos>", "<pad>", "<unk>")
#: The demo's concept (its pole ``big`` is the answer).
DEMO_ADJECTIVE = "small"

# per pair: pole a (main, synonym), pole b (main, synonym), in en / fr / zh
_TABLE = """
small little big huge | petit menu grand gros | 小 微小 大 巨大
hot warm cold chilly | chaud brulant froid glacial | 热 炎热 冷 寒冷
fast quick slow sluggish | rapide vite lent lambin | 快 迅速 慢 缓慢
high lofty low lowly | haut eleve bas inferieur | 高 高耸 低 低矮
new novel old ancient | nouveau neuf vieux ancien | 新 崭新 旧 陈旧
good fine bad awful | bon excellent mauvais affreux | 好 优良 坏 恶劣
rich wealthy poor needy | riche aise pauvre demuni | 富 富裕 穷 贫穷
strong powerful weak feeble | fort puissant faible chetif | 强 强壮 弱 虚弱
light weightless heavy weighty | leger aerien lourd pesant | 轻 轻盈 重 沉重
happy glad sad unhappy | heureux joyeux triste malheureux | 快乐 高兴 悲伤 难过
open unlocked closed shut | ouvert beant ferme clos | 开 敞开 关 封闭
full filled empty vacant | plein rempli vide desert | 满 饱满 空 空旷
early premature late tardy | tot precoce tard retarde | 早 提早 晚 迟
clean spotless dirty filthy | propre net sale crasseux | 干净 整洁 脏 肮脏
wide broad narrow tight | large vaste etroit serre | 宽 宽阔 窄 狭窄
thick dense thin slim | epais touffu mince fin | 厚 厚实 薄 单薄
hard solid soft tender | dur rigide mou tendre | 硬 坚硬 软 柔软
true real false fake | vrai veritable faux errone | 真 真实 假 虚假
dark dim bright shiny | sombre obscur clair brillant | 暗 昏暗 亮 明亮
near close far distant | proche voisin loin lointain | 近 邻近 远 遥远
wet damp dry arid | mouille humide sec aride | 湿 潮湿 干 干燥
sweet sugary bitter sour | sucre doux amer acre | 甜 甘甜 苦 苦涩
loud noisy quiet silent | bruyant sonore calme silencieux | 吵 喧闹 静 安静
easy effortless difficult tough | facile commode difficile ardu | 容易 简单 难 困难
safe secure dangerous risky | sur protege dangereux risque | 安全 安稳 危险 险恶
beautiful pretty ugly hideous | beau joli laid moche | 美 美丽 丑 难看
alive living dead lifeless | vivant anime mort inerte | 活 活着 死 死亡
smooth sleek rough coarse | lisse poli rugueux grossier | 光滑 平滑 粗糙 毛糙
brave bold cowardly timid | courageux audacieux lache craintif | 勇敢 大胆 胆小 怯懦
wise clever foolish stupid | sage malin fou stupide | 聪明 机智 愚蠢 笨
"""


@dataclass(frozen=True)
class Pole:
    """One side of an adjective pair: a concept and its words.

    Attributes:
        concept: Its name (the English main word, e.g. ``"small"``).
        pair: Index of its pair in :data:`PAIRS`.
        opposite: The other pole's concept.
        words: ``language -> (main word, synonym word)``.
    """

    concept: str
    pair: int
    opposite: str
    words: dict[str, tuple[str, str]]


def _parse() -> tuple[tuple[Pole, Pole], ...]:
    pairs = []
    for i, line in enumerate(x for x in _TABLE.strip().splitlines() if x.strip()):
        cols = [c.split() for c in line.split("|")]
        a = {lang: (c[0], c[1]) for lang, c in zip(LANGUAGES, cols, strict=True)}
        b = {lang: (c[2], c[3]) for lang, c in zip(LANGUAGES, cols, strict=True)}
        pairs.append((Pole(a["en"][0], i, b["en"][0], a), Pole(b["en"][0], i, a["en"][0], b)))
    return tuple(pairs)


#: The 30 adjective pairs (two :class:`Pole` each).
PAIRS: tuple[tuple[Pole, Pole], ...] = _parse()

#: Task words of each language (template words, besides the adjectives).
TEMPLATE_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("the", "opposite", "of", "is", "a", "synonym"),
    "fr": ("le", "contraire", "de", "est", "un", "synonyme"),
    "zh": ("的", "反义词", "近义词", "是"),
}


def prompt(task: Literal["opposite", "synonym"], language: Language, word: str) -> str:
    """The prompt of a task in a language, without its answer.

    Args:
        task: ``"opposite"`` or ``"synonym"``.
        language: ``"en"``, ``"fr"`` or ``"zh"``.
        word: The adjective (a word of that language).

    Returns:
        E.g. ``"the opposite of small is"``, ``"小 的 反义词 是"``.
    """
    if language == "en":
        return f"the opposite of {word} is" if task == "opposite" else f"a synonym of {word} is"
    if language == "fr":
        return f"le contraire de {word} est" if task == "opposite" else f"un synonyme de {word} est"
    return f"{word} 的 反义词 是" if task == "opposite" else f"{word} 的 近义词 是"


@dataclass(frozen=True)
class MultilingualSentence:
    """One sentence of the corpus; its last word is the answer.

    Attributes:
        text: Words separated by single spaces (the answer last).
        task: ``"opposite"``, ``"synonym"`` or ``"translation"``.
        language: Language of the adjective (for a translation, of the source word).
        target_language: Language of the answer (and of the question's words; differs from
            ``language`` in translations and mixed questions).
        subject: The adjective asked about.
        concept: Its pole's concept (``"small"``).
        answer: The last word.
        answer_concept: The answer's concept.
        pair: Index of the pair in :data:`PAIRS`.
        split: ``"train"`` or ``"heldout"``.
    """

    text: str
    task: Task
    language: Language
    target_language: Language
    subject: str
    concept: str
    answer: str
    answer_concept: str
    pair: int
    split: Literal["train", "heldout"]

    @property
    def prompt(self) -> str:
        """The sentence without its answer."""
        return self.text.rsplit(" ", 1)[0]

    @property
    def template(self) -> str:
        """``"{task}_{language}"`` (translations: ``"translation"``; mixed: ``"{task}_mixed"``)."""
        if self.task == "translation":
            return "translation"
        return f"{self.task}_{self.language if self.is_pure else 'mixed'}"

    @property
    def is_pure(self) -> bool:
        """Whether the question and the adjective are in one language."""
        return self.language == self.target_language


@dataclass
class MultilingualWorld:
    """The adjective pairs, which pair x language x task combinations are held out, the corpus.

    Attributes:
        seed: Seed of the held-out choice.
        held_out: ``(task, language) -> pair indices`` held out of training.
        mixed: Share of the *mixed* sentences trained (drawn with ``seed``; the others are
            held out): a question in one language about an adjective of another, answered in
            the question's language (``the opposite of petit is big``), so that the answer's
            language is read from the question's words, not from the adjective.
    """

    seed: int = 0
    held_out: dict[tuple[str, str], frozenset[int]] = field(default_factory=dict)
    mixed: float = 0.0

    def __post_init__(self) -> None:
        words = [w for w in self.vocabulary() if w not in SPECIAL]
        if len(set(words)) != len(words):
            dup = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"the multilingual world has duplicate words: {dup}")
        self._word = {
            w: (pole, lang, v)
            for pair in PAIRS
            for pole in pair
            for lang in LANGUAGES
            for v, w in zip(("main", "synonym"), pole.words[lang], strict=True)
        }
        self._poles = {pole.concept: pole for pair in PAIRS for pole in pair}
        self._sentences: list[MultilingualSentence] | None = None

    @property
    def poles(self) -> dict[str, Pole]:
        """Concept name -> :class:`Pole`."""
        return self._poles

    def word_info(self, word: str) -> tuple[Pole, Language, Variant]:
        """The pole, language and variant (``"main"`` / ``"synonym"``) of an adjective."""
        return self._word[word]  # type: ignore[return-value]

    def is_adjective(self, word: str) -> bool:
        """Whether ``word`` is one of the 360 adjectives."""
        return word in self._word

    def word(self, concept: str, language: Language, variant: Variant = "main") -> str:
        """The word of a concept in a language (``word("big", "zh") == "大"``)."""
        return self._poles[concept].words[language][0 if variant == "main" else 1]

    def vocabulary(self) -> list[str]:
        """All words, in token-id order: specials, language tags, template words, adjectives."""
        template = [w for lang in LANGUAGES for w in TEMPLATE_WORDS[lang]]
        adjectives = [
            w for lang in LANGUAGES for pair in PAIRS for pole in pair for w in pole.words[lang]
        ]
        return [*SPECIAL, *LANGUAGES, *template, *adjectives]

    def sentences(self) -> list[MultilingualSentence]:
        """Every sentence (training and held-out), in a fixed order."""
        if self._sentences is None:
            self._sentences = self._build()
        return self._sentences

    def split(self, which: Literal["train", "heldout"]) -> list[MultilingualSentence]:
        """The training or held-out sentences."""
        return [s for s in self.sentences() if s.split == which]

    def _build(self) -> list[MultilingualSentence]:
        out = []
        rng = random.Random(self.seed + 1)
        for pair in PAIRS:
            for pole in pair:
                other = self._poles[pole.opposite]
                for lang in LANGUAGES:
                    for vi in (0, 1):
                        word = pole.words[lang][vi]
                        tasks = (
                            ("opposite", other.words[lang][vi], other.concept),
                            ("synonym", pole.words[lang][1 - vi], pole.concept),
                        )
                        for task, answer, answer_concept in tasks:
                            held = pole.pair in self.held_out.get((task, lang), frozenset())
                            out.append(
                                MultilingualSentence(
                                    f"{prompt(task, lang, word)} {answer}",  # type: ignore[arg-type]
                                    task,  # type: ignore[arg-type]
                                    lang,
                                    lang,
                                    word,
                                    pole.concept,
                                    answer,
                                    answer_concept,
                                    pole.pair,
                                    "heldout" if held else "train",
                                )
                            )
                        for target in LANGUAGES:
                            if target == lang:
                                continue
                            answer = pole.words[target][vi]
                            out.append(
                                MultilingualSentence(
                                    f"{word} {target} {answer}",
                                    "translation",
                                    lang,
                                    target,
                                    word,
                                    pole.concept,
                                    answer,
                                    pole.concept,
                                    pole.pair,
                                    "train",
                                )
                            )
                        # mixed: a question in language ``target`` about a word of ``lang``,
                        # answered in ``target``; a share ``mixed`` is trained, the others held
                        # out (none for a held-out pair x task x language: it would leak it)
                        for task, answer_pole, avi in (("opposite", other, vi), ("synonym", pole, 1 - vi)):  # fmt: skip
                            for target in LANGUAGES:
                                if target == lang:
                                    continue
                                kept = rng.random() < self.mixed
                                held = self.held_out.get((task, target), frozenset()) | (
                                    self.held_out.get((task, lang), frozenset())
                                )
                                if pole.pair in held:
                                    continue
                                answer = answer_pole.words[target][avi]
                                out.append(
                                    MultilingualSentence(
                                        f"{prompt(task, target, word)} {answer}",  # type: ignore[arg-type]
                                        task,  # type: ignore[arg-type]
                                        lang,
                                        target,
                                        word,
                                        pole.concept,
                                        answer,
                                        answer_pole.concept,
                                        pole.pair,
                                        "train" if kept else "heldout",
                                    )
                                )
        return out


def build_multilingual_world(
    *, seed: int = 0, held_out_pairs: int = 6, mixed: float = 0.5
) -> MultilingualWorld:
    """The world, with ``held_out_pairs`` pairs per task and language held out.

    Pairs other than the demo's (``small`` / ``big``) are shuffled with ``seed`` and cut into
    three disjoint groups of ``held_out_pairs``: group ``i`` is held out of the opposite task in
    language ``i`` and of the synonym task in language ``i - 1`` (so a pair is held out of at most
    one task per language, and every held-out pair x task is trained in the other languages).

    Args:
        seed: Seed of the shuffle.
        held_out_pairs: Pairs held out per task and language (at most 9).
        mixed: Share of the mixed-language questions kept (see :class:`MultilingualWorld`).

    Returns:
        The :class:`MultilingualWorld`.
    """
    if not 0 <= held_out_pairs <= (len(PAIRS) - 1) // 3:
        raise ValueError(f"held_out_pairs must be in 0..{(len(PAIRS) - 1) // 3}")
    order = list(range(1, len(PAIRS)))
    random.Random(seed).shuffle(order)
    groups = [frozenset(order[i * held_out_pairs : (i + 1) * held_out_pairs]) for i in range(3)]
    held: dict[tuple[str, str], frozenset[int]] = {}
    for i, lang in enumerate(LANGUAGES):
        held[("opposite", lang)] = groups[i]
        held[("synonym", lang)] = groups[(i + 1) % 3]
    return MultilingualWorld(seed=seed, held_out=held, mixed=mixed)


def load_multilingual_world(*, folder: str | Path | None = None) -> MultilingualWorld:
    """The world the shipped toy-multilingual model was trained on (held-out pairs as shipped).

    Args:
        folder: A toy-multilingual folder with ``world.json`` (default: the shipped weights).

    Returns:
        The :class:`MultilingualWorld`.
    """
    import json

    from sae_circuits.toy.facts import TOY_MULTILINGUAL_DIR

    path = Path(folder) if folder is not None else TOY_MULTILINGUAL_DIR
    meta = json.loads((path / "world.json").read_text())
    world = build_multilingual_world(
        seed=meta["seed"], held_out_pairs=meta["held_out_pairs"], mixed=meta["mixed"]
    )
    shipped = {k: sorted(v) for k, v in meta["held_out"].items()}
    if shipped != {f"{t}_{lang}": sorted(v) for (t, lang), v in world.held_out.items()}:
        raise ValueError("world.json's held-out pairs differ from build_multilingual_world's")
    return world
