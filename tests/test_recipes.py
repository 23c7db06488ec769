"""The Wikipedia-only recipes (`experiment=smollm2_wiki`, `gemma3_wiki`, `gemma3_wiki_diffcse`,
`gemma3_wiki_wikitext`, `gemma3_wiki_soup`, `gemma3_wiki_soup_instruct`) end to end on their real models, cut
to 2 steps a stage: every step trains on Wikipedia text, saves an encoder, and `stage=eval` on the saved
encoder (how the README's scores are made) runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from conftest import FIXTURES, ROOT, compose_config, run_module

SMOKE = [
    "trainer.max_steps=2",  # inherited by every step, it outranks the steps' stage.max_steps
    "trainer.log_every_n_steps=1",
    "max_length=32",
    "compile_layers=false",
    f"eval.tasks=[{{name:STS-tiny,path:'{FIXTURES / 'sts_tiny.tsv'}'}}]",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def run_job(overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return run_module.run(compose_config(overrides))


@pytest.mark.slow
@pytest.mark.parametrize("experiment, model, sentences", [
    ("smollm2_wiki", "smollm2-135m", "wiki1m_first_11914.txt"),
    ("gemma3_wiki", "gemma3-270m", "wiki1m_first_11914.txt"),
    ("gemma3_wiki_diffcse", "gemma3-270m", "wiki1m_first_11914.txt"),
    ("gemma3_wiki_wikitext", "gemma3-270m", "wikitext2_sentences.txt"),
])
def test_wiki_recipe_trains_on_wikipedia_only_and_its_encoder_evaluates(experiment, model, sentences, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    run_job([f"experiment={experiment}", *SMOKE, f"run_dir={run_dir}"])

    assert list(json.loads((run_dir / "metrics.json").read_text())) == ["bidirectional", "mntp", "simcse"]
    for step, data_file in (("2-mntp", "wikitext2_paragraphs.txt"), ("3-simcse", sentences)):
        config = OmegaConf.load(run_dir / step / "config.yaml")
        assert [Path(f).name for f in config.data.files] == [data_file]  # Wikipedia, no STS sentence
        assert config.model.base_model_name_or_path == model
        assert json.loads((run_dir / step / "train.json").read_text())["steps"] == 2
    simcse = OmegaConf.load(run_dir / "3-simcse" / "config.yaml")
    assert simcse.stage.module.temperature == 0.1 and simcse.data.batch_size == 32
    assert simcse.data.group_by_length is (experiment == "smollm2_wiki")  # Gemma-3's batches are drawn at random
    # trained on the last layer (Gemma-3's 18, SmolLM2's 30), saved reading the layer chosen on dev
    saved = json.loads((run_dir / "3-simcse" / "llm2vec_config.json").read_text())
    assert (simcse.pooling_layers, saved["pooling_layers"]) == (None, [13] if model == "gemma3-270m" else [25])
    logged = next((run_dir / "3-simcse" / "csv").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert "train/loss" in logged and ("train/replaced_token_loss" in logged) is (experiment == "gemma3_wiki_diffcse")

    eval_dir = tmp_path / "eval"
    score = run_job(["stage=eval", f"stage.init_from={run_dir / '3-simcse'}", *SMOKE, f"run_dir={eval_dir}"])
    assert score is not None and -100 <= score <= 100
    assert "STS-tiny" in json.loads((eval_dir / "metrics.json").read_text())


SOUP_RECIPES = {  # the SimCSE steps, then the soup's step
    "gemma3_wiki_soup": (["simcse", "simcse_wikitext"], "soup"),
    "gemma3_wiki_soup_instruct": (["simcse", "simcse_wikitext", "simcse_instruct", "simcse_wikitext_instruct"],
                                  "soup_of_four"),
}
SIMCSE_SENTENCES = {"simcse": "wiki1m_first_11914.txt", "simcse_wikitext": "wikitext2_sentences.txt",
                    "simcse_instruct": "wiki1m_first_11914.txt",
                    "simcse_wikitext_instruct": "wikitext2_sentences.txt"}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", list(SOUP_RECIPES))
def test_the_soup_recipes_train_their_simcse_runs_from_one_mntp_run_and_save_their_soup(experiment, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    run_job([f"experiment={experiment}", *SMOKE, f"run_dir={run_dir}"])

    simcse_steps, soup_step = SOUP_RECIPES[experiment]
    steps = ["bidirectional", "mntp", *simcse_steps, soup_step]
    assert list(json.loads((run_dir / "metrics.json").read_text())) == steps
    soup_dir = f"{len(steps)}-{soup_step}"
    for number, step in enumerate(simcse_steps, 3):
        config = OmegaConf.load(run_dir / f"{number}-{step}" / "config.yaml")
        assert [Path(f).name for f in config.data.files] == [SIMCSE_SENTENCES[step]]
        assert config.stage.init_from == str(run_dir / "2-mntp")
        instructed = step.endswith("_instruct")
        assert config.stage.module.instruction == ("Retrieve semantically similar text:" if instructed else None)
    saved = json.loads((run_dir / soup_dir / "llm2vec_config.json").read_text())
    assert saved["pooling_layers"] == [13] and saved["merged_adapters"] == ["merged_adapters/00"]
    # the soup of four is scored read with the instruction (its better reading on dev); the plain soup without
    evaluated_with = OmegaConf.load(run_dir / soup_dir / "config.yaml").eval.instruction
    assert evaluated_with == ("Retrieve semantically similar text:" if experiment.endswith("_instruct") else None)
    score = run_job(["stage=eval", f"stage.init_from={run_dir / soup_dir}", *SMOKE, f"run_dir={tmp_path / 'eval'}"])
    assert score is not None and -100 <= score <= 100


def simcse_step(experiment: str, step: str = "simcse"):
    """A SimCSE step of a recipe's pipeline, composed as run.py composes it."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        recipe = compose_config([f"experiment={experiment}"])
        overrides = [o for o in recipe.pipeline[step] if not o.startswith(("stage=", "stage.init_from="))]
        return compose_config([f"experiment={experiment}", "stage=simcse", *overrides])


