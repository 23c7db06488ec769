"""The LLM2Vec encoder API: embeddings equal a plain reference computed here, `encode` keeps input
order and returns float32, instructions are attended to but not pooled, `save` + `from_pretrained`
restore the same encoder (pooling, max length, attention, peft adapters, latent-attention weights),
and bad input gives one clear message."""

from __future__ import annotations

import logging

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from models import ARCHITECTURES
from peft import LoraConfig, get_peft_model

from llm2vec import LLM2Vec
from llm2vec.loading import load_decoder

TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass while a child watches from the fence.",
    "Hi.",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates again.",
    "A woman slices an onion.",
]
INSTRUCTION = "Retrieve semantically similar text:"


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def reference_embeddings(name: str, items: list, **hf_kwargs) -> np.ndarray:
    """Mean over text tokens of a plain eager forward pass whose 4D mask, built here by hand, lets
    every token see every real token. The model is never made bidirectional: only the mask is."""
    model, tokenizer = load_decoder(name, attn_implementation="eager", **hf_kwargs)
    model.eval()
    bos = tokenizer("a")["input_ids"][:1] if tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id else []
    rows = []
    for item in items:
        instruction, text = item if isinstance(item, list) else ("", item)
        head = bos + (tokenizer(instruction, add_special_tokens=False)["input_ids"] if instruction else [])
        rows.append((head, tokenizer(text, add_special_tokens=False)["input_ids"]))
    length = max(len(h) + len(t) for h, t in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    real = torch.zeros(len(rows), length, dtype=torch.bool)
    text = torch.zeros(len(rows), length, dtype=torch.bool)
    for row, (head, text_ids) in enumerate(rows):  # right padding, positions 0..n-1
        ids[row, : len(head) + len(text_ids)] = torch.tensor(head + text_ids)
        real[row, : len(head) + len(text_ids)] = True
        text[row, len(head) : len(head) + len(text_ids)] = True
    dtype = model.dtype
    mask = torch.zeros(len(rows), 1, length, length, dtype=dtype)
    mask.masked_fill_(~real[:, None, None, :], torch.finfo(dtype).min)  # keys: real tokens only
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    weights = text.float()
    return ((hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)).numpy()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_embeddings_equal_a_hand_built_bidirectional_reference(architecture):
    name = f"tiny-random-{architecture}"
    items = TEXTS[:3] + [[INSTRUCTION, TEXTS[3]]]
    encoder = LLM2Vec.from_pretrained(name)
    expected = reference_embeddings(name, items)
    got = encoder.encode(items, batch_size=4)
    assert _cos(got, expected).min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_encode_restores_input_order(padding_side):
    encoder = LLM2Vec.from_pretrained("tiny-random-gemma3_text")
    encoder.tokenizer.padding_side = padding_side
    items = TEXTS + [[INSTRUCTION, TEXTS[2]], [INSTRUCTION, TEXTS[0]]]
    together = encoder.encode(items, batch_size=3)
    one_by_one = np.stack([encoder.encode([item])[0] for item in items])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5, rtol=1e-5)


def test_token_budget_batches_keep_order_and_budget():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    items = TEXTS * 3 + [[INSTRUCTION, TEXTS[1]]]
    shapes = []
    handle = encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    budgeted = encoder.encode(items, batch_size=100, max_batch_tokens=40)
    handle.remove()
    assert len(shapes) > 1 and sum(b for b, _ in shapes) == len(items)
    assert all(b * length <= 40 or b == 1 for b, length in shapes)
    assert any(b > 3 for b, _ in shapes)  # short texts share a batch larger than long ones get
    np.testing.assert_allclose(budgeted, encoder.encode(items, batch_size=2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
                                             ({"max_batch_tokens": 0}, "max_batch_tokens must be a positive integer or None, got 0")])
def test_bad_batch_sizes_are_named(kwargs, message):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    with pytest.raises(ValueError, match=message):
        encoder.encode(TEXTS, **kwargs)


def test_encode_returns_float32_with_bf16_weights():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", dtype="bfloat16")
    assert encoder.dtype == torch.bfloat16
    vectors = encoder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 64)
    tensor = encoder.encode(TEXTS, convert_to_tensor=True)
    assert tensor.dtype == torch.float32
    reference = LLM2Vec.from_pretrained("tiny-random-llama").encode(TEXTS)
    assert _cos(vectors, reference).min() > 0.99


def test_encode_output_kinds():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    single = encoder.encode(TEXTS[0])
    assert isinstance(single, np.ndarray) and single.shape == (64,)
    as_list = encoder.encode(TEXTS[:2], convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == 2 and isinstance(as_list[0], torch.Tensor)
    np.testing.assert_allclose(as_list[1].numpy(), encoder.encode(TEXTS[:2])[1], atol=1e-6)
    normalized = encoder.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1, atol=1e-5)


def test_encode_leaves_training_mode_as_it_was():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    encoder.train()
    encoder.encode(TEXTS[:2])
    assert encoder.training


