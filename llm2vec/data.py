"""Training data as LightningDataModules: packed text blocks (MNTP), sentences (SimCSE) and
query / positive / hard-negative triples (supervised contrastive).

Each module serves an endless stream of batches, reshuffled (seeded) on every pass over the data;
`trainer.max_steps` ends training. The stream starts after the batches the trainer has already
stepped on, so a resumed run continues with data it has not seen instead of replaying an epoch.
With several processes, every global batch (batch_size x world size) is cut into one contiguous
slice per process, so the contrastive loss's gathered negatives form the same global batch.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Callable, Sequence

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from llm2vec.loading import load_tokenizer, resolve_weights
from llm2vec.text_files import numbered_lines, read_tsv

logger = logging.getLogger(__name__)


class BatchStream(IterableDataset):
    """`global_batches(epoch)` for epoch 0, 1, 2, ... forever, skipping the first `start` batches;
    yields this process's slice of each."""

    def __init__(self, global_batches: Callable[[int], list[list]], start: int = 0, rank: int = 0, world_size: int = 1):
        self.global_batches = global_batches
        self.start = start
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        epoch, skip = 0, self.start
        while True:
            batches = self.global_batches(epoch)
            if not batches:
                raise ValueError("the training data holds fewer items than one global batch: lower batch_size")
            for batch in batches[skip:]:
                size = len(batch) // self.world_size
                yield batch[self.rank * size : (self.rank + 1) * size]
            skip = max(0, skip - len(batches))
            epoch += 1


class StreamDataModule(LightningDataModule):
    """The shared part: an endless, resumable, seeded stream of batches of `batch_size` per process."""

    def __init__(self, batch_size: int, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r} must be at least 1")
        self.batch_size = batch_size
        self.seed = seed

    def global_batches(self, epoch: int, global_batch_size: int) -> list[list]:
        raise NotImplementedError

    def collate(self, items: list):
        return items

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start, rank, world_size = 0, 0, 1
        if trainer is not None:  # on resume the trainer has restored global_step before asking for data
            start = trainer.global_step * trainer.accumulate_grad_batches
            rank, world_size = trainer.global_rank, trainer.world_size
        global_size = self.batch_size * world_size
        stream = BatchStream(lambda epoch: self.global_batches(epoch, global_size), start, rank, world_size)
        return DataLoader(stream, batch_size=None, collate_fn=self.collate)

    def shuffled(self, items: Sequence, epoch: int, salt: int = 0) -> list:
        order = list(range(len(items)))
        random.Random(f"{self.seed}:{epoch}:{salt}").shuffle(order)
        return [items[i] for i in order]


def chunk(items: Sequence, size: int) -> list[list]:
    """Consecutive chunks of exactly `size` (the incomplete last one is dropped)."""
    return [list(items[i : i + size]) for i in range(0, len(items) - size + 1, size)]


# ----------------------------------------------------------------------------- reading text


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped (llm2vec.text_files: what counts as a line)."""
    return [line.strip() for _, line in numbered_lines(path) if line.strip()]


def read_sentences(path: str | Path) -> list[str]:
    """One sentence per line (.txt), or both sentence columns of an STS-style TSV (labels unused)."""
    if Path(path).suffix != ".tsv":
        return read_lines(path)
    rows = read_tsv(path, ("sentence1", "sentence2"))
    return [row[column] for _, row in rows for column in ("sentence1", "sentence2")]


def read_hub_texts(path: str, name: str | None = None, split: str = "train", column: str = "text",
                   data_files: str | None = None) -> list[str]:
    """A text column of a hub dataset (e.g. wikitext / wikitext-103-raw-v1), empty lines dropped."""
    from datasets import load_dataset

    data = load_dataset(path, name, split=split, data_files=data_files)
    return [text.strip() for text in data[column] if text and text.strip()]


def read_texts(files: Sequence[str], hub: dict | None, reader: Callable[[str], list[str]],
               hub_if_missing: bool = False) -> list[str]:
    """The texts of the local `files` and of the `hub` dataset. With `hub_if_missing` the hub
    dataset is read only when a local file is missing (the files are a local copy or a part of it)."""
    if hub_if_missing and hub:
        missing = [path for path in files if not Path(path).is_file()]
        if files and not missing:
            logger.info("training texts: the local %s (not the hub dataset %s)", ", ".join(map(str, files)), hub.get("path"))
            hub = None
        else:
            logger.warning("training texts: the hub dataset %s (no local %s)", hub.get("path"), ", ".join(map(str, missing)))
            files = []
    texts = []
    for path in files:
        read = reader(path)
        if not read:  # a file named for training that holds nothing is a mistake, not a no-op
            raise ValueError(f"{path} holds no text (empty or blank lines only): fill it or remove it from `files`")
        texts += read
    if hub:
        texts += read_hub_texts(**hub)
    if not texts:
        raise ValueError("no training texts: name `files` (local paths) or `hub` (a hub dataset)")
    return texts


def jsonl_files(paths: Sequence[str]) -> list[Path]:
    """The files named, a folder standing for every *.jsonl file in it."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} does not exist")
        files += sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no .jsonl files in {', '.join(map(str, paths))}")
    return files


