"""bf16 only where it is fast: the CPU's features pick the recipes' dtype and Lightning precision."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import run  # noqa: F401  (registers the fastest_dtype and fastest_precision resolvers)
from llm2vec import precision
from llm2vec.precision import fast_bf16, fastest_dtype, fastest_precision

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture
def x86_cpu(monkeypatch):
    """An x86 CPU whose AMX and AVX512-BF16 flags the test sets."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")

    def with_features(amx: bool, avx512_bf16: bool):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return with_features


@pytest.mark.parametrize(("amx", "avx512_bf16", "fast"), [(True, True, True), (False, True, True), (False, False, False)])
def test_bf16_on_a_cpu_only_with_amx_or_avx512_bf16(x86_cpu, amx, avx512_bf16, fast):
    x86_cpu(amx, avx512_bf16)
    assert fast_bf16("cpu") is fast
    assert fastest_dtype("cpu") == ("bfloat16" if fast else "float32")
    assert fastest_precision("cpu") == ("bf16-mixed" if fast else "32-true")


def test_the_gpu_is_asked_about_the_gpu_not_the_cpu(x86_cpu, monkeypatch):
    x86_cpu(True, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert fastest_precision("gpu") == fastest_precision("auto") == "32-true"
    assert fastest_precision("cpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fastest_precision("auto") == "bf16-mixed"  # no GPU: auto is the CPU
    assert not fast_bf16("gpu") and not fast_bf16("mps")


@pytest.mark.parametrize("model", ["smollm2_135m", "gemma3_270m"])
@pytest.mark.parametrize("fast", [True, False])
def test_cpu_recipes_train_in_bf16_only_where_it_is_fast(x86_cpu, model, fast):
    x86_cpu(False, fast)
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", "stage=simcse"])
        chosen = compose("config", overrides=[f"model={model}", "model.dtype=bfloat16", "trainer.precision=bf16-mixed"])
    assert cfg.trainer.precision == ("bf16-mixed" if fast else "32-true")
    assert cfg.encoder.dtype == cfg.model.dtype == ("bfloat16" if fast else "float32")
    assert (chosen.encoder.dtype, chosen.trainer.precision) == ("bfloat16", "bf16-mixed")  # an explicit choice stands
