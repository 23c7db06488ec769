"""Lightning checkpoints that survive a kill: written atomically, the one they replace kept, and
checked before a run resumes from them.

Lightning's own writer (2.6) writes into a file in the system's temp folder and moves it over the
checkpoint: across filesystems that move is a copy in place, and a kill during it leaves a truncated
checkpoint. `AtomicCheckpointIO` writes beside the checkpoint and renames it over (llm2vec.atomic),
and keeps the checkpoint it replaces as `<name>.previous.ckpt`, a fallback if the latest one is ever
damaged (a disk error, a hand edit). Sharded checkpoints (folders written by FSDP's sharded state
dict or DeepSpeed) bypass CheckpointIO and are not covered.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from llm2vec import atomic


class CorruptCheckpoint(ValueError):
    """A checkpoint that cannot be resumed from."""


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the checkpoint, then one rename over it."""

    def __init__(self, keep_previous: bool = True):
        super().__init__()
        self.keep_previous = keep_previous

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        with atomic.replacing(path) as temp:
            torch.save(checkpoint, temp)
            if self.keep_previous and path.is_file():
                _keep(path, previous_path(path))


def _keep(path: Path, previous: Path) -> None:
    """`previous` becomes the current checkpoint (a hard link: no copy), atomically."""
    with atomic.replacing(previous) as temp:
        try:
            os.link(path, temp)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(path, temp)


def check_checkpoint(path: str | Path) -> int:
    """The global step of a checkpoint that loads and holds what resuming needs."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on damage
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorruptCheckpoint(f"{path} is damaged ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step"} <= set(checkpoint):
        raise CorruptCheckpoint(f"{path} is not a Lightning checkpoint (no state_dict and global_step)")
    return int(checkpoint["global_step"])


def checkpoint_to_resume(last: str | Path) -> str:
    """`last` if it can be resumed from; otherwise one line that names it and says how to go on."""
    last = Path(last)
    if last.is_dir():  # a sharded checkpoint (FSDP sharded, DeepSpeed): its strategy writes and checks it
        return str(last)
    if not last.is_file():
        raise FileNotFoundError(f"resume=true: {last} does not exist (name the run: hydra.run.dir=<its run dir>)")
    try:
        check_checkpoint(last)
    except CorruptCheckpoint as error:
        previous = previous_path(last)
        try:
            step = check_checkpoint(previous) if previous.is_file() else None
        except CorruptCheckpoint:
            step = None
        if step is None:
            raise CorruptCheckpoint(f"resume=true: {error}; no earlier checkpoint is intact: "
                                    f"delete {last} and rerun without resume=true to start again") from None
        raise CorruptCheckpoint(f"resume=true: {error}; the previous checkpoint is intact (step {step}): "
                                f"`mv {previous} {last}` and rerun to continue from step {step}") from None
    return str(last)
