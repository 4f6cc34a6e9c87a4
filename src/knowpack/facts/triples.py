"""From (subject, relation, object) triples to facts: the part every knowledge-graph source shares.

In:  triples streamed one at a time into a `TripleCollector` (entity keys such as IRIs or names),
     then names and alternative names for the entities, and optionally a popularity per entity.
Out: `Fact`s, one per (subject, relation) pair that has exactly one object, with a templated
     question, template paraphrases, cleaned aliases and a Head-to-Tail popularity bucket.

Memory grows with the number of distinct entities and of (subject, relation) pairs kept, never
with the number of lines read: a 22.8 M-line DBpedia dump is streamed, not loaded. Restricting the
relations (``relations=``) keeps only the pairs of those relations.

Rules (the same as the embedded source):
- only (subject, relation) pairs with exactly one object are kept; two subjects whose questions
  read the same (same name) but have different answers are both dropped, since the question
  would be ambiguous; same name and same answer keeps the more popular one;
- a fact whose answer appears in its question or one of its template paraphrases is dropped, and
  so is any alias that does;
- popularity (DESIGN.md): the number of triples that contain the entity, as subject or object,
  counted over every triple read, whatever its relation; a source may give its own measure;
- buckets: `assign_buckets` over the subjects of each relation separately (relations differ
  wildly in size, so one global ranking would leave small relations all "tail").
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from typing import Callable, Collection, Iterable, Mapping, NamedTuple

from knowpack.errors import KnowpackError, did_you_mean
from knowpack.facts.popularity import assign_buckets, clean_aliases, normalize_alias
from knowpack.facts.schema import Fact, make_fact_id
from knowpack.facts.templates import leaks_answer, paraphrases, question_texts, render_question

MAX_ALIASES = 5
_SEVERAL = object()  # marks a (subject, relation) pair seen with two different objects


class TripleCollector:
    """Counts entity mentions and remembers the single object of each (subject, relation) pair.

    >>> collector = TripleCollector()
    >>> collector.add("France", "capital", "Paris")
    >>> collector.build(source="example")[0].question
    'What is the capital of France?'
    """

    def __init__(self, relations: Collection[str] | None = None) -> None:
        self.relations = frozenset(relations) if relations is not None else None
        self.mentions: Counter[str] = Counter()
        self.relation_counts: Counter[str] = Counter()
        self._objects: dict[str, dict[str, object]] = defaultdict(dict)  # relation -> subject -> object

    def add(self, subject: str, relation: str, obj: str) -> None:
        self.mentions[subject] += 1
        self.mentions[obj] += 1
        relation = sys.intern(relation)
        self.relation_counts[relation] += 1
        if self.relations is not None and relation not in self.relations:
            return
        objects = self._objects[relation]
        previous = objects.get(subject)
        if previous is None:
            objects[subject] = obj
        elif previous is not _SEVERAL and previous != obj:
            objects[subject] = _SEVERAL

    def check_relations(self, where: str) -> None:
        """A requested relation that never occurred is a user mistake: say which ones exist."""
        if self.relations is None:
            return
        missing = sorted(self.relations - set(self.relation_counts))
        if missing:
            hint = did_you_mean(missing[0], self.relation_counts, ": no triple uses it", cutoff=0.7)
            common = ", ".join(name for name, _ in self.relation_counts.most_common(8)) or "none"
            raise KnowpackError(f"{where}: unknown relation {missing[0]!r}{hint} "
                                f"(most common relations there: {common})")

    def entities(self) -> set[str]:
        """Every subject and object of a kept pair: the entities whose names are needed."""
        needed: set[str] = set()
        for objects in self._objects.values():
            for subject, obj in objects.items():
                if obj is not _SEVERAL:
                    needed.add(subject)
                    needed.add(obj)  # type: ignore[arg-type]
        return needed

    def build(self, *, source: str, name: Callable[[str], str] | None = None,
              answer_name: Callable[[str], str] | None = None,
              aliases: Mapping[str, Iterable[str]] | None = None,
              popularity: Mapping[str, float] | None = None,
              keep: Callable[[list[FactRef]], Iterable[str]] | None = None) -> list[Fact]:
        """The facts, ordered by relation then subject name.

        ``name(entity)`` is how the entity reads in a question (default: the key itself);
        ``answer_name(entity)`` how it reads as an answer (default: ``name``); ``aliases[entity]``
        its alternative names; ``popularity[entity]`` overrides the mention count. ``keep`` gets
        a light `FactRef` (id, relation, bucket) for every fact and returns the ids to build:
        sampling a few hundred facts from a dump then never holds millions of `Fact` objects.
        """
        name = name or (lambda entity: entity)
        answer_name = answer_name or name
        refs: list[FactRef] = []
        drafts: list[tuple[str, str, str, str]] = []  # (subject, phrase, object, answer), parallel to refs
        for relation in sorted(self._objects):
            kept = self._single_answers(relation, name, answer_name, popularity)
            buckets = assign_buckets({phrase: score for _, phrase, _, _, score in kept})
            for subject, phrase, obj, answer, _ in kept:
                refs.append(FactRef(make_fact_id(subject, relation, obj), relation, buckets[phrase]))
                drafts.append((subject, phrase, obj, answer))
        chosen = set(keep(refs)) if keep is not None else None
        return [_fact(ref, *draft, source=source, aliases=(aliases or {}).get(draft[2], ()))
                for ref, draft in zip(refs, drafts) if chosen is None or ref.fact_id in chosen]

    def _single_answers(self, relation: str, name: Callable[[str], str], answer_name: Callable[[str], str],
                        popularity: Mapping[str, float] | None) -> list[tuple[str, str, str, str, float]]:
        """(subject, phrase, object, answer, popularity) of the relation's usable pairs, by phrase."""
        drafts: dict[str, tuple[float, str, str]] = {}  # subject name -> (popularity, subject, object)
        clashes: set[str] = set()
        for subject, obj in self._objects[relation].items():
            if obj is _SEVERAL:
                continue
            phrase = name(subject)
            score = popularity.get(subject, 0.0) if popularity is not None else float(self.mentions[subject])
            if phrase in drafts and answer_name(drafts[phrase][2]) != answer_name(obj):  # type: ignore[arg-type]
                clashes.add(phrase)
            if phrase not in drafts or score > drafts[phrase][0]:
                drafts[phrase] = (score, subject, obj)  # type: ignore[assignment]
        kept = []
        for phrase in sorted(drafts, key=lambda p: (p.casefold(), p)):
            score, subject, obj = drafts[phrase]
            answer = answer_name(obj).strip()
            if phrase in clashes or not phrase.strip() or not answer:
                continue
            questions = _questions(relation, phrase)
            if leaks_answer(answer, question_texts(relation, phrase, questions)):
                continue
            kept.append((subject, phrase, obj, answer, score))
        return kept


class FactRef(NamedTuple):
    """What sampling needs to know about a fact before it is built."""

    fact_id: str
    relation: str
    bucket: str


def _questions(relation: str, phrase: str) -> list[str]:
    return [render_question(relation, phrase), *paraphrases(relation, phrase)]


def _fact(ref: FactRef, subject: str, phrase: str, obj: str, answer: str, *, source: str,
          aliases: Iterable[str]) -> Fact:
    questions = _questions(ref.relation, phrase)
    texts = question_texts(ref.relation, phrase, questions)
    # An alias containing the answer accepts nothing new; one in the question gives it away.
    candidates = [a for a in aliases if normalize_alias(a) and a != answer
                  and answer.lower() not in a.lower() and not leaks_answer(a, texts)]
    return Fact(fact_id=ref.fact_id, subject=phrase, relation=ref.relation, object=answer, question=questions[0],
                answer=answer, aliases=clean_aliases(answer, candidates, limit=MAX_ALIASES), bucket=ref.bucket,
                source=source, paraphrases=questions[1:])  # type: ignore[arg-type]
