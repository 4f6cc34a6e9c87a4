"""LLM paraphrases: cleaning, the filter, sampling, the cache, and one run of the real embedded model."""

from __future__ import annotations

import json
import time

import pytest
import torch

from knowpack.errors import KnowpackError, KnowpackWarning
from knowpack.facts import paraphrase as pp
from knowpack.facts.paraphrase import (
    add_llm_paraphrases,
    check_candidate,
    clean_candidate,
    filter_candidates,
)
from knowpack.facts.popularity import normalize_alias
from knowpack.facts.schema import Fact, make_fact_id


def make_fact(subject="Ruritania", answer="Strelsau", aliases=("Strelsau", "Strelzau"), question=None,
              paraphrases=()):
    question = question or f"What is the capital of {subject}?"
    return Fact(fact_id=make_fact_id(subject, "capital", answer), subject=subject, relation="capital",
                object=answer, question=question, answer=answer, aliases=list(aliases), bucket="tail",
                source="test", paraphrases=list(paraphrases))


def taken(fact):
    return {normalize_alias(q) for q in (fact.question, *fact.paraphrases)}


# --- cleaning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ("Rephrased question: Which city is Ruritania's capital?", "Which city is Ruritania's capital?"),
    ("Question: Which city is Ruritania's capital?", "Which city is Ruritania's capital?"),
    ('"Which city is Ruritania\'s capital?"', "Which city is Ruritania's capital?"),
    ("**Rephrased question:** \u201cWhich city?\u201d\nMore text.", "Which city?"),
    ("Sure! Here it is:\n\n1. Which   city is\tthe capital?", "Which city is the capital?"),
    ("Ruritania is in Europe. Question: Where is Ruritania?", "Where is Ruritania?"),
    ("Let's rephrase it: Where is Ruritania?", "Where is Ruritania?"),
    ("Where is Ruritania: north or south?", "Where is Ruritania: north or south?"),
    ("\n\n  \n", ""),
])
def test_clean_candidate(reply, expected):
    assert clean_candidate(reply) == expected


# --- the filter -------------------------------------------------------------------------------

def test_check_candidate_accepts_a_good_paraphrase():
    fact = make_fact()
    assert check_candidate("Which city serves as the capital of Ruritania?", fact, taken(fact)) is None


@pytest.mark.parametrize("candidate, reason", [
    ("", pp.EMPTY),
    ("Why?", pp.TOO_SHORT),
    ("Which city of Ruritania " + "x" * 300 + "?", pp.TOO_LONG),
    ("Which city is the capital of Ruritania", pp.NO_QUESTION_MARK),
    ("The capital of Ruritania is a city.", pp.NO_QUESTION_MARK),
    ("Is Strelsau the capital of Ruritania?", pp.LEAKS_ANSWER),
    ("Is STRELZAU the capital of Ruritania?", pp.LEAKS_ANSWER),  # an alias, any case
    ("Is Strel-zau the capital of Ruritania?", pp.LEAKS_ANSWER),  # normalized whole-word match
    ("Which city is the capital of Graustark?", pp.NO_SUBJECT),
    ("Which city is the capital of Ruritanias?", pp.NO_SUBJECT),  # whole words only
    ("what is the capital of RURITANIA ?", pp.DUPLICATE),  # the question itself, normalized
    ("Which city is the capital of Ruritania?", pp.DUPLICATE),  # an existing paraphrase
    ("Which river flows through Vienna, capital of Ruritania?", pp.COPIES_EXAMPLE),
])
def test_check_candidate_rejects(candidate, reason):
    fact = make_fact(aliases=("Strelsau", "Strel zau"), paraphrases=["Which city is the capital of Ruritania?"])
    if reason == pp.LEAKS_ANSWER and "STRELZAU" in candidate:
        fact = make_fact(aliases=("Strelsau", "Strelzau"))
    assert check_candidate(candidate, fact, taken(fact)) == reason


