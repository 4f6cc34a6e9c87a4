"""DBpedia dumps (N-Triples layout, plain or .bz2) to facts, streamed line by line.

In:  one or more dump files such as ``mappingbased-objects_lang=en.ttl.bz2`` (22.8 M lines of
     ``<s> <p> <o> .``), and optionally name files: ``labels_lang=en.ttl.bz2`` (rdfs:label,
     also skos:altLabel / foaf:name / dbo:alias literals) and ``redirects_lang=en.ttl.bz2``
     (dbo:wikiPageRedirects, whose redirect pages' names become aliases of the target).
Out: `Fact`s via `TripleCollector` (single-object pairs, templated questions, Head-to-Tail buckets).

DBpedia's ``.ttl`` dumps use the N-Triples layout (one full triple per line, no prefixes), which a
line parser reads about 20x faster than a general Turtle parser. A file that starts with
``@prefix``/``PREFIX`` is real Turtle and is handed to rdflib instead (loaded whole: fine for
small files, not for dumps). Parsing handles comments, ``\\uXXXX`` escapes in IRIs and literals,
percent-encoded IRIs (``S%C3%A3o_Paulo``), parentheses (``Georgia_(country)``), language tags and
datatypes. A malformed line is reported as ``file:line`` and skipped (with a count at the end), or
stops the run with ``strict=True``.

Names: an entity's name is its English ``rdfs:label`` when a labels file gives one, else it is
derived from the IRI (percent-decoded, ``_`` -> space). Questions use the full name
("Georgia (country)"); answers drop a trailing disambiguation in parentheses ("Mercury (planet)"
-> "Mercury"); "Montgomery, Alabama" also accepts "Montgomery".
"""

from __future__ import annotations

import bz2
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import unquote

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from knowpack.errors import KnowpackError, warn
from knowpack.facts.schema import Fact
from knowpack.facts.triples import FactRef, TripleCollector

DBPEDIA_RESOURCE = "http://dbpedia.org/resource/"
RDFS_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
NAME_PREDICATES = frozenset({
    RDFS_LABEL, "http://www.w3.org/2004/02/skos/core#altLabel", "http://xmlns.com/foaf/0.1/name",
    "http://dbpedia.org/ontology/alias",
})
REDIRECT = "http://dbpedia.org/ontology/wikiPageRedirects"
# Structural predicates: they count towards popularity but are not facts anyone asks about.
NOT_FACTS = frozenset({"type", "sameAs", "wikiPageWikiLink", "wikiPageRedirects", "wikiPageDisambiguates",
                       "label", "subClassOf", "seeAlso", "isPrimaryTopicOf", "primaryTopic"})

# One triple per line: subject IRI or blank node, predicate IRI, object IRI / blank node / literal.
_LINE = re.compile(r"""
    \s*(?:<(?P<s>[^<>\s"]*)>|_:\S+)\s*
    <(?P<p>[^<>\s"]*)>\s*
    (?:<(?P<o>[^<>\s"]*)>
      |"(?P<lit>(?:[^"\\\n]|\\.)*)"(?:@(?P<lang>[A-Za-z]+(?:-[A-Za-z0-9]+)*)|\^\^<[^<>\s"]*>)?
      |_:\S+)
    \s*\.\s*(?:\#.*)?$""", re.VERBOSE)
_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))")
_ECHARS = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_DISAMBIGUATION = re.compile(r"\s*\([^()]*\)$")
MAX_EXAMPLES = 5
_COLUMNS = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())


@dataclass
class ParseReport:
    """What reading the files found: line counts and the first few malformed lines."""

    lines: int = 0
    triples: int = 0
    malformed: int = 0
    examples: list[str] = field(default_factory=list)


