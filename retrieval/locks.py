"""An exclusive advisory file lock that forked children never hold.

`flock` locks belong to an open file description, and `fork` copies the descriptor into the
child: a decode worker forked during an index run used to keep the writer lock after the run was
killed, until the worker noticed (torch polls its parent every 5 s), and the next run was refused
as busy. POSIX record locks (`lockf`) are not inherited, but two of them in one process do not
exclude each other and closing *any* descriptor of the file drops them; OFD locks (`F_OFD_SETLK`)
are shared through fork exactly like `flock`. So the lock stays a `flock` (held by this process
only, it excludes a second writer in this process too, and the `flock` of older versions) and
every forked child closes its copies of the held descriptors right after `fork`.
Standard library only."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_held: set[int] = set()
"""Descriptors of the locks this process holds now."""


def _close_held_in_child() -> None:
    # Close, never LOCK_UN: unlocking the shared open file description here would release the
    # parent's lock too, while closing only drops this process's reference to it. Runs for every
    # os.fork() (multiprocessing and torch DataLoader workers use it); children started with
    # exec (subprocess, Ray) never see the descriptor at all, since Python opens it O_CLOEXEC.
    for fd in list(_held):
        with suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[bool]:
    """Try to take an exclusive lock on `path` (created if missing) without waiting; yields
    whether it was taken, and releases it on exit. Forked children do not hold it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    _held.add(fd)  # before locking: a thread forking meanwhile must not leave a child holding it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            # Unlock before forgetting the descriptor: a child forked between the two would
            # otherwise keep a copy of a still-locked descriptor.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _held.discard(fd)
        os.close(fd)
