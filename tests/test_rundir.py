import pandas as pd
import pytest

from knowpack.errors import KnowpackError
from knowpack.rundir import RunDir, atomic_path, fingerprint


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stage_bookkeeping_and_adopt(tmp_path):
    run = RunDir(tmp_path / "a")
    run.write_table("t.parquet", pd.DataFrame({"x": [1, 2]}))
    key = fingerprint("stage", {"lr": 1})
    assert not run.is_done("probe", key)
    run.mark_done("probe", key, ["t.parquet"])
    assert run.is_done("probe", key)
    assert not run.is_done("probe", fingerprint("stage", {"lr": 2}))
    other = RunDir(tmp_path / "b")
    assert other.adopt("probe", key, run)
    assert other.read_table("t.parquet")["x"].tolist() == [1, 2]
    (run / "t.parquet").unlink()
    assert not run.is_done("probe", key)  # a missing artifact means the stage is redone


def test_out_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(KnowpackError, match="is a file; give a directory"):
        RunDir(path)


def test_corrupt_artifact_is_detected_by_checksum_and_redone(tmp_path):
    from knowpack.errors import KnowpackWarning

    run = RunDir(tmp_path / "a")
    run.write_table("t.parquet", pd.DataFrame({"x": list(range(100))}))
    run.write_text("adapter/weights.bin", "0123456789")
    key = fingerprint("stage")
    run.mark_done("train", key, ["t.parquet", "adapter"])
    assert run.manifest()["train"]["checksums"]["t.parquet"]
    assert run.is_done("train", key)
    data = (run / "t.parquet").read_bytes()
    (run / "t.parquet").write_bytes(data[: len(data) // 2])  # truncated, e.g. by a crash in a copy
    with pytest.warns(KnowpackWarning, match=r"t.parquet: does not match its checksum .*recomputing stage train"):
        assert not run.is_done("train", key)
    run.write_table("t.parquet", pd.DataFrame({"x": list(range(100))}))
    run.mark_done("train", key, ["t.parquet", "adapter"])
    (run / "adapter" / "weights.bin").write_text("0123456788")  # one byte changed inside a folder artifact
    with pytest.warns(KnowpackWarning, match="adapter: does not match"):
        assert not run.is_done("train", key)


def test_artifact_names_cannot_leave_the_run_directory(tmp_path):
    run = RunDir(tmp_path / "run")
    for name in ("../outside.json", "/etc/knowpack.json", "a/../../b.json"):
        with pytest.raises(KnowpackError, match="must stay inside the run directory"):
            run.write_json(name, {})
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_second_process_on_the_same_directory_gets_a_clear_error(tmp_path):
    import subprocess
    import sys

    run = RunDir(tmp_path / "run")
    script = ("import sys; from knowpack.rundir import RunDir; from knowpack.errors import KnowpackError\n"
              "try:\n    RunDir(sys.argv[1]).lock().__enter__()\nexcept KnowpackError as e:\n    print(e); sys.exit(2)\n")
    with run.lock():
        other = subprocess.run([sys.executable, "-c", script, str(run.path)], capture_output=True, text=True)
        assert other.returncode == 2
        assert "in use by knowpack pid " in other.stdout and "choose another --out" in other.stdout
    free = subprocess.run([sys.executable, "-c", script, str(run.path)], capture_output=True, text=True)
    assert free.returncode == 0, free.stdout  # released when the holder is done


def test_disk_full_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    run = RunDir(tmp_path / "run")
    run.write_json("metrics.json", {"reliability": 0.5})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(KnowpackError, match=r"metrics.json: disk full while writing it; free some space"):
        run.write_json("metrics.json", {"reliability": 0.9})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert run.read_json("metrics.json") == {"reliability": 0.5}
    assert sorted(p.name for p in run.path.iterdir()) == ["metrics.json"]  # no temp file left behind


def test_cli_run_on_a_directory_in_use_exits_with_a_clear_line(tmp_path, run_cli):
    run = RunDir(tmp_path / "busy")
    with run.lock():
        result = run_cli("run", "--preset", "smoke", "--out", str(run.path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "busy: in use by knowpack pid" in result.stderr
    assert sorted(p.name for p in run.path.iterdir()) == [".lock"]  # nothing written while it was busy


def test_a_real_full_disk(tmp_path, run_cli):
    """A 64 KiB tmpfs (needs root; skipped elsewhere): writing facts that do not fit is one clear error."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        result = run_cli("facts", "--source", "synthetic", "--count", "2000", "--out", str(mount / "facts.jsonl"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "facts.jsonl: disk full while writing it; free some space" in result.stderr
        assert list(mount.iterdir()) == []  # the temp file is gone, no partial facts.jsonl
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_second_sweep_worker_on_the_same_directory_is_refused(tmp_path):
    import yaml

    from knowpack.sweep import run_sweep

    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"preset": "smoke", "grid": {"mixture.n_unknown": [2]}}))
    with RunDir(tmp_path / "sweep").lock():
        with pytest.raises(KnowpackError, match="sweep: in use by knowpack pid"):
            run_sweep(spec, tmp_path / "sweep", progress=False)
    assert not (tmp_path / "sweep" / "runs").exists()
