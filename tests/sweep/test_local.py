"""The local executor for real: parallel workers, one shared base probe, resume after SIGKILL, dying workers.

Every sweep here runs the real CLI in its own process on the tiny random-weight model. The four-run sweep
is run once for the module; the kill tests start from its base-model probe (and one of its runs) instead of
computing them again, since the first test checks those.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from sweep_helpers import knowpack_process, knowpack_run, seed_from, write_sweep
from sweep_helpers import tiny_sweep  # noqa: F401 (a fixture)
from knowpack.sweep.results import read_results


def _runs(out: Path) -> list[Path]:
    return [out / "runs" / name for name in json.loads((out / "sweep.json").read_text())["runs"]]


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait_for(condition, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the sweep")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent has not collected it


def _workers_started(run_dir: Path) -> int:
    return (run_dir / "run.log").read_text().count("=== ") - (run_dir / "run.log").read_text().count("=== done")


# Trained parameters of rank-8 LoRA on gate/up/down of the tiny model (hidden 64, MLP 128, 2 layers):
# each module r·(in + out) = 8·(64 + 128) = 1536, three modules, two layers.
TINY_TRAINED_PARAMS = 2 * 3 * 8 * (64 + 128)


@pytest.fixture(scope="module")
def four_runs(tiny_model_dir, tmp_path_factory):
    """A 4-run sweep on 2 workers, run once: (sweep file, its folder, the CLI's result)."""
    folder = tmp_path_factory.mktemp("four-runs")
    spec = write_sweep(folder, tiny_model_dir, {"mixture.n_unknown": [2, 3], "train.seed": [1, 2]})
    out = folder / "out"
    start = time.perf_counter()
    result = knowpack_run("sweep", "--config", str(spec), "--out", str(out), "--workers", "2")
    print(f"4-run sweep on 2 workers: {time.perf_counter() - start:.0f} s")
    return spec, out, result


def test_four_runs_on_two_workers_share_one_base_probe_and_are_not_redone(four_runs):
    spec, out, result = four_runs
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("results.parquet")
    table = read_results(out / "results.parquet")
    assert len(table) == 4 and set(table["status"]) == {"done"}
    assert sorted(zip(table["mixture.n_unknown"], table["train.seed"])) == [(2, 1), (2, 2), (3, 1), (3, 2)]
    assert table["n_trained_facts"].tolist() == table["mixture.n_unknown"].tolist()
    assert set(table["trained_params"]) == {TINY_TRAINED_PARAMS}
    assert {"reliability", "shift.negative", "forgetting.ce_vs_base", "train.final_loss", "config.lora.rank",
            "schema_version", "seconds"} <= set(table.columns)
    # the base model was probed and scored once, in shared/, and every run adopted both
    shared = list((out / "shared").iterdir())
    assert len(shared) == 1 and (shared[0] / "probe_before.parquet").is_file()
    assert (shared[0] / "benchmarks_base.json").is_file()
    for run_dir in _runs(out):
        log = (run_dir / "run.log").read_text()
        assert f"probe_before: reused from {shared[0]}" in log, log
        assert f"base_eval: reused from {shared[0]}" in log, log
        assert (run_dir / "report.html").is_file()
    # two workers really ran at once: some runs overlap in time
    spans = sorted((s["started"], s["started"] + s["seconds"]) for s in map(_status, _runs(out)))
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    assert (out / "report.html").is_file()  # the sweep report is written at the end

    before = {run_dir: _status(run_dir)["started"] for run_dir in _runs(out)}
    again = knowpack_run("sweep", "--config", str(spec), "--out", str(out), "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert "4 runs, 4 already done, 0 to run" in again.stderr
    assert {run_dir: _status(run_dir)["started"] for run_dir in _runs(out)} == before
    assert all(_workers_started(run_dir) == 1 for run_dir in _runs(out))


def test_a_killed_sweep_resumes_without_redoing_finished_runs(four_runs, tiny_sweep, tmp_path):
    out = tmp_path / "sweep"
    spec = tiny_sweep({"mixture.n_unknown": [2, 3], "train.seed": [1]})
    table = read_results(four_runs[1] / "results.parquet").set_index(["mixture.n_unknown", "train.seed"])
    seeded = four_runs[1] / table.loc[(2, 1), "run_dir"]
    seed_from(four_runs[1], out, [seeded])  # the base probe and run (2, 1) done: only run 3 is left to do
    sweep = knowpack_process("sweep", "--config", str(spec), "--out", str(out), "--workers", "1", "--quiet")

    def one_done_one_training():
        if not (out / "sweep.json").is_file():
            return None
        statuses = {run_dir: _status(run_dir) for run_dir in _runs(out)}
        done = [d for d, s in statuses.items() if s.get("status") == "done"]
        busy = [d for d, s in statuses.items() if s.get("status") == "running"
                and "▶ train" in (d / "run.log").read_text()]
        return (done[0], busy[0]) if done and busy else None

    finished, interrupted = _wait_for(one_done_one_training)
    assert finished.name == seeded.name  # the seeded run was taken for done, not redone
    worker = _status(interrupted)["pid"]
    sweep.kill()  # SIGKILL: no handler runs in the sweep process
    sweep.communicate()
    _wait_for(lambda: not _alive(worker), timeout=10)  # its worker died with it
    assert _status(interrupted)["status"] == "running"  # as the worker left it
    started = _status(finished)["started"]

    result = knowpack_run("sweep", "--config", str(spec), "--out", str(out), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "2 runs, 1 already done, 1 to run" in result.stderr
    assert _status(finished)["started"] == started and _workers_started(finished) == 1
    assert _workers_started(interrupted) == 2
    assert "✓ probe_before: reused" in (interrupted / "run.log").read_text()
    table = read_results(out / "results.parquet")
    assert len(table) == 2 and set(table["status"]) == {"done"} and table["reliability"].notna().all()
    assert not list(out.rglob(".*.tmp"))


def test_a_worker_that_dies_leaves_its_run_failed_and_the_sweep_goes_on(four_runs, tiny_sweep, tmp_path):
    out = tmp_path / "sweep"
    spec = tiny_sweep({"mixture.n_unknown": [2, 3]})
    seed_from(four_runs[1], out)  # the base probe only: both runs are done here, one after the other
    sweep = knowpack_process("sweep", "--config", str(spec), "--out", str(out), "--workers", "1", "--quiet")

    def training():
        if not (out / "sweep.json").is_file():
            return None
        busy = [d for d in _runs(out) if _status(d).get("status") == "running"
                and "▶ train" in (d / "run.log").read_text()]
        return busy[0] if busy else None

    victim = _wait_for(training)
    os.kill(_status(victim)["pid"], signal.SIGKILL)  # as the kernel's OOM killer would
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, stderr
    assert _status(victim)["status"] == "failed"
    assert _status(victim)["error"] == "worker died: killed by signal SIGKILL"
    assert "▶ train" in (victim / "run.log").read_text()
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: 1 of 2 runs failed (logs: ") and str(victim / "run.log") in last
    assert "rerun the same command to retry" in last
    table = pd.read_parquet(out / "results.parquet").set_index("run_id")
    assert table.loc[victim.name, "status"] == "failed"
    assert table.loc[victim.name, "error"] == "worker died: killed by signal SIGKILL"
    assert (table["status"] == "done").sum() == 1
