"""Kill -9 at random instants, also inside checkpoint and artifact writes, then resume: the result
equals an uninterrupted run's, for one training stage and for the whole pipeline.

Every run is a subprocess of tests/slow_writes.py (run.py whose writes print a marker and pause just
before the temporary file is flushed and just before it is renamed into place). A kill is either at a
random time of the run, or a random instant inside the n-th write (n random). Then the run is
started again as a user would: `resume=true` on its run dir. Seeded: the same kills every time.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT, TINY, TINY_DATA
from llm2vec import LLM2Vec, atomic

pytestmark = pytest.mark.slow  # 3 + 6 minutes on two busy CPU cores; run in CI too

WRAPPER = ROOT / "tests" / "slow_writes.py"
SLOW = 0.15  # seconds each write pauses at each of its two markers
TRIALS = 2
KILLS_PER_TRIAL = 2
SEED = 20261130
STAGE = ["stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=1"]
PIPELINE = ["experiment=smoke", "callbacks.model_checkpoint.every_n_train_steps=1"]


class Run:
    """One run.py subprocess; a thread collects its output and its write markers as they come."""

    def __init__(self, overrides: list[str], run_dir: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LLM2VEC_SLOW_COMMIT": str(SLOW), "HF_HUB_OFFLINE": "1",
               "WANDB_MODE": "disabled"}
        command = [sys.executable, str(WRAPPER), *TINY, *overrides, f"hydra.run.dir={run_dir}"]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, cwd=ROOT)
        self.output: list[str] = []
        self.markers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith(("COMMIT ", "WRITTEN ")):
                self.markers.put(line.strip())
        self.markers.put(None)

    def kill_at(self, seconds: float) -> str | None:
        """SIGKILL `seconds` after the start; what it hit, or None if the run had ended."""
        try:
            self.process.wait(timeout=max(0.0, seconds - (time.monotonic() - self.started)))
            return None
        except subprocess.TimeoutExpired:
            return self._kill(f"at {seconds:.1f} s")

    def kill_inside_write(self, number: int, delay: float) -> str | None:
        """SIGKILL `delay` seconds into the pause at the `number`-th write marker."""
        for _ in range(number):
            marker = self.markers.get(timeout=600)
            if marker is None:
                return None
        time.sleep(delay)
        return self._kill(f"inside write {number} ({marker.split('/')[-1]}, {marker.split()[0]})")

    def _kill(self, what: str) -> str | None:
        if self.process.poll() is not None:
            return None
        self.process.kill()
        self.process.wait()
        return what

    def finish(self) -> float:
        self.process.wait(timeout=900)
        if self.process.returncode != 0:
            raise AssertionError(f"run failed ({self.process.returncode}):\n{''.join(self.output[-40:])}")
        return time.monotonic() - self.started

    def write_markers(self) -> int:
        return sum(line.startswith(("COMMIT ", "WRITTEN ")) for line in self.output)


def run_with_kills(overrides, run_dir: Path, rng: random.Random, seconds: float, writes: int) -> list[str]:
    """Start the run, kill it KILLS_PER_TRIAL times (restarting after each kill as a user would), then
    let it finish. Each kill is drawn from what the uninterrupted run had left to do (its writes and
    its time, less what the killed attempts got through). Returns what each kill hit."""
    kills, writes_done, seconds_done = [], 0, 0.0
    for _ in range(KILLS_PER_TRIAL + 4):  # a kill can miss: the run may end first
        if len(kills) == KILLS_PER_TRIAL:
            break
        run = Run(overrides(run_dir), run_dir)
        if rng.random() < 0.5:
            hit = run.kill_at(rng.uniform(0, max(5.0, seconds - seconds_done)))
        else:
            hit = run.kill_inside_write(rng.randint(1, max(1, writes - writes_done)), rng.uniform(0, SLOW))
        if hit is None:
            run.finish()
        else:
            kills.append(hit)
            writes_done += run.write_markers()
            seconds_done += time.monotonic() - run.started
    Run(overrides(run_dir), run_dir).finish()
    return kills


def stage_overrides(run_dir: Path) -> list[str]:
    resume = ["resume=true"] if (run_dir / "checkpoints" / "last.ckpt").is_file() else []
    return [*STAGE, *resume]


def pipeline_overrides(run_dir: Path) -> list[str]:
    return [*PIPELINE, "resume=true"]  # the pipeline resumes each step that has a checkpoint


def assert_same_adapter(run_dir: Path, reference: Path) -> None:
    got, expected = load_file(run_dir / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6, f"{run_dir}: adapter differs from the uninterrupted run's by {worst}"


def assert_same_scores(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_scores(got[key], value)
        else:
            assert got[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


@pytest.mark.parametrize("kind", ["stage", "pipeline"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, kind):
    overrides = stage_overrides if kind == "stage" else pipeline_overrides
    reference = tmp_path / "reference" / "run"
    run = Run(overrides(reference), reference)
    seconds = run.finish()
    writes = run.write_markers()
    rng = random.Random(f"{SEED}:{kind}")
    trained = ["."] if kind == "stage" else ["2-mntp", "3-simcse"]
    kills = []
    for trial in range(TRIALS):
        run_dir = tmp_path / f"trial-{trial}" / "run"
        kills += run_with_kills(overrides, run_dir, rng, seconds, writes)
        for step in trained:
            assert_same_adapter(run_dir / step, reference / step)
            LLM2Vec.from_pretrained(str(run_dir / step))  # checks the sizes and hashes of every file
        assert_same_scores(*(json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference)))
        assert not list(run_dir.parent.rglob(f"*{atomic.TEMP_MARK}*")), "a temporary of a killed write is left"
    print(f"\n{kind}: {len(kills)} kills in {TRIALS} trials ({sum('inside' in k for k in kills)} inside writes): "
          + "; ".join(kills))
    assert len(kills) >= TRIALS  # the trials were interrupted, not just run
