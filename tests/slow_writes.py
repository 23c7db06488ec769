"""`python tests/slow_writes.py <run.py arguments>`: run.py, with every write slowed down so that
tests/test_kill.py can kill the process inside one.

Each rename that publishes a write (llm2vec.atomic._commit: the temporary file or folder is complete,
the target not yet replaced) first prints `COMMIT <target>` and sleeps LLM2VEC_SLOW_COMMIT seconds
(default 0.3); each flush of a finished temporary prints `WRITTEN <temporary>` and sleeps as long."""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

from llm2vec import atomic

ROOT = Path(__file__).resolve().parents[1]
DELAY = float(os.environ.get("LLM2VEC_SLOW_COMMIT", "0.3"))


def slowed(function, marker: str):
    def slow(path, *args):
        print(f"{marker} {path}", flush=True)
        time.sleep(DELAY)
        return function(path, *args)

    return slow


atomic._commit = slowed(atomic._commit, "COMMIT")
atomic._fsync_tree = slowed(atomic._fsync_tree, "WRITTEN")

if __name__ == "__main__":
    sys.argv = [str(ROOT / "run.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
