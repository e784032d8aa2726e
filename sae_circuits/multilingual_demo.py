"""The multilingual case study: "the opposite of 'small' is" in three toy languages, offline.

Reproduces the experiments of the multilingual circuit of "Circuit Tracing" (Ameisen et al.
2025) on the shipped toy-multilingual model (``docs/multilingual.md``): attribute the three
prompts ``"the opposite of small is"``, ``"le contraire de petit est"`` and ``"小 的 反义词 是"``
(answers ``big``, ``grand``, ``大``), find supernodes by a rule from the graphs and a panel of
prompts, and intervene:

1. **language off**: the prompt's language features off -> does the answer leave the language?
2. **French off, Chinese on** (French prompt): the French features off, the Chinese features on
   with their activations from the Chinese prompt -> ``大``?
3. **small -> big**: the "small" features off, the "big" features from "the opposite of big
   is" on -> ``small`` / ``petit`` / ``小``?
4. **opposite -> synonym**: the "opposite" features off, the "synonym" features from "a synonym
   of small is" on -> ``little`` / ``menu`` / ``微小``? Once with the supernodes from the task
   word on (the case study's), once at every position. Reported as measured, with the graph's
   edge weights and influence of each supernode on the answer.

**How supernodes are found** (:func:`find_supernodes`; no feature id is written down anywhere):
the clean feature activations of a *panel* (both tasks x three languages x the 60 main
adjectives) are computed in the replacement model; a feature node of a prompt's graph belongs to

* ``language`` (at any position) if it is active there on at least :data:`ACTIVE_SHARE` of the
  panel prompts of that language (both tasks) and its mean activation on the other languages'
  prompts, at the position of the same role (adjective, task word, "of", last word; every
  position for a word without counterpart), is at most :data:`OFF_RATIO` of its mean on this
  language's;
* ``small`` (at the adjective's position) if it is active on the small prompts (both tasks) of
  that language and on none of the big prompts; ``big`` likewise from the big prompt's graph;
* ``opposite`` (from the task word to the last position; ``opposite, every position``: at any
  position) if active on at least :data:`ACTIVE_SHARE` of the language's opposite prompts at
  that position and its mean activation on its synonym prompts there is at most
  :data:`OFF_RATIO` of that; ``synonym`` likewise from the synonym prompt's graph;
* ``say big``: features at the last position active in all three graphs with a positive direct
  edge into the answer logit in each, of at least a tenth of the largest such edge.

Example:
    >>> report = run_multilingual_demo()
    >>> [(e.name, e.top_after) for e in report.experiments]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from sae_circuits.attribution import attribute
from sae_circuits.graph import AttributionGraph, node_id
from sae_circuits.interventions import InterventionResult, Supernode, activations_from, intervene
from sae_circuits.replacement_model import replacement
from sae_circuits.toy.multilingual import (
    DEMO_ADJECTIVE,
    LANGUAGE_NAMES,
    LANGUAGES,
    Language,
    MultilingualWorld,
    prompt,
)

__all__ = [
    "ACTIVE_SHARE",
    "OFF_RATIO",
    "MultilingualExperiment",
    "MultilingualReport",
    "find_supernodes",
    "run_multilingual_demo",
    "write_multilingual_graphs",
]

logger = logging.getLogger(__name__)

#: Share of a group's panel prompts a feature must be active on to belong to its supernode.
ACTIVE_SHARE = 0.9
#: Largest mean activation on the contrasting prompts, relative to the group's mean.
OFF_RATIO = 0.05

#: Position of the adjective, the task word and the last word (``<bos>`` = 0).
ADJ_POS: dict[str, int] = {"en": 4, "fr": 4, "zh": 1}
TASK_POS: dict[str, int] = {"en": 2, "fr": 2, "zh": 3}
LAST_POS: dict[str, int] = {"en": 5, "fr": 5, "zh": 4}
#: Position of each word's role (adjective, task word, "of", last word) in each language.
ROLES: dict[str, dict[str, int]] = {
    "en": {"task": 2, "of": 3, "adjective": 4, "last": 5},
    "fr": {"task": 2, "of": 3, "adjective": 4, "last": 5},
    "zh": {"adjective": 1, "of": 2, "task": 3, "last": 4},
}


def position_map(source: str, target: str) -> dict[int, int]:
    """Positions of a ``source``-language prompt -> the same roles' in a ``target`` one."""
    return {p: ROLES[target][role] for role, p in ROLES[source].items()}


