"""The SPARQL source: facts from a live DBpedia or Wikidata endpoint, for users who are online.

In:  the predicates to read (full IRIs, prefixed names such as ``dbo:capital`` / ``wdt:P36``, a bare
     Wikidata property id such as ``P36``, or a bare DBpedia ontology name such as ``capital``), the
     endpoint URL, a label language and paging, timeout and retry settings.
Out: `Fact`s built by `TripleCollector`, one per subject with exactly one labelled entity object.

Dialect: an endpoint whose URL contains "wikidata" is treated as Wikidata, any other as DBpedia.
- Labels are ``rdfs:label`` in the requested language on both (plain SPARQL 1.1, no label service).
- Aliases of an object: DBpedia, the labels of the redirect pages pointing at it
  (``dbo:wikiPageRedirects``); Wikidata, its ``skos:altLabel``s. Other labels of the object in a
  variant of the language (``en-GB`` for ``en``) are aliases too.
- Popularity of a subject: DBpedia, the number of triples with the subject in subject position
  (DESIGN.md's triple count, one side only: counting object positions too is a second scan of the
  whole store per page); Wikidata, ``wikibase:sitelinks``, because counting statements per entity
  is too heavy for the public endpoint's 60-second query limit, and sitelinks are the usual proxy.

Every value placed in a query goes through `escape_literal` or `escape_iri`; the only other
text in a query is fixed by this module.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Iterable, Iterator

from rich.console import Console
from rich.progress import Progress

from knowpack import __version__
from knowpack.errors import KnowpackError
from knowpack.facts.schema import Fact
from knowpack.facts.triples import TripleCollector

DBPEDIA = "https://dbpedia.org/sparql"
PREFIXES: dict[str, str] = {
    "dbo": "http://dbpedia.org/ontology/",
    "dbp": "http://dbpedia.org/property/",
    "dbr": "http://dbpedia.org/resource/",
    "wd": "http://www.wikidata.org/entity/",
    "wdt": "http://www.wikidata.org/prop/direct/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "owl": "http://www.w3.org/2002/07/owl#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "schema": "http://schema.org/",
}
# Wikidata properties that have DBpedia-named question templates (knowpack.facts.templates).
WIKIDATA_RELATIONS: dict[str, str] = {
    "P36": "capital", "P17": "country", "P19": "birthPlace", "P20": "deathPlace", "P38": "currency",
    "P37": "officialLanguage", "P50": "author", "P57": "director", "P112": "founder",
    "P159": "headquarter", "P27": "nationality",
}
USER_AGENT = f"knowpack/{__version__} (LoRA knowledge-capacity experiments; python urllib)"
MAX_WAIT = 30.0  # seconds: cap of the backoff and of a server's Retry-After
_MAX_GET_URL = 4000  # longer queries (big VALUES blocks) are POSTed, as the SPARQL protocol allows
_LANG = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_ECHAR = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_IRI_FORBIDDEN = re.compile(r'[\x00-\x20<>"{}|^`\\]')
_sleep = time.sleep  # tests replace it so retries do not really wait


def escape_literal(text: str) -> str:
    """``text`` as a quoted SPARQL string literal that parses back to exactly ``text``.

    Backslash, quote and control characters become ECHAR escapes. SPARQL expands ``\\uXXXX``
    codepoint escapes anywhere in the query *before* parsing, so a text backslash followed by
    ``u``/``U`` would turn ``\\\\u0022`` into an escaped backslash plus a closing quote: that letter
    is therefore written as a codepoint escape itself (``\\U00000075``).
    """
    out: list[str] = []
    after_backslash = False
    for ch in text:
        # The 8-digit form, so hex digits that follow in the text cannot extend the escape.
        out.append(f"\\U{ord(ch):08X}" if after_backslash and ch in "uU" else _ECHAR.get(ch, ch))
        after_backslash = ch == "\\"
    return '"' + "".join(out) + '"'


def escape_iri(iri: str) -> str:
    """``<iri>`` with every character that IRIREF forbids percent-encoded (so it cannot end the IRI)."""
    return "<" + _IRI_FORBIDDEN.sub(lambda m: f"%{ord(m.group()):02X}", iri) + ">"


def resolve_relation(value: str, *, wikidata: bool) -> tuple[str, str]:
    """The predicate IRI for a user's ``--relation`` value, and the relation name facts carry."""
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if "://" in text:
        iri = text
    elif wikidata and re.fullmatch(r"[Pp]\d+", text):
        iri = PREFIXES["wdt"] + text.upper()
    elif ":" in text:
        prefix, local = text.split(":", 1)
        if prefix not in PREFIXES:
            raise KnowpackError(f"relation {value!r}: unknown prefix {prefix!r} "
                                f"(known prefixes: {', '.join(PREFIXES)}; or give the full IRI)")
        iri = PREFIXES[prefix] + local
    elif not wikidata and re.fullmatch(r"[A-Za-z_][\w.-]*", text):
        iri = PREFIXES["dbo"] + text  # bare DBpedia ontology names, as the dump source takes them
    else:
        raise KnowpackError(f"relation {value!r}: give a prefixed name such as dbo:capital or "
                            "wdt:P36, a Wikidata property id such as P36, or a full IRI")
    local = re.split(r"[/#:]", iri.rstrip("/#"))[-1]
    if not local:
        raise KnowpackError(f"relation {value!r}: the predicate has no local name")
    if iri.startswith(PREFIXES["wdt"]):
        return iri, WIKIDATA_RELATIONS.get(local, local)
    return iri, local


