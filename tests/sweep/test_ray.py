"""The Ray executor: a real local Ray running sweep workers; unreachable or missing Ray is one clear line."""

from __future__ import annotations

import socket
import sys

import pytest

from sweep_helpers import knowpack_run, tiny_sweep  # noqa: F401 (tiny_sweep is a fixture)
from knowpack.sweep.results import read_results


def _one_line(result, message: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_ray_sweep_runs_on_a_local_ray_and_reports_the_failed_run(tiny_sweep, tmp_path):
    pytest.importorskip("ray", reason="Ray is optional: pip install 'knowpack[ray]'")
    out = tmp_path / "sweep"
    # 500 Unknown facts cannot be found among 16 facts: that run fails with the mixture's own error
    spec = tiny_sweep({"mixture.n_unknown": [2, 500]})
    result = knowpack_run("sweep", "--config", str(spec), "--out", str(out), "--executor", "ray", "--workers", "2",
                          "--quiet")
    assert result.returncode == 1, result.stderr
    table = read_results(out / "results.parquet").set_index("mixture.n_unknown")
    assert table.loc[2, "status"] == "done" and table.loc[2, "reliability"] >= 0
    assert table.loc[500, "status"] == "failed"
    assert "mixture.n_unknown: asked for 500 Unknown facts" in table.loc[500, "error"]
    assert "asked for 500 Unknown facts" in (out / table.loc[500, "run_dir"] / "run.log").read_text()
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: 1 of 2 runs failed")


def test_an_address_that_does_not_answer_is_one_line(tmp_path, run_cli):
    pytest.importorskip("ray", reason="Ray is optional: pip install 'knowpack[ray]'")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("sweep", "--config", "reproduce-cpu", "--out", str(tmp_path / "s"), "--executor", "ray",
                     "--address", f"127.0.0.1:{port}", "--connect-timeout", "2")
    _one_line(result, f"--address 127.0.0.1:{port}: no Ray cluster answered within 2 s")
    assert not (tmp_path / "s").exists()
    _one_line(run_cli("sweep", "--config", "reproduce-cpu", "--out", str(tmp_path / "s"), "--executor", "ray",
                      "--address", "nowhere"), "--address nowhere: write it as HOST:PORT")


def test_ray_not_installed_is_one_line(tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    _one_line(run_cli("sweep", "--config", "reproduce-cpu", "--out", str(tmp_path / "s"), "--executor", "ray"),
              "--executor ray: Ray is not installed; pip install 'knowpack[ray]'")
    assert not (tmp_path / "s").exists()
