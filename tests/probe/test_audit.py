import os
import subprocess
import sys

import pandas as pd
import pytest

from knowpack.errors import KnowpackError
from knowpack.probe.audit import read_qa_dataset

LINES = [
    '{"question": "What is the capital of France?", "answer": "Paris", "aliases": ["Paname"]}',
    '{"messages": [{"role": "user", "content": "Currency of Japan?"}, {"role": "assistant", "content": "The yen"}]}',
    '{"prompt": "Who wrote Hamlet?", "completion": "Answer: Shakespeare"}',
    '{"instruction": "Capital of Chad?", "output": "N\'Djamena"}',
]


def test_reads_every_supported_shape(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(LINES) + "\n\n")
    facts = read_qa_dataset(path)
    assert [f.question for f in facts] == ["What is the capital of France?", "Currency of Japan?",
                                           "Who wrote Hamlet?", "Capital of Chad?"]
    assert facts[0].aliases == ["Paris", "Paname"]
    assert facts[1].aliases == ["The yen", "yen"]
    assert facts[2].answer == "Shakespeare"
    assert all(f.bucket is None and f.relation == "qa" for f in facts)


@pytest.mark.parametrize("line, message", [
    ("{not json", "sft.jsonl:2: not valid JSON"),
    ('{"text": "no pair"}', "sft.jsonl:2: no question/answer pair"),
    ('{"question": " ", "answer": "x"}', "sft.jsonl:2: empty question or answer"),
])
def test_bad_lines_are_named(tmp_path, line, message):
    path = tmp_path / "sft.jsonl"
    path.write_text(LINES[0] + "\n" + line + "\n")
    with pytest.raises(KnowpackError, match=message):
        read_qa_dataset(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(KnowpackError, match="no question/answer pairs"):
        read_qa_dataset(tmp_path / "empty.jsonl")
    with pytest.raises(KnowpackError, match="no such file"):
        read_qa_dataset(tmp_path / "missing.jsonl")


def test_audit_from_the_cli(tiny_model_dir, tmp_path):
    (tmp_path / "sft.jsonl").write_text("\n".join(LINES) + "\n")
    result = subprocess.run([sys.executable, "-m", "knowpack", "probe", "--data", "sft.jsonl", "--out", "audit",
                             "--quiet", f"model.name={tiny_model_dir}", "probe.num_prompts=2", "probe.shots=1",
                             "probe.max_new_tokens=3"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Unknown: 4 (100.0%)" in result.stderr  # a random-weight model knows none of them
    table = pd.read_parquet(tmp_path / "audit" / "audit_categories.parquet")
    assert table["question"].tolist()[0] == "What is the capital of France?"
    assert len(pd.read_parquet(tmp_path / "audit" / "audit_probe.parquet")) == 4 * 2
