"""`pooling_layers=k`: the mean of the last k layers' states, each through the final norm, pooled.
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


def hooked_reference(encoder: LLM2Vec, texts: list[str], count: int) -> np.ndarray:
    """Mean over text tokens of mean over the last `count` layers of norm(layer output)."""
    base = encoder.model
    outputs = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for layer in base.layers]
    features = encoder.tokenize(texts)
    position_ids = (features["attention_mask"].cumsum(1) - 1).clamp(min=0)
    try:
        with torch.no_grad():
            base(input_ids=features["input_ids"], attention_mask=features["attention_mask"], position_ids=position_ids)
            states = torch.stack([base.norm(state) for state in outputs[-count:]]).mean(0)
    finally:
        for hook in hooks:
            hook.remove()
    weights = features["embed_mask"].float()
    return ((states * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)).numpy()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_last_two_layers_are_averaged_after_the_final_norm(architecture):
    encoder = LLM2Vec.from_pretrained(f"tiny-random-{architecture}", pooling_layers=2)
    got = encoder.encode(TEXTS)
    np.testing.assert_allclose(got, hooked_reference(encoder, TEXTS, 2), atol=1e-4, rtol=1e-4)
    # One layer is the plain last layer, and the average differs from it.
    last = LLM2Vec.from_pretrained(f"tiny-random-{architecture}").encode(TEXTS)
    np.testing.assert_allclose(last, hooked_reference(encoder, TEXTS, 1), atol=1e-4, rtol=1e-4)
    assert np.abs(got - last).max() > 1e-3


def test_save_and_load_keep_the_layers_and_a_load_argument_overrides_them(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=2)
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "encoder")
    assert json.loads((tmp_path / "encoder" / "llm2vec_config.json").read_text())["pooling_layers"] == 2
    loaded = LLM2Vec.from_pretrained(str(tmp_path / "encoder"))
    assert loaded.pooling_layers == 2
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-6)
    assert LLM2Vec.from_pretrained(str(tmp_path / "encoder"), pooling_layers=1).pooling_layers == 1


@pytest.mark.parametrize("count", [0, 3, 1.5, True, "2"])
def test_layer_counts_outside_the_decoder_are_refused(count):
    with pytest.raises(ValueError, match="pooling_layers must be a whole number from 1 to the decoder's 2 layers"):
        LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=count)


def test_gguf_export_refuses_averaged_layers(tmp_path):
    with pytest.raises(ValueError, match="pooling_layers=2 to GGUF"):
        to_gguf(LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=2), tmp_path / "e.gguf")


def test_simcse_trains_on_averaged_layers_and_the_run_dir_keeps_them(run_app, tmp_path):
    run_dir = tmp_path / "simcse"
    run_app("stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=2", "pooling_layers=2", run_dir=run_dir)
    assert json.loads((run_dir / "llm2vec_config.json").read_text())["pooling_layers"] == 2
    assert LLM2Vec.from_pretrained(str(run_dir)).pooling_layers == 2
