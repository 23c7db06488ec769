"""run.py through Hydra, as `python run.py ...` runs it: every stage, chaining, resume, the pipeline,
W&B offline, and early failures. Tiny random Llama, fixture data, 3 steps: seconds per run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import ROOT, TINY, TINY_DATA, compose_config, run_module
from llm2vec import LLM2Vec


def train_losses(run_dir: Path) -> dict[int, float]:
    """Every training loss the CSV logger wrote, across the versions of resumed runs."""
    losses = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with path.open() as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
        losses |= {int(row["step"]): float(row["train/loss"]) for row in rows}
    return losses


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter_model.safetensors")


def embed(run_dir_or_model: str) -> torch.Tensor:
    return LLM2Vec.from_pretrained(str(run_dir_or_model)).encode(["A man plays a guitar."], convert_to_tensor=True)


@pytest.mark.parametrize("stage", ["mntp", "simcse", "supervised"])
def test_each_stage_trains_its_adapter_and_writes_a_loadable_run_dir(run_app, tmp_path, stage):
    run_dir = tmp_path / stage
    score = run_app(f"stage={stage}", TINY_DATA[stage], "trainer.max_steps=3",
                    "stage.module.scheduler.num_warmup_steps=0", run_dir=run_dir)
    losses = train_losses(run_dir)
    assert sorted(losses) == [0, 1, 2] and all(math.isfinite(loss) for loss in losses.values())
    # LoRA's B matrices start at zero: nonzero ones were trained.
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in adapter(run_dir).items())
    for name in ("config.yaml", "metrics.json", "llm2vec_config.json", "adapter_config.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text())["STS-tiny"]["spearman"] == pytest.approx(score)
    cost = json.loads((run_dir / "train.json").read_text())  # the training cost llm2vec.compare shows
    assert cost["steps"] == 3 and cost["seconds"] > 0
    assert not torch.allclose(embed(run_dir), embed("tiny-random-llama"))
    # Checkpoints hold the trainable weights (and optimizer), not the frozen base.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])


def test_mntp_artifact_starts_simcse_whose_artifact_loads(run_app, tmp_path):
    mntp, simcse = tmp_path / "mntp", tmp_path / "simcse"
    run_app("stage=mntp", TINY_DATA["mntp"], "trainer.max_steps=2", run_dir=mntp)
    run_app("stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=2", f"stage.init_from={mntp}", run_dir=simcse)
    saved = json.loads((simcse / "llm2vec_config.json").read_text())
    assert saved["merged_adapters"] == ["merged_adapters/00"]
    merged = simcse / "merged_adapters" / "00"
    assert sorted(p.name for p in merged.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (merged / "adapter_model.safetensors").read_bytes() == (mntp / "adapter_model.safetensors").read_bytes()
    base, after_mntp, after_simcse = embed("tiny-random-llama"), embed(mntp), embed(simcse)
    assert not torch.allclose(after_mntp, base) and not torch.allclose(after_simcse, after_mntp)


def test_resume_continues_a_stopped_run_to_the_same_weights(run_app, tmp_path):
    common = ["stage=simcse", TINY_DATA["simcse"], "callbacks.model_checkpoint.every_n_train_steps=2",
              "stage.module.scheduler.num_training_steps=4"]
    run_app(*common, "trainer.max_steps=4", run_dir=tmp_path / "straight")
    stopped = tmp_path / "stopped"
    run_app(*common, "trainer.max_steps=2", run_dir=stopped)  # stops right after the step-2 checkpoint
    run_app(*common, "trainer.max_steps=4", "resume=true", run_dir=stopped)
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    straight, resumed = adapter(tmp_path / "straight"), adapter(stopped)
    assert all(torch.allclose(straight[name], resumed[name], atol=1e-6) for name in straight)
    assert sorted(train_losses(stopped)) == [0, 1, 2, 3]
    assert train_losses(stopped) == pytest.approx(train_losses(tmp_path / "straight"), rel=1e-5)


def test_a_resumed_runs_cost_counts_the_time_before_the_stop(run_app, tmp_path):
    common = ["stage=simcse", TINY_DATA["simcse"], "callbacks.model_checkpoint.every_n_train_steps=2"]
    stopped = tmp_path / "stopped"
    run_app(*common, "trainer.max_steps=2", run_dir=stopped)
    first_part = json.loads((stopped / "train.json").read_text())["seconds"]
    last = stopped / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    saved = checkpoint["callbacks"]["Timer"]["time_elapsed"]
    assert 0 < saved["train"] <= first_part
    saved["train"] = 1000.0  # as if the first part had trained for 1,000 s
    torch.save(checkpoint, last)
    run_app(*common, "trainer.max_steps=4", "resume=true", run_dir=stopped)
    cost = json.loads((stopped / "train.json").read_text())
    assert cost["steps"] == 4 and 1000 < cost["seconds"] < 1000 + 600


def test_a_timer_of_the_config_counts_the_cost(run_app, tmp_path):
    """A Timer in the callbacks config (a time limit, say) is the one train.json reads: no second one."""
    run_dir = tmp_path / "timed"
    run_app("stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=2",
            "+callbacks.timer={_target_: lightning.pytorch.callbacks.Timer, duration: '00:01:00:00'}", run_dir=run_dir)
    cost = json.loads((run_dir / "train.json").read_text())
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    assert cost["steps"] == 2 and [key for key in saved if "Timer" in key] == ["Timer"]
    assert 0 < saved["Timer"]["time_elapsed"]["train"] <= cost["seconds"]


def test_full_fine_tuning_resumes_to_the_same_weights_and_saves_its_decoder(run_app, tmp_path):
    common = ["stage=simcse", TINY_DATA["simcse"], "stage.module.lora=null", "model.dtype=float32",
              "callbacks.model_checkpoint.every_n_train_steps=2", "stage.module.scheduler.num_training_steps=4"]
    run_app(*common, "trainer.max_steps=4", run_dir=tmp_path / "straight")
    stopped = tmp_path / "stopped"
    run_app(*common, "trainer.max_steps=2", run_dir=stopped)
    run_app(*common, "trainer.max_steps=4", "resume=true", run_dir=stopped)
    weights = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(key.endswith("q_proj.weight") for key in weights)
    assert not any("embed_tokens" in key for key in weights)  # frozen: rebuilt from the base on resume
    assert (stopped / "decoder" / "model.safetensors").is_file() and not (stopped / "adapter_config.json").exists()
    torch.testing.assert_close(embed(stopped), embed(tmp_path / "straight"), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(embed(stopped), embed("tiny-random-llama"))


def test_resume_without_a_checkpoint_names_the_missing_file(run_app, tmp_path):
    with pytest.raises(FileNotFoundError, match="last.ckpt does not exist"):
        run_app("stage=simcse", TINY_DATA["simcse"], "resume=true", run_dir=tmp_path / "empty")


def test_pipeline_runs_each_step_from_the_previous_one(run_app, tmp_path):
    run_dir = tmp_path / "pipeline"
    run_app("experiment=smoke", run_dir=run_dir)
    results = json.loads((run_dir / "metrics.json").read_text())
    assert list(results) == ["bidirectional", "mntp", "simcse"]
    assert all(math.isfinite(step["STS-tiny"]["spearman"]) for step in results.values())
    simcse = OmegaConf.load(run_dir / "3-simcse" / "config.yaml")
    assert simcse.stage.init_from == str(run_dir / "2-mntp")
    assert (run_dir / "3-simcse" / "merged_adapters" / "00" / "adapter_model.safetensors").is_file()


def test_a_null_pipeline_step_is_left_out(run_app, tmp_path):
    run_dir = tmp_path / "pipeline"
    run_app("experiment=smoke", "pipeline.mntp=null", run_dir=run_dir)
    assert list(json.loads((run_dir / "metrics.json").read_text())) == ["bidirectional", "simcse"]
    simcse = OmegaConf.load(run_dir / "2-simcse" / "config.yaml")
    assert simcse.stage.init_from == simcse.model.base_model_name_or_path  # the bidirectional step trains nothing
    assert simcse.bidirectional is True
    assert not (run_dir / "3-simcse").exists()


SECOND_SIMCSE = ("+pipeline.simcse_again=['stage=simcse','stage.init_from=mntp','data=tiny_sentences',"
                 "'trainer.max_steps=3','stage.module.temperature=0.1']")


def test_a_pipeline_step_names_its_stage_and_earlier_steps_and_a_soup_step_averages_them(run_app, tmp_path):
    run_dir = tmp_path / "pipeline"
    run_app("experiment=smoke", SECOND_SIMCSE, "+pipeline.soup=['stage.ingredients=[simcse,simcse_again]']",
            run_dir=run_dir)
    results = json.loads((run_dir / "metrics.json").read_text())
    assert list(results) == ["bidirectional", "mntp", "simcse", "simcse_again", "soup"]
    assert math.isfinite(results["soup"]["STS-tiny"]["spearman"])
    again = OmegaConf.load(run_dir / "4-simcse_again" / "config.yaml")
    assert (again.stage.name, again.stage.init_from) == ("simcse", str(run_dir / "2-mntp"))  # not 3-simcse
    assert again.stage.module.temperature == 0.1
    soup_step = OmegaConf.load(run_dir / "5-soup" / "config.yaml")
    assert list(soup_step.stage.ingredients) == [str(run_dir / "3-simcse"), str(run_dir / "4-simcse_again")]

    def weights(step: str) -> dict[str, torch.Tensor]:
        return LLM2Vec.from_pretrained(str(run_dir / step), merge_peft=True).model.state_dict()

    first, second, soup = weights("3-simcse"), weights("4-simcse_again"), weights("5-soup")
    assert any(not torch.equal(first[key], second[key]) for key in soup)
    for key, weight in soup.items():
        torch.testing.assert_close(weight, (first[key] + second[key]) / 2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides, named", [
    (["+pipeline.soup=['stage.ingredients=[simcse,simcse_again]']", SECOND_SIMCSE], "simcse_again"),  # after it
    ([SECOND_SIMCSE, "pipeline.mntp=null"], "mntp"),  # left out
])
def test_a_pipeline_step_naming_a_step_that_does_not_run_before_it_fails_before_any_step_runs(
        run_app, tmp_path, overrides, named):
    with pytest.raises(ValueError, match=f"names step '{named}', which does not run before it"):
        run_app("experiment=smoke", *overrides, run_dir=tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_wandb_offline_run_holds_the_metrics_and_config(run_app, tmp_path):
    run_dir = tmp_path / "wandb-run"
    run_app("stage=simcse", TINY_DATA["simcse"], "trainer.max_steps=2", "logger=wandb", "tags=[smoke-test]",
            run_dir=run_dir)
    (offline,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    # The offline run is one protobuf log (small: no block splits), which `wandb sync` uploads later.
    records = offline.read_bytes()
    for text in ("train/loss", "eval/STS-tiny/spearman", "temperature", "smoke-test", "tiny_llama-simcse"):
        assert text.encode() in records, text
    assert train_losses(run_dir)  # CSV stays on


def test_a_wrong_key_fails_at_composition():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="temprature"):
            compose_config([*TINY, "stage=simcse", "stage.module.temprature=0.1"])


def test_a_wrong_value_fails_before_training(run_app, tmp_path):
    with pytest.raises(InstantiationException, match="unknown mask_token_type 'star': choose blank, eos, mask"):
        run_app("stage=mntp", TINY_DATA["mntp"], "model.mask_token_type=star", run_dir=tmp_path / "bad")


def test_a_wrong_key_in_a_later_pipeline_step_fails_before_the_first_step_runs(run_app, tmp_path):
    with pytest.raises(ConfigCompositionException, match="temprature"):
        run_app("experiment=smoke", "pipeline.simcse=['stage.module.temprature=1']", run_dir=tmp_path / "p")
    assert not (tmp_path / "p" / "2-mntp").exists()


@pytest.mark.parametrize(("trainer", "has_gpu", "device"), [
    ("gpu", True, "cuda"), ("ddp", True, "cuda"), ("gpu", False, "cpu"), ("cpu", True, "cpu"), ("ddp_cpu", True, "cpu")])
def test_evaluation_runs_on_the_gpu_when_the_trainer_config_asks_for_one(monkeypatch, trainer, has_gpu, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose_config([f"trainer={trainer}"])
    assert run_module.evaluation_device(cfg) == device


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose_config([f"experiment={experiment}", f"run_dir={tmp_path}"])
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.stage.name in ("bidirectional", "mntp", "simcse", "supervised", "pipeline", "soup")


@pytest.mark.parametrize("stage", ["mntp", "simcse", "supervised"])
def test_compile_layers_reaches_every_training_stage(stage, tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose_config([f"stage={stage}", "compile_layers=true", f"run_dir={tmp_path}"])
        cpu_recipe = compose_config(["experiment=smollm2_cpu", f"stage={stage}", f"run_dir={tmp_path}"])
    assert cfg.stage.module.compile_layers is True and cpu_recipe.stage.module.compile_layers is True
