"""Models kept warm: a worker holds the models it trained, for its next segment of them.

Continuing a configuration from its checkpoint costs a rebuild, a checkpoint load
and a retrace of the training function (about 0.7 s per segment of the tutorial
MLP, more than three of its later epochs). A worker process therefore keeps what
it trained in a ``WarmCache``: an LRU bounded by bytes, keyed by the checkpoint
(its absolute path stem) and holding the configuration it trained. When the
same process is handed the configuration's next segment, the trainable takes the
live model from the cache instead of building and loading it.

The checkpoint stays the source of truth; the cache is only a shortcut to what it
holds. An entry remembers the identity of the checkpoint file it matches (inode,
size and modification time, read right after the segment's last save) and the
epoch it holds; it is used only while the file on disk still has that identity
and holds that epoch, and only for the same configuration. A checkpoint another
worker replaced, a retrain, a corrupt or deleted file, a new run in the same
folder: all miss, and the trainable loads from disk as it always did. Training
is a function of the configuration and the epoch alone, so a model continued
from memory trains bit-identically to one restored from its checkpoint.

The cache is part of the worker's state (``worker_state``), like its pinned GPU:
it lives as long as the worker process, across the segments it runs. On a GPU
the models it holds keep their GPU memory: size the limit
(``KerasTrainable.warm_bytes``) to fit.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# A cache's size is read with the one byte-size grammar, importable beside what it sizes.
from phobbit.core.units import parse_bytes as parse_bytes
from phobbit.execution.worker_state import worker_state

DEFAULT_BYTES = 1 << 30
"""What a worker keeps warm by default: 1 GiB of weights and optimizer state."""

MAX_ENTRIES = 64
"""The most models a worker keeps, whatever their size: a kept model also holds its
traced functions and Python objects, which its bytes do not count (a tiny model's
graphs outweigh its weights). Hyperband continues only the best 1/eta of a rung,
and a worker's next segments come soon after its last: the newest 64 cover them."""

FileIdentity = tuple[int, int, int, int]
"""(device, inode, size, modification time in ns) of a checkpoint file."""


def file_identity(path: str | os.PathLike) -> FileIdentity | None:
    """The identity of the file at ``path`` as it is now; None when it is missing.

    A checkpoint is replaced, never rewritten in place (``phobbit.storage.fence.commit``),
    so any new save gives a new inode.
    """
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


@dataclass
class _Entry:
    hparams: dict[str, Any]
    value: Any
    size: int
    epoch: int
    identity: FileIdentity


class WarmCache:
    """An LRU of live models (or any trainable state) bounded by their size in bytes.

    Args:
        limit: the most bytes held; 0 holds nothing. An entry larger than the
            limit is not kept.
        owner: the worker the cache belongs to, as ``(host, pid)``; None: this
            process (a simulated executor names its virtual workers).
        max_entries: the most entries held, whatever their size (``MAX_ENTRIES``).
    """

    def __init__(
        self,
        limit: int = DEFAULT_BYTES,
        owner: tuple[str, int] | None = None,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.limit = limit
        self.max_entries = max_entries
        self._owner = owner
        self._size = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        self.driver: str | None = None  # the fencing token of the run it serves
        self.misses = 0

    @property
    def owner(self) -> tuple[str, int]:
        """(host, pid) of the worker that holds these models."""
        return self._owner or (socket.gethostname(), os.getpid())

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._size

    def _pop(self, key: str) -> _Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._size -= entry.size
        return entry

    def resize(self, limit: int) -> None:
        """Sets the limit, dropping the least recently used entries past it."""
        self.limit = max(0, int(limit))
        self._evict()

    def put(
        self,
        checkpoint: str,
        hparams: dict[str, Any],
        value: Any,
        size: int,
        epoch: int,
        path: str | os.PathLike,
    ) -> bool:
        """Keeps ``value``, the state checkpoint file ``path`` holds at ``epoch``, now.

        Call it right after the save that wrote ``path``: the file's identity is
        read here. Returns whether it was kept (not when larger than the limit, or
        when the file is gone).
        """
        key = os.path.abspath(checkpoint)
        self._pop(key)
        identity = file_identity(path)
        if identity is None or size > self.limit or self.max_entries < 1:
            return False
        self._entries[key] = _Entry(dict(hparams), value, size, epoch, identity)
        self._size += size
        self._evict()
        return key in self._entries

    def take(
        self, checkpoint: str, hparams: dict[str, Any], epoch: int, path: str | os.PathLike
    ) -> Any | None:
        """The state held for ``checkpoint``, taken out of the cache, or None on a miss.

        A hit needs the same configuration, the same ``epoch`` (the one the file
        was just read to hold) and the file at ``path`` still the one saved when
        the state was put. A stale entry is dropped. The state taken is the
        caller's: it trains it, and puts it back after its last save.
        """
        entry = self._pop(os.path.abspath(checkpoint))
        if (
            entry is None
            or entry.hparams != hparams
            or entry.epoch != epoch
            or entry.identity != file_identity(path)
        ):
            self.misses += entry is not None
            return None
        self.hits += 1
        return entry.value

    def discard(self, checkpoint: str) -> None:
        """Forgets what is held for ``checkpoint``."""
        self._pop(os.path.abspath(checkpoint))

    def held(self) -> tuple[str, ...]:
        """The checkpoints (absolute path stems) whose state is held, oldest use first."""
        return tuple(self._entries)

    def serve(self, driver: str | None) -> None:
        """Serves the run of fencing token ``driver``: a new run forgets what was held.

        A worker that outlives its driver (a Dask worker) must not hand a resumed run
        a model built by the code of the run before (the model function may have
        changed since); a run's own segments all carry its token.
        """
        if driver != self.driver:
            self.clear()
            self.driver = driver

    def clear(self) -> None:
        """Forgets everything."""
        self._entries.clear()
        self._size = 0

    def _evict(self) -> None:
        while self._entries and (self._size > self.limit or len(self._entries) > self.max_entries):
            self._pop(next(iter(self._entries)))


def process_cache() -> WarmCache:
    """The cache of this worker process (the worker state's; a simulated worker's inside
    :func:`installed`)."""
    return _caches()[-1]


@contextmanager
def installed(cache: WarmCache) -> Iterator[WarmCache]:
    """Makes ``cache`` this process's cache while the block runs (a simulated worker's)."""
    caches = _caches()
    caches.append(cache)
    try:
        yield cache
    finally:
        caches.remove(cache)


def _caches() -> list[WarmCache]:
    """The worker state's stack of caches, the process's own at its bottom."""
    state = worker_state()
    with state.lock:  # two threads of a Dask worker may be the first to ask
        if not state.warm_caches:
            state.warm_caches.append(WarmCache())
    return state.warm_caches
