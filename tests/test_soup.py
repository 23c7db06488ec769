"""Model soups (llm2vec.soup): the soup's weights are the mean of the encoders' weights at every
level of their adapter stacks, the soup is a saved encoder that loads and encodes, and encoders
that cannot be averaged are refused with a message naming why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from llm2vec import LLM2Vec
from llm2vec.encoder_files import EncoderFilesError
from llm2vec.soup import main, soup

BASE = "tiny-random-llama"
TEXTS = ["A man is playing a guitar.", "Two dogs run through a field.", "Hi."]


def _adapter(path, seed: int, rank: int = 4):
    """A LoRA adapter on BASE that changes the model (LoRA starts as a no-op), saved to `path`."""
    model = get_peft_model(LLM2Vec.from_pretrained(BASE).model,
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(std=0.3)
    model.save_pretrained(path)
    return path


def _encoder(tmp_path, name: str, seeds: list[int], **kwargs):
    """A saved encoder whose stack is one adapter per seed (all but the last merged)."""
    adapters = [_adapter(tmp_path / f"{name}-adapter{seed}", seed) for seed in seeds]
    return LLM2Vec.from_pretrained(BASE, peft_model_name_or_path=[str(a) for a in adapters], **kwargs).save(
        tmp_path / name)


def _merged_weights(encoder_dir) -> dict[str, torch.Tensor]:
    return LLM2Vec.from_pretrained(str(encoder_dir), merge_peft=True).model.state_dict()


def test_soup_weights_are_the_mean_of_the_encoders_weights(tmp_path):
    first = _encoder(tmp_path, "first", [1, 2])  # a merged adapter (MNTP, say) and the trained one
    second = _encoder(tmp_path, "second", [3, 4])
    out = soup([first, second], tmp_path / "soup")

    first_weights, second_weights, actual = _merged_weights(first), _merged_weights(second), _merged_weights(out)
    assert actual.keys() == first_weights.keys()
    for key, weight in actual.items():
        torch.testing.assert_close(weight, (first_weights[key] + second_weights[key]) / 2, atol=1e-5, rtol=1e-5)
    # the encoders differ where the adapters are, so the mean is neither of them
    differing = [key for key in actual if not torch.equal(first_weights[key], second_weights[key])]
    assert differing and all(("q_proj" in k or "v_proj" in k or "down_proj" in k) for k in differing)


def test_soup_of_an_encoder_with_itself_encodes_as_the_encoder(tmp_path):
    encoder_dir = _encoder(tmp_path, "encoder", [1, 2], pooling_mode="weighted_mean", max_length=16)
    out = soup([encoder_dir, encoder_dir], tmp_path / "soup")
    loaded = LLM2Vec.from_pretrained(str(out))
    assert (loaded.pooling_mode, loaded.max_length) == ("weighted_mean", 16)
    np.testing.assert_allclose(loaded.encode(TEXTS), LLM2Vec.from_pretrained(str(encoder_dir)).encode(TEXTS),
                               atol=1e-5)


def test_soup_averages_latent_attention_weights(tmp_path):
    dirs = []
    for value in (1.0, 3.0):
        encoder = LLM2Vec.from_pretrained(BASE, peft_model_name_or_path=str(_adapter(tmp_path / f"a{value}", 1)),
                                          pooling_mode="latent_attention")
        with torch.no_grad():
            encoder.pooling.latent.latents.fill_(value)
        dirs.append(encoder.save(tmp_path / f"encoder{value}"))
    main([str(d) for d in dirs] + ["--out", str(tmp_path / "soup")])
    loaded = LLM2Vec.from_pretrained(str(tmp_path / "soup"))
    assert torch.all(loaded.pooling.latent.latents == 2.0)


def test_soup_refuses_what_it_cannot_average(tmp_path):
    mean = _encoder(tmp_path, "mean", [1])
    eos = _encoder(tmp_path, "eos", [2], pooling_mode="eos_token")
    deeper = _encoder(tmp_path, "deeper", [1, 2])
    with pytest.raises(ValueError, match="at least 2 encoders"):
        soup([mean], tmp_path / "out")
    with pytest.raises(ValueError, match="pooling_mode 'eos_token' vs 'mean'"):
        soup([mean, eos], tmp_path / "out")
    with pytest.raises(ValueError, match=r"one depth of at least 1 \(got \[1, 2\]\)"):
        soup([mean, deeper], tmp_path / "out")
    with pytest.raises(EncoderFilesError, match="not a saved encoder"):
        soup([mean, tmp_path / "mean-adapter1"], tmp_path / "out")
    full = LLM2Vec.from_pretrained(BASE)
    full.weights_trained = True  # as full fine-tuning (lora: null) leaves it: saved with its whole decoder
    full = full.save(tmp_path / "full")
    with pytest.raises(ValueError, match="fully fine-tuned"):
        soup([full, full], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_level_every_encoder_shares_is_kept_as_it_is(tmp_path):
    shared = _adapter(tmp_path / "shared", 1)  # the MNTP run that SimCSE runs on different data start from
    encoders = [LLM2Vec.from_pretrained(BASE, peft_model_name_or_path=[str(shared), str(_adapter(tmp_path / f"a{seed}", seed))],
                                        pooling_layers=[1]).save(tmp_path / f"encoder{seed}") for seed in (2, 3)]
    out = soup(encoders, tmp_path / "soup")

    kept = out / "merged_adapters" / "00" / "adapter_model.safetensors"
    assert kept.read_bytes() == (shared / "adapter_model.safetensors").read_bytes()  # not a rank-doubled copy
    first, second, actual = (_merged_weights(d) for d in (*encoders, out))
    for key, weight in actual.items():
        torch.testing.assert_close(weight, (first[key] + second[key]) / 2, atol=1e-5, rtol=1e-5)
    assert LLM2Vec.from_pretrained(str(out)).pooling_layers == [1]  # read where the encoders were


def test_soup_refuses_encoders_pooling_other_layers(tmp_path):
    adapter = str(_adapter(tmp_path / "adapter", 1))
    layer1, last = (LLM2Vec.from_pretrained(BASE, peft_model_name_or_path=adapter, pooling_layers=layers).save(
        tmp_path / f"encoder{layers}") for layers in ([1], None))
    # the last of the tiny model's 2 layers, saved as a number
    with pytest.raises(ValueError, match=r"pooling_layers \[2\] vs \[1\]"):
        soup([layer1, last], tmp_path / "out")


def test_an_encoder_saved_before_pooling_layers_were_saved_pools_the_last_layer_like_one_naming_it(tmp_path):
    adapter = str(_adapter(tmp_path / "adapter", 1))
    old, new = (LLM2Vec.from_pretrained(BASE, peft_model_name_or_path=adapter).save(tmp_path / name)
                for name in ("old", "new"))
    config = json.loads((old / "llm2vec_config.json").read_text())
    assert config.pop("pooling_layers") == [2]  # the tiny model's last layer
    (old / "llm2vec_config.json").write_text(json.dumps(config))
    assert LLM2Vec.from_pretrained(str(soup([old, new], tmp_path / "soup"))).pooling_layers == [2]
