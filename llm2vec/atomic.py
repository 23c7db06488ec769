"""Atomic writes: a file or a directory appears complete or not at all, even when the process is
killed in the middle of writing it.

Everything is first written under a temporary name beside its target (`.<name>.tmp-<random>`, on
the same filesystem), flushed to disk, then renamed over the target with `os.replace`, which is
atomic. A kill leaves the previous version (or nothing) plus at most a stale temporary, which the
next write of the same target removes. One writer per target: concurrent writes of one path are
not supported.

    write_json(run_dir / "metrics.json", results)
    with replacing(path) as temp:          # for writers that take a path: torch.save, savefig, ...
        torch.save(state, temp)
    with directory(encoder_dir, commit_last="llm2vec_config.json") as staging:
        model.save_pretrained(staging)     # for libraries that write several files into a folder
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

TEMP_MARK = ".tmp-"


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as temp:
        temp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write the file to; when the block ends without an error it
    replaces `path`. On an error `path` is left as it was and the temporary is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    temp = _temp_name(target)
    try:
        yield temp
        _fsync_tree(temp)
        _commit(temp, target)
    finally:
        _remove(temp)


@contextmanager
def directory(path: str | Path, commit_last: str | None = None, replaces: Iterable[str] = (),
              whole: bool = False) -> Iterator[Path]:
    """Yields an empty staging folder; when the block ends without an error its entries move into
    `path`. A new `path` appears whole, in one rename. An existing one keeps its other entries (a
    run dir also holds checkpoints and logs): each staged entry replaces its namesake in one rename,
    and the entries named in `replaces` that were not staged are deleted (left over from an older
    version). `commit_last` names the file that marks the folder complete (llm2vec_config.json): it
    is deleted before anything else changes and put back last, so a kill in between leaves `path`
    without it, and readers refuse the folder instead of mixing two versions.

    `whole=True` (a folder that holds nothing else, e.g. an export): the staged folder replaces
    `path` entirely; the old one is renamed aside first, so a kill between the two renames leaves no
    `path` at all (readers fail instead of finding a mix; the next write removes the old one)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    staging = _temp_name(target)
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        if not target.exists():
            _commit(staging, target)
            return
        if whole:
            old = _temp_name(target)
            os.replace(target, old)
            _commit(staging, target)
            _remove(old)
            return
        staged = sorted(staging.iterdir(), key=lambda entry: entry.name == commit_last)  # the marker last
        if commit_last is not None:
            _remove(target / commit_last)
            _fsync_dir(target)
        for name in set(replaces) - {entry.name for entry in staged}:
            _remove(target / name)
        for entry in staged:
            _replace_entry(entry, target / entry.name)
    finally:
        _remove(staging)


def _replace_entry(source: Path, target: Path) -> None:
    _remove_stale(target)
    if target.is_dir() and not target.is_symlink():  # a folder cannot be renamed over a full one
        old = _temp_name(target)
        os.replace(target, old)
        _commit(source, target)
        _remove(old)
    else:
        if target.is_symlink() or (source.is_dir() and target.exists()):
            target.unlink()
        _commit(source, target)


def _commit(source: Path, target: Path) -> None:
    """The one rename that makes a write visible (the kill tests slow it down to kill inside it)."""
    os.replace(source, target)
    _fsync_dir(target.parent)


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")


def _remove_stale(target: Path) -> None:
    for stale in target.parent.glob(f".{glob.escape(target.name)}{TEMP_MARK}*"):
        _remove(stale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file and folder under a folder, so the rename never publishes data
    that is still only in memory (this matters after a power cut, not after a kill)."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_file(child)
            elif child.is_dir():
                _fsync_dir(child)
        _fsync_dir(path)
    elif path.is_file():
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder to flush it
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
