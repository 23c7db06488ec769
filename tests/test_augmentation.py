"""Word repetition (ESimCSE): what the second SimCSE view may and may not become."""

from __future__ import annotations

import random

import pytest

from llm2vec.augmentation import repeat_words

SENTENCE = "the quick brown fox jumps over the lazy dog near the river bank"


def undo_repetition(words: list[str]) -> tuple[list[str], int]:
    """The words with adjacent copies made by repetition removed, and how many were removed."""
    kept, removed, index = [], 0, 0
    while index < len(words):
        kept.append(words[index])
        if index + 1 < len(words) and words[index + 1] == words[index]:
            removed += 1
            index += 1
        index += 1
    return kept, removed


@pytest.mark.parametrize("rate", [0.1, 0.32, 0.5, 1.0])
def test_repetition_only_doubles_words_in_place_within_the_rate(rate):
    words = SENTENCE.split()
    limit = max(2, int(rate * len(words)))
    counts = set()
    for seed in range(200):
        repeated = repeat_words(SENTENCE, rate, random.Random(seed)).split()
        original, added = undo_repetition(repeated)
        assert original == words
        assert added == len(repeated) - len(words) <= limit
        counts.add(added)
    assert counts == set(range(limit + 1))  # every count from 0 to the limit is drawn


def test_short_texts_and_the_off_rate_are_left_alone_or_bounded():
    assert repeat_words(SENTENCE, 0.0, random.Random(0)) == SENTENCE
    assert repeat_words("", 0.32, random.Random(0)) == ""
    assert repeat_words("   ", 0.32, random.Random(0)) == "   "
    for seed in range(50):  # a one-word text can be repeated at most once
        assert repeat_words("Notes", 0.32, random.Random(seed)) in {"Notes", "Notes Notes"}


def test_the_same_generator_state_gives_the_same_view():
    assert repeat_words(SENTENCE, 0.32, random.Random("a")) == repeat_words(SENTENCE, 0.32, random.Random("a"))


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_rate_outside_zero_one_is_refused(rate):
    with pytest.raises(ValueError, match="between 0 and 1"):
        repeat_words(SENTENCE, rate, random.Random(0))
