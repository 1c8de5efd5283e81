"""Who is writing what: the owner of each pending document version, and whether that owner is still alive.

Several processes may share a store through a Milvus server, so opening one must not undo another's work in
progress. Each process that writes records itself once as an owner: host, pid and the process's start time
(so a pid reused after it died does not pass for it), plus a heartbeat it renews while the store is open. On
the same host an owner is dead when its pid is gone or belongs to a later process; on another host, where its
pid cannot be checked, when its heartbeat is older than the lease.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 600.0
"""An owner on another host is presumed dead this long after its last heartbeat (generous for clock skew)."""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str
    """The process's start time (boot id and clock ticks since boot), or '' where the system does not say."""

    @property
    def key(self) -> str:
        return f"{self.host}/{self.pid}/{self.started}"


def _start_time(pid: int) -> str | None:
    """A stamp that differs between two processes ever given the same pid on this host (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # Field 22 is the start time; the command name before it (in parentheses) may itself hold spaces.
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def this_process() -> Owner:
    return Owner(socket.gethostname(), os.getpid(), _start_time(os.getpid()) or "")


def is_alive(owner: Owner, heartbeat: float, now: float | None = None) -> bool:
    """Whether the owner may still be writing (unproven death counts as alive, so nothing live is undone)."""
    if owner.host != socket.gethostname():
        return (now if now is not None else time.time()) - heartbeat < LEASE_SECONDS
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # the pid exists, run by another user
    started = _start_time(owner.pid)
    return not (owner.started and started and started != owner.started)


class Heartbeat:
    """Calls `beat()` every HEARTBEAT_SECONDS on a daemon thread until stopped."""

    def __init__(self, beat: Callable[[], None]):
        self._beat = beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pagelens-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._beat()
            except Exception:  # a busy or closing catalogue: the next beat tries again, well inside the lease
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