def read_record(path: Path, number: int, line: str) -> dict:
    """One E5-style JSON line: an object with string `query` and `positive`, and optionally string
    (or null) `negative`, `instruction` and `dataset`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object with query and positive, got {type(record).__name__}")
    missing = {"query", "positive"} - set(record)
    if missing:
        raise ValueError(f"{path}:{number}: missing {', '.join(sorted(missing))}")
    for key in ("query", "positive", "negative", "instruction", "dataset"):
        optional = key not in ("query", "positive")
        if not (isinstance(record.get(key), str) or (optional and record.get(key) is None)):
            raise ValueError(f"{path}:{number}: {key} must be a string, got {type(record[key]).__name__} "
                             f"{record[key]!r:.40}")
    if record.get("dataset") is None:
        record.pop("dataset", None)
    return record


# ----------------------------------------------------------------------------- the data modules


class TextBlocks(StreamDataModule):
    """MNTP data: texts tokenized, joined with EOS and cut into blocks of `block_size` tokens."""

    def __init__(
        self,
        tokenizer,
        files: Sequence[str] = (),
        hub: dict | None = None,
        block_size: int = 128,
        batch_size: int = 8,
        max_texts: int | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, seed)
        self.tokenizer = load_tokenizer(resolve_weights(tokenizer)) if isinstance(tokenizer, str) else tokenizer
        self.files, self.hub = list(files), hub
        self.block_size = block_size
        self.max_texts = max_texts
        self.blocks: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.blocks is not None:
            return
        texts = read_texts(self.files, self.hub, read_lines)[: self.max_texts]
        eos = [self.tokenizer.eos_token_id]
        ids = [token for tokens in self.tokenizer(texts)["input_ids"] for token in tokens + eos]
        count = len(ids) // self.block_size
        if count == 0:
            raise ValueError(f"the texts hold {len(ids)} tokens, fewer than one block of {self.block_size}")
        self.blocks = torch.tensor(ids[: count * self.block_size]).view(count, self.block_size)

    def global_batches(self, epoch: int, global_batch_size: int) -> list[list]:
        return chunk(self.shuffled(range(len(self.blocks)), epoch), global_batch_size)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        input_ids = self.blocks[indices]
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class Sentences(StreamDataModule):
    """SimCSE data: unlabelled sentences (.txt lines, STS-style TSV sentence columns, or a hub dataset),
    duplicates dropped. `hub_if_missing`: read `hub` only when a local file is missing (read_texts).
    `min_words`: sentences of fewer whitespace-separated words are dropped too (Wiki1M holds names,
    headings and "Notes": with `group_by_length` they fill whole batches of near-identical negatives;
    dropping those under 5 words cost SmolLM2 2.3 points of STS-B dev, README). `max_words`: longer ones
    are dropped (Wiki1M's median sentence has 16 words, STS-B's 10; on Gemma-3 at most 16 tied with all
    over three seeds, experiments/wikipedia_only.md "Shorter sentences"). Random batches
    (no `group_by_length`) scored +0.8 test, +0.1 dev and +4.9 test with the STS instruction over
    three Gemma-3 seeds, and after MNTP +0.4 dev, +0.8 test (every seed higher): `make run`'s (README)."""

    def __init__(
        self,
        files: Sequence[str] = (),
        hub: dict | None = None,
        batch_size: int = 32,
        max_sentences: int | None = None,
        group_by_length: bool = False,
        seed: int = 0,
        hub_if_missing: bool = False,
        min_words: int = 0,
        max_words: int | None = None,
    ):
        if max_words is not None and max_words < max(min_words, 1):
            raise ValueError(f"max_words {max_words!r} must be at least min_words ({min_words}) and 1 (null: no limit)")
        super().__init__(batch_size, seed)
        self.files, self.hub = list(files), hub
        self.hub_if_missing = hub_if_missing
        self.max_sentences = max_sentences
        self.min_words = min_words
        self.max_words = max_words
        self.group_by_length = group_by_length
        self.sentences: list[str] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.sentences is None:
            texts = read_texts(self.files, self.hub, read_sentences, self.hub_if_missing)
            unique = dict.fromkeys(texts)  # dedupe, keep order
            longest = self.max_words or float("inf")
            kept = [text for text in unique if self.min_words <= len(text.split()) <= longest]
            words = f"{self.min_words} to {self.max_words}" if self.max_words else f"{self.min_words} or more"
            if not kept:
                raise ValueError(f"no sentence of {words} words in {self.files or self.hub}")
            dropped = len(unique) - len(kept)
            if dropped:
                logger.info("sentences of other than %s words dropped: %d of %d", words, dropped, len(unique))
            self.sentences = kept[: self.max_sentences]

    def global_batches(self, epoch: int, global_batch_size: int) -> list[list]:
        sentences = self.shuffled(self.sentences, epoch)
        if not self.group_by_length:
            return chunk(sentences, global_batch_size)
        # Sorted within pools of 64 batches, batches hold sentences of similar length and pad little
        # (training time follows the padded length); the batches come in random order.
        pool = 64 * global_batch_size
        grouped = [s for i in range(0, len(sentences), pool) for s in sorted(sentences[i : i + pool], key=len)]
        return self.shuffled(chunk(grouped, global_batch_size), epoch, salt=1)


