"""FSDP for real on CPU: trainer=fsdp_cpu (FSDP2 fully_shard on 2 processes, gloo) trains SimCSE's
LoRA adapter with the same losses and the same adapter as one process on the same global batch,
and saves the whole adapter (gathered from the shards, written by rank 0), which loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm2vec import LLM2Vec
from test_run import train_losses

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_llama", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1", f"eval.tasks=[{{name:STS-tiny,path:'{ROOT / 'tests/fixtures/sts_tiny.tsv'}'}}]"]
# No dropout anywhere: the processes draw other random numbers than one process would.
SIMCSE = ["stage=simcse", "data=tiny_sentences", "trainer.max_steps=3", "trainer.precision=32-true",
          "stage.module.attention_dropout=0", "model.lora.lora_dropout=0"]


def run(run_dir: Path, *overrides: str) -> Path:
    env = {"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "run.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_equals_one_process(tmp_path):
    single = run(tmp_path / "single", *SIMCSE, "trainer=cpu", "data.batch_size=8")
    sharded = run(tmp_path / "fsdp", *SIMCSE, "trainer=fsdp_cpu", "data.batch_size=4")  # 2 x 4: the same global batch
    assert (sharded / "train_ddp_process_1.log").exists()  # a second process really trained

    assert sorted(train_losses(sharded)) == [0, 1, 2]
    assert train_losses(sharded) == pytest.approx(train_losses(single), rel=1e-5)
    expected, saved = load_file(single / "adapter_model.safetensors"), load_file(sharded / "adapter_model.safetensors")
    assert saved.keys() == expected.keys() and len(saved) > 0
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in saved.items())  # trained
    for name, tensor in expected.items():  # whole tensors, not one process's shard
        torch.testing.assert_close(saved[name], tensor, rtol=1e-4, atol=1e-6, msg=name)

    # The checkpoint holds the whole trainable weights too (gathered on rank 0), nothing else.
    checkpoint = torch.load(sharded / "checkpoints/last.ckpt", weights_only=False)
    weights = checkpoint["state_dict"]
    assert weights and all("lora_" in key for key in weights)
    assert sum(t.numel() for t in weights.values()) == sum(t.numel() for t in saved.values())

    texts = ["A man plays a guitar.", "A woman is slicing an onion."]
    torch.testing.assert_close(LLM2Vec.from_pretrained(str(sharded)).encode(texts, convert_to_tensor=True),
                               LLM2Vec.from_pretrained(str(single)).encode(texts, convert_to_tensor=True),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mntp_under_fsdp_saves_the_whole_adapter(tmp_path):
    """MNTP calls the backbone itself and its LM head outside it: sharded as well, saved whole."""
    run_dir = run(tmp_path / "mntp", "trainer=fsdp_cpu", "stage=mntp", "data=tiny_blocks", "trainer.max_steps=2")
    saved = load_file(run_dir / "adapter_model.safetensors")
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in saved.items())
    encoder = LLM2Vec.from_pretrained(str(run_dir))  # a shard's shapes would not load onto the model
    vector = encoder.encode(["a sentence"], convert_to_tensor=True)
    assert vector.shape == (1, 64) and torch.isfinite(vector).all()
