"""LLM paraphrases of fact questions (Pletenev et al. 2025 prompt an instruct model to rephrase each
question differently), with any Hugging Face causal LM.

In:  facts, a causal LM and its tokenizer.
Out: new `Fact` objects whose ``paraphrases`` are the existing ones followed by up to ``per_fact``
     accepted LLM paraphrases (fewer when the filter rejects candidates; never padded).

Prompt: the tokenizer's chat template when it has one (a short system instruction, one fixed
demonstration turn, then the user turn "Rephrase the question below differently, keeping its
meaning. Reply with the question only.\\nQuestion: ..."); a plain-text prompt otherwise. The
demonstration is not in the paper (a 70B model needs none); without it SmolLM2-135M mostly answers
the question instead of rephrasing it (measured on 20 embedded facts, 6 candidates each: 17 of
120 accepted without it, 34 of 120 with it). The demonstration's topic leaks into some replies, so
replies naming its subject are rejected (``copies_example``). Each fact gets ``2 * per_fact``
sampled candidates (temperature, top-p 0.95, no top-k); the sampling of batch ``b`` is seeded
with ``seed + b`` so a run is reproducible.

Each candidate is cleaned (`clean_candidate`) and filtered (`check_candidate`); see those for the
rules. Accepted paraphrases are cached in a JSONL file (`cache_file`) and read back on the next
call, so a rerun generates nothing and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from knowpack.errors import KnowpackError
from knowpack.facts.popularity import normalize_alias
from knowpack.facts.schema import Fact
from knowpack.jsonio import read_append_log

# Bump when the prompt, the cleaning or the filter changes: it is part of the cache file's name.
PROMPT_VERSION = 1
SYSTEM_PROMPT = "You rephrase questions. You never answer them."
INSTRUCTION = "Rephrase the question below differently, keeping its meaning. Reply with the question only."
# Demonstration turns (question, rephrasing, its subject): small chat models otherwise tend to answer.
EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("Which river flows through Vienna?", "What river runs through the city of Vienna?", "Vienna"),
)
TOP_P = 0.95
MIN_CHARS, MAX_CHARS = 8, 300

# Rejection reasons, as `check_candidate` returns them and the cache stores them.
EMPTY, TOO_SHORT, TOO_LONG, NO_QUESTION_MARK = "empty", "too_short", "too_long", "no_question_mark"
LEAKS_ANSWER, NO_SUBJECT, DUPLICATE = "leaks_answer", "no_subject", "duplicate"
COPIES_EXAMPLE = "copies_example"

_LIST_MARK = re.compile(r"^(?:[-*\u2022]|\d+[.)])\s+")
_PREFIX = re.compile(
    r"^(?:(?:here(?:'s| is)\s+)?(?:the|a|my)\s+)?"
    r"(?:(?:(?:rephrased|reworded|paraphrased|rewritten|new|alternative|different)\s+)?"
    r"(?:question|version|paraphrase)(?:\s*\d+)?|rephrased|reworded|paraphrased|rewritten|rephrasing)"
    r"\s*[:\-\u2013]\s*", re.IGNORECASE)
# A short lead-in label before the question ("Expert: ...", "Let's rephrase it: ...").
_LEAD_IN = re.compile(r"^[^:?]{1,60}:\s+(?=\S)")
_INNER_QUESTION = re.compile(r"\bquestion\s*:\s*", re.IGNORECASE)
_POSSESSIVE = re.compile(r"['\u2019]s\b")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"


def candidates_per_fact(per_fact: int) -> int:
    """How many candidates are sampled per fact: twice what is kept, to survive the filter."""
    return 2 * per_fact


# --- prompt ---------------------------------------------------------------------------------


def _user_turn(question: str) -> str:
    return f"{INSTRUCTION}\nQuestion: {question}"


def build_prompt(question: str, tokenizer) -> str:
    """The prompt text for one question: chat template when the tokenizer has one, plain text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        turns = [turn for q, a, _ in EXAMPLES for turn in ({"role": "user", "content": _user_turn(q)},
                                                           {"role": "assistant", "content": a})]
        turns.append({"role": "user", "content": _user_turn(question)})
        try:
            return tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT}, *turns],
                                                 add_generation_prompt=True, tokenize=False)
        except (TemplateError, ValueError):  # a template that rejects a system turn (Gemma's): fold it in
            turns[0] = {"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{turns[0]['content']}"}
            return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    shots = "".join(f"{_user_turn(q)}\nRephrased question: {a}\n\n" for q, a, _ in EXAMPLES)
    return f"{SYSTEM_PROMPT}\n\n{shots}{_user_turn(question)}\nRephrased question:"


