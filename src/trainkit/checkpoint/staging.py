"""``StagingFolder``: a checkpoint being written, whose files are fsynced and hashed while the next ones are written.

A save must end with every file fsynced and hashed for the manifest. Done one after the other
at the end, that doubles the cost of a save; here it overlaps with the writing instead:

- ``open(name)`` gives a writer that hashes each large chunk on a helper thread *while* the
  chunk is written (both release the GIL; the chunk is not used after ``write`` returns, so no
  copy is needed) and starts an ``fdatasync`` every 64 MiB, so the final fsync finds little left;
- ``written(name)`` hands a file written by other means (safetensors, JSON) to a background
  thread that hashes and fsyncs it while the caller writes the next file.

Files an implementation does not register are hashed and fsynced in ``entries()``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from trainkit.checkpoint.atomic import fsync_file
from trainkit.checkpoint.manifest import FileEntry, file_digest

__all__ = ["HashingWriter", "StagingFolder"]

_PARALLEL_MIN_BYTES = 1 << 20
_SYNC_EVERY_BYTES = 64 << 20
_fdatasync = getattr(os, "fdatasync", os.fsync)


class _Hasher:
    """CRC-32 or any hashlib algorithm behind one ``update`` / ``hexdigest``."""

    def __init__(self, algorithm: str) -> None:
        self._crc = 0
        self._hash = None if algorithm == "crc32" else hashlib.new(algorithm)

    def update(self, data: Any) -> None:
        if self._hash is None:
            self._crc = zlib.crc32(data, self._crc)
        else:
            self._hash.update(data)

    def hexdigest(self) -> str:
        return f"{self._crc:08x}" if self._hash is None else self._hash.hexdigest()


class HashingWriter:
    """A binary file writer that hashes what it writes and flushes it to disk progressively."""

    def __init__(self, path: Path, algorithm: str, helper: ThreadPoolExecutor) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._hasher = _Hasher(algorithm)
        self._helper = helper
        self._unsynced = 0
        self._sync: threading.Thread | None = None

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size >= _PARALLEL_MIN_BYTES:
            hashed = self._helper.submit(self._hasher.update, data)
            written = self._file.write(data)
            hashed.result()  # ``data`` may be reused by the caller once write() returns
        else:
            self._hasher.update(data)
            written = self._file.write(data)
        self._unsynced += size
        if self._unsynced >= _SYNC_EVERY_BYTES and (self._sync is None or not self._sync.is_alive()):
            self._start_background_sync()
        return written

    def _start_background_sync(self) -> None:
        self._file.flush()
        self._unsynced = 0
        self._sync = threading.Thread(target=_fdatasync, args=(self._file.fileno(),), daemon=True)
        self._sync.start()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> FileEntry:
        """Finish: flush, fsync, close; return the file's size and hash."""
        if self._sync is not None:
            self._sync.join()
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.close()
        return FileEntry(size, self._hasher.hexdigest())

    def abort(self) -> None:
        if self._sync is not None:
            self._sync.join()
        self._file.close()


def _seal(path: Path, algorithm: str) -> FileEntry:
    fsync_file(path)
    return FileEntry(path.stat().st_size, file_digest(path, algorithm))


class StagingFolder:
    """The folder a checkpoint is written into, with the sizes and hashes of its finished files."""

    def __init__(self, path: Path, hash_algorithm: str) -> None:
        self.path = path
        self.hash_algorithm = hash_algorithm
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainkit-hash")
        self._sealer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trainkit-seal")
        self._entries: dict[str, FileEntry | Future[FileEntry]] = {}

    def __enter__(self) -> StagingFolder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._helper.shutdown(wait=True)
        self._sealer.shutdown(wait=True)

    def file(self, name: str) -> Path:
        """Where the file ``name`` of this checkpoint is written."""
        return self.path / name

    @contextmanager
    def open(self, name: str) -> Iterator[HashingWriter]:
        """A writer for ``name``; its size and hash are recorded when the block ends without error."""
        writer = HashingWriter(self.file(name), self.hash_algorithm, self._helper)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        self._entries[name] = writer.close()

    def written(self, name: str) -> None:
        """``name`` is complete: hash and fsync it in the background."""
        self._entries[name] = self._sealer.submit(_seal, self.file(name), self.hash_algorithm)

    def entries(self, names: Iterable[str]) -> dict[str, FileEntry]:
        """Sizes and hashes of ``names`` (waiting for background work; sealing unregistered files now)."""
        result: dict[str, FileEntry] = {}
        for name in names:
            entry = self._entries.get(name)
            if entry is None:
                entry = _seal(self.file(name), self.hash_algorithm)
            result[name] = entry.result() if isinstance(entry, Future) else entry
        return result
