"""experiments/layer_profile.py: one embedding per layer, the last one exactly the encoder's own."""

from __future__ import annotations

import torch

from llm2vec import LLM2Vec

from conftest import load_experiment

TEXTS = ["A man plays a guitar.", "Kids play.", "The river floods the village after the rain."]


def load_script():
    return load_experiment("layer_profile")


def test_the_last_layer_of_the_profile_is_the_encoders_embedding():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama").eval()
    layers = load_script().layer_embeddings(encoder, TEXTS, batch_size=2)
    assert layers.shape == (encoder.model.config.num_hidden_layers + 1, len(TEXTS), encoder.model.config.hidden_size)
    expected = encoder.encode(TEXTS, convert_to_tensor=True).float()
    assert torch.allclose(layers[-1], expected, atol=1e-4)
    assert not torch.allclose(layers[0], layers[-1], atol=1e-2)
    # Every layer as the encoder pools it when told to read that layer alone (final norm included).
    middle = LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=[1]).encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(layers[1], middle.float(), atol=1e-4)
    raw = load_script().layer_embeddings(encoder, TEXTS, batch_size=2, raw=True)
    assert torch.allclose(raw[-1], layers[-1]) and not torch.allclose(raw[1], layers[1], atol=1e-2)


def test_an_instruction_is_read_as_the_encoder_reads_it():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama").eval()
    pairs = [["Retrieve semantically similar text:", text] for text in TEXTS]
    layers = load_script().layer_embeddings(encoder, pairs, batch_size=2)
    assert torch.allclose(layers[-1], encoder.encode(pairs, convert_to_tensor=True).float(), atol=1e-4)
    plain = load_script().layer_embeddings(encoder, TEXTS, batch_size=2)
    assert not torch.allclose(layers[-1], plain[-1], atol=1e-3)
