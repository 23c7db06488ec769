"""Hostile inputs to encode(), the data modules and the evaluation readers: each gives one clear
line naming the item, file or line, or a documented behaviour tested here; nothing crashes the
process or changes results. Property-based (Hypothesis) where a whole class of inputs has one rule."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm2vec import LLM2Vec
from llm2vec.data import Pairs, Sentences, read_lines, read_sentences
from llm2vec.evaluation.sts import read_sts_tsv

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXTS = ["A man is playing a guitar.", "Hi.", "Two dogs run through a field."]


@pytest.fixture(scope="module")
def encoder():
    return LLM2Vec.from_pretrained("tiny-random-llama", max_length=64)


# ----------------------------------------------------------------- encode(): what is not a text

NOT_TEXT = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.binary(), st.complex_numbers(),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    st.lists(st.integers(), max_size=3),
    st.lists(st.lists(st.text(max_size=5), min_size=1, max_size=2), min_size=1, max_size=2),  # nested lists
    st.tuples(st.text(max_size=5), st.text(max_size=5), st.text(max_size=5)),  # a pair plus one
    st.tuples(st.text(max_size=5), st.one_of(st.none(), st.integers(), st.binary())),  # a pair with a non-text
    st.lists(st.text(max_size=5), min_size=1, max_size=1),  # a pair without its text
)


@PROPERTY
@given(item=NOT_TEXT, index=st.integers(0, 3))
def test_an_item_that_is_not_a_text_is_named_by_its_index(encoder, item, index):
    items = TEXTS[:index] + [item] + TEXTS[index:]
    with pytest.raises(TypeError, match=rf"^encode\(\) item {index} is \w+ .*: expected a string or an "
                                        r"\[instruction, text\] pair of strings$") as raised:
        encoder.encode(items)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("sentences, error, message", [
    (None, TypeError, r"takes a string or a list of texts or \[instruction, text\] pairs, got NoneType$"),
    (b"raw bytes", TypeError, "got bytes: decode the bytes first"),
    (42, TypeError, "got int$"),
    ({"text": "a"}, TypeError, "got dict$"),
    ((t for t in TEXTS), TypeError, "got generator$"),
    ([], ValueError, r"needs a non-empty list"),
    (["fine", "bad \ud800 surrogate"], ValueError, r"item 1 is not valid Unicode: '\\ud800' at position 4 is a lone surrogate"),
    ([["Retrieve:", "x\udcff"]], ValueError, r"item 0 is not valid Unicode: '\\udcff' at position 1"),
    ("\udcc3", ValueError, r"item 0 is not valid Unicode"),
])
def test_inputs_that_are_not_lists_of_texts_are_refused_in_one_line(encoder, sentences, error, message):
    with pytest.raises(error, match=message) as raised:
        encoder.encode(sentences)
    assert "\n" not in str(raised.value)


def test_a_refused_call_leaves_the_encoder_as_it_was(encoder):
    before = encoder.encode(TEXTS)
    for bad in ([None], ["\ud800"], [b"x"]):
        with pytest.raises((TypeError, ValueError)):
            encoder.encode(bad)
    np.testing.assert_array_equal(encoder.encode(TEXTS), before)


# ----------------------------------------------------------------- encode(): odd but valid texts

ANY_TEXT = st.text(max_size=120)  # any Unicode but lone surrogates: control characters, NUL, emoji, RTL, ...


@PROPERTY
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=5))
def test_any_texts_embed_to_finite_vectors_in_input_order(encoder, texts):
    vectors = encoder.encode(texts, batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 64) and np.isfinite(vectors).all()
    alone = np.stack([encoder.encode([text])[0] for text in texts])
    np.testing.assert_allclose(vectors, alone, atol=1e-4, rtol=1e-4)
    for text, vector in zip(texts, vectors):
        if text == "":  # documented: an empty text is a zero vector
            assert not vector.any()


def test_a_100k_character_text_is_truncated_with_one_warning(encoder, caplog):
    words = random.Random(0).choices(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"], k=20000)
    huge = " ".join(words)[:100_000]
    assert len(huge) == 100_000
    encoder._warned_truncation = False
    with caplog.at_level(logging.WARNING, logger="llm2vec.encoder"):
        vectors = encoder.encode([huge, huge[1:], "short"])
        encoder.encode(huge)
    assert sum("longer than max_length=64" in r.getMessage() for r in caplog.records) == 1
    assert encoder.tokenize([huge])["input_ids"].shape == (1, 64)
    assert np.isfinite(vectors).all() and vectors.shape == (3, 64)


@pytest.mark.slow  # about 10^6 tokens through the tiny model: 1-2 minutes on two busy cores
def test_a_hundred_thousand_texts_are_embedded_batch_by_batch(encoder):
    """Memory stays bounded: the model never sees more than batch_size texts padded to the longest of
    them, never one padded matrix of everything."""
    texts = [f"sentence {i} " + "word " * (i % 7) for i in range(100_000)]
    calls = []
    handle = encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        vectors = encoder.encode(texts, batch_size=1024, show_progress_bar=False)
    finally:
        handle.remove()
    assert vectors.shape == (100_000, 64) and np.isfinite(vectors).all()
    assert sum(rows for rows, _ in calls) == 100_000 and max(rows for rows, _ in calls) <= 1024
    longest = max(map(len, encoder.tokenizer(texts, add_special_tokens=False)["input_ids"])) + 1  # + BOS
    assert max(length for _, length in calls) <= longest  # each batch padded to its own longest text only
    sample = [0, 6, 12_345, 99_999]
    np.testing.assert_allclose(vectors[sample], encoder.encode([texts[i] for i in sample]), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------- text files (.txt)


def test_invalid_utf8_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"a fine line\nbad \xff byte\n")
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text \(byte 0xff at offset 16\); convert the file"):
        read_lines(path)


def test_control_characters_stay_inside_their_line(tmp_path):
    """Lines end at \\n only: form feeds, NUL, U+2028 ... are text (str.splitlines would cut there)."""
    path = tmp_path / "texts.txt"
    path.write_bytes("\ufeffa\x0cb\nc\x00d\r\ne\u2028f\x85g\n\n   \nlast".encode())
    assert read_lines(path) == ["a\x0cb", "c\x00d", "e\u2028f\x85g", "last"]  # BOM dropped, CRLF and blanks too


LINE = st.text(alphabet=st.characters(exclude_characters="\n\r\ufeff", exclude_categories=("Cs",)), max_size=40)


@PROPERTY
@given(lines=st.lists(LINE, max_size=8))
def test_reading_a_text_file_gives_back_its_lines(tmp_path, lines):
    path = tmp_path / "lines.txt"
    path.write_bytes("\n".join(lines).encode("utf-8"))
    assert read_lines(path) == [line.strip() for line in lines if line.strip()]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", "\ufeff".encode()])
def test_an_empty_training_file_is_named(tmp_path, content):
    path = tmp_path / "sentences.txt"
    path.write_bytes(content)
    data = Sentences(files=[str(tmp_path / "ok.txt"), str(path)], batch_size=2)
    (tmp_path / "ok.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match=rf"^{path} holds no text \(empty or blank lines only\)"):
        data.setup()


# ----------------------------------------------------------------- TSV files (STS pairs, SimCSE sentences)

STS_CASES = {
    "no score column": ("sentence1\tsentence2\nA\tB\n", r"the header lacks score \(it has: sentence1, sentence2\)"),
    "no columns at all": ("just some text\nmore\n", "the header lacks sentence1, sentence2, score"),
    "empty file": ("", "is empty: expected a TSV with columns sentence1, sentence2, score"),
    "header only": ("sentence1\tsentence2\tscore\n", "has a header but no rows"),
    "a short row": ("sentence1\tsentence2\tscore\nA\tB\t1\nC\tD\n", r":3: the row has no score field \(expected 3"),
    "a row with one field": ("sentence1\tsentence2\tscore\nA\tB\t1\nlonely\n", ":3: the row has no sentence2, score field"),
    "a word for a score": ("sentence1\tsentence2\tscore\nA\tB\t1\nC\tD\tfour\n", r":3: score 'four' is not a finite number"),
    "an empty score": ("sentence1\tsentence2\tscore\nA\tB\t\nC\tD\t1\n", r":2: score '' is not a finite number"),
    "nan": ("sentence1\tsentence2\tscore\nA\tB\tnan\nC\tD\t1\n", r":2: score 'nan' is not a finite number"),
    "infinity": ("sentence1\tsentence2\tscore\nA\tB\t2\nC\tD\t-inf\n", r":3: score '-inf' is not a finite number"),
    "one score for all": ("sentence1\tsentence2\tscore\nA\tB\t3\nC\tD\t3\n", "every pair has the score 3.0"),
}


@pytest.mark.parametrize("case", STS_CASES)
def test_a_malformed_sts_tsv_is_named_with_its_line(tmp_path, case):
    content, message = STS_CASES[case]
    path = tmp_path / "sts.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"^{path}.*{message}") as raised:
        read_sts_tsv(path)
    assert "\n" not in str(raised.value)


def test_an_sts_tsv_with_invalid_utf8_is_named(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_bytes(b"sentence1\tsentence2\tscore\nA\tB\t1\nC\t\xe9t\xe9\t2\n")
    with pytest.raises(ValueError, match=rf"^{path}:3: not UTF-8 text \(byte 0xe9"):
        read_sts_tsv(path)


def test_sts_tsv_quotes_extra_columns_and_control_characters_are_kept(tmp_path):
    """Documented: no quoting (a quote is text), extra columns ignored, control characters kept."""
    path = tmp_path / "sts.tsv"
    path.write_text('genre\tsentence1\tsentence2\tscore\nnews\t"A "quoted\x0c" one\tB\x00b\t1.5\nx\tC\tD\t4\n')
    pairs = read_sts_tsv(path)
    assert pairs.sentences1 == ['"A "quoted\x0c" one', "C"] and pairs.sentences2 == ["B\x00b", "D"]
    assert pairs.scores.tolist() == [1.5, 4.0]


@PROPERTY
@given(score=st.text(alphabet=st.characters(exclude_characters="\t\n\r", exclude_categories=("Cs",)), max_size=8))
def test_any_score_field_is_a_finite_number_or_an_error_naming_its_line(tmp_path, score):
    path = tmp_path / "scores.tsv"
    path.write_text(f"sentence1\tsentence2\tscore\nA\tB\t0\nC\tD\t{score}\n", encoding="utf-8")
    try:
        expected = float(score)
    except ValueError:
        expected = float("nan")
    if np.isfinite(expected) and expected != 0:
        assert read_sts_tsv(path).scores.tolist() == [0.0, expected]
    else:
        with pytest.raises(ValueError, match=rf"^{path}(:3: score .* is not a finite number|: every pair has)"):
            read_sts_tsv(path)


def test_sentence_tsv_for_simcse_names_a_short_row(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence1\tsentence2\tscore\nA\tB\t1\nC\n")
    with pytest.raises(ValueError, match=rf"^{path}:3: the row has no sentence2 field"):
        read_sentences(path)


# ----------------------------------------------------------------- JSON lines (supervised pairs)

JSONL_CASES = {
    "bad JSON": ('{"query": "q", "positive": "p"}\n\n{"query": "q", positive: "p"}\n',
                 r":3: not valid JSON \(Expecting property name enclosed in double quotes at column 16\)"),
    "truncated line": ('{"query": "q", "positive": "p"}\n{"query": "q", "posi\n', r":2: not valid JSON"),
    "missing key": ('{"query": "q", "positive": "p"}\n{"query": "q"}\n', ":2: missing positive"),
    "missing both": ('{"text": "q"}\n', ":1: missing positive, query"),
    "not an object": ('["q", "p"]\n', ":1: expected a JSON object with query and positive, got list"),
    "a number for a query": ('{"query": 5, "positive": "p"}\n', ":1: query must be a string, got int 5"),
    "null positive": ('{"query": "q", "positive": null}\n', ":1: positive must be a string, got NoneType"),
    "a list for a negative": ('{"query": "q", "positive": "p", "negative": ["n"]}\n', ":1: negative must be a string, got list"),
    "empty file": ("", " holds no records"),
    "blank lines only": ("\n  \n", " holds no records"),
}


@pytest.mark.parametrize("case", JSONL_CASES)
def test_a_malformed_jsonl_file_is_named_with_its_line(tmp_path, case):
    content, message = JSONL_CASES[case]
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"^{path}{message}") as raised:
        Pairs(files=[str(path)]).setup()
    assert "\n" not in str(raised.value)


def test_a_jsonl_file_with_invalid_utf8_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"query": "q", "positive": "p"}\n{"query": "caf\xe9", "positive": "p"}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text"):
        Pairs(files=[str(path)]).setup()


def test_jsonl_null_optional_fields_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('\n{"query": "q1", "positive": "p1", "negative": null, "dataset": null}\n\n'
                    '{"query": "q2\\u0000", "positive": "p2", "instruction": "Find:"}\n')
    data = Pairs(files=[str(path)])
    data.setup()
    assert [r["query"] for r in data.datasets["pairs"]] == ["q1", "q2\x00"]
