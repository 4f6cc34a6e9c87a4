"""Laws fitted on results tables built from known parameters: the fits must give those parameters back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from knowpack.errors import KnowpackError
from knowpack.laws import (capacity_estimate, fit_laws, fit_linear, fit_shifted_power, pareto_front,
                           reliability_curve, write_laws)
from knowpack.sweep.results import write_results

TOP, N50, K, TARGET = 0.98, 200.0, 1.5, 0.95
CAPACITY = N50 * (TOP / TARGET - 1) ** (1 / K)  # ≈ 19.96 facts


def _top(rank: int) -> float:
    return TOP - 0.01 * np.log2(rank)


def _table(seed: int = 0) -> pd.DataFrame:
    """A sweep over N × rank × seeds with metrics drawn from known laws plus small noise.

    Reliability tops out lower for larger ranks (0.98, 0.96, 0.94), so rank 1 is best on every count.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for n in (1, 3, 10, 30, 100, 300, 1000):
        for rank in (1, 4, 16):
            for run_seed in (42, 1337, 10824):
                params = rank * 9000
                steps = 10 * n
                loss = 2.0 - 0.1 * np.log(steps) + rng.normal(0, 0.01)
                rows.append({"status": "done", "config.mixture.n_unknown": n, "config.lora.rank": rank,
                             "config.train.seed": run_seed, "config.mixture.seed": run_seed,
                             "reliability": float(np.clip(reliability_curve(n, _top(rank), N50, K) + rng.normal(0, 0.005), 0, 1)),
                             "trained_params": params, "train.steps": steps, "train.final_loss": loss,
                             "forgetting.ce_vs_base": 3.0 + 0.02 * params ** 0.3 + rng.normal(0, 0.002),
                             "shift.negative": 0.01 * rank + 0.001 * n})
    return pd.DataFrame(rows)


def test_linear_fit_recovers_slope_and_intercept_with_intervals():
    rng = np.random.default_rng(1)
    x = np.linspace(0.5, 3, 30)
    fit = fit_linear(x, -0.5 * x + 3.0 + rng.normal(0, 0.01, x.size))
    slope, intercept = fit["params"]["slope"], fit["params"]["intercept"]
    assert slope["value"] == pytest.approx(-0.5, abs=0.02) and intercept["value"] == pytest.approx(3.0, abs=0.03)
    assert slope["ci95"][0] < -0.5 < slope["ci95"][1] and fit["r2"] > 0.99


def test_shifted_power_law_recovers_its_parameters():
    rng = np.random.default_rng(2)
    x = np.geomspace(1e3, 1e6, 12)
    fit = fit_shifted_power(x, 0.02 * x ** 0.3 + 3.0 + rng.normal(0, 0.001, x.size))
    p = fit["params"]
    assert p["alpha"]["value"] == pytest.approx(0.3, abs=0.01)
    assert p["A"]["value"] == pytest.approx(0.02, rel=0.1)
    assert p["B"]["value"] == pytest.approx(3.0, abs=0.05)
    assert p["alpha"]["ci95"][0] < 0.3 < p["alpha"]["ci95"][1]


def test_capacity_is_where_the_fitted_reliability_meets_the_target():
    table = _table().query("`config.lora.rank` == 1")
    found = capacity_estimate(table["config.mixture.n_unknown"], table["reliability"], TARGET, bootstrap=50, seed=0)
    assert found["capacity"] == pytest.approx(CAPACITY, rel=0.1)
    assert found["params"]["k"]["value"] == pytest.approx(K, rel=0.1)
    assert found["warning"] is None
    assert found["capacity_observed"] == 10  # mean reliability at N=10 ≈ 0.9536, at N=30 ≈ 0.93
    assert not found["extrapolated"]
    again = capacity_estimate(table["config.mixture.n_unknown"], table["reliability"], TARGET, bootstrap=50, seed=0)
    assert again["capacity_ci95"] == found["capacity_ci95"]  # the bootstrap is seeded
    # over independent noise draws the 95% bootstrap interval holds the true capacity most of the time
    covered = 0
    for noise in range(10):
        table = _table(noise).query("`config.lora.rank` == 1")
        low, high = capacity_estimate(table["config.mixture.n_unknown"], table["reliability"], TARGET,
                                      bootstrap=50, seed=noise)["capacity_ci95"]
        assert high - low < CAPACITY / 2
        covered += low < CAPACITY < high
    assert covered >= 7


def test_too_few_points_say_how_many_are_needed():
    laws = fit_laws(_table().query("`config.mixture.n_unknown` in (1, 3)"), TARGET, bootstrap=10)
    for entry in laws["capacity"]:
        assert entry["error"].startswith("needs at least 4 finished runs with 3 distinct N (mixture.n_unknown) values; "
                                         "got 6 runs with 2")
    one_rank = fit_laws(_table().query("`config.lora.rank` == 4"), TARGET, bootstrap=10)
    assert "needs at least 4 finished runs with 3 distinct trained-parameter values; got 21 runs with 1" in \
        one_rank["fits"]["forgetting_vs_params"]["error"]


