"""Gradient caching (`mini_batch_size`) gives the loss and every LoRA gradient of the full batch:
SimCSE with attention dropout on (the random state is replayed, or the views would not match),
supervised with hard negatives, packed and padded, compiled layers, bf16-mixed, through Lightning,
under DDP with 2 processes, and across a resume."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import initialize_config_dir
from lightning import Trainer
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from conftest import ROOT, TINY_DATA, compose_config
from llm2vec import LLM2Vec
from llm2vec.data import Pairs
from llm2vec.gradient_cache import RandomState, split_batch
from llm2vec.stages import SimCSE, Supervised
from llm2vec.stages.base import compile_decoder_layers
from test_run import adapter, train_losses

FIXTURES = Path(__file__).parent / "fixtures"
# init_lora_weights=False: A and B both random, so every LoRA matrix gets a nonzero gradient.
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
SGD = functools.partial(torch.optim.SGD, lr=0.5)
SENTENCES = (FIXTURES / "sentences_tiny.txt").read_text().splitlines()[:10]


def simcse(mini_batch_size=None, attention_dropout=0.3, attention="sdpa", lora=LORA, **kwargs) -> SimCSE:
    torch.manual_seed(0)  # the same fresh LoRA in every module
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", attn_implementation=attention)
    return SimCSE(encoder, lora, SGD, attention_dropout=attention_dropout, mini_batch_size=mini_batch_size, **kwargs)


def supervised(mini_batch_size=None, **kwargs) -> Supervised:
    torch.manual_seed(0)
    return Supervised(LLM2Vec.from_pretrained("tiny-random-llama"), LORA, SGD, mini_batch_size=mini_batch_size, **kwargs)


def pairs_batch(size: int = 8) -> dict:
    data = Pairs([str(FIXTURES / "pairs")], batch_size=size, instructions={"nli": "Retrieve the entailed sentence:"})
    data.setup()
    return data.collate(data.datasets["nli"][:size])


def step(module, batch, seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training step's loss and the LoRA gradients its backward gives (outside a Trainer)."""
    module.log_step = lambda *args, **kwargs: None
    module.train()
    module.zero_grad()
    torch.manual_seed(seed)
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), gradients(module)


def gradients(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.requires_grad}