def dbpedia_facts(paths: Sequence[str | Path], *, name_files: Sequence[str | Path] = (),
                  relations: Iterable[str] | None = None, lang: str = "en", strict: bool = False,
                  progress: bool = False, keep: Callable[[list[FactRef]], Iterable[str]] | None = None) -> list[Fact]:
    """Facts from DBpedia dump files; ``relations`` are predicate local names such as ``capital``.

    ``keep`` (see `TripleCollector.build`) picks the facts to build, e.g. a balanced sample.
    """
    if not paths:
        raise KnowpackError("dbpedia-dump source needs a dump file, e.g. "
                            "knowpack facts --source dbpedia-dump mappingbased-objects_lang=en.ttl.bz2")
    wanted = set(relations) if relations else None
    collector = TripleCollector(wanted)
    report = ParseReport()
    names = _Names(lang)
    for path in paths:
        for subject, predicate, obj, literal, tag in read_triples(path, strict=strict, report=report, progress=progress):
            if obj is None:
                names.add_literal(subject, predicate, literal, tag)
                continue
            if predicate == REDIRECT:
                names.add_redirect(subject, obj)
            relation = local_name(predicate)
            if relation in NOT_FACTS and (wanted is None or relation not in wanted):
                # still an edge of the graph: it makes both ends more popular
                collector.mentions[entity_key(subject)] += 1
                collector.mentions[entity_key(obj)] += 1
                continue
            collector.add(entity_key(subject), relation, entity_key(obj))
    where = ", ".join(str(p) for p in paths)
    collector.check_relations(where)
    needed = collector.entities()
    for path in name_files:
        for subject, predicate, obj, literal, tag in read_triples(path, strict=strict, report=report, progress=progress):
            if obj is None:
                if entity_key(subject) in needed:
                    names.add_literal(subject, predicate, literal, tag)
            elif predicate == REDIRECT and entity_key(obj) in needed:
                names.add_redirect(subject, obj)
    if report.malformed:
        warn(f"skipped {report.malformed:,} malformed line(s) of {report.lines:,}; first: {report.examples[0]}"
             " (pass --strict to stop at the first one)")
    facts = collector.build(source="dbpedia", name=names.question_name, answer_name=names.answer_name,
                            aliases=names.aliases_for(needed), keep=keep)
    if not facts:
        raise KnowpackError(f"{where}: no usable facts (read {report.triples:,} triples; every (subject, relation) "
                            "pair had several objects, no object, or gave its answer away)")
    return facts


def read_triples(path: str | Path, *, strict: bool = False, report: ParseReport | None = None,
                 progress: bool = False) -> Iterator[tuple[str, str, str | None, str, str | None]]:
    """Stream ``(subject, predicate, object IRI or None, literal, language tag)`` from one file.

    Subjects that are blank nodes are skipped (nothing can be asked about them), as are objects
    that are blank nodes; literal objects come with ``object=None``.
    """
    path = Path(path)
    report = report if report is not None else ParseReport()
    if not path.is_file():
        raise KnowpackError(f"{path}: no such file")
    if _is_turtle(path):
        yield from _read_turtle(path, report)
        return
    number = 0
    try:
        with _open_text(path) as handle, Progress(*_COLUMNS, disable=not progress, transient=True) as bar:
            task = bar.add_task(f"reading {path.name}", total=path.stat().st_size)
            for number, line in enumerate(handle, start=1):
                report.lines += 1
                if number % 65536 == 0:
                    bar.update(task, completed=_bytes_read(handle))
                stripped = line.strip()
                if not stripped or stripped[0] == "#":
                    continue
                match = _LINE.match(line)
                if match is None:
                    _malformed(f"{path}:{number}: not a triple: {stripped[:80]!r}", strict, report)
                    continue
                subject, predicate, obj, literal = match.group("s", "p", "o", "lit")
                if subject is None or (obj is None and literal is None):
                    continue  # blank node
                report.triples += 1
                if "\\" in line:
                    try:
                        subject, predicate = _unescape(subject), _unescape(predicate)
                        obj = _unescape(obj) if obj is not None else None
                        literal = _unescape(literal) if literal is not None else ""
                    except ValueError as err:
                        report.triples -= 1
                        _malformed(f"{path}:{number}: {err}", strict, report)
                        continue
                yield subject, predicate, obj, literal or "", match.group("lang")
    except EOFError as err:  # bz2 raises it when the stream stops before its end marker
        raise KnowpackError(f"{path}: truncated compressed file (stopped after line {number:,}); "
                            "download it again") from err
    except OSError as err:
        raise KnowpackError(f"{path}: cannot read ({err}); is it a bz2 or plain text dump?") from err
    except UnicodeDecodeError as err:
        raise KnowpackError(f"{path}:{number + 1}: not UTF-8 text ({err.reason})") from err


def entity_key(iri: str) -> str:
    """DBpedia resources keyed by their local name (saves memory); other IRIs kept whole."""
    return iri[len(DBPEDIA_RESOURCE):] if iri.startswith(DBPEDIA_RESOURCE) else iri


def local_name(iri: str) -> str:
    """``http://dbpedia.org/ontology/birthPlace`` -> ``birthPlace`` (the template registry's key)."""
    cut = max(iri.rfind("/"), iri.rfind("#"))
    return iri[cut + 1:] or iri


