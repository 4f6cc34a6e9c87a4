"""Example answers side by side in the sweep report: which runs, which facts, in which order."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from knowpack.report.sweep_answers import MAX_CHARS, answers_side_by_side

FACTS = {f"f{i}": (f"Question {i}?", f"gold{i}") for i in range(6)}


def _run(sweep_dir: Path, name: str, trained: list[str], before: dict[str, str], after: dict[str, str]) -> str:
    run_dir = sweep_dir / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "facts.jsonl").write_text("".join(
        json.dumps({"fact_id": f, "question": q, "answer": a, "aliases": [a]}) + "\n" for f, (q, a) in FACTS.items()))
    (run_dir / "trained_facts.json").write_text(json.dumps(trained))
    for stage, answers in [("before", before), ("after", after)]:
        rows = [{"fact_id": f, "prompt_id": p, "sample": 0, "answer": answer if p == 0 else "other prompt",
                 "correct": answer == FACTS[f][1], "refusal": False} for f, answer in answers.items() for p in (0, 1)]
        pd.DataFrame(rows).to_parquet(run_dir / f"probe_{stage}.parquet")
    return f"runs/{name}"


def _done(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["configuration", "config.mixture.seed", "run_dir"])


def test_held_out_facts_that_differ_most_come_first_and_correct_answers_are_marked(tmp_path):
    base = {f: "base answer" for f in FACTS} | {"f3": "gold3"}
    lora = _run(tmp_path, "lora", ["f0", "f1"], base,
                {"f0": "gold0", "f1": "gold1", "f2": "same", "f3": "gold3", "f4": "x" * 100, "f5": "same"})
    full = _run(tmp_path, "full", ["f0", "f1"], base,
                {"f0": "gold0", "f1": "wrong", "f2": "same", "f3": "copied word", "f4": "y", "f5": "same"})
    section = answers_side_by_side(_done([("lora", 1, lora), ("full", 1, full)]), tmp_path)
    assert section is not None and section.id == "examples"
    heldout, trained = section.text.split("Trained facts")
    lines = [line for line in heldout.splitlines() if line.startswith("| Question")]
    # f4 gets three distinct answers (base, lora, full), the others two: the spread orders the rows, then the id
    assert [line.split(" | ")[0] for line in lines] == ["| Question 4?", "| Question 2?", "| Question 3?", "| Question 5?"]
    assert "| Question 3? | gold3 | gold3 ✓ | gold3 ✓ | copied word |" in heldout
    assert "x" * (MAX_CHARS - 1) + "…" in heldout and "x" * MAX_CHARS not in heldout
    assert "| Question 1? | gold1 | base answer | gold1 ✓ | wrong |" in trained
    assert "other prompt" not in section.text  # the first prompt set only


def test_runs_of_the_first_seed_sit_side_by_side_and_runs_missing_files_are_passed_over(tmp_path):
    answers = {f: "a" for f in FACTS}
    first = _run(tmp_path, "a-seed1", ["f0"], answers, answers)
    other_seed = _run(tmp_path, "b-seed2", ["f1"], answers, answers)
    same_seed = _run(tmp_path, "b-seed1", ["f0"], answers, answers)
    broken = _run(tmp_path, "c-seed1", ["f0"], answers, answers)
    (tmp_path / broken / "probe_after.parquet").unlink()
    done = _done([("A", 1, first), ("B", 2, other_seed), ("B", 1, same_seed), ("C", 1, broken)])
    section = answers_side_by_side(done, tmp_path)
    assert "(A: `a-seed1`, B: `b-seed1`);" in section.text  # B's seed-1 run, and no C
    assert answers_side_by_side(done[done["configuration"] != "B"], tmp_path) is None  # one configuration left


def test_no_facts_in_common_says_so(tmp_path):
    one = _run(tmp_path, "one", list(FACTS), {f: "a" for f in FACTS}, {f: "a" for f in FACTS})
    two = _run(tmp_path, "two", [], {f: "a" for f in FACTS}, {f: "b" for f in FACTS})
    section = answers_side_by_side(_done([("one", 1, one), ("two", 1, two)]), tmp_path)
    assert section.text.count("none in common") == 2  # every fact was trained by one run and held out by the other
