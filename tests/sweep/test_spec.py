"""Sweep files: grid expansion, shipped configs, and one clear line for every mistake in them."""

from __future__ import annotations

import pytest
import yaml

from knowpack.errors import KnowpackError
from knowpack.sweep.spec import expand_grid, load_sweep, resolve_points, shipped_sweeps, sweep_path


def test_grid_product_joined_fields_and_variants():
    points = expand_grid({"mixture.n_unknown": [1, 10], "mixture.seed,train.seed": [[1, 1], [2, 2]]},
                         [{}, {"mixture.known_per_fact": 1}])
    assert len(points) == 8
    assert points[0] == {"mixture.n_unknown": 1, "mixture.seed": 1, "train.seed": 1}
    assert points[3] == {"mixture.n_unknown": 10, "mixture.seed": 2, "train.seed": 2}
    assert points[4] == {"mixture.known_per_fact": 1, "mixture.n_unknown": 1, "mixture.seed": 1, "train.seed": 1}


@pytest.mark.parametrize("name, runs", [("reproduce-cpu", 36), ("reproduce-paper", 90), ("regularizers-cpu", 6),
                                        ("continual-cpu", 7), ("capacity-cpu", 24),
                                        ("reproduce-rank1-cpu", 12), ("lora-vs-full-lr-cpu", 9), ("lora-vs-full-cpu", 24),
                                        ("regularizers-variants-cpu", 144)])
def test_shipped_sweeps_resolve_by_name(name, runs):
    assert name in shipped_sweeps()
    path = sweep_path(name)
    points = resolve_points(load_sweep(path), path)
    assert len(points) == runs
    assert len({config.model_dump_json() for _, config in points}) == runs  # every point is a distinct run
    if name == "reproduce-cpu":
        assert {c.mixture.n_unknown for _, c in points} == {1, 10, 50, 100}
        assert all(c.model.name == "smollm2-135m-instruct" for _, c in points)
        assert all(c.mixture.seed == c.train.seed for _, c in points)
    if name in ("capacity-cpu", "reproduce-rank1-cpu"):  # the paper's adapter and training
        assert all((c.lora.alpha, c.lora.dropout, c.lora.use_rslora, c.train.lr, c.train.batch_size, c.train.epochs)
                   == (2, 0.1, True, 1e-3, 16, 10) for _, c in points)
        assert all(sorted(c.lora.target_modules) == ["down_proj", "gate_proj", "up_proj"] for _, c in points)
    if name == "capacity-cpu":  # ranks × N, embedded and synthetic facts with room for the largest N
        assert {(c.lora.rank, c.mixture.n_unknown) for _, c in points} == {
            (r, n) for r in (1, 4, 16) for n in (100, 300, 1000, 3000)}
        assert {c.facts.source for _, c in points} == {"embedded", "synthetic"}
        assert all(c.facts.max_facts >= c.mixture.n_unknown + c.eval.heldout_facts for _, c in points)
    if name == "reproduce-rank1-cpu":
        assert all(c.lora.rank == 1 for _, c in points)
        assert sorted({(c.mixture.n_unknown, c.mixture.seed) for _, c in points}) == [
            (500, 42), (500, 1337), (500, 10824), (3000, 42)]
    if name == "lora-vs-full-lr-cpu":  # LoRA ranks 1, 8, 64 at two rates, full fine-tuning at three
        assert sorted((c.train.method, c.lora.rank if c.train.method == "lora" else None) for _, c in points) == [
            ("full", None)] * 3 + [("lora", 1)] * 2 + [("lora", 8)] * 2 + [("lora", 64)] * 2
        assert {c.mixture.n_unknown for _, c in points} == {100}
    if name == "lora-vs-full-cpu":  # the search's chosen rates × N 100 and 10 × 3 seeds, seed outermost
        assert {(c.train.method, c.lora.rank, c.train.lr) for _, c in points} == {
            ("full", 8, 1e-4), ("lora", 1, 3e-3), ("lora", 8, 1e-3), ("lora", 64, 1e-3)}
        assert {(c.mixture.n_unknown, c.train.seed) for _, c in points[:8]} == {(100, 42), (10, 42)}
        search = sweep_path("lora-vs-full-lr-cpu")
        searched = {config.model_dump_json() for _, config in resolve_points(load_sweep(search), search)}
        assert sum(config.model_dump_json() in searched for _, config in points) == 4  # adopted, not rerun
    if name == "regularizers-variants-cpu":  # 3 regularizers × 4 variants × 2 ranks; 24 runs per N and seed
        variants = {(c.lora.use_rslora, c.lora.use_dora, c.lora.init) for _, c in points}
        assert variants == {(False, False, "default"), (True, False, "default"), (False, True, "default"),
                            (False, False, "pissa")}
        assert {c.train.regularizer for _, c in points} == {"none", "kl", "mask-target"}
        assert all(c.train.reg_lambda == 0.1 for _, c in points)
        first = [c for _, c in points[:24]]
        assert {(c.mixture.n_unknown, c.train.seed) for c in first} == {(50, 42)}
    if name == "continual-cpu":  # 5 rounds of 50 facts; continue and stack with and without 20% replay
        assert all([r.n_unknown for r in c.rounds] == [50] * 5 for _, c in points)
        assert sorted((c.continual.strategy, max(r.replay for r in c.rounds)) for _, c in points) == [
            ("continue", 0.0), ("continue", 0.0), ("continue", 0.0), ("continue", 0.2), ("retrain", 0.0),
            ("stack", 0.0), ("stack", 0.2)]  # continue three times: no regularizer, kl, mask-target


