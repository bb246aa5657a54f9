"""One writer per run folder: an exclusive lock held for a training run's whole life.

The lock is `filelock`'s (an OS lock on DIR/writer.lock, which the kernel releases when its
process dies, however it dies); DIR/writer.json says who holds it, so that a second writer is
refused by name. A writer.json left behind names a process that died without releasing it
cleanly: the next writer takes over and says so. Readers (evaluate, predict, plot) never take it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

import filelock

from jaxmnist.errors import FolderInUse

LOCK_FILE, HOLDER_FILE = "writer.lock", "writer.json"


def _describe(holder: dict) -> str:
    command = f" (`{holder['command']}`)" if holder.get("command") else ""
    pid, host, since = (holder.get(key, "?") for key in ("pid", "host", "since"))
    return f"process {pid} on host {host}, since {since}{command}"


class WriterLock:
    """The exclusive lock on run folder `folder` (created if missing)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = filelock.FileLock(folder / LOCK_FILE, timeout=0)

    def acquire(self) -> str | None:
        """Takes the lock; returns a line saying whose stale lock it took over, if any.

        Raises:
            FolderInUse: another live process holds it (named with its pid, host and start).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        holder_path = self.folder / HOLDER_FILE
        try:
            self._lock.acquire()
        except filelock.Timeout:
            holder = _read(holder_path)
            who = _describe(holder) if holder else "another process (it has not said which yet)"
            raise FolderInUse(f"{self.folder} is being written by another run: {who}. One run folder has one writer "
                              "at a time: wait for that run to end (or stop it), then run this command again; or give "
                              "this run another --checkpoint-dir. Reading the folder (evaluate, predict, plot) needs "
                              "no lock.") from None
        stale = _read(holder_path)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
              "command": " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else ""}
        holder_path.write_text(json.dumps(me) + "\n")
        return f"took over the lock of {self.folder} left by {_describe(stale)}, which ended without " \
               "releasing it" if stale else None

    def release(self) -> None:
        if self._lock.is_locked:
            (self.folder / HOLDER_FILE).unlink(missing_ok=True)
            self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.is_locked


def _read(path: Path) -> dict:
    """The holder a writer.json names; {} when there is none (or it was cut short mid-write)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
