"""The ablation rows (variant=...) and the Optuna sweep compose into what they claim to be."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import run  # noqa: F401  (registers the project_root and required resolvers)

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.mark.parametrize("variant, stage, bidirectional, echo", [
    ("uni", "bidirectional", False, False),
    ("echo", "bidirectional", False, True),
    ("bi", "bidirectional", True, False),
    ("bi_mntp", "bidirectional", True, False),
    ("bi_mntp_simcse", "simcse", True, False),
    ("bi_simcse", "simcse", True, False),  # SimCSE without MNTP: from the base model
])
def test_variants(variant, stage, bidirectional, echo):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"variant={variant}", "mntp_run=/runs/mntp"])
    assert (cfg.stage.name, cfg.bidirectional, cfg.encoder.echo) == (stage, bidirectional, echo)
    assert cfg.stage.init_from == ("/runs/mntp" if "mntp" in variant else None)


def test_a_variant_row_evaluated_from_a_trained_run():
    """The seeded sweeps probe a SimCSE run as its variant's row: the stage given on the command line wins."""
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=["variant=bi_mntp_simcse", "stage=eval", "stage.init_from=/runs/simcse/seed${seed}",
                                           "seed=2", "eval=probes_ud"])
    assert (cfg.stage.name, cfg.stage.init_from, cfg.bidirectional) == ("eval", "/runs/simcse/seed2", True)
    assert cfg.eval.kind == "probes_ud"


def test_mntp_variants_name_the_missing_mntp_run():
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=["variant=bi_mntp"])
    with pytest.raises(Exception, match="mntp_run must be set"):
        _ = cfg.stage.init_from


def test_optuna_sweep_searches_simcse_on_dev():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=simcse_optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"stage.module.optimizer.lr", "stage.module.temperature",
                                             "stage.module.attention_dropout"}
    assert cfg.stage.name == "simcse" and cfg.eval.tasks[0].name == "STSB-dev"  # run.py returns its Spearman
