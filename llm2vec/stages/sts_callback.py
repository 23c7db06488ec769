"""STS Spearman every N training steps: the learning curve of an encoder while it trains, and
optionally SimCSE's model selection (the saved encoder is the step that scored best on dev)."""

from __future__ import annotations

import torch
from lightning import Callback

from llm2vec.evaluation.sts import run_sts_suite


class STSEvalCallback(Callback):
    """Evaluate the stage's encoder on STS `tasks` (entries as in conf/eval/*.yaml) every
    `every_n_train_steps` steps; log `curve/<task>/spearman` and print one line.

    `keep_best`: the name of one of `tasks` (e.g. STSB-dev). Only that task is evaluated while
    training, and when training ends the trainable weights go back to the evaluated step where its
    Spearman was highest (the last step is always evaluated), so the stage saves that encoder: the
    protocol of SimCSE (Gao et al., 2021), which kept the best STS-B dev checkpoint. The best weights
    travel in the checkpoint, so a resumed run selects over all its steps."""

    def __init__(self, tasks: list[dict], every_n_train_steps: int = 50, instruction: str | None = None,
                 batch_size: int = 64, max_batch_tokens: int | None = None, keep_best: str | None = None):
        self.tasks = list(tasks)
        if keep_best is not None:
            self.tasks = [task for task in self.tasks if task["name"] == keep_best]
            if not self.tasks:
                names = ", ".join(task["name"] for task in tasks)
                raise ValueError(f"keep_best={keep_best!r} is none of the callback's tasks ({names})")
        self.every_n_train_steps = every_n_train_steps
        self.instruction = instruction
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.keep_best = keep_best
        self.evaluated_step: int | None = None
        self.best_score = float("-inf")
        self.best_step: int | None = None
        self.best_weights: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_train_steps == 0 and trainer.is_global_zero:
            self.evaluate(trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.keep_best is None or not trainer.is_global_zero:
            return  # only the first process saves the encoder
        if self.evaluated_step != trainer.global_step:
            self.evaluate(trainer, pl_module)
        trainable = dict(pl_module.named_parameters())
        with torch.no_grad():
            for name, weight in self.best_weights.items():
                trainable[name].copy_(weight)
        print(f"\n{self.keep_best}: the saved encoder is step {self.best_step}'s ({self.best_score:.2f})",
              flush=True)

    def evaluate(self, trainer, pl_module) -> None:
        # The training precision (e.g. bf16 autocast); compiled layers run eagerly, so evaluation's
        # new shapes and modes do not recompile the training graphs.
        with trainer.precision_plugin.forward_context(), torch.compiler.set_stance("force_eager"):
            results, skipped = run_sts_suite(pl_module.encoder, self.tasks, self.instruction, self.batch_size,
                                             show_progress_bar=False, max_batch_tokens=self.max_batch_tokens)
        if self.keep_best in skipped:
            raise ValueError(f"keep_best={self.keep_best!r} cannot be evaluated: {skipped[self.keep_best]}")
        self.evaluated_step = trainer.global_step
        metrics = {f"curve/{task}/spearman": scores["spearman"] for task, scores in results.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        line = ", ".join(f"{task} {scores['spearman']:.2f}" for task, scores in results.items())
        print(f"\nstep {trainer.global_step}: {line}", flush=True)
        if self.keep_best is not None and results[self.keep_best]["spearman"] > self.best_score:
            self.best_score = results[self.keep_best]["spearman"]
            self.best_step = trainer.global_step
            self.best_weights = {name: weight.detach().clone() for name, weight in pl_module.named_parameters()
                                 if weight.requires_grad}

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step, "best_weights": self.best_weights}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict["best_score"]
        self.best_step = state_dict["best_step"]
        self.best_weights = state_dict["best_weights"]
