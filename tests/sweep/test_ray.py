"""The Ray executor for real: sweeps on a Ray head this module starts on 127.0.0.1 (and on a Ray the sweep
starts itself), a killed sweep resumed; an unreachable or missing Ray is one clear line.

The sweep on the module's Ray head is run once; the other two sweeps start from its base-model probe (the
resumed one also from its finished run) instead of computing them again, since the first test checks those."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import knowpack_process, knowpack_run, seed_from, write_sweep
from sweep_helpers import tiny_sweep  # noqa: F401 (a fixture)
from knowpack.sweep.executors import check_address
from knowpack.sweep.results import read_results

RAY_LIFETIME_S = 1200  # the head stops itself after this even if the test process is killed


def _free_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs: its address; stopped when the module's tests end."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    port, temp = _free_port(), tmp_path_factory.mktemp("ray")
    # `--block` keeps the head in this one process tree: `timeout` bounds its life, killing the group ends it.
    head = subprocess.Popen(["timeout", str(RAY_LIFETIME_S), ray_cli, "start", "--head", "--block",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            check_address(address, timeout=1)
            break
        except Exception:
            if head.poll() is not None or time.monotonic() > deadline:
                os.killpg(head.pid, signal.SIGKILL)
                pytest.fail(f"ray start --head did not answer at {address} within 120 s (exit {head.poll()})")
            time.sleep(0.5)
    yield address
    os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the processes it started
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:  # what is left of the head (gcs_server, raylet) shares its group
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def _one_line(result, message: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited


@pytest.fixture(scope="module")
def cluster_sweep(ray_head, tiny_model_dir, tmp_path_factory):
    """A 2-run sweep on the module's Ray head, run once: (its folder, the CLI's result)."""
    folder = tmp_path_factory.mktemp("cluster-sweep")
    out = folder / "out"
    # 500 Unknown facts cannot be found among 16 facts: that run fails with the mixture's own error
    spec = write_sweep(folder, tiny_model_dir, {"mixture.n_unknown": [2, 500]})
    start = time.perf_counter()
    result = knowpack_run("sweep", "--config", str(spec), "--out", str(out), "--executor", "ray",
                          "--address", ray_head, "--workers", "2", "--quiet")
    print(f"2-run sweep on Ray at {ray_head}: {time.perf_counter() - start:.0f} s")
    return out, result


def test_ray_sweep_on_a_ray_cluster_finishes_and_reports_the_failed_run(cluster_sweep):
    out, result = cluster_sweep
    assert result.returncode == 1, result.stderr
    table = read_results(out / "results.parquet").set_index("mixture.n_unknown")
    assert table.loc[2, "status"] == "done" and table.loc[2, "reliability"] >= 0
    assert (out / table.loc[2, "run_dir"] / "adapter" / "adapter_model.safetensors").is_file()
    assert table.loc[500, "status"] == "failed"
    assert "mixture.n_unknown: asked for 500 Unknown facts" in table.loc[500, "error"]
    assert "asked for 500 Unknown facts" in (out / table.loc[500, "run_dir"] / "run.log").read_text()
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: 1 of 2 runs failed")


def test_a_killed_ray_sweep_resumes_without_redoing_finished_runs(ray_head, cluster_sweep, tiny_sweep, tmp_path):
    out = tmp_path / "sweep"
    spec = tiny_sweep({"mixture.n_unknown": [2, 3]})
    table = read_results(cluster_sweep[0] / "results.parquet").set_index("mixture.n_unknown")
    seeded = cluster_sweep[0] / table.loc[2, "run_dir"]
    seed_from(cluster_sweep[0], out, [seeded])  # the base probe and run 2 done: only run 3 is left to do
    args = ("sweep", "--config", str(spec), "--out", str(out), "--executor", "ray", "--address", ray_head,
            "--workers", "1", "--quiet")
    sweep = knowpack_process(*args)

    def runs() -> list[Path]:
        return [out / "runs" / name for name in json.loads((out / "sweep.json").read_text())["runs"]]

    def one_done_one_training():
        if not (out / "sweep.json").is_file():
            return None
        statuses = {run_dir: _status(run_dir) for run_dir in runs()}
        done = [d for d, s in statuses.items() if s.get("status") == "done"]
        busy = [d for d, s in statuses.items() if s.get("status") == "running"
                and "▶ train" in (d / "run.log").read_text()]
        return (done[0], busy[0]) if done and busy else None

    deadline, found = time.monotonic() + 300, None
    while found is None and time.monotonic() < deadline and sweep.poll() is None:
        found = one_done_one_training()
        time.sleep(0.05)
    assert found, f"the sweep never had one run done and one training: {sweep.poll()} {sweep.stderr.read()[-2000:]}"
    finished, interrupted = found
    assert finished.name == seeded.name  # the seeded run was taken for done, not redone
    started, worker = _status(finished)["started"], _status(interrupted)["pid"]
    sweep.kill()  # SIGKILL: no handler runs in the sweep; Ray ends the job's tasks, their workers die with them
    sweep.communicate()
    deadline = time.monotonic() + 60
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the killed sweep's worker is still running"
    assert _status(interrupted)["status"] == "running"  # as the worker left it

    result = knowpack_run(*args)
    assert result.returncode == 0, result.stderr
    assert "2 runs, 1 already done, 1 to run" in result.stderr
    assert _status(finished)["started"] == started  # not redone
    log = (interrupted / "run.log").read_text()
    assert log.count("=== ") - log.count("=== done") == 2 and "✓ probe_before: reused" in log
    table = read_results(out / "results.parquet")
    assert len(table) == 2 and set(table["status"]) == {"done"} and table["reliability"].notna().all()


def test_ray_sweep_starts_its_own_local_ray(cluster_sweep, tiny_sweep, tmp_path):
    out = tmp_path / "sweep"
    seed_from(cluster_sweep[0], out)  # the base probe: the one run is left for the Ray this sweep starts
    result = knowpack_run("sweep", "--config", str(tiny_sweep({"mixture.n_unknown": [2]})), "--out", str(out),
                          "--executor", "ray", "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert set(read_results(out / "results.parquet")["status"]) == {"done"}


def test_an_address_that_does_not_answer_is_one_line(tmp_path, run_cli):
    port = _free_port()
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


def test_the_cluster_token_is_sent_only_when_the_user_chose_no_mode(tmp_path, monkeypatch):
    from knowpack.sweep.executors import use_cluster_token

    token = tmp_path / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "recorded")  # so that the test's own setting is undone afterwards
    monkeypatch.delenv("RAY_AUTH_MODE")
    use_cluster_token()
    assert "RAY_AUTH_MODE" not in os.environ  # no token anywhere: leave Ray's default
    token.write_text("0" * 64)
    use_cluster_token()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    use_cluster_token()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # the user's choice stands