def sparql_facts(relations: list[str], *, endpoint: str = DBPEDIA, lang: str = "en",
                 limit: int | None = 10000, page_size: int = 1000, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 1.0, progress: bool = False) -> list[Fact]:
    """Facts for ``relations`` from ``endpoint``: at most ``limit`` result rows per relation."""
    if not relations:
        raise KnowpackError("sparql source needs --relation, e.g. --relation dbo:capital")
    _check_settings(endpoint, lang, limit, page_size, timeout, retries, backoff)
    wikidata = "wikidata" in endpoint.lower()
    predicates = [resolve_relation(value, wikidata=wikidata) for value in relations]
    client = _Endpoint(endpoint, timeout=timeout, retries=retries, backoff=backoff)
    collector = TripleCollector()
    labels: dict[str, tuple[bool, str]] = {}  # entity -> (not an exact language match, label)
    aliases: dict[str, list[str]] = defaultdict(list)
    popularity: dict[str, float] = {}
    aliased: set[str] = set()  # objects whose aliases were already asked for (objects repeat across pages)
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        for iri, relation in predicates:
            task = bar.add_task(f"SPARQL {relation}", total=limit)
            for page in _pages(client, iri, lang, limit, page_size):
                for s, o, s_label, o_label in page:
                    collector.add(s, relation, o)
                    _keep_label(labels, aliases, s, s_label, lang)
                    _keep_label(labels, aliases, o, o_label, lang)
                objects = sorted({o for _, o, _, _ in page} - aliased)
                aliased.update(objects)
                for obj, alias in client.rows(_alias_query(objects, lang, wikidata), ("o", "alias")):
                    aliases[obj].append(alias)
                subjects = sorted({s for s, _, _, _ in page} - popularity.keys())
                popularity.update(_popularity(client, subjects, wikidata))
                bar.advance(task, len(page))
    facts = collector.build(source="sparql:" + ("wikidata" if wikidata else "dbpedia"),
                            name=lambda entity: labels[entity][1], aliases=aliases, popularity=popularity)
    if not facts:
        raise KnowpackError(f"SPARQL endpoint {endpoint} returned no usable facts for relations "
                            f"{', '.join(relations)} "
                            f"(labels in {lang!r}, entity objects only)")
    return facts


