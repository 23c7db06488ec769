"""The Hydra entry point: python run.py model=<name> stage=<stage> [key=value ...]

- stage=bidirectional: evaluate a model as it is (or a run dir: stage.init_from=<dir>);
- stage=mntp | simcse | supervised: train a LoRA adapter with Lightning, save the encoder into the
  run dir (LLM2Vec.from_pretrained(<run dir>) loads it), evaluate it;
- stage=soup: save the model soup of saved encoders (stage.ingredients=[<run dir>, ...]) into the
  run dir, evaluate it;
- stage=pipeline: the stages listed under `pipeline` in a row, each starting from the one before.

Every run dir holds the resolved config.yaml and metrics.json (STS dev/test); training runs add the
adapter and llm2vec_config.json, csv/metrics.csv (and W&B's offline run) and checkpoints/last.ckpt,
which `hydra.run.dir=<run dir> resume=true` continues from.
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning import Trainer, seed_everything
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from llm2vec import atomic
from llm2vec.checkpoints import AtomicCheckpointIO
from llm2vec.checkpoints import checkpoint_to_resume as resumable
from llm2vec.evaluation import run_evaluation
from llm2vec.precision import fastest_dtype, fastest_precision
from llm2vec.soup import soup

ROOT = Path(__file__).resolve().parent
OmegaConf.register_new_resolver("project_root", lambda: str(ROOT), replace=True)


def required(value, name: str):
    """${required:${key},key}: the value, or a clear error naming the key when it is unset."""
    if value is None:
        raise ValueError(f"{name} must be set for this config (e.g. {name}=<dir>)")
    return value


OmegaConf.register_new_resolver("required", required, replace=True)
# bf16 where the accelerator multiplies it fast, fp32 where it does not (llm2vec/precision.py).
OmegaConf.register_new_resolver("fastest_dtype", fastest_dtype, replace=True)
OmegaConf.register_new_resolver("fastest_precision", fastest_precision, replace=True)
log = logging.getLogger("llm2vec")


def evaluation_device(cfg: DictConfig) -> str:
    """The GPU when the trainer config asks for one and there is one: the encoder is loaded (and
    Lightning leaves a trained model) on the CPU, where evaluating a GPU run takes minutes."""
    wants_gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def evaluate(encoder, cfg: DictConfig, run_dir: Path) -> dict:
    """Run the eval config on the encoder; metrics.json gets {task: scores}."""
    device = evaluation_device(cfg)
    encoder.to(device)
    print(f"\n== {cfg.stage.name}: {run_dir} (on {device})", flush=True)
    summary = run_evaluation(encoder, OmegaConf.to_container(cfg.eval, resolve=True), run_dir)
    atomic.write_json(run_dir / "metrics.json", summary["results"])
    return summary["results"]


def main_score(scores: dict) -> float | None:
    return scores.get("spearman", scores.get("main_score", scores.get("accuracy")))


def train(cfg: DictConfig, run_dir: Path) -> tuple[Trainer, list]:
    """Fit the stage's LightningModule on its data and save the encoder into run_dir."""
    module = instantiate(cfg.stage.module)
    data = instantiate(cfg.data)
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    # The training time, kept in checkpoints: a resumed run's cost counts every part. A Timer of the
    # config's (e.g. a duration limit on a cluster) serves; a second one would clash in checkpoints.
    timer = next((c for c in callbacks if isinstance(c, Timer)), None)
    if timer is None:
        timer = Timer()
        callbacks.append(timer)
    # Checkpoints are written atomically unless the trainer config brings its own plugins.
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                          default_root_dir=str(run_dir), **plugins)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=data, ckpt_path=checkpoint_to_resume(cfg, trainer))
    if trainer.is_global_zero:
        if cfg.get("saved_pooling_layers") is not None:  # trained on some layers, read at others
            module.encoder.set_pooling_layers(cfg.saved_pooling_layers)
        module.save(run_dir)
        # The training cost, for llm2vec.compare (resumed: the time up to its checkpoint, plus since).
        cost = {"steps": trainer.global_step, "seconds": timer.time_elapsed("train")}
        atomic.write_json(run_dir / "train.json", cost)
    return trainer, loggers