Kind = Literal["plt", "clt"]
FeatureSet = set[tuple[int, int, int]]


@dataclass(frozen=True)
class MultilingualExperiment:
    """One intervention of the case study.

    Attributes:
        name: ``"language off"``, ``"French off, Chinese on"``, ``"small -> big"``,
            ``"opposite -> synonym"`` (from the task word on), ``"opposite -> synonym, every
            position"``.
        language: Language of the prompt.
        prompt: The prompt intervened on.
        removed: The supernode turned off.
        added: The supernode turned on (``None``: none).
        expected: What the case study predicts: a token, or (``language off``) ``None`` with
            ``expected_note`` saying what counts.
        result: The :class:`~sae_circuits.interventions.InterventionResult`.
        world: The world (to read tokens as concept and language).
        expected_note: How the outcome is judged.
    """

    name: str
    language: Language
    prompt: str
    removed: Supernode
    added: Supernode | None
    expected: str | None
    result: InterventionResult
    world: MultilingualWorld = field(repr=False)
    expected_note: str = ""

    def top_logits(self, k: int = 3) -> pd.DataFrame:
        """Top-``k`` tokens before and after (``InterventionResult.top_logits``)."""
        return self.result.top_logits(k)

    @property
    def top_before(self) -> str:
        return str(self.result.top_logits(1)["before_token"].iloc[0])

    @property
    def top_after(self) -> str:
        return str(self.result.top_logits(1)["after_token"].iloc[0])

    def probability(self, token: str, *, after: bool = True) -> float:
        """Probability of ``token`` at the last position, after (or before) the intervention."""
        tok = self.result.tokenizer
        tid = int(tok.convert_tokens_to_ids(token))  # type: ignore[union-attr]
        logits = self.result.last_logits if after else self.result.clean_last_logits
        return float(torch.softmax(logits.double(), -1)[tid])

    def language_probability(self, language: str, *, after: bool = True) -> float:
        """Total probability of the adjectives of ``language`` at the last position."""
        tok = self.result.tokenizer
        words = [
            w
            for w in self.world.vocabulary()
            if self.world.is_adjective(w) and self.world.word_info(w)[1] == language
        ]
        ids = torch.tensor([int(tok.convert_tokens_to_ids(w)) for w in words])  # type: ignore[union-attr]
        logits = self.result.last_logits if after else self.result.clean_last_logits
        return float(torch.softmax(logits.double(), -1)[ids].sum())

    def _concept_language(self, token: str) -> tuple[str, str] | None:
        if not self.world.is_adjective(token):
            return None
        pole, lang, _ = self.world.word_info(token)
        return pole.concept, lang

    @property
    def succeeded(self) -> bool:
        """Whether the top token after has the expected concept and language: the expected
        token's (any variant: ``menu`` counts for ``petit``); ``language off``: the clean answer's
        concept in another language."""
        after = self._concept_language(self.top_after)
        if after is None:
            return False
        if self.expected is not None:
            return after == self._concept_language(self.expected)
        before = self._concept_language(self.top_before)
        return before is not None and after[0] == before[0] and after[1] != self.language

    @property
    def exact(self) -> bool:
        """Whether the top token after is exactly the expected one."""
        return self.expected is not None and self.top_after == self.expected

    def summary(self) -> dict[str, Any]:
        """JSON-able: names, sizes, top-3 before and after, the expected token and its rank."""
        top = self.top_logits(3)
        out: dict[str, Any] = {
            "name": self.name,
            "language": self.language,
            "prompt": self.prompt,
            "removed": self.removed.name,
            "n_removed": len(self.removed),
            "added": None if self.added is None else self.added.name,
            "n_added": 0 if self.added is None else len(self.added),
            "before": [[str(t), round(float(p), 4)] for t, p in
                       zip(top["before_token"], top["before_probability"], strict=True)],
            "after": [[str(t), round(float(p), 4)] for t, p in
                      zip(top["after_token"], top["after_probability"], strict=True)],
            "expected": self.expected,
            "succeeded": self.succeeded,
            "exact": self.exact,
            "language_probability_before": round(self.language_probability(self.language, after=False), 4),
            "language_probability_after": round(self.language_probability(self.language), 4),
        }  # fmt: skip
        if self.expected is not None:
            out["expected_probability_before"] = round(
                self.probability(self.expected, after=False), 4
            )
            out["expected_probability_after"] = round(self.probability(self.expected), 4)  # fmt: skip
        return out