def test_instruction_tokens_are_attended_to_but_not_pooled():
    encoder = LLM2Vec.from_pretrained("tiny-random-qwen2")
    tokenizer = encoder.tokenizer
    features = encoder.tokenize([[INSTRUCTION, TEXTS[0]], TEXTS[0]])
    ids, attention, embed = features["input_ids"], features["attention_mask"], features["embed_mask"]
    # The pooled tokens are exactly the text's tokens; the instruction's are attended to only.
    assert ids[0][embed[0].bool()].tolist() == tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    n_instruction = len(tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"])
    assert int(attention[0].sum() - embed[0].sum()) == n_instruction
    assert torch.equal(attention[1], embed[1])  # no instruction, no BOS (SmolLM2's tokenizer adds none)

    with_instruction, without = encoder.encode([[INSTRUCTION, TEXTS[0]], TEXTS[0]])
    assert _cos(with_instruction, without) < 0.9999  # bidirectional: the text tokens see the instruction

    # Mean pooling covers only the text tokens of the full (instruction + text) pass.
    single = {k: v[:1] for k, v in features.items()}
    with torch.no_grad():
        hidden = encoder.model(input_ids=single["input_ids"], attention_mask=single["attention_mask"]).last_hidden_state[0]
    text_mean = hidden[single["embed_mask"][0].bool()].mean(0).numpy()
    np.testing.assert_allclose(with_instruction, text_mean, atol=1e-5, rtol=1e-5)


def test_eos_token_pooling_appends_eos_to_the_text():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="eos_token")
    features = encoder.tokenize([TEXTS[0]])
    assert features["input_ids"][0, -1].item() == encoder.tokenizer.eos_token_id
    assert features["embed_mask"][0, -1].item() == 1
    last = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="last_token").tokenize([TEXTS[0]])
    assert last["input_ids"].shape[1] == features["input_ids"].shape[1] - 1


def test_unidirectional_encoder_is_causal():
    uni = LLM2Vec.from_pretrained("tiny-random-llama", enable_bidirectional=False)
    bi = LLM2Vec.from_pretrained("tiny-random-llama")
    assert not uni.bidirectional and bi.bidirectional
    # Two texts with the same first tokens: a causal model's states there ignore what follows.
    features = uni.tokenize([TEXTS[0] + " and sings.", TEXTS[0] + " badly."])
    with torch.no_grad():
        hidden = uni.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
    torch.testing.assert_close(hidden[0, :3], hidden[1, :3], atol=1e-6, rtol=0)
    assert _cos(uni.encode(TEXTS)[1], bi.encode(TEXTS)[1]) < 0.9999


# ----------------------------------------------------------------- save and load


def _perturbed_lora(encoder: LLM2Vec, seed: int = 0) -> None:
    encoder.model = get_peft_model(encoder.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in encoder.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # LoRA starts as a no-op; make it change the output


def test_save_and_load_restores_pooling_length_and_attention(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-mistral", pooling_mode="weighted_mean", max_length=16,
                                      enable_bidirectional=False)
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "encoder")
    loaded = LLM2Vec.from_pretrained(str(tmp_path / "encoder"))
    assert (loaded.pooling_mode, loaded.max_length, loaded.bidirectional) == ("weighted_mean", 16, False)
    assert loaded.base_model_name_or_path == "tiny-random-mistral"
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-6)
    # Arguments given at load time win over the saved ones.
    overridden = LLM2Vec.from_pretrained(str(tmp_path / "encoder"), pooling_mode="mean", enable_bidirectional=True)
    assert (overridden.pooling_mode, overridden.max_length, overridden.bidirectional) == ("mean", 16, True)


def test_save_and_load_restores_a_peft_adapter(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    base = encoder.encode(TEXTS)
    _perturbed_lora(encoder)
    expected = encoder.encode(TEXTS)
    assert _cos(base, expected).min() < 0.999  # the adapter does change the embeddings
    encoder.save(tmp_path / "encoder")
    assert (tmp_path / "encoder" / "adapter_config.json").is_file()  # plain peft files

    loaded = LLM2Vec.from_pretrained(str(tmp_path / "encoder"))
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-5)
    merged = LLM2Vec.from_pretrained(str(tmp_path / "encoder"), merge_peft=True)
    np.testing.assert_allclose(merged.encode(TEXTS), expected, atol=1e-5)

    # A merged adapter is saved with the encoder and merged again on load.
    merged.save(tmp_path / "merged")
    np.testing.assert_allclose(LLM2Vec.from_pretrained(str(tmp_path / "merged")).encode(TEXTS), expected, atol=1e-5)


def test_peft_model_name_or_path_loads_an_adapter_directory(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-qwen3")
    _perturbed_lora(encoder)
    expected = encoder.encode(TEXTS)
    encoder.model.save_pretrained(tmp_path / "adapter")
    loaded = LLM2Vec.from_pretrained("tiny-random-qwen3", peft_model_name_or_path=str(tmp_path / "adapter"))
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-5)


