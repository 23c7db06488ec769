"""Faults in distributed training under trainer=ddp_cpu (2 CPU processes, gloo), through `python
run.py` with a test-only callback (tests/fault_injection.py) that breaks one process mid-step:

- a process killed in the middle of a step fails the whole job within seconds, with a message that
  names the dead process and how to resume; resume=true then finishes the run with the adapter and
  losses of a run that was never interrupted;
- a process that hangs fails the job after the process group's timeout (strategy.timeout), and the
  hung process is stopped rather than left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_run import train_losses

ROOT = Path(__file__).resolve().parents[1]
DDP = ["model=tiny_llama", "trainer=ddp_cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
       "trainer.log_every_n_steps=1", f"eval.tasks=[{{name:STS-tiny,path:'{ROOT / 'tests/fixtures/sts_tiny.tsv'}'}}]",
       "stage=simcse", "data=tiny_sentences", "callbacks.model_checkpoint.every_n_train_steps=2",
       "stage.module.scheduler.num_training_steps=6", "trainer.max_steps=6"]
KILL_RANK_1_AT_STEP_5 = ["+callbacks.fault._target_=fault_injection.KillRank", "+callbacks.fault.rank=1",
                         "+callbacks.fault.step=5"]


def run(run_dir: Path, *overrides: str, timeout: float = 400) -> tuple[int, str, float]:
    """`python run.py` with tests/ importable; returns (exit code, output, the time it ended). The job
    runs in its own process group, removed whole if it outlives `timeout` (a hang fails the test)."""
    env = {"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, "run.py", *DDP, *overrides, f"hydra.run.dir={run_dir}"]
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        output, _ = job.communicate(timeout=timeout)  # returns once every process has closed the pipe
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
        pytest.fail(f"the job was still running after {timeout} s:\n{output[-3000:]}")
    return job.returncode, output, time.time()


def fault_time(output: str) -> float:
    return float(re.search(r"fault_injection: .* at time ([\d.]+)", output).group(1))


@pytest.mark.slow
def test_a_killed_process_fails_the_job_at_once_and_resume_finishes_it(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    code, output, _ = run(straight)
    assert code == 0, output[-3000:]

    code, output, ended = run(broken, *KILL_RANK_1_AT_STEP_5)
    assert code != 0
    assert ended - fault_time(output) < 60, output[-3000:]  # seconds (the machine is slow), not a timeout
    assert re.search(r"distributed training stopped at step 5: rank 1 \(pid \d+\) was killed by SIGKILL", output)
    assert "resume=true" in output
    checkpoint = torch.load(broken / "checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4
    # The processes' random states differ by now (dropout on batches of other lengths): each must get its own.
    states = checkpoint["rng_states"]
    assert len(states) == 2 and not torch.equal(states[0]["cpu"], states[1]["cpu"])
    assert not (broken / "adapter_model.safetensors").exists()

    code, output, _ = run(broken, "resume=true")
    assert code == 0, output[-3000:]
    expected, resumed = load_file(straight / "adapter_model.safetensors"), load_file(broken / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert sorted(train_losses(broken)) == [0, 1, 2, 3, 4, 5]
    assert train_losses(broken) == pytest.approx(train_losses(straight), rel=1e-5)


@pytest.mark.slow
def test_a_hung_process_fails_the_job_after_the_timeout_and_is_stopped(tmp_path):
    stall = ["+callbacks.fault._target_=fault_injection.StallRank", "+callbacks.fault.rank=1",
             "+callbacks.fault.step=1", "+callbacks.fault.seconds=600", "trainer.strategy.timeout.minutes=1"]
    code, output, ended = run(tmp_path / "hung", *stall)
    assert code != 0
    assert 60 <= ended - fault_time(output) < 150, output[-3000:]  # the 60 s timeout, not the 600 s stall
    assert "distributed training stopped at step 1: rank 0 failed" in output, output[-3000:]
    pid = int(re.search(r"stopping rank 1 \(pid (\d+)\)", output).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, not left sleeping
