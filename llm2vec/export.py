"""Export an encoder as a sentence-transformers model that loads bidirectional, pools the same way
and gives the same embeddings:

    from llm2vec.export import to_sentence_transformers
    to_sentence_transformers(encoder, "my-st-model")
    model = SentenceTransformer("my-st-model", trust_remote_code=True)
    model.encode(["a query"], prompt="Retrieve semantically similar text:")   # prompt = instruction

sentence-transformers' own Transformer module loads a decoder with AutoModel, i.e. causal. So the
export is one module, `LLM2VecModule`, that wraps an `LLM2Vec` encoder: the decoder weights (adapters
merged) and tokenizer as plain transformers files, the encoder settings in `llm2vec_module.json`,
pooling weights (latent attention) in `pooling.pt`. Loading goes through `LLM2Vec.from_pretrained`,
which makes attention bidirectional. A `prompt` is the instruction: attended to, never pooled.

On the command line, `python -m llm2vec.export sentence-transformers <encoder> <dir>`, and
`python -m llm2vec.export gguf <encoder> <file.gguf> --type q8_0` for llama.cpp (`llm2vec.gguf_export`).

sentence-transformers (>= 6) imports a module class from outside its own package only with
`trust_remote_code=True`; the class imported is `llm2vec.export.LLM2VecModule` from the installed
llm2vec package, no code is read from the model directory.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Sequence

import torch
from peft import PeftModel
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.input_module import InputModule

from llm2vec import atomic
from llm2vec.encoder import LLM2Vec
from llm2vec.gguf_export import TYPES, export_gguf

POOLING_WEIGHTS = "pooling.pt"


class LLM2VecModule(InputModule):
    """A sentence-transformers input module that embeds texts with an `LLM2Vec` encoder."""

    config_file_name = "llm2vec_module.json"
    config_keys = ["pooling_mode", "pooling_layers", "max_length", "enable_bidirectional", "echo", "template"]
    save_in_root = True

    def __init__(self, encoder: LLM2Vec):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer

    # ----------------------------------------------------------------- what sentence-transformers calls
    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        items = [[prompt, text] for text in inputs] if prompt else list(inputs)
        return self.encoder.tokenize(items)

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        features["sentence_embedding"] = self.encoder(features)
        return features

    def get_embedding_dimension(self) -> int:
        return self.encoder.model.config.hidden_size

    @property
    def max_seq_length(self) -> int:
        return self.encoder.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.encoder.max_length = value

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "pooling_mode": self.encoder.pooling_mode,
            "pooling_layers": self.encoder.pooling_layers,
            "max_length": self.encoder.max_length,
            "enable_bidirectional": self.encoder.bidirectional,
            "echo": self.encoder.echo,
            "template": self.encoder.template,
        }

    # ----------------------------------------------------------------- saving and loading
    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        model = self.encoder.model
        if isinstance(model, PeftModel):  # merge into a copy: the encoder keeps its trainable adapter
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.save_tokenizer(output_path)
        self.save_config(output_path)
        if any(True for _ in self.encoder.pooling.parameters()):
            torch.save(self.encoder.pooling.state_dict(), Path(output_path) / POOLING_WEIGHTS)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             model_kwargs: dict[str, Any] | None = None, **kwargs) -> "LLM2VecModule":
        hub = {"token": token, "cache_folder": cache_folder, "revision": revision, "local_files_only": local_files_only}
        path = Path(cls.load_dir_path(model_name_or_path, subfolder=subfolder, **hub))
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub)
        encoder = LLM2Vec.from_pretrained(str(path), **config, **(model_kwargs or {}))
        if (path / POOLING_WEIGHTS).is_file():
            encoder.pooling.load_state_dict(torch.load(path / POOLING_WEIGHTS, map_location="cpu"))
            encoder.pooling.to(device=encoder.device, dtype=encoder.dtype)
        return cls(encoder)


def to_sentence_transformers(encoder: LLM2Vec, path: str | Path, prompts: dict[str, str] | None = None) -> Path:
    """Write `encoder` as a sentence-transformers model directory; `prompts` (e.g. {"query": "Given a
    question, retrieve passages that answer it:"}) become the model's named prompts (instructions)."""
    model = SentenceTransformer(modules=[LLM2VecModule(encoder)], prompts=prompts, device=str(encoder.device))
    # Written into a staging folder that then replaces the export whole: a kill leaves the old export,
    # the new one, or none (never a mix, which sentence-transformers might load as a plain causal model).
    with atomic.directory(path, whole=True) as staging:
        model.save(str(staging))
    return Path(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm2vec.export", description="Export a trained encoder.")
    formats = parser.add_subparsers(dest="format", required=True)
    gguf_args = formats.add_parser("gguf", help="a GGUF file that llama.cpp runs as an embedding model")
    gguf_args.add_argument("encoder", help="run dir, saved encoder, or model (adapters are merged)")
    gguf_args.add_argument("output", help="the .gguf file to write")
    gguf_args.add_argument("--type", default="f16", choices=list(TYPES), help="weight type of the matrices")
    gguf_args.add_argument("--arch", default="llama-embed", choices=["llama-embed", "llama"],
                           help="llama.cpp architecture: llama-embed (faster), llama (older runtimes)")
    gguf_args.add_argument("--tokenizer-gguf", default=None, help="a GGUF of the base model to copy the tokenizer "
                           "from (needed when the base model is not a GGUF file or a shipped model)")
    st_args = formats.add_parser("sentence-transformers", help="a sentence-transformers model directory")
    st_args.add_argument("encoder", help="run dir, saved encoder, or model")
    st_args.add_argument("output", help="the directory to write")
    args = parser.parse_args(argv)

    if args.format == "gguf":
        path = export_gguf(args.encoder, args.output, type=args.type, arch=args.arch, tokenizer_gguf=args.tokenizer_gguf)
    else:
        path = to_sentence_transformers(LLM2Vec.from_pretrained(args.encoder), args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
