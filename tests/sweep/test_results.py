"""The results table: schema version, rebuilding from run directories, trained parameters from the adapter header."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from knowpack.config import RunConfig
from knowpack.errors import KnowpackError
from knowpack.rundir import RunDir
from knowpack.sweep.results import SCHEMA_VERSION, load_results, read_results, trained_params, write_results


def _finished_run(sweep_dir, name: str, n_unknown: int) -> None:
    run = RunDir(sweep_dir / "runs" / name)
    config = RunConfig.model_validate({"mixture": {"n_unknown": n_unknown}})
    run.write_json("sweep_task.json", {"point": {"mixture.n_unknown": n_unknown}, "config": config.model_dump(mode="json"),
                                       "until": "report", "reuse_from": []})
    run.write_json("status.json", {"status": "done", "seconds": 3.0})
    run.write_json("metrics.json", {"reliability": n_unknown / 10, "shift": {"positive": 0.1, "negative": 0.2,
                                                                            "transitions": {}}})
    (run.path / "adapter").mkdir()
    save_file({"a.lora_A.weight": torch.zeros(2, 64), "a.lora_B.weight": torch.zeros(128, 2)},
              run.path / "adapter" / "adapter_model.safetensors")


def test_trained_params_are_read_from_the_safetensors_header(tmp_path):
    save_file({"x": torch.zeros(3, 4), "y": torch.zeros(5)}, tmp_path / "adapter_model.safetensors")
    assert trained_params(tmp_path) == 17
    assert trained_params(tmp_path / "missing") is None


def test_an_old_results_table_is_a_clear_error_or_rebuilt_from_the_runs(tmp_path, run_cli):
    sweep_dir = tmp_path / "sweep"
    _finished_run(sweep_dir, "aaa", 2)
    _finished_run(sweep_dir, "bbb", 5)
    old = sweep_dir / "results.parquet"
    pd.DataFrame({"run_dir": ["x"], "mixture.n_unknown": [2], "reliability": [0.2]}).to_parquet(old)  # schema 1
    with pytest.raises(KnowpackError, match="written by an older knowpack .no schema version.; this version reads "
                                            f"schema {SCHEMA_VERSION}. Give the sweep directory instead"):
        read_results(old)
    result = run_cli("laws", str(old))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "results.parquet: results table written by" in lines[0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, found = load_results(sweep_dir)
    assert found == sweep_dir and "rebuilt from" in str(caught[0].message)
    assert table["run_id"].tolist() == ["aaa", "bbb"] and table["status"].tolist() == ["done", "done"]
    assert table["trained_params"].tolist() == [2 * 64 + 128 * 2] * 2
    assert table["config.mixture.n_unknown"].tolist() == [2, 5]
    assert set(table["schema_version"]) == {SCHEMA_VERSION}
    assert read_results(old).equals(table)  # the rebuilt table replaced the old one

    write_results(tmp_path, table.head(1))
    assert len(load_results(tmp_path / "results.parquet")[0]) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(KnowpackError, match="empty: not a sweep directory"):
        load_results(tmp_path / "empty")


def test_a_continual_run_is_placed_at_the_unknown_facts_of_all_its_rounds(tmp_path):
    """With rounds, mixture.n_unknown only fills in a round's default; the run's N is what all rounds trained."""
    from knowpack.sweep.results import run_row

    _finished_run(tmp_path, "plain", 7)
    run = RunDir(tmp_path / "runs" / "rounds")
    config = RunConfig.model_validate({"mixture": {"n_unknown": 10}, "rounds": [{"n_unknown": 50}, {"n_unknown": 30}]})
    run.write_json("sweep_task.json", {"point": {}, "config": config.model_dump(mode="json"), "until": "report",
                                       "reuse_from": []})
    run.write_json("status.json", {"status": "done", "seconds": 3.0})
    run.write_json("metrics.json", {"reliability": 0.5, "n_trained_facts": 80})
    assert run_row(tmp_path, run.path)["config.mixture.n_unknown"] == 80
    assert run_row(tmp_path, tmp_path / "runs" / "plain")["config.mixture.n_unknown"] == 7
