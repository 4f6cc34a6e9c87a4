"""The SPARQL source against a fake endpoint on 127.0.0.1 that runs each query with rdflib.

No test touches the internet. Every query the client sends is checked with rdflib's SPARQL parser
and executed over a small in-memory graph, so a malformed or injected query fails the test.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rdflib import Graph, Literal
from rdflib.plugins.sparql import prepareQuery

from knowpack.errors import KnowpackError
from knowpack.facts import sparql
from knowpack.facts.sparql import escape_iri, escape_literal, resolve_relation, sparql_facts

DATA = """
@prefix dbo: <http://dbpedia.org/ontology/> .
@prefix dbr: <http://dbpedia.org/resource/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix wd: <http://www.wikidata.org/entity/> .
@prefix wdt: <http://www.wikidata.org/prop/direct/> .
@prefix skos: <http://www.w3.org/2004/02/skos/core#> .
@prefix wikibase: <http://wikiba.se/ontology#> .

dbr:France dbo:capital dbr:Paris ; rdfs:label "France"@en, "La France"@fr ;
    dbo:currency dbr:Euro ; dbo:officialLanguage dbr:French_language ; dbo:anthem dbr:Marseillaise ;
    dbo:motto "Liberte" ; dbo:population 68000000 ; dbo:area 643801 ; dbo:leader dbr:Macron .
dbr:Germany dbo:capital dbr:Berlin ; rdfs:label "Germany"@en .
dbr:Italy dbo:capital dbr:Rome ; rdfs:label "Italy"@en .
dbr:Japan dbo:capital dbr:Tokyo ; rdfs:label "Japan"@en .
dbr:Spain dbo:capital dbr:Madrid ; rdfs:label "Spain"@en .
dbr:Atlantis dbo:capital dbr:Poseidonis ; rdfs:label "Atlantis"@de .   # no English label: skipped
dbr:Narnia dbo:capital "Cair Paravel"@en ; rdfs:label "Narnia"@en .     # literal object: skipped
dbr:Paris rdfs:label "Paris"@en . dbr:Berlin rdfs:label "Berlin"@en . dbr:Rome rdfs:label "Rome"@en .
dbr:Tokyo rdfs:label "Tokyo"@en . dbr:Madrid rdfs:label "Madrid"@en . dbr:Poseidonis rdfs:label "Poseidonis"@de .
dbr:City_of_Light dbo:wikiPageRedirects dbr:Paris ; rdfs:label "City of Light"@en .
dbr:Lutetia dbo:wikiPageRedirects dbr:Paris ; rdfs:label "Lutetia"@en, "Lutèce"@fr .
dbr:Roma dbo:wikiPageRedirects dbr:Rome ; rdfs:label "Roma"@en .

