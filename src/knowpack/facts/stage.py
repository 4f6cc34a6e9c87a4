"""The facts stage of a run: ``facts.jsonl`` from the configured source (`build_facts`).

In:  ``ctx.config.facts``; a user's input files are keyed by size and modification time as well as path.
Out: ``facts.jsonl`` in the run directory.
"""

from __future__ import annotations

from pathlib import Path

from knowpack.context import RunContext
from knowpack.facts import build_facts, facts_to_jsonl
from knowpack.rundir import file_stamp, fingerprint


def run(ctx: RunContext, upstream: str = "") -> str:
    settings = ctx.config.facts
    inputs = [settings.path, *settings.name_files]
    # A user's input files may change under the same path: their size and mtime are part of the key.
    stamp = [file_stamp(Path(p)) for p in inputs if p and Path(p).is_file()]
    key = fingerprint("facts", settings.model_dump(), stamp or None)
    ctx.step("facts", key, ["facts.jsonl"],
             lambda: ctx.run.write_text("facts.jsonl", facts_to_jsonl(build_facts(settings, progress=ctx.progress))))
    return key
