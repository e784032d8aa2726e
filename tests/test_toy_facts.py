"""The shipped toy-facts model: it composes two hops, and its attribution graph shows how.

All offline and CPU-only; the shipped weights are loaded once per module. The floors stated here
are the ones documented in docs/toy_model.md (measured values are well above them).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits.core.prompts import to_tokens
from sae_circuits.replacement_model._replacement import replacement
from sae_circuits.toy.facts import (
    load_toy_feature_info,
    load_toy_labels,
    load_toy_model,
    load_toy_transcoders,
    load_toy_world,
    toy_transcoders_path,
)
from sae_circuits.toy.world import DEMO_ANSWER, DEMO_PROMPT, SWAP_ANSWER, SWAP_PROMPT, build_world
from toy_training.evaluate import answer_accuracy, place_features, state_swap

#: Top-1 accuracy floor on held-out two-hop questions (the model never saw them).
HELDOUT_TWO_HOP_FLOOR = 0.8
#: Replacement- and completeness-score floors of the Dallas graph (per-layer transcoders).
REPLACEMENT_FLOOR = 0.9
COMPLETENESS_FLOOR = 0.95
#: Floor of Sacramento's probability after the swap.
SWAP_PROBABILITY_FLOOR = 0.5
#: Position of "dallas" in "<bos> the capital of the state containing dallas is".
CITY_POS = 7


@functools.lru_cache(maxsize=1)
def _model():
    return load_toy_model()


@functools.lru_cache(maxsize=1)
def _plt():
    return load_toy_transcoders("plt")


@functools.lru_cache(maxsize=1)
def _graph():
    return sc.attribute(_model(), DEMO_PROMPT, _plt())


def _top_token(model, prompt: str) -> str:
    tokens = to_tokens(model, prompt)
    with torch.no_grad():
        logits = model(tokens[None])[0, -1]
    return model.tokenizer.decode([int(logits.argmax())])


# --------------------------------------------------------------------------- world


def test_world_has_the_demo_facts_and_held_out_cities():
    world = build_world()
    assert world.place_of("dallas").name == "texas"
    assert world.place_of("dallas").capital == "austin"
    assert world.place_of("oakland").capital == "sacramento"
    assert {"dallas", "oakland"} <= world.held_out
    texts = {s.text: s for s in world.sentences()}
    demo = texts["the capital of the state containing dallas is austin"]
    assert demo.split == "heldout" and demo.hops == 2
    # the one-hop facts of held-out cities are in training
    assert texts["she lives in dallas texas"].split == "train"
    assert texts["the capital of texas is austin"].split == "train"
    train = {s.text for s in world.split("train")}
    for city in world.held_out:
        assert not any(city in t.split() and t.startswith("the capital of the") for t in train)
    # every word is one token of the vocabulary
    vocab = set(world.vocabulary())
    assert all(w in vocab for s in world.sentences() for w in s.text.split())


def test_shipped_world_matches_build_world():
    assert load_toy_world().held_out == build_world().held_out


# --------------------------------------------------------------------------- model


def test_tokenizer_is_case_insensitive_and_prepends_bos():
    model = _model()
    tokens = to_tokens(model, DEMO_PROMPT)
    assert tokens.tolist() == to_tokens(model, DEMO_PROMPT.lower()).tolist()
    assert len(tokens) == 9 and int(tokens[0]) == model.tokenizer.bos_token_id
    assert model.tokenizer.decode([int(tokens[CITY_POS])]) == "dallas"
    assert model.tokenizer.unk_token_id not in tokens.tolist()


def test_demo_prompts_answer_through_two_hops():
    model = _model()
    assert _top_token(model, DEMO_PROMPT) == DEMO_ANSWER
    assert _top_token(model, SWAP_PROMPT) == SWAP_ANSWER


def test_held_out_two_hop_accuracy_is_above_floor():
    model, world = _model(), load_toy_world()
    held = [s for s in world.split("heldout") if s.hops == 2]
    capital = [s for s in held if s.template == "two_hop_capital"]
    assert len(capital) == 64
    assert answer_accuracy(model, capital) >= HELDOUT_TWO_HOP_FLOOR
    assert answer_accuracy(model, held) >= HELDOUT_TWO_HOP_FLOOR
    # a sanity check that the test can fail: a wrong answer set scores zero
    wrong = [type(s)(s.text.rsplit(" ", 1)[0] + " paris", s.template, s.relation, s.subject,
                     "paris", s.hops, s.split) for s in capital if s.answer != "paris"]  # fmt: skip
    assert answer_accuracy(model, wrong) < 0.1


# --------------------------------------------------------------------------- transcoders


def test_shipped_transcoders_load_and_fit_the_model():
    ts = _plt()
    assert ts.n_layers == 4 and ts.d_in == 128
    assert ts.input_hooks[0] == "blocks.0.ln2.hook_normalized"
    assert ts.output_hooks[3] == "blocks.3.hook_mlp_out"
    labels = load_toy_labels("plt")
    assert sorted(labels) == [0, 1, 2, 3]
    assert all(len(labels[layer]) == ts.d_sae(layer) for layer in labels)


def test_labels_name_every_place_in_layer_0():
    """Layer-0 features of the per-layer transcoders cover each state's and country's cities."""
    world = build_world()
    labels = load_toy_labels("plt")
    named = {lab.split(" (")[0] for lab in labels[0] if "of city)" in lab or "(place or" in lab}
    assert named == {p.name for p in world.places}
    info = load_toy_feature_info("plt")
    assert {i["place"] for i in info[0] if i["place"]} == named
    for layer, labs in labels.items():
        assert sum(lab.startswith(("mixed", "dead")) for lab in labs) < 0.25 * len(labs), layer


def test_clt_folder_is_in_the_public_layout():
    from safetensors import safe_open

    folder = toy_transcoders_path("clt")
    cfg = (folder / "config.yaml").read_text()
    assert "model_kind: cross_layer_transcoder" in cfg
    assert "feature_input_hook: ln2.hook_normalized" in cfg
    for layer in range(4):
        with safe_open(folder / f"W_enc_{layer}.safetensors", "pt") as f:
            w_enc = f.get_tensor(f"W_enc_{layer}")
            assert f.get_tensor(f"threshold_{layer}").shape == (w_enc.shape[0],)
            assert f.get_tensor(f"b_dec_{layer}").shape == (128,)
        with safe_open(folder / f"W_dec_{layer}.safetensors", "pt") as f:
            assert f.get_tensor(f"W_dec_{layer}").shape == (w_enc.shape[0], 4 - layer, 128)


def test_clt_loads_when_the_loader_supports_it():
    try:
        ts = load_toy_transcoders("clt")
    except (FileNotFoundError, ValueError, TypeError) as exc:  # loader without CLT support yet
        pytest.skip(f"load_transcoders cannot read the CLT folder yet: {exc}")
    assert ts.n_layers == 4
    assert list(ts.output_layers(1)) == [1, 2, 3]
    graph = sc.attribute(_model(), DEMO_PROMPT, ts)
    assert graph.logits["token"].iloc[0] == DEMO_ANSWER


# --------------------------------------------------------------------------- the circuit


def _total_effects(graph, target: int) -> np.ndarray:
    """Signed total effect of every node on ``target`` (sum over all paths of edge products)."""
    a = graph.adjacency.tocsr()
    x = np.zeros(graph.n_nodes)
    x[target] = 1.0
    total = np.zeros(graph.n_nodes)
    for _ in range(graph.n_nodes):
        x = a.T @ x
        if not x.any():
            return total
        total += x
    raise AssertionError("the graph has a cycle")


def test_dallas_graph_has_texas_features_at_the_city_that_drive_austin():
    graph = _graph()
    assert graph.logits["token"].iloc[0] == DEMO_ANSWER
    info = load_toy_feature_info("plt")
    nodes = graph.nodes
    feats = graph.node_indices("feature")
    at_city = [i for i in feats if nodes["position"].iloc[i] == CITY_POS]
    texas = [
        i
        for i in at_city
        if info[int(nodes["layer"].iloc[i])][int(nodes["feature"].iloc[i])]["place"] == "texas"
    ]
    assert texas, "no Texas feature at the city position"
    austin = graph.node_indices("logit")[0]
    effect = _total_effects(graph, austin)
    assert effect[texas].sum() > 0
    # Texas features at the city carry a large share of what the city position does for Austin
    city_nodes = [i for i in feats if nodes["position"].iloc[i] == CITY_POS]
    assert effect[texas].sum() >= 0.5 * np.clip(effect[city_nodes], 0, None).sum()


def test_dallas_graph_replacement_score_is_above_floor():
    scores = _graph().scores()
    assert scores.replacement >= REPLACEMENT_FLOOR
    assert scores.completeness >= COMPLETENESS_FLOOR


def test_swapping_texas_for_california_features_says_sacramento():
    """Texas features off and California features (from the Oakland prompt) on, at the city."""
    model, ts = _model(), _plt()
    result = state_swap(model, ts, load_toy_feature_info("plt"))
    assert any(result.removed.values()) and any(result.added.values())
    assert result.clean[0][0] == DEMO_ANSWER
    assert result.swapped[0][0] == SWAP_ANSWER
    assert result.swapped[0][1] >= SWAP_PROBABILITY_FLOOR


def test_swap_by_hand_with_scoped_hooks():
    """The same swap written out with ``replacement`` (errors frozen), layer-0 features only."""
    model, ts = _model(), _plt()
    info = load_toy_feature_info("plt")
    dallas, oakland = to_tokens(model, DEMO_PROMPT), to_tokens(model, SWAP_PROMPT)
    with torch.no_grad(), replacement(model, ts) as state:
        model(oakland[None])
    oak = state.activations[0].to_dense()[0, CITY_POS]
    with torch.no_grad(), replacement(model, ts) as state:
        model(dallas[None])
    errors = dict(state.errors)
    dal = state.activations[0].to_dense()[0, CITY_POS]
    texas = place_features({0: dal}, info, "texas")[0]
    california = place_features({0: oak}, info, "california")[0]
    assert texas and california

    def swap(layer, acts):
        if layer == 0:
            acts = acts.clone()
            acts[:, CITY_POS, texas] = 0.0
            acts[:, CITY_POS, california] = oak[california]
        return acts

    def top(hook):
        with torch.no_grad(), replacement(model, ts, errors=errors, feature_hook=hook):
            return model.tokenizer.decode([int(model(dallas[None])[0, -1].argmax())])

    assert top(lambda layer, acts: acts) == DEMO_ANSWER
    assert top(swap) == SWAP_ANSWER


def test_clt_swap_when_the_loader_supports_it():
    try:
        ts = load_toy_transcoders("clt")
    except (FileNotFoundError, ValueError, TypeError) as exc:
        pytest.skip(f"load_transcoders cannot read the CLT folder yet: {exc}")
    result = state_swap(_model(), ts, load_toy_feature_info("clt"))
    assert result.swapped[0][0] == SWAP_ANSWER


# --------------------------------------------------------------------------- training


def test_training_smoke(tmp_path):
    """A few steps of the whole pipeline on a tiny configuration; loads back."""
    from sae_circuits.toy.facts import model_from_files
    from toy_training.train import TrainConfig, run

    log = run(tmp_path, TrainConfig.quick())
    assert json.loads((tmp_path / "training_log.json").read_text())["model"] == log["model"]
    assert log["model"][-1]["loss"] < log["model"][1]["loss"]
    model = model_from_files(tmp_path)
    assert model.cfg.n_layers == 2
    ts = sc.load_transcoders(tmp_path / "transcoders")
    assert ts.n_layers == 2
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert len(labels["plt"]["labels"]["0"]) == ts.d_sae(0)
    assert (tmp_path / "clt" / "W_dec_1.safetensors").is_file()
