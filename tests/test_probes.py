"""Word-level probes on a token-classification fixture written here: words drawn at random from a
small lexicon, each word's tag its word class. A linear probe on word states learns that; with the
MNTP label shift a causal model cannot (the state of word i-1 never saw word i)."""

from __future__ import annotations

import json
import random

import datasets
import pytest

from llm2vec import LLM2Vec
from llm2vec.evaluation import hub, run_evaluation
from llm2vec.evaluation.probes import probe_accuracy, word_features, word_index_of_tokens

LEXICON = {
    "DET": ["the", "a", "every", "some"],
    "NOUN": ["cat", "teacher", "river", "umbrella", "mountain", "antidisestablishmentarianism"],
    "VERB": ["sees", "likes", "chases", "paints", "remembers"],
    "ADJ": ["red", "happy", "enormous", "quiet"],
}
CLASSES = sorted(LEXICON)


def tagged_sentences(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        tags = [rng.choice(CLASSES) for _ in range(6)]
        sentences.append(([rng.choice(LEXICON[t]) for t in tags], tags))
    return sentences


TRAIN, TEST = tagged_sentences(150, seed=0), tagged_sentences(50, seed=1)


def accuracy(encoder, shift_labels: bool) -> dict:
    train = word_features(encoder, [w for w, _ in TRAIN], shift_labels)
    test = word_features(encoder, [w for w, _ in TEST], shift_labels)
    return probe_accuracy(train, [t for _, t in TRAIN], test, [t for _, t in TEST], epochs=30)


def test_tokens_map_to_their_words():
    tokenizer = LLM2Vec.from_pretrained("tiny-random-llama").tokenizer
    words = ["The", "antidisestablishmentarianism", "of", "Zanzibar's", "umbrellas"]
    encoded = tokenizer(" ".join(words), add_special_tokens=False, return_offsets_mapping=True)
    owners = word_index_of_tokens(words, encoded["offset_mapping"])
    assert len(owners) == len(encoded["input_ids"]) > len(words)  # some words are several tokens
    assert owners == sorted(owners) and set(owners) == set(range(len(words)))
    for index, word in enumerate(words):
        ids = [i for i, o in zip(encoded["input_ids"], owners) if o == index]
        assert tokenizer.decode(ids).strip() == word
    # SentencePiece-style spans carry the space before a word; a lone space token belongs to no word.
    assert word_index_of_tokens(["ab", "cd"], [(0, 2), (2, 5), (5, 5)]) == [0, 1, -1]
    assert word_index_of_tokens(["ab", "cd"], [(0, 1), (1, 2), (2, 3), (3, 5)]) == [0, 0, -1, 1]


def test_probe_learns_word_classes_far_above_chance():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    scores = accuracy(encoder, shift_labels=False)
    assert scores["labels"] == 4 and scores["eval_words"] == 300
    assert scores["accuracy"] > 90
    assert scores["accuracy"] > scores["majority_baseline"] + 50


def test_label_shift_uses_the_previous_token_state():
    causal = LLM2Vec.from_pretrained("tiny-random-llama", enable_bidirectional=False)
    unshifted = accuracy(causal, shift_labels=False)
    shifted = accuracy(causal, shift_labels=True)
    assert unshifted["accuracy"] > 90
    # Causal and shifted: the state that stands for word i has seen only words < i, which say nothing
    # about word i's (independently drawn) class, so the probe is at chance.
    assert shifted["accuracy"] < shifted["majority_baseline"] + 15


def test_run_evaluation_on_local_json_data(tmp_path, monkeypatch, capsys):
    files = {}
    for split, sentences in (("train", TRAIN), ("test", TEST)):
        rows = [{"tokens": w, "pos_tags": [CLASSES.index(t) for t in tags], "is_noun": [str(t == "NOUN") for t in tags]}
                for w, tags in sentences]
        files[split] = str(tmp_path / f"{split}.jsonl")
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "kind": "probes", "dataset": "json", "data_files": files, "epochs": 30,
        "tasks": [{"name": "pos", "label_column": "pos_tags"}, {"name": "noun", "label_column": "is_noun"}],
    }
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    summary = run_evaluation(encoder, config, tmp_path / "run")
    assert summary["skipped"] == {}
    assert summary["results"]["pos"]["accuracy"] > 90 and summary["results"]["pos"]["labels"] == 4
    assert summary["results"]["noun"]["labels"] == 2  # string tags work too
    assert summary["results"]["noun"]["accuracy"] > summary["results"]["noun"]["majority_baseline"] + 15
    assert json.loads((tmp_path / "run" / "probes.json").read_text()) == summary
    assert "pos" in capsys.readouterr().out

    # A hub dataset, offline: every task skipped, with the reason.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: "no network in this test")
    offline = run_evaluation(encoder, {**config, "dataset": "eriktks/conll2003", "data_files": None}, tmp_path)
    assert offline["results"] == {} and set(offline["skipped"]) == {"pos", "noun"}
    assert "eriktks/conll2003" in offline["skipped"]["pos"] and "no network" in offline["skipped"]["pos"]