def _check_settings(endpoint: str, lang: str, limit: int | None, page_size: int, timeout: float,
                    retries: int, backoff: float) -> None:
    if urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
        raise KnowpackError(f"SPARQL endpoint {endpoint!r} must be an http:// or https:// URL")
    if not _LANG.fullmatch(lang):
        raise KnowpackError(f"label language {lang!r} is not a language tag such as en or pt-BR")
    if limit is not None and limit < 1 or page_size < 1 or retries < 1:
        raise KnowpackError(f"sparql limit, page_size and retries must be >= 1 "
                            f"(got {limit}, {page_size}, {retries})")
    if timeout <= 0 or backoff < 0:
        raise KnowpackError(f"sparql timeout must be > 0 and backoff >= 0 (got {timeout}, {backoff})")


def _keep_label(labels: dict[str, tuple[bool, str]], aliases: dict[str, list[str]], entity: str,
                label: tuple[str, str], lang: str) -> None:
    """Prefer an exact language match, then the alphabetically first label: deterministic names."""
    text, tag = label
    candidate = (tag.lower() != lang.lower(), text)
    previous = labels.get(entity)
    if previous is None or candidate < previous:
        labels[entity] = candidate
    other = None if previous is None or previous[1] == text else max(candidate, previous)[1]
    if other is not None and other not in aliases[entity]:  # the losing label is an alias
        aliases[entity].append(other)


def _pages(client: _Endpoint, predicate: str, lang: str, limit: int | None,
           page_size: int) -> Iterator[list[tuple[str, str, tuple[str, str], tuple[str, str]]]]:
    """(subject, object, subject label, object label) rows, page by page, until a short page or the limit."""
    offset = 0
    while limit is None or offset < limit:
        size = page_size if limit is None else min(page_size, limit - offset)
        bindings = client.select(_page_query(predicate, lang, size, offset))
        yield [row for row in map(_entity_row, bindings) if row is not None]
        offset += len(bindings)
        if len(bindings) < size:
            return


def _entity_row(binding: dict) -> tuple[str, str, tuple[str, str], tuple[str, str]] | None:
    """Skip rows whose subject or object is not an IRI or lacks a label."""
    try:
        if binding["s"]["type"] != "uri" or binding["o"]["type"] != "uri":
            return None
        return (binding["s"]["value"], binding["o"]["value"],
                (binding["sLabel"]["value"], binding["sLabel"].get("xml:lang", "")),
                (binding["oLabel"]["value"], binding["oLabel"].get("xml:lang", "")))
    except (KeyError, TypeError):
        return None


def _lang_filter(var: str, lang: str) -> str:
    return f"FILTER(langMatches(lang(?{var}), {escape_literal(lang)}))"


def _page_query(predicate: str, lang: str, size: int, offset: int) -> str:
    return (f"PREFIX rdfs: {escape_iri(PREFIXES['rdfs'])}\n"
            "SELECT ?s ?o ?sLabel ?oLabel WHERE {\n"
            f"  ?s {escape_iri(predicate)} ?o .\n"
            "  FILTER(isIRI(?s) && isIRI(?o))\n"
            f"  ?s rdfs:label ?sLabel . {_lang_filter('sLabel', lang)}\n"
            f"  ?o rdfs:label ?oLabel . {_lang_filter('oLabel', lang)}\n"
            f"}}\nORDER BY ?s ?o\nLIMIT {int(size)} OFFSET {int(offset)}")


def _values(var: str, iris: Iterable[str]) -> str:
    return f"VALUES ?{var} {{ {' '.join(escape_iri(iri) for iri in iris)} }}"


def _alias_query(objects: list[str], lang: str, wikidata: bool) -> str | None:
    if not objects:
        return None
    pattern = (f"?o {escape_iri(PREFIXES['skos'] + 'altLabel')} ?alias ." if wikidata else
               f"?r {escape_iri(PREFIXES['dbo'] + 'wikiPageRedirects')} ?o . "
               f"?r {escape_iri(PREFIXES['rdfs'] + 'label')} ?alias .")
    return (f"SELECT ?o ?alias WHERE {{\n  {_values('o', objects)}\n  {pattern}\n"
            f"  {_lang_filter('alias', lang)}\n}}")


