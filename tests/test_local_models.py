"""load_model on local checkpoints: Hugging Face folders and GGUF files of Llama and Gemma 3.

Every checkpoint is built here, offline, in the public formats: tiny ``transformers`` models
(``LlamaConfig`` / ``Gemma3TextConfig``) written with ``save_pretrained`` next to a tiny
``tokenizers`` BPE tokenizer, and GGUF files written with ``gguf.GGUFWriter`` the way llama.cpp's
``convert_hf_to_gguf.py`` writes them (tensor names from gguf's own name map, Llama's q/k rows
permuted, Gemma's norms stored as ``1 + w``, matrices quantised to Q8_0 / Q4_1 / Q5_0). The
reference is ``transformers``' own forward of the same checkpoint (for a GGUF file: its
dequantised weights), in float32.

Tests that write or read GGUF files need the ``gguf`` package (``pip install
'sae-circuits[gguf]'``, in the dev extra) and skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer

import sae_circuits as sc
from sae_circuits.models import ModelUnavailableError, load_model
from sae_circuits.models._local import (
    MAX_N_CTX,
    hf_to_tl_config,
    is_local_checkpoint,
    without_gguf_quantization,
)

from .tolerance import RTOL, assert_close, rel_err

HAS_GGUF = importlib.util.find_spec("gguf") is not None
needs_gguf = pytest.mark.skipif(
    not HAS_GGUF, reason="the 'gguf' package is not installed (pip install 'sae-circuits[gguf]')"
)

TEXT = "The capital of the state containing Dallas is Austin. the cat sat on the mat."
#: Texts the tokenizers are trained on (byte-level BPE: any text still encodes).
CORPUS = [
    TEXT,
    "The capital of Texas is Austin and the capital of California is Sacramento.",
    "Dallas is a city in the state of Texas; the state capital is Austin.",
]
#: TransformerLens against transformers, same float32 weights: the two implementations sum in
#: other orders (einsum vs linear, their own RoPE and RMSNorm) through a few layers. Measured
#: here: 4e-7 to 7e-7 of the logits' scale (3-6 ulps; docs/configs.md), against the default
#: 64 ulps (7.6e-6).
LOGITS_RTOL = RTOL


# ---------------------------------------------------------------------------------------------
# tiny checkpoints


def bpe_tokenizer(*, bos_in_template: bool):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (GPT-2 style), ~300 tokens, built offline.

    ``bos_in_template``: the tokenizer prepends ``<bos>`` itself (as Gemma's); otherwise it adds
    nothing (as SmolLM2's).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if bos_in_template:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def llama_config(vocab_size: int, rope: str = "default", **overrides):
    from transformers import LlamaConfig

    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    if rope == "llama3":
        rope_parameters = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": False,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "architectures": ["LlamaForCausalLM"],
    }
    return LlamaConfig(**{**kwargs, **overrides})


def gemma3_config(vocab_size: int, n_layers: int = 3, **overrides):
    from transformers import Gemma3TextConfig

    kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 24,  # != head_dim: the score scale must come from the config
        "sliding_window": 4,  # shorter than the prompts: the window matters
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"][:n_layers],
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "architectures": ["Gemma3ForCausalLM"],
    }
    return Gemma3TextConfig(**{**kwargs, **overrides})


def random_model(config, seed: int = 0):
    """A transformers model of ``config`` with every weight random, norm weights too (around 1
    for Llama's ``w``, around 0 for Gemma's ``1 + w``), so that a norm mapped wrongly shows."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    norm_centre = 1.0 if config.model_type == "llama" else 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_centre + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 / p.shape[-1] ** 0.5))
    return model.eval()


