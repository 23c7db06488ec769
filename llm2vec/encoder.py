"""`LLM2Vec`: a decoder-only LLM used as a text encoder.

    encoder = LLM2Vec.from_pretrained("smollm2-135m", pooling_mode="mean")
    vectors = encoder.encode(["a sentence", ["Retrieve similar text:", "a query"]])
    encoder.save("my-encoder")          # from_pretrained("my-encoder") restores it

A saved encoder is a directory holding `llm2vec_config.json` (base model, pooling and the layers it
reads, max length, attention, template), the trainable peft adapter (plain peft files at the top
level), the adapters that were merged into the base before it (`merged_adapters/NN/`, applied in
order), and the pooling weights when the pooling mode has any. A fully fine-tuned encoder (a stage
with `lora: null`) holds its whole decoder instead (`decoder/`: config, weights, tokenizer), which the
merged adapters are part of.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from peft import PeftModel
from torch import nn
from tqdm.auto import tqdm

from llm2vec import atomic
from llm2vec.bidirectional import block_diagonal_mask, disable_bidirectional, enable_bidirectional, is_bidirectional
from llm2vec.encoder_files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CONFIG_NAME,
    EncoderFilesError,
    base_fingerprint,
    check_adapter_dir,
    check_adapter_fits,
    check_fingerprint,
    check_recorded_base,
    manifest,
    read_config,
)
from llm2vec.loading import load_decoder, looks_like_path
from llm2vec.packing import PACKABLE_ATTENTION, is_packed, pack_sequences, unpack
from llm2vec.pooling import Pooling, average_layers, check_pooling_layers, check_pooling_mode, final_norm

logger = logging.getLogger(__name__)

POOLING_WEIGHTS = "pooling.pt"
DECODER_DIR = "decoder"
# What `save` writes besides the tokenizer: a new save deletes those of an older one it does not write.
ENCODER_ENTRIES = (ADAPTER_CONFIG, *ADAPTER_WEIGHTS, POOLING_WEIGHTS, "merged_adapters", DECODER_DIR)
PROGRESS_BAR_MIN_ITEMS = 256


def is_saved_encoder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def _is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def saved_adapter_stack(root: Path, config: dict) -> list[str]:
    """The adapters of the encoder saved in `root` (its `config`), in the order they apply."""
    stack = [str(root / name) for name in config.get("merged_adapters", [])]
    if _is_adapter(root):
        stack.append(str(root))
    return stack


def _refuse_unfinished(path: Path) -> None:
    """A folder that looks like an encoder's but has no llm2vec_config.json is never read as a base model."""
    if _is_adapter(path):
        raise EncoderFilesError(f"{path} holds a peft adapter but no {CONFIG_NAME}: an interrupted save "
                                "(save it again) or a plain adapter (pass it as peft_model_name_or_path)")
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        raise EncoderFilesError(f"{path} is a run dir without a saved encoder ({CONFIG_NAME}): its training did not "
                                f"finish (resume it: hydra.run.dir={path} resume=true) or its stage trains nothing")


