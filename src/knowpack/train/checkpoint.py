"""Per-epoch training checkpoints, so a killed or stopped train stage resumes from its last epoch.

In:  the model's trainable tensors, the optimizer, the LR schedule, the batch-order RNG, torch's RNG
     and the progress so far (`TrainStats` fields), after each finished epoch.
Out: ``<folder>/epoch-N/`` with ``trainable.safetensors``, ``state.pt`` (optimizer, schedule, torch
     RNG; loaded with ``weights_only=True``) and ``meta.json`` (epochs done, stats, Python RNG, key).
     Written atomically (staging folder, renamed), only the latest kept.

A checkpoint carries the fingerprint (``key``) of everything that decides training; one from other
settings is never resumed from, so a resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from knowpack.rundir import atomic_dir


@dataclass
class Checkpoints:
    folder: Path
    key: str  # fingerprint of the data, model and settings that decide training

    def _epochs(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(p.name.split("-")[1]), p) for p in self.folder.glob("epoch-*")
                 if p.is_dir() and p.name.split("-")[1].isdigit() and (p / "meta.json").is_file()]
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        """(epochs done, folder) of the newest checkpoint made with this key, if any."""
        for epochs_done, path in reversed(self._epochs()):
            try:
                if json.loads((path / "meta.json").read_text(encoding="utf-8")).get("key") == self.key:
                    return epochs_done, path
            except (OSError, json.JSONDecodeError):
                continue
        return None

    def save(self, epochs_done: int, model, optimizer, scheduler, rng: random.Random, stats: dict[str, Any]) -> None:
        trainable = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        version, internal, gauss = rng.getstate()
        meta = {"key": self.key, "epochs_done": epochs_done, "stats": stats,
                "python_rng": [version, list(internal), gauss]}
        with atomic_dir(self.folder / f"epoch-{epochs_done}") as staging:
            save_file(trainable, staging / "trainable.safetensors")
            torch.save(state, staging / "state.pt")
            (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        for other_epochs, path in self._epochs():  # older ones, and any from other settings
            if other_epochs != epochs_done:
                shutil.rmtree(path, ignore_errors=True)

    def restore(self, model, optimizer, scheduler, rng: random.Random) -> tuple[int, dict[str, Any]] | None:
        """Load the latest checkpoint into the given objects; (epochs done, stats) or None."""
        found = self.latest()
        if found is None:
            return None
        epochs_done, path = found
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in load_file(path / "trainable.safetensors").items():
                params[name].copy_(value)
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        version, internal, gauss = meta["python_rng"]
        rng.setstate((version, tuple(internal), gauss))
        return epochs_done, meta["stats"]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