def name_from_key(key: str) -> str:
    """How an entity reads when no label is known: ``S%C3%A3o_Paulo`` -> ``São Paulo``."""
    if key.startswith(("http://", "https://")):
        key = local_name(key)
    return " ".join(unquote(key).replace("_", " ").split())


class _Names:
    """Labels and alternative names, collected only for the entities that appear in kept facts."""

    def __init__(self, lang: str) -> None:
        self.lang = lang.lower()
        self.labels: dict[str, str] = {}
        self.alternatives: dict[str, list[str]] = defaultdict(list)

    def add_literal(self, subject: str, predicate: str, literal: str, tag: str | None) -> None:
        if predicate not in NAME_PREDICATES or not literal.strip():
            return
        if tag is not None and tag.lower().split("-")[0] != self.lang:
            return
        key = entity_key(subject)
        if predicate == RDFS_LABEL and key not in self.labels:
            self.labels[key] = literal.strip()
        else:
            self.alternatives[key].append(literal.strip())

    def add_redirect(self, redirect: str, target: str) -> None:
        self.alternatives[entity_key(target)].append(name_from_key(entity_key(redirect)))

    def question_name(self, key: str) -> str:
        name = self.labels.get(key)
        if name is None:  # derived once per entity: building facts asks for each name several times
            name = self.labels[key] = name_from_key(key)
        return name

    def answer_name(self, key: str) -> str:
        return _DISAMBIGUATION.sub("", self.question_name(key)) or self.question_name(key)

    def aliases_for(self, keys: Iterable[str]) -> dict[str, list[str]]:
        aliases: dict[str, list[str]] = {}
        for key in keys:
            full = self.question_name(key)
            candidates = [full, *self.alternatives.get(key, ())]
            if "," in full:  # "Montgomery, Alabama" is often answered as "Montgomery"
                candidates.append(full.split(",", 1)[0])
            aliases[key] = [_DISAMBIGUATION.sub("", c) or c for c in candidates]
        return aliases


def _malformed(message: str, strict: bool, report: ParseReport) -> None:
    if strict:
        raise KnowpackError(f"{message} (run without --strict to skip malformed lines)")
    report.malformed += 1
    if len(report.examples) < MAX_EXAMPLES:
        report.examples.append(message)


def _unescape(text: str) -> str:
    """N-Triples escapes: ``\\uXXXX``, ``\\UXXXXXXXX`` and the ECHARs (``\\"``, ``\\n`` ...)."""
    def replace(match: re.Match[str]) -> str:
        short, long, char = match.groups()
        if short or long:
            code = int(short or long, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:  # not a Unicode scalar value
                raise ValueError(f"\\u escape {match.group(0)} is not a valid character")
            return chr(code)
        return _ECHARS.get(char, char)

    return _ESCAPE.sub(replace, text)


def _open_text(path: Path):
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _is_turtle(path: Path) -> bool:
    """True when the file declares prefixes, i.e. is Turtle proper rather than the N-Triples layout."""
    try:
        with _open_text(path) as handle:
            for line in handle:
                stripped = line.strip()
                if stripped and not stripped.startswith("#"):
                    return stripped.startswith(("@prefix", "@base", "PREFIX", "BASE", "prefix", "base"))
    except (OSError, EOFError, UnicodeDecodeError):
        return False  # the streaming reader reports the problem with the line number
    return False


def _read_turtle(path: Path, report: ParseReport) -> Iterator[tuple[str, str, str | None, str, str | None]]:
    import rdflib

    graph = rdflib.Graph()
    try:
        with _open_text(path) as handle:
            graph.parse(data=handle.read(), format="turtle")
    except EOFError as err:
        raise KnowpackError(f"{path}: truncated compressed file; download it again") from err
    except Exception as err:  # rdflib raises its own parser errors, with the line in the message
        raise KnowpackError(f"{path}: not valid Turtle ({str(err).splitlines()[0][:200]})") from err
    for subject, predicate, obj in graph:
        if not isinstance(subject, rdflib.URIRef):
            continue
        report.lines += 1
        report.triples += 1
        if isinstance(obj, rdflib.URIRef):
            yield str(subject), str(predicate), str(obj), "", None
        elif isinstance(obj, rdflib.Literal):
            yield str(subject), str(predicate), None, str(obj), obj.language


def _bytes_read(handle) -> int:
    """Position in the file on disk (compressed bytes for .bz2), for the progress bar."""
    inner = getattr(handle, "buffer", handle)
    inner = getattr(inner, "_fp", None) or getattr(inner, "raw", inner)  # BZ2File keeps the disk file in _fp
    try:
        return inner.tell()
    except (OSError, ValueError, AttributeError):
        return 0
