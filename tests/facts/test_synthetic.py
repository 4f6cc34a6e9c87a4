"""Made-up facts: seeded, unique, unguessable, and valid facts."""

from __future__ import annotations

import pytest

from knowpack.errors import KnowpackError
from knowpack.facts.popularity import normalize_alias
from knowpack.facts.synthetic import SYNTHETIC_RELATIONS, _real_names, synthetic_facts


def test_seeded_and_balanced():
    facts = synthetic_facts(120, seed=5)
    assert synthetic_facts(120, seed=5) == facts
    assert synthetic_facts(120, seed=6) != facts
    assert len(facts) == 120
    assert {f.relation for f in facts} == set(SYNTHETIC_RELATIONS)
    assert {f.bucket for f in facts} == {"head", "torso", "tail"}
    assert all(f.source == "synthetic" and len(f.paraphrases) == 2 for f in facts)


def test_names_are_fresh_and_answers_not_in_questions():
    facts = synthetic_facts(600, seed=0)
    real = _real_names()
    names = [normalize_alias(n) for f in facts for n in (f.subject, f.answer)]
    assert len(set(names)) == len(names)  # no entity reused, so no answer can be inferred from another fact
    assert not set(names) & real
    for fact in facts:
        assert all(alias.lower() not in q.lower() for alias in fact.aliases for q in (fact.question, *fact.paraphrases))


def test_bad_requests():
    with pytest.raises(KnowpackError, match="count must be between 1"):
        synthetic_facts(0)
    with pytest.raises(KnowpackError, match="unknown relation 'capital'"):
        synthetic_facts(10, relations=["capital"])


def test_cli_synthetic_with_balanced_sampling(tmp_path, run_cli):
    out = tmp_path / "facts.jsonl"
    result = run_cli("facts", "--source", "synthetic", "--count", "300", "--per-bucket", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    from collections import Counter

    from knowpack.facts import read_facts

    available = Counter((f.relation, f.bucket) for f in synthetic_facts(300, seed=0))
    written = Counter((f.relation, f.bucket) for f in read_facts(out))
    assert written == {group: min(3, size) for group, size in available.items()}
    stats = run_cli("facts", "stats", str(out))
    assert f"{sum(written.values())} facts" in stats.stdout and "synthetic_river" in stats.stdout
    bad = run_cli("facts", "--source", "synthetic", "--per-bucket", "0", "--out", str(tmp_path / "x.jsonl"))
    assert bad.returncode == 2 and "facts --per-bucket: Input should be greater than or equal to 1" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