# --- cleaning and filtering -----------------------------------------------------------------


def _clean_line(line: str) -> str:
    text = " ".join(line.replace("**", "").split())
    previous = None
    while text != previous:
        previous = text
        text = _LIST_MARK.sub("", text)
        text = _PREFIX.sub("", text)
        text = text.strip().strip(_QUOTES).strip()
    # "Palau is in Oceania. Question: Which continent ...?": keep what follows the last "Question:".
    inner = list(_INNER_QUESTION.finditer(text))
    if inner and inner[-1].end() < len(text):
        text = text[inner[-1].end():].strip().strip(_QUOTES).strip()
    lead_in = _LEAD_IN.match(text)
    if lead_in:
        rest = text[lead_in.end():].strip(_QUOTES).strip()
        if rest[:1].isupper():  # a new sentence; not "Where is X: north or south?"
            text = rest
    return text


def clean_candidate(text: str) -> str:
    """The first non-empty line of a model reply, cleaned.

    Cleaning drops list markers ("1.", "-"), markdown bold, surrounding quotes and prefixes such as
    "Question:", "Rephrased question:" or "Here is the rephrased version:", keeps what follows a
    "Question:" inside the line, drops a short lead-in label ending in ": " when a capital letter
    follows ("Expert: In which ...", at most 60 characters, no "?"), and collapses whitespace.
    A line that ends with ":" after cleaning is a lead-in ("Sure! Here it is:") and is skipped
    like an empty one.
    """
    for line in text.splitlines():
        cleaned = _clean_line(line)
        if cleaned and not cleaned.endswith(":"):
            return cleaned
    return ""


def _whole_words(key: str, normalized: str) -> bool:
    return bool(key) and f" {key} " in f" {normalized} "


def check_candidate(candidate: str, fact: Fact, taken: set[str]) -> str | None:
    """None when ``candidate`` (already cleaned) is acceptable for ``fact``, else the rejection reason.

    ``taken`` holds the normalized (`normalize_alias`) question, the fact's existing paraphrases and
    the paraphrases accepted so far. The rules, in the order they are checked:

    - ``empty``, ``too_short``, ``too_long``: the text must be 8 to 300 characters long.
    - ``no_question_mark``: it must end with "?" (a reply that answers or comments is a statement).
    - ``leaks_answer``: neither the answer nor any alias may appear in it, tested as
      `templates.leaks_answer` does: the lower-cased alias as a substring of the lower-cased text
      (the judge's own test), or the normalized alias as a whole-word run inside the normalized
      text. A paraphrase that gives the answer away would teach nothing.
    - ``no_subject``: the normalized subject must be a whole-word run inside the normalized text,
      so the paraphrase is still about the same entity; it is also tried with possessive "'s"
      dropped, so "Ruritania's capital" names Ruritania ("Ruritanias" does not). Skipped when the
      fact's own question does not contain its subject that way, or is its subject (QA data whose
      subject falls back to the question).
    - ``duplicate``: its normalized form must differ from everything in ``taken``.
    - ``copies_example``: it must not name the subject of a demonstration turn (`EXAMPLES`)
      unless the fact's question does ("Which river flows through Vienna, Austria's capital?").
    """
    if not candidate:
        return EMPTY
    if len(candidate) < MIN_CHARS:
        return TOO_SHORT
    if len(candidate) > MAX_CHARS:
        return TOO_LONG
    if not candidate.endswith("?"):
        return NO_QUESTION_MARK
    lowered, normalized = candidate.lower(), normalize_alias(candidate)
    if any(alias.lower() in lowered or _whole_words(normalize_alias(alias), normalized) for alias in fact.aliases):
        return LEAKS_ANSWER
    subject, question = normalize_alias(fact.subject), normalize_alias(fact.question)
    if (subject != question and _whole_words(subject, question) and not _whole_words(subject, normalized)
            and not _whole_words(subject, normalize_alias(_POSSESSIVE.sub("", candidate)))):
        return NO_SUBJECT
    if normalized in taken:
        return DUPLICATE
    if any(_whole_words(normalize_alias(entity), normalized) and not _whole_words(normalize_alias(entity), question)
           for _, _, entity in EXAMPLES):
        return COPIES_EXAMPLE
    return None


