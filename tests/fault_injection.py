"""Test-only callbacks that break a distributed run on purpose, injected from the command line:
python run.py trainer=ddp_cpu +callbacks.fault._target_=fault_injection.KillRank +callbacks.fault.rank=1 ...
(with tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time

from lightning import Callback


class KillRank(Callback):
    """SIGKILL process `rank` in the middle of training step `step` (after its forward, before its
    backward): what the kernel's OOM killer or a lost node does, with no chance to clean up."""

    def __init__(self, rank: int, step: int):
        self.rank = rank
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            print(f"fault_injection: killing rank {self.rank} at step {self.step} at time {time.time()}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class StallRank(Callback):
    """Process `rank` stops answering in training step `step` (a deadlock, a stuck file system): it
    sleeps `seconds` before its backward, so the others wait in the gradient all-reduce."""

    def __init__(self, rank: int, step: int, seconds: float):
        self.rank = rank
        self.step = step
        self.seconds = seconds

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            print(f"fault_injection: rank {self.rank} stalls {self.seconds} s at step {self.step} at time {time.time()}", flush=True)
            time.sleep(self.seconds)
