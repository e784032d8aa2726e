"""Shared fixtures: tiny GPT-2-, Llama- and Gemma-2-style models with SAELens transcoders.

Everything is built from configs with seeded random weights: no download, CPU only.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import pytest
import torch

from sae_circuits.toy import tiny_model, tiny_transcoders

ARCHS = ("gpt2", "llama", "gemma2")
KINDS = ("relu", "jumprelu", "skip", "jumprelu_skip", "topk")
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


# -- a Hugging Face cache in the real layout, offline ----------------------------------------


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline mode on (env vars and huggingface_hub constants:
    the constants are read from the environment at import time, so both are patched)."""
    from huggingface_hub import constants

    from sae_circuits.transcoders._hub import ENV_DIR

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(ENV_DIR, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def fake_repo(cache: Path, repo: str, files: dict[str, bytes], revision: str = "main") -> Path:
    """Files of ``repo`` at ``revision`` in the cache: blobs, symlinked snapshot, ref."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    snapshot = root / "snapshots" / commit
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / blob.name)
    return snapshot
