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