def filter_candidates(fact: Fact, candidates: Iterable[str], limit: int | None = None
                      ) -> tuple[list[str], list[tuple[str, str]]]:
    """Clean and check candidates in order: (accepted, at most ``limit``; rejected as (text, reason)).

    Candidates past the limit are not checked and appear in neither list.
    """
    taken = {normalize_alias(q) for q in (fact.question, *fact.paraphrases)}
    accepted: list[str] = []
    rejected: list[tuple[str, str]] = []
    for raw in candidates:
        if limit is not None and len(accepted) >= limit:
            break
        text = clean_candidate(raw)
        reason = check_candidate(text, fact, taken)
        if reason is None:
            accepted.append(text)
            taken.add(normalize_alias(text))
        else:
            rejected.append((text or raw.strip()[:MAX_CHARS], reason))
    return accepted, rejected


# --- cache ----------------------------------------------------------------------------------


def cache_file(cache_dir: Path, model_id: str, *, per_fact: int, temperature: float, max_new_tokens: int,
               seed: int) -> Path:
    """The JSONL cache for one model and one set of sampling settings (the name is their hash)."""
    settings = {"model_id": model_id, "prompt_version": PROMPT_VERSION, "per_fact": per_fact,
                "temperature": float(temperature), "max_new_tokens": max_new_tokens, "seed": seed,
                "top_p": TOP_P, "candidates": candidates_per_fact(per_fact)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"paraphrases-{digest}.jsonl"


def _valid_entry(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("question"), str)
            and isinstance(entry.get("answer"), str) and isinstance(entry.get("paraphrases"), list)
            and all(isinstance(p, str) for p in entry["paraphrases"]))


def read_cache(path: Path) -> tuple[dict[tuple[str, str], dict], int | None]:
    """Cached entries by (question, answer), and the byte offset to cut a half-written last line at
    (`knowpack.jsonio.read_append_log`)."""
    entries, cut = read_append_log(path, _valid_entry)
    return {(entry["question"], entry["answer"]): entry for entry in entries}, cut


# --- sampling -------------------------------------------------------------------------------


def _stop_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def sample_candidates(model, tokenizer, questions: Sequence[str], *, n: int, temperature: float,
                      max_new_tokens: int, seed: int) -> list[list[str]]:
    """``n`` sampled replies (raw text) per question, in one left-padded ``model.generate`` batch.

    The global torch RNG is seeded with ``seed`` for this batch and restored afterwards.
    """
    chat = bool(getattr(tokenizer, "chat_template", None))
    encoded = [tokenizer(build_prompt(q, tokenizer), add_special_tokens=not chat)["input_ids"] for q in questions]
    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in encoded], device=model.device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=model.device)
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True,
                             temperature=temperature, top_p=TOP_P, top_k=0, max_new_tokens=max_new_tokens,
                             num_return_sequences=n, pad_token_id=pad, eos_token_id=stop or None)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [texts[i * n:(i + 1) * n] for i in range(len(questions))]


# --- the stage ------------------------------------------------------------------------------


