"""STS Spearman every N training steps: the learning curve of an encoder while it trains."""

from __future__ import annotations

import torch
from lightning import Callback

from llm2vec.evaluation.sts import run_sts_suite


class STSEvalCallback(Callback):
    """Evaluate the stage's encoder on STS `tasks` (entries as in conf/eval/*.yaml) every
    `every_n_train_steps` steps; log `curve/<task>/spearman` and print one line."""

    def __init__(self, tasks: list[dict], every_n_train_steps: int = 50, instruction: str | None = None,
                 batch_size: int = 64, max_batch_tokens: int | None = None):
        self.tasks = list(tasks)
        self.every_n_train_steps = every_n_train_steps
        self.instruction = instruction
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_train_steps == 0 and trainer.is_global_zero:
            self.evaluate(trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer, pl_module) -> None:
        # The training precision (e.g. bf16 autocast); compiled layers run eagerly, so evaluation's
        # new shapes and modes do not recompile the training graphs.
        with trainer.precision_plugin.forward_context(), torch.compiler.set_stance("force_eager"):
            results, _ = run_sts_suite(pl_module.encoder, self.tasks, self.instruction, self.batch_size,
                                       show_progress_bar=False, max_batch_tokens=self.max_batch_tokens)
        metrics = {f"curve/{task}/spearman": scores["spearman"] for task, scores in results.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        line = ", ".join(f"{task} {scores['spearman']:.2f}" for task, scores in results.items())
        print(f"\nstep {trainer.global_step}: {line}", flush=True)