wd:Q142 wdt:P36 wd:Q90 ; rdfs:label "France"@en ; wikibase:sitelinks 400 .
wd:Q183 wdt:P36 wd:Q64 ; rdfs:label "Germany"@en ; wikibase:sitelinks 350 .
wd:Q29 wdt:P36 wd:Q2807 ; rdfs:label "Spain"@en ; wikibase:sitelinks 10 .
wd:Q90 rdfs:label "Paris"@en ; skos:altLabel "City of Light"@en, "Ville Lumière"@fr .
wd:Q64 rdfs:label "Berlin"@en, "Athens on the Spree"@en-GB, "Berlin"@en-US . wd:Q2807 rdfs:label "Madrid"@en .
"""
GRAPH = Graph().parse(data=DATA, format="turtle")
CAPITAL = "http://dbpedia.org/ontology/capital"


@dataclass
class Reply:
    """A scripted answer that replaces the honest one: status, headers, body, delay."""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass
class FakeEndpoint:
    url: str
    queries: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    script: list[Reply] = field(default_factory=list)

    def main_queries(self) -> list[str]:
        return [q for q in self.queries if "ORDER BY" in q]


def _answer(endpoint: FakeEndpoint, query: str) -> Reply:
    try:
        prepared = prepareQuery(query)
    except Exception as err:  # any parse error is a client bug: record it and answer 400 like Virtuoso
        endpoint.invalid.append((query, str(err)))
        return Reply(400, body=f"SPARQL syntax error: {err}".encode())
    return Reply(body=GRAPH.query(prepared).serialize(format="json"))


def _handler(endpoint: FakeEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve(urllib.parse.urlsplit(self.path).query)

        def do_POST(self) -> None:
            self._serve(self.rfile.read(int(self.headers["Content-Length"])).decode())

        def _serve(self, form: str) -> None:
            query = urllib.parse.parse_qs(form)["query"][0]
            endpoint.queries.append(query)
            endpoint.methods.append(self.command)
            endpoint.headers.append(dict(self.headers))
            reply = endpoint.script.pop(0) if endpoint.script else _answer(endpoint, query)
            time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                for name, value in {"Content-Type": "application/sparql-results+json", **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(params=["sparql"])
def endpoint(request):
    """A fake endpoint; ``@pytest.mark.parametrize("endpoint", ["wikidata/sparql"], indirect=True)`` changes the path."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)  # type: ignore[arg-type]
    fake = FakeEndpoint(f"http://127.0.0.1:{server.server_address[1]}/{request.param}")
    server.RequestHandlerClass = _handler(fake)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    assert fake.invalid == [], "the client sent invalid SPARQL"


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(sparql, "_sleep", waits.append)
    return waits


def test_facts_with_aliases_buckets_and_valid_queries(endpoint):
    facts = sparql_facts(["dbo:capital"], endpoint=endpoint.url)
    by_subject = {fact.subject: fact for fact in facts}
    assert sorted(by_subject) == ["France", "Germany", "Italy", "Japan", "Spain"]  # no Atlantis, Narnia
    france = by_subject["France"]
    assert (france.relation, france.question, france.answer) == ("capital", "What is the capital of France?", "Paris")
    assert france.aliases == ["Paris", "City of Light", "Lutetia"]  # English redirect labels only
    assert by_subject["Italy"].aliases == ["Rome", "Roma"]
    assert france.source == "sparql:dbpedia" and france.paraphrases
    # France is in 10 triples, the others in 2 each (total 18): France is the head, Germany the tail.
    assert france.bucket == "head" and by_subject["Germany"].bucket == "tail"
    headers = endpoint.headers[0]
    assert headers["Accept"] == "application/sparql-results+json" and "knowpack" in headers["User-Agent"]
    assert all(method == "GET" for method in endpoint.methods)


@pytest.mark.parametrize("endpoint", ["wikidata/sparql"], indirect=True)
def test_wikidata_dialect_maps_property_ids_and_uses_sitelinks(endpoint):
    facts = sparql_facts(["P36"], endpoint=endpoint.url)
    by_subject = {fact.subject: fact for fact in facts}
    assert sorted(by_subject) == ["France", "Germany", "Spain"]
    assert by_subject["France"].relation == "capital" and by_subject["France"].source == "sparql:wikidata"
    assert by_subject["France"].aliases == ["Paris", "City of Light"]  # skos:altLabel in English
    assert by_subject["Germany"].aliases == ["Berlin", "Athens on the Spree"]  # "en" beats en-GB
    assert by_subject["Spain"].bucket == "tail" and by_subject["France"].bucket == "head"
    assert any("sitelinks" in q for q in endpoint.queries)


def test_pages_until_a_short_page(endpoint):
    facts = sparql_facts([CAPITAL], endpoint=endpoint.url, page_size=2)
    assert len(facts) == 5
    pages = endpoint.main_queries()
    assert [q.rsplit("\n", 1)[-1] for q in pages] == ["LIMIT 2 OFFSET 0", "LIMIT 2 OFFSET 2", "LIMIT 2 OFFSET 4"]


