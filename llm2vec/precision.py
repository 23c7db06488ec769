"""bf16 where the hardware multiplies it fast, float32 elsewhere.

bf16 matmuls run several times faster than fp32 on CPUs with AMX or AVX512-BF16 and on GPUs from
Ampere on. A CPU without them (AVX2 only: most laptops, AMD before Zen 4) has no bf16 kernel, and
torch's generic fallback is far *slower* than fp32: 1.4 against 18.4 GFLOP/s for
512 x 512 matmuls on an AVX2 AMD EPYC (2 cores), where SmolLM2 also encodes 3.6x slower in bf16.
The CPU configs ask for `${fastest_precision:cpu}` and `${fastest_dtype:${trainer.accelerator}}`
(resolvers that run.py registers): a recipe runs in bf16 where that is fast, in fp32 where not.
"""

from __future__ import annotations

import platform

import torch


def fast_bf16(accelerator: str = "cpu") -> bool:
    """Whether Lightning's `accelerator` ("cpu", "gpu"/"cuda", or "auto": the GPU when there is one)
    multiplies bf16 faster than fp32. Others (e.g. "mps") get False: fp32 is never the slow choice."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return accelerator in ("cpu", "auto") and cpu_has_fast_bf16()


def cpu_has_fast_bf16() -> bool:
    if platform.machine().lower() in ("x86_64", "amd64"):
        # AVX-512 without its BF16 extension only emulates bf16 (no faster than fp32): not enough.
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    # Arm: oneDNN's bf16 kernels need the BF16 extension (Graviton 3, Apple M2 on), which it checks.
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fastest_dtype(accelerator: str = "cpu") -> str:
    """The weights' dtype for `accelerator`: "bfloat16" where it is fast, else "float32"."""
    return "bfloat16" if fast_bf16(accelerator) else "float32"


def fastest_precision(accelerator: str = "cpu") -> str:
    """Lightning's precision for `accelerator`: "bf16-mixed" where bf16 is fast, else "32-true"."""
    return "bf16-mixed" if fast_bf16(accelerator) else "32-true"