class LLM2Vec(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        pooling_mode: str = "mean",
        max_length: int = 512,
        enable_bidirectional: bool = True,
        base_model_name_or_path: str | None = None,
        merged_adapters: Sequence[str] = (),
        pooling: Pooling | None = None,
        echo: bool = False,
        template: str | None = None,
        decoder_dir: str | None = None,
        pooling_layers: int | Sequence[int] | None = None,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling_mode = check_pooling_mode(pooling_mode)
        self.max_length = max_length
        self.base_model_name_or_path = base_model_name_or_path
        self.merged_adapters = list(merged_adapters)
        # A fully fine-tuned decoder's folder (its weights are not base_model_name_or_path's); None: none.
        self.decoder_dir = decoder_dir
        self.weights_trained = False  # set by full fine-tuning: save then writes the decoder's weights
        self.pooling = pooling or Pooling(pooling_mode, hidden_size=model.config.hidden_size)
        # The layers pooled (their states' mean): a decoder's best sentence features need not sit in
        # its last layer (Skean et al., 2025, "Layer by Layer").
        self.set_pooling_layers(pooling_layers)
        # Echo embeddings (Springer et al., 2024): the text twice, pooling over the second copy,
        # which a causal model reads having seen the whole text once.
        self.echo = echo
        # A prompt around every text (PromptBERT, Jiang et al. 2022; PromptEOL, Jiang et al. 2023):
        # its part before "{text}" is attended to, never pooled; its part after is pooled with the text.
        self.template = None if template == "{text}" else template  # "{text}": no template
        _template_ids(tokenizer, self.template, echo)  # refuses a bad template now, not at the first encode
        self._warned_truncation = False
        self.set_bidirectional(enable_bidirectional)
        self._adds_bos = _tokenizer_adds_bos(tokenizer)

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        base_model_name_or_path: str,
        peft_model_name_or_path: str | Sequence[str] | None = None,
        merge_peft: bool = False,
        enable_bidirectional: bool | None = None,
        pooling_mode: str | None = None,
        max_length: int | None = None,
        echo: bool | None = None,
        template: str | None = None,
        pooling_layers: int | Sequence[int] | None = None,
        **hf_kwargs,
    ) -> "LLM2Vec":
        """Load an encoder. `base_model_name_or_path` is a shipped model name (`smollm2-135m`,
        `gemma3-270m`), a GGUF file, a local directory, a hub id, or a directory written by `save`
        (or by a training run). `peft_model_name_or_path` is a peft adapter to load on top, or a
        list of them, applied in order (each but the last merged before the next, as training stacks
        them). `template` wraps every text ("{text}" marks where): what comes after "{text}" is pooled
        with the text, what comes before is not. `pooling_layers`: the layers whose states' mean is
        pooled (0: the token embeddings, -1: the last). Arguments left as None take the saved
        encoder's values, else bidirectional attention, mean pooling of the last layer, 512 tokens and
        no template ("{text}")."""
        if pooling_mode is not None:
            check_pooling_mode(pooling_mode)
        saved, saved_root = {}, None
        adapters: list[str] = []
        if is_saved_encoder(base_model_name_or_path):
            saved_root = Path(base_model_name_or_path)
            saved = read_config(saved_root)  # refuses a damaged or incomplete save, naming the file
            adapters = saved_adapter_stack(saved_root, saved)
            base_model_name_or_path = saved["base_model_name_or_path"]
        elif Path(base_model_name_or_path).is_dir():
            _refuse_unfinished(Path(base_model_name_or_path))
        decoder_dir = str(saved_root / saved["decoder"]) if saved.get("decoder") else None
        if isinstance(peft_model_name_or_path, (str, Path)):
            peft_model_name_or_path = [peft_model_name_or_path]
        for adapter in peft_model_name_or_path or []:
            if not Path(adapter).exists() and looks_like_path(str(adapter)):
                raise FileNotFoundError(f"peft_model_name_or_path {str(adapter)!r} does not exist")
            adapters.append(str(adapter))
        for adapter in adapters:
            check_adapter_dir(adapter)

        model, tokenizer = load_decoder(decoder_dir or base_model_name_or_path, **_hf_kwargs(hf_kwargs))
        if saved_root is not None:
            check_fingerprint(saved_root, saved, model, base_model_name_or_path)
        # Every adapter but the last is merged (they were merged before the last one was trained);
        # the last is merged only on request, so it can keep training.
        merged = []
        for adapter in adapters[:-1]:
            model = _load_adapter(model, adapter, base_model_name_or_path).merge_and_unload()
            merged.append(adapter)
        if adapters:
            model = _load_adapter(model, adapters[-1], base_model_name_or_path, is_trainable=not merge_peft)
            if merge_peft:
                model = model.merge_and_unload()
                merged.append(adapters[-1])

        pooling_mode = pooling_mode or saved.get("pooling_mode", "mean")
        encoder = cls(
            model,
            tokenizer,
            pooling_mode=pooling_mode,
            max_length=max_length or saved.get("max_length", 512),
            enable_bidirectional=_first_set(enable_bidirectional, saved.get("enable_bidirectional"), True),
            base_model_name_or_path=base_model_name_or_path,
            echo=_first_set(echo, saved.get("echo"), False),
            template=_first_set(template, saved.get("template")),
            merged_adapters=merged,
            decoder_dir=decoder_dir,
            pooling_layers=_first_set(pooling_layers, saved.get("pooling_layers")),
        )
        pooling_file = saved_root / POOLING_WEIGHTS if saved_root else None
        if pooling_file is not None and pooling_file.is_file() and pooling_mode == saved["pooling_mode"]:
            encoder.pooling.load_state_dict(torch.load(pooling_file, map_location="cpu"))
        encoder.pooling.to(device=encoder.device, dtype=encoder.dtype)
        return encoder

    def save(self, path: str | Path) -> Path:
        """Write the encoder to `path`; `LLM2Vec.from_pretrained(path)` gives it back."""
        root = Path(path)
        # Written into a staging folder, then moved in with llm2vec_config.json last: a kill leaves
        # the old encoder, the new one, or a folder from_pretrained refuses (llm2vec.atomic).
        with atomic.directory(root, commit_last=CONFIG_NAME, replaces=ENCODER_ENTRIES) as staging:
            decoder = self._save_decoder(staging / DECODER_DIR)
            merged_dirs = []
            # Merged into the base before training, they are in the saved decoder's weights already.
            for index, adapter in enumerate([] if self.weights_trained else self.merged_adapters):
                name = f"merged_adapters/{index:02d}"
                # The adapter files only: a training run dir also holds checkpoints, logs and metrics.
                shutil.copytree(adapter, staging / name,
                                ignore=lambda _, names: [n for n in names if not n.startswith("adapter_")])
                merged_dirs.append(name)
            if isinstance(self.model, PeftModel):
                self.model.save_pretrained(staging)
            if any(True for _ in self.pooling.parameters()):
                torch.save(self.pooling.state_dict(), staging / POOLING_WEIGHTS)
            self.tokenizer.save_pretrained(staging)
            loaded = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file() and (
                p.name.startswith("adapter_") or p.name == POOLING_WEIGHTS or p.parts[-2] == DECODER_DIR))
            config = {
                "base_model_name_or_path": self.base_model_name_or_path,
                "pooling_mode": self.pooling_mode,
                "pooling_layers": self.pooling_layers,
                "max_length": self.max_length,
                "enable_bidirectional": self.bidirectional,
                "merged_adapters": merged_dirs,
                "decoder": decoder,
                "echo": self.echo,
                "template": self.template,
                "base_model": base_fingerprint(self.model),  # what the adapters fit
                "files": manifest(staging, loaded),  # sizes and hashes, checked on load
            }
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return root

    def _save_decoder(self, folder: Path) -> str | None:
        """The whole decoder into `folder` when its own weights were trained or loaded from such a
        save; its name relative to the encoder's root, else None (the base model's weights are used)."""
        if self.weights_trained:
            if isinstance(self.model, PeftModel):
                raise ValueError("an encoder with a LoRA adapter saves the adapter: weights_trained is for full "
                                 "fine-tuning (a plain decoder)")
            self.model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
        elif self.decoder_dir is not None:
            shutil.copytree(self.decoder_dir, folder)
        else:
            return None
        return DECODER_DIR

    # ----------------------------------------------------------------- attention
    @property
    def bidirectional(self) -> bool:
        return is_bidirectional(self.model)

    def set_bidirectional(self, enabled: bool) -> None:
        (enable_bidirectional if enabled else disable_bidirectional)(self.model)

    @property
    def can_pack(self) -> bool:
        """Whether `tokenize(..., pack=True)` works: a block-diagonal mask needs bidirectional
        attention (the hook builds it) and an attention implementation that takes a full mask."""
        return self.bidirectional and self.model.config._attn_implementation in PACKABLE_ATTENTION

    def set_pooling_layers(self, layers: int | Sequence[int] | None) -> None:
        """Pool these layers from now on (and in what `save` writes), e.g. an intermediate layer of an
        encoder trained on its last; None: the last."""
        self.pooling_layers = check_pooling_layers(layers, self.model.config.num_hidden_layers)
        if not self.pools_last_layer_only:
            final_norm(self.model)  # refuses now a decoder whose layers cannot be pooled, not at the first encode

    @property
    def pools_last_layer_only(self) -> bool:
        return self.pooling_layers == [self.model.config.num_hidden_layers]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ----------------------------------------------------------------- tokenization
    def tokenize(self, items: Sequence[str | Sequence[str]], pack: bool = False) -> dict[str, torch.Tensor]:
        """Token ids and masks for texts or [instruction, text] pairs. `embed_mask` marks the text
        tokens (what pooling reads); instruction tokens are attended to but not pooled. `pack`:
        several texts a row and little padding (`llm2vec.packing`; see `can_pack`)."""
        sequences = self._token_ids(items)
        if not pack:
            return self._pad(sequences)
        if not self.can_pack:
            raise ValueError(
                "packed sequences need bidirectional attention with "
                f"{', '.join(PACKABLE_ATTENTION)} attention (this encoder: bidirectional={self.bidirectional}, "
                f"attention {self.model.config._attn_implementation})"
            )
        return pack_sequences(sequences, self.tokenizer.pad_token_id)

    def _token_ids(self, items: Sequence[str | Sequence[str]]) -> list[tuple[list[int], list[int]]]:
        """Per item, (BOS + instruction ids + template head, text ids + template tail [+ EOS]), the
        text truncated to max_length."""
        instructions, texts = zip(*(_split_item(item) for item in _check_items(items)))
        text_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        instruction_ids = self._instruction_ids(instructions)
        prefix = [self.tokenizer.bos_token_id] if self._adds_bos else []
        template_head, template_tail = _template_ids(self.tokenizer, self.template, self.echo)
        suffix = template_tail + ([self.tokenizer.eos_token_id] if self.pooling_mode == "eos_token" else [])
        sequences = []
        for instruction, text in zip(instruction_ids, text_ids):
            instruction = instruction + template_head
            room = self.max_length - len(prefix) - len(instruction) - len(suffix)
            if self.echo:
                room //= 2
            if len(text) > room:
                self._warn_truncation()
                text = text[: max(room, 1)]
            head = prefix + instruction + (text if self.echo else [])
            sequences.append((head, text + suffix))
        return sequences

    def _instruction_ids(self, instructions: Sequence[str]) -> list[list[int]]:
        if not any(instructions):
            return [[] for _ in instructions]
        return [ids if text else [] for ids, text in zip(
            self.tokenizer(list(instructions), add_special_tokens=False)["input_ids"], instructions)]

    def _pad(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        # At least one position: a batch of empty texts is all padding and pools to zero vectors.
        length = max(1, max(len(head) + len(text) for head, text in sequences))
        pad_id = self.tokenizer.pad_token_id
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        rows, attention, embed = [], [], []
        for head, text in sequences:
            padding = length - len(head) - len(text)
            ids = head + text
            att = [1] * len(ids)
            emb = [0] * len(head) + [1] * len(text)
            if left:
                rows.append([pad_id] * padding + ids), attention.append([0] * padding + att)
                embed.append([0] * padding + emb)
            else:
                rows.append(ids + [pad_id] * padding), attention.append(att + [0] * padding)
                embed.append(emb + [0] * padding)
        return {
            "input_ids": torch.tensor(rows, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "embed_mask": torch.tensor(embed, dtype=torch.long),
        }

    def _warn_truncation(self) -> None:
        if not self._warned_truncation:
            logger.warning("some inputs are longer than max_length=%d tokens and were truncated", self.max_length)
            self._warned_truncation = True

    # ----------------------------------------------------------------- forward and encode
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled embeddings (batch, hidden) of tokenized features, with gradients if enabled."""
        return self.pool_layer_sets(features, [self.pooling_layers])[0]

    def pool_layer_sets(self, features: dict[str, torch.Tensor],
                        layer_sets: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """From one forward pass, one pooled embedding (batch, hidden) per set of layers, each pooled as
        `pooling_layers` would be (`check_pooling_layers` numbers): e.g. the trained embedding and an
        intermediate layer's beside it (SimCSE's `layer_negatives`)."""
        attention_mask = features["attention_mask"]
        position_ids = features.get("position_ids")  # packed features bring theirs
        if position_ids is None:
            # Positions count real tokens only, so left padding gives the same positions as none.
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        packed = is_packed(features)
        model_mask = attention_mask
        if packed:  # each text of a row attends to itself only
            model_mask = block_diagonal_mask(self.model, features["input_ids"], attention_mask)
        last = [self.model.config.num_hidden_layers]
        last_only = all(list(layers) == last for layers in layer_sets)
        outputs = self.model(input_ids=features["input_ids"], attention_mask=model_mask, position_ids=position_ids,
                             use_cache=False, output_hidden_states=not last_only)
        pooled = []
        for layers in layer_sets:
            hidden = outputs.last_hidden_state
            if list(layers) != last:
                hidden = average_layers(outputs.hidden_states, final_norm(self.model), layers)
            pooled.append(self.pooling(*unpack(hidden, features)) if packed
                          else self.pooling(hidden, attention_mask, features["embed_mask"]))
        return pooled

    def encode(
        self,
        sentences: str | Sequence[str | Sequence[str]],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | None = None,
        normalize_embeddings: bool = False,
        max_batch_tokens: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts (or [instruction, text] pairs), float32, in input order. A single string
        gives one vector; a list gives a matrix. An empty text gives a zero vector.

        A batch holds at most `batch_size` texts and, if `max_batch_tokens` is set, at most that
        many tokens counting padding: with a large `batch_size`, short texts then share big batches
        and long ones are split. On CPU about 2048 tokens is fastest (batches that stay in cache)."""
        single = isinstance(sentences, str)
        items = [sentences] if single else sentences
        if device is not None:
            self.to(device)
        # Sorted by token count, not characters: batches then hold texts of (nearly) one length,
        # which cuts padding from about a third of the tokens to a few percent on STS-B.
        sequences = self._token_ids(items)
        lengths = [len(head) + len(text) for head, text in sequences]
        order = np.argsort([-n for n in lengths], kind="stable")
        batches = _batches(order, lengths, batch_size, max_batch_tokens)
        if show_progress_bar is None:
            show_progress_bar = len(items) >= PROGRESS_BAR_MIN_ITEMS
        was_training = self.training
        self.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for batch in tqdm(batches, desc="Encoding", disable=not show_progress_bar):
                    features = {k: v.to(self.device) for k, v in self._pad([sequences[i] for i in batch]).items()}
                    chunks.append(self(features).float())
        finally:
            self.train(was_training)
        embeddings = torch.cat(chunks)[torch.from_numpy(np.argsort(order))]
        if normalize_embeddings:
            embeddings = nn.functional.normalize(embeddings, dim=-1)
        if single:
            embeddings = embeddings[0]
        if convert_to_tensor:
            return embeddings
        return embeddings.cpu().numpy() if convert_to_numpy else list(embeddings.cpu())


def _load_adapter(model: nn.Module, adapter: str, base: str, is_trainable: bool = False) -> PeftModel:
    """peft's loading, refusing an adapter made for another base model (peft would skip what does
    not fit and load the rest)."""
    check_recorded_base(model, adapter, base)
    try:
        peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=is_trainable)
    except (RuntimeError, ValueError) as error:  # size mismatches, target modules the model lacks
        lines = str(error).strip().splitlines() or [type(error).__name__]
        reason = next((line.strip() for line in lines if "size mismatch" in line), lines[0])
        raise EncoderFilesError(f"adapter {adapter} does not fit base model {base}: {reason}") from None
    check_adapter_fits(peft_model, adapter, base)
    return peft_model


