"""Audit mode: label any question/answer dataset with knowledge categories.

In:  a JSONL file of QA pairs (one per line) in any of these shapes:
       {"question": …, "answer": …, "aliases": [...]}       (aliases optional)
       {"messages": [{"role": "user", …}, {"role": "assistant", …}]}   (last user/assistant pair)
       {"prompt": …, "completion": …}  or  {"instruction": …, "output": …}
     a model and a `ProbeConfig`.
Out: `Fact`s to probe (`read_qa_dataset`); `run_audit` (``knowpack probe --data FILE``) probes them in
     a run directory as the probe stage would and writes probe rows and categories per pair
     (``audit_probe.parquet``, ``audit_categories.parquet``, with question and answer): how much of a
     fine-tuning set is new to the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from rich.console import Console

from knowpack.config import RunConfig, config_to_yaml
from knowpack.errors import KnowpackError
from knowpack.jsonio import read_json_lines
from knowpack.facts.schema import Fact
from knowpack.probe.judge import clean_answer
from knowpack.rundir import RunDir, file_stamp, fingerprint

_FIELD_PAIRS = (("question", "answer"), ("prompt", "completion"), ("instruction", "output"))


def _pair(record: dict) -> tuple[str, str] | None:
    for q_key, a_key in _FIELD_PAIRS:
        if isinstance(record.get(q_key), str) and isinstance(record.get(a_key), str):
            return record[q_key], record[a_key]
    messages = record.get("messages")
    if isinstance(messages, list):
        question = answer = None
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user":
                question, answer = message.get("content"), None
            elif isinstance(message, dict) and message.get("role") == "assistant" and question:
                answer = message.get("content")
        if isinstance(question, str) and isinstance(answer, str):
            return question, answer
    return None


def read_qa_dataset(path: str | Path) -> list[Fact]:
    """QA pairs as `Fact`s (relation ``qa``, no popularity bucket); bad lines named by file:line."""
    path = Path(path)
    if not path.is_file():
        raise KnowpackError(f"{path}: no such file; give a JSONL file of question/answer pairs")
    facts: list[Fact] = []
    for number, record in read_json_lines(path):
        pair = _pair(record) if isinstance(record, dict) else None
        if pair is None:
            raise KnowpackError(f"{path}:{number}: no question/answer pair; use question+answer, prompt+completion, "
                                "instruction+output or chat messages")
        question, raw_answer = (text.strip() for text in pair)
        answer = clean_answer(raw_answer) or raw_answer
        if not question or not answer:
            raise KnowpackError(f"{path}:{number}: empty question or answer")
        # "The yen" should accept "Yen": add the answer without its leading article.
        bare = re.sub(r"^(?:the|a|an)\s+", "", answer, flags=re.IGNORECASE)
        extra = record.get("aliases", [])
        extra = [extra] if isinstance(extra, str) else extra  # one alias given as text, not a list
        if not isinstance(extra, list):
            raise KnowpackError(f"{path}:{number}: aliases must be a list of strings")
        aliases = [answer, bare, *(a.strip() for a in extra if isinstance(a, str) and a.strip())]
        facts.append(Fact(fact_id=f"line-{number}", subject="", relation="qa", object=answer, question=question,
                          answer=answer, aliases=list(dict.fromkeys(aliases)), bucket=None,
                          source=f"audit:{path.name}"))
    if not facts:
        raise KnowpackError(f"{path}: no question/answer pairs in the file")
    return facts



def run_audit(config: RunConfig, data: str | Path, out: str | Path, *, progress: bool = True,
              console: Console | None = None) -> Path:
    """Label every QA pair of ``data`` with its knowledge category under ``config.model``; returns ``out``.

    One stage (``audit``), keyed by the model, the probe settings and the file's content stamp, so the
    same command again reuses it and a changed file or setting probes again.
    """
    from knowpack.context import RunContext
    from knowpack.models import check_model_settings
    from knowpack.probe import categorize, probe_facts

    data = Path(data)
    facts = read_qa_dataset(data)  # bad lines fail here, before the model loads
    check_model_settings(config.model)
    ctx = RunContext(config, RunDir(out), console or Console(stderr=True), progress)
    stamp = [str(data.resolve()), *file_stamp(data)]
    key = fingerprint("audit", stamp, config.model.model_dump(), config.probe.model_dump())

    def compute():
        rows = probe_facts(ctx.model, ctx.tokenizer, facts, config.probe, progress=progress,
                           description=f"auditing {data.name}")
        categories = categorize(rows).merge(
            pd.DataFrame({"fact_id": [f.fact_id for f in facts], "question": [f.question for f in facts],
                          "answer": [f.answer for f in facts]}), on="fact_id")
        ctx.run.write_table("audit_probe.parquet", rows)
        ctx.run.write_table("audit_categories.parquet", categories)

    with ctx.run.lock():
        ctx.run.write_text("config.yaml", config_to_yaml(config))
        ctx.step("audit", key, ["audit_probe.parquet", "audit_categories.parquet"], compute)
    return ctx.run.path
