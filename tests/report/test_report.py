"""Run and sweep reports: every section the metrics support, rendered by headless Chromium with no broken image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from knowpack.report import write_any_report, write_report, write_sweep_report
from knowpack.rundir import RunDir
from knowpack.sweep.results import collect_rows, write_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
RUN_SECTIONS = ["summary", "reliability", "shift", "answers", "reasons", "benchmarks", "forgetting", "token-shift",
                "locality", "training", "configuration"]
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight].join(':'));
  document.body.setAttribute('data-images', images.join(','));
  document.body.setAttribute('data-sections', [...document.querySelectorAll('section')].map(s => s.id).join(','));
});</script>"""


def render(page: Path, tmp_path: Path) -> dict:
    """Open a copy of ``page`` in headless Chromium; what the browser saw: section ids and image sizes."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium, or scripts/setup.sh as root)")
    probe = tmp_path / f"probe-{page.parent.name}.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    images = re.search(r'data-images="([^"]*)"', result.stdout)
    sections = re.search(r'data-sections="([^"]*)"', result.stdout)
    assert images and sections, "the page did not finish loading"
    return {"sections": sections.group(1).split(","),
            "images": [tuple(part.split(":")) for part in images.group(1).split(",") if part]}


def assert_images_render(seen: dict, expected: int) -> None:
    assert len(seen["images"]) == expected
    for complete, width, height in seen["images"]:
        assert complete == "true" and int(width) > 100 and int(height) > 100, seen["images"]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """A real run of the tiny model, plus the locality metrics another stage adds."""
    from rich.console import Console

    from knowpack.config import load_config
    from knowpack.pipeline import run_pipeline

    overrides = [f"model.name={tiny_model_dir}", "facts.max_facts=16", "probe.num_prompts=2", "probe.shots=1",
                 "probe.max_new_tokens=4", "mixture.n_unknown=3", "train.epochs=2", "train.batch_size=2",
                 "eval.benchmark_questions=2", "eval.mmlu_shots=0", "eval.forgetting_passages=2",
                 "eval.token_shift_prompts=2"]
    run_dir = run_pipeline(load_config("smoke", overrides=overrides), tmp_path_factory.mktemp("run") / "run",
                           progress=False, console=Console(quiet=True))
    run = RunDir(run_dir)
    metrics = run.read_json("metrics.json")
    metrics["locality"] = {"subject": 0.75, "relation": None, "facts_subject": 4, "facts_relation": 0}
    run.write_json("metrics.json", metrics)
    return run_dir


def test_run_report_has_a_section_for_every_part_of_the_metrics(tiny_run, tmp_path):
    markdown, page = write_report(tiny_run)
    text = markdown.read_text()
    for title in ("## Summary", "## Reliability", "## Knowledge shift", "## Answers before and after",
                  "## Exploded answers and shift reasons", "## Benchmarks", "## Forgetting", "## Token distribution",
                  "## Locality", "## Training", "## Configuration"):
        assert title in text
    assert "| same subject as a trained fact | 0.750 | 4 |" in text and "| same relation as a trained fact | — | 0 |" in text
    shift = RunDir(tiny_run).read_json("metrics.json")["token_shift"]
    assert shift["training_texts"] > 0  # the copied share read the run's train_set.jsonl
    assert "KL at position percentile 95" in text and "share of total KL in the top 5% of positions" in text
    assert f"({shift['training_texts']} training questions and answers)" in text
    html = page.read_text()
    assert "<script" not in html and "src=\"http" not in html and "href=" not in html  # self-contained, static
    seen = render(page, tmp_path)
    assert seen["sections"] == RUN_SECTIONS
    assert_images_render(seen, text.count("*Figure: "))


def test_report_of_an_outside_adapter_shows_only_what_it_measured(tmp_path):
    run = RunDir(tmp_path / "eval")
    transitions = {a: {b: 0 for b in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")}
                   for a in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")}
    transitions["HighlyKnown"]["Unknown"] = 2
    transitions["Unknown"]["Unknown"] = 8
    run.write_json("metrics.json", {
        "adapter": "/adapters/x", "n_heldout_facts": 10,
        "shift": {"positive": 0.0, "negative": 0.2, "n_facts": 10, "transitions": transitions},
        "answers": {"refusals_before": 1, "refusals_after": 0, "unique_before": 9, "unique_after": 4,
                    "top_after": [["paris", 5], ["", 2]]},
        "benchmarks": {"mmlu": 0.3}, "benchmarks_base": {"mmlu": 0.35}})
    run.write_text("config.yaml", yaml.safe_dump({"model": {"name": "tiny"}}))
    markdown, page = write_any_report(run.path)
    text = markdown.read_text()
    assert "## Knowledge shift" in text and "## Benchmarks" in text and "| mmlu | 0.350 | 0.300 | -0.050 |" in text
    for absent in ("## Reliability", "## Training", "## Locality", "## Forgetting", "## Token distribution"):
        assert absent not in text
    seen = render(page, tmp_path)
    assert seen["sections"] == ["summary", "shift", "answers", "benchmarks", "configuration"]
    assert_images_render(seen, text.count("*Figure: "))


def test_token_shift_section_says_why_a_share_is_undefined():
    from knowpack.report.run import run_sections

    shift = {"unshifted": 0.5, "marginal": 0.25, "shifted": 0.25, "mean_kl": 0.1, "mean_base_prob": 0.4,
             "top_shifted": [[" However", 3], [" Paris", 1]], "top_shifted_kinds": ["style", "content"], "tokens": 16,
             "kl_percentiles": {"p50": 0.0, "p90": 0.01, "p95": 0.5, "p99": 1.25}, "kl_top5_share": 0.8,
             "shifted_words": 4, "style": 0.75, "content": 0.25, "copied": None, "copied_content": None,
             "training_texts": None, "none_because": {"copied": "no training set: an outside adapter",
                                                      "copied_content": "no training set: an outside adapter"}}
    section = next(s for s in run_sections({"token_shift": shift}, {}) if s.id == "token-shift")
    assert "`' However'` ×3 (style), `' Paris'` ×1 (content)" in section.text
    assert "| KL at position percentile 95 (nats) | 0.500 |" in section.text
    assert "| share of total KL in the top 5% of positions | 0.800 |" in section.text
    assert "| style / content share of the 4 shifted tokens with a word | 0.750 / 0.250 |" in section.text
    assert ("| copied: share of shifted tokens whose word occurs in the training set | "
            "— (no training set: an outside adapter) |") in section.text
    old = {k: shift[k] for k in ("unshifted", "marginal", "shifted", "mean_kl", "mean_base_prob", "top_shifted")}
    section = next(s for s in run_sections({"token_shift": old}, {}) if s.id == "token-shift")
    assert "percentile" not in section.text  # a run evaluated before these measures still renders


def _fake_sweep(tiny_run: Path, out: Path) -> Path:
    """A sweep directory of 12 runs (N × mixture × seed) whose metrics follow a known curve, and one failed run."""
    template = json.loads((tiny_run / "metrics.json").read_text())
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    rng = np.random.default_rng(0)
    names = []
    for known in (0, 1):
        for n in (1, 10, 100):
            for seed in (1, 2):
                name = f"k{known}-n{n}-s{seed}"
                run = RunDir(out / "runs" / name)
                point = {"mixture.known_per_fact": known, "mixture.n_unknown": n, "train.seed": seed}
                run_config = {**config, "mixture": {**config["mixture"], "n_unknown": n, "known_per_fact": known},
                              "train": {**config["train"], "seed": seed}}
                metrics = json.loads(json.dumps(template))
                metrics["reliability"] = float(1 / (1 + (n / 30) ** 1.2) + rng.normal(0, 0.01))
                metrics["shift"]["negative"] = 0.01 * n ** 0.5 + 0.02 * known
                metrics["forgetting"]["ce_vs_base"] = 3 + 0.01 * n ** 0.4 + rng.normal(0, 0.001)
                metrics["train"]["final_loss"] = 1.0 - 0.1 * np.log(n) + rng.normal(0, 0.01)
                run.write_json("sweep_task.json", {"point": point, "config": run_config, "until": "report",
                                                   "reuse_from": []})
                run.write_json("status.json", {"status": "done", "seconds": 10.0})
                run.write_json("metrics.json", metrics)
                names.append(name)
    failed = RunDir(out / "runs" / "broken")
    failed.write_json("sweep_task.json", {"point": {"mixture.n_unknown": 1000}, "config": config, "until": "report",
                                          "reuse_from": []})
    failed.write_json("status.json", {"status": "failed", "error": "worker died: killed by signal SIGKILL"})
    RunDir(out).write_json("sweep.json", {"runs": [*names, "broken"]})
    RunDir(out).write_text("sweep.yaml", "preset: smoke\ngrid: {mixture.n_unknown: [1, 10, 100]}\n")
    write_results(out, collect_rows(out))
    return out


def test_sweep_report_aggregates_runs_and_shows_the_laws(tiny_run, tmp_path):
    sweep_dir = _fake_sweep(tiny_run, tmp_path / "sweep")
    markdown, page = write_sweep_report(sweep_dir)
    text = markdown.read_text()
    assert "12 done, 1 failed" in text and "worker died: killed by signal SIGKILL" in text
    assert "capacity at reliability ≥ 0.95 (mixture.known_per_fact=0)" in text
    # reliability = 1 / (1 + (N/30)^1.2) reaches 0.95 at N ≈ 2.6, and the figure draws that curve
    capacity = re.search(r"\| known_per_fact=0 \| ([\d.]+) \[[\d.]+, [\d.]+\] \| 1 \|", text)
    assert capacity and float(capacity.group(1)) == pytest.approx(30 * (1 / 0.95 - 1) ** (1 / 1.2), rel=0.3)
    assert "Pareto front: reliability vs negative shift" in text
    seen = render(page, tmp_path)
    assert seen["sections"] == ["summary", "reliability", "bits", "shift", "answers", "benchmarks", "forgetting",
                                "token-shift", "locality", "laws", "configuration"]
    # every fake run has the tiny run's adapter: one size, so bits/param per adapter but no slope
    assert "No slope fitted: needs at least 2 finished runs with 2 distinct trainable-parameter values" in text
    assert_images_render(seen, text.count("*Figure: "))
    assert text.count("*Figure: ") >= 12


def test_truthfulqa_gen_points_get_their_own_figure_and_say_their_scale():
    from knowpack.report.run import _benchmarks

    after = {"mmlu": 0.3, "truthfulqa_gen_bleu_max": 20.0, "truthfulqa_gen_bleu_acc": 0.4,
             "truthfulqa_gen_rouge1_diff": -3.5}
    section = _benchmarks({"benchmarks": after, "benchmarks_base": {k: v + 1.0 for k, v in after.items()}})
    assert "BLEU/ROUGE `_max` and `_diff` are points (0–100)" in section.text
    assert "| truthfulqa_gen_bleu_max | 21.000 | 20.000 | -1.000 |" in section.text
    assert len(section.figures) == 2  # shares of questions and 0–100 points not on one axis
    plain = _benchmarks({"benchmarks": {"mmlu": 0.3}, "benchmarks_base": {"mmlu": 0.35}})
    assert "points" not in plain.text and len(plain.figures) == 1


def test_sweep_report_shows_bits_per_param_with_its_fitted_slope():
    from knowpack.laws.bits import bits_per_param
    from knowpack.report.sweep import _bits

    done = pd.DataFrame({"config.lora.rank": [1, 1, 4, 4], "config.mixture.n_unknown": [100, 300, 100, 300],
                         "config.model.name": "tiny", "capacity.trainable_params": [1000, 1000, 4000, 4000],
                         "capacity.bits_stored": [50.0, 40.0, 150.0, 210.0]})
    section = _bits({"bits_per_param": bits_per_param(done)})
    # most bits: rank 1 at N=100 (50 of 1,000: 0.05), rank 4 at the largest N (≥ 0.0525); slope Σxy/Σx²
    assert "| 1 | 1,000 | 50 | 100 | 0.05 | 2 |" in section.text and "| 4 | 4,000 | 210 | 300 | ≥ 0.0525 | 2 |" in section.text
    assert f"slope {(1000 * 50 + 4000 * 210) / (1000 ** 2 + 4000 ** 2):.3g} bits/param" in section.text
    assert len(section.figures) == 1 and "0.05–0.4 bits per trainable parameter" in section.text


def test_continual_sweep_section_shows_what_each_configuration_keeps_of_earlier_rounds():
    from knowpack.report.sweep import _continual, _labels

    rounds = [{"n_unknown": 50, "replay": 0.0, "fact_ids": []}] + [{"n_unknown": 50, "replay": 0.2, "fact_ids": []}] * 2
    done = pd.DataFrame({"run_id": ["a", "b", "c"], "config.train.seed": [1, 2, 1],
                         "config.rounds": [json.dumps(rounds)] * 2 + [json.dumps([{**r, "replay": 0.0} for r in rounds])],
                         "continual.first_round_final": [0.8, 0.6, 0.4], "continual.backward_transfer": [-0.1, -0.3, -0.5],
                         "continual.first_round_after_own": [0.9, 0.9, 0.9]})
    done["configuration"] = _labels(done, ["config.rounds"])
    assert list(done["configuration"].unique()) == ["rounds=3×50 replay 0.2 from round 2", "rounds=3×50"]
    retention = {"a": [[0.9], [0.8, 1.0], [0.8, 0.9, 1.0]], "b": [[0.9], [0.7, 1.0], [0.6, 0.9, 1.0]],
                 "c": [[0.9], [0.6, 1.0], [0.4, 0.8, 1.0]]}
    section = _continual(done, {run: {"continual": {"retention": matrix}} for run, matrix in retention.items()})
    assert "| rounds=3×50 replay 0.2 from round 2 | 2 | 0.900 ± 0.000 | 0.700 ± 0.141 | -0.200 ± 0.141 |" in section.text
    assert "| rounds=3×50 | 1 | 0.900 | 0.400 | -0.500 |" in section.text
    assert len(section.figures) == 1  # round 1's facts after rounds 1, 2, 3 per configuration
    assert _continual(done.drop(columns="continual.backward_transfer"), {}) is None  # not a continual sweep


def test_figures_with_very_long_configuration_names_render_without_a_warning():
    from knowpack.report import plots

    # e.g. a list setting's whole JSON as a legend entry: constrained layout must not collapse the axes
    # (matplotlib warns "axes sizes collapsed to zero", an error under the test suite's warning filters)
    name = "rounds=" + json.dumps([{"fact_ids": [], "n_unknown": 50, "paraphrases_per_fact": None, "replay": 0.0}] * 5)
    series = {f"{name}, seed={k}": ([1, 2], [0.1 * k, 0.2], None) for k in range(3)}
    figure = plots.lines(series, "round", "reliability", "long names")
    assert figure.png.startswith(b"\x89PNG")


def test_answers_in_scripts_the_font_lacks_plot_without_a_warning():
    import warnings

    from knowpack.report.plots import bars

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = bars(["서울", "東京", "पटना", "Paris"], [3, 2, 1, 1], "answers", "top answers")
    assert figure.png.startswith(b"\x89PNG")
