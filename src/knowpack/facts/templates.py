"""Question templates: how a (subject, relation) pair is asked as a question.

In:  a relation name and the subject as it should read inside a sentence.
Out: the question (`render_question`, variant 0 is the canonical phrasing) and its other phrasings
(`paraphrases`), which the mixture stage uses as paraphrase data.

`TEMPLATES` holds several phrasings for the embedded relations and for common DBpedia properties.
A relation without templates gets a readable fallback built from its name: ``birthPlace`` or
``birth_place`` becomes "What is the birth place of {subject}?".

Templates never start with ``{subject}`` when the subject may carry a lower-case article
("the Netherlands"); `render_question` still upper-cases the first character, so a template that
does start with the subject reads correctly.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable

from knowpack.facts.popularity import normalize_alias

TEMPLATES: dict[str, list[str]] = {
    # --- the embedded relations (knowpack.facts.embedded) ---
    "city_country": [
        "In which country is the city of {subject}?",
        "Which country is the city of {subject} located in?",
        "The city of {subject} is in which country?",
        "What country is the city of {subject} in?",
        "In what country would you find the city of {subject}?",
        "Name the country where the city of {subject} is located.",
    ],
    "city_state": [
        "In which U.S. state is the city of {subject}?",
        "Which U.S. state is the city of {subject} located in?",
        "The city of {subject} is in which U.S. state?",
        "What state of the United States is the city of {subject} in?",
        "In what U.S. state would you find the city of {subject}?",
        "Name the U.S. state where the city of {subject} is located.",
    ],
    "country_capital": [
        "What is the capital of {subject}?",
        "Which city is the capital of {subject}?",
        "What city serves as the capital of {subject}?",
        "What is the capital city of {subject}?",
        "Name the capital of {subject}.",
        "Which city is the seat of government of {subject}?",
    ],
    "country_currency": [
        "What is the currency of {subject}?",
        "Which currency is used in {subject}?",
        "What is the official currency of {subject}?",
        "What money do people use in {subject}?",
        "Name the currency of {subject}.",
        "In {subject}, what currency do people pay with?",
    ],
    "country_continent": [
        "On which continent is {subject}?",
        "Which continent is {subject} located on?",
        "What continent does {subject} belong to?",
        "On what continent would you find {subject}?",
        "Name the continent where {subject} lies.",
        "In terms of continents, where is {subject}?",
    ],
    "country_language": [
        "What is the official language of {subject}?",
        "Which language is official in {subject}?",
        "What language is the official language of {subject}?",
        "In {subject}, which language has official status?",
        "Name the official language of {subject}.",
        "What is the state language of {subject}?",
    ],
    "country_demonym": [
        "What is the demonym for people from {subject}?",
        "What adjective describes a person from {subject}?",
        "What is the nationality adjective for {subject}?",
        "Which word describes the people of {subject}?",
        "Name the demonym used for people of {subject}.",
        "A citizen of {subject} is described with which nationality word?",
    ],
    "country_region": [
        "In which region of the world is {subject}?",
        "Which geographic region of the world is {subject} part of?",
        "What world region does {subject} belong to?",
        "In the United Nations geoscheme, which region contains {subject}?",
        "Name the region of the world where {subject} lies.",
        "Which subregion of its continent is {subject} in?",
    ],
    "country_calling_code": [
        "What is the international calling code of {subject}?",
        "What is the telephone country code for {subject}?",
        "Which dialing code is used to call {subject} from abroad?",
        "What phone prefix do you dial to reach {subject}?",
        "Name the international dialing code of {subject}.",
        "When phoning {subject} from another country, which country code do you use?",
    ],
    "country_tld": [
        "What is the internet country code top-level domain of {subject}?",
        "Which top-level domain belongs to {subject}?",
        "What is the web domain suffix for {subject}?",
        "Which country-code domain do websites in {subject} use?",
        "Name the internet top-level domain of {subject}.",
        "What domain ending is assigned to {subject} on the internet?",
    ],
    "country_neighbor": [
        "Which is the only country that shares a land border with {subject}?",
        "What single country borders {subject} by land?",
        "Which country is the sole land neighbor of {subject}?",
        "What is the only country adjacent to {subject} by land?",
        "Name the one country that {subject} shares a land border with.",
        "By land, {subject} borders just one country. Which one?",
    ],
    "subdivision_country": [
        "In which country is the administrative division {subject}?",
        "Which country is the administrative division {subject} part of?",
        "The administrative division {subject} belongs to which country?",
        "What country contains the administrative division {subject}?",
        "Name the country that the administrative division {subject} is part of.",
        "In what country would you find the administrative division {subject}?",
    ],
    # --- common DBpedia properties (the dbpedia-dump and sparql sources) ---
    "capital": [
        "What is the capital of {subject}?",
        "Which city is the capital of {subject}?",
        "What is the capital city of {subject}?",
    ],
    "country": [
        "In which country is {subject}?",
        "Which country is {subject} located in?",
        "What country is {subject} in?",
    ],
    "currency": [
        "What is the currency of {subject}?",
        "Which currency is used in {subject}?",
        "What is the official currency of {subject}?",
    ],
    "officialLanguage": [
        "What is the official language of {subject}?",
        "Which language is official in {subject}?",
        "Name the official language of {subject}.",
    ],
    "birthPlace": [
        "Where was {subject} born?",
        "What is the birthplace of {subject}?",
        "In which place was {subject} born?",
    ],
    "deathPlace": [
        "Where did {subject} die?",
        "What is the place of death of {subject}?",
        "In which place did {subject} die?",
    ],
    "nationality": [
        "What is the nationality of {subject}?",
        "Which country is {subject} a national of?",
        "What nationality does {subject} have?",
    ],
    "almaMater": [
        "Where did {subject} study?",
        "What is the alma mater of {subject}?",
        "Which institution did {subject} attend?",
    ],
    "author": [
        "Who is the author of {subject}?",
        "Who wrote {subject}?",
        "Which writer created {subject}?",
    ],
    "director": [
        "Who directed {subject}?",
        "Who is the director of {subject}?",
        "Which filmmaker directed {subject}?",
    ],
    "genre": [
        "What is the genre of {subject}?",
        "Which genre does {subject} belong to?",
        "What kind of genre is {subject}?",
    ],
    "headquarter": [
        "Where is the headquarters of {subject}?",
        "In which city is {subject} headquartered?",
        "Where is {subject} based?",
    ],
    "location": [
        "Where is {subject} located?",
        "What is the location of {subject}?",
        "In which place is {subject}?",
    ],
    "founder": [
        "Who founded {subject}?",
        "Who is the founder of {subject}?",
        "Which person established {subject}?",
    ],
    "team": [
        "Which team did {subject} play for?",
        "What team is {subject} associated with?",
        "For which team has {subject} played?",
    ],
    # --- made-up relations (knowpack.facts.synthetic) ---
    "synthetic_capital": [
        "What is the capital of {subject}?",
        "Which city is the capital of {subject}?",
        "Name the capital city of {subject}.",
    ],
    "synthetic_founder": [
        "Who founded {subject}?",
        "Who is the founder of {subject}?",
        "Which person established {subject}?",
    ],
    "synthetic_birthplace": [
        "In which town was {subject} born?",
        "What is the birthplace of {subject}?",
        "Where was {subject} born?",
    ],
    "synthetic_author": [
        "Who wrote the novel {subject}?",
        "Who is the author of the novel {subject}?",
        "The novel {subject} was written by whom?",
    ],
    "synthetic_river": [
        "Which river flows through the town of {subject}?",
        "What river runs through {subject}?",
        "Name the river that passes through the town of {subject}.",
    ],
    "synthetic_language": [
        "What language is spoken in {subject}?",
        "Which language do the people of {subject} speak?",
        "Name the language spoken in {subject}.",
    ],
}

# Used for relations without templates; "{relation}" becomes the relation's name as words.
FALLBACK_TEMPLATES: list[str] = [
    "What is the {relation} of {subject}?",
    "Name the {relation} of {subject}.",
    "What is {subject}'s {relation}?",
]


def relation_words(relation: str) -> str:
    """``birthPlace``, ``birth_place``, ``dbo:birthPlace`` and ``P19``-style names as plain words."""
    name = relation.rsplit(":", 1)[-1].rsplit("/", 1)[-1]  # drop a namespace prefix or IRI path
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)  # camelCase -> camel Case
    name = re.sub(r"[_\-.]+", " ", name)
    return " ".join(name.lower().split()) or relation


def templates_for(relation: str) -> list[str]:
    """The relation's templates (``{subject}`` placeholders), or the fallback ones built from its name."""
    if relation in TEMPLATES:
        return TEMPLATES[relation]
    return _fallback_templates(relation)