def checkpoint_to_resume(cfg: DictConfig, trainer: Trainer) -> str | None:
    if not cfg.resume:
        return None
    if trainer.checkpoint_callback is None or trainer.checkpoint_callback.dirpath is None:
        raise ValueError("resume=true needs the model_checkpoint callback (callbacks=default)")
    # A damaged last.ckpt stops here, named, with how to go on (llm2vec.checkpoints).
    return resumable(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")


def log_results(loggers: list, results: dict, step: int) -> None:
    metrics = {f"eval/{task}/{name}": value for task, scores in results.items()
               for name, value in scores.items() if isinstance(value, (int, float))}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        logger.save()
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # one W&B run per stage, also when a pipeline runs several


def run(cfg: DictConfig) -> float | None:
    """Run one stage (or the pipeline); return the first STS task's Spearman (dev, for sweeps)."""
    if cfg.stage.name == "pipeline":
        return run_pipeline(cfg)
    if cfg.stage.get("init_from") is None:  # null: start from the base model
        cfg.stage.init_from = cfg.model.base_model_name_or_path
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(cfg.seed, workers=True)
    loggers, step = [], 0
    if cfg.stage.name == "soup":
        soup(list(cfg.stage.ingredients), run_dir)
        encoder = instantiate(cfg.encoder, base_model_name_or_path=str(run_dir))
    elif cfg.stage.get("module") is None:
        encoder = instantiate(cfg.encoder)
    else:
        trainer, loggers = train(cfg, run_dir)
        if not trainer.is_global_zero:
            return None
        # Evaluate what was saved: the artifact a later stage or a user loads (its pooling layers too).
        encoder = instantiate(cfg.encoder, base_model_name_or_path=str(run_dir), pooling_layers=None)
        step = trainer.global_step
    results = evaluate(encoder, cfg, run_dir)
    log_results(loggers, results, step)
    first = next(iter(results.values()), None)
    return main_score(first) if first else None


# ----------------------------------------------------------------------------- the pipeline

PIPELINE_OWN_KEYS = ("stage", "run_dir", "resume", "hydra")


def run_pipeline(cfg: DictConfig) -> float | None:
    """Each step is an ordinary run composed from the same command line plus `stage=<step>` and the
    step's overrides, in <run_dir>/<n>-<step>, starting from the last trained step before it.

    A step named otherwise than its stage says it (`simcse_wikitext: [stage=simcse, ...]`), and a
    step may name earlier steps where a run dir goes: `stage.init_from=mntp` starts it there instead,
    `stage.ingredients=[simcse, simcse_wikitext]` makes a soup of them."""
    run_dir = Path(cfg.run_dir)
    command_line = HydraConfig.get().overrides.task  # inherited by every step, minus what a step sets
    inherited = [o for o in command_line if _override_key(o).split(".")[0] not in PIPELINE_OWN_KEYS]
    steps, init_from, step_dirs, all_steps = [], None, {}, list(cfg.pipeline)
    kept = [(name, overrides) for name, overrides in cfg.pipeline.items() if overrides is not None]
    for number, (name, overrides) in enumerate(kept, 1):
        stage = next((o.split("=", 1)[1] for o in overrides if _override_key(o) == "stage"), name)
        overrides = [o for o in overrides if _override_key(o) != "stage"]
        step_dir = run_dir / f"{number}-{name}"
        step_overrides = [*inherited, f"stage={stage}", *overrides, f"run_dir={step_dir}"]
        if init_from is not None and "stage.init_from" not in map(_override_key, overrides):
            step_overrides.append(f"stage.init_from={init_from}")
        if cfg.resume and (step_dir / "checkpoints" / "last.ckpt").is_file():
            step_overrides.append("resume=true")
        # Compose every step before running any, so a wrong key fails in seconds, not after training.
        step_cfg = hydra.compose("config", overrides=step_overrides)
        name_step_dirs(step_cfg, name, step_dirs, all_steps)
        steps.append((name, step_dir, step_cfg))
        step_dirs[name] = step_dir
        if step_cfg.stage.get("module") is not None or step_cfg.stage.name == "soup":
            init_from = step_dir
    results = {}
    for name, step_dir, step_cfg in steps:
        if not (cfg.resume and (step_dir / "metrics.json").is_file()):  # metrics.json: the step finished
            run(step_cfg)
            gc.collect()  # the finished step's model and trainer sit in reference cycles: free them now
        results[name] = json.loads((step_dir / "metrics.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_dir / "metrics.json", results)
    print(f"\n== pipeline ({cfg.model.name}): score x100 after each step\n{pipeline_table(results)}", flush=True)
    last_step = list(results.values())[-1] if results else {}
    first = next(iter(last_step.values()), None)
    return main_score(first) if first else None


def name_step_dirs(step_cfg: DictConfig, step: str, step_dirs: dict[str, Path], all_steps: list[str]) -> None:
    """Replace the names of earlier steps in the step's stage.init_from and stage.ingredients by
    their run dirs; a name of a later step, or of one left out (null), is refused."""
    def step_dir(value):
        if value in step_dirs:
            return str(step_dirs[value])
        if value in all_steps:
            raise ValueError(f"pipeline step {step!r} names step {value!r}, which does not run before it "
                             "(a later step, or one left out with null)")
        return value

    if step_cfg.stage.get("init_from") is not None:
        step_cfg.stage.init_from = step_dir(step_cfg.stage.init_from)
    if step_cfg.stage.get("ingredients") is not None:
        step_cfg.stage.ingredients = [step_dir(value) for value in step_cfg.stage.ingredients]


def pipeline_table(results: dict[str, dict]) -> str:
    tasks = list(next(iter(results.values()), {}))
    lines = [f"{'step':<16}" + "".join(f"{task:>12}" for task in tasks)]
    for stage, scores in results.items():
        values = [main_score(scores.get(task, {})) for task in tasks]
        lines.append(f"{stage:<16}" + "".join(f"{float('nan') if v is None else v:12.2f}" for v in values))
    return "\n".join(lines)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
