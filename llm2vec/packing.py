"""Padding-free batches: several texts share a row, and attention stays within each text.

Texts padded to the longest of their batch waste the compute spent on padding: about half of it
for sentences of mixed lengths, which is what contrastive training feeds the model. Packed, the
texts fill rows as long as the longest one (first fit, longest first). `attention_mask` then holds
each token's text number within its row (1, 2, ...; 0 for padding), from which
`llm2vec.bidirectional.block_diagonal_mask` builds the attention mask, and positions restart at 0
for every text. After the model, `unpack` lays the token states out one text a row again, so
pooling is unchanged.

Bidirectional attention with eager, sdpa or flex attention only: the mask must be materialised
(flash attention reads a padding mask, not a block-diagonal one).
"""

from __future__ import annotations

import torch

PACKABLE_ATTENTION = ("eager", "sdpa", "flex_attention")


def first_fit_rows(lengths: list[int]) -> list[list[int]]:
    """Indices of the texts in each row: longest first, each into the first row it fits, rows as
    long as the longest text."""
    width = max(lengths, default=0)
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if lengths[index] <= free), None)
        if row is None:
            row = len(rows)
            rows.append([])
            room.append(width)
        rows[row].append(index)
        room[row] -= lengths[index]
    return rows


def pack_sequences(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed features of (head ids, text ids) pairs, as `LLM2Vec.tokenize` makes them: `input_ids`,
    `attention_mask` (text numbers), `embed_mask` and `position_ids` of shape (rows, width), plus
    `unpack_index` / `unpack_mask` of shape (texts, width), where each text's tokens lie."""
    lengths = [len(head) + len(text) for head, text in sequences]
    width = max(1, max(lengths))  # at least one position: empty texts pool to zero vectors
    rows = first_fit_rows(lengths)
    shape = (max(len(rows), 1), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    embed_mask = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    unpack_index = torch.zeros((len(sequences), width), dtype=torch.long)
    unpack_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for number, index in enumerate(members, start=1):
            head, text = sequences[index]
            end = start + lengths[index]
            input_ids[row, start:end] = torch.tensor(head + text, dtype=torch.long)
            attention_mask[row, start:end] = number
            embed_mask[row, start + len(head) : end] = 1
            position_ids[row, start:end] = torch.arange(lengths[index])
            unpack_index[index, : lengths[index]] = torch.arange(row * width + start, row * width + end)
            unpack_mask[index, : lengths[index]] = 1
            start = end
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "embed_mask": embed_mask,
        "position_ids": position_ids,
        "unpack_index": unpack_index,
        "unpack_mask": unpack_mask,
    }


def is_packed(features: dict[str, torch.Tensor]) -> bool:
    return "unpack_index" in features


def unpack(hidden: torch.Tensor, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(texts, width, dim) token states with their attention and embed masks, one text a row
    (right-padded), from the (rows, width, dim) states of packed features."""
    index, mask = features["unpack_index"], features["unpack_mask"]
    states = hidden.flatten(0, 1)[index]
    embed_mask = features["embed_mask"].flatten()[index] * mask
    return states, mask, embed_mask

