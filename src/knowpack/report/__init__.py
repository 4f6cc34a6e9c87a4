"""Report stage: a readable summary of one run.

In:  a run directory with ``metrics.json`` and ``config.yaml``.
Out: ``report.md`` and a self-contained ``report.html`` (no external assets) in the same directory.
"""

from __future__ import annotations

import html
from pathlib import Path

import yaml

from knowpack.probe.categories import CATEGORIES
from knowpack.rundir import RunDir

__all__ = ["render_markdown", "summary_rows", "write_report"]


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    """The headline numbers, shared by the CLI summary table and the report."""
    rows = [("reliability (trained facts)", _fmt(metrics.get("reliability"))),
            ("generalization (unseen paraphrases)", _fmt(metrics.get("generalization"))),
            ("positive shift (held-out)", _fmt(metrics["shift"]["positive"])),
            ("negative shift (held-out)", _fmt(metrics["shift"]["negative"]))]
    for name, after in metrics.get("benchmarks", {}).items():
        base = metrics.get("benchmarks_base", {}).get(name)
        delta = f" ({after - base:+.3f})" if base is not None else ""
        rows.append((f"{name} base → after", f"{_fmt(base)} → {_fmt(after)}{delta}"))
    forgetting = metrics.get("forgetting")
    if forgetting:
        rows.append(("KL to base on held-out text (nats/token)", f"{forgetting['kl_to_base']:.4f}"))
        rows.append(("perplexity base → after", f"{forgetting['perplexity_base']:.2f} → "
                                                f"{forgetting['perplexity_after']:.2f}"))
    shift = metrics.get("token_shift")
    if shift:
        rows.append(("tokens unshifted / marginal / shifted",
                     f"{shift['unshifted']:.2f} / {shift['marginal']:.2f} / {shift['shifted']:.2f}"))
    train = metrics.get("train")
    if train:  # absent when an outside adapter was evaluated (knowpack eval --adapter)
        rows.append(("train tokens/s", f"{train.get('tokens_per_s', 0):.0f}"))
        rows.append(("train seconds", f"{train.get('seconds', 0):.1f}"))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(metrics: dict, config: dict) -> str:
    transitions = metrics["shift"]["transitions"]
    parts = [
        f"# knowpack run report\n\nModel `{config['model']['name']}`, {metrics.get('n_trained_facts')} Unknown "
        f"facts trained, {metrics.get('n_heldout_facts')} held-out facts re-probed.",
        "## Summary\n\n" + _table(["metric", "value"], [list(r) for r in summary_rows(metrics)]),
        "## Reliability by epoch\n\nGreedy answers of the trained facts with the first prompt set after each "
        "epoch.\n\n" + _table(["epoch", "reliability"],
                              [[str(i + 1), _fmt(v)] for i, v in enumerate(metrics.get("reliability_by_epoch", []))]),
        "## Knowledge shift on held-out facts\n\nRows: category before training; columns: after.\n\n"
        + _table(["before \\ after", *CATEGORIES],
                 [[old, *(str(transitions[old][new]) for new in CATEGORIES)] for old in CATEGORIES]),
        "## Answers (held-out facts, greedy)\n\n" + _table(
            ["", "before", "after"],
            [["refusals", _fmt(metrics["answers"]["refusals_before"]), _fmt(metrics["answers"]["refusals_after"])],
             ["unique answers", _fmt(metrics["answers"]["unique_before"]), _fmt(metrics["answers"]["unique_after"])]])
        + "\n\nMost frequent answers after training: "
        + ", ".join(f"{a!r} ×{n}" for a, n in metrics["answers"]["top_after"]),
        "## Training\n\n" + _table(["", "value"], [[k, _fmt(v)] for k, v in metrics.get("train", {}).items()]),
        "## Configuration\n\n```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```",
    ]
    return "\n\n".join(parts) + "\n"


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
          "pre{background:#f5f5f5;padding:1em;overflow:auto}")


def markdown_to_html(text: str, title: str = "knowpack report") -> str:
    """A self-contained HTML page (inline style, no external assets) from the report's Markdown."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(run: RunDir | str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html for a finished run; returns their paths."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    metrics = run.read_json("metrics.json")
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    markdown = render_markdown(metrics, config)
    return run.write_text("report.md", markdown), run.write_text("report.html", markdown_to_html(markdown))
