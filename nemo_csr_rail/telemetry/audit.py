"""The audit trail: one JSON object per guard decision and line, appended by a background thread.

The check only puts a small dict on a queue (no I/O, no JSON, no lock held across a write); a daemon thread per
audit file serialises and appends the records. So a slow or full disk, or a file that cannot be opened, never fails
or delays a check: the lost records are counted (``csr_audit_errors_total``) and the first failure of a streak is
logged once, with a second line when writing works again.

Rotation: like ``logging.handlers.WatchedFileHandler``, every batch checks whether the path still names the open
file (device and inode); after ``logrotate`` renames or removes it, the next record opens a new file at the path.
The file is opened ``O_APPEND`` so lines from several processes writing the same file do not overwrite each other.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import threading
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("nemo_csr_rail")

#: records waiting for the writer; beyond this the writer has fallen far behind and records are dropped and counted
MAX_QUEUED = 100_000
FILE_MODE = 0o640  # records carry reasoning (and text with audit_include_text): not world-readable

_STOP = object()


class AuditWriter:
    """Appends records to one file from one daemon thread (started on first use, and again after a fork)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self.write_errors = 0
        self.dropped = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._failing = False
        self._pid = -1
        self._start_lock = threading.Lock()

    # -- the check's side: never blocks, never raises ----------------------------------------------------------
    def submit(self, record: dict[str, Any]) -> None:
        """Queue one record (the writer owns it from here); a float ``ts`` is written as UTC ISO-8601."""
        if self._pid != os.getpid():
            self._start()
        if self._queue.qsize() >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.put(record)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record submitted so far has been handled (written or counted as lost)."""
        if self._pid != os.getpid():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        if self._pid == os.getpid():
            self.flush(timeout_s)
            self._queue.put(_STOP)
        self._pid = -1

    # -- the writer thread -------------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            if self._pid != -1:  # forked: the parent's thread and queue did not come along
                self._queue = queue.SimpleQueue()
                self._fd, self._identity = None, None
            self._pid = os.getpid()
            threading.Thread(target=self._run, name=f"csr-audit:{self.path}", daemon=True).start()

    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            batch: list[dict[str, Any]] = []
            waiters: list[threading.Event] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.append(item)
                if len(batch) >= 512:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._write(batch)
                except Exception:  # a bug here must not end the thread: later records would pile up unwritten
                    self.write_errors += len(batch)
                    log.exception("telemetry: audit writer failed on a batch of %d records", len(batch))
            for w in waiters:
                w.set()
            if stop:
                self._close_fd()
                return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            data = b"".join(_line(r) for r in batch)
            fd = self._open()
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            self.write_errors += len(batch)
            self._close_fd()  # reopen on the next batch: the disk may have room again, the path may be fixed
            if not self._failing:
                self._failing = True
                log.error("telemetry: cannot append to the audit log %s: %s (checks are not affected; lost records "
                          "are counted in csr_audit_errors_total; logged once until writing works again)",
                          self.path, exc)
            return
        self.written += len(batch)
        if self._failing:
            self._failing = False
            log.warning("telemetry: the audit log %s is writable again", self.path)

    def _open(self) -> int:
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if self._fd is not None and current == self._identity:
            return self._fd
        self._close_fd()  # rotated away (renamed or removed): start a new file at the path
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        st = os.fstat(fd)
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        return fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._identity = None, None


def _line(record: dict[str, Any]) -> bytes:
    """One UTF-8 JSON line; a float ``ts`` (epoch seconds, cheap to take on the check's path) becomes UTC ISO-8601.

    Text that is not valid Unicode (lone surrogates, which Python strings can hold) cannot be written as UTF-8: that
    record is written with JSON ``\\u`` escapes instead, so every line stays valid JSON whatever the user typed.
    """
    ts = record.get("ts")
    if isinstance(ts, float):
        record["ts"] = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds")
    try:
        return (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
    except UnicodeEncodeError:
        return (json.dumps(record, ensure_ascii=True, default=str) + "\n").encode()


_writers: dict[str, AuditWriter] = {}
_writers_lock = threading.Lock()


def writer_for(path: str) -> AuditWriter:
    """The process's writer for ``path``: configs that share an audit file share one writer (one appender)."""
    key = os.path.abspath(path)
    w = _writers.get(key)
    if w is None:
        with _writers_lock:
            w = _writers.get(key)
            if w is None:
                w = _writers[key] = AuditWriter(key)
    return w


def writers() -> list[AuditWriter]:
    return list(_writers.values())


@atexit.register
def _flush_all() -> None:
    """Write what is queued before the interpreter exits (daemon threads are killed without warning)."""
    for w in writers():
        with contextlib.suppress(Exception):
            w.close(timeout_s=2.0)
