"""The scale-out configs compose and build: FSDP2 shards each decoder layer, SLURM launcher resolves."""

from datetime import timedelta
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import run  # noqa: F401  (registers the project_root resolver)
from llm2vec.distributed import FSDP2Strategy

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "fsdp_cpu", "deepspeed"])
def test_trainer_configs_compose(trainer):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"trainer={trainer}"])
    assert cfg.trainer._target_ == "lightning.Trainer"
    if trainer in ("fsdp", "fsdp_cpu"):  # FSDP2: every process one shard, no tensor parallelism
        strategy = instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, FSDP2Strategy) and strategy._tensor_parallel_size == 1
    if trainer == "ddp_cpu":
        assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("cpu", 2)
    if trainer in ("ddp", "ddp_cpu"):  # a hung process fails the others after this timeout (not torch's 30 min)
        strategy = instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ == "DDPStrategy"
        assert strategy._timeout == timedelta(minutes={"ddp": 30, "ddp_cpu": 10}[trainer])


def test_slurm_launcher_config_resolves():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == launcher.tasks_per_node == 8
