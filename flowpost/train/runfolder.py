"""Run folders that never lose or mix runs: a lock, refusal to train over a run, atomic writes.

* :class:`RunLock`: ``<run>/.lock`` names the process writing the run (pid and host). A
  second writer is refused with one line naming the holder; a lock left by a process that
  died on this host is taken over (and says so).
* :func:`open_run_folder`: the checks before a run writes anything. Training into a folder
  that already holds a run is refused unless it is resumed, or ``overwrite`` moves the old
  run aside first (to ``<run>.old-<time>``, printed).
* :func:`atomic_write_text` / :func:`atomic_write_bytes`: write to a temporary file in the
  same folder, fsync, rename over the target. A kill at any moment leaves the old file or
  the new one, never half of one.
* :func:`append_line`: one whole line per ``write`` on a file opened for appending, flushed
  and fsynced (``metrics.jsonl``); a line cut by a kill is dropped on resume.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> with open_run_folder(run) as folder:
    ...     atomic_write_text(run / "config.yaml", "a: 1\\n")
    ...     (run / LOCK).exists()
    True
    >>> (run / LOCK).exists()
    False
    >>> open_run_folder(run)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flowpost.train.runfolder.RunFolderError: .../run already holds a run (config.yaml); ...
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from flowpost.train.checkpoint import fsync_dir

LOCK = ".lock"
# what makes a folder a run (anything else, e.g. an empty folder, may be trained into)
RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", "summary.json")


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked (in use, holds another run, not writable)."""


def writable_error(err: OSError, path: Path | str) -> RunFolderError:
    """A one-line error for an ``OSError`` raised while writing ``path``."""
    where = err.filename or path
    if isinstance(err, PermissionError) or err.errno in (1, 13, 30):
        return RunFolderError(f"cannot write {where}: permission denied (read-only run folder?)")
    return RunFolderError(f"cannot write {where}: {err.strerror or err}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (temporary file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode())


def append_line(fh: TextIO, line: str) -> None:
    """Append one whole line (a single ``write``), flushed and fsynced."""
    fh.write(line.rstrip("\n") + "\n")
    fh.flush()
    with contextlib.suppress(OSError):
        os.fsync(fh.fileno())


def is_run(path: Path) -> list[str]:
    """What makes ``path`` an existing run (empty: it is not one)."""
    if not path.is_dir():
        return []
    return [m for m in RUN_MARKERS if (path / m).exists()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


class RunLock:
    """``<run>/.lock``: held by one writer at a time (pid and host inside, JSON).

    Use :meth:`acquire` / :meth:`release` or ``with RunLock(run):``.
    """

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        self.path = self.run / LOCK
        self.held = False
        self.took_over: dict[str, Any] | None = None

    def holder(self) -> dict[str, Any] | None:
        """The lock's content, or None if there is no lock (an unreadable one is ``{}``)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def live_holder(self) -> dict[str, Any] | None:
        """The holder if it may still be running (another host counts as running)."""
        info = self.holder()
        if info is None:
            return None
        pid, host = info.get("pid"), info.get("host")
        if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
            return None
        if isinstance(pid, int) and pid == os.getpid() and host == socket.gethostname():
            return None
        return info

    def refusal(self, info: dict[str, Any]) -> RunFolderError:
        pid, host = info.get("pid", "?"), info.get("host", "?")
        return RunFolderError(
            f"run folder {self.run} is in use by pid {pid} on host {host} "
            f"(lock {self.path}); wait for that run to end, or delete the lock if it is gone"
        )

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunFolderError` naming the live holder."""
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        tmp = self.run / f".lock.tmp-{os.getpid()}"
        try:
            self.run.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(mine))
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if a lock exists
                    self.held = True
                    return
                except FileExistsError:
                    info = self.live_holder()
                    if info is not None:
                        raise self.refusal(info) from None
                    # a dead process's lock on this host: take it over
                    stale = self.holder()
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    self.took_over = stale
            raise RunFolderError(f"could not take the lock {self.path} (contended)")
        except OSError as err:
            raise writable_error(err, self.run) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def release(self) -> None:
        if not self.held:
            return
        info = self.holder()
        if info and info.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def aside_name(run: Path) -> Path:
    """A free sibling name for a run moved aside: ``<run>.old-YYYYmmdd-HHMMSS[-k]``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = run.with_name(f"{run.name}.old-{stamp}")
    k = 1
    while candidate.exists():
        candidate = run.with_name(f"{run.name}.old-{stamp}-{k}")
        k += 1
    return candidate


def open_run_folder(
    run: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    say: Any = None,
) -> RunLock:
    """Check that ``run`` may be written as asked and lock it; nothing is written on refusal.

    * in use by a live process: refused, naming its pid and host;
    * holds a run and neither ``resume`` nor ``overwrite``: refused, the folder untouched;
    * ``overwrite``: the old run is moved to ``<run>.old-<time>`` and that is printed;
    * not writable: refused, naming the path.

    Returns the held :class:`RunLock` (release it, or use it as a context manager).
    ``say`` prints a line (default: stderr).
    """
    say = say or (lambda msg: print(msg, file=sys.stderr))
    run = Path(run)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other; choose one")
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"run folder {run} exists and is not a folder")
    lock = RunLock(run)
    info = lock.live_holder()
    if info is not None:
        raise lock.refusal(info)
    found = is_run(run)
    if found and not resume:
        if not overwrite:
            raise RunFolderError(
                f"{run} already holds a run ({', '.join(found)}); continue it with --resume, "
                "or pass --overwrite to move it aside and start again"
            )
        aside = aside_name(run)
        try:
            os.replace(run, aside)
        except OSError as err:
            raise writable_error(err, run) from None
        say(f"moved the existing run {run} aside to {aside}")
    lock.acquire()
    if lock.took_over is not None:
        pid = lock.took_over.get("pid", "?")
        say(f"took over the lock of {run} left by pid {pid}, which is no longer running")
    return lock


__all__ = [
    "LOCK",
    "RunFolderError",
    "RunLock",
    "append_line",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_run",
    "open_run_folder",
    "writable_error",
]