def hf_folder(tmp_path: Path, arch: str, *, dtype=torch.float32, **config_kwargs) -> Path:
    """A checkpoint folder as ``save_pretrained`` writes it: config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json."""
    tokenizer = bpe_tokenizer(bos_in_template=arch == "gemma3")
    make = llama_config if arch == "llama" else gemma3_config
    model = random_model(make(len(tokenizer), **config_kwargs))
    folder = tmp_path / f"tiny-{arch}"
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def hf_reference(folder: Path):
    """transformers' own model and tokenizer of a folder, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def gguf_reference(path: Path):
    """transformers' own model and tokenizer of a GGUF file (dequantised to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def write_gguf(path: Path, model, tokenizer, *, arch: str) -> Path:
    """``model`` and ``tokenizer`` as llama.cpp's converter writes them (``arch`` ``"llama"``
    with a byte-level BPE vocabulary, ``"gemma3"`` with a sentencepiece one)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name(f"tiny {arch}")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "llama":
        writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        writer.add_rope_dimension_count(cfg.head_dim)
        _bpe_vocab(writer, tokenizer)
    else:
        writer.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_sliding_window(cfg.sliding_window)
        _spm_vocab(writer, tokenizer)
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    writer.add_pad_token_id(cfg.pad_token_id)
    writer.add_unk_token_id(3)

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        data = tensor.detach().to(torch.float32).numpy()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = n_heads if name.endswith("attn_q.weight") else n_kv
            data = _permute(data, heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0  # llama.cpp stores Gemma's norms as 1 + w
        if data.ndim == 1:
            writer.add_tensor(name, data.astype(np.float32))
            continue
        qtype = gguf.GGMLQuantizationType.Q8_0
        if ".attn_" in name or ".ffn_" in name:
            qtype = (
                gguf.GGMLQuantizationType.Q4_1
                if arch == "llama"
                else gguf.GGMLQuantizationType.Q5_0
            )
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` of q/k rows (transformers undoes it on reading)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _token_types(tokenizer, n: int) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [3 if i in special else 1 for i in range(n)]  # CONTROL / NORMAL


def _bpe_vocab(writer, tokenizer) -> None:
    """The byte-level BPE vocabulary, as SmolLM2's file holds it ('gpt2' model, merges)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(_token_types(tokenizer, len(tokens)))
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)


def _spm_vocab(writer, tokenizer) -> None:
    """A sentencepiece vocabulary, as Gemma 3's file holds it ('llama' model, no merges: the
    merges follow the order of the tokens): our BPE's tokens respelled with '\u2581' for a
    space, in merge order."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    byte_to_char = {c: b for b, c in _bytes_to_unicode().items()}
    tokens = []
    for token in sorted(vocab, key=vocab.__getitem__):
        if token.startswith("<") and token.endswith(">"):
            tokens.append(token)
            continue
        raw = bytes(byte_to_char[c] for c in token)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = f"<0x{raw[0]:02X}>" if len(raw) == 1 else f"<bad{len(tokens)}>"
        tokens.append(text.replace(" ", "\u2581") if text.strip() or not text else text)
    # unique spellings (a byte token and its character can collide)
    seen: set[str] = set()
    for i, t in enumerate(tokens):
        if t in seen:
            tokens[i] = f"<dup{i}>"
        seen.add(tokens[i])
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types(_token_types(tokenizer, len(tokens)))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def _bytes_to_unicode() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def gguf_file(tmp_path: Path, arch: str) -> tuple[Path, object]:
    """A GGUF file of a tiny random model, and that model (the weights before quantisation)."""
    tokenizer = bpe_tokenizer(bos_in_template=arch == "gemma3")
    if arch == "llama":
        model = random_model(llama_config(len(tokenizer), tie_word_embeddings=True))
    else:  # 6 layers: transformers' default sliding-window pattern makes layer 5 global
        model = random_model(gemma3_config(len(tokenizer), n_layers=6, layer_types=None))
    path = tmp_path / f"tiny-{arch}.Q4.gguf"
    return write_gguf(path, model, tokenizer, arch=arch), model


# ---------------------------------------------------------------------------------------------
# checks


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def check_logits(model: HookedTransformer, reference, ids: list[int], what: str) -> float:
    """TransformerLens' logits against transformers' on ``ids``; returns the relative error."""
    with torch.no_grad():
        mine = model(torch.tensor([ids]))[0]
    expected = hf_logits(reference, ids)
    err = rel_err(mine, expected)
    print(f"{what}: max |diff| {float((mine - expected).abs().max()):.3g}, relative {err:.3g}")
    assert_close(mine, expected, rtol=LOGITS_RTOL, what=what)
    return err


def check_tokenizer(model: HookedTransformer, reference_tokenizer) -> list[int]:
    """``model.to_tokens`` gives the reference tokenizer's ids and decodes back to the text."""
    ids = reference_tokenizer(TEXT)["input_ids"]
    assert model.to_tokens(TEXT)[0].tolist() == ids
    assert model.tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    # (ids, not the text: TransformerLens 3.9's to_str_tokens(str) breaks on any tokenizer whose
    # name_or_path contains "gemma", a 1-D hack meant for transformers 4)
    strings = model.to_str_tokens(torch.tensor(ids))
    assert "".join(s for s in strings if s != model.tokenizer.bos_token) == TEXT
    return ids