def training(step) -> dict:
    """What a composed step trains: all of it but the pipeline listing the steps."""
    return {key: value for key, value in OmegaConf.to_container(step).items() if key != "pipeline"}


@pytest.mark.parametrize("experiment, layer, steps", [("smollm2_wiki", 25, 250), ("gemma3_wiki", 13, 125)])
def test_the_wiki_recipes_train_on_the_last_layer_and_save_the_layer_and_steps_chosen_on_dev(experiment, layer, steps):
    simcse = simcse_step(experiment)
    assert (simcse.pooling_layers, simcse.saved_pooling_layers) == (None, [layer])
    assert simcse.stage.max_steps == steps == simcse.stage.module.scheduler.num_training_steps


def test_the_batch_64_recipe_is_gemma3_wiki_with_64_length_grouped_sentences_embedded_32_at_a_time():
    base, b64 = simcse_step("gemma3_wiki"), simcse_step("gemma3_wiki_b64")
    assert (base.data.batch_size, base.stage.module.mini_batch_size) == (32, None)
    assert (b64.data.batch_size, b64.stage.module.mini_batch_size) == (64, 32)
    # chosen over three seeds with length-grouped batches; random ones were measured on batches of 32
    assert (base.data.group_by_length, b64.data.group_by_length) == (False, True)
    assert (base.saved_pooling_layers, b64.saved_pooling_layers) == ([13], None)  # b64 was not measured at layer 13
    for key in ("data.files", "stage.max_steps", "stage.module.optimizer.lr",
                "stage.module.temperature", "stage.module.attention_dropout", "model", "pooling", "max_length"):
        assert OmegaConf.select(b64, key) == OmegaConf.select(base, key), key


def test_the_diffcse_recipe_is_gemma3_wiki_with_replaced_token_detection():
    base, diffcse = simcse_step("gemma3_wiki"), simcse_step("gemma3_wiki_diffcse")
    assert (base.stage.module.replaced_token_weight, diffcse.stage.module.replaced_token_weight) == (0.0, 0.005)
    assert diffcse.stage.module.replaced_token_ratio == 0.3 and diffcse.stage.module.mask_token_type == "blank"
    for key in ("data", "stage.max_steps", "stage.module.optimizer", "stage.module.temperature",
                "stage.module.attention_dropout", "model", "pooling", "max_length", "saved_pooling_layers"):
        assert OmegaConf.select(diffcse, key) == OmegaConf.select(base, key), key


def test_the_wikitext_recipe_is_gemma3_wiki_with_wikitext_sentences():
    base, wikitext = simcse_step("gemma3_wiki"), simcse_step("gemma3_wiki_wikitext")
    assert [Path(f).name for f in base.data.files] == ["wiki1m_first_11914.txt"]
    assert [Path(f).name for f in wikitext.data.files] == ["wikitext2_sentences.txt"]
    assert wikitext.data._target_ == base.data._target_ == "llm2vec.data.Sentences"
    for key in ("data.batch_size", "data.group_by_length", "data.min_words", "data.max_words", "stage",
                "model", "pooling", "max_length", "saved_pooling_layers"):
        assert OmegaConf.select(wikitext, key) == OmegaConf.select(base, key), key


def test_the_soup_recipe_soups_the_simcse_steps_of_gemma3_wiki_and_gemma3_wiki_wikitext():
    assert training(simcse_step("gemma3_wiki_soup")) == training(simcse_step("gemma3_wiki"))
    assert training(simcse_step("gemma3_wiki_soup", "simcse_wikitext")) == training(simcse_step("gemma3_wiki_wikitext"))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        pipeline = compose_config(["experiment=gemma3_wiki_soup"]).pipeline
    assert "stage.init_from=mntp" in pipeline.simcse_wikitext  # both from the one MNTP run
    assert list(pipeline.soup) == ["stage.ingredients=[simcse,simcse_wikitext]"]


def test_the_instructed_soup_adds_the_soup_recipes_simcse_runs_with_the_instruction_on_one_view():
    for plain, instructed in (("simcse", "simcse_instruct"), ("simcse_wikitext", "simcse_wikitext_instruct")):
        base = training(simcse_step("gemma3_wiki_soup", plain))
        with_instruction = training(simcse_step("gemma3_wiki_soup_instruct", instructed))
        assert (base["stage"]["module"]["instruction"], with_instruction["stage"]["module"]["instruction"]) == (
            None, "Retrieve semantically similar text:")
        with_instruction["stage"]["module"]["instruction"] = None
        assert with_instruction == base
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        pipeline = compose_config(["experiment=gemma3_wiki_soup_instruct"]).pipeline
    assert pipeline.soup is None and list(pipeline)[-1] == "soup_of_four"  # the soup runs after its four runs
    assert list(pipeline.soup_of_four) == [
        "stage=soup", "stage.ingredients=[simcse,simcse_wikitext,simcse_instruct,simcse_wikitext_instruct]",
        "eval.instruction='Retrieve semantically similar text:'"]  # scored read with the instruction
    assert all("stage.init_from=mntp" in pipeline[step] for step in ("simcse_instruct", "simcse_wikitext_instruct"))
