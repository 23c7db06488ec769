"""Crash-safe artifacts: atomic writes leave the old or the new version; a damaged, incomplete or
mismatched encoder directory is refused by from_pretrained with one line naming the file; a damaged
last.ckpt stops a resume with one line that says how to go on. (tests/test_kill.py kills real runs.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from conftest import TINY_DATA
from llm2vec import LLM2Vec, atomic
from llm2vec.checkpoints import (
    AtomicCheckpointIO,
    CorruptCheckpoint,
    check_checkpoint,
    checkpoint_to_resume,
    previous_path,
)
from llm2vec.encoder_files import EncoderFilesError

TEXTS = ["A man is playing a guitar.", "Two dogs run through a field.", "Hi."]


class Crash(Exception):
    """Stands for a kill: raised inside a write, the code after it never runs."""


def crash_on_commit(monkeypatch, number: int) -> None:
    """The `number`-th rename that publishes a write (1 = the first) raises Crash instead."""
    calls = {"n": 0}
    real = atomic._commit

    def commit(source, target):
        calls["n"] += 1
        if calls["n"] == number:
            raise Crash(f"killed before renaming {source.name} to {target}")
        real(source, target)

    monkeypatch.setattr(atomic, "_commit", commit)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"*{atomic.TEMP_MARK}*"))


# ----------------------------------------------------------------- atomic writes


def test_a_write_killed_before_its_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic.write_json(path, {"score": 1})
    crash_on_commit(monkeypatch, 1)
    with pytest.raises(Crash):
        atomic.write_json(path, {"score": 2})
    assert json.loads(path.read_text()) == {"score": 1} and leftovers(tmp_path) == []


def test_a_stale_temporary_from_a_kill_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "train.json"
    stale = tmp_path / f".train.json{atomic.TEMP_MARK}deadbeef"
    stale.write_text('{"steps": 1')  # half-written by a killed process
    atomic.write_json(path, {"steps": 3})
    assert json.loads(path.read_text()) == {"steps": 3} and not stale.exists()


def test_replacing_serves_writers_that_take_a_path(tmp_path, monkeypatch):
    path = tmp_path / "pooling.pt"
    with atomic.replacing(path) as temp:
        torch.save({"w": torch.ones(2)}, temp)
    assert torch.equal(torch.load(path)["w"], torch.ones(2))
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.replacing(path) as temp:
            temp.write_bytes(b"half a tensor")
            raise RuntimeError("disk full")
    assert torch.equal(torch.load(path)["w"], torch.ones(2)) and leftovers(tmp_path) == []


def test_a_new_directory_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    crash_on_commit(monkeypatch, 1)
    with pytest.raises(Crash):
        with atomic.directory(tmp_path / "export") as staging:
            (staging / "a.txt").write_text("a")
            (staging / "b.txt").write_text("b")
    assert not (tmp_path / "export").exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    with atomic.directory(tmp_path / "export") as staging:
        (staging / "a.txt").write_text("a")
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["a.txt"]


def test_an_existing_directory_keeps_its_other_entries_and_loses_replaced_ones(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_text("ckpt")
    (run_dir / "pooling.pt").write_text("from an older save")
    (run_dir / "sub").mkdir()
    (run_dir / "sub" / "old.txt").write_text("old")
    with atomic.directory(run_dir, commit_last="marker.json", replaces=["pooling.pt"]) as staging:
        (staging / "marker.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "new.txt").write_text("new")
    assert (run_dir / "checkpoints" / "last.ckpt").read_text() == "ckpt"
    assert not (run_dir / "pooling.pt").exists()
    assert [p.name for p in (run_dir / "sub").iterdir()] == ["new.txt"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("crash_at", [None, 1])
def test_a_whole_directory_is_replaced_with_nothing_of_the_old_one_left(tmp_path, monkeypatch, crash_at):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model-00001-of-00002.safetensors").write_text("old shard")
    (export / "modules.json").write_text("old")
    if crash_at:
        crash_on_commit(monkeypatch, crash_at)
    try:
        with atomic.directory(export, whole=True) as staging:
            (staging / "modules.json").write_text("new")
            (staging / "model.safetensors").write_text("new weights")
    except Crash:  # killed between the two renames: no export at all, never a mix of old and new
        assert not export.exists()
        monkeypatch.undo()
        with atomic.directory(export, whole=True) as staging:
            (staging / "modules.json").write_text("new")
    assert sorted(p.name for p in export.iterdir())[-1] == "modules.json"
    assert (export / "modules.json").read_text() == "new" and not (export / "model-00001-of-00002.safetensors").exists()
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------- saved encoders


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A saved encoder with a trained-looking LoRA adapter and a merged one, and its embeddings."""
    root = tmp_path_factory.mktemp("saved")
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    for seed in (0, 1):  # the first adapter is merged, the second stays trainable
        if seed:
            encoder.model.save_pretrained(root / "first")
            encoder = LLM2Vec.from_pretrained("tiny-random-llama", peft_model_name_or_path=str(root / "first"),
                                              merge_peft=True)
        encoder.model = get_peft_model(encoder.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, parameter in encoder.model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.5)
    encoder.save(root / "encoder")
    return root / "encoder", encoder.encode(TEXTS)


