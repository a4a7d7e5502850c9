"""The driver's lease on a repository: ``.driver.lock``, ``driver.json`` and the fencing token.

One driver runs in a repository folder at a time. It holds ``.driver.lock`` (an OS
file lock the kernel releases when its holder dies) and writes ``driver.json``
(pid, host, start time, heartbeat, and a fencing token): only writes that carry
the current token may change the repository, so no process of a dead or replaced
driver writes a row or replaces a checkpoint. Once it has planned, the driver adds
what it runs with (``about``: its budget, backend and workers, ``DriverLease.describe``),
so that ``phobbit status`` can measure progress against the budget; the file stays
after the run, marked ended, and an older one without ``about`` reads as before.

A ``phobbit.storage.repository.Repository`` owns one ``DriverLease``, made with
its folder and its results lock, under which the lease writes ``driver.json``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from phobbit.errors import FatalError, RepositoryError, StaleDriverError, StorageError
from phobbit.storage import files

DRIVER_FILE = "driver.json"
DRIVER_LOCK = ".driver.lock"
DRIVER_LOCK_WAIT_S = 0.5
# A running driver touches driver.json this often; one whose driver.json is older than
# DRIVER_FRESH_S is taken for gone where its pid cannot be checked (another host).
HEARTBEAT_S = 10.0
DRIVER_FRESH_S = 60.0


ResultsLock = Callable[[type[FatalError]], AbstractContextManager[None]]
"""The repository's results lock: held in the block, raising the given error on a timeout."""


