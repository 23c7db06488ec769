"""An exported encoder run by llama.cpp (`LlamaCppEncoder`) gives the embeddings `LLM2Vec.encode`
gives: the same tokens, the same pooled tokens (instructions attended to, never pooled), zero
vectors for empty texts, and the parity targets on STS-B for the exported SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from llm2vec import LLM2Vec  # noqa: E402
from llm2vec.evaluation.sts import read_sts_tsv  # noqa: E402
from llm2vec.gguf_export import to_gguf  # noqa: E402
from llm2vec.llama_cpp_encoder import LlamaCppEncoder  # noqa: E402
from llm2vec.loading import SHIPPED_MODELS  # noqa: E402

DATA = Path(os.environ.get("LLM2VEC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
INSTRUCTION = "Retrieve semantically similar text:"
TEXTS = [
    "A man is playing a guitar.",
    "Short.",
    "The quick brown fox jumps over the lazy dog near the bank of the river.",
    "Stocks fell sharply on Monday after the report.",
]
ITEMS = TEXTS + [[INSTRUCTION, t] for t in TEXTS[:2]] + ["", [INSTRUCTION, ""]]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_matches(encoder: LLM2Vec, runtime: LlamaCppEncoder, items, minimum: float = 0.9999) -> None:
    expected, got = encoder.encode(items), runtime.encode(items)
    assert got.shape == expected.shape and got.dtype == np.float32
    empty = ~np.any(expected, axis=1)
    np.testing.assert_array_equal(empty, ~np.any(got, axis=1))  # empty texts give zero vectors in both
    assert cosines(expected[~empty], got[~empty]).min() >= minimum


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "eos_token", "last_token", "bos_token"])
def test_tiny_llama_gives_the_encoders_embeddings(tmp_path, mode):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode=mode, max_length=12)  # truncates one text
    runtime = LlamaCppEncoder(to_gguf(encoder, tmp_path / "tiny.gguf", type="f32"))
    assert runtime.token_ids(ITEMS) == encoder._token_ids(ITEMS)
    assert_matches(encoder, runtime, ITEMS)
    runtime.close()


def test_attention_is_bidirectional_in_both_architectures(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    for arch in ("llama-embed", "llama"):
        assert_matches(encoder, LlamaCppEncoder(to_gguf(encoder, tmp_path / f"{arch}.gguf", type="f32", arch=arch)), ITEMS)
    # The check has teeth: a causal export embeds the texts differently.
    encoder.set_bidirectional(False)
    causal = LlamaCppEncoder(to_gguf(encoder, tmp_path / "causal.gguf", type="f32"))
    encoder.set_bidirectional(True)
    assert cosines(encoder.encode(TEXTS), causal.encode(TEXTS)).min() < 0.99


def test_batches_single_strings_and_refusals(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    path = to_gguf(encoder, tmp_path / "tiny.gguf", type="f32")
    small = LlamaCppEncoder(path, max_batch_tokens=24, max_batch_texts=2)  # several batches, each text alone or in pairs
    assert_matches(encoder, small, ITEMS)
    vector = small.encode(TEXTS[0])
    assert vector.shape == (64,)
    np.testing.assert_allclose(np.linalg.norm(small.encode(TEXTS, normalize_embeddings=True), axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="max_batch_tokens=24"):
        small.encode(["word " * 40])
    with pytest.raises(TypeError, match="item 0"):
        small.encode([3])
    with pytest.raises(ValueError, match="llm2vec.pooling_mode"):
        LlamaCppEncoder(SHIPPED_MODELS["smollm2-135m"].gguf_path())


@pytest.mark.slow
def test_smollm2_parity_on_stsb(tmp_path):
    """Against the fp32 encoder on STS-B test sentences. f16 meets the targets (mean cosine >= 0.999,
    min >= 0.99). bf16 and q8_0 round the activations of every matmul too (to bf16, to 8 bits a
    block of 32), and the untrained SmolLM2's embeddings are fragile (STS-B Spearman 16): bf16 stays
    about as close as torch's own bf16 autocast, q8_0 within 0.99 on average (see README)."""
    pairs = read_sts_tsv(DATA / "sts" / "STSB-test.tsv")
    sentences = (pairs.sentences1 + pairs.sentences2)[::23]  # 120 sentences
    encoder = LLM2Vec.from_pretrained("smollm2-135m", dtype=torch.float32)
    expected = encoder.encode(sentences)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch_bf16 = cosines(expected, encoder.encode(sentences))
    items = [[INSTRUCTION, s] for s in sentences[:20]] + ["", [INSTRUCTION, ""]]
    expected_items = encoder.encode(items)
    # bf16's worst sentence may round either way by a little: on an AVX2 AMD EPYC llama.cpp's was
    # 0.926 against torch's 0.929 (means 0.9985 against 0.9966); on AMX Xeons it was the closer.
    targets = {"f16": (0.999, 0.99), "bf16": (torch_bf16.mean(), torch_bf16.min() - 0.01), "q8_0": (0.985, 0.8)}
    for type, (mean, minimum) in targets.items():
        runtime = LlamaCppEncoder(to_gguf(encoder, tmp_path / f"{type}.gguf", type=type))
        if type == "f16":
            assert runtime.token_ids(sentences) == encoder._token_ids(sentences)  # the real vocabulary
        similarity = cosines(expected, runtime.encode(sentences))
        assert similarity.mean() >= mean and similarity.min() >= minimum, (type, similarity.mean(), similarity.min())
        got_items = runtime.encode(items)
        assert cosines(expected_items[:20], got_items[:20]).mean() >= mean
        assert not np.any(got_items[20:])
        runtime.close()