@dataclass(frozen=True)
class MultilingualReport:
    """What the multilingual demo computed.

    Attributes:
        kind: ``"plt"`` or ``"clt"``.
        prompts: Language -> the "opposite of small" prompt.
        graphs: Language -> its attribution graph.
        supernodes: Language -> supernode name -> :class:`Supernode` (``language``,
            ``small``, ``big`` (positions of the prompt), ``opposite``, ``synonym``,
            ``say big``; ``big`` and ``synonym`` are read from their own prompts).
        experiments: The interventions, in order.
        edges: Per language and supernode, the summed direct edge weight into the answer logit
            and into the ``say big`` features, and the share of the answer logit's incoming
            absolute edge weight (the graph's explanation of what drives the answer).
        labels: Node id -> feature label, per language (for the viewer).
    """

    kind: str
    prompts: dict[str, str]
    graphs: dict[str, AttributionGraph]
    supernodes: dict[str, dict[str, Supernode]]
    experiments: list[MultilingualExperiment]
    edges: pd.DataFrame
    labels: dict[str, dict[str, str]]

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: top logits of each graph, supernode sizes, experiments, edges."""
        return {
            "graphs": {
                lang: [
                    [str(t), round(float(p), 4)]
                    for t, p in zip(
                        g.logits["token"][:3], g.logits["probability"][:3], strict=False
                    )
                ]
                for lang, g in self.graphs.items()
            },
            "supernodes": {
                lang: {name: len(s) for name, s in groups.items()}
                for lang, groups in self.supernodes.items()
            },
            "experiments": [e.summary() for e in self.experiments],
            "edges": self.edges.round(4).to_dict(orient="records"),
        }


# --------------------------------------------------------------------------------------------
# panel activations


@torch.no_grad()
def _panel(model: Any, transcoders: Any, prompts: Sequence[str]) -> dict[int, torch.Tensor]:
    """Dense clean activations ``layer -> (n, pos, F)`` of prompts of one length."""
    tokens = model.to_tokens(list(prompts))
    with replacement(model, transcoders) as state:
        model(tokens)
    return {layer: a.to_dense()[..., :] for layer, a in state.activations.items()}


def _contrast(
    on: Mapping[int, torch.Tensor], off: Mapping[int, torch.Tensor], position: int
) -> set[tuple[int, int]]:
    """``(layer, feature)`` active on >= ACTIVE_SHARE of ``on`` at ``position`` and ~0 on ``off``."""
    out = set()
    for layer in on:
        a = on[layer][:, position]
        b = off[layer][:, position]
        share = (a > 0).float().mean(0)
        ok = (share >= ACTIVE_SHARE) & (b.mean(0) <= OFF_RATIO * a.mean(0))
        out |= {(layer, int(f)) for f in torch.nonzero(ok).flatten().tolist()}
    return out


def _graph_features(graph: AttributionGraph, positions: Sequence[int]) -> FeatureSet:
    nodes = graph.nodes
    keep = set(positions)
    return {
        (int(la), int(p), int(f))
        for k, la, p, f in zip(
            nodes["kind"], nodes["layer"], nodes["position"], nodes["feature"], strict=True
        )
        if k == "feature" and int(p) in keep
    }


def find_supernodes(
    model: Any,
    transcoders: Any,
    world: MultilingualWorld,
    graphs: Mapping[str, AttributionGraph],
    contrast_graphs: Mapping[tuple[str, str], AttributionGraph],
) -> dict[str, dict[str, Supernode]]:
    """The supernodes of each language's "opposite of small" graph, by the rule of the module.

    Args:
        model: The model.
        transcoders: Its transcoders.
        world: The world (adjectives of the panel).
        graphs: Language -> graph of ``prompt("opposite", lang, small)``.
        contrast_graphs: ``("big", lang)`` -> graph of the opposite-of-big prompt,
            ``("synonym", lang)`` -> graph of the synonym-of-small prompt.

    Returns:
        Language -> name -> :class:`Supernode` (empty groups are left out).
    """
    concepts = [p.concept for pair in _pairs() for p in pair]
    panel: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for lang in LANGUAGES:
        words = [world.word(c, lang) for c in concepts]  # type: ignore[arg-type]
        for task in ("opposite", "synonym"):
            panel[(task, lang)] = _panel(
                model,
                transcoders,
                [prompt(task, lang, w) for w in words],  # type: ignore[arg-type]
            )
    small_i = concepts.index(DEMO_ADJECTIVE)
    big_i = concepts.index(world.poles[DEMO_ADJECTIVE].opposite)
    out: dict[str, dict[str, Supernode]] = {}
    for lang in LANGUAGES:
        groups: dict[str, FeatureSet] = {}
        last, adj = LAST_POS[lang], ADJ_POS[lang]
        # language: at every position, active on this language's prompts (both tasks, all
        # adjectives) and ~0 on the other languages' prompts at the position of the same role
        # (the adjective, the task word, "of", the last word; a word without a counterpart, the
        # article "the" / "le": at every position)
        layers = list(panel[("opposite", lang)])
        role_of = {p: r for r, p in ROLES[lang].items()}
        groups["language"] = set()
        for pos in range(1, last + 1):
            for la in layers:
                a = torch.cat([panel[(t, lang)][la][:, pos] for t in ("opposite", "synonym")])
                elsewhere = torch.stack(
                    [
                        panel[(t, o)][la][:, q].mean(0)
                        for t in ("opposite", "synonym")
                        for o in LANGUAGES
                        if o != lang
                        for q in (
                            [ROLES[o][role_of[pos]]]
                            if pos in role_of
                            else range(1, LAST_POS[o] + 1)
                        )
                    ]
                ).amax(0)
                ok = ((a > 0).float().mean(0) >= ACTIVE_SHARE) & (
                    elsewhere <= OFF_RATIO * a.mean(0)
                )
                feats = {(la, int(f)) for f in torch.nonzero(ok).flatten().tolist()}
                groups["language"] |= {
                    k for k in _graph_features(graphs[lang], [pos]) if (k[0], k[2]) in feats
                }
        mine = panel[("opposite", lang)]
        # small / big: the adjective's position, small prompts vs big prompts (both tasks)
        for name, graph, pick, avoid in (
            ("small", graphs[lang], small_i, big_i),
            ("big", contrast_graphs[("big", lang)], big_i, small_i),
        ):
            on = {
                la: torch.stack([panel[(t, lang)][la][pick] for t in ("opposite", "synonym")])
                for la in mine
            }
            off = {
                la: torch.stack([panel[(t, lang)][la][avoid] for t in ("opposite", "synonym")])
                for la in mine
            }
            feats = _contrast(on, off, adj)
            groups[name] = {k for k in _graph_features(graph, [adj]) if (k[0], k[2]) in feats}
        # opposite / synonym: opposite prompts vs synonym prompts, from the task word on (the
        # case study's supernode) and at every position (in English and French-like the
        # prompts differ from their first word on: "the" / "a", "le" / "un")
        for suffix, first in (("", TASK_POS[lang]), (", every position", 1)):
            for name, graph, on_task, off_task in (
                ("opposite", graphs[lang], "opposite", "synonym"),
                ("synonym", contrast_graphs[("synonym", lang)], "synonym", "opposite"),
            ):
                members: FeatureSet = set()
                for pos in range(first, last + 1):
                    feats = _contrast(panel[(on_task, lang)], panel[(off_task, lang)], pos)
                    members |= {k for k in _graph_features(graph, [pos]) if (k[0], k[2]) in feats}
                groups[name + suffix] = members
        out[lang] = {
            f"{name} ({lang})": Supernode(f"{name} ({lang})", tuple(sorted(m)))
            for name, m in groups.items()
            if m
        }
    # say big: last-position features of all three graphs with edges into the answer logit
    edges_in: dict[tuple[int, int], list[float]] = {}
    for lang in LANGUAGES:
        g = graphs[lang]
        w = _edges_into_answer(g)
        for (layer, pos, feat), weight in w.items():
            if pos == LAST_POS[lang]:
                edges_in.setdefault((layer, feat), []).append(weight)
    common = {k: min(v) for k, v in edges_in.items() if len(v) == len(LANGUAGES) and min(v) > 0}
    if common:
        top = max(common.values())
        keep = sorted(k for k, v in common.items() if v >= 0.1 * top)
        for lang in LANGUAGES:
            name = f"say big ({lang})"
            out[lang][name] = Supernode(name, tuple((la, LAST_POS[lang], f) for la, f in keep))
    return out


def _pairs() -> Any:
    from sae_circuits.toy.multilingual import PAIRS

    return PAIRS


def _edges_into_answer(graph: AttributionGraph) -> dict[tuple[int, int, int], float]:
    """Direct edge weight from each feature node into the graph's top logit."""
    logit = int(graph.node_indices("logit")[0])
    row = graph.adjacency[[logit]].tocoo()  # type: ignore[index]
    nodes = graph.nodes
    out = {}
    for col, w in zip(row.col.tolist(), row.data.tolist(), strict=True):
        n = nodes.iloc[col]
        if n["kind"] == "feature":
            out[(int(n["layer"]), int(n["position"]), int(n["feature"]))] = float(w)
    return out


