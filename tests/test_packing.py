"""Padding-free (packed) batches: texts share rows, yet every embedding and every gradient equals
the padded batch's, for every architecture, attention implementation and pooling mode; rows hold
several texts; packing is refused where it cannot be right."""

from __future__ import annotations

import pytest
import torch
from models import ARCHITECTURES, UNSUPPORTED
from peft import LoraConfig, get_peft_model

from llm2vec import LLM2Vec
from llm2vec.packing import first_fit_rows

ITEMS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass while a child watches from the fence.",
    "Hi.",
    ["Retrieve semantically similar text:", "A woman slices an onion."],
    "The stock market fell sharply on Tuesday after the central bank raised interest rates again.",
    "",
    "Cats sleep.",
]


def _encoder(arch: str, attention: str, pooling_mode: str = "mean") -> LLM2Vec:
    if (arch, attention) in UNSUPPORTED:
        pytest.skip(UNSUPPORTED[(arch, attention)])
    torch.manual_seed(0)
    return LLM2Vec.from_pretrained(f"tiny-random-{arch}", attn_implementation=attention, pooling_mode=pooling_mode)


def test_first_fit_rows_fill_rows_as_long_as_the_longest_text():
    rows = first_fit_rows([5, 2, 3, 1, 4, 5])
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert rows == [[0], [5], [4, 3], [2, 1]]  # longest first, each into the first row with room
    assert all(sum([5, 2, 3, 1, 4, 5][i] for i in row) <= 5 for row in rows)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_embeddings_equal_padded_ones(arch, attention):
    encoder = _encoder(arch, attention).eval()
    padded, packed = encoder.tokenize(ITEMS), encoder.tokenize(ITEMS, pack=True)
    assert len(packed["input_ids"]) < len(ITEMS)  # texts really share rows
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    with torch.no_grad():
        torch.testing.assert_close(encoder(packed), encoder(padded), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling_mode", ["weighted_mean", "eos_token", "last_token", "bos_token", "latent_attention"])
def test_every_pooling_mode_reads_packed_texts_like_padded_ones(pooling_mode):
    encoder = _encoder("llama", "sdpa", pooling_mode).eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(encoder.tokenize(ITEMS, pack=True)), encoder(encoder.tokenize(ITEMS)),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_gradients_equal_padded_ones(attention):
    encoder = _encoder("qwen2", attention).eval()  # eval: no dropout, so both passes are deterministic
    encoder.model = get_peft_model(encoder.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    gradients = []
    for pack in (False, True):
        encoder.model.zero_grad()
        embeddings = encoder(encoder.tokenize(ITEMS, pack=pack))
        (embeddings.square().sum() + embeddings[0] @ embeddings[1]).backward()
        gradients.append({n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.requires_grad})
    assert gradients[0] and gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_packing_is_refused_without_bidirectional_attention():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", enable_bidirectional=False)
    assert not encoder.can_pack
    with pytest.raises(ValueError, match="packed sequences need bidirectional attention"):
        encoder.tokenize(ITEMS, pack=True)


@pytest.mark.slow
def test_packed_smollm2_embeddings_equal_padded_ones():
    encoder = LLM2Vec.from_pretrained("smollm2-135m").eval()
    with torch.no_grad():
        packed = encoder(encoder.tokenize(ITEMS, pack=True))
        padded = encoder(encoder.tokenize(ITEMS))
    real = [i for i, item in enumerate(ITEMS) if item]  # the empty text pools to zeros either way
    cosine = torch.nn.functional.cosine_similarity(packed[real], padded[real])
    assert cosine.min() > 0.9999
    assert torch.equal(packed[ITEMS.index("")], torch.zeros_like(packed[0]))