def test_limit_caps_the_rows(endpoint):
    facts = sparql_facts(["capital"], endpoint=endpoint.url, page_size=2, limit=3)
    assert [fact.subject for fact in facts] == ["France", "Germany", "Italy"]  # ORDER BY ?s
    assert [q.rsplit("\n", 1)[-1] for q in endpoint.main_queries()] == ["LIMIT 2 OFFSET 0", "LIMIT 1 OFFSET 2"]


def test_long_queries_are_posted(endpoint, monkeypatch):
    monkeypatch.setattr(sparql, "_MAX_GET_URL", 10)
    assert len(sparql_facts(["dbo:capital"], endpoint=endpoint.url)) == 5
    assert set(endpoint.methods) == {"POST"}


def test_retries_503_with_exponential_backoff(endpoint, no_waiting):
    endpoint.script = [Reply(503), Reply(503)]
    assert len(sparql_facts(["dbo:capital"], endpoint=endpoint.url, backoff=0.5)) == 5
    assert no_waiting == [0.5, 1.0]


def test_429_honours_retry_after_capped(endpoint, no_waiting):
    endpoint.script = [Reply(429, {"Retry-After": "7"}), Reply(429, {"Retry-After": "9999"}),
                       Reply(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
    assert len(sparql_facts(["dbo:capital"], endpoint=endpoint.url, backoff=1.0)) == 5
    assert no_waiting == [7.0, sparql.MAX_WAIT, 4.0]  # an HTTP-date keeps the backoff (1 * 2**2)


def test_gives_up_after_the_last_try(endpoint, no_waiting):
    endpoint.script = [Reply(503)] * 4
    with pytest.raises(KnowpackError) as err:
        sparql_facts(["dbo:capital"], endpoint=endpoint.url)
    assert str(err.value) == f"SPARQL endpoint {endpoint.url} failed after 4 tries: HTTP 503 (Service Unavailable)"
    assert len(endpoint.queries) == 4 and no_waiting == [1.0, 2.0, 4.0]


def test_timeout(endpoint):
    endpoint.script = [Reply(delay=0.6), Reply(delay=0.6)]
    with pytest.raises(KnowpackError, match=r"failed after 2 tries: timed out after 0\.1 s"):
        sparql_facts(["dbo:capital"], endpoint=endpoint.url, timeout=0.1, retries=2)


def test_connection_refused_is_retried_then_reported():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on the port any more
    with pytest.raises(KnowpackError, match=r"failed after 2 tries: connection failed"):
        sparql_facts(["dbo:capital"], endpoint=f"http://127.0.0.1:{port}/sparql", retries=2)


def test_client_error_fails_at_once(endpoint, no_waiting):
    endpoint.script = [Reply(400, body=b"\nVirtuoso 37000 Error SP030: bad query\nmore")]
    with pytest.raises(KnowpackError, match=r"rejected the query: HTTP 400 \(Bad Request\): Virtuoso 37000"):
        sparql_facts(["dbo:capital"], endpoint=endpoint.url)
    assert len(endpoint.queries) == 1 and no_waiting == []


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"head": {"vars": []}}', b'{"results": {"bindings": 3}}'])
def test_malformed_response(endpoint, body):
    endpoint.script = [Reply(body=body)]
    with pytest.raises(KnowpackError, match=f"SPARQL endpoint {endpoint.url} returned a response that is not SPARQL JSON"):
        sparql_facts(["dbo:capital"], endpoint=endpoint.url)


def test_empty_result(endpoint):
    with pytest.raises(KnowpackError, match=r"returned no usable facts for relations dbo:birthPlace"):
        sparql_facts(["dbo:birthPlace"], endpoint=endpoint.url)


@pytest.mark.parametrize("lang", ['en") } ; DROP ALL ; #', "", "en_US", "toolonglanguage"])
def test_bad_language_is_refused_before_any_request(endpoint, lang):
    with pytest.raises(KnowpackError, match="label language"):
        sparql_facts(["dbo:capital"], endpoint=endpoint.url, lang=lang)
    assert endpoint.queries == []


def test_relation_errors():
    with pytest.raises(KnowpackError, match=r"^sparql source needs --relation, e\.g\. --relation dbo:capital$"):
        sparql_facts([])
    with pytest.raises(KnowpackError, match=r"'foo:bar': unknown prefix 'foo' \(known prefixes: dbo, dbp"):
        sparql_facts(["foo:bar"], endpoint="http://127.0.0.1:9/sparql")
    with pytest.raises(KnowpackError, match="must be an http"):
        sparql_facts(["dbo:capital"], endpoint="file:///etc/passwd")


def test_resolve_relation():
    wdt = "http://www.wikidata.org/prop/direct/"
    assert resolve_relation("P36", wikidata=True) == (wdt + "P36", "capital")
    assert resolve_relation("wdt:P1082", wikidata=True) == (wdt + "P1082", "P1082")
    assert resolve_relation(f"<{wdt}P19>", wikidata=False) == (wdt + "P19", "birthPlace")
    assert resolve_relation("dbo:birthPlace", wikidata=False) == ("http://dbpedia.org/ontology/birthPlace", "birthPlace")
    assert resolve_relation("capital", wikidata=False) == (CAPITAL, "capital")
    assert resolve_relation("http://xmlns.com/foaf/0.1/based_near", wikidata=False)[1] == "based_near"


NASTY = ['plain', 'say "hi"', "back\\slash", "line\nbreak\r\ttab", "{braces} | ^ `", 'en") } ; DROP ALL ; #',
         "\\u0022) } ; DROP ALL ; #", "\\\\U00000022", "trailing\\", "Lutèce \u2603"]


@pytest.mark.parametrize("text", NASTY)
def test_escape_literal_round_trips_through_a_sparql_parser(text):
    query = f"SELECT ?x WHERE {{ BIND({escape_literal(text)} AS ?x) }}"
    rows = list(Graph().query(prepareQuery(query)))
    assert len(rows) == 1 and rows[0][0] == Literal(text)  # one row, one value: the structure held


@pytest.mark.parametrize("text", NASTY)
def test_escape_iri_cannot_leave_the_iri(text):
    iri = "http://example.org/" + text
    query = f"SELECT ?o WHERE {{ {escape_iri(iri)} ?p ?o }}"
    prepared = prepareQuery(query)
    subject = prepared.algebra["p"]["p"]["triples"][0][0]
    assert urllib.parse.unquote(str(subject)) == iri
    assert escape_iri("http://dbpedia.org/resource/Paris") == "<http://dbpedia.org/resource/Paris>"


def test_injected_relation_stays_inside_the_iri(endpoint):
    with pytest.raises(KnowpackError, match="no usable facts"):
        sparql_facts([CAPITAL + "> } ; DROP ALL ; #"], endpoint=endpoint.url)
    assert "%3E%20%7D%20;%20DROP%20ALL%20;%20#>" in endpoint.queries[0]


def test_progress_bar_runs(endpoint):
    assert len(sparql_facts(["dbo:capital"], endpoint=endpoint.url, progress=True, page_size=2)) == 5


def test_queries_are_valid_sparql_11_for_both_dialects():
    for wikidata in (False, True):
        for query in (sparql._page_query(CAPITAL, "pt-BR", 10, 20),
                      sparql._alias_query([CAPITAL, "http://x/{a}"], "en", wikidata)):
            prepareQuery(query)


def test_cli_sparql_source(endpoint, run_cli, tmp_path):
    out = tmp_path / "facts.jsonl"
    result = run_cli("facts", "--source", "sparql", "--endpoint", endpoint.url, "--relation", "dbo:capital",
                     "--page-size", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 5
    missing = run_cli("facts", "--source", "sparql", "--endpoint", endpoint.url, "--out", str(tmp_path / "x.jsonl"))
    assert missing.returncode == 2 and "needs --relation" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "x.jsonl").exists()