def _edge_table(
    graphs: Mapping[str, AttributionGraph],
    supernodes: Mapping[str, Mapping[str, Supernode]],
    prompts: Mapping[str, str],
) -> pd.DataFrame:
    """Per language and supernode (and the adjective's and task word's token nodes): the summed
    direct edge into the answer logit, its share of the logit's absolute input, the edge into
    ``say big`` and the influence on the answer (``w Â + w Â² + ...``, as pruning ranks nodes)."""
    from sae_circuits.graph import node_influence

    rows = []
    for lang, g in graphs.items():
        logit = int(g.node_indices("logit")[0])
        kinds = g.nodes["kind"].astype(str).to_numpy()
        positions = g.nodes["position"].to_numpy()
        index = {
            (int(la), int(p), int(f)): i
            for i, (k, la, p, f) in enumerate(
                zip(kinds, g.nodes["layer"], positions, g.nodes["feature"], strict=True)
            )
            if k == "feature"
        }
        adj = g.adjacency.tocsr()  # type: ignore[union-attr]
        into = adj[[logit]].toarray()[0]
        weights = np.zeros(g.n_nodes)
        weights[logit] = 1.0
        influence = node_influence(adj, weights)
        say = [
            index[k]
            for name, s in supernodes[lang].items()
            if name.startswith("say big")
            for k in s.features
            if k in index
        ]
        groups: list[tuple[str, list[int]]] = []
        for name, s in supernodes[lang].items():
            if name.startswith(("big", "synonym")):
                continue  # read from another prompt: no nodes in this graph
            groups.append((name, [index[k] for k in s.features if k in index]))
        tokens = ["<bos>", *prompts[lang].split()]
        roles = [("adjective", ADJ_POS[lang]), ("task word", TASK_POS[lang])]
        if ADJ_POS[lang] != 1:
            roles.append(("first word", 1))  # "the" / "le": already differs between the tasks
        for role, pos in roles:
            node = [i for i in range(g.n_nodes) if kinds[i] == "token" and positions[i] == pos]
            word = tokens[pos] if pos < len(tokens) else role
            groups.append((f"token '{word}' ({role})", node))
        for name, members in groups:
            if not members:
                continue
            rows.append(
                {
                    "language": lang,
                    "supernode": name,
                    "n_nodes": len(members),
                    "edge_to_answer": float(into[members].sum()),
                    "share_of_answer_input": float(
                        np.abs(into[members]).sum() / np.abs(into).sum()
                    ),
                    "edge_to_say_big": float(adj[say][:, members].sum()) if say else float("nan"),
                    "influence": float(influence[members].sum()),
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# the demo


def _load(kind: Kind, folder: str | Path | None) -> tuple[Any, Any, MultilingualWorld, Any]:
    from sae_circuits.toy.facts import model_from_files, toy_dir
    from sae_circuits.toy.multilingual import load_multilingual_world
    from sae_circuits.transcoders import load_transcoders

    if kind not in ("plt", "clt"):
        raise ValueError(f"unknown transcoder kind {kind!r}; valid kinds: 'plt', 'clt'")
    path = Path(folder) if folder is not None else toy_dir("toy-multilingual")
    model = model_from_files(path)
    ts = load_transcoders(path / ("transcoders" if kind == "plt" else "clt"))
    world = load_multilingual_world(folder=path)
    labels = json.loads((path / "labels.json").read_text(encoding="utf-8"))[kind]["labels"]
    return model, ts, world, {int(k): v for k, v in labels.items()}


def run_multilingual_demo(
    *, kind: Kind = "plt", folder: str | Path | None = None, progress: bool | None = False
) -> MultilingualReport:
    """Attribute the three "opposite of small" prompts, find the supernodes, intervene.

    Args:
        kind: ``"plt"`` (per-layer transcoders) or ``"clt"`` (cross-layer transcoder).
        folder: A toy-multilingual folder (default: the shipped weights; training passes its
            output folder).
        progress: Attribution progress bars (``None``: when stderr is a terminal).

    Returns:
        The :class:`MultilingualReport`.
    """
    model, ts, world, labels_by_layer = _load(kind, folder)
    big = world.poles[DEMO_ADJECTIVE].opposite
    syn_task = "synonym"
    prompts = {
        lang: prompt("opposite", lang, world.word(DEMO_ADJECTIVE, lang)) for lang in LANGUAGES
    }
    graphs = {lang: attribute(model, p, ts, progress=progress) for lang, p in prompts.items()}
    contrast_prompts: dict[tuple[str, str], str] = {}
    for lang in LANGUAGES:
        contrast_prompts[("big", lang)] = prompt("opposite", lang, world.word(big, lang))
        contrast_prompts[("synonym", lang)] = prompt(
            syn_task, lang, world.word(DEMO_ADJECTIVE, lang)
        )
    contrast_graphs = {
        k: attribute(model, p, ts, progress=progress) for k, p in contrast_prompts.items()
    }
    supernodes = find_supernodes(model, ts, world, graphs, contrast_graphs)
    experiments: list[MultilingualExperiment] = []

    def run(name: str, lang: Language, off: Supernode | None, on: Supernode | None,
            source: str | None, expected: str | None, position_map: dict[int, int] | None = None,
            note: str = "") -> None:  # fmt: skip
        if off is None or (source is not None and on is None):
            logger.warning("%s (%s): a supernode is empty, experiment skipped", name, lang)
            return
        ivs: list[Any] = [off.scale(0.0)]
        if on is not None and source is not None:
            ivs.append(activations_from(model, source, ts, on, position_map=position_map))
        result = intervene(model, prompts[lang], ts, ivs, freeze_attention=False)
        experiments.append(
            MultilingualExperiment(
                name, lang, prompts[lang], off, on, expected, result, world, note
            )
        )

    for lang in LANGUAGES:
        sn = supernodes[lang]
        run("language off", lang, sn.get(f"language ({lang})"), None, None, None,
            note="the top answer becomes an adjective of another language")  # fmt: skip
    fr, zh = supernodes["fr"], supernodes["zh"]
    run(
        "French off, Chinese on", "fr", fr.get("language (fr)"), zh.get("language (zh)"),
        prompts["zh"], world.word(big, "zh"), position_map("zh", "fr"),
    )  # fmt: skip
    for lang in LANGUAGES:
        sn = supernodes[lang]
        run("small -> big", lang, sn.get(f"small ({lang})"), sn.get(f"big ({lang})"),
            contrast_prompts[("big", lang)], world.word(DEMO_ADJECTIVE, lang))  # fmt: skip
    for lang in LANGUAGES:
        sn = supernodes[lang]
        for suffix in ("", ", every position"):
            run(f"opposite -> synonym{suffix}", lang, sn.get(f"opposite{suffix} ({lang})"),
                sn.get(f"synonym{suffix} ({lang})"), contrast_prompts[("synonym", lang)],
                world.word(DEMO_ADJECTIVE, lang, "synonym"))  # fmt: skip
    labels: dict[str, dict[str, str]] = {}
    for lang, g in graphs.items():
        feats = g.nodes[g.nodes["kind"] == "feature"]
        labels[lang] = {
            node_id("feature", layer=int(la), feature=int(f), position=int(p)): labels_by_layer[
                int(la)
            ][int(f)]
            for la, f, p in zip(feats["layer"], feats["feature"], feats["position"], strict=True)
        }
    return MultilingualReport(
        kind,
        prompts,
        graphs,
        supernodes,
        experiments,
        _edge_table(graphs, supernodes, prompts),
        labels,
    )


def write_multilingual_graphs(
    report: MultilingualReport,
    out: str | Path,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> dict[str, Path]:
    """Write each language's graph folder for the viewer, with its supernodes.

    ``out/{lang}/`` gets ``graph.zip``, ``pruned.zip``, ``graph.json`` (with the feature labels)
    and ``annotations.json`` holding the supernodes found on that graph (members kept in the
    pruned graph; all members when none is), so ``sae-circuits serve out/fr`` shows them.

    Args:
        report: :func:`run_multilingual_demo`'s report.
        out: The parent folder.
        node_threshold: Pruning threshold of nodes.
        edge_threshold: Pruning threshold of edges.

    Returns:
        Language -> its folder.
    """
    from sae_circuits.viewer import write_graph_folder
    from sae_circuits.viewer.annotations import AnnotationStore

    folders = {}
    for lang, graph in report.graphs.items():
        folder = Path(out) / lang
        pruned = graph.prune(node_threshold, edge_threshold)
        write_graph_folder(
            folder,
            graph,
            pruned,
            slug=f"toy-multilingual-opposite-{lang}",
            labels=report.labels[lang],
        )
        kept = {
            node_id("feature", layer=int(la), feature=int(f), position=int(p))
            for k, la, f, p in zip(
                pruned.nodes["kind"], pruned.nodes["layer"], pruned.nodes["feature"],
                pruned.nodes["position"], strict=True,
            )
            if k == "feature"
        }  # fmt: skip
        patch: dict[str, Any] = {"supernodes": {}}
        for i, (name, s) in enumerate(report.supernodes[lang].items()):
            if name.startswith(("big", "synonym")):
                continue  # read from another prompt
            ids = [node_id("feature", layer=la, feature=f, position=p) for la, p, f in s.features]
            members = [m for m in ids if m in kept] or ids
            patch["supernodes"][f"sn-{i}"] = {"label": name, "members": members}
        store = AnnotationStore(folder)
        current = store.read().get("supernodes", {})
        patch["supernodes"].update({k: None for k in current if k not in patch["supernodes"]})
        store.update(patch)
        folders[lang] = folder
    return folders


def describe_languages() -> str:
    """One line naming the three toy languages."""
    return ", ".join(f"{k} ({v})" for k, v in LANGUAGE_NAMES.items())
