"""When one process of a multi-process run fails, stop the others and say which one failed.

Under Lightning's DDP launcher the first process of a node starts the others as subprocesses. A
process that dies (killed, out of memory, an exception) breaks the collectives of the others: they
fail with a gloo/NCCL error that names no process, or, for a process that hangs instead of dying,
wait until the process group's timeout (`strategy.timeout` in conf/trainer/ddp*.yaml). This
callback runs in that first process when its fit fails: it names the processes that died and kills
those still running, so none is left hanging in a collective after the job has failed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path

from lightning import Callback

logger = logging.getLogger(__name__)
EXIT_GRACE_SECONDS = 5.0


class StopProcessesOnFailure(Callback):
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        processes = getattr(trainer.strategy.launcher, "procs", [])  # the subprocesses this one started
        if not processes:
            return
        for process in processes:  # a killed process closes its sockets a moment before it can be reaped
            try:
                process.wait(timeout=EXIT_GRACE_SECONDS / len(processes))
            except subprocess.TimeoutExpired:
                pass  # still running: hung, or waiting in a collective
        ranks = {process: trainer.global_rank + i for i, process in enumerate(processes, 1)}
        failed = [f"rank {ranks[p]} (pid {p.pid}) {exit_reason(p.returncode)}" for p in processes if p.returncode]
        running = [p for p in processes if p.returncode is None]
        if not failed:  # nobody died: a collective timed out (a hung process) or this process failed
            failed = [f"rank {trainer.global_rank} failed with {type(exception).__name__}: {first_line(exception)}"]
        logger.error(f"distributed training stopped at step {trainer.global_step}: {'; '.join(failed)}. "
                     f"{resume_hint(trainer)}")
        for process in running:  # SIGKILL: SIGTERM does not stop a process waiting in a collective
            logger.error(f"stopping rank {ranks[process]} (pid {process.pid})")
            process.kill()
            process.wait()


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def first_line(exception: BaseException) -> str:
    return (str(exception).strip().splitlines() or [""])[0][:300]


def resume_hint(trainer) -> str:
    callback = trainer.checkpoint_callback
    last = Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None
    if last is None or not last.is_file():
        return "No checkpoint was written: the run must start again."
    return f"Continue from {last} with the same command plus resume=true (same hydra.run.dir)."
