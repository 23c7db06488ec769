"""Word-level probes (the paper's chunking, NER and POS experiments): a linear classifier trained on
the frozen encoder's token states.

A sentence is a list of words; its text is the words joined by spaces. Each word's feature is the
mean of the states of its subword tokens. With `shift_labels` (for MNTP-trained models, as in the
paper) the state of token i-1 stands for token i, because MNTP trains the state at i-1 to predict
token i; a BOS (or EOS) token is put first so the first token has a predecessor.

Data: any token-classification dataset with a words column and integer (or string) tag columns,
e.g. CoNLL-2003 (`eriktks/conll2003`: tokens, pos_tags, chunk_tags, ner_tags) from the hub; or a
Universal Dependencies treebank in CoNLL-U files, offline (ud.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from llm2vec.evaluation.hub import HubUnavailable, load_hub_dataset

logger = logging.getLogger(__name__)


@dataclass
class TaggedSentences:
    words: list[list[str]]
    tags: list[list]  # one tag (int or str) per word


def word_index_of_tokens(words: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[int]:
    """For each token (its character span in `" ".join(words)`), the word it belongs to, or -1 for a
    token made of spaces only. A token's first non-space character decides (SentencePiece tokens
    carry the space before a word)."""
    text = " ".join(words)
    char_word = np.full(len(text), -1)
    start = 0
    for index, word in enumerate(words):
        char_word[start : start + len(word)] = index
        start += len(word) + 1
    owners = []
    for begin, end in offsets:
        inside = [char_word[c] for c in range(begin, end) if char_word[c] >= 0]
        owners.append(int(inside[0]) if inside else -1)
    return owners


def word_features(encoder, sentences: list[list[str]], shift_labels: bool = False, layer: int = -1,
                  batch_size: int = 16) -> list[torch.Tensor]:
    """One float32 tensor (words, hidden) per sentence: the mean state of each word's tokens, taken
    from `layer` of the frozen encoder (-1: the last)."""
    tokenizer = encoder.tokenizer
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    prefix = [tokenizer.bos_token_id] if adds_bos else []
    if shift_labels and not prefix:
        prefix = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    was_training = encoder.training
    encoder.eval()
    features = []
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = sentences[start : start + batch_size]
            encoded = tokenizer([" ".join(w) for w in batch], add_special_tokens=False, return_offsets_mapping=True)
            ids = [prefix + row for row in encoded["input_ids"]]
            owners = [[-1] * len(prefix) + word_index_of_tokens(w, o) for w, o in zip(batch, encoded["offset_mapping"])]
            states = _token_states(encoder, ids, layer)
            if shift_labels:  # token i is represented by the state of token i-1
                states = torch.cat([states[:, :1], states[:, :-1]], dim=1)
            for row, (sentence, owner) in enumerate(zip(batch, owners)):
                features.append(_mean_per_word(states[row, : len(owner)], torch.tensor(owner), len(sentence)))
    encoder.train(was_training)
    return features


def _token_states(encoder, ids: list[list[int]], layer: int) -> torch.Tensor:
    length = max(len(row) for row in ids)
    pad = encoder.tokenizer.pad_token_id
    input_ids = torch.tensor([row + [pad] * (length - len(row)) for row in ids], device=encoder.device)
    attention_mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in ids], device=encoder.device)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    output = encoder.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           output_hidden_states=layer != -1, use_cache=False)
    states = output.last_hidden_state if layer == -1 else output.hidden_states[layer]
    return states.float().cpu()


def _mean_per_word(states: torch.Tensor, owner: torch.Tensor, num_words: int) -> torch.Tensor:
    """(words, hidden): each word's mean token state, as one (words x tokens) averaging matmul."""
    assignment = (owner.unsqueeze(0) == torch.arange(num_words).unsqueeze(1)).float()
    return assignment @ states / assignment.sum(dim=1, keepdim=True).clamp(min=1)


