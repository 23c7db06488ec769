"""Export an encoder as a GGUF file that llama.cpp runs as an embedding model:

    python -m llm2vec.export gguf <run dir | saved encoder | model> encoder.gguf --type q8_0

or `to_gguf(encoder, "encoder.gguf", type="f16")`. Every adapter is merged, the decoder is written
with llama.cpp's tensor names and metadata for its architecture, attention is marked non-causal
(`<arch>.attention.causal = false`, which llama.cpp reads for every architecture) and the pooling
type is set to the nearest one llama.cpp has. The tokenizer is copied from a GGUF of the base model.

llama.cpp pools over every token of the sequence; LLM2Vec pools over the text tokens only (not BOS,
not the instruction). `llm2vec.llama_cpp_encoder.LlamaCppEncoder` runs the file with per-token
states and pools them as `LLM2Vec` does; it reads the encoder settings from the `llm2vec.*` keys.

Architectures: Llama and Mistral, as llama.cpp's `llama-embed` (default) or `llama`. Gemma-3 is
refused: its sliding-window layers stay windowed in llama.cpp's non-causal path (see `UNSUPPORTED`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import gguf
import numpy as np
import torch
from peft import PeftModel

from llm2vec.encoder import LLM2Vec
from llm2vec.loading import SHIPPED_MODELS, TINY_PREFIX

# transformers model_type -> the llama.cpp architectures that run it. `llama-embed` is llama.cpp's
# Llama for embedding models (no KV cache, no output head: less work a text); `llama` also runs on
# older llama.cpp builds and runtimes that do not know `llama-embed`.
ARCHITECTURES = {
    "llama": {"llama-embed": gguf.MODEL_ARCH.LLAMA_EMBED, "llama": gguf.MODEL_ARCH.LLAMA},
    "mistral": {"llama-embed": gguf.MODEL_ARCH.LLAMA_EMBED, "llama": gguf.MODEL_ARCH.LLAMA},
}
UNSUPPORTED = {
    "gemma3_text": "llama.cpp's gemma3 keeps its sliding-window layers windowed towards earlier tokens when "
    "attention is non-causal, while LLM2Vec's bidirectional Gemma-3 attends to every token in every layer",
}
# weight type -> (llama.cpp file type, type of the matrices); 1D tensors (norms) stay float32
TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
# LLM2Vec pooling mode -> what llama.cpp does when it pools itself (llama-server, Ollama). Only the
# runtime adapter pools exactly: these pool over the whole sequence, instruction and BOS included.
LLAMA_CPP_POOLING = {
    "mean": gguf.PoolingType.MEAN,
    "weighted_mean": gguf.PoolingType.MEAN,  # llama.cpp has no position-weighted mean
    "eos_token": gguf.PoolingType.LAST,
    "last_token": gguf.PoolingType.LAST,
    "bos_token": gguf.PoolingType.CLS,
}
# The encoder settings the runtime adapter reads back.
KEY_POOLING_MODE = "llm2vec.pooling_mode"
KEY_MAX_LENGTH = "llm2vec.max_length"
KEY_ECHO = "llm2vec.echo"


def export_gguf(model_name_or_path: str, path: str | Path, type: str = "f16", arch: str = "llama-embed",
                tokenizer_gguf: str | Path | None = None) -> Path:
    """Load an encoder (run dir, saved encoder or model) in float32 with every adapter merged and
    write it to `path` as GGUF."""
    encoder = LLM2Vec.from_pretrained(model_name_or_path, merge_peft=True, dtype=torch.float32)
    return to_gguf(encoder, path, type=type, arch=arch, tokenizer_gguf=tokenizer_gguf)


def to_gguf(encoder: LLM2Vec, path: str | Path, type: str = "f16", arch: str = "llama-embed",
            tokenizer_gguf: str | Path | None = None) -> Path:
    """Write `encoder` to `path` as a GGUF embedding model. `type`: f32, f16, bf16 or q8_0 for the
    matrices. `arch`: the llama.cpp architecture (`llama-embed`, or `llama` for older runtimes).
    `tokenizer_gguf`: a GGUF of the base model to copy the tokenizer from (needed unless the base
    model is a GGUF file or a shipped model)."""
    if type not in TYPES:
        raise ValueError(f"unknown GGUF type {type!r}: choose {', '.join(TYPES)}")
    check_exportable(encoder)
    model = encoder.model
    if isinstance(model, PeftModel):  # merge into a copy: the encoder keeps its trainable adapter
        model = copy.deepcopy(model).merge_and_unload()
    config = model.config
    if arch not in ARCHITECTURES[config.model_type]:
        raise ValueError(f"unknown llama.cpp architecture {arch!r} for {config.model_type}: "
                         f"choose {', '.join(ARCHITECTURES[config.model_type])}")
    arch = ARCHITECTURES[config.model_type][arch]
    file_type, matrix_type = TYPES[type]

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(Path(str(encoder.base_model_name_or_path)).name + " LLM2Vec encoder")
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_llama_hparams(writer, config)
    writer.add_causal_attention(not encoder.bidirectional)
    writer.add_pooling_type(LLAMA_CPP_POOLING[encoder.pooling_mode])
    writer.add_string(KEY_POOLING_MODE, encoder.pooling_mode)
    writer.add_uint32(KEY_MAX_LENGTH, encoder.max_length)
    writer.add_bool(KEY_ECHO, encoder.echo)
    _add_tokenizer(writer, tokenizer_source(encoder, tokenizer_gguf), adds_bos=encoder._adds_bos,
                   vocab_size=config.vocab_size)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        name = names.get_name(f"model.{hf_name}", try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no llama.cpp tensor name for {hf_name!r} of a {config.model_type} model")
        data = llama_cpp_layout(hf_name, tensor.detach().float().cpu().numpy(), config)
        quantized, qtype = _quantize(data, matrix_type)
        writer.add_tensor(name, quantized, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def check_exportable(encoder: LLM2Vec) -> None:
    model_type = encoder.model.config.model_type
    if model_type in UNSUPPORTED:
        raise ValueError(f"cannot export a {model_type} encoder to GGUF: {UNSUPPORTED[model_type]}")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"cannot export a {model_type} encoder to GGUF: supported are {', '.join(ARCHITECTURES)}")
    if encoder.pooling_mode not in LLAMA_CPP_POOLING:
        raise ValueError(f"cannot export pooling_mode {encoder.pooling_mode!r} to GGUF (its pooling weights have "
                         f"no place in llama.cpp): choose {', '.join(LLAMA_CPP_POOLING)}")
    if not encoder.pools_last_layer_only:
        raise ValueError(f"cannot export pooling_layers={encoder.pooling_layers} to GGUF: llama.cpp pools the last "
                         "layer only (export to sentence-transformers keeps them)")
    if encoder.template is not None:
        raise ValueError(f"cannot export a template ({encoder.template!r}) to GGUF yet: llama.cpp would embed the "
                         "texts without it (export to sentence-transformers keeps it)")
    rope = getattr(encoder.model.config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"cannot export rope_type {rope['rope_type']!r} to GGUF yet: only the default rotary embedding")


def _add_llama_hparams(writer: gguf.GGUFWriter, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def llama_cpp_layout(hf_name: str, data: np.ndarray, config) -> np.ndarray:
    """llama.cpp's rotary embedding pairs dimensions (2i, 2i+1) of a head; transformers' pairs
    (i, i + head_dim/2). The rows of the query and key projections are reordered to match, as
    llama.cpp's convert_hf_to_gguf.py does."""
    if ".q_proj." in hf_name:
        return _interleave_rotary_halves(data, config.num_attention_heads)
    if ".k_proj." in hf_name:
        return _interleave_rotary_halves(data, config.num_key_value_heads)
    return data


