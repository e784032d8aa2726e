"""load_transcoders(): SAELens folders and objects; clear errors on bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from sae_lens import JumpReLUSkipTranscoder, JumpReLUTranscoder, SkipTranscoder, Transcoder

import sae_circuits as sc

from .conftest import KINDS, build
from .tolerance import assert_close


def _save(tcs, folder):
    for i, tc in enumerate(tcs):
        tc.save_model(folder / f"layer_{i}")


@pytest.mark.parametrize("kind", KINDS)
def test_folder_round_trip(tmp_path, kind):
    _, tcs = build("llama", kind)
    _save(tcs, tmp_path)
    ts = sc.load_transcoders(tmp_path)
    assert isinstance(ts, sc.PerLayerTranscoderSet) and len(ts) == len(tcs)
    assert ts.input_hooks == tuple(tc.cfg.metadata.hook_name for tc in tcs)
    assert ts.output_hooks[0] == "blocks.0.mlp.hook_out"
    cls = {
        "relu": Transcoder,
        "jumprelu": JumpReLUTranscoder,
        "skip": SkipTranscoder,
        "jumprelu_skip": JumpReLUSkipTranscoder,
        "topk": sc.TopKTranscoder,
    }[kind]
    assert all(type(t) is cls for t in ts.transcoders)
    for a, b in zip(ts.transcoders, tcs, strict=True):
        assert a.state_dict().keys() == b.state_dict().keys()
        for name, p in b.state_dict().items():
            assert torch.equal(a.state_dict()[name], p), name
        assert a.cfg.to_dict() == b.cfg.to_dict()
    x = torch.randn(5, tcs[0].cfg.d_in)
    assert_close(ts.activation_fn(0, ts.pre_activations(0, x)), tcs[0].encode(x))


def test_sequence_and_overrides():
    _, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    assert ts.input_hooks[2] == "blocks.2.hook_resid_mid"
    ts2 = sc.load_transcoders(tcs, input_hook="ln2.hook_normalized", output_hook="hook_mlp_out")
    assert ts2.input_hooks == tuple(f"blocks.{i}.ln2.hook_normalized" for i in range(3))
    assert sc.load_transcoders(ts) is ts


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        sc.load_transcoders(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="layer_"):
        sc.load_transcoders(tmp_path)
    _, tcs = build("gpt2")
    _save(tcs, tmp_path)
    shutil.rmtree(tmp_path / "layer_1")
    with pytest.raises(ValueError, match="missing: layer_1"):
        sc.load_transcoders(tmp_path)
    _save(tcs, tmp_path)
    (tmp_path / "layer_2" / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"sae_weights\.safetensors"):
        sc.load_transcoders(tmp_path)


def test_metadata_without_hooks_is_an_error(tmp_path):
    _, tcs = build("gpt2")
    _save(tcs, tmp_path)
    cfg_path = tmp_path / "layer_0" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["metadata"]["hook_name_out"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hook_name_out"):
        sc.load_transcoders(tmp_path)
    ts = sc.load_transcoders(tmp_path, output_hook="hook_mlp_out")
    assert ts.output_hooks[0] == "blocks.0.hook_mlp_out"


def test_wrong_types_and_widths():
    with pytest.raises(TypeError, match="unsupported source"):
        sc.load_transcoders(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SAELens Transcoder"):
        sc.load_transcoders([torch.nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no transcoders"):
        sc.load_transcoders([])
    _, tcs = build("gpt2")
    model_small = sc.toy.tiny_model("gpt2", d_model=16, n_heads=2)
    with pytest.raises(ValueError, match="widths"):
        sc.load_transcoders([tcs[0], *sc.toy.tiny_transcoders(model_small)[:1]])


def test_hooks_in_the_wrong_block_or_missing():
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs, input_hook="blocks.0.hook_resid_mid")
    with pytest.raises(ValueError, match="is in block 0"):
        sc.attribute(model, [0, 3, 4], ts)
    ts = sc.load_transcoders(tcs, input_hook="hook_resid_mdi")
    with pytest.raises(sc.HookNotFoundError, match="hook_resid_mid"):
        sc.attribute(model, [0, 3, 4], ts)
    ts = sc.load_transcoders(tcs, output_hook="hook_resid_post")
    with pytest.raises(sc.HookNotFoundError, match="valid choices"):
        sc.attribute(model, [0, 3, 4], ts)


def test_source_layers_per_layer_and_cross_layer():
    _, tcs = build("gpt2")
    per_layer = sc.load_transcoders(tcs)
    assert [per_layer.source_layers(out) for out in range(3)] == [[0], [1], [2]]
    clt = sc.CrossLayerTranscoderSet.from_sae(sc.toy.tiny_clt(tcs))
    assert [clt.source_layers(out) for out in range(3)] == [[0], [0, 1], [0, 1, 2]]
