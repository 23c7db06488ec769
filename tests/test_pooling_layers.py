"""`pooling_layers`: the mean of the named layers' states, each through the final norm, pooled.
Checked against states captured by hand with forward hooks on the decoder layers (not through
`output_hidden_states`, whose last entry the code trusts to be normalised already), then saving,
loading, training through run.py, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from models import ARCHITECTURES

from conftest import TINY_DATA
from llm2vec import LLM2Vec
from llm2vec.gguf_export import to_gguf

TEXTS = ["A man is playing a guitar.", "Hi.", "Two dogs run through a field of tall grass."]


def hooked_reference(encoder: LLM2Vec, texts: list[str], layers: list[int]) -> np.ndarray:
    """Mean over text tokens of the mean over `layers` (1: the first decoder layer) of norm(layer output)."""
    base = encoder.model
    outputs = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for layer in base.layers]
    features = encoder.tokenize(texts)
    position_ids = (features["attention_mask"].cumsum(1) - 1).clamp(min=0)
    try:
        with torch.no_grad():
            base(input_ids=features["input_ids"], attention_mask=features["attention_mask"], position_ids=position_ids)
            states = torch.stack([base.norm(outputs[layer - 1]) for layer in layers]).mean(0)
    finally:
        for hook in hooks:
            hook.remove()
    weights = features["embed_mask"].float()
    return ((states * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)).numpy()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layers_are_averaged_after_the_final_norm(architecture):
    name = f"tiny-random-{architecture}"
    both = LLM2Vec.from_pretrained(name, pooling_layers=[1, -1])
    assert both.pooling_layers == [1, 2]
    got = both.encode(TEXTS)
    np.testing.assert_allclose(got, hooked_reference(both, TEXTS, [1, 2]), atol=1e-4, rtol=1e-4)
    first = LLM2Vec.from_pretrained(name, pooling_layers=1).encode(TEXTS)
    np.testing.assert_allclose(first, hooked_reference(both, TEXTS, [1]), atol=1e-4, rtol=1e-4)
    last = LLM2Vec.from_pretrained(name).encode(TEXTS)  # the default: the last layer
    np.testing.assert_allclose(last, hooked_reference(both, TEXTS, [2]), atol=1e-4, rtol=1e-4)
    assert np.abs(got - last).max() > 1e-3 and np.abs(first - last).max() > 1e-3


@pytest.mark.parametrize("pack", [False, True])
def test_several_layer_sets_from_one_pass_equal_each_set_pooled_alone(pack):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    features = encoder.tokenize(TEXTS, pack=pack)
    with torch.no_grad():
        last, first, both = encoder.pool_layer_sets(features, [[2], [1], [1, 2]])
    np.testing.assert_allclose(last.numpy(), encoder.encode(TEXTS), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(first.numpy(), hooked_reference(encoder, TEXTS, [1]), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(both.numpy(), hooked_reference(encoder, TEXTS, [1, 2]), atol=1e-4, rtol=1e-4)


def test_save_and_load_keep_the_layers_and_a_load_argument_overrides_them(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=[1])
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "encoder")
    assert json.loads((tmp_path / "encoder" / "llm2vec_config.json").read_text())["pooling_layers"] == [1]
    loaded = LLM2Vec.from_pretrained(str(tmp_path / "encoder"))
    assert loaded.pooling_layers == [1]
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-6)
    assert LLM2Vec.from_pretrained(str(tmp_path / "encoder"), pooling_layers=-1).pooling_layers == [2]


@pytest.mark.parametrize("layers", [3, -4, [1, 3], [], 1.5, True, "2", [None]])
def test_layers_outside_the_decoder_are_refused(layers):
    with pytest.raises(ValueError, match=r"pooling_layers must name layers from 0 \(the token embeddings\) to 2"):
        LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=layers)


def test_gguf_export_refuses_averaged_layers(tmp_path):
    with pytest.raises(ValueError, match=r"pooling_layers=\[1, 2\] to GGUF"):
        to_gguf(LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=[1, 2]), tmp_path / "e.gguf")


def test_simcse_trains_on_averaged_layers_and_the_run_dir_keeps_them(run_app, tmp_path):
    run_dir = tmp_path / "simcse"
    run_app("stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=2", "pooling_layers=[-2,-1]", run_dir=run_dir)
    assert json.loads((run_dir / "llm2vec_config.json").read_text())["pooling_layers"] == [1, 2]
    assert LLM2Vec.from_pretrained(str(run_dir)).pooling_layers == [1, 2]


def test_a_run_trained_on_the_last_layer_saves_an_encoder_that_reads_another(run_app, tmp_path):
    trained_on_last, read_at_first = tmp_path / "last", tmp_path / "first"
    common = ("stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=2")
    last_scores = run_app(*common, run_dir=trained_on_last)
    first_scores = run_app(*common, "saved_pooling_layers=[1]", run_dir=read_at_first)
    assert json.loads((read_at_first / "llm2vec_config.json").read_text())["pooling_layers"] == [1]
    # The same training (same seed, last layer) whichever layer is saved: the adapters are equal.
    first = LLM2Vec.from_pretrained(str(read_at_first)).encode(TEXTS)
    np.testing.assert_array_equal(first, LLM2Vec.from_pretrained(str(trained_on_last), pooling_layers=1).encode(TEXTS))
    assert np.abs(first - LLM2Vec.from_pretrained(str(trained_on_last)).encode(TEXTS)).max() > 1e-3
    # The run's own scores are the saved encoder's, read at layer 1.
    assert first_scores != last_scores
