"""The run directory: atomic artifact writes and a manifest that lets finished stages be reused.

In:  a path.  Out: a `RunDir` whose writers never leave a half-written file (write to a temp file in
the same folder, fsync, rename) and whose manifest (``manifest.json``) records, per stage, the
fingerprint of its inputs and config and the artifacts it wrote. A stage whose fingerprint is
unchanged and whose artifacts are all present and match their recorded SHA-256 checksums is not
redone; an artifact that was damaged since (truncated, edited, half-copied) is detected, reported
with a warning, and its stage recomputed. `RunDir.lock` keeps two processes out of one directory,
and a full disk while writing is one clear error that leaves the finished artifacts intact.
`try_lock` is the file lock under it, also held by a sweep worker on its run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import pandas as pd

from knowpack.errors import KnowpackError, warn

MANIFEST = "manifest.json"
LOCK = ".lock"


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (configs, upstream fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_stamp(path: Path) -> list:
    """Size and modification time of a user's input file, or of every file in a folder (an adapter): part of a
    stage's key, so a file changed under the same path is not mistaken for the one a finished stage read."""
    path = Path(path)
    if path.is_dir():
        return [[p.relative_to(path).as_posix(), *file_stamp(p)] for p in sorted(path.rglob("*")) if p.is_file()]
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def try_lock(path: Path) -> IO[str] | None:
    """``path`` opened (created if missing) with an exclusive lock held on it; None if another process holds it.

    The lock lasts as long as the handle stays open. Closing it releases the lock, and so does the
    process ending however it ends (killed included), so no stale lock outlives its holder.
    """
    import fcntl

    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it is fsynced and renamed over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temp_path = Path(temp)
    try:
        with _disk_full_is_a_user_error(target):
            yield temp_path
            with open(temp_path, "rb") as written:
                os.fsync(written.fileno())
            os.replace(temp_path, target)
    finally:
        temp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success its files are fsynced and it replaces ``target`` whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        with _disk_full_is_a_user_error(target):
            yield staging
            for written in staging.rglob("*"):
                if written.is_file():
                    with open(written, "rb") as handle:
                        os.fsync(handle.fileno())
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _disk_full_is_a_user_error(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise KnowpackError(f"{target}: disk full while writing it; free some space and rerun the same "
                                "command (finished artifacts are kept)") from err
        raise


def file_checksum(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class RunDir:
    """A run directory with atomic writers and stage bookkeeping."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise KnowpackError(f"--out {self.path}: is a file; give a directory for the run")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise KnowpackError(f"--out {self.path}: cannot create the run directory ({err.strerror})") from err

    def __truediv__(self, name: str) -> Path:
        """The artifact ``name`` inside the run directory; a name that would lead outside it is refused."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise KnowpackError(f"{name}: artifact paths must stay inside the run directory {self.path}")
        return self.path / relative

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process; a second process gets a clear error at once."""
        handle = try_lock(self.path / LOCK)
        if handle is None:
            owner = (self.path / LOCK).read_text().strip() or "another process"  # the holder wrote its pid there
            raise KnowpackError(f"{self.path}: in use by {owner}; wait for it to finish or choose another --out")
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"knowpack pid {os.getpid()}")
            handle.flush()
            self._remove_stale_temporaries()
            yield
        finally:
            handle.close()  # closing releases the lock, also when the process is killed

    def _remove_stale_temporaries(self) -> None:
        """Temp files and staging folders left by a killed process (``.<name>.<random>.tmp``).

        Called only while holding the lock, so no live writer owns them.
        """
        for stale in self.path.rglob(".*.tmp"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)

    # -- writers -----------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> Path:
        target = self / name
        with atomic_path(target) as temp:
            temp.write_text(text, encoding="utf-8")
        return target

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")

    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        target = self / name
        with atomic_path(target) as temp:
            table.to_parquet(temp, index=False)
        return target

    def read_json(self, name: str) -> Any:
        return json.loads((self / name).read_text(encoding="utf-8"))

    def read_table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self / name)

    # -- stage bookkeeping -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self / MANIFEST
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}  # a damaged manifest only means every stage is redone

    def is_done(self, stage: str, stage_fingerprint: str) -> bool:
        """Finished with this fingerprint, every artifact present and unchanged since it was written."""
        entry = self.manifest().get(stage)
        if not entry or entry["fingerprint"] != stage_fingerprint:
            return False
        if not all((self / name).exists() for name in entry["outputs"]):
            return False
        for name, expected in entry.get("checksums", {}).items():
            if file_checksum(self / name) != expected:
                warn(f"{self / name}: does not match its checksum in {MANIFEST} (corrupt or truncated); "
                     f"recomputing stage {stage}")
                return False
        return True

    def adopt(self, stage: str, stage_fingerprint: str, other: "RunDir") -> bool:
        """Copy a finished stage with the same fingerprint from another run directory (sweeps share probes)."""
        if other.path == self.path or not other.is_done(stage, stage_fingerprint):
            return False
        outputs = other.manifest()[stage]["outputs"]
        for name in outputs:
            source, target = other / name, self / name
            if source.is_dir():
                with atomic_dir(target) as staging:
                    shutil.copytree(source, staging, dirs_exist_ok=True)
            else:
                with atomic_path(target) as temp:
                    shutil.copyfile(source, temp)
        self.mark_done(stage, stage_fingerprint, outputs)
        return True

    def mark_done(self, stage: str, stage_fingerprint: str, outputs: list[str]) -> None:
        manifest = self.manifest()
        manifest[stage] = {"fingerprint": stage_fingerprint, "outputs": outputs,
                           "checksums": {name: file_checksum(self / name) for name in outputs}}
        self.write_json(MANIFEST, manifest)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
