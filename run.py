"""The Hydra entry point: python run.py model=<name> stage=<stage> [key=value ...]

Builds the encoder a stage starts from, runs the stage, evaluates on STS and writes everything
(resolved config, metrics.json, the encoder) into the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from llm2vec.evaluation.sts import evaluate_sts_tasks, format_table

ROOT = Path(__file__).resolve().parent
OmegaConf.register_new_resolver("project_root", lambda: str(ROOT), replace=True)
log = logging.getLogger("llm2vec")


def evaluate(encoder, cfg: DictConfig, run_dir: Path, label: str) -> dict:
    tasks = OmegaConf.to_container(cfg.eval.tasks, resolve=True)
    results = evaluate_sts_tasks(encoder, tasks, cfg.eval.instruction, cfg.eval.batch_size)
    print(f"\n== {label}: STS Spearman x100 ({cfg.model.name}, pooling={cfg.pooling}, "
          f"bidirectional={encoder.bidirectional})\n{format_table(results)}", flush=True)
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def run(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    encoder = instantiate(cfg.encoder)
    results = evaluate(encoder, cfg, run_dir, cfg.stage.name)
    first = next(iter(results.values()), None)
    return first["spearman"] if first else None


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
