"""sentence-transformers export: `SentenceTransformer(path, trust_remote_code=True)` loads the encoder
bidirectional, with the same pooling (instructions included), and gives the same embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

sentence_transformers = pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402

from llm2vec import LLM2Vec  # noqa: E402
from llm2vec.export import to_sentence_transformers  # noqa: E402
from llm2vec.loading import load_decoder  # noqa: E402

TEXTS = [
    "A man is playing a guitar.",
    "Short.",
    "The quick brown fox jumps over the lazy dog near the bank of the river.",
    "Stocks fell sharply on Monday after the report.",
]
INSTRUCTION = "Retrieve semantically similar text:"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_same_embeddings(encoder: LLM2Vec, loaded: SentenceTransformer) -> None:
    assert cosines(encoder.encode(TEXTS), loaded.encode(TEXTS)).min() >= 0.999
    with_instruction = encoder.encode([[INSTRUCTION, t] for t in TEXTS])
    assert cosines(with_instruction, loaded.encode(TEXTS, prompt=INSTRUCTION)).min() >= 0.999


def test_export_loads_bidirectional_with_the_same_embeddings(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="mean")
    path = to_sentence_transformers(encoder, tmp_path / "st")
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["llm2vec.export.LLM2VecModule"]

    loaded = SentenceTransformer(str(path), trust_remote_code=True, device="cpu")
    assert loaded[0].encoder.bidirectional and loaded[0].encoder.pooling_mode == "mean"
    assert loaded.get_embedding_dimension() == 64
    assert_same_embeddings(encoder, loaded)
    # The check has teeth: the causal model embeds these texts differently.
    encoder.set_bidirectional(False)
    assert cosines(encoder.encode(TEXTS), loaded.encode(TEXTS)).min() < 0.99


def test_export_keeps_averaged_pooling_layers(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=[1, 2])
    loaded = SentenceTransformer(str(to_sentence_transformers(encoder, tmp_path / "st")), trust_remote_code=True,
                                 device="cpu")
    assert loaded[0].encoder.pooling_layers == [1, 2]
    assert_same_embeddings(encoder, loaded)


def test_adapters_are_merged_and_pooling_weights_kept(tmp_path):
    model, tokenizer = load_decoder("tiny-random-llama")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    encoder = LLM2Vec(get_peft_model(model, lora), tokenizer, pooling_mode="latent_attention",
                      base_model_name_or_path="tiny-random-llama")
    torch.nn.init.normal_(encoder.pooling.latent.latents)  # not the initial values a fresh load would give
    bidirectional = encoder.encode(TEXTS)
    encoder.set_bidirectional(False)
    assert cosines(bidirectional, encoder.encode(TEXTS)).min() < 0.99  # attention through peft is switched
    encoder.set_bidirectional(True)
    path = to_sentence_transformers(encoder, tmp_path / "st")
    assert (path / "pooling.pt").is_file()
    assert isinstance(encoder.model, PeftModel)  # the encoder keeps its trainable adapter

    loaded = SentenceTransformer(str(path), trust_remote_code=True, device="cpu")
    assert not isinstance(loaded[0].encoder.model, PeftModel)
    assert loaded[0].encoder.pooling_mode == "latent_attention"
    assert_same_embeddings(encoder, loaded)


def test_loading_runs_llm2vec_code_only_when_trusted(tmp_path):
    path = to_sentence_transformers(LLM2Vec.from_pretrained("tiny-random-llama"), tmp_path / "st")
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(path), device="cpu")


@pytest.mark.slow
def test_smollm2_export_round_trip(tmp_path):
    encoder = LLM2Vec.from_pretrained("smollm2-135m", pooling_mode="mean", dtype="bfloat16")
    path = to_sentence_transformers(encoder, tmp_path / "st")
    loaded = SentenceTransformer(str(path), trust_remote_code=True, device="cpu")
    assert loaded[0].encoder.dtype == torch.bfloat16 and loaded[0].encoder.bidirectional
    assert_same_embeddings(encoder, loaded)