class Pairs(StreamDataModule):
    """Supervised data: E5-style JSON lines with `query`, `positive`, optional `negative`,
    `instruction` and `dataset` (default: the file name). Every global batch comes from one dataset,
    so in-batch negatives are of the same kind; instructions go on queries only."""

    def __init__(
        self,
        files: Sequence[str],
        batch_size: int = 8,
        instructions: dict[str, str] | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, seed)
        self.files = list(files)
        self.instructions = dict(instructions or {})
        self.datasets: dict[str, list[dict]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        self.datasets = {}
        for path in jsonl_files(self.files):
            records = [read_record(path, number, line) for number, line in numbered_lines(path) if line.strip()]
            if not records:
                raise ValueError(f"{path} holds no records: fill it or remove it from `files`")
            for record in records:
                record.setdefault("dataset", Path(path).stem)
                self.datasets.setdefault(record["dataset"], []).append(record)

    def global_batches(self, epoch: int, global_batch_size: int) -> list[list]:
        batches = []
        for salt, records in enumerate(self.datasets.values()):
            batches += chunk(self.shuffled(records, epoch, salt), global_batch_size)
        return self.shuffled(batches, epoch, salt=-1)

    def collate(self, records: list[dict]) -> dict[str, list | None]:
        def instruction(record):
            return record.get("instruction") or self.instructions.get(record["dataset"], "")

        has_negatives = all(record.get("negative") for record in records)
        return {
            "query": [[instruction(r), r["query"]] for r in records],
            "positive": [r["positive"] for r in records],
            "negative": [r["negative"] for r in records] if has_negatives else None,
        }
