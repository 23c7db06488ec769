"""The scale-out configs compose and build: FSDP wraps each decoder layer, SLURM launcher resolves."""

from datetime import timedelta
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

import run  # noqa: F401  (registers the project_root resolver)
from llm2vec.distributed import decoder_layer_wrap_policy
from llm2vec.loading import load_decoder

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def test_fsdp_policy_wraps_decoder_layers_of_any_architecture():
    policy = decoder_layer_wrap_policy()
    for arch in ("llama", "gemma3_text", "qwen2"):
        model, _ = load_decoder(f"tiny-random-{arch}")
        wrapped = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
        assert len(wrapped) == model.config.num_hidden_layers
        assert all(type(m).__name__.endswith("DecoderLayer") for m in wrapped)
        assert policy(module=model.layers[0], recurse=True, nonwrapped_numel=0)  # recursing is always allowed


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "fsdp_cpu", "deepspeed"])
def test_trainer_configs_compose(trainer):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"trainer={trainer}"])
    assert cfg.trainer._target_ == "lightning.Trainer"
    if trainer == "fsdp":
        strategy = instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ == "FSDPStrategy"
    if trainer == "fsdp_cpu":  # FSDP2 on CPU: every process one shard, no tensor parallelism
        strategy = instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ == "ModelParallelStrategy"
        assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (cfg.trainer.devices, 1)
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
