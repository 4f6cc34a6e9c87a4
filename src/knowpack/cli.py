"""The `knowpack` command line: one program, one subcommand per stage.

Every subcommand takes ``--preset``, ``--config FILE.yaml`` and dotted ``key=value`` overrides.
A user error prints one line and exits with code 2; no traceback.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from knowpack.config import FactsConfig, RunConfig, SparqlConfig, load_config
from knowpack.errors import KnowpackError
from knowpack.rundir import fingerprint

_default_showwarning = warnings.showwarning  # kept for warnings that are not knowpack's
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="How many new facts can a LoRA adapter hold, and what does packing them in cost?")
console = Console(stderr=True)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="smoke, default or paper")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (sections as in config.yaml)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="run directory")]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. train.lr=5e-4")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
# Listed from the package folder, not typed out, so --help names every shipped sweep (no sweep import).
SHIPPED_SWEEPS = ", ".join(sorted(p.stem for p in (Path(__file__).parent / "sweep" / "configs").glob("*.yaml")))


def _resolve(preset: str, config: Optional[Path], overrides: Optional[list[str]]) -> RunConfig:
    return load_config(preset, config, overrides or [])


def _default_out(preset: str, config: RunConfig) -> Path:
    # Same command, same directory: re-running it resumes instead of starting over.
    return Path("runs") / f"{preset}-{fingerprint(config.model_dump(mode='json'))[:8]}"


def _run_until(until: str, preset, config_file, out, overrides, quiet) -> Path:
    config = _resolve(preset, config_file, overrides)  # config mistakes fail before torch is imported
    out = out or _default_out(preset, config)
    from knowpack.pipeline import run_pipeline

    return run_pipeline(config, out, until=until, progress=not quiet, console=console)


def print_summary(run_dir: Path) -> None:
    from knowpack.artifacts import Metrics, read_artifact
    from knowpack.report import summary_rows

    metrics = read_artifact(run_dir / "metrics.json", Metrics)
    table = Table(title="knowpack summary", show_header=False)
    for name, value in summary_rows(metrics):
        table.add_row(name, value)
    Console().print(table)


@app.command()
def run(preset: PresetOpt = "default", config: ConfigOpt = None, out: OutOpt = None,
        overrides: OverridesArg = None, quiet: QuietOpt = False) -> None:
    """The whole pipeline: facts → probe → train → probe after → evaluate → report."""
    run_dir = _run_until("report", preset, config, out, overrides, quiet)
    print_summary(run_dir)
    typer.echo(str(run_dir))


def _with_default(text: str, section, field: str) -> str:
    # The default shown is the config's, so the CLI never states a second one.
    return f"{text} (default: {section.model_fields[field].default})"


FACTS_OPTIONS = {"max_facts": "--max-facts", "per_relation": "--per-relation", "per_bucket": "--per-bucket",
                 "synthetic_count": "--count", "llm_paraphrases": "--llm-paraphrases", "name_files": "--names",
                 "relations": "--relation", "sparql": "--endpoint/--limit/--page-size/--timeout/--retries"}


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def facts(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="input file (dbpedia-dump, jsonl, csv, parquet); or `stats FILE` to count a facts.jsonl")] = None,
    source: Annotated[Optional[str], typer.Option(help="embedded, dbpedia-dump, sparql, jsonl, csv, parquet or synthetic")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="facts.jsonl to write")] = Path("facts.jsonl"),
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="start from this run config's facts section (options given here win)")] = None,
    relation: Annotated[Optional[list[str]], typer.Option(help="keep only this relation (repeatable)")] = None,
    names: Annotated[Optional[list[Path]], typer.Option(help="dbpedia-dump: labels/redirects dump (repeatable)")] = None,
    max_facts: Annotated[Optional[int], typer.Option(help="sample size (balanced); all if omitted")] = None,
    per_relation: Annotated[Optional[int], typer.Option(help="at most N facts per relation")] = None,
    per_bucket: Annotated[Optional[int], typer.Option(help="at most N facts per (relation, bucket)")] = None,
    count: Annotated[Optional[int], typer.Option(help=_with_default("synthetic: how many facts to make up", FactsConfig, "synthetic_count"))] = None,
    strict: Annotated[Optional[bool], typer.Option(help="stop at the first malformed line instead of skipping it")] = None,
    lang: Annotated[Optional[str], typer.Option(help=_with_default("label language (dbpedia-dump, sparql)", FactsConfig, "lang"))] = None,
    endpoint: Annotated[Optional[str], typer.Option(help=_with_default("sparql: endpoint URL", SparqlConfig, "endpoint"))] = None,
    limit: Annotated[Optional[int], typer.Option(help=_with_default("sparql: rows per relation", SparqlConfig, "limit"))] = None,
    page_size: Annotated[Optional[int], typer.Option(help=_with_default("sparql: rows per request", SparqlConfig, "page_size"))] = None,
    timeout: Annotated[Optional[float], typer.Option(help=_with_default("sparql: seconds per request", SparqlConfig, "timeout"))] = None,
    retries: Annotated[Optional[int], typer.Option(help=_with_default("sparql: tries per request", SparqlConfig, "retries"))] = None,
    llm_paraphrases: Annotated[Optional[int], typer.Option(help=_with_default("LLM paraphrases per fact (0: templates only)", FactsConfig, "llm_paraphrases"))] = None,
    paraphrase_model: Annotated[Optional[str], typer.Option(help=_with_default("model writing LLM paraphrases", FactsConfig, "paraphrase_model"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_with_default("sampling seed", FactsConfig, "seed"))] = None,
    quiet: QuietOpt = False,
) -> None:
    """Build question/answer facts and write them to a JSONL file (or: knowpack facts stats FILE).

    The options are the ``facts`` section of a run config (`FactsConfig`), whose defaults apply to any left out.
    """
    from knowpack.facts import build_facts, facts_to_jsonl
    from knowpack.rundir import atomic_path

    inputs = inputs or []
    if inputs[:1] == ["stats"]:
        if len(inputs) != 2:
            raise KnowpackError("usage: knowpack facts stats FILE (one facts.jsonl)")
        print_facts_stats(Path(inputs[1]))
        return
    if len(inputs) > 1:
        raise KnowpackError(f"facts: one input file, got {len(inputs)}; pass label/redirect dumps with --names")
    if out.is_dir():
        raise KnowpackError(f"--out {out}: is a directory; give the facts.jsonl file to write")
    given = {"source": source, "path": inputs[0] if inputs else None, "name_files": [str(p) for p in names or []] or None,
             "relations": relation or None, "lang": lang, "strict": strict, "synthetic_count": count,
             "max_facts": max_facts, "per_relation": per_relation, "per_bucket": per_bucket,
             "llm_paraphrases": llm_paraphrases, "paraphrase_model": paraphrase_model, "seed": seed,
             "sparql": {"endpoint": endpoint, "limit": limit, "page_size": page_size, "timeout": timeout,
                        "retries": retries}}
    built = build_facts(_facts_settings(config, given), progress=not quiet)
    with atomic_path(out) as temp:
        temp.write_text(facts_to_jsonl(built), encoding="utf-8")
    relations = {f.relation for f in built}
    console.print(f"{len(built)} facts over {len(relations)} relations → {out}")


def _facts_settings(config_file: Optional[Path], given: dict):
    """`FactsConfig` from the options given (None: left out) over ``config_file``'s facts section, or over the
    defaults with every fact kept (no ``max_facts`` sample) when there is no file."""
    from pydantic import ValidationError

    from knowpack.errors import first_problem

    base = load_config("default", config_file).facts.model_dump() if config_file else {"max_facts": None}
    settings = {**base, **{k: v for k, v in given.items() if v is not None and k != "sparql"}}
    settings["sparql"] = {**base.get("sparql", {}), **{k: v for k, v in given["sparql"].items() if v is not None}}
    try:
        return FactsConfig.model_validate(settings)
    except ValidationError as err:
        _, first = first_problem(err)
        option = FACTS_OPTIONS.get(str(first["loc"][0]), f"--{first['loc'][0]}")
        raise KnowpackError(f"facts {option}: {first['msg']} (got {first.get('input')!r})") from err


def print_facts_stats(path: Path) -> None:
    from knowpack.facts import facts_stats

    stats = facts_stats(path)
    buckets = ["head", "torso", "tail", "none"]
    shown = [b for b in buckets if b in stats["buckets"]]  # type: ignore[operator]
    table = Table(title=f"{path}: {stats['facts']} facts")
    table.add_column("relation")
    for bucket in [*shown, "total"]:
        table.add_column(bucket, justify="right")
    for name, counts in stats["relations"].items():  # type: ignore[union-attr]
        table.add_row(name, *[str(counts.get(b, 0)) for b in shown], str(sum(counts.values())))
    table.add_row("[bold]total[/bold]", *[str(stats["buckets"].get(b, 0)) for b in shown],  # type: ignore[union-attr]
                  str(stats["facts"]), end_section=True)
    Console().print(table)
    Console().print(f"aliases per fact {stats['mean_aliases']:.2f} · paraphrases per fact "
                    f"{stats['mean_paraphrases']:.2f} · sources {stats['sources']}")


@app.command()
def probe(preset: PresetOpt = "default", config: ConfigOpt = None, out: OutOpt = None,
          overrides: OverridesArg = None, quiet: QuietOpt = False,
          data: Annotated[Optional[Path], typer.Option(
              "--data", help="audit mode: label this QA JSONL (e.g. your SFT data) instead of the run's facts")] = None,
          ) -> None:
    """Probe the base model: knowledge categories of every fact (facts → probe_before)."""
    from knowpack.rundir import RunDir

    if data is not None:
        from knowpack.probe.audit import run_audit

        run_dir = run_audit(_resolve(preset, config, overrides), data, out or Path("runs") / f"audit-{data.stem}",
                            progress=not quiet, console=console)
        counts = RunDir(run_dir).read_table("audit_categories.parquet")["category"].value_counts()
    else:
        run_dir = _run_until("probe_before", preset, config, out, overrides, quiet)
        counts = RunDir(run_dir).read_table("categories_before.parquet")["category"].value_counts()
    total = int(counts.sum())
    for category, count in counts.items():
        console.print(f"  {category}: {count} ({count / total:.1%})")
    typer.echo(str(run_dir))


@app.command()
def train(preset: PresetOpt = "default", config: ConfigOpt = None, out: OutOpt = None,
          overrides: OverridesArg = None, quiet: QuietOpt = False) -> None:
    """Train the LoRA adapter on the configured mixture (runs facts and probe first if needed)."""
    from knowpack.train.stage import trained_dir_name

    run_dir = _run_until("train", preset, config, out, overrides, quiet)
    typer.echo(str(run_dir / trained_dir_name(_resolve(preset, config, overrides).train)))


@app.command("eval")
def evaluate(preset: PresetOpt = "default", config: ConfigOpt = None, out: OutOpt = None,
             overrides: OverridesArg = None, quiet: QuietOpt = False,
             adapter: Annotated[Optional[Path], typer.Option(
                 help="evaluate this PEFT adapter folder (any adapter for model.name) instead of the run's")] = None,
             ) -> None:
    """Probe the adapted model and write metrics.json (runs earlier stages if needed)."""
    if adapter is not None:
        from knowpack.pipeline import evaluate_adapter

        settings = _resolve(preset, config, overrides)
        run_dir = evaluate_adapter(settings, adapter, out or Path("runs") / f"eval-{adapter.resolve().name}",
                                   progress=not quiet, console=console)
    else:
        run_dir = _run_until("evaluate", preset, config, out, overrides, quiet)
    print_summary(run_dir)
    typer.echo(str(run_dir / "metrics.json"))


@app.command("shift")
def token_shift_command(
        adapter: Annotated[Path, typer.Option(help="PEFT adapter folder, e.g. runs/a/adapter")],
        preset: PresetOpt = "default", config: ConfigOpt = None, overrides: OverridesArg = None,
        prompts: Annotated[Optional[Path], typer.Option(
            help="text file, one prompt per line (default: questions of the configured facts)")] = None,
        max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
        train_set: Annotated[Optional[Path], typer.Option(
            help="the adapter's training set (a run's train_set.jsonl), for the copied shares")] = None) -> None:
    """Token distribution shift (URIAL): rank of each tuned-model token under the base model."""
    import json

    from knowpack.evaluate.stage import adapter_shift

    result = adapter_shift(_resolve(preset, config, overrides), adapter, prompts, max_new_tokens, train_set)
    table = Table(title=f"token shift of {adapter} over {result['tokens']} generated tokens", show_header=False)
    for key in ("unshifted", "marginal", "shifted", "mean_kl", "mean_base_prob"):
        table.add_row(key, f"{result[key]:.4f}")
    for key in ("kl_top5_share", "style", "copied", "copied_content"):  # None when undefined (copied: no --train-set)
        table.add_row(key, "—" if result[key] is None else f"{result[key]:.4f}")
    table.add_row("KL at percentiles 50/90/95/99", " / ".join(
        "—" if v is None else f"{v:.4f}" for v in result["kl_percentiles"].values()))
    table.add_row("most shifted tokens", ", ".join(f"{token!r}×{count}" for token, count in result["top_shifted"]))
    Console().print(table)
    typer.echo(json.dumps(result, ensure_ascii=False))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a finished run directory or a sweep directory")]) -> None:
    """Write report.md and a self-contained report.html (with figures) for a run or a sweep directory."""
    from knowpack.report import write_any_report

    md, page = write_any_report(run_dir)
    typer.echo(f"{md}\n{page}")


@app.command()
def sweep(config: Annotated[str, typer.Option("--config", "-c", help=f"sweep YAML, or a shipped one: {SHIPPED_SWEEPS}")],
          out: Annotated[Path, typer.Option("--out", "-o", help="sweep directory")] = Path("runs/sweep"),
          workers: Annotated[int, typer.Option("--workers", "-w", help="runs in parallel (one process each)")] = 1,
          executor: Annotated[str, typer.Option(help="local (worker processes) or ray")] = "local",
          address: Annotated[Optional[str], typer.Option(help="ray: an existing cluster, HOST:PORT or auto; default: start a local Ray")] = None,
          connect_timeout: Annotated[float, typer.Option(help="ray: seconds to wait for --address to answer")] = 10.0,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="check the sweep file and list its runs; run nothing")] = False,
          quiet: QuietOpt = False) -> None:
    """Run a grid of configurations in parallel; one results table (results.parquet) with config fields + metrics."""
    from knowpack.sweep import plan_sweep, run_sweep

    if dry_run:
        planned = plan_sweep(config)
        table = Table(title=f"{config}: {len(planned)} runs")
        table.add_column("run")
        table.add_column("grid point")
        for run_id, point in planned:
            table.add_row(run_id, ", ".join(f"{k}={v}" for k, v in point.items()))
        Console().print(table)
        return
    table = run_sweep(config, out, workers=workers, executor=executor, address=address,
                      connect_timeout=connect_timeout, progress=not quiet, console=console)
    typer.echo(str(table))


@app.command()
def laws(source: Annotated[Path, typer.Argument(help="a sweep directory or its results.parquet")],
         target: Annotated[float, typer.Option(help="reliability the capacity estimate must keep")] = 0.95,
         bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for the capacity interval")] = 500,
         seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
         out: Annotated[Optional[Path], typer.Option("--out", "-o", help="laws.json to write (default: beside the table)")] = None,
         ) -> None:
    """Fit forgetting laws, reliability vs N (capacity at --target) and Pareto fronts; writes laws.json."""
    from knowpack.laws import write_laws
    from knowpack.laws.show import laws_table

    fitted, path = write_laws(source, target, bootstrap, seed, out)
    Console().print(laws_table(fitted))
    typer.echo(str(path))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from knowpack.errors import KnowpackWarning

    if issubclass(category, KnowpackWarning):
        console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


class _NoteHandler(logging.Handler):
    """knowpack's informational log lines (e.g. which decoding path a model gets) as dim ``note:`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        console.print(f"[dim]note: {escape(record.getMessage())}[/dim]", highlight=False, soft_wrap=True)


def _show_notes() -> None:
    logger = logging.getLogger("knowpack")
    if not any(isinstance(handler, _NoteHandler) for handler in logger.handlers):  # main() may run repeatedly
        logger.addHandler(_NoteHandler(logging.INFO))
    logger.setLevel(logging.INFO)


def main() -> None:
    warnings.showwarning = _show_warning
    _show_notes()
    try:
        app(standalone_mode=False)
    except KnowpackError as err:
        from rich.markup import escape  # a message may hold brackets, e.g. pip install 'knowpack[ray]'

        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except MemoryError:
        console.print("error: out of memory; lower probe.batch_size / train.batch_size, use model.dtype=bfloat16 (on hardware with bf16), "
                      "or a smaller model (finished stages are kept; rerun to resume)")
        sys.exit(3)
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume from the last finished stage")
        sys.exit(130)
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (GPU), without importing torch
            console.print(f"error: out of GPU memory ({str(err).splitlines()[0][:160]}); lower probe.batch_size / "
                          "train.batch_size or use a smaller model (finished stages are kept; rerun to resume)")
            sys.exit(3)

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