def damaged_copy(saved_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "encoder"
    shutil.copytree(saved_dir, copy)
    return copy


def edit_config(root: Path, change) -> None:
    config = json.loads((root / "llm2vec_config.json").read_text())
    change(config)
    (root / "llm2vec_config.json").write_text(json.dumps(config))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def no_manifest(root: Path) -> None:
    """As saved before sizes and hashes were recorded: only the structural checks apply."""
    edit_config(root, lambda c: (c.pop("files"), c.pop("base_model")))


DAMAGE = {
    "config missing": (lambda r: (r / "llm2vec_config.json").unlink(),
                       "holds a peft adapter but no llm2vec_config.json: an interrupted save"),
    "config truncated": (lambda r: truncate(r / "llm2vec_config.json"), "llm2vec_config.json is not valid JSON"),
    "config not an object": (lambda r: (r / "llm2vec_config.json").write_text("[1, 2]"),
                             "llm2vec_config.json holds list, not an object"),
    "config lacks the base": (lambda r: edit_config(r, lambda c: c.pop("base_model_name_or_path")),
                              "llm2vec_config.json lacks base_model_name_or_path"),
    "merged_adapters not a list": (lambda r: edit_config(r, lambda c: c.update(merged_adapters="00")),
                                   "merged_adapters must be a list of folder names"),
    "adapter truncated": (lambda r: truncate(r / "adapter_model.safetensors"),
                          r"adapter_model.safetensors has \d+ bytes, llm2vec_config.json recorded \d+"),
    "adapter changed, same size": (lambda r: flip_a_byte(r / "adapter_model.safetensors"),
                                   "adapter_model.safetensors does not match the SHA-256"),
    "adapter missing": (lambda r: (r / "adapter_model.safetensors").unlink(),
                        r"adapter_model.safetensors is missing \(listed in llm2vec_config.json\)"),
    "merged adapter missing": (lambda r: shutil.rmtree(r / "merged_adapters" / "00"),
                               r"merged_adapters/00/adapter_config.json is missing"),
    "truncated, saved without a manifest": (lambda r: (no_manifest(r), truncate(r / "adapter_model.safetensors")),
                                            "adapter_model.safetensors is damaged .*incomplete metadata"),
    "header only, saved without a manifest": (lambda r: (no_manifest(r), truncate(r / "adapter_model.safetensors", 0.001)),
                                              "adapter_model.safetensors is damaged"),
    "adapter config garbled": (lambda r: (no_manifest(r), (r / "adapter_config.json").write_text("{'r': 4")),
                               "adapter_config.json is not valid JSON"),
    "another base model": (lambda r: edit_config(r, lambda c: c.update(base_model_name_or_path="tiny-random-mistral")),
                           "llm2vec_config.json was saved on another base model .*model_type llama vs mistral"),
    "another base, saved without a manifest": (
        lambda r: (no_manifest(r), edit_config(r, lambda c: c.update(base_model_name_or_path="tiny-random-qwen2"))),
        "adapter_config.json was trained on .*tiny-random-llama, another model than tiny-random-qwen2"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_encoder_directory_is_refused_naming_the_file(saved, tmp_path, damage):
    saved_dir, _ = saved
    root = damaged_copy(saved_dir, tmp_path)
    apply, message = DAMAGE[damage]
    apply(root)
    with pytest.raises(EncoderFilesError, match=message) as raised:
        LLM2Vec.from_pretrained(str(root))
    assert "\n" not in str(raised.value) and str(root) in str(raised.value)


def test_the_undamaged_copy_loads_the_same_encoder(saved, tmp_path):
    saved_dir, expected = saved
    root = damaged_copy(saved_dir, tmp_path)
    np.testing.assert_allclose(LLM2Vec.from_pretrained(str(root)).encode(TEXTS), expected, atol=1e-5)
    no_manifest(root)  # encoders saved before the manifest still load
    np.testing.assert_allclose(LLM2Vec.from_pretrained(str(root)).encode(TEXTS), expected, atol=1e-5)


def reshaped(tensors: dict, how: str) -> dict:
    key = sorted(tensors)[0]
    tensors = dict(tensors)
    if how == "extra":
        tensors[key.replace("layers.0.", "layers.7.")] = tensors[key].clone()
    elif how == "missing":
        del tensors[key]
    else:
        tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    return tensors


@pytest.mark.parametrize("how, message", [
    ("extra", r"does not fit base model tiny-random-llama: 1 of its tensors have no place in the model \(e.g. .*layers.7"),
    ("missing", r"does not fit base model tiny-random-llama: it lacks 1 of the model's adapter weights"),
    ("shape", r"does not fit base model tiny-random-llama: .*size mismatch"),
])
def test_an_adapter_that_does_not_fit_the_base_model_is_refused(saved, tmp_path, monkeypatch, how, message):
    """peft alone loads what fits and skips the rest (or leaves weights at their initial values)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # peft looks the recorded base up on the hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    saved_dir, _ = saved
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((saved_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/some-model"  # a hub id: no recorded shape to compare
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    save_file(reshaped(load_file(saved_dir / "adapter_model.safetensors"), how), adapter / "adapter_model.safetensors")
    with pytest.raises(EncoderFilesError, match=message) as raised:
        LLM2Vec.from_pretrained("tiny-random-llama", peft_model_name_or_path=str(adapter))
    assert "\n" not in str(raised.value) and str(adapter) in str(raised.value)


def test_a_run_dir_without_a_saved_encoder_says_to_resume_it(tmp_path):
    (tmp_path / "config.yaml").write_text("stage: {name: simcse}\n")
    with pytest.raises(EncoderFilesError, match=f"{tmp_path} is a run dir without a saved encoder .*resume=true"):
        LLM2Vec.from_pretrained(str(tmp_path))


def test_overwriting_a_saved_encoder_leaves_no_file_of_the_old_one(saved, tmp_path):
    saved_dir, _ = saved
    root = damaged_copy(saved_dir, tmp_path)
    (root / "checkpoints").mkdir()  # a run dir's other entries stay
    plain = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="weighted_mean")
    plain.save(root)
    assert not (root / "adapter_model.safetensors").exists() and not (root / "merged_adapters").exists()
    assert (root / "checkpoints").is_dir() and leftovers(tmp_path) == []
    np.testing.assert_allclose(LLM2Vec.from_pretrained(str(root)).encode(TEXTS), plain.encode(TEXTS), atol=1e-6)


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_a_save_killed_while_overwriting_is_refused_then_a_new_save_completes(saved, tmp_path, monkeypatch, crash_at):
    """Overwriting moves each staged entry in with one rename, llm2vec_config.json last and removed
    first: killed between two renames, the folder is refused, never loaded half old, half new."""
    saved_dir, expected = saved
    root = damaged_copy(saved_dir, tmp_path)
    encoder = LLM2Vec.from_pretrained(str(root))
    with torch.no_grad():
        next(p for n, p in encoder.model.named_parameters() if "lora_B" in n).add_(1.0)
    changed = encoder.encode(TEXTS)
    crash_on_commit(monkeypatch, crash_at)
    with pytest.raises(Crash):
        encoder.save(root)
    with pytest.raises(EncoderFilesError, match="no llm2vec_config.json: an interrupted save"):
        LLM2Vec.from_pretrained(str(root))
    monkeypatch.undo()
    encoder.save(root)
    np.testing.assert_allclose(LLM2Vec.from_pretrained(str(root)).encode(TEXTS), changed, atol=1e-5)
    assert leftovers(tmp_path) == [] and np.abs(changed - expected).max() > 1e-3


# ----------------------------------------------------------------- checkpoints


def test_checkpoints_are_written_atomically_and_the_previous_one_kept(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    for step in (1, 2):
        io.save_checkpoint({"state_dict": {}, "global_step": step}, path)
    assert check_checkpoint(path) == 2 and check_checkpoint(previous_path(path)) == 1
    crash_on_commit(monkeypatch, 2)  # the first rename keeps the previous one, the second publishes
    with pytest.raises(Crash):
        io.save_checkpoint({"state_dict": {}, "global_step": 3}, path)
    assert check_checkpoint(path) == 2 and leftovers(tmp_path) == []


def test_resuming_from_a_damaged_last_ckpt_names_it_and_the_way_on(run_app, tmp_path):
    run_dir = tmp_path / "run"
    common = ["stage=simcse", TINY_DATA["simcse"], "callbacks.model_checkpoint.every_n_train_steps=1"]
    run_app(*common, "trainer.max_steps=2", run_dir=run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    truncate(last)
    with pytest.raises(CorruptCheckpoint, match=rf"{last} is damaged .*the previous checkpoint is intact \(step 1\): "
                                                rf"`mv {previous_path(last)} {last}`") as raised:
        run_app(*common, "trainer.max_steps=3", "resume=true", run_dir=run_dir)
    assert "\n" not in str(raised.value)
    shutil.move(previous_path(last), last)  # what the message says to do
    run_app(*common, "trainer.max_steps=3", "resume=true", run_dir=run_dir)
    assert check_checkpoint(last) == 3
    for path in (last, previous_path(last)):
        truncate(path)
    with pytest.raises(CorruptCheckpoint, match=f"no earlier checkpoint is intact: delete {last}"):
        run_app(*common, "trainer.max_steps=3", "resume=true", run_dir=run_dir)


def test_a_sharded_checkpoint_folder_is_passed_on_to_its_strategy(tmp_path):
    """FSDP's sharded state dict and DeepSpeed write folders, which their strategies check."""
    (tmp_path / "last.ckpt").mkdir()
    assert checkpoint_to_resume(tmp_path / "last.ckpt") == str(tmp_path / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="resume=true: .*last.ckpt does not exist"):
        checkpoint_to_resume(tmp_path / "other" / "last.ckpt")
