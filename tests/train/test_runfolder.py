"""Tests of flowpost/train/runfolder.py: the lock, refusal to train over a run, --overwrite,
atomic writes, and one-line errors for folders that cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flowpost.train.runfolder import (
    LOCK,
    RunFolderError,
    RunLock,
    append_line,
    atomic_write_text,
    open_run_folder,
)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _make_run(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)


def test_existing_run_is_refused_and_left_untouched(tmp_path) -> None:
    run = tmp_path / "run"
    _make_run(run)
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match=r"already holds a run .*--resume.*--overwrite"):
        open_run_folder(run)
    assert _snapshot(run) == before and not (run / LOCK).exists()
    # an empty folder is not a run: training into it is fine
    (tmp_path / "empty").mkdir()
    open_run_folder(tmp_path / "empty").release()


def test_overwrite_moves_the_old_run_aside_and_says_where(tmp_path) -> None:
    run = tmp_path / "run"
    _make_run(run)
    before = _snapshot(run)
    said: list[str] = []
    lock = open_run_folder(run, overwrite=True, say=said.append)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and _snapshot(aside[0]) == before
    assert said == [f"moved the existing run {run} aside to {aside[0]}"]
    assert sorted(p.name for p in run.iterdir()) == [LOCK]
    lock.release()
    with pytest.raises(RunFolderError, match="exclude each other"):
        open_run_folder(run, resume=True, overwrite=True)


def test_resume_is_allowed_and_holds_the_lock(tmp_path) -> None:
    run = tmp_path / "run"
    _make_run(run)
    with open_run_folder(run, resume=True):
        info = json.loads((run / LOCK).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert not (run / LOCK).exists()


def test_second_writer_is_refused_naming_pid_and_host(tmp_path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        for resume in (False, True):
            with pytest.raises(RunFolderError) as err:
                open_run_folder(run, resume=resume)
            msg = str(err.value)
            assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in msg
            assert "\n" not in msg
        # another host cannot be checked: it is refused too
        (run / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
        with pytest.raises(RunFolderError, match="pid 1 on host elsewhere"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_overwrite_never_moves_aside_a_run_in_use(tmp_path) -> None:
    """``--overwrite`` into the folder of a run still training (another live process) is
    refused, and that run keeps its folder (moving it aside would split it in two)."""
    run = tmp_path / "run"
    _make_run(run)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        before = _snapshot(run)
        with pytest.raises(RunFolderError, match=f"in use by pid {holder.pid}"):
            open_run_folder(run, overwrite=True)
        assert _snapshot(run) == before
        assert [p.name for p in tmp_path.iterdir()] == ["run"]
    finally:
        holder.kill()
        holder.wait()


def test_unreadable_lock_is_refused_naming_the_lock(tmp_path) -> None:
    """A lock whose content cannot be read (cut by a crash) may belong to a live run: it is
    refused with a one-line message that names the lock file to delete."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("")
    with pytest.raises(RunFolderError) as err:
        open_run_folder(run)
    msg = str(err.value)
    assert str(run / LOCK) in msg and "delete the lock" in msg and "\n" not in msg


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path) -> None:
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    said: list[str] = []
    lock = open_run_folder(run, say=said.append)
    assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    assert said == [
        f"took over the lock of {run} left by pid {dead.pid}, which is no longer running"
    ]
    lock.release()


def _read_only(path: Path) -> bool:
    """Make ``path`` unwritable even for root (chattr +i); False if this system cannot."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def _writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_read_only_run_folder_is_one_line_naming_the_path(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    _make_run(run)
    if not _read_only(run):  # no way to make a folder read-only here: simulate the OS's error
        real_link = os.link

        def denied(src, dst, *a, **k):  # type: ignore[no-untyped-def]
            if Path(dst).parent == run:
                raise PermissionError(13, "Permission denied", str(dst))
            return real_link(src, dst, *a, **k)

        monkeypatch.setattr(os, "link", denied)
    try:
        with pytest.raises(RunFolderError) as err:
            open_run_folder(run, resume=True)
    finally:
        _writable(run)
    msg = str(err.value)
    assert msg.startswith(f"cannot write {run}") and "permission denied" in msg
    assert "\n" not in msg


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")
    real_replace = os.replace

    def killed(*args):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # interrupted between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new" * 1000)
    monkeypatch.setattr(os, "replace", real_replace)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_append_line_writes_whole_lines(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as fh:
        append_line(fh, '{"step": 1}')
        append_line(fh, '{"step": 2}\n')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