@functools.lru_cache(maxsize=4096)  # a dump has a few hundred relations, each asked for ~10^5 times
def _fallback_templates(relation: str) -> list[str]:
    words = relation_words(relation)
    return [t.replace("{relation}", words) for t in FALLBACK_TEMPLATES]


def render_question(relation: str, subject: str, variant: int = 0) -> str:
    """The question for ``subject`` under ``relation``; variants past the last wrap around."""
    templates = templates_for(relation)
    # str.replace, not str.format: subjects and relation names may contain braces.
    question = templates[variant % len(templates)].replace("{subject}", subject)
    return question[:1].upper() + question[1:]


def paraphrases(relation: str, subject: str) -> list[str]:
    """Every other phrasing of the question (all variants except variant 0), in template order."""
    count = len(templates_for(relation))
    return [render_question(relation, subject, variant) for variant in range(1, count)]


def question_texts(relation: str, phrase: str, questions: Iterable[str]) -> tuple[str, str]:
    """All phrasings lower-cased, and all normalized with spaces around each word, for `leaks_answer`.

    The normalized form is assembled from the normalized template pieces (cached, shared by every
    fact of the relation) and the normalized subject, which is much faster than normalizing each
    question and equal to it for whole-word matching.
    """
    subject = normalize_alias(phrase)
    normalized = []
    for template in templates_for(relation):
        before, _, after = template.partition("{subject}")
        normalized.append(f" {normalize_alias(before)} {subject} {normalize_alias(after)} ")
    # Separators that no answer contains, so no match can span two phrasings.
    return "\n".join(q.lower() for q in questions), " | ".join(normalized)


def leaks_answer(answer: str, texts: tuple[str, str]) -> bool:
    """True when a question gives the answer away; ``texts`` comes from `question_texts`.

    Either the lower-cased answer is a substring of the lower-cased question (the judge's own test,
    so echoing the question would score), or the normalized answer is a whole-word run inside the
    normalized question ("Mexico" in "Mexico City"). Whole words for the normalized form, because
    ".fr" normalizes to "fr", which is inside "France" yet is not given away by it.
    """
    lowered, normalized = texts
    key = normalize_alias(answer)
    return answer.lower() in lowered or bool(key) and f" {key} " in normalized
