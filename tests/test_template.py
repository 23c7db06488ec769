"""Prompt templates (PromptBERT, PromptEOL): every text goes into the template where "{text}" is;
the template's head is attended to and not pooled, its tail is pooled with the text. The template is
saved with the encoder, survives a soup and a sentence-transformers export, and trains through
`run.py` into the run's saved encoder, which `stage=eval` then embeds with it."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import TINY_DATA
from llm2vec import LLM2Vec
from llm2vec.gguf_export import to_gguf
from llm2vec.soup import soup

TEMPLATE = 'This sentence : "{text}" means in one word:"'
TEXT = "A man is playing a guitar."


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_head_is_attended_to_and_the_tail_pooled_with_the_text():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE)
    tokenizer = encoder.tokenizer
    head, tail, text = ids(tokenizer, 'This sentence : "'), ids(tokenizer, '" means in one word:"'), ids(tokenizer, TEXT)
    features = encoder.tokenize([TEXT])
    row, embed = features["input_ids"][0].tolist(), features["embed_mask"][0].tolist()
    assert row[-len(head + text + tail):] == head + text + tail
    assert [t for t, pooled in zip(row, embed) if pooled] == text + tail

    # Mean pooling: the mean over text + tail of one forward pass over the whole templated row.
    with torch.no_grad():
        hidden = encoder.model(input_ids=features["input_ids"]).last_hidden_state[0]
    expected = hidden[features["embed_mask"][0].bool()].mean(dim=0)
    torch.testing.assert_close(encoder.encode(TEXT, convert_to_tensor=True), expected, rtol=1e-5, atol=1e-5)
    plain = LLM2Vec.from_pretrained("tiny-random-llama").encode(TEXT, convert_to_tensor=True)
    assert not torch.allclose(expected, plain, atol=1e-4)


def test_last_token_pooling_reads_the_templates_last_token_and_instructions_come_first():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE, pooling_mode="last_token")
    tokenizer = encoder.tokenizer
    instruction = "Retrieve semantically similar text:"
    features = encoder.tokenize([[instruction, TEXT]])
    row, embed = features["input_ids"][0].tolist(), features["embed_mask"][0].tolist()
    head = ids(tokenizer, instruction) + ids(tokenizer, 'This sentence : "')
    start = len(row) - sum(embed)
    assert row[start - len(head):start] == head
    with torch.no_grad():
        hidden = encoder.model(input_ids=features["input_ids"]).last_hidden_state[0]
    got = encoder.encode([[instruction, TEXT]], convert_to_tensor=True)[0]
    torch.testing.assert_close(got, hidden[-1], rtol=1e-5, atol=1e-5)  # the tail's closing quote
    eos = LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE, pooling_mode="eos_token")
    assert eos.tokenize([TEXT])["input_ids"][0].tolist()[-2:] == [ids(tokenizer, '" means in one word:"')[-1],
                                                                   tokenizer.eos_token_id]


def test_truncation_keeps_the_whole_template():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE, max_length=24)
    tail = ids(encoder.tokenizer, '" means in one word:"')
    row = encoder.tokenize(["word " * 100])["input_ids"][0].tolist()
    assert len(row) == 24 and row[-len(tail):] == tail


def test_the_template_is_saved_and_can_be_switched_off(tmp_path):
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE)
    encoder.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "llm2vec_config.json").read_text())["template"] == TEMPLATE
    restored = LLM2Vec.from_pretrained(str(tmp_path / "saved"))
    assert restored.template == TEMPLATE
    torch.testing.assert_close(restored.encode(TEXT, convert_to_tensor=True), encoder.encode(TEXT, convert_to_tensor=True))
    off = LLM2Vec.from_pretrained(str(tmp_path / "saved"), template="{text}")
    assert off.template is None
    restored.template = None  # set on a loaded encoder, it takes effect at once
    assert torch.equal(restored.tokenize([TEXT])["input_ids"], off.tokenize([TEXT])["input_ids"])
    torch.testing.assert_close(off.encode(TEXT, convert_to_tensor=True),
                               LLM2Vec.from_pretrained("tiny-random-llama").encode(TEXT, convert_to_tensor=True))


@pytest.mark.parametrize("template, message", [
    ("no placeholder", "holding {text} once"),
    ("{text} and {text}", "holding {text} once"),
    (42, "holding {text} once"),
])
def test_a_bad_template_is_refused(template, message):
    with pytest.raises(ValueError, match=message):
        LLM2Vec.from_pretrained("tiny-random-llama", template=template)


def test_a_template_does_not_combine_with_echo():
    with pytest.raises(ValueError, match="echo"):
        LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE, echo=True, enable_bidirectional=False)


def saved_with_adapter(path, **kwargs):
    """A saved encoder with a (no-op) LoRA adapter: what a soup averages."""
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", **kwargs)
    encoder.model = get_peft_model(encoder.model, LoraConfig(r=2, target_modules=["q_proj"]))
    return encoder.save(path)


def test_soup_keeps_the_template_and_refuses_to_mix(tmp_path):
    dirs = [saved_with_adapter(tmp_path / name, template=TEMPLATE) for name in ("a", "b")]
    assert LLM2Vec.from_pretrained(str(soup(dirs, tmp_path / "soup"))).template == TEMPLATE
    with pytest.raises(ValueError, match="template"):
        soup([dirs[0], saved_with_adapter(tmp_path / "plain")], tmp_path / "mixed")


def test_gguf_export_refuses_a_template(tmp_path):
    with pytest.raises(ValueError, match="template"):
        to_gguf(LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE), tmp_path / "t.gguf")
    assert not (tmp_path / "t.gguf").exists()


def test_sentence_transformers_export_keeps_the_template(tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from llm2vec.export import to_sentence_transformers

    encoder = LLM2Vec.from_pretrained("tiny-random-llama", template=TEMPLATE)
    loaded = SentenceTransformer(str(to_sentence_transformers(encoder, tmp_path / "st")), trust_remote_code=True,
                                 device="cpu")
    assert loaded[0].encoder.template == TEMPLATE
    torch.testing.assert_close(torch.from_numpy(loaded.encode([TEXT])[0]), encoder.encode(TEXT, convert_to_tensor=True),
                               rtol=1e-4, atol=1e-4)


def test_simcse_trains_with_the_template_and_its_run_evaluates_with_it(run_app, tmp_path):
    run_dir = tmp_path / "simcse"
    override = f"encoder.template='{TEMPLATE}'"
    run_app("stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=2", "pooling=last_token", override,
            run_dir=run_dir)
    saved = json.loads((run_dir / "llm2vec_config.json").read_text())
    assert saved["template"] == TEMPLATE and saved["pooling_mode"] == "last_token"
    trained = LLM2Vec.from_pretrained(str(run_dir))
    assert trained.template == TEMPLATE
    score = run_app("stage=eval", f"stage.init_from={run_dir}", "pooling=last_token", run_dir=tmp_path / "eval")
    assert score == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["STS-tiny"]["spearman"])