def _interleave_rotary_halves(data: np.ndarray, heads: int) -> np.ndarray:
    return data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def transformers_layout(hf_name: str, data: np.ndarray, config) -> np.ndarray:
    """The inverse of `llama_cpp_layout`."""
    heads = {".q_proj.": config.num_attention_heads, ".k_proj.": config.num_key_value_heads}
    for part, count in heads.items():
        if part in hf_name:
            return data.reshape(count, data.shape[0] // count // 2, 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)
    return data


def _quantize(data: np.ndarray, matrix_type: gguf.GGMLQuantizationType):
    """(array to write, its GGML type): norms and other 1D tensors stay float32, like llama.cpp's
    converter; rows that do not fill q8_0's blocks of 32 fall back to f16."""
    qtype = matrix_type if data.ndim > 1 else gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32), qtype
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


# ------------------------------------------------------------------------- tokenizer
def tokenizer_source(encoder: LLM2Vec, tokenizer_gguf: str | Path | None) -> Path:
    """The GGUF whose tokenizer the export carries: `tokenizer_gguf`, else the base model's own file
    (a shipped model or a .gguf path; the tiny test models use SmolLM2's tokenizer)."""
    if tokenizer_gguf is not None:
        return Path(tokenizer_gguf)
    base = str(encoder.base_model_name_or_path)
    if base in SHIPPED_MODELS:
        return SHIPPED_MODELS[base].gguf_path()
    if base.startswith(TINY_PREFIX):
        return SHIPPED_MODELS["smollm2-135m"].gguf_path()
    if base.endswith(".gguf"):
        return Path(base).expanduser()
    raise ValueError(
        f"base model {base!r} is not a GGUF file: pass tokenizer_gguf=<a GGUF of {base}> (e.g. made by "
        "llama.cpp's convert_hf_to_gguf.py) to copy llama.cpp's tokenizer metadata from it"
    )


def _add_tokenizer(writer: gguf.GGUFWriter, source: Path, adds_bos: bool, vocab_size: int) -> None:
    """Copy the `tokenizer.*` keys of `source`; BOS is added exactly when LLM2Vec.tokenize adds it."""
    reader = gguf.GGUFReader(source)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        raise ValueError(f"the tokenizer of {source} has {0 if tokens is None else len(tokens.data)} tokens, "
                         f"the model {vocab_size}: pass tokenizer_gguf=<a GGUF of the encoder's base model>")
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key in ("tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
            continue
        value = field.contents()
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, field.types[0], sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, field.types[0])
        copied += 1
    if copied == 0:
        raise ValueError(f"{source} has no tokenizer.* keys to copy")
    writer.add_add_bos_token(adds_bos)
