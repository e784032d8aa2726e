"""Shared fixtures: tiny GPT-2-, Llama- and Gemma-2-style models with SAELens transcoders.

Everything is built from configs with seeded random weights: no download, CPU only.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from sae_circuits.toy import tiny_model, tiny_transcoders

ARCHS = ("gpt2", "llama", "gemma2")
KINDS = ("relu", "jumprelu", "skip", "jumprelu_skip")
#: A prompt in the tiny models' word vocabulary ('t0' is BOS and is prepended).
PROMPT = "t5 t9 t3 t7 t2 t8 t1 t1 t4 t6"


@functools.cache
def _built(arch: str, kind: str, seed: int):
    model = tiny_model(arch, seed=seed)
    return model, tiny_transcoders(model, kind, seed=seed)


def build(arch: str, kind: str = "relu", seed: int = 0):
    """A (model, list of SAELens transcoders) pair; the model is a fresh copy each call."""
    import copy

    model, tcs = _built(arch, kind, seed)
    return copy.deepcopy(model), tcs


#: Threads for torch: CI's two cores by default; ``OMP_NUM_THREADS`` (as in ``make test``'s
#: one-thread run) wins, so a test that depends on the thread count fails there too.
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 2)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def model_fingerprint(model) -> dict:
    """Everything about a model that attribution must leave unchanged."""
    hooks = {
        name: (
            len(hp.fwd_hooks),
            len(hp.bwd_hooks),
            len(hp._forward_hooks),
            len(hp._backward_hooks),
        )
        for name, hp in model.hook_dict.items()
    }
    torch_hooks = {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    }
    params = {name: (p.requires_grad, p.detach().clone()) for name, p in model.named_parameters()}
    return {
        "hooks": hooks,
        "torch_hooks": torch_hooks,
        "params": params,
        "modules": [name for name, _ in model.named_modules()],
        "training": model.training,
        "cfg": dict(vars(model.cfg)),
    }


def assert_same_model(before: dict, after: dict) -> None:
    assert before["hooks"] == after["hooks"]
    assert before["torch_hooks"] == after["torch_hooks"]
    assert before["modules"] == after["modules"]
    assert before["training"] == after["training"]
    assert before["params"].keys() == after["params"].keys()
    for name, (rg, value) in before["params"].items():
        rg2, value2 = after["params"][name]
        assert rg == rg2, name
        assert torch.equal(value, value2), name
        assert after["params"][name][1].grad is None
    assert str(before["cfg"]) == str(after["cfg"])
