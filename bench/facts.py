"""Facts benchmark: streaming a DBpedia-format dump, against rdflib's N-Triples parser, same run.

Writes a dump in the real ``mappingbased-objects_lang=en.ttl`` line format (default 1,000,000
lines: uniform subjects, Pareto-distributed objects, 20 dbo relations, percent-encoded and ``\\u``-escaped IRIs, 0.1%
malformed lines), then, each in a fresh child process so peak memory is its own:

- knowpack: `dbpedia_facts` on the plain file and on the .bz2 (lines/s, peak RSS, facts built),
  and `build_facts` drawing a balanced 400-fact sample from the .bz2 (only those facts are built);
- reference: rdflib (the Python RDF library) parsing the first ``--reference-lines`` lines of the
  plain file into a Graph, lines/s and peak RSS; rdflib stops at a malformed line, so the
  reference reads only well-formed lines.

Prints the ratio knowpack lines/s ÷ rdflib lines/s and the time of `knowpack facts --source embedded`.

    python bench/facts.py                 # 1,000,000 lines
    python bench/facts.py --lines 200000  # a quick look
"""

from __future__ import annotations

import argparse
import bz2
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

R = "http://dbpedia.org/resource/"
O = "http://dbpedia.org/ontology/"
RELATIONS = ["birthPlace", "deathPlace", "country", "capital", "currency", "officialLanguage", "location",
             "team", "genre", "author", "director", "almaMater", "nationality", "headquarter", "founder",
             "city", "state", "region", "language", "producer"]
_SYLLABLES = ["ka", "lo", "ri", "me", "su", "ta", "no", "vi", "de", "ga", "zu", "po", "an", "el", "is"]


def entity(rng: random.Random, index: int) -> str:
    name = "".join(_SYLLABLES[(index >> (4 * k)) % 15] for k in range(4)).capitalize() + f"_{index}"
    roll = index % 50
    if roll == 0:
        return f"<{R}S%C3%A3o_{name}>"  # percent-encoded UTF-8
    if roll == 1:
        return f"<{R}{name}_(disambiguation)>"
    if roll == 2:
        return f"<{R}Z\\u00FCrich_{name}>"  # N-Triples \u escape
    if roll == 3:
        return f"<{R}{name},_Alabama>"
    return f"<{R}{name}>"


def write_dump(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    entities = max(lines // 5, 10)
    with path.open("w", encoding="utf-8") as out:
        out.write("# started 2022-12-01T00:00:00Z\n")
        for number in range(lines - 2):
            if number % 1000 == 999:
                out.write(f"{entity(rng, number)} <{O}capital> <{R}broken\n")  # malformed
                continue
            subject = rng.randrange(entities)  # most subjects in a few triples, as in DBpedia
            obj = int(rng.paretovariate(0.8) * 7) % entities  # objects skewed: countries, cities ...
            out.write(f"{entity(rng, subject)} <{O}{rng.choice(RELATIONS)}> {entity(rng, obj)} .\n")
        out.write("# completed 2022-12-01T01:00:00Z\n")


# VmHWM, not ru_maxrss: ru_maxrss survives exec and would include this (parent) process's size.
PEAK = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

KNOWPACK = PEAK + """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from knowpack.facts.dbpedia import dbpedia_facts, read_triples
start = time.perf_counter()
for _ in read_triples(sys.argv[1]):
    pass
parse = time.perf_counter() - start
start = time.perf_counter()
facts = dbpedia_facts([sys.argv[1]])
seconds = time.perf_counter() - start
print(json.dumps({"parse_seconds": parse, "seconds": seconds, "facts": len(facts), "peak_mb": peak_mb()}))
"""

SAMPLE = PEAK + """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from knowpack.config import FactsConfig
from knowpack.facts import build_facts
start = time.perf_counter()
facts = build_facts(FactsConfig(source="dbpedia-dump", path=sys.argv[1], max_facts=400))
print(json.dumps({"seconds": time.perf_counter() - start, "facts": len(facts), "peak_mb": peak_mb()}))
"""

RDFLIB = PEAK + """
import json, sys, time
import rdflib
lines = [l for l in open(sys.argv[1], encoding="utf-8").readlines()[: int(sys.argv[2])] if l.rstrip().endswith(" .")]
start = time.perf_counter()
graph = rdflib.Graph().parse(data="".join(lines), format="nt")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "lines": len(lines), "triples": len(graph), "peak_mb": peak_mb()}))
"""

BASELINE = PEAK + """
import json, sys
print(json.dumps({"peak_mb": peak_mb()}))
"""


def child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--reference-lines", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "mappingbased-objects_lang=en.ttl"
        start = time.perf_counter()
        write_dump(dump, args.lines)
        packed = dump.with_suffix(".ttl.bz2")
        packed.write_bytes(bz2.compress(dump.read_bytes(), compresslevel=9))
        print(f"wrote {args.lines:,} lines ({dump.stat().st_size / 1e6:.0f} MB, bz2 {packed.stat().st_size / 1e6:.0f} MB)"
              f" in {time.perf_counter() - start:.0f} s")
        python_mb = child(BASELINE)["peak_mb"]
        plain = child(KNOWPACK, str(dump))
        compressed = child(KNOWPACK, str(packed))
        sampled = child(SAMPLE, str(packed))
        reference = child(RDFLIB, str(dump), str(args.reference_lines))
    ours = args.lines / plain["parse_seconds"]
    theirs = reference["lines"] / reference["seconds"]
    print(f"python interpreter alone: peak {python_mb:.0f} MB")
    for name, result in (("plain", plain), ("bz2", compressed)):
        print(f"knowpack {name}: parse {result['parse_seconds']:.1f} s ({args.lines / result['parse_seconds']:,.0f} "
              f"lines/s); parse + build facts {result['seconds']:.1f} s ({args.lines / result['seconds']:,.0f} "
              f"lines/s), peak {result['peak_mb']:.0f} MB, {result['facts']:,} facts")
    print(f"knowpack bz2, balanced sample of {sampled['facts']} facts (a run's facts stage): {sampled['seconds']:.1f} s "
          f"({args.lines / sampled['seconds']:,.0f} lines/s), peak {sampled['peak_mb']:.0f} MB")
    print(f"rdflib (nt, first {reference['lines']:,} lines): {reference['seconds']:.1f} s, {theirs:,.0f} lines/s, "
          f"peak {reference['peak_mb']:.0f} MB")
    print(f"ratio knowpack parse / rdflib parse, lines/s: {ours / theirs:.1f}x")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "knowpack", "facts", "--source", "embedded", "--quiet",
                    "--out", str(Path(tempfile.gettempdir()) / "knowpack-bench-embedded.jsonl")], check=True)
    print(f"knowpack facts --source embedded: {time.perf_counter() - start:.1f} s (target < 30 s)")


if __name__ == "__main__":
    main()