def test_peft_model_name_or_path_takes_a_stack_of_adapters(tmp_path):
    adapters = []
    for index in range(2):
        encoder = LLM2Vec.from_pretrained("tiny-random-qwen3")
        _perturbed_lora(encoder, seed=index)
        encoder.model.save_pretrained(tmp_path / f"adapter{index}")
        adapters.append(str(tmp_path / f"adapter{index}"))
    # the same stack built the way training builds it: the first merged and saved, the second on top
    LLM2Vec.from_pretrained("tiny-random-qwen3", peft_model_name_or_path=adapters[0], merge_peft=True).save(
        tmp_path / "first")
    expected = LLM2Vec.from_pretrained(str(tmp_path / "first"), peft_model_name_or_path=adapters[1]).encode(TEXTS)
    stacked = LLM2Vec.from_pretrained("tiny-random-qwen3", peft_model_name_or_path=adapters)
    assert stacked.merged_adapters == adapters[:1]
    np.testing.assert_allclose(stacked.encode(TEXTS), expected, atol=1e-5)
    assert not np.allclose(expected, LLM2Vec.from_pretrained("tiny-random-qwen3", peft_model_name_or_path=adapters[1])
                           .encode(TEXTS), atol=1e-3)  # the first adapter counts


def test_save_and_load_restores_latent_attention_weights(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="latent_attention")
    with torch.no_grad():
        for parameter in encoder.pooling.parameters():
            parameter.add_(torch.randn_like(parameter))
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "encoder")
    fresh = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="latent_attention")
    assert _cos(fresh.encode(TEXTS), expected).min() < 0.999  # weights are not just re-initialised the same
    loaded = LLM2Vec.from_pretrained(str(tmp_path / "encoder"))
    assert loaded.pooling_mode == "latent_attention"
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-5)


# ----------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def encoder():
    return LLM2Vec.from_pretrained("tiny-random-llama", max_length=12)


@pytest.mark.parametrize("sentences", [[], ()])
def test_empty_input_is_refused(encoder, sentences):
    with pytest.raises(ValueError, match=r"encode\(\) needs a non-empty list of texts or \[instruction, text\] pairs"):
        encoder.encode(sentences)


@pytest.mark.parametrize("item", [3, None, ["only one"], ["instruction", 5], ("a", "b", "c")])
def test_non_string_items_are_named(encoder, item):
    with pytest.raises(TypeError, match=r"encode\(\) item 1 is .*expected a string or an \[instruction, text\] pair"):
        encoder.encode(["fine", item])


def test_unknown_pooling_mode_lists_the_modes():
    with pytest.raises(ValueError, match=r"unknown pooling_mode 'avg': choose mean, weighted_mean, eos_token"):
        LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="avg")


def test_unknown_model_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"^cannot load model 'no-such-org/no-such-model': not a shipped model") as raised:
        LLM2Vec.from_pretrained("no-such-org/no-such-model")
    assert "\n" not in str(raised.value)


def test_missing_paths_are_named(tmp_path):
    missing = str(tmp_path / "no-encoder-here")
    with pytest.raises(FileNotFoundError, match=f"'{missing}' does not exist"):
        LLM2Vec.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match=f"peft_model_name_or_path '{missing}' does not exist"):
        LLM2Vec.from_pretrained("tiny-random-llama", peft_model_name_or_path=missing)


def test_long_text_is_truncated_with_one_warning(encoder, caplog):
    long_text = " ".join(["word"] * 50)
    tokens = encoder.tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(tokens) > encoder.max_length
    truncated_text = encoder.tokenizer.decode(tokens[: encoder.max_length])
    encoder._warned_truncation = False
    with caplog.at_level(logging.WARNING, logger="llm2vec.encoder"):
        vectors = encoder.encode([long_text, long_text + " again", "short"])
        encoder.encode([long_text])
    warnings = [r for r in caplog.records if "max_length=12" in r.getMessage()]
    assert len(warnings) == 1
    assert encoder.tokenize([long_text])["input_ids"].shape[1] == encoder.max_length
    np.testing.assert_allclose(vectors[0], encoder.encode([truncated_text])[0], atol=1e-5)


def test_empty_text_gives_a_zero_vector_without_crashing(encoder):
    vectors = encoder.encode(["", TEXTS[0]])
    assert np.all(vectors[0] == 0) and np.abs(vectors[1]).sum() > 0
    assert np.all(encoder.encode([""])[0] == 0)


# ----------------------------------------------------------------- real weights


@pytest.mark.slow
def test_smollm2_embeddings_equal_the_reference():
    items = TEXTS + [[INSTRUCTION, TEXTS[1]]]
    expected = reference_embeddings("smollm2-135m", items)
    fp32 = LLM2Vec.from_pretrained("smollm2-135m").encode(items, batch_size=3)
    assert _cos(fp32, expected).min() >= 0.9999
    bf16 = LLM2Vec.from_pretrained("smollm2-135m", dtype="bfloat16").encode(items, batch_size=3)
    assert bf16.dtype == np.float32
    # bf16 rounding: measured cos 0.985 for "Hi." (two tokens), >= 0.998 for the longer texts.
    assert _cos(bf16, expected).min() >= 0.98 and _cos(bf16, expected).mean() >= 0.995