def test_possessive_subjects():
    fact = make_fact("Saint George's", "Grenada", ("Grenada",), question="In which country is Saint George's?")
    assert check_candidate("Which country is Saint George's in?", fact, taken(fact)) is None
    fact = make_fact()
    assert check_candidate("What is Ruritania\u2019s capital city?", fact, taken(fact)) is None


def test_subject_rule_skipped_when_the_question_lacks_the_subject():
    # QA data whose subject falls back to the question itself.
    question = "Who painted the ceiling of the Sistine Chapel?"
    fact = make_fact(subject=question, answer="Michelangelo", aliases=("Michelangelo",), question=question)
    assert check_candidate("Which artist painted the Sistine Chapel ceiling?", fact, taken(fact)) is None


def test_filter_candidates_dedups_among_accepted_and_stops_at_the_limit():
    fact = make_fact()
    replies = ["Rephrased question: Which city is the capital of Ruritania?",
               "which city is the capital of ruritania?",  # duplicate of the one just accepted
               "Strelsau is the capital of Ruritania.",
               "What city serves as Ruritania's capital?",
               "Where does Ruritania have its seat of government?"]
    accepted, rejected = filter_candidates(fact, replies, limit=2)
    assert accepted == ["Which city is the capital of Ruritania?", "What city serves as Ruritania's capital?"]
    assert [reason for _, reason in rejected] == [pp.DUPLICATE, pp.NO_QUESTION_MARK]


def test_prompt_uses_the_chat_template(smollm2_tokenizer):
    prompt = pp.build_prompt("What is the capital of Ruritania?", smollm2_tokenizer)
    assert prompt.startswith("<|im_start|>system\n" + pp.SYSTEM_PROMPT)
    assert prompt.rstrip().endswith("Question: What is the capital of Ruritania?<|im_end|>\n<|im_start|>assistant")
    assert pp.INSTRUCTION in prompt


def test_prompt_without_chat_template_is_plain_text():
    class Plain:
        chat_template = None

    prompt = pp.build_prompt("What is the capital of Ruritania?", Plain())
    assert prompt.endswith("Question: What is the capital of Ruritania?\nRephrased question:")


# --- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"per_fact": 0}, {"per_fact": -2}, {"temperature": 0.0},
                                    {"max_new_tokens": 0}, {"batch_size": 0}])
def test_bad_settings_are_user_errors(kwargs, tmp_path):
    with pytest.raises(KnowpackError) as err:
        add_llm_paraphrases([make_fact()], None, None, cache_dir=tmp_path, model_id="m", **kwargs)
    assert "\n" not in str(err.value)


# --- sampling with a tiny random model ----------------------------------------------------------

def test_sampling_is_reproducible(tiny_model, smollm2_tokenizer):
    questions = ["What is the capital of Ruritania?", "Who founded Graustark?"]
    kwargs = {"n": 3, "temperature": 0.9, "max_new_tokens": 6}
    torch.manual_seed(123)
    before = torch.rand(1)
    a = pp.sample_candidates(tiny_model, smollm2_tokenizer, questions, seed=7, **kwargs)
    b = pp.sample_candidates(tiny_model, smollm2_tokenizer, questions, seed=7, **kwargs)
    c = pp.sample_candidates(tiny_model, smollm2_tokenizer, questions, seed=8, **kwargs)
    assert a == b != c
    assert [len(row) for row in a] == [3, 3]
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG state is left alone