def _check_settings(per_fact: int, temperature: float, max_new_tokens: int, batch_size: int) -> None:
    if per_fact < 1:
        raise KnowpackError(f"paraphrases per fact must be at least 1, got {per_fact}")
    if not temperature > 0:
        raise KnowpackError(f"paraphrase temperature must be above 0, got {temperature}")
    if max_new_tokens < 1:
        raise KnowpackError(f"paraphrase max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise KnowpackError(f"paraphrase batch_size must be at least 1, got {batch_size}")


def add_llm_paraphrases(facts: list[Fact], model, tokenizer, *, per_fact: int = 3, seed: int = 0,
                        temperature: float = 0.9, max_new_tokens: int = 48, batch_size: int = 32,
                        cache_dir: Path | None = None, model_id: str = "", progress: bool = False) -> list[Fact]:
    """The facts with up to ``per_fact`` LLM paraphrases appended to their ``paraphrases``.

    Facts sharing (question, answer) are paraphrased once. ``batch_size`` counts sequences decoded
    together, so ``batch_size // (2 * per_fact)`` facts (at least one) share a ``model.generate``
    call. Batches are cut from the facts in input order and batch ``b`` is sampled with seed
    ``seed + b``; a batch whose facts are all cached is skipped, so a resumed run gives what an
    uninterrupted one would have.

    Cache: ``cache_dir`` (default ``$KNOWPACK_CACHE/paraphrases``) holds one JSONL file per model
    and sampling settings (`cache_file`); each line is one (question, answer) with its accepted
    paraphrases, the number of candidates and the rejected ones with their reasons, written and
    flushed as soon as its batch is done. ``model_id`` names the model in the cache (default: the
    model's ``name_or_path``); with neither, nothing is cached. Cached paraphrases are checked again
    against each fact (removal only), in case its aliases or paraphrases changed since.
    """
    _check_settings(per_fact, temperature, max_new_tokens, batch_size)
    n = candidates_per_fact(per_fact)
    identity = model_id or getattr(model, "name_or_path", "") or ""
    path: Path | None = None
    results: dict[tuple[str, str], dict] = {}
    cut = None
    if identity:
        if cache_dir is None:
            from knowpack.models import cache_dir as cache_root

            cache_dir = cache_root() / "paraphrases"
        path = cache_file(Path(cache_dir), identity, per_fact=per_fact, temperature=temperature,
                          max_new_tokens=max_new_tokens, seed=seed)
        results, cut = read_cache(path)

    first: dict[tuple[str, str], Fact] = {}
    for fact in facts:
        first.setdefault((fact.question, fact.answer), fact)
    keys = list(first)
    per_batch = max(1, batch_size // n)
    batches = [keys[i:i + per_batch] for i in range(0, len(keys), per_batch)]
    pending = sum(key not in results for key in keys)

    if pending:
        _sample_missing(batches, first, results, pending, model, tokenizer, n=n, per_fact=per_fact,
                        temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, cache=path, cut=cut,
                        progress=progress)

    out = []
    for fact in facts:
        cached = results[(fact.question, fact.answer)]["paraphrases"]
        accepted, _ = filter_candidates(fact, cached, limit=per_fact)
        out.append(fact.model_copy(update={"paraphrases": [*fact.paraphrases, *accepted]}))
    return out


def _sample_missing(batches: list[list[tuple[str, str]]], first: dict[tuple[str, str], Fact],
                    results: dict[tuple[str, str], dict], pending: int, model, tokenizer, *, n: int, per_fact: int,
                    temperature: float, max_new_tokens: int, seed: int, cache: Path | None, cut: int | None,
                    progress: bool) -> None:
    """Sample and filter the candidates of every (question, answer) not in ``results`` yet, adding them there
    and appending each to the ``cache`` file (cut back to ``cut`` first: a half-written last line) as it is done."""
    from rich.console import Console
    from rich.progress import Progress

    handle = None
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cut is not None:
            os.truncate(cache, cut)
        handle = cache.open("a", encoding="utf-8")
    try:
        with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
            task = bar.add_task("LLM paraphrases", total=pending)
            for index, batch in enumerate(batches):
                missing = [key for key in batch if key not in results]
                if not missing:
                    continue
                # The whole batch is sampled again (same seed), so its missing facts get exactly
                # the samples an uninterrupted run gave them.
                replies = sample_candidates(model, tokenizer, [q for q, _ in batch], n=n,
                                            temperature=temperature, max_new_tokens=max_new_tokens,
                                            seed=seed + index)
                for key, candidates in zip(batch, replies):
                    if key not in missing:
                        continue
                    accepted, rejected = filter_candidates(first[key], candidates, limit=per_fact)
                    entry = {"question": key[0], "answer": key[1], "paraphrases": accepted,
                             "candidates": len(candidates), "rejected": rejected}
                    results[key] = entry
                    if handle is not None:
                        handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
                        handle.flush()
                bar.advance(task, len(missing))
    finally:
        if handle is not None:
            handle.close()
