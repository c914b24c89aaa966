"""The ledger as one JSON Lines file on a POSIX file system: append, ``fsync``, ``flock``.

Two writers: ``flock`` keeps a second try out where the file system carries it across hosts.
Where it does not (NFS with ``local_lock``/``nolock``, many FUSE and SMB volumes), the guard
holds: before each send a try checks that the file ends where its own last write ended, and
again after writing the attempt; bytes it did not write fence it out.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import TYPE_CHECKING, Any

from famulor_provider.campaign.stores import LedgerStore, conflict_error
from famulor_provider.exceptions import FamulorError, FamulorValidationError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from famulor_provider.exceptions import FamulorLedgerConflictError

# Module attributes, so tests can replace the clock and the sleeper of the lock wait.
_monotonic = time.monotonic
_sleep = time.sleep
_LOCK_POLL_SECONDS = 0.2

# errno values that say ledger_path cannot hold a ledger at all: a retry would fail the same way.
_BAD_PATH_ERRNOS = {
    errno.ENOENT: "a parent folder cannot be created there (a virtual file system such as /proc?)",
    errno.ENOTDIR: "a part of it is a file, not a folder",
    errno.EISDIR: "the ledger file's name is taken by a folder",
    errno.EACCES: "permission denied for the worker's user",
    errno.EPERM: "permission denied for the worker's user",
    errno.EROFS: "the file system is read-only",
    errno.ELOOP: "too many symbolic links",
    errno.ENAMETOOLONG: "a name is too long for the file system",
    errno.EINVAL: "the file system refuses the name",
}


class PosixLedgerStore(LedgerStore):
    """One ledger file, created ``0600`` (its new folders ``0700``) and locked until :meth:`close`.

    :param path: the ledger file.
    :param ledger_path: what the user gave, for errors.
    :param lock_timeout: seconds to wait for another process to release the file.
    """

    def __init__(self, path: str, ledger_path: Any, lock_timeout: float) -> None:
        self.location = path
        self.skipped = 0
        folder = os.path.dirname(path)
        try:
            _make_private_dirs(folder)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise _bad_path(ledger_path, path, err) from err
        self._fd: int | None = fd
        try:
            _lock(fd, path, lock_timeout)
            self._new = os.fstat(fd).st_size == 0
            if self._new:
                os.fchmod(fd, 0o600)  # 0600 whatever the umask
        except BaseException:
            os.close(fd)  # also releases the lock
            raise
        self._needs_newline = False
        self._failed: str | None = None
        self._end: int | None = None  # the file's size after this try's last write
        self._foreign_at: int | None = None  # where bytes this try did not write were found

    def read(self) -> Iterator[bytes]:
        with open(self.location, "rb") as file:
            for line in file:
                if not line.endswith(b"\n"):  # the last write was cut short
                    self._needs_newline = True
                    self.skipped += 1
                    continue
                yield line

    def check(self) -> None:
        unchecked = self._foreign_at is None and self._fd is not None and self._end is not None
        if unchecked and os.fstat(self._fd).st_size != self._end:  # type: ignore[arg-type]
            self._foreign_at = self._end
        super().check()

    @property
    def fenced(self) -> bool:
        return self._foreign_at is not None

    def conflict(self) -> FamulorLedgerConflictError:
        with open(self.location, "rb") as file:
            file.seek(self._foreign_at or 0)
            lines = file.read(1 << 20).splitlines()
        return conflict_error(
            self.location, lines, " (the file lock does not hold across hosts on this file system)"
        )

    def append(self, lines: list[bytes], *, defer: bool = False) -> None:
        if self._fd is None:
            raise FamulorError(f"The campaign ledger {self.location} is closed")
        if self._failed is not None:
            # After a failed write or fsync the file's state is unknown: write nothing more.
            raise FamulorError(
                f"The campaign ledger {self.location} failed earlier ({self._failed}); not writing"
            )
        data = b"".join(lines)
        if self._needs_newline:
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            previous, self._end = self._end, os.lseek(self._fd, 0, os.SEEK_CUR)
            if previous is not None and self._end != previous + len(data) and self._foreign_at is None:
                self._foreign_at = previous  # someone else wrote before or during this write
        except OSError as err:
            self._failed = str(err)
            raise FamulorError(f"Cannot write the campaign ledger {self.location}: {err}") from err
        self._needs_newline = False
        if self._new:
            # Make the new file's directory entries durable too (ledger root/dag/run/file).
            self._new = False
            folder = os.path.dirname(self.location)
            for directory in (folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
                _fsync_dir(directory)

    def probe(self) -> None:
        """Nothing to probe: ``flock`` and the guard need only a POSIX file system."""

    def flush(self) -> None:
        """Nothing is held back: every line is fsynced when appended."""

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the file's own fsync still holds
        pass
    finally:
        os.close(fd)


def _bad_path(ledger_path: Any, path: str, err: OSError) -> FamulorError:
    """The error for a ledger file that cannot be created or opened at ``path``."""
    why = _BAD_PATH_ERRNOS.get(err.errno or 0)
    if why is None:  # e.g. no space left, an I/O error: a later try may succeed
        return FamulorError(f"Cannot open the campaign ledger {path} (ledger_path={ledger_path!r}): {err}")
    return FamulorValidationError(
        "ledger_path",
        f"{ledger_path!r} cannot hold the campaign ledger {path}: {why} ({err.strerror}: "
        f"{err.filename!r}). Give ledger_path a folder the worker can create files in, on storage "
        "every worker sees. Nothing was sent.",
    )


def _make_private_dirs(folder: str) -> None:
    """Create ``folder`` and its missing parents ``0700`` whatever the umask; leave existing ones."""
    missing: list[str] = []
    current = folder
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory) from None
            continue  # another process created it: not ours to change
        os.chmod(directory, 0o700)


def _lock(fd: int, path: str, timeout: float) -> None:
    deadline = _monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if _monotonic() >= deadline:
                raise FamulorError(
                    f"Another try of this task instance is still running: it holds the campaign "
                    f"ledger {path} (a try the scheduler gave up on may still be alive on a worker). "
                    "Two tries must never send at once; retry once it has ended or been killed."
                ) from None
            _sleep(_LOCK_POLL_SECONDS)
        except OSError as err:
            raise FamulorError(
                f"Cannot lock the campaign ledger {path} ({err}): put ledger_path on a file system "
                "with working locks (local disk, NFSv4, EFS)"
            ) from err