def _batches(order: np.ndarray, lengths: list[int], batch_size: int, max_batch_tokens: int | None) -> list:
    """Consecutive runs of `order` (longest text first) of at most `batch_size` texts and, if set,
    at most `max_batch_tokens` tokens with padding; a text longer than the budget goes alone."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
        raise ValueError(f"max_batch_tokens must be a positive integer or None, got {max_batch_tokens!r}")
    batches, start = [], 0
    while start < len(order):
        size = batch_size
        if max_batch_tokens is not None:  # the first text is the longest: it sets the padded length
            size = max(1, min(size, max_batch_tokens // max(lengths[order[start]], 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def _template_ids(tokenizer, template: str | None, echo: bool) -> tuple[list[int], list[int]]:
    """The token ids of a template's part before "{text}" and after it (none without a template)."""
    if template is None:
        return [], []
    if not isinstance(template, str) or template.count("{text}") != 1:
        raise ValueError(f"template {template!r} must be a text holding {{text}} once, where each text goes")
    if echo:
        raise ValueError("a template and echo embeddings do not combine: choose one")
    head, tail = template.split("{text}")
    # Tokenized apart from the text, so a text's own tokens are the same with and without a template.
    return [tokenizer(part, add_special_tokens=False)["input_ids"] if part else [] for part in (head, tail)]


