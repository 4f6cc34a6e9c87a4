"""The report stage of a run.  In: ``metrics.json``, ``config.yaml``.  Out: ``report.md``, ``report.html``."""

from __future__ import annotations

from knowpack.context import RunContext
from knowpack.report import write_report
from knowpack.rundir import fingerprint


def run(ctx: RunContext, upstream: str) -> str:
    key = fingerprint("report", upstream)
    ctx.step("report", key, ["report.md", "report.html"], lambda: write_report(ctx.run))
    return key
