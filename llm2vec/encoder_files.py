"""The checks that keep a damaged encoder directory from loading as a different model.

`save` records in `llm2vec_config.json` what it saved on (the base model's type and sizes) and the
size and SHA-256 of every file that loading reads (adapters, pooling weights). `from_pretrained`
checks all of it before loading, and after peft has loaded an adapter, that every tensor of the
adapter found its place in the model and every adapter weight of the model came from the file.
Each failure is one line naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

CONFIG_NAME = "llm2vec_config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
REQUIRED_KEYS = ("base_model_name_or_path", "pooling_mode")
FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


class EncoderFilesError(ValueError):
    """A saved encoder or adapter directory is incomplete, damaged or made for another base model."""


def base_fingerprint(model) -> dict:
    """What identifies the base model's shape: a saved adapter only fits a base with the same."""
    config = getattr(model, "config", None)
    return {key: getattr(config, key, None) for key in FINGERPRINT_KEYS}


def manifest(root: Path, names: list[str]) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} of the files under `root` that loading reads."""
    return {name: {"bytes": (root / name).stat().st_size, "sha256": _sha256(root / name)} for name in names}


def read_config(root: Path) -> dict:
    """The saved config, after checking that it parses, has the required keys, and that every file
    it lists is there with its recorded size and hash."""
    path = root / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncoderFilesError(f"{path} is not valid JSON ({error}): save the encoder again") from None
    if not isinstance(config, dict):
        raise EncoderFilesError(f"{path} holds {type(config).__name__}, not an object: save the encoder again")
    missing = [key for key in REQUIRED_KEYS if not isinstance(config.get(key), str)]
    if missing:
        raise EncoderFilesError(f"{path} lacks {', '.join(missing)}: save the encoder again")
    merged = config.get("merged_adapters", [])
    if not isinstance(merged, list) or not all(isinstance(a, str) for a in merged):
        raise EncoderFilesError(f"{path}: merged_adapters must be a list of folder names, got {merged!r:.80}")
    for name, recorded in config.get("files", {}).items():
        check_file(root / name, recorded)
    return config


def check_file(path: Path, recorded: dict) -> None:
    if not path.is_file():
        raise EncoderFilesError(f"{path} is missing (listed in {CONFIG_NAME}): an incomplete copy or save")
    size = path.stat().st_size
    if size != recorded["bytes"]:
        raise EncoderFilesError(f"{path} has {size} bytes, {CONFIG_NAME} recorded {recorded['bytes']}: "
                                "truncated or replaced since it was saved")
    if _sha256(path) != recorded["sha256"]:
        raise EncoderFilesError(f"{path} does not match the SHA-256 in {CONFIG_NAME}: changed since it was saved")


def check_adapter_dir(adapter: str | Path) -> None:
    """A local peft adapter folder has a readable config and a complete weights file."""
    root = Path(adapter)
    if not root.is_dir():
        return  # a hub id: peft downloads and checks it
    config = root / ADAPTER_CONFIG
    if not config.is_file():
        raise EncoderFilesError(f"{config} is missing: {root} is not a complete peft adapter")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncoderFilesError(f"{config} is not valid JSON ({error})") from None
    weights = [root / name for name in ADAPTER_WEIGHTS if (root / name).is_file()]
    if not weights:
        raise EncoderFilesError(f"{root} has no {' or '.join(ADAPTER_WEIGHTS)}: an incomplete adapter")
    if weights[0].suffix == ".safetensors":
        adapter_tensor_shapes(weights[0])


def adapter_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensors a safetensors file holds (from its header; safetensors checks the header against
    the file's length, so a truncated file fails here)."""
    try:
        with safe_open(str(path), "pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError)
        raise EncoderFilesError(f"{path} is damaged ({error}): save or copy it again") from None


def check_adapter_fits(model, adapter: str | Path, base: str) -> None:
    """After peft has loaded `adapter` into `model`: every tensor of the file has a place of the same
    shape in the model and every adapter weight of the model came from the file. (peft itself
    skips tensors it has no place for and leaves weights the file lacks at their initial values.)"""
    weights = Path(adapter) / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return
    saved = adapter_tensor_shapes(weights)
    expected = {key: tuple(value.shape) for key, value in get_peft_model_state_dict(model).items()}
    extra, missing = sorted(set(saved) - set(expected)), sorted(set(expected) - set(saved))
    wrong = sorted(key for key in set(saved) & set(expected) if saved[key] != expected[key])
    if extra:
        problem = f"{len(extra)} of its tensors have no place in the model (e.g. {extra[0]})"
    elif missing:
        problem = f"it lacks {len(missing)} of the model's adapter weights (e.g. {missing[0]})"
    elif wrong:
        problem = f"{wrong[0]} has shape {list(saved[wrong[0]])}, the model's {list(expected[wrong[0]])}"
    else:
        return
    raise EncoderFilesError(f"{weights} does not fit base model {base}: {problem}")


def check_recorded_base(model, adapter: str | Path, base: str) -> None:
    """Before loading a local adapter: the base model peft recorded in its config, when that is a
    local model folder, has the shape of the model it is about to load into."""
    config_path = Path(adapter) / ADAPTER_CONFIG
    if not config_path.is_file():
        return
    recorded = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not recorded or not (Path(recorded) / "config.json").is_file():
        return  # a hub id or a folder of another machine: nothing to compare offline
    recorded_config = json.loads((Path(recorded) / "config.json").read_text(encoding="utf-8"))
    actual = base_fingerprint(model)
    differences = [f"{key} {recorded_config.get(key)} vs {actual[key]}" for key in FINGERPRINT_KEYS
                   if key in recorded_config and recorded_config[key] != actual[key]]
    if differences:
        raise EncoderFilesError(f"{config_path} was trained on {recorded}, another model than {base} "
                                f"({', '.join(differences)})")


def check_fingerprint(root: Path, config: dict, model, base: str) -> None:
    recorded = config.get("base_model")
    if not recorded:
        return  # saved before fingerprints were recorded
    actual = base_fingerprint(model)
    differences = [f"{key} {recorded.get(key)} vs {actual[key]}" for key in FINGERPRINT_KEYS
                   if recorded.get(key) != actual[key]]
    if differences:
        raise EncoderFilesError(f"{root / CONFIG_NAME} was saved on another base model than {base} loads as "
                                f"({', '.join(differences)}): point base_model_name_or_path at the right model")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
