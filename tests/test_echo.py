"""Echo embeddings: the text twice under causal attention, pooled over the second copy only."""

import torch

from llm2vec import LLM2Vec


def test_echo_pools_the_second_copy_of_the_text(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", enable_bidirectional=False, echo=True)
    text = "the quick brown fox jumps"
    ids = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    features = encoder.tokenize([text])
    assert features["input_ids"][0].tolist()[-2 * len(ids):] == ids + ids
    assert features["embed_mask"][0].tolist()[-2 * len(ids):] == [0] * len(ids) + [1] * len(ids)

    with torch.no_grad():
        hidden = encoder.model(input_ids=features["input_ids"]).last_hidden_state[0]
    expected = hidden[-len(ids):].mean(dim=0)
    got = torch.from_numpy(encoder.encode([text]))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The second copy has seen the whole text once: it differs from plain causal mean pooling.
    plain = LLM2Vec.from_pretrained("tiny-random-llama", enable_bidirectional=False).encode([text])[0]
    assert not torch.allclose(got, torch.from_numpy(plain), atol=1e-4)

    encoder.save(tmp_path / "echo")
    restored = LLM2Vec.from_pretrained(tmp_path / "echo")
    assert restored.echo and not restored.bidirectional
    torch.testing.assert_close(torch.from_numpy(restored.encode([text]))[0], got)


def test_echo_truncates_each_copy_to_half_the_room():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", enable_bidirectional=False, echo=True, max_length=16)
    features = encoder.tokenize(["word " * 40])
    assert features["input_ids"].shape[1] <= 16
    assert int(features["embed_mask"].sum()) == 8
