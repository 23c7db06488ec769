"""On a CUDA GPU (every test skips without one, as in CI). On a GPU machine:

    pytest tests/test_gpu.py
    LLM2VEC_TEST_DEVICE=cuda pytest tests/test_bidirectional.py     # the attention tests on the GPU

Encoding on the GPU gives the CPU's embeddings (fp32) and nearly them in bf16; gradient caching
replays the GPU's dropout; run.py trains, saves and reloads with trainer=gpu and trainer=fsdp
(FSDP2, here on one GPU), which train alike in bf16; bf16-mixed SimCSE takes gradient caching."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_gradient_cache import SENTENCES, assert_equal_gradients, full_batch, simcse, step
from test_fsdp_cpu import TINY
from test_run import train_losses

from llm2vec import LLM2Vec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A man plays a guitar.", "A woman is slicing an onion.", "Two dogs run through a field of snow."]
SIMCSE = ["stage=simcse", "data=tiny_sentences", "data.batch_size=8", "trainer.max_steps=3",
          "stage.module.attention_dropout=0", "model.lora.lora_dropout=0"]


def run(run_dir: Path, *overrides: str) -> Path:
    command = [sys.executable, "run.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"{run_dir} (on cuda)" in done.stdout  # the trained encoder was evaluated on the GPU
    return run_dir


def test_encode_on_the_gpu_gives_the_cpu_embeddings():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    on_cpu = encoder.encode(TEXTS, convert_to_tensor=True)
    on_gpu = encoder.encode(TEXTS, convert_to_tensor=True, device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-4)

    bf16 = LLM2Vec.from_pretrained("tiny-random-llama", dtype=torch.bfloat16).to("cuda")
    cosine = torch.nn.functional.cosine_similarity(bf16.encode(TEXTS, convert_to_tensor=True).cpu(), on_cpu)
    assert cosine.min() > 0.99, cosine


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_gradient_caching_replays_the_gpu_dropout(attention, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # compare in true fp32
    module = simcse(mini_batch_size=4, attention=attention).to("cuda")
    expected_loss, expected = full_batch(module, SENTENCES, 4)
    loss, actual = step(module, SENTENCES)  # mini-batches of 4, 4 and 2, dropout drawn on the GPU
    torch.testing.assert_close(loss, expected_loss, rtol=1e-4, atol=0)
    assert_equal_gradients(actual, expected)


def test_gpu_and_fsdp_runs_train_alike_save_and_reload(tmp_path):
    single = run(tmp_path / "gpu", *SIMCSE, "trainer=gpu", "trainer.precision=bf16-true")
    sharded = run(tmp_path / "fsdp", *SIMCSE, "trainer=fsdp", "trainer.devices=1")

    assert sorted(train_losses(sharded)) == [0, 1, 2]
    assert train_losses(sharded) == pytest.approx(train_losses(single), rel=2e-2)  # bf16 on both
    expected, saved = load_file(single / "adapter_model.safetensors"), load_file(sharded / "adapter_model.safetensors")
    assert saved.keys() == expected.keys()
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in saved.items())
    checkpoint = torch.load(sharded / "checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])

    from_fsdp = LLM2Vec.from_pretrained(str(sharded)).encode(TEXTS, convert_to_tensor=True)
    from_gpu = LLM2Vec.from_pretrained(str(single)).encode(TEXTS, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(from_fsdp, from_gpu).min() > 0.99


def test_mntp_under_fsdp_on_the_gpu_saves_the_whole_adapter(tmp_path):
    run_dir = run(tmp_path / "mntp", "trainer=fsdp", "trainer.devices=1", "stage=mntp", "data=tiny_blocks",
                  "trainer.max_steps=2")
    saved = load_file(run_dir / "adapter_model.safetensors")
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in saved.items())
    vector = LLM2Vec.from_pretrained(str(run_dir)).encode(["a sentence"], convert_to_tensor=True)
    assert vector.shape == (1, 64) and torch.isfinite(vector).all()


def test_mixed_precision_simcse_with_gradient_caching_on_the_gpu(tmp_path):
    """trainer=gpu's bf16-mixed with the paper's large-batch trick: 8 sentences in mini-batches of 2."""
    run_dir = run(tmp_path / "cached", "stage=simcse", "data=tiny_sentences", "data.batch_size=8",
                  "trainer.max_steps=3", "trainer=gpu", "stage.module.mini_batch_size=2")
    losses = train_losses(run_dir)
    assert sorted(losses) == [0, 1, 2] and all(torch.isfinite(torch.tensor(list(losses.values()))))
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0
               for name, t in load_file(run_dir / "adapter_model.safetensors").items())
