"""Precision: bf16 only where the hardware multiplies in it, refused with the reason elsewhere."""

from __future__ import annotations

import pytest
import torch

from knowpack.config import LoraSettings
from knowpack.errors import KnowpackError
from knowpack.lm import precision
from knowpack.lm.precision import resolve_dtype, support_from_cpuinfo

CPU = torch.device("cpu")


def test_cpu_flags_decide_bf16_support():
    assert support_from_cpuinfo("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n") == (
        True, "this CPU has avx512_bf16")
    assert support_from_cpuinfo("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")[0]
    supported, why = support_from_cpuinfo("flags : fpu sse avx avx2\n")
    assert not supported and "no bf16 instructions" in why
    assert support_from_cpuinfo("processor : 0\n") is None  # no flags line: ask elsewhere


def test_auto_is_fp32_on_cpu_and_names_are_checked():
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("float32", CPU) == resolve_dtype("fp32", CPU) == torch.float32
    with pytest.raises(KnowpackError, match="unknown dtype 'float8'; use auto, float32, bfloat16 or float16"):
        resolve_dtype("float8", CPU)


@pytest.mark.parametrize("supported", [True, False])
def test_bfloat16_is_refused_where_it_would_be_emulated(monkeypatch, supported):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (supported, "this CPU has no bf16 instructions"))
    if supported:
        assert resolve_dtype("bfloat16", CPU) == resolve_dtype("bf16", CPU) == torch.bfloat16
    else:
        with pytest.raises(KnowpackError, match="model.dtype=bfloat16: this CPU has no bf16 instructions, so bf16 "
                                                "would be emulated .* use model.dtype=float32"):
            resolve_dtype("bfloat16", CPU)


def test_the_cli_refuses_bf16_on_such_a_cpu_in_one_line_before_any_work(monkeypatch, run_cli, tmp_path,
                                                                        tiny_model_dir):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (False, "this CPU has no bf16 instructions"))
    result = run_cli("run", "--preset", "smoke", "--out", str(tmp_path / "run"), f"model.name={tiny_model_dir}",
                     "model.dtype=bfloat16")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no bf16 instructions" in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_bf16_weights_keep_the_lora_weights_in_fp32(tiny_model):
    from knowpack.train import add_lora

    adapted = add_lora(tiny_model.to(torch.bfloat16), LoraSettings(rank=2, target_modules=["down_proj"]), seed=0)
    lora = {p.dtype for name, p in adapted.named_parameters() if "lora_" in name}
    frozen = {p.dtype for name, p in adapted.named_parameters() if "lora_" not in name}
    assert lora == {torch.float32} and frozen == {torch.bfloat16}  # the optimizer only ever sees fp32
    loss = adapted(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for n, p in adapted.named_parameters() if "lora_B" in n)