# ---------------------------------------------------------------------------------------------
# Hugging Face folders


@pytest.mark.parametrize("rope", ["default", "llama3"])
def test_llama_folder(tmp_path, rope):
    folder = hf_folder(tmp_path, "llama", rope=rope)
    model = load_model(folder, device="cpu")
    assert isinstance(model, HookedTransformer) and not model.training
    assert model.cfg.model_name == "tiny-llama"
    assert model.cfg.original_architecture == "LlamaForCausalLM"
    assert model.cfg.n_key_value_heads == 2 and model.cfg.dtype == torch.float32
    assert model.cfg.use_NTK_by_parts_rope == (rope == "llama3")
    reference, tokenizer = hf_reference(folder)
    # SmolLM2-style: the tokenizer adds no BOS, and neither does to_tokens
    assert not model.cfg.tokenizer_prepends_bos and not model.cfg.default_prepend_bos
    ids = check_tokenizer(model, tokenizer)
    check_logits(model, reference, ids, f"llama folder ({rope} rope)")
    # the same folder through a string path, and with a BOS asked for
    again = load_model(str(folder), device="cpu", default_prepend_bos=True)
    assert again.to_tokens(TEXT)[0].tolist() == [tokenizer.bos_token_id, *ids]


def test_gemma3_folder_bfloat16_checkpoint(tmp_path):
    folder = hf_folder(tmp_path, "gemma3", dtype=torch.bfloat16)
    model = load_model(folder, device="cpu")
    cfg = model.cfg
    assert cfg.original_architecture == "Gemma3ForCausalLM" and cfg.model_name == "tiny-gemma3"
    assert cfg.attn_types == ["local", "global", "local"] and cfg.window_size == 4
    assert cfg.attn_scale == pytest.approx(24**0.5) and cfg.use_qk_norm
    assert cfg.dtype == torch.float32  # the bfloat16 weights are upcast exactly
    reference, tokenizer = hf_reference(folder)
    assert cfg.tokenizer_prepends_bos and cfg.default_prepend_bos  # Gemma adds <bos> itself
    ids = check_tokenizer(model, tokenizer)
    assert ids[0] == tokenizer.bos_token_id and len(ids) > 3 * cfg.window_size
    check_logits(model, reference, ids, "gemma3 folder (bfloat16 checkpoint)")
    half = load_model(folder, device="cpu", dtype="bfloat16")
    assert half.cfg.dtype == torch.bfloat16 and half.W_E.dtype == torch.bfloat16


def test_gemma3_folder_linear_rope_and_softcap(tmp_path):
    """Gemma 3's linear RoPE scaling of the global layers (4B and larger use factor 8) and a
    final logit soft cap map too."""
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
    }
    folder = hf_folder(tmp_path, "gemma3", rope_parameters=rope, final_logit_softcapping=3.0)
    model = load_model(folder, device="cpu")
    assert model.cfg.rotary_scaling_factor == 8.0 and model.cfg.output_logits_soft_cap == 3.0
    reference, tokenizer = hf_reference(folder)
    ids = check_tokenizer(model, tokenizer)
    check_logits(model, reference, ids, "gemma3 folder (linear rope, soft cap)")