def test_cache_reuse_with_tiny_model(tiny_model, smollm2_tokenizer, tmp_path, monkeypatch):
    facts = [make_fact(), make_fact("Graustark", "Edelweiss", ("Edelweiss",)), make_fact()]  # one repeat
    calls = []
    real_generate = tiny_model.generate
    monkeypatch.setattr(tiny_model, "generate", lambda **kw: calls.append(kw) or real_generate(**kw))
    kwargs = {"per_fact": 2, "seed": 3, "max_new_tokens": 6, "batch_size": 4, "cache_dir": tmp_path,
              "model_id": "tiny"}
    first = add_llm_paraphrases(facts, tiny_model, smollm2_tokenizer, **kwargs)
    assert len(calls) == 2  # 4 // (2 * 2) = 1 fact per batch; the repeated fact is sampled once
    assert calls[0]["num_return_sequences"] == 4 and calls[0]["top_p"] == pp.TOP_P
    [path] = tmp_path.glob("*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["question"] for line in lines] == [facts[0].question, facts[1].question]
    assert all(line["candidates"] == 4 for line in lines)
    second = add_llm_paraphrases(facts, tiny_model, smollm2_tokenizer, **kwargs)
    assert len(calls) == 2  # nothing generated again
    assert second == first
    for fact, new in zip(facts, first):
        assert new.paraphrases[:len(fact.paraphrases)] == fact.paraphrases
        assert new.fact_id == fact.fact_id
    # Another seed is another cache file.
    add_llm_paraphrases(facts[:1], tiny_model, smollm2_tokenizer, **{**kwargs, "seed": 4})
    assert len(calls) == 3 and len(list(tmp_path.glob("*.jsonl"))) == 2


# --- the whole stage with scripted replies ------------------------------------------------------

def scripted(tokenizer, replies):
    """A stand-in for ``model.generate`` returning, per prompt, the scripted replies of its subject."""
    calls = []

    def generate(input_ids, attention_mask, num_return_sequences, pad_token_id, **kwargs):
        rows = []
        for prompt_ids in input_ids:
            question = tokenizer.decode(prompt_ids, skip_special_tokens=True).rsplit("Question:", 1)[1]
            calls.append(question.split("?")[0].strip())
            subject = next(s for s in replies if s in question)
            for text in replies[subject][:num_return_sequences]:
                rows.append((prompt_ids.tolist(), tokenizer(text, add_special_tokens=False)["input_ids"]))
        width = max(len(r) for _, r in rows)
        return torch.tensor([p + r + [tokenizer.eos_token_id] * (width - len(r)) for p, r in rows])

    return generate, calls


class ScriptedModel:
    device = torch.device("cpu")
    name_or_path = ""

    def __init__(self, generate):
        self.generate = generate


REPLIES = {
    "Ruritania": ["Rephrased question: Which city is the capital of Ruritania?",
                  "Strelsau is the capital.", "What city serves as Ruritania's capital?",
                  "Where is Ruritania's seat of government?"],
    "Graustark": ["The capital of Graustark is Edelweiss.", "Which city governs Graustark?",
                  "Which city governs Graustark?", "Which town is Graustark's capital?"],
    "Freedonia": ["What is the capital of Freedonia?", "Why?", "Which city leads Sylvania?", "Hello there, friend."],
}


def three_facts():
    return [make_fact(), make_fact("Graustark", "Edelweiss", ("Edelweiss",)),
            make_fact("Freedonia", "Fredville", ("Fredville",), paraphrases=["Name the capital of Freedonia."])]


def test_accepted_paraphrases_are_appended_and_cached(smollm2_tokenizer, tmp_path):
    generate, _ = scripted(smollm2_tokenizer, REPLIES)
    facts = three_facts()
    out = add_llm_paraphrases(facts, ScriptedModel(generate), smollm2_tokenizer, per_fact=2,
                              cache_dir=tmp_path, model_id="scripted")
    assert out[0].paraphrases == ["Which city is the capital of Ruritania?", "What city serves as Ruritania's capital?"]
    assert out[1].paraphrases == ["Which city governs Graustark?", "Which town is Graustark's capital?"]
    assert out[2].paraphrases == ["Name the capital of Freedonia."]  # nothing accepted, nothing padded
    assert facts[0].paraphrases == []  # inputs untouched
    [path] = tmp_path.glob("*.jsonl")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    reasons = {e["question"]: [r for _, r in e["rejected"]] for e in entries}
    assert reasons[facts[2].question] == [pp.DUPLICATE, pp.TOO_SHORT, pp.NO_SUBJECT, pp.NO_QUESTION_MARK]
    assert reasons[facts[1].question] == [pp.NO_QUESTION_MARK, pp.DUPLICATE]


def test_interrupted_run_resumes_and_a_corrupt_tail_is_ignored(smollm2_tokenizer, tmp_path):
    generate, calls = scripted(smollm2_tokenizer, REPLIES)
    model = ScriptedModel(generate)
    facts = three_facts()
    # batch_size 4 // 4 candidates: one fact per batch
    kwargs = {"per_fact": 2, "batch_size": 4, "cache_dir": tmp_path, "model_id": "scripted"}
    full = add_llm_paraphrases(facts, model, smollm2_tokenizer, **kwargs)
    assert len(calls) == 3
    [path] = tmp_path.glob("*.jsonl")
    lines = path.read_text().splitlines(keepends=True)
    # As if killed while writing the third line.
    path.write_text(lines[0] + lines[1] + lines[2][:15])
    calls.clear()
    with pytest.warns(KnowpackWarning, match="incomplete last line"):
        resumed = add_llm_paraphrases(facts, model, smollm2_tokenizer, **kwargs)
    assert calls == ["What is the capital of Freedonia"]  # only the missing fact
    assert resumed == full
    assert path.read_text().splitlines() == [line.rstrip("\n") for line in lines]
    calls.clear()
    assert add_llm_paraphrases(facts, model, smollm2_tokenizer, **kwargs) == full
    assert calls == []


def test_cached_paraphrases_are_checked_again(smollm2_tokenizer, tmp_path):
    generate, calls = scripted(smollm2_tokenizer, REPLIES)
    model = ScriptedModel(generate)
    kwargs = {"per_fact": 2, "cache_dir": tmp_path, "model_id": "scripted"}
    add_llm_paraphrases([make_fact()], model, smollm2_tokenizer, **kwargs)
    # Same question and answer, but now "serves" is an alias, which the second cached paraphrase
    # ("What city serves as Ruritania's capital?") would leak: it is dropped, nothing is generated.
    changed = make_fact(aliases=("Strelsau", "serves"))
    [out] = add_llm_paraphrases([changed], model, smollm2_tokenizer, **kwargs)
    assert out.paraphrases == ["Which city is the capital of Ruritania?"]
    assert len(calls) == 1


def test_without_a_model_id_nothing_is_cached(smollm2_tokenizer, tmp_path):
    generate, calls = scripted(smollm2_tokenizer, REPLIES)
    add_llm_paraphrases([make_fact()], ScriptedModel(generate), smollm2_tokenizer, cache_dir=tmp_path)
    add_llm_paraphrases([make_fact()], ScriptedModel(generate), smollm2_tokenizer, cache_dir=tmp_path)
    assert len(calls) == 2 and not list(tmp_path.iterdir())


# --- the real embedded model --------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_model_paraphrases_real_facts(tmp_path):
    from knowpack.facts.embedded import build_embedded_facts
    from knowpack.models import EMBEDDED_MODEL, load_model

    model, tokenizer = load_model(EMBEDDED_MODEL, device="cpu")
    capitals = [f for f in build_embedded_facts() if f.relation == "country_capital"]
    facts = [capitals[i] for i in (0, 40, 80, 120)]
    start = time.perf_counter()
    out = add_llm_paraphrases(facts, model, tokenizer, per_fact=2, max_new_tokens=20, cache_dir=tmp_path,
                              model_id=EMBEDDED_MODEL)
    seconds = time.perf_counter() - start
    [path] = tmp_path.glob("*.jsonl")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    candidates = sum(e["candidates"] for e in entries)
    accepted = 0
    for fact, new in zip(facts, out):
        added = new.paraphrases[len(fact.paraphrases):]
        accepted += len(added)
        assert new.paraphrases[:len(fact.paraphrases)] == fact.paraphrases
        assert len(added) <= 2
        print(f"{fact.question} -> {added}")
        # Every accepted paraphrase passes the filter against the fact and the others kept before it.
        seen = taken(fact)
        for text in added:
            assert text != fact.question
            assert check_candidate(text, fact, seen) is None
            seen.add(normalize_alias(text))
    print(f"accepted {accepted}/{candidates} candidates in {seconds:.1f} s")
    assert candidates == 4 * len(facts)