def _split_item(item: str | Sequence[str]) -> tuple[str, str]:
    if isinstance(item, str):
        return "", item
    instruction, text = item
    return instruction, text


def _check_items(items) -> list:
    """The items as a list, or one line naming the first that is not a text or [instruction, text] pair."""
    if not isinstance(items, (list, tuple)):
        hint = ": decode the bytes first" if isinstance(items, (bytes, bytearray)) else ""
        raise TypeError(f"encode() takes a string or a list of texts or [instruction, text] pairs, "
                        f"got {type(items).__name__}{hint}")
    if len(items) == 0:
        raise ValueError("encode() needs a non-empty list of texts or [instruction, text] pairs")
    for index, item in enumerate(items):
        ok = isinstance(item, str) or (
            isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)
        )
        if not ok:
            raise TypeError(
                f"encode() item {index} is {type(item).__name__} {item!r:.60}: "
                "expected a string or an [instruction, text] pair of strings"
            )
        for text in (item,) if isinstance(item, str) else item:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:  # a lone surrogate, e.g. from bytes decoded with surrogateescape
                raise ValueError(f"encode() item {index} is not valid Unicode: {text[error.start]!r} at "
                                 f"position {error.start} is a lone surrogate") from None
    return list(items)


def _tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def _hf_kwargs(hf_kwargs: dict) -> dict:
    kwargs = dict(hf_kwargs)
    if "torch_dtype" in kwargs:  # the pre-5.0 name, still what most users type
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"] != "auto":
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    return kwargs