def full_batch(module, batch, mini_batch_size: int, seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full batch's loss and gradients with one graph over all of it, embedded in the same
    forward passes as the cache makes (so dropout draws the same masks): the reference."""
    module.train()
    module.zero_grad()
    torch.manual_seed(seed)
    embeddings = [module.embed_batch(mini_batch) for mini_batch in split_batch(batch, mini_batch_size)]
    loss = module.batch_loss(*(torch.cat(position) for position in zip(*embeddings)))
    loss.backward()
    return loss.detach(), gradients(module)


def assert_equal_gradients(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    assert any("lora_A" in n for n in expected) and any("lora_B" in n for n in expected)
    for name, grad in expected.items():
        assert grad.abs().sum() > 0, name
        # Summed in another order: float error up to about 1e-6 of the largest entry (GTE's loss, batches of 1).
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-7 + 1e-6 * grad.abs().max().item(), msg=name)


# ----------------------------------------------------------------------------- SimCSE with dropout


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_simcse_with_dropout_gets_the_full_batch_loss_and_gradients(packed, attention):
    module = simcse(mini_batch_size=4, attention=attention)
    module.pack_sequences = packed
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    loss, actual = step(module, SENTENCES)  # 10 sentences: mini-batches of 4, 4 and 2
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(actual, expected)


def test_simcse_queue_is_read_and_filled_once_per_cached_step():
    module = simcse(mini_batch_size=4, queue_size=12)
    memory = torch.randn(5, module.encoder.model.config.hidden_size)
    module.queue = memory
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    expected_queue, module.queue = module.queue, memory
    loss, actual = step(module, SENTENCES)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(actual, expected)
    assert module.queue.shape[0] == 12  # the 2 newest of the memory, then the batch's 10 second views
    torch.testing.assert_close(module.queue, expected_queue)
    torch.testing.assert_close(module.queue[:2], memory[-2:])


def test_simcse_momentum_encoder_fills_the_queue_once_per_cached_step():
    module = simcse(mini_batch_size=4, queue_size=12, momentum=0.9)
    memory = torch.randn(5, module.encoder.model.config.hidden_size)
    module.queue = memory
    keys = module.momentum_embeddings(SENTENCES)  # draws no random numbers: dropout is off
    module.momentum_keys = keys
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    module.queue = memory
    loss, actual = step(module, SENTENCES)  # the step embeds the keys itself, in mini-batches of 4
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(actual, expected)
    torch.testing.assert_close(module.queue, torch.cat([memory[-2:], keys]), atol=1e-5, rtol=1e-4)

def test_simcse_projection_head_gets_the_full_batch_gradients():
    module = simcse(mini_batch_size=4, projection_head=True)
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    loss, actual = step(module, SENTENCES)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert any(name.startswith("projection.") for name in expected)
    assert_equal_gradients(actual, expected)


def test_simcse_off_dropout_negatives_get_the_full_batch_gradients():
    module = simcse(mini_batch_size=4, off_dropout_negatives=True)
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    loss, actual = step(module, SENTENCES)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(actual, expected)


def test_simcse_layer_negatives_get_the_full_batch_gradients():
    module = simcse(mini_batch_size=4, layer_negatives=1)
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    loss, actual = step(module, SENTENCES)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(actual, expected)


def test_simcse_with_dropout_and_gradient_checkpointing_gets_the_full_batch_gradients():
    module = simcse(mini_batch_size=4, gradient_checkpointing=True, lora={**LORA, "lora_dropout": 0.1})
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    loss, actual = step(module, SENTENCES)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(actual, expected)


def test_without_replaying_the_random_state_the_gradients_would_differ(monkeypatch):
    module = simcse(mini_batch_size=4)
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    monkeypatch.setattr(RandomState, "restore", lambda self: None)  # pass 3 draws new dropout masks
    loss, actual = step(module, SENTENCES)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)  # pass 1 is unchanged
    different = [n for n, g in expected.items() if not torch.allclose(actual[n], g, rtol=1e-2, atol=1e-6)]
    assert len(different) > len(expected) // 2


def test_the_replayed_views_are_the_cached_ones_with_compiled_layers_and_lora_dropout():
    """Inductor's random ops draw their seeds from the global generator: replay holds when compiled."""
    module = simcse(mini_batch_size=4, lora={**LORA, "lora_dropout": 0.1})
    assert compile_decoder_layers(module.encoder.model) > 0  # what compile_layers=True does at fit start
    views = []
    embed_batch = module.embed_batch
    module.embed_batch = lambda sentences: views.append(embed_batch(sentences)) or views[-1]
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    views.clear()
    loss, actual = step(module, SENTENCES)
    cached, replayed = views[:3], views[3:]  # pass 1 (no graph), then pass 3
    assert len(replayed) == 3 and replayed[0][0].requires_grad and not cached[0][0].requires_grad
    for (first, second), (first_again, second_again) in zip(cached, replayed):
        assert not torch.allclose(first, second, atol=1e-4)  # dropout is on: the two views differ
        torch.testing.assert_close(first_again, first, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(second_again, second, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(actual, expected)


# ----------------------------------------------------------------------------- equal to the plain step


def test_without_dropout_the_cached_step_equals_the_plain_whole_batch_step():
    plain_loss, plain = step(simcse(attention_dropout=0.0), SENTENCES)
    loss, cached = step(simcse(mini_batch_size=3, attention_dropout=0.0), SENTENCES)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(cached, plain)


@pytest.mark.parametrize("both_ways", [False, True], ids=["one_way", "both_ways"])
@pytest.mark.parametrize("mini_batch_size", [1, 3])
def test_supervised_with_hard_negatives_equals_the_plain_whole_batch_step(mini_batch_size, both_ways):
    batch = pairs_batch(8)
    assert len(batch["negative"]) == 8 and isinstance(batch["query"][0], list)  # hard negatives, instructions
    plain_loss, plain = step(supervised(both_ways=both_ways), batch)
    loss, cached = step(supervised(mini_batch_size, both_ways=both_ways), batch)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=0)
    assert_equal_gradients(cached, plain)


def test_split_batch_keeps_absent_negatives_absent():
    batch = {"query": ["a", "b", "c"], "positive": ["x", "y", "z"], "negative": None}
    assert split_batch(batch, 2) == [{"query": ["a", "b"], "positive": ["x", "y"], "negative": None},
                                     {"query": ["c"], "positive": ["z"], "negative": None}]
    assert split_batch(["a", "b", "c"], 2) == [["a", "b"], ["c"]]


def test_a_batch_within_the_mini_batch_size_takes_the_plain_step():
    calls = []
    module = simcse(mini_batch_size=16)
    module.embed = lambda items: calls.append(len(items)) or SimCSE.embed(module, items)
    step(module, SENTENCES)
    assert calls == [2 * len(SENTENCES)]  # one forward, no cache


def test_a_bad_mini_batch_size_is_refused():
    with pytest.raises(ValueError, match="mini_batch_size 0 must be a positive number of examples"):
        simcse(mini_batch_size=0)


# ----------------------------------------------------------------------------- through Lightning


def fit(module, steps: int, **trainer_kwargs) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses and trained weights of `steps` Lightning steps on SENTENCES (gradient clipping on)."""
    losses = []
    module.log_step = lambda loss, batch_size: losses.append(loss.item())
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=0.5, **trainer_kwargs)
    torch.manual_seed(1)
    trainer.fit(module, train_dataloaders=DataLoader([SENTENCES] * steps, batch_size=None))
    return losses, {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_lightning_steps_with_the_cache_train_like_plain_steps():
    plain_losses, plain = fit(simcse(attention_dropout=0.0), 3)
    losses, cached = fit(simcse(mini_batch_size=4, attention_dropout=0.0), 3)
    assert plain_losses[0] != plain_losses[-1]  # the steps train
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    for name, weight in plain.items():
        torch.testing.assert_close(cached[name], weight, rtol=1e-4, atol=1e-6, msg=name)


def test_under_bf16_mixed_both_passes_run_in_autocast_and_the_views_replay_exactly():
    module = simcse(mini_batch_size=4)  # attention dropout on
    views = []
    embed_batch = module.embed_batch
    module.embed_batch = lambda sentences: views.append(embed_batch(sentences)) or views[-1]
    fit(module, 1, precision="bf16-mixed")
    cached, replayed = views[:3], views[3:]
    assert len(replayed) == 3 and all(v.dtype == torch.bfloat16 for pair in views for v in pair)
    for (first, second), (first_again, second_again) in zip(cached, replayed):
        assert not torch.equal(first, second)
        assert torch.equal(first_again, first) and torch.equal(second_again, second)


def test_sharded_strategies_are_refused():
    module = simcse(mini_batch_size=4)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="works with one device or DDP, not FSDPStrategy"):
        module.on_fit_start()


# ----------------------------------------------------------------------------- through run.py


def test_a_resumed_cached_run_equals_an_uninterrupted_one(run_app, tmp_path):
    # Dropout on (attention 0.3, LoRA 0.05): the replayed random state must leave the generator where
    # the plain run would, so the checkpoint's random state continues the run exactly.
    common = ["stage=simcse", TINY_DATA["simcse"], "stage.module.mini_batch_size=2",
              "callbacks.model_checkpoint.every_n_train_steps=2", "stage.module.scheduler.num_training_steps=4"]
    run_app(*common, "trainer.max_steps=4", run_dir=tmp_path / "straight")
    stopped = tmp_path / "stopped"
    run_app(*common, "trainer.max_steps=2", run_dir=stopped)
    run_app(*common, "trainer.max_steps=4", "resume=true", run_dir=stopped)
    assert OmegaConf.load(stopped / "config.yaml").stage.module.mini_batch_size == 2
    straight, resumed = adapter(tmp_path / "straight"), adapter(stopped)
    assert all(torch.allclose(straight[name], resumed[name], atol=1e-6) for name in straight)
    assert sorted(train_losses(stopped)) == [0, 1, 2, 3]
    assert train_losses(stopped) == pytest.approx(train_losses(tmp_path / "straight"), rel=1e-5)


def test_mini_batch_size_composes_for_both_contrastive_stages_and_the_paper_recipe(tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        simcse_cfg = compose_config(["stage=simcse", "stage.module.mini_batch_size=4", f"run_dir={tmp_path}"])
        supervised_cfg = compose_config(["stage=supervised", "stage.module.mini_batch_size=4", f"run_dir={tmp_path}"])
        paper = compose_config(["experiment=paper_supervised", f"run_dir={tmp_path}"])
        plain = compose_config(["stage=simcse", f"run_dir={tmp_path}"])
    assert simcse_cfg.stage.module.mini_batch_size == 4 and supervised_cfg.stage.module.mini_batch_size == 4
    assert plain.stage.module.mini_batch_size is None  # off unless asked for
    assert (paper.data.batch_size, paper.stage.module.mini_batch_size) == (512, 64)  # the paper's 512, 64 at a time


DDP = ["model=tiny_llama", "trainer=ddp_cpu", "trainer.precision=32-true", "trainer.max_steps=2",
       "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "stage=simcse", "data=tiny_sentences",
       "stage.module.attention_dropout=0.0", "model.lora.lora_dropout=0.0",
       "stage.module.optimizer._target_=torch.optim.SGD", "stage.module.optimizer.lr=0.5",
       f"eval.tasks=[{{name:STS-tiny,path:'{FIXTURES / 'sts_tiny.tsv'}'}}]"]


def ddp_run(run_dir: Path, *overrides: str) -> Path:
    env = {"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "run.py", *DDP, *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (run_dir / "train_ddp_process_1.log").exists()  # a second process really trained
    return run_dir


def test_under_ddp_cached_steps_equal_plain_steps(tmp_path):
    """2 processes with 4 sentences each; with caching, mini-batches of 2. SGD with a large learning
    rate: after two steps the adapters differ by the gradients' difference (times 0.5)."""
    plain = ddp_run(tmp_path / "plain")
    cached = ddp_run(tmp_path / "cached", "stage.module.mini_batch_size=2")
    assert train_losses(cached) == pytest.approx(train_losses(plain), rel=1e-5) and len(train_losses(plain)) == 2
    plain_adapter, cached_adapter = adapter(plain), adapter(cached)
    assert plain_adapter.keys() == cached_adapter.keys()
    assert all(t.abs().sum() > 0 for name, t in plain_adapter.items() if "lora_B" in name)  # they trained
    for name, weight in plain_adapter.items():
        torch.testing.assert_close(cached_adapter[name], weight, rtol=1e-4, atol=1e-6, msg=name)
