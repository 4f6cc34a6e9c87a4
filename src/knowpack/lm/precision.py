"""Which floating-point format the model computes in: fp32, or bf16 where the hardware has it.

In:  the requested ``model.dtype`` (auto, float32, bfloat16, float16) and the device.
Out: the torch dtype the weights are loaded in, or a one-line error before any work.

bf16 here means bf16 *weights* (``from_pretrained(dtype=torch.bfloat16)``): every matmul of the
frozen model runs in bf16, while PEFT keeps the LoRA weights — and so the optimizer state — in fp32
(its ``autocast_adapter_dtype``) and knowpack takes every loss, log-softmax and KL in fp32.

bf16 is only fast where the hardware multiplies in it: CUDA GPUs from Ampere on, and x86 CPUs with
AVX512-BF16 or AMX. Elsewhere PyTorch emulates it; measured on a 2-core AMD EPYC with AVX2 only, a
512×512 bf16 matmul ran at 1.2 GFLOP/s against 74 in fp32 — 60× slower. So an explicit bfloat16 on
such a CPU is refused with the reason. ``auto`` stays fp32 on every CPU: measured on a Xeon with
AVX512-BF16 and AMX (`bench/precision.py`, README "Precision"), bf16 kept the category of only 96.5%
of 200 embedded facts, under the 98% a default needs (autocast agreed no better and ran slower).
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

import torch

from knowpack.errors import KnowpackError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the x86 bf16 instructions


def support_from_cpuinfo(text: str) -> tuple[bool, str] | None:
    """(bf16 supported, why) from the text of /proc/cpuinfo; None when it lists no flags."""
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            found = [flag for flag in CPU_BF16_FLAGS if flag in flags]
            if found:
                return True, f"this CPU has {' and '.join(found)}"
            return False, "this CPU has no bf16 instructions (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"
    return None


@lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[bool, str]:
    """(whether this CPU multiplies in bf16, a short reason naming what was found)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = support_from_cpuinfo(cpuinfo.read_text(errors="replace"))
        if found is not None:
            return found
    if platform.machine().lower() in ("arm64", "aarch64"):
        # Apple silicon and recent Arm servers: oneDNN reports bf16 through the same check PyTorch uses.
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return supported, f"oneDNN reports bf16 {'support' if supported else 'unsupported'} on this Arm CPU"
    return False, "bf16 support on this CPU could not be determined"


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` computes in bf16 natively, why)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
        return supported, f"{torch.cuda.get_device_name(device)} {'supports' if supported else 'lacks'} bf16"
    if device.type == "cpu":
        return cpu_bf16_support()
    return False, f"bf16 is not checked on {device.type} devices"


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for ``model.dtype`` on ``device``; refuses bf16 where it would be emulated."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if bf16_support(device)[0] else torch.float32  # fp16 would need loss scaling
        # fp32 on CPU: bf16 moved 3.5% of facts' categories on the embedded model (module docstring).
        return torch.float32
    if dtype not in DTYPES:
        raise KnowpackError(f"model.dtype: unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    resolved = DTYPES[dtype]
    if resolved == torch.bfloat16:
        supported, why = bf16_support(device)
        if not supported:
            raise KnowpackError(f"model.dtype={dtype}: {why}, so bf16 would be emulated and many times slower "
                                "than fp32; use model.dtype=float32 (or auto)")
    return resolved
