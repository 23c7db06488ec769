"""experiments/token_weighting.py: the weights follow token frequency, and weighted pooling is mean
pooling with those weights."""

from __future__ import annotations

import numpy as np
import torch

from llm2vec import LLM2Vec

from conftest import load_experiment

TEXTS = ["the cat sat on the mat", "a dog", "stocks fell sharply on monday"]


def load_script():
    return load_experiment("token_weighting")


def test_rarer_tokens_weigh_more():
    script = load_script()
    ways = script.weightings(np.array([1000.0, 10.0, 0.0]))
    assert np.array_equal(ways["mean"], np.ones(3))
    for name in ("sif_a0.01", "sif_a0.001", "sif_a0.0001", "idf"):
        assert ways[name][0] < ways[name][1] < ways[name][2], name
    assert ways["sif_a0.01"][2] == 1.0  # an unseen token keeps its full weight


def test_token_counts_count_the_corpus():
    script = load_script()
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    counts = script.token_counts(encoder.tokenizer, ["the cat", "the"])
    the = encoder.tokenizer("the", add_special_tokens=False)["input_ids"]
    assert counts.shape == (len(encoder.tokenizer),)
    assert counts.sum() == len(encoder.tokenizer(["the cat"], add_special_tokens=False)["input_ids"][0]) + len(the)
    assert counts[the[0]] >= 2


def test_weighted_pooling_is_mean_pooling_reweighed():
    script = load_script()
    encoder = LLM2Vec.from_pretrained("tiny-random-llama").eval()
    vocab = len(encoder.tokenizer)
    plain = script.embed(encoder, TEXTS, {"mean": np.ones(vocab)})["mean"]
    assert np.allclose(plain, encoder.encode(TEXTS), atol=1e-5)
    # all the weight on one token: the pooled vector is that token's state, unlike the plain mean
    ids = encoder.tokenize(TEXTS[:1])
    text_ids = ids["input_ids"][0][ids["embed_mask"][0].bool()]
    only = np.zeros(vocab)
    only[int(text_ids[1])] = 1.0
    weighted = script.embed(encoder, TEXTS[:1], {"only": only})["only"]
    features = encoder.tokenize(TEXTS[:1])
    with torch.inference_mode():
        states = encoder.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
    positions = features["input_ids"][0] == text_ids[1]  # the token may occur more than once
    assert np.allclose(weighted[0], states[0, positions].mean(dim=0).float().numpy(), atol=1e-5)
    assert not np.allclose(weighted[0], plain[0], atol=1e-3)


def test_one_forward_pass_a_batch_serves_every_weighting():
    script = load_script()
    encoder = LLM2Vec.from_pretrained("tiny-random-llama").eval()
    vocab = len(encoder.tokenizer)
    rare = np.linspace(0.1, 2.0, vocab)
    calls = []
    counter = encoder.model.register_forward_hook(lambda *args: calls.append(1))
    both = script.embed(encoder, TEXTS, {"mean": np.ones(vocab), "rare": rare}, batch_size=2)
    counter.remove()
    assert len(calls) == 2  # 3 texts in batches of 2: two passes for both weightings
    assert np.allclose(both["mean"], encoder.encode(TEXTS), atol=1e-5)
    assert np.allclose(both["rare"], script.embed(encoder, TEXTS, {"rare": rare})["rare"], atol=1e-6)
    assert not np.allclose(both["rare"], both["mean"], atol=1e-3)
    assert not encoder.pooling._forward_hooks  # the catching hook is removed
