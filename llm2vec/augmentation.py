"""Word repetition (ESimCSE, Wu et al., COLING 2022): a text augmentation for SimCSE's second view.

SimCSE's two views of a sentence have the same length, so an encoder can tell positives from
negatives partly by length; repeating a few words of one view breaks that cue without changing the
meaning. ESimCSE duplicates up to `rate` x length subword tokens (0.32 for BERT-base); here the units
are whitespace-separated words, so the augmentation does not depend on the tokenizer.
"""

from __future__ import annotations

import random


def repeat_words(sentence: str, rate: float, rng: random.Random) -> str:
    """`sentence` with a random number of its words (0 to max(2, rate x words)) each written twice,
    next to itself."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"word repetition rate {rate!r} must be between 0 and 1")
    words = sentence.split()
    if rate == 0.0 or not words:
        return sentence
    count = min(len(words), rng.randint(0, max(2, int(rate * len(words)))))
    repeated = set(rng.sample(range(len(words)), count))
    return " ".join(word for index, word in enumerate(words) for _ in range(2 if index in repeated else 1))