@pytest.mark.parametrize("document, message", [
    ({"preset": "smoke", "gird": {"train.seed": [1]}}, "unknown key 'gird'; did you mean 'grid'?"),
    ({"preset": "smoke", "grid": {"mixture.n_unknwn": [1]}},
     "grid: unknown field 'mixture.n_unknwn'; did you mean 'mixture.n_unknown'?"),
    ({"preset": "smoke", "grid": {"trian.seed": [1]}}, "grid: unknown field 'trian.seed'; did you mean 'train.seed'?"),
    ({"preset": "smoke", "grid": {}}, "grid is empty"),
    ({"preset": "smoke"}, "grid is empty"),
    ({"preset": "smoke", "grid": {"train.seed": []}}, "grid: train.seed has no values"),
    ({"preset": "smoke", "grid": {"train.seed,mixture.seed": [[1]]}}, "each value must be a list of 2 values"),
    ({"preset": "smok", "grid": {"train.seed": [1]}}, "unknown preset 'smok'; did you mean 'smoke'?"),
    ({"preset": "smoke", "grid": {"train.seed": [1]}, "variants": [{"train.seed": 2}]},
     "variants[0]: train.seed is also a grid field"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, document, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(KnowpackError) as caught:
        resolve_points(load_sweep(path), path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_rounds_a_strategy_cannot_support_name_the_grid_point(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"preset": "smoke", "base": {"rounds": [{}, {"replay": 0.2}]},
                                    "grid": {"continual.strategy": ["continue", "retrain"]}}))
    with pytest.raises(KnowpackError, match=r"grid point \{'continual.strategy': 'retrain'\}: round 2 \(rounds\[1\]\): "
                                            r"replay=0.2 with continual.strategy=retrain"):
        resolve_points(load_sweep(path), path)


def test_bad_values_name_the_grid_point(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"preset": "smoke", "base": {"train": {"epochs": 2}},
                                    "grid": {"lora.rank": [4, 0]}}))
    with pytest.raises(KnowpackError, match=r"grid point \{'lora.rank': 0\}: lora.rank: Input should be greater"):
        resolve_points(load_sweep(path), path)
    path.write_text(yaml.safe_dump({"preset": "smoke", "base": {"train": {"epoch": 2}}, "grid": {"lora.rank": [4]}}))
    with pytest.raises(KnowpackError, match="base: unknown key 'train.epoch'; did you mean 'epochs'"):
        resolve_points(load_sweep(path), path)


def test_cli_errors_for_sweeps_are_one_line(run_cli, tmp_path):
    (tmp_path / "typo.yaml").write_text("preset: smoke\ngrid:\n  mixture.n_unknwn: [1]\n")
    for args, message in [
        (["sweep", "--config", str(tmp_path / "typo.yaml"), "--out", str(tmp_path / "a")],
         "unknown field 'mixture.n_unknwn'; did you mean 'mixture.n_unknown'?"),
        (["sweep", "--config", "reproduce-gpu", "--out", str(tmp_path / "b")],
         "no shipped sweep config of that name (shipped: capacity-cpu, continual-cpu, lora-vs-full-cpu, "
         "lora-vs-full-lr-cpu, regularizers-cpu, regularizers-variants-cpu, reproduce-cpu, reproduce-paper, reproduce-rank1-cpu)"),
        (["sweep", "--config", "reproduce-cpu", "--out", str(tmp_path / "c"), "--workers", "0"],
         "--workers 0: give at least 1"),
        (["sweep", "--config", "reproduce-cpu", "--out", str(tmp_path / "d"), "--executor", "slurm"],
         "--executor slurm: choose one of local, ray"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dry_run_lists_the_runs_of_a_shipped_sweep(run_cli, tmp_path):
    result = run_cli("sweep", "--config", "reproduce-cpu", "--out", str(tmp_path / "s"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "reproduce-cpu: 36 runs" in result.stdout
    assert "mixture.known_per_fact=1, mixture.n_unknown=100, mixture.seed=10824, train.seed=10824" in result.stdout
    assert not (tmp_path / "s").exists()
