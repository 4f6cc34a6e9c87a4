"""Optional experiment tracking of the train loop: TensorBoard or Weights & Biases.

In:  ``train.report_to`` (none, tensorboard, wandb), a log folder, the run's settings.
Out: a `Tracker` whose ``log(step, values)`` writes scalars (loss, ce, reg, lr, grad_norm per step;
     epoch_loss, epoch_score per epoch). Backends are imported only when asked for; one that is
     asked for but not installed is a one-line error before any work.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from knowpack.errors import KnowpackError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def check_tracker_installed(report_to: str) -> None:
    package = PACKAGES.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise KnowpackError(f"train.report_to={report_to}: the package {package} is not installed; "
                            f"pip install {package} (or set train.report_to=none)")


class _TensorBoard:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, log_dir: Path, settings: dict[str, Any]):
        import os

        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "knowpack"), dir=str(log_dir),
                              config=settings, name=log_dir.parent.name or None)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({f"train/{name}": value for name, value in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class _Nothing:
    def log(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def open_tracker(report_to: str, log_dir: Path | None, settings: dict[str, Any]) -> Tracker:
    """The tracker for ``report_to``; logs go to ``log_dir`` (default ./knowpack-logs)."""
    check_tracker_installed(report_to)
    folder = Path(log_dir or "knowpack-logs")
    if report_to == "tensorboard":
        return _TensorBoard(folder)
    if report_to == "wandb":
        return _Wandb(folder, settings)
    return _Nothing()