def _popularity(client: _Endpoint, subjects: list[str], wikidata: bool) -> dict[str, float]:
    if not subjects:
        return {}
    if wikidata:
        query = (f"SELECT ?s ?n WHERE {{ {_values('s', subjects)} "
                 f"?s {escape_iri('http://wikiba.se/ontology#sitelinks')} ?n }}")
    else:
        query = f"SELECT ?s (COUNT(*) AS ?n) WHERE {{ {_values('s', subjects)} ?s ?p ?x }} GROUP BY ?s"
    counts: dict[str, float] = {}
    for subject, number in client.rows(query, ("s", "n")):
        try:
            counts[subject] = float(number)
            if not math.isfinite(counts[subject]) or counts[subject] < 0:
                raise ValueError(number)
        except ValueError:
            raise KnowpackError(f"SPARQL endpoint {client.url} returned a non-numeric count "
                                f"{number!r} for {subject}") from None
    return counts


class _Endpoint:
    """SELECT queries over HTTP with retries: 429, 5xx, timeouts and dropped connections are retried."""

    def __init__(self, url: str, *, timeout: float, retries: int, backoff: float) -> None:
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff

    def rows(self, query: str | None, names: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        """The values of ``names`` in each result row that binds all of them (none for no query)."""
        for binding in self.select(query) if query else []:
            if all(isinstance(binding.get(n), dict) and "value" in binding[n] for n in names):
                yield tuple(str(binding[n]["value"]) for n in names)

    def select(self, query: str) -> list[dict]:
        body = self._fetch(query)
        try:
            bindings = json.loads(body)["results"]["bindings"]
            if not isinstance(bindings, list) or not all(isinstance(b, dict) for b in bindings):
                raise TypeError("bindings is not a list of objects")
        except (ValueError, KeyError, TypeError) as err:
            raise KnowpackError(f"SPARQL endpoint {self.url} returned a response that is not "
                                f"SPARQL JSON results ({type(err).__name__}: {str(err)[:80]})") from None
        return bindings

    def _request(self, query: str) -> urllib.request.Request:
        headers = {"Accept": "application/sparql-results+json", "User-Agent": USER_AGENT}
        encoded = urllib.parse.urlencode({"query": query})
        url = f"{self.url}{'&' if '?' in self.url else '?'}{encoded}"
        if len(url) <= _MAX_GET_URL:
            return urllib.request.Request(url, headers=headers)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return urllib.request.Request(self.url, data=encoded.encode(), headers=headers, method="POST")

    def _fetch(self, query: str) -> bytes:
        problem = ""
        for attempt in range(self.retries):
            wait = min(self.backoff * 2.0 ** min(attempt, 16), MAX_WAIT)  # min(): no float overflow
            try:
                with urllib.request.urlopen(self._request(query), timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as err:
                with err:
                    problem = f"HTTP {err.code} ({err.reason})"
                    if err.code != 429 and err.code < 500:  # the query or the URL is wrong: retrying won't help
                        raise KnowpackError(f"SPARQL endpoint {self.url} rejected the query: {problem}"
                                            f"{_first_line(err.read())}") from None
                    wait = _retry_after(err.headers.get("Retry-After"), wait)
            except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as err:
                reason = getattr(err, "reason", err)
                timed_out = isinstance(err, TimeoutError) or isinstance(reason, TimeoutError)
                problem = f"timed out after {self.timeout:g} s" if timed_out else f"connection failed ({reason})"
            if attempt + 1 < self.retries:
                _sleep(wait)
        tries = f"{self.retries} {'try' if self.retries == 1 else 'tries'}"
        raise KnowpackError(f"SPARQL endpoint {self.url} failed after {tries}: {problem}")


def _retry_after(header: str | None, default: float) -> float:
    """A Retry-After given in seconds, capped; an HTTP-date or garbage keeps the backoff."""
    try:
        return min(max(float(header), 0.0), MAX_WAIT) if header is not None else default
    except ValueError:
        return default


def _first_line(body: bytes) -> str:
    """The server's explanation (Virtuoso puts the SPARQL syntax error there), shortened to one line."""
    lines = [line.strip() for line in body.decode("utf-8", "replace").splitlines() if line.strip()]
    return f": {lines[0][:200]}" if lines else ""
