"""`LlamaCppEncoder`: an exported GGUF encoder run by llama.cpp (through llama-cpp-python), giving
the embeddings `LLM2Vec.encode` gives.

    encoder = LlamaCppEncoder("encoder.gguf")
    vectors = encoder.encode(["a sentence", ["Retrieve similar text:", "a query"]])

llama.cpp's own pooling covers the whole sequence (BOS and instruction included); LLM2Vec pools the
text tokens only. So the model runs with pooling NONE (per-token states) and the states are pooled
here, by `llm2vec.pooling.Pooling`, with the token layout of `LLM2Vec.tokenize`: [BOS if the
tokenizer adds it] + instruction + text [+ EOS for eos_token pooling], the text truncated to
`max_length`. Pooling mode, max length and echo come from the file's `llm2vec.*` keys.

Several texts share one llama.cpp batch (one sequence id each; attention stays within a sequence).
A batch is decoded in one piece, as non-causal attention needs (llama.cpp's n_ubatch = n_batch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np
import torch

from llm2vec.encoder import _check_items, _split_item
from llm2vec.gguf_export import KEY_ECHO, KEY_MAX_LENGTH, KEY_POOLING_MODE
from llm2vec.pooling import Pooling

try:
    import llama_cpp
except ImportError:  # the error says how to install it when an encoder is made
    llama_cpp = None


class LlamaCppEncoder:
    def __init__(self, gguf_path: str | Path, max_batch_tokens: int = 1024, max_batch_texts: int = 256,
                 n_threads: int | None = None, flash_attn: bool = True, verbose: bool = False):
        """`max_batch_tokens`: tokens a llama.cpp batch holds (a text longer than that is refused).
        `flash_attn`: llama.cpp's CPU flash attention skips the masked pairs between the texts of a
        batch; without it every token attends over the whole batch (then keep batches small)."""
        if llama_cpp is None:
            raise ImportError("LlamaCppEncoder needs llama-cpp-python: `pip install llama-cpp-python` "
                              "(or `make setup`, which builds it)")
        path = Path(gguf_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(gguf_path)!r} does not exist")
        settings = _read_settings(path)
        self.pooling_mode = settings["pooling_mode"]
        self.max_length = settings["max_length"]
        self.echo = settings["echo"]
        self.max_batch_tokens = max_batch_tokens
        self.pooling = Pooling(self.pooling_mode)
        threads = n_threads or os.cpu_count() or 1
        self.llama = llama_cpp.Llama(
            model_path=str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
            n_ctx=max_batch_tokens, n_batch=max_batch_tokens, n_ubatch=max_batch_tokens,
            n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn, verbose=verbose,
        )
        self.max_batch_texts = min(max_batch_texts, self.llama.context_params.n_seq_max)
        self.hidden_size = self.llama.n_embd()
        self._batch = llama_cpp.llama_batch_init(max_batch_tokens, 0, 1)
        self._prefix = [self.llama.token_bos()] if settings["add_bos"] else []
        self._suffix = [self.llama.token_eos()] if self.pooling_mode == "eos_token" else []

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self.llama.close()

    # ----------------------------------------------------------------- tokenization
    def token_ids(self, items: Sequence[str | Sequence[str]]) -> list[tuple[list[int], list[int]]]:
        """Per item, (head, pooled): the ids attended to but not pooled (BOS, instruction, and the
        first copy of the text with echo) and the ids pooled (the text [+ EOS]), as
        `LLM2Vec._token_ids` lays them out."""
        sequences = []
        for item in items:
            instruction, text = _split_item(item)
            instruction_ids = self._tokenize(instruction)
            text_ids = self._tokenize(text)
            room = self.max_length - len(self._prefix) - len(instruction_ids) - len(self._suffix)
            if self.echo:
                room //= 2
            text_ids = text_ids[: max(room, 1)]
            head = self._prefix + instruction_ids + (text_ids if self.echo else [])
            sequences.append((head, text_ids + self._suffix))
        return sequences

    def _tokenize(self, text: str) -> list[int]:
        # special=True: special tokens written in the text are parsed, as transformers' tokenizers do.
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []

    # ----------------------------------------------------------------- encoding
    def encode(self, sentences: str | Sequence[str | Sequence[str]], normalize_embeddings: bool = False) -> np.ndarray:
        """Embed texts (or [instruction, text] pairs) as `LLM2Vec.encode` does: float32, input
        order, one vector for one string, a zero vector for an empty text."""
        single = isinstance(sentences, str)
        items = [sentences] if single else _check_items(sentences)
        sequences = self.token_ids(items)
        too_long = [i for i, (head, text) in enumerate(sequences) if len(head) + len(text) > self.max_batch_tokens]
        if too_long:
            raise ValueError(f"item {too_long[0]} has more tokens than max_batch_tokens={self.max_batch_tokens}: "
                             "make the encoder with a larger max_batch_tokens")
        lengths = [len(head) + len(text) for head, text in sequences]
        order = np.argsort([-n for n in lengths], kind="stable")
        embeddings = np.zeros((len(items), self.hidden_size), dtype=np.float32)
        for batch in self._batches([i for i in order if lengths[i] > 0], lengths):
            embeddings[batch] = self._pool(batch, sequences, self._token_states([sequences[i] for i in batch]))
        if normalize_embeddings:
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return embeddings[0] if single else embeddings

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        batches, current, tokens = [], [], 0
        for index in order:
            if current and (tokens + lengths[index] > self.max_batch_tokens or len(current) == self.max_batch_texts):
                batches.append(current)
                current, tokens = [], 0
            current.append(index)
            tokens += lengths[index]
        if current:
            batches.append(current)
        return batches

    def _token_states(self, sequences: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """The last hidden state of every token, one (length, hidden) array per sequence."""
        batch, position = self._batch, 0
        for seq_id, (head, text) in enumerate(sequences):
            for offset, token in enumerate(head + text):
                batch.token[position] = token
                batch.pos[position] = offset
                batch.n_seq_id[position] = 1
                batch.seq_id[position][0] = seq_id
                batch.logits[position] = True  # every token is an output: pooling reads them all
                position += 1
        batch.n_tokens = position
        ctx = self.llama.ctx
        memory = llama_cpp.llama_get_memory(ctx)  # None for architectures without a KV cache (llama-embed)
        if memory:
            llama_cpp.llama_memory_clear(memory, True)
        if (code := llama_cpp.llama_decode(ctx, batch)) != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")
        states = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(ctx), shape=(position, self.hidden_size)).copy()
        bounds = np.cumsum([0] + [len(head) + len(text) for head, text in sequences])
        return [states[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    def _pool(self, batch: list[int], sequences, states: list[np.ndarray]) -> np.ndarray:
        """Right-padded (batch, length, hidden) states and masks through the encoder's Pooling."""
        length = max(len(s) for s in states)
        hidden = torch.zeros(len(batch), length, self.hidden_size)
        attention = torch.zeros(len(batch), length, dtype=torch.long)
        embed = torch.zeros(len(batch), length, dtype=torch.long)
        for row, (index, state) in enumerate(zip(batch, states)):
            head, text = sequences[index]
            hidden[row, : len(state)] = torch.from_numpy(state)
            attention[row, : len(state)] = 1
            embed[row, len(head) : len(head) + len(text)] = 1
        with torch.inference_mode():
            return self.pooling(hidden, attention, embed).numpy()


def _read_settings(path: Path) -> dict:
    """The encoder settings written by `llm2vec.gguf_export`."""
    fields = gguf.GGUFReader(path).fields
    if KEY_POOLING_MODE not in fields:
        raise ValueError(f"{path} has no {KEY_POOLING_MODE} key: it was not written by llm2vec's GGUF export "
                         "(python -m llm2vec.export gguf ...)")
    add_bos = fields.get("tokenizer.ggml.add_bos_token")
    return {
        "pooling_mode": fields[KEY_POOLING_MODE].contents(),
        "max_length": int(fields[KEY_MAX_LENGTH].contents()),
        "echo": bool(fields[KEY_ECHO].contents()),
        "add_bos": bool(add_bos.contents()) if add_bos is not None else False,
    }
