"""The run lock: one driver per run directory, so no task is computed or stored twice.

`<run>/lock.json` names its holder: host, pid, run id, start time, and when it was last refreshed.
The driver takes it before reading anything (`bench/runner.py: run_sweep`), refreshes it from a
background thread every `ttl_s / 4` seconds, and releases it on every way out. A second driver is
refused with a message naming the holder.

How strong the guarantee is depends on the filesystem:

- Local paths (and `file://`): the file is created with `O_CREAT | O_EXCL`, which is atomic, so of
  two drivers exactly one gets the lock (on NFS this holds from NFSv3 on).
- Object stores (s3://, gs://): there is no exclusive create, and pyarrow's filesystems offer no
  conditional put. The lock is a lease object: the driver writes it, waits `settle_s`, reads it
  back and proceeds only if it still names itself (the last writer wins). Two drivers starting
  within the object store's write latency of each other could both pass; the refresh thread
  checks ownership again and, when another driver holds the lease, warns and stops refreshing.

A lock is stale when its holder is a process that no longer runs on this host, or when its lease
was not refreshed for `ttl_s` (any host: the holder's clock and ours are assumed to agree within
seconds). Stale locks are kept unless the user breaks them (`editsweep run --break-lock`); a live
holder is never broken.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import pyarrow.fs as pafs

from editsweep.bench.store import RunStore

LOCK_FILE = "lock.json"
DEFAULT_TTL_S = 120.0  # a lease not refreshed for this long is stale
OBJECT_STORE_SETTLE_S = 1.0  # between writing a lease and reading it back (object stores only)

log = logging.getLogger(__name__)


class RunLockError(RuntimeError):
    """The run directory is locked by another driver (the message names it and what to do)."""


class RunLock:
    """The lock of one run directory, held by the driver of run `run_id`."""

    def __init__(
        self, store: RunStore, run_id: str, ttl_s: float = DEFAULT_TTL_S, settle_s: float = OBJECT_STORE_SETTLE_S
    ) -> None:
        self.store, self.run_id, self.ttl_s, self.settle_s = store, run_id, ttl_s, settle_s
        self.path = store.path(LOCK_FILE)
        self.token = f"{run_id}-{uuid.uuid4().hex}"
        self.local = isinstance(store.fs, pafs.LocalFileSystem)
        self.started_at = _now()
        self._acquired = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self, break_stale: bool = False) -> RunLock:
        """Take the lock, or raise RunLockError naming its holder; `break_stale` replaces a stale one."""
        self.store.fs.create_dir(self.store.root, recursive=True)
        if self.local:
            self._acquire_local(break_stale)
        else:
            self._acquire_lease(break_stale)
        self._acquired = True
        self._heartbeat = threading.Thread(target=self._beat, name=f"run-lock {self.run_id}", daemon=True)
        self._heartbeat.start()
        return self

    def _acquire_local(self, break_stale: bool) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder, raw = self._read()
            self._refuse_unless_breakable(holder, break_stale)
            self._break_local(raw)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # a racing breaker wins: refused
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self._record()))

    def _break_local(self, stale_raw: bytes | None) -> None:
        """Move the stale lock aside, and put it back if it changed since we judged it stale."""
        aside = f"{self.path}.broken-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # released meanwhile
        with open(aside, "rb") as f:
            moved = f.read()
        if moved != stale_raw:  # another driver took the lock between our read and the rename
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            holder = _parse(moved)
            raise RunLockError(f"{self.store.uri} was locked by another driver meanwhile: {_describe(holder)}")
        os.unlink(aside)

    def _acquire_lease(self, break_stale: bool) -> None:
        holder, raw = self._read()
        if raw is not None:
            self._refuse_unless_breakable(holder, break_stale)
        self._write()
        time.sleep(self.settle_s)
        holder, _ = self._read()
        if holder is None or holder.get("token") != self.token:
            raise RunLockError(
                f"{self.store.uri}: another driver wrote the lease at the same time ({_describe(holder)}); "
                "one driver per run directory"
            )

    def _refuse_unless_breakable(self, holder: dict[str, Any] | None, break_stale: bool) -> None:
        """Raise RunLockError unless the lock is stale and `break_stale` is set."""
        where = f"{self.store.uri} is locked by another driver"
        if holder is None:
            if break_stale:
                return
            raise RunLockError(
                f"{where}, but its lock file {self.path} is unreadable (a driver killed while taking it?). "
                "If no other driver is running, rerun with --break-lock (editsweep run --break-lock)."
            )
        reason = self._stale_reason(holder)
        if reason is None:
            raise RunLockError(
                f"{where}: {_describe(holder)}. It is still running (its lease is fresh): wait for it to end or "
                "stop it. One driver per run directory: give a parallel sweep its own --out."
            )
        if not break_stale:
            raise RunLockError(
                f"{where}: {_describe(holder)}, which {reason}. If that driver is gone, rerun with --break-lock "
                "(editsweep run --break-lock) to take the run directory over."
            )
        log.warning("breaking the stale lock of %s: %s, which %s", self.store.uri, _describe(holder), reason)

    def _stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why the holder's lock is stale, or None when it may still be running."""
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid") or 0)):
            return f"is no longer running (no process {holder.get('pid')} on {holder.get('host')})"
        try:
            age = (datetime.now(timezone.utc) - datetime.fromisoformat(str(holder["refreshed_at"]))).total_seconds()
            ttl = float(holder.get("ttl_s") or DEFAULT_TTL_S)
        except (KeyError, TypeError, ValueError):
            return "left a lock without a valid refresh time"
        if age > ttl:
            return f"has not refreshed its lease for {age:.0f} s (it counts as stale after {ttl:.0f} s)"
        return None

    def refresh(self) -> bool:
        """Renew the lease; False (and nothing written) when another driver holds the lock now."""
        if not self.held():
            return False
        self._write()
        return True

    def held(self) -> bool:
        """Whether the lock file still names this driver."""
        holder, _ = self._read()
        return self._acquired and holder is not None and holder.get("token") == self.token

    def release(self) -> None:
        """Stop refreshing and remove the lock, unless another driver has taken it meanwhile."""
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()
        if self._acquired and self.held():
            try:
                self.store.fs.delete_file(self.path)
            except FileNotFoundError:
                pass
        self._acquired = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self.refresh():
                    log.warning(
                        "the lock of %s was taken over by another driver; this run no longer holds it", self.store.uri
                    )
                    return
            except OSError as err:  # a transient store error: the lease has ttl_s to recover
                log.warning("could not refresh the lock of %s: %s", self.store.uri, err)

    def _record(self) -> dict[str, Any]:
        return dict(
            host=socket.gethostname(), pid=os.getpid(), run_id=self.run_id, started_at=self.started_at,
            refreshed_at=_now(), ttl_s=self.ttl_s, token=self.token,
        )  # fmt: skip

    def _write(self) -> None:
        data = json.dumps(self._record()).encode()
        if self.local:  # atomic replace, so a reader never sees half a lock
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:  # an object put is atomic
            with self.store.fs.open_output_stream(self.path) as out:
                out.write(data)

    def _read(self) -> tuple[dict[str, Any] | None, bytes | None]:
        """The holder (None when unreadable) and the raw bytes (None when there is no lock)."""
        try:
            with self.store.fs.open_input_stream(self.path) as f:
                raw = f.read()
        except FileNotFoundError:
            return None, None
        except OSError:
            if self.store.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None, None
            raise
        return _parse(raw), raw


def read_lock(store: RunStore) -> dict[str, Any] | None:
    """The current holder of the run directory's lock (None when it is not locked), for `status`."""
    return RunLock(store, "reader")._read()[0]


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(raw)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable lock"
    return (
        f"run {holder.get('run_id')} on {holder.get('host')} (pid {holder.get('pid')}), started "
        f"{holder.get('started_at')}, lease refreshed {holder.get('refreshed_at')}"
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
