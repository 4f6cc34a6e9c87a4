"""What every stage receives: the run's config, its directory, and the model, loaded once when needed.

Each stage folder has a ``stage.py`` whose entry points share one shape, ``run(ctx, upstream) -> key``:
the stage fingerprints its inputs (``upstream`` is the key of the stage before it, so a change anywhere
upstream changes every key after it) and calls `RunContext.step`, which reuses a finished stage with the
same key (from this run directory or one of ``reuse_from``) or computes it and marks it done
(`knowpack.rundir`). The key it returns is the next stage's ``upstream``. `knowpack.pipeline` lists the
stages in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from knowpack.config import RunConfig
from knowpack.facts import Fact, read_facts
from knowpack.rundir import RunDir


@dataclass
class RunContext:
    """The run's state between stages; the model is loaded only when a stage first needs it."""
    config: RunConfig
    run: RunDir
    console: Console
    progress: bool = True
    reuse_from: list[RunDir] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per computed (not reused) stage
    adapter: Path | None = None  # an outside adapter (``eval --adapter``) in place of the run's trained one
    _model: Any = None
    tokenizer: Any = None

    @property
    def model(self):
        """The model as the last stage left it (base, trainable or adapted); loaded on first use."""
        if self._model is None:
            from knowpack.models import load_configured_model

            self._model, self.tokenizer = load_configured_model(self.config.model)
        return self._model

    def use_model(self, model) -> None:
        """Later stages see ``model`` (e.g. the base with an adapter added)."""
        self._model = model

    def forget_model(self) -> None:
        """The next `model` is loaded fresh: training changed the base weights in memory, or merging consumed them."""
        self._model = None

    def adapted_model(self):
        """The base model with the run's adapter (loaded from adapter/ or finetuned/ when training was reused),
        or with `adapter` when one is given."""
        from knowpack.train.lora import load_adapter
        from knowpack.train.stage import trained_dir_name

        if not hasattr(self.model, "disable_adapter"):
            folder = self.adapter or self.run / trained_dir_name(self.config.train)
            self._model = load_adapter(self.model, folder)
            self._model.eval()
        return self._model

    def facts(self) -> list[Fact]:
        return read_facts(self.run / "facts.jsonl")

    def step(self, name: str, key: str, outputs: list[str], compute: Callable[[], None]) -> None:
        """Reuse stage ``name`` when a run directory holds it with ``key``; otherwise compute it and mark it done."""
        if self.run.is_done(name, key):
            self.console.print(f"[dim]✓ {name}: reused from {self.run.path}[/dim]")
            return
        for other in self.reuse_from:
            if self.run.adopt(name, key, other):
                self.console.print(f"[dim]✓ {name}: reused from {other.path}[/dim]")
                return
        start = time.perf_counter()
        self.console.print(f"▶ {name}")
        compute()
        self.timings[name] = time.perf_counter() - start
        self.run.mark_done(name, key, outputs)
        self.console.print(f"[green]✓ {name}[/green] ({self.timings[name]:.1f} s)")


def reuse_dirs(paths: list[Path] | None) -> list[RunDir]:
    """The existing ones of ``paths`` as run directories to adopt finished stages from."""
    return [RunDir(p) for p in paths or [] if Path(p).is_dir()]
