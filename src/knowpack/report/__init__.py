"""Report stage: a readable summary of one run or of a whole sweep.

In:  a run directory (``metrics.json``, ``config.yaml``) or a sweep directory (``results.parquet`` and
     ``runs/*/``, see `knowpack.sweep`).
Out: ``report.md`` and a self-contained ``report.html`` (figures as embedded PNG, inline style, no
     external asset) in that directory. A run's report has a section for every part of its metrics
     (`knowpack.report.run`); a sweep's report aggregates over seeds and shows the fitted laws
     (`knowpack.report.sweep`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from knowpack.artifacts import Metrics, as_metrics, read_artifact
from knowpack.errors import KnowpackError
from knowpack.report.page import render_html, render_markdown_page
from knowpack.report.run import run_sections, summary_rows
from knowpack.rundir import RunDir

__all__ = ["render_markdown", "summary_rows", "write_any_report", "write_report", "write_sweep_report"]


def _run_intro(metrics: Metrics, config: dict) -> str:
    if metrics.adapter is not None:
        return f"Adapter `{metrics.adapter}` on model `{config['model']['name']}`, {metrics.n_heldout_facts} facts probed."
    return (f"Model `{config['model']['name']}`, {metrics.n_trained_facts} Unknown facts trained, "
            f"{metrics.n_heldout_facts} held-out facts re-probed. Figures are in report.html.")


def render_markdown(metrics: Metrics | dict, config: dict, run_dir: Path | None = None) -> str:
    """The run report as Markdown (tables; figures are named and live in report.html)."""
    metrics = as_metrics(metrics)
    return render_markdown_page("knowpack run report", _run_intro(metrics, config), run_sections(metrics, config, run_dir))


def write_report(run: RunDir | str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html for a finished run; returns their paths."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    metrics = read_artifact(run / "metrics.json", Metrics)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    sections = run_sections(metrics, config, run.path)
    intro = _run_intro(metrics, config)
    return (run.write_text("report.md", render_markdown_page("knowpack run report", intro, sections)),
            run.write_text("report.html", render_html("knowpack run report", intro, sections)))


def write_sweep_report(sweep_dir: str | Path, target: float = 0.95) -> tuple[Path, Path]:
    """Write report.md and report.html for a sweep directory; returns their paths."""
    from knowpack.report.sweep import sweep_sections
    from knowpack.sweep.results import load_results

    table, _ = load_results(sweep_dir)
    run = RunDir(sweep_dir)
    intro, sections = sweep_sections(table, Path(sweep_dir), target)
    return (run.write_text("report.md", render_markdown_page("knowpack sweep report", intro, sections)),
            run.write_text("report.html", render_html("knowpack sweep report", intro, sections)))


def write_any_report(path: str | Path) -> tuple[Path, Path]:
    """A run directory (has metrics.json) or a sweep directory (has results.parquet or runs/)."""
    path = Path(path)
    if (path / "metrics.json").is_file():
        return write_report(path)
    if (path / "results.parquet").is_file() or (path / "sweep.json").is_file():
        return write_sweep_report(path)
    if (path / "config.yaml").is_file():
        raise KnowpackError(f"{path}: no metrics.json; finish the run first (knowpack run --out {path})")
    raise KnowpackError(f"{path}: no metrics.json and no results.parquet; give a finished run directory or a "
                        "sweep directory")
