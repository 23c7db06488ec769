"""GGUF export: the file holds llama.cpp's metadata for the architecture, non-causal attention, the
pooling type, the tokenizer and every weight of the encoder (adapters merged), equal after
dequantisation and after undoing the rotary row order."""

from __future__ import annotations

import copy

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from llm2vec import LLM2Vec
from llm2vec.export import main as export_main
from llm2vec.gguf_export import llama_cpp_layout, to_gguf, transformers_layout
from llm2vec.loading import SHIPPED_MODELS, load_decoder

# How far a dequantised weight may be from the float32 one, relative to the largest |weight| of its row.
TOLERANCE = {"f32": 0.0, "f16": 1e-3, "bf16": 8e-3, "q8_0": 8e-3}


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, tensors dequantised to float32 in the GGUF's own layout)."""
    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
               for t in reader.tensors}
    types = {t.name: t.tensor_type for t in reader.tensors}
    return fields, tensors, types


def assert_weights_equal(model, tensors: dict[str, np.ndarray], type: str) -> None:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA_EMBED, model.config.num_hidden_layers)
    state = model.state_dict()
    assert len(tensors) == len(state)
    for hf_name, weight in state.items():
        expected = weight.float().numpy()
        got = transformers_layout(hf_name, tensors[names.get_name(f"model.{hf_name}", try_suffixes=(".weight",))],
                                  model.config)
        assert got.shape == expected.shape, hf_name
        scale = np.abs(expected).max(axis=-1, keepdims=True) if expected.ndim > 1 else 0
        assert np.all(np.abs(got - expected) <= TOLERANCE[type] * scale), hf_name


@pytest.mark.parametrize("type", ["f32", "f16", "bf16", "q8_0"])
def test_tiny_llama_round_trip(tmp_path, type):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="mean", max_length=128)
    path = to_gguf(encoder, tmp_path / "tiny.gguf", type=type)
    fields, tensors, types = read(path)

    assert fields["general.architecture"] == "llama-embed"
    assert fields["llama-embed.attention.causal"] is False
    assert fields["llama-embed.pooling_type"] == gguf.PoolingType.MEAN
    assert fields["llama-embed.block_count"] == 2 and fields["llama-embed.embedding_length"] == 64
    assert fields["llama-embed.attention.head_count"] == 4 and fields["llama-embed.attention.head_count_kv"] == 2
    assert fields["llama-embed.rope.freq_base"] == 10000.0
    assert (fields["llm2vec.pooling_mode"], fields["llm2vec.max_length"], fields["llm2vec.echo"]) == ("mean", 128, False)
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == 49152
    assert fields["tokenizer.ggml.add_bos_token"] is encoder._adds_bos
    assert "output.weight" not in tensors  # the bare decoder: llama.cpp ties the output to the embedding

    matrix = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[type]
    assert types["blk.0.attn_q.weight"].name == matrix and types["blk.0.attn_norm.weight"].name == "F32"
    assert_weights_equal(encoder.model, tensors, type)


def test_rotary_layout_round_trips_and_reorders_rows():
    model, _ = load_decoder("tiny-random-llama")
    q = model.state_dict()["layers.0.self_attn.q_proj.weight"].numpy()
    k = model.state_dict()["layers.0.self_attn.k_proj.weight"].numpy()
    for name, weight in (("layers.0.self_attn.q_proj.weight", q), ("layers.0.self_attn.k_proj.weight", k)):
        moved = llama_cpp_layout(name, weight, model.config)
        assert not np.array_equal(moved, weight)
        np.testing.assert_array_equal(transformers_layout(name, moved, model.config), weight)
    # llama.cpp pairs dimensions (2i, 2i+1) of a head: row 1 of head 0 is transformers' row head_dim/2.
    head_dim = model.config.head_dim
    np.testing.assert_array_equal(llama_cpp_layout("layers.0.self_attn.q_proj.weight", q, model.config)[1], q[head_dim // 2])


def test_adapters_are_merged_and_causal_flag_follows_the_encoder(tmp_path):
    model, tokenizer = load_decoder("tiny-random-llama")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    encoder = LLM2Vec(get_peft_model(model, lora), tokenizer, pooling_mode="last_token",
                      base_model_name_or_path="tiny-random-llama")
    fields, tensors, _ = read(to_gguf(encoder, tmp_path / "lora.gguf", type="f32"))
    assert fields["llama-embed.pooling_type"] == gguf.PoolingType.LAST
    expected = copy.deepcopy(encoder.model).merge_and_unload()
    base, _ = load_decoder("tiny-random-llama")
    assert_weights_equal(expected, tensors, "f32")
    base_q = base.state_dict()["layers.0.self_attn.q_proj.weight"].numpy()
    got_q = transformers_layout("layers.0.self_attn.q_proj.weight", tensors["blk.0.attn_q.weight"], base.config)
    assert np.abs(got_q - base_q).max() > 1e-3  # the adapter changed the exported weights

    encoder.set_bidirectional(False)
    fields, _, _ = read(to_gguf(encoder, tmp_path / "causal.gguf", type="f32", arch="llama"))
    assert fields["general.architecture"] == "llama" and fields["llama.attention.causal"] is True


def test_refuses_what_llama_cpp_cannot_run_the_same(tmp_path):
    with pytest.raises(ValueError, match="gemma3_text.*sliding-window"):
        to_gguf(LLM2Vec.from_pretrained("tiny-random-gemma3_text"), tmp_path / "g.gguf")
    with pytest.raises(ValueError, match="latent_attention"):
        to_gguf(LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="latent_attention"), tmp_path / "l.gguf")
    llama = LLM2Vec.from_pretrained("tiny-random-llama")
    with pytest.raises(ValueError, match="unknown GGUF type 'q4_0'"):
        to_gguf(llama, tmp_path / "q.gguf", type="q4_0")
    llama.base_model_name_or_path = "some-org/some-model"
    with pytest.raises(ValueError, match="tokenizer_gguf"):
        to_gguf(llama, tmp_path / "t.gguf")


def test_command_line_exports_a_saved_encoder(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="eos_token")
    encoder.save(tmp_path / "saved")
    export_main(["gguf", str(tmp_path / "saved"), str(tmp_path / "cli.gguf"), "--type", "q8_0"])
    fields, tensors, types = read(tmp_path / "cli.gguf")
    assert fields["llm2vec.pooling_mode"] == "eos_token" and types["blk.1.ffn_down.weight"].name == "Q8_0"
    assert_weights_equal(encoder.model, tensors, "q8_0")


@pytest.mark.slow
def test_smollm2_round_trip(tmp_path):
    encoder = LLM2Vec.from_pretrained("smollm2-135m", dtype=torch.float32)
    fields, tensors, _ = read(to_gguf(encoder, tmp_path / "smollm2.gguf", type="bf16"))
    shipped = gguf.GGUFReader(SHIPPED_MODELS["smollm2-135m"].gguf_path()).fields
    assert fields["tokenizer.ggml.merges"] == shipped["tokenizer.ggml.merges"].contents()
    assert fields["llama-embed.block_count"] == 30 and fields["llama-embed.attention.causal"] is False
    assert_weights_equal(encoder.model, tensors, "bf16")