def test_config_mapping_matches_transformer_lens(tmp_path):
    """hf_to_tl_config gives the fields TransformerLens itself gives: for Gemma 3 its entries
    for google/gemma-3-270m and -1b (from those configs' values), for Llama its
    LlamaForCausalLM branch on a local folder (named so that no name branch catches it)."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    real = {
        "google/gemma-3-270m": gemma3_config(
            262144,
            n_layers=18,
            hidden_size=640,
            intermediate_size=2048,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=512,
            max_position_embeddings=32768,
            layer_types=None,
        ),
        "google/gemma-3-1b-pt": gemma3_config(
            262144,
            n_layers=26,
            hidden_size=1152,
            intermediate_size=6912,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=512,
            max_position_embeddings=32768,
            layer_types=None,
        ),
    }
    for name, config in real.items():
        theirs = convert_hf_model_config(name)
        mine = hf_to_tl_config(config)
        for key, value in theirs.items():
            if key in ("tokenizer_name", "quantization_method", "initializer_range"):
                continue
            if key == "attn_scale" or (key == "use_attn_scale" and value):
                continue
            assert mine.get(key, value) == value, (name, key, mine.get(key), value)
        assert mine["attn_scale"] == 16.0  # TransformerLens' default sqrt(d_head) = 16
    for rope in ("default", "llama3"):
        folder = (
            tmp_path / f"plain-{len(rope)}"
        )  # no "llama" in the path: TL would take it for a name
        llama_config(300, rope=rope).save_pretrained(folder)
        theirs = convert_hf_model_config(str(folder))
        from transformers import AutoConfig

        mine = hf_to_tl_config(AutoConfig.from_pretrained(folder))
        for key, value in theirs.items():
            if key in ("tokenizer_name", "quantization_method"):
                continue
            assert mine.get(key, value) == value, (rope, key, mine.get(key), value)


# ---------------------------------------------------------------------------------------------
# GGUF files


@needs_gguf
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_file(tmp_path, arch):
    path, original = gguf_file(tmp_path, arch)
    model = load_model(path, device="cpu")
    assert model.cfg.model_name == path.stem
    reference, tokenizer = gguf_reference(path)
    assert reference.config.quantization_config is not None  # what TransformerLens refuses
    ids = check_tokenizer(model, tokenizer)
    # the file's tokenizer is the one it was written from
    source = bpe_tokenizer(bos_in_template=arch == "gemma3")
    assert ids == source(TEXT)["input_ids"]
    check_logits(model, reference, ids, f"{arch} GGUF (dequantised)")
    # the file was quantised: its forward differs from the weights before quantisation
    quantisation = rel_err(hf_logits(reference, ids), hf_logits(original, ids))
    print(f"{arch} GGUF: quantisation changes the logits by {quantisation:.3g} (relative)")
    assert quantisation > 1e-4


@needs_gguf
def test_hf_model_read_from_gguf_passes_by_name(tmp_path, monkeypatch):
    """load_model(name, hf_model=<read from a GGUF file>) no longer stops at TransformerLens'
    refusal of the quantization_config: transformers has dequantised the weights already."""
    from transformer_lens.loading_from_pretrained import _refuse_unsupported_quantization

    path, _ = gguf_file(tmp_path, "llama")
    hf_model, tokenizer = gguf_reference(path)
    seen = []

    def fake(name, *, hf_model, tokenizer, **kwargs):
        hf_cfg = hf_model.config.to_dict()
        assert "quantization_config" not in hf_cfg  # what from_pretrained reads first
        built = load_model(path, device="cpu")
        _refuse_unsupported_quantization(built.cfg, hf_model)  # and what it checks later
        seen.append(name)
        return built

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", fake)
    load_model("meta-llama/Llama-3.2-1B", device="cpu", hf_model=hf_model, tokenizer=tokenizer)
    assert seen == ["meta-llama/Llama-3.2-1B"]
    assert hf_model.config.quantization_config is not None  # restored
    with without_gguf_quantization(hf_model):
        assert not hasattr(hf_model.config, "quantization_config")
    with without_gguf_quantization(None):  # no model: nothing to do
        pass


def test_gemma3_names_go_to_transformer_lens(monkeypatch):
    calls = []

    def fake(name, **kwargs):
        calls.append(name)
        raise OSError("offline")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", fake)
    for name, official in (
        ("gemma-3-270m", "google/gemma-3-270m"),
        ("google/gemma-3-1b-it", "google/gemma-3-1b-it"),
        ("gemma-3-4b-pt", "google/gemma-3-4b-pt"),
    ):
        with pytest.raises(ModelUnavailableError, match="load_model\\(FOLDER\\)"):
            load_model(name, device="cpu")
        assert calls[-1] == official


# ---------------------------------------------------------------------------------------------
# errors and what counts as a path


def test_what_counts_as_a_local_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_local_checkpoint("gemma-2-2b")
    assert not is_local_checkpoint("google/gemma-3-270m")
    assert is_local_checkpoint("model.gguf") and is_local_checkpoint("./x")
    assert is_local_checkpoint(tmp_path / "x") and is_local_checkpoint(str(tmp_path / "x"))
    (tmp_path / "gpt2").mkdir()  # an unrelated folder named like a model: the name wins
    assert not is_local_checkpoint("gpt2")
    (tmp_path / "gpt2" / "config.json").write_text("{}")  # a checkpoint folder: the folder wins
    assert is_local_checkpoint("gpt2")
    (tmp_path / "mine").mkdir()
    assert is_local_checkpoint("mine")


def test_missing_path(tmp_path):
    for missing in (tmp_path / "nope", str(tmp_path / "nope"), "nope.gguf", "./nope"):
        with pytest.raises(FileNotFoundError, match="does not exist; expected a Hugging Face"):
            load_model(missing, device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json \(save a transformers"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "a.gguf").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"it holds GGUF files: pass one of them \(a\.gguf\)"
    ):
        load_model(tmp_path, device="cpu")


def test_folder_without_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "no-tokenizer"
    AutoModelForCausalLM.from_config(llama_config(300)).save_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="has no usable tokenizer"):
        load_model(folder, device="cpu")
    tokenizer = bpe_tokenizer(bos_in_template=False)
    model = load_model(folder, device="cpu", tokenizer=tokenizer)
    assert model.tokenizer is tokenizer


def test_unsupported_architecture(tmp_path):
    from transformers import Gemma3Config, GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(
        tmp_path / "gpt"
    )
    with pytest.raises(
        ValueError, match=r"holds model_type 'gpt2' \(GPT2LMHeadModel\).*supported: Llama"
    ):
        load_model(tmp_path / "gpt", device="cpu")
    Gemma3Config().save_pretrained(tmp_path / "gemma-4b")
    with pytest.raises(ValueError, match="multimodal Gemma 3 checkpoint"):
        load_model(tmp_path / "gemma-4b", device="cpu")
    llama_config(300, attention_bias=True).save_pretrained(tmp_path / "biased")
    with pytest.raises(ValueError, match="attention_bias=True cannot be mapped"):
        load_model(tmp_path / "biased", device="cpu")
    rope = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}
    llama_config(300, rope_parameters=rope).save_pretrained(tmp_path / "yarn")
    with pytest.raises(ValueError, match=r"RoPE type 'yarn'.*supported: default, linear, llama3"):
        load_model(tmp_path / "yarn", device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a file but not a \.gguf file"):
        load_model(tmp_path / "weights.bin", device="cpu")


def test_unknown_keyword(tmp_path):
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) hf_model.*valid: .*n_ctx"):
        load_model(tmp_path, device="cpu", hf_model=object())


def test_unsupported_gguf_architecture(tmp_path):
    path = gguf_header(tmp_path / "qwen.gguf", "qwen2")
    with pytest.raises(ValueError, match=r"holds architecture 'qwen2'.*supported: Llama"):
        load_model(path, device="cpu")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="GGUF magic"):
        load_model(tmp_path / "fake.gguf", device="cpu")


def gguf_header(path: Path, architecture: str) -> Path:
    """A GGUF file with one metadata key, general.architecture, and no tensors (written by hand:
    the check needs no gguf package)."""
    key, value = b"general.architecture", architecture.encode()
    path.write_bytes(
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)  # version, tensors, metadata keys
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<IQ", 8, len(value))  # type STRING
        + value
    )
    return path


def test_gguf_without_the_gguf_package(tmp_path, monkeypatch):
    path = gguf_header(tmp_path / "model.gguf", "gemma3")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(
        ImportError, match=r"needs the 'gguf' package.*pip install 'sae-circuits\[gguf\]'"
    ):
        load_model(path, device="cpu")


def test_n_ctx_is_capped(tmp_path):
    config = llama_config(300, max_position_embeddings=131072)
    assert hf_to_tl_config(config)["n_ctx"] == MAX_N_CTX
    assert hf_to_tl_config(config, n_ctx=512)["n_ctx"] == 512


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_model_flag_takes_a_folder(tmp_path, capsys):
    """``sae-circuits attribute --model FOLDER`` loads the folder (cli.load_model_by_name is
    what --model goes through) and attributes with transcoders made for it."""
    from sae_circuits.cli import CLIError, load_model_by_name, main
    from sae_circuits.toy import tiny_transcoders

    folder = hf_folder(tmp_path, "llama")
    model = load_model_by_name(str(folder), device="cpu")
    assert model.cfg.model_name == "tiny-llama"
    with pytest.raises(CLIError, match="does not exist"):
        load_model_by_name(str(tmp_path / "nope"), device="cpu")
    tcs = tiny_transcoders(model, "relu", hooks=("mlp.hook_in", "mlp.hook_out"))
    for layer, tc in enumerate(tcs):
        tc.save_model(tmp_path / "tcs" / f"layer_{layer}")
    out = tmp_path / "out"
    code = main(
        [
            "attribute",
            TEXT,
            "--model",
            str(folder),
            "--transcoders",
            str(tmp_path / "tcs"),
            "--max-feature-nodes",
            "16",
            "-q",
            "-o",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr()
    graph = sc.AttributionGraph.load(out / "graph.zip")
    assert graph.metadata["model_name"] == "tiny-llama"
    assert graph.metadata["prompt"] == TEXT
