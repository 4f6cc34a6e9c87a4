"""Adapters trained one on top of the other (strategy ``stack``), written as one LoRA on the original base.

In:  PEFT LoRA adapter folders, round 1 first; round k's adapter was trained on the base with
     rounds 1..k-1 merged in.
Out: one PEFT adapter folder whose update is their sum, ΔW = Σ_k s_k B_k A_k (s_k each adapter's
     scaling): A = [A_1; …; A_n] stacked along the rank, B = [s_1 B_1, …, s_n B_n], rank Σ r_k and
     scaling 1 (lora_alpha = rank, no rsLoRA).

A LoRA update does not depend on the weights under it, so stacking on merged weights and adding
the updates on the original base give the same model; that is why DoRA, whose update depends on
the weights, is refused with ``stack`` (`knowpack.continual.plan.check_rounds`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from knowpack.errors import KnowpackError


def _scaling(config: dict) -> float:
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise KnowpackError("continual.strategy=stack: adapters with per-module ranks or alphas cannot be stacked")
    rank, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def stack_adapters(folders: Sequence[Path], out: Path) -> None:
    """Write into ``out`` (an existing, empty folder) the sum of the adapters in ``folders``."""
    configs = [json.loads((f / "adapter_config.json").read_text(encoding="utf-8")) for f in folders]
    weights = [load_file(f / "adapter_model.safetensors") for f in folders]
    if any(set(w) != set(weights[0]) for w in weights):
        raise KnowpackError("continual.strategy=stack: the rounds' adapters adapt different modules; keep "
                            "lora.target_modules the same for every round")
    stacked: dict[str, torch.Tensor] = {}
    for key in weights[0]:
        if ".lora_A." in key:  # [r_k, in] -> [Σ r_k, in]
            stacked[key] = torch.cat([w[key] for w in weights], dim=0).contiguous()
        elif ".lora_B." in key:  # [out, r_k] -> [out, Σ r_k], each scaled so that the sum needs scaling 1
            stacked[key] = torch.cat([_scaling(c) * w[key] for c, w in zip(configs, weights)], dim=1).contiguous()
        else:
            raise KnowpackError(f"continual.strategy=stack: cannot stack adapter weight {key} (LoRA A/B matrices only)")
    rank = sum(c["r"] for c in configs)
    save_file(stacked, out / "adapter_model.safetensors")
    config = {**configs[0], "r": rank, "lora_alpha": float(rank), "use_rslora": False}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
