"""Node-wide counts of pending connections and associations, shared by listener processes.

Several receiver processes accept on one port; a limit per process would refuse a scanner
while the node as a whole is under its limit (whichever process the kernel hands the
connection to may be the full one). So every process counts in one small shared memory file,
one row per process: [pending connections, associations, refused connections]. A connection
from a source address the node refuses counts as *refused*, apart from the pending ones, so
that refused peers can never take the pending slots an allowed scanner needs; their budget is
small (``MAX_REFUSED_CONNECTIONS``), since all they get is an A-ASSOCIATE-RJ. A process takes
a slot under a lock (a POSIX record lock on the file, which the kernel drops when its holder
dies, plus a thread lock, since record locks are per process) only while the sum over all rows
is under the limit. Each process writes only its own row, so the parent clears the row of a process
that died (its slots died with it) before starting the replacement.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PENDING = 0
ASSOCIATIONS = 1
REFUSED = 2
_KINDS = 3
# Connections from refused source addresses served at once across the node (each is read up to
# its A-ASSOCIATE-RQ and answered with an A-ASSOCIATE-RJ); beyond it they are closed at accept.
MAX_REFUSED_CONNECTIONS = 4
_CELL = 8  # bytes, one signed 64-bit count


class Slots:
    """The counts of one node; ``take`` and ``give_back`` act on this process's row."""

    def __init__(
        self,
        fd: int,
        processes: int,
        index: int,
        max_pending: int,
        max_associations: int,
        max_refused: int = MAX_REFUSED_CONNECTIONS,
    ):
        if not 0 <= index < processes:
            raise ValueError(f"process index {index} outside 0..{processes - 1}")
        self.fd = fd
        self.processes = processes
        self.index = index
        self.limits = (max_pending, max_associations, max_refused)
        self._map = mmap.mmap(fd, processes * _KINDS * _CELL)
        self._cells = memoryview(self._map).cast("q")
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        processes: int,
        max_pending: int,
        max_associations: int,
        index: int = 0,
        max_refused: int = MAX_REFUSED_CONNECTIONS,
    ) -> Slots:
        """A new, zeroed table; the processes that share it get its ``fd`` through
        ``subprocess``'s ``pass_fds``."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("dicomnode-slots")
        else:  # pragma: no cover - not Linux
            handle = tempfile.TemporaryFile()
            fd = os.dup(handle.fileno())
            handle.close()
        os.ftruncate(fd, processes * _KINDS * _CELL)
        return cls(fd, processes, index, max_pending, max_associations, max_refused)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _total(self, kind: int) -> int:
        cells = self._cells
        return sum(cells[row * _KINDS + kind] for row in range(self.processes))

    def take(self, kind: int) -> bool:
        """One slot of ``kind`` for this process, if the node is under its limit."""
        with self._locked():
            if self._total(kind) >= self.limits[kind]:
                return False
            self._cells[self.index * _KINDS + kind] += 1
            return True

    def give_back(self, kind: int) -> None:
        with self._locked():
            cell = self.index * _KINDS + kind
            if self._cells[cell] > 0:
                self._cells[cell] -= 1

    def clear(self, index: int) -> None:
        """Forget the slots of process ``index`` (it died; the parent calls this)."""
        with self._locked():
            for kind in range(_KINDS):
                self._cells[index * _KINDS + kind] = 0

    def total(self, kind: int) -> int:
        with self._locked():
            return self._total(kind)

    @property
    def closed(self) -> bool:
        return self._map.closed

    def close(self) -> None:
        if self._map.closed:
            return
        self._cells.release()
        self._map.close()
        try:
            os.close(self.fd)
        except OSError:
            pass