def train_probe(features: torch.Tensor, labels: torch.Tensor, num_labels: int, epochs: int = 10,
                lr: float = 1e-2, batch_size: int = 256, seed: int = 0) -> nn.Module:
    """A linear classifier on standardised features (LLM states have a few huge dimensions that
    would otherwise dominate the optimisation)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, std = features.mean(dim=0), features.std(dim=0).clamp(min=1e-6)
    probe = nn.Sequential(_Standardize(mean, std), nn.Linear(features.shape[1], num_labels))
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(probe(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe.eval()


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def probe_accuracy(train_features: list[torch.Tensor], train_tags: list[list], eval_features: list[torch.Tensor],
                   eval_tags: list[list], **train_kwargs) -> dict[str, float]:
    """Train on one split's word features, report accuracy (x100) on the other, with the accuracy
    of always answering the most frequent training tag for scale. Evaluation words whose tag never
    occurs in training (rare labels, small slices) count as errors: no probe can predict them."""
    vocabulary = {tag: i for i, tag in enumerate(sorted({t for tags in train_tags for t in tags}))}
    x_train, y_train = _flatten(train_features, train_tags, vocabulary)
    x_eval, y_eval = _flatten(eval_features, eval_tags, vocabulary)
    probe = train_probe(x_train, y_train, len(vocabulary), **train_kwargs)
    with torch.no_grad():
        predicted = probe(x_eval).argmax(dim=1)
    majority = torch.bincount(y_train, minlength=len(vocabulary)).argmax()
    return {
        "accuracy": 100 * float((predicted == y_eval).float().mean()),
        "majority_baseline": 100 * float((y_eval == majority).float().mean()),
        "train_words": len(y_train),
        "eval_words": len(y_eval),
        "unseen_tag_words": int((y_eval == UNSEEN).sum()),
        "labels": len(vocabulary),
    }


UNSEEN = -1  # the label of an evaluation word whose tag never occurs in training


def _flatten(features: list[torch.Tensor], tags: list[list], vocabulary: dict) -> tuple[torch.Tensor, torch.Tensor]:
    for index, (f, t) in enumerate(zip(features, tags)):
        if len(f) != len(t):
            raise ValueError(f"sentence {index} has {len(f)} words but {len(t)} tags")
    labels = torch.tensor([vocabulary.get(t, UNSEEN) for sentence in tags for t in sentence])
    return torch.cat(features), labels


def probe_tasks(encoder, tasks: list[dict], train: dict[str, TaggedSentences], evaluation: dict[str, TaggedSentences],
                shift_labels: bool = False, layer: int = -1, batch_size: int = 16, **train_kwargs) -> dict[str, dict]:
    """{task: scores} for tasks {name, label_column}, `train` and `evaluation` mapping each label
    column to its TaggedSentences (the same words for every column: each split is encoded once)."""
    first = tasks[0]["label_column"]
    train_features = word_features(encoder, train[first].words, shift_labels, layer, batch_size)
    eval_features = word_features(encoder, evaluation[first].words, shift_labels, layer, batch_size)
    results = {}
    for task in tasks:
        column = task["label_column"]
        results[task["name"]] = probe_accuracy(train_features, train[column].tags, eval_features,
                                               evaluation[column].tags, **train_kwargs)
    return results


def load_tagged(dataset: str, split: str, tag_columns: list[str], words_column: str = "tokens",
                data_files=None, revision: str | None = None, max_sentences: int | None = None):
    """({tag column: TaggedSentences}) of one split. `dataset` is a hub id (`HubUnavailable` when
    offline) or a local builder such as `json` with `data_files`."""
    import datasets

    kwargs = {"split": split, "revision": revision}
    if data_files:
        data = datasets.load_dataset(dataset, data_files=data_files, **kwargs)
    else:
        data = load_hub_dataset(dataset, **kwargs)
    if max_sentences is not None:
        data = data.select(range(min(max_sentences, len(data))))
    missing = {words_column, *tag_columns} - set(data.column_names)
    if missing:
        raise ValueError(f"dataset {dataset} has no column(s) {sorted(missing)}: it has {data.column_names}")
    words = list(data[words_column])
    return {column: TaggedSentences(words, list(data[column])) for column in tag_columns}


def run_probes(encoder, tasks: list[dict], dataset: str, words_column: str = "tokens", train_split: str = "train",
               eval_split: str = "test", data_files=None, revision: str | None = None,
               max_train_sentences: int | None = None, max_eval_sentences: int | None = None,
               shift_labels: bool = False, layer: int = -1, batch_size: int = 16, epochs: int = 10,
               lr: float = 1e-2, seed: int = 0) -> tuple[dict[str, dict], dict[str, str]]:
    """Each task is {name, label_column}; all tasks share one encoding of each split.
    Returns ({task: scores}, {skipped task: why})."""
    columns = [task["label_column"] for task in tasks]
    try:
        train = load_tagged(dataset, train_split, columns, words_column, data_files, revision, max_train_sentences)
        evaluation = load_tagged(dataset, eval_split, columns, words_column, data_files, revision, max_eval_sentences)
    except HubUnavailable as error:
        reason = f"dataset {dataset} unavailable ({error})"
        for task in tasks:
            logger.warning("skipped probe task %s: %s", task["name"], reason)
        return {}, {task["name"]: reason for task in tasks}
    results = probe_tasks(encoder, tasks, train, evaluation, shift_labels=shift_labels, layer=layer,
                          batch_size=batch_size, epochs=epochs, lr=lr, seed=seed)
    return results, {}


def format_probe_table(results: dict[str, dict], skipped: dict[str, str] | None = None) -> str:
    lines = [f"{'task':<16} {'accuracy':>9} {'majority':>9} {'words':>7}"]
    for name, scores in results.items():
        lines.append(f"{name:<16} {scores['accuracy']:9.2f} {scores['majority_baseline']:9.2f} {scores['eval_words']:7d}")
    for name, reason in (skipped or {}).items():
        lines.append(f"{name:<16} skipped: {reason}")
    return "\n".join(lines)