def test_fit_laws_groups_capacity_by_the_other_grid_fields_and_finds_the_pareto_front():
    laws = fit_laws(_table(), TARGET, bootstrap=20)
    assert laws["fits"]["forgetting_vs_params"]["params"]["alpha"]["value"] == pytest.approx(0.3, abs=0.02)
    assert laws["fits"]["forgetting_vs_steps"]["n_points"] == 63
    assert "slope" in laws["fits"]["forgetting_vs_loss"]["params"]
    assert [c["group"] for c in laws["capacity"]] == ["lora.rank=1", "lora.rank=4", "lora.rank=16"]
    expected = [N50 * (_top(rank) / TARGET - 1) ** (1 / K) for rank in (1, 4)]  # ≈ 20 and 9.6 facts
    assert [c["capacity"] for c in laws["capacity"][:2]] == pytest.approx(expected, rel=0.25)
    never = laws["capacity"][2]  # top 0.94 < 0.95: not even one fact is kept reliably enough
    assert never["capacity"] == 0 and never["capacity_observed"] is None
    front = laws["pareto"]["reliability_vs_negative_shift"]
    # negative shift grows with rank and N while reliability falls with N: rank 1 dominates every other rank
    assert front and all("lora.rank=1" in item["config"].split(", ") for item in front)
    assert front[0]["reliability"] >= front[-1]["reliability"]


def test_capacity_is_flagged_when_reliability_rises_with_n():
    # The reproduce-cpu shape: with a fixed number of epochs, 10 facts get too few optimizer steps to be
    # learned while 100 are, so reliability rises with N and the decreasing curve fits nothing.
    n = np.repeat([1.0, 10.0, 50.0, 100.0], 3)
    reliability = np.array([1, 1, 1, 0.8, 0.6, 0.87, 0.92, 0.85, 0.89, 0.94, 0.97, 0.9])
    found = capacity_estimate(n, reliability, TARGET, bootstrap=20, seed=0)
    assert "rises with N (10→50, 50→100)" in found["warning"]


def test_pareto_front_keeps_only_undominated_configurations():
    frame = pd.DataFrame({"label": list("abcd"), "reliability": [0.9, 0.8, 0.95, 0.7],
                          "shift.negative": [0.1, 0.05, 0.2, 0.3], "runs": [3, 3, 3, 3]})
    assert [p["config"] for p in pareto_front(frame, "reliability", "shift.negative")] == ["c", "a", "b"]


def test_laws_cli_writes_laws_json_and_refuses_an_unfittable_table(run_cli, tmp_path):
    write_results(tmp_path, _table().assign(schema_version=2))
    result = run_cli("laws", str(tmp_path / "results.parquet"), "--bootstrap", "20")
    assert result.returncode == 0, result.stderr
    laws = json.loads((tmp_path / "laws.json").read_text())
    assert laws["target"] == 0.95 and len(laws["capacity"]) == 3
    assert "capacity at reliability ≥ 0.95" in result.stdout
    small = tmp_path / "small"
    small.mkdir()
    write_results(small, _table().head(2))
    result = run_cli("laws", str(small / "results.parquet"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no law could be fitted from 2 finished runs" in lines[0]
    assert "needs at least 3 finished runs" in lines[0]
    with pytest.raises(KnowpackError, match="--target 1.5: a reliability between 0 and 1"):
        write_laws(tmp_path / "results.parquet", target=1.5)


BITS_PER_PARAM = 0.02  # the most an adapter holds; each fact carries 20 bits


def _with_bits(table: pd.DataFrame) -> pd.DataFrame:
    """Bits stored grow with N until the adapter is full at BITS_PER_PARAM × params (rank 16 is never full)."""
    params = table["trained_params"]
    bits = np.minimum(20.0 * table["config.mixture.n_unknown"] * table["reliability"], BITS_PER_PARAM * params)
    return table.assign(**{"capacity.bits_stored": bits, "capacity.trainable_params": params,
                           "config.model.name": "tiny"})


def test_bits_per_param_is_the_slope_of_the_most_bits_each_adapter_stored():
    laws = fit_laws(_with_bits(_table()), TARGET, bootstrap=10)
    assert [c["rank"] for c in laws["capacity"]] == [1, 4, 16] and laws["capacity"][0]["model"] == "tiny"
    (entry,) = laws["bits_per_param"]
    adapters = {a["rank"]: a for a in entry["adapters"]}
    # ranks 1 and 4 fill up (180 and 720 bits); rank 16 (2,880) is not full: its reliability falls faster
    for rank in (1, 4):
        assert adapters[rank]["bits_per_param"] == pytest.approx(BITS_PER_PARAM) and not adapters[rank]["at_largest_n"]
    assert adapters[16]["bits_per_param"] < BITS_PER_PARAM and adapters[16]["n_unknown"] == 300
    # through the origin, least squares: slope = Σxy / Σx² over the three adapter sizes
    x = np.array([9000.0, 36000.0, 144000.0])
    y = np.array([adapters[r]["bits_stored"] for r in (1, 4, 16)])
    slope = entry["params"]["slope"]
    assert slope["value"] == pytest.approx(float(x @ y / (x @ x)), rel=1e-6)
    assert slope["ci95"][0] < slope["value"] < slope["ci95"][1] and entry["n_points"] == 3


def test_bits_per_param_with_one_adapter_size_says_what_it_needs():
    laws = fit_laws(_with_bits(_table()).query("`config.lora.rank` == 1"), TARGET, bootstrap=10)
    (entry,) = laws["bits_per_param"]
    assert "2 distinct trainable-parameter values" in entry["error"] and "vary lora.rank" in entry["error"]
    assert entry["adapters"][0]["bits_per_param"] == pytest.approx(BITS_PER_PARAM)
    assert fit_laws(_table(), TARGET, bootstrap=10)["bits_per_param"] == []  # runs from before capacity: no entry