class DriverLease:
    """The driver's lease on a repository folder (see the module's docstring).

    Args:
        path: the repository folder.
        locked: the repository's results lock, under which the token changes
            and fenced writes check it.
    """

    def __init__(self, path: Path, locked: ResultsLock) -> None:
        self.path = path
        self._locked = locked

    def __repr__(self) -> str:
        return f"DriverLease({str(self.path)!r})"

    @contextmanager
    def driver_lock(self) -> Iterator[str]:
        """Held by the one driver that runs in this folder; a killed driver's lock dies with it.

        The lock is an OS file lock (``flock``), which the kernel releases when
        its holder dies however it dies, so a stale ``driver.json`` left by a
        killed driver never blocks a resume. Should ``.driver.lock`` have been
        deleted under a running driver, ``driver.json`` still names it: a live
        process with its pid and start time on this host, or (on another host,
        where no pid can be checked) a ``driver.json`` its heartbeat touched less
        than ``DRIVER_FRESH_S`` ago, is refused too.

        Yields:
            This driver's fencing token, written to ``driver.json`` under the
            results lock: from now on only segments that carry it may write.

        Raises:
            RepositoryError: naming the driver (pid, host) that holds the folder now.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        files.check_lock(self.path / DRIVER_LOCK)
        # Not 0: a reader such as `phobbit status` may test the lock for an instant.
        lock = FileLock(str(self.path / DRIVER_LOCK), timeout=DRIVER_LOCK_WAIT_S)
        try:
            lock.acquire()
        except Timeout:
            raise RepositoryError(
                f"repository {self.path} is in use by a running phobbit ({self._driver_name()}); "
                "wait for it to finish or stop it, or use another folder"
            ) from None
        try:
            self._refuse_running_driver()
            token = uuid.uuid4().hex
            self._write_driver(token)
            try:
                with self._heartbeat(token):
                    yield token
            finally:
                self._mark_ended(token)
        finally:
            lock.release()

    def _write_driver(self, token: str) -> None:
        """Makes this process the repository's driver, under the results lock.

        Under that lock, so that a worker of the previous driver that checked
        the old token under it has finished its write before the token changes.
        """
        owner = self.path / DRIVER_FILE
        record = {
            "pid": os.getpid(),
            "host": this_host(),
            "process_start": process_start(os.getpid()),
            "started": time.time(),
            "token": token,
        }
        with self._locked(RepositoryError):
            try:
                files.replace(owner, json.dumps(record).encode())
            except OSError as exc:
                raise StorageError(
                    f"cannot write {owner}: {exc.strerror}; fix the repository folder "
                    "(free disk space, make it writable), then run again"
                ) from None

    def _mark_ended(self, token: str) -> None:
        """Records in ``driver.json`` that its driver has ended, unless another driver has
        taken over; best effort.

        Its process may live on (a notebook), which must not read as a driver
        that still runs; and its token goes, so nothing may write with it now.
        """
        owner = self.path / DRIVER_FILE
        if not owner.exists():
            return  # removed with what a run stopped by bad input made: make nothing again
        lock = FileLock(str(self.path / ".results.lock"), timeout=DRIVER_LOCK_WAIT_S)
        try:
            with lock:
                record = self.driver_record()
                if record is None or record.get("token") != token:
                    return
                ended = {**record, "token": None, "ended": time.time()}
                files.replace(owner, json.dumps(ended).encode())
        except (OSError, Timeout, RepositoryError):
            pass  # the pid check still tells once this process is gone

    def describe(self, token: str, about: dict[str, Any]) -> None:
        """Adds to ``driver.json`` what the driver holding ``token`` runs with, under the
        results lock; best effort (status then reads the run as an older one did).

        Args:
            token: the driver's fencing token; another driver's file is left alone.
            about: plain data (``budget``, ``backend``, ``workers``, ``devices``), kept
                after the run has ended (``_mark_ended`` keeps every field).
        """
        owner = self.path / DRIVER_FILE
        try:
            with self._locked(RepositoryError):
                record = self.driver_record()
                if record is None or record.get("token") != token:
                    return
                files.replace(owner, json.dumps({**record, "about": about}).encode())
        except (OSError, RepositoryError):
            pass  # what status reads is not worth stopping a run for

    def driver_record(self) -> dict[str, Any] | None:
        """What ``driver.json`` says of the last driver (pid, host, started, token), or None
        when there is none or it is no JSON object.

        Raises:
            RepositoryError: when ``driver.json`` is a link out of the folder, a FIFO or
                a device, or holds more than ``files.MAX_WHOLE_BYTES`` (``files.read_whole``).
        """
        try:
            raw = files.read_whole(self.path / DRIVER_FILE)
        except OSError:
            return None
        try:
            record = None if raw is None else json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def _refuse_running_driver(self) -> None:
        """Refuses to take over from a driver that still runs although its lock was free."""
        try:
            touched = (self.path / DRIVER_FILE).stat().st_mtime
            who = self.driver_record() or {}
            pid, host = int(who["pid"]), str(who["host"])
        except (OSError, KeyError, TypeError, ValueError):
            return
        if who.get("ended") is not None:
            return  # it ended cleanly, whether or not its process lives on
        if host == this_host():
            if pid == os.getpid():
                return  # this process ran here before (run() called again)
            started, recorded = process_start(pid), who.get("process_start")
            if started is not None and recorded is not None:
                if started != recorded:
                    return  # the pid now belongs to another process
                raise RepositoryError(
                    f"repository {self.path} is in use by a running phobbit (pid {pid} on "
                    f"{host}) although its lock file .driver.lock is gone (deleted?); wait for "
                    f"that run or stop it (kill {pid}), then run again"
                )
            if not pid_alive(pid):
                return
        age = time.time() - touched
        if age < DRIVER_FRESH_S:
            raise RepositoryError(
                f"repository {self.path} may be in use by phobbit pid {pid} on {host}: its "
                f"driver.json was touched {max(age, 0):.0f} s ago and this host cannot check that "
                f"process; if that run has stopped, run again in {DRIVER_FRESH_S:.0f} s, or "
                f"delete {self.path / DRIVER_FILE} first"
            )

    @contextmanager
    def _heartbeat(self, token: str) -> Iterator[None]:
        """Touches ``driver.json`` every ``HEARTBEAT_S`` while this driver holds the folder."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    if self.token() != token:
                        return  # replaced: the file is another driver's now
                    os.utime(self.path / DRIVER_FILE)
                except OSError:
                    pass

        thread = threading.Thread(target=beat, name="phobbit-driver-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def token(self) -> str | None:
        """The fencing token ``driver.json`` holds now; None when there is none or it is
        unreadable."""
        try:
            return json.loads(files.read_whole(self.path / DRIVER_FILE) or b"").get("token")
        except (OSError, ValueError, AttributeError, RepositoryError):
            return None  # no driver.json phobbit can read holds no token: nothing writes

    def holds(self, token: str) -> bool:
        """Whether ``token`` is still the fencing token of this repository's driver."""
        return self.token() == token

    @contextmanager
    def fenced(self, token: str) -> Iterator[None]:
        """Holds the results lock while ``token`` is this repository's driver's token.

        A write made inside cannot race a new driver taking over: it writes its
        token under the same lock.

        Raises:
            StaleDriverError: when another driver has taken over (or ``driver.json`` is gone).
            StorageError: when the lock cannot be had within ``LOCK_TIMEOUT_S``.
        """
        with self._locked(StorageError):
            if self.token() != token:
                raise StaleDriverError(
                    f"repository {self.path} has been taken over by another driver"
                )
            yield

    def _driver_name(self) -> str:
        """Who holds the driver lock, as ``pid N on HOST``, from ``driver.json``.

        The holder writes ``driver.json`` just after taking the lock; until then
        the file may still name a driver that was killed, so a dead pid on this
        host is read again for a moment before it is believed.
        """
        name = "another process"
        for _ in range(10):
            try:
                who = self.driver_record() or {}
                name = f"pid {who['pid']} on {who['host']}"
                if who["host"] != this_host() or pid_alive(int(who["pid"])):
                    break
            except (OSError, ValueError, KeyError, TypeError, RepositoryError):
                pass
            time.sleep(0.05)
        return name


def driver_alive(record: dict[str, Any], touched: float | None) -> bool | None:
    """Whether the driver ``driver.json`` names (``record``, touched at ``touched``) still runs.

    The same judgement a new driver makes before it takes over a folder whose lock
    was free (``DriverLease.driver_lock``), for readers such as ``phobbit status``:
    a driver that recorded its end, or holds no token, has stopped; on this host, its
    pid must be alive and (where the platform tells) have the recorded start time, so
    a pid reused by another process is not taken for it; on another host, where no
    pid can be checked, a heartbeat younger than ``DRIVER_FRESH_S`` says it runs.

    Returns:
        True or False; None when ``record`` names no driver (damaged, or none yet).
    """
    try:
        pid, host = int(record["pid"]), str(record["host"])
    except (KeyError, TypeError, ValueError):
        return None
    if record.get("ended") is not None or not record.get("token"):
        return False
    if host == this_host():
        started, recorded = process_start(pid), record.get("process_start")
        if started is not None and recorded is not None:
            return started == recorded
        return pid_alive(pid)
    return touched is not None and time.time() - touched < DRIVER_FRESH_S


def process_start(pid: int) -> float | None:
    """When process ``pid`` of this host started (a reused pid gives another value); None
    when it does not exist or this platform cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Field 22, after the command name in parentheses (which may hold spaces): clock ticks.
        return float(stat.rpartition(")")[2].split()[19])
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # no such process
    except (OSError, ValueError, IndexError):
        return None
    try:
        import psutil
    except ImportError:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_host() -> str:
    """The host name written into every row."""
    return socket.gethostname()
