"""Word-level probes on a Universal Dependencies treebank (CoNLL-U files, e.g. English EWT): UPOS tags
and dependency relations, fit on one file (dev), reported on another (test). Offline, unlike the
CoNLL-2003 probes (probes.py), whose data lives on the hub.

CoNLL-U (https://universaldependencies.org/format.html): one word per line in 10 tab-separated
columns (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC), `#` comments, a blank line after each
sentence. Multiword tokens (ID `3-4`, e.g. "don't" over "do" + "n't") and empty nodes (ID `5.1`) are
skipped: the probed words are the syntactic words, IDs 1, 2, 3, ... Lines are parsed with the
`conllu` package; a malformed file is one ValueError naming file:line.
"""

from __future__ import annotations

from pathlib import Path

import conllu.parser
from conllu.exceptions import ParseException

from llm2vec.evaluation.probes import TaggedSentences, probe_tasks

COLUMNS = conllu.parser.DEFAULT_FIELDS  # id, form, lemma, upos, xpos, feats, head, deprel, deps, misc


def read_conllu(path: str | Path, columns: list[str], max_sentences: int | None = None,
                deprel_subtypes: bool = False) -> dict[str, TaggedSentences]:
    """{column: TaggedSentences} of the file's sentences (the first `max_sentences`): the words
    (FORM) and, per word, that column's value. `deprel_subtypes=False` keeps the universal relation
    only (`nmod:poss` -> `nmod`)."""
    path = Path(path)
    unknown = set(columns) - set(COLUMNS[1:])
    if unknown:
        raise ValueError(f"unknown CoNLL-U column(s) {sorted(unknown)}: choose from {', '.join(COLUMNS[1:])}")
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL-U file {str(path)!r} does not exist")
    try:
        return _read_conllu(path, columns, max_sentences, deprel_subtypes)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text, as CoNLL-U is ({error})") from None


def _read_conllu(path: Path, columns: list[str], max_sentences: int | None,
                 deprel_subtypes: bool) -> dict[str, TaggedSentences]:
    sentences: list[list[dict]] = []
    words: list[dict] = []
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is no part of line 1
        for number, line in enumerate(handle, 1):
            if max_sentences is not None and len(sentences) >= max_sentences:
                break
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    sentences.append(words)
                words = []
                continue
            if line.startswith("#"):
                continue
            word = _parse_word_line(line, f"{path}:{number}")
            if word is None:
                continue
            if word["id"] != len(words) + 1:
                raise ValueError(f"{path}:{number}: word ID {word['id']} where {len(words) + 1} was expected "
                                 "(each sentence numbers its words 1, 2, 3, ...; a blank line ends a sentence)")
            words.append(word)
    if words and (max_sentences is None or len(sentences) < max_sentences):
        sentences.append(words)  # the last sentence, without its closing blank line
    if not sentences:
        raise ValueError(f"{path}: no sentences (an empty file, or not CoNLL-U?)")
    forms = [[w["form"] for w in sentence] for sentence in sentences]
    tagged = {}
    for column in columns:
        tags = [[_label(w, column, deprel_subtypes) for w in sentence] for sentence in sentences]
        tagged[column] = TaggedSentences(forms, tags)
    return tagged


def _parse_word_line(line: str, where: str) -> dict | None:
    """The word on a token line, or None for a multiword token or an empty node."""
    fields = line.split("\t")
    if len(fields) != len(COLUMNS):
        raise ValueError(f"{where}: {len(fields)} tab-separated columns where CoNLL-U has {len(COLUMNS)} "
                         f"({' '.join(c.upper() for c in COLUMNS)})")
    try:
        token = conllu.parser.parse_line(line, fields=COLUMNS)
    except ParseException as error:
        raise ValueError(f"{where}: {error}") from None
    if not isinstance(token["id"], int):  # (3, '-', 4): a multiword token; (5, '.', 1): an empty node
        return None
    return dict(token)


def _label(word: dict, column: str, deprel_subtypes: bool):
    value = word[column]
    if column == "deprel" and value and not deprel_subtypes:
        value = value.split(":")[0]
    return value if isinstance(value, (str, int)) else str(value)


def run_ud_probes(encoder, tasks: list[dict], train_path: str, eval_path: str,
                  max_train_sentences: int | None = None, max_eval_sentences: int | None = None,
                  deprel_subtypes: bool = False, shift_labels: bool = False, layer: int = -1,
                  batch_size: int = 16, epochs: int = 10, lr: float = 1e-2,
                  seed: int = 0) -> tuple[dict[str, dict], dict[str, str]]:
    """Each task is {name, label_column} (a CoNLL-U column: upos, deprel, xpos, ...); a probe per task
    is fit on `train_path`'s words and scored on `eval_path`'s. Returns ({task: scores}, {})."""
    columns = list(dict.fromkeys(task["label_column"] for task in tasks))
    train = read_conllu(train_path, columns, max_train_sentences, deprel_subtypes)
    evaluation = read_conllu(eval_path, columns, max_eval_sentences, deprel_subtypes)
    results = probe_tasks(encoder, tasks, train, evaluation, shift_labels=shift_labels, layer=layer,
                          batch_size=batch_size, epochs=epochs, lr=lr, seed=seed)
    return results, {}
