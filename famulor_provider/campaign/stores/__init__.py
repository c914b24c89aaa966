"""
Where a campaign ledger's lines live: one small interface, a POSIX file or objects in a bucket.

:class:`LedgerStore` is the log of one task instance's ledger as the ledger needs it: read every
line in order, append lines after this try's own last write and notice a second writer. The
ledger's records and rules (:mod:`famulor_provider.campaign.ledger`) are the same on every store.

- :class:`~famulor_provider.campaign.stores.posix.PosixLedgerStore`: one JSON Lines file,
  appended, fsynced and ``flock``-ed (NFS, EFS, a shared volume, local disk).
- :class:`~famulor_provider.campaign.stores.objects.ObjectLedgerStore`: an append-only log of
  immutable objects, one per write, each at the next position, taken with a create-only write;
  it needs only an :class:`ObjectStore`: "create this object only if absent" and "list and read
  objects in order". :class:`~famulor_provider.campaign.stores.s3.S3ObjectStore` is S3 and
  S3-compatible stores (``If-None-Match: *``); GCS (``ifGenerationMatch=0``) and Azure Blob
  (``If-None-Match: *``) fit the same three methods.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from famulor_provider.exceptions import FamulorLedgerConflictError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


class LedgerStore(ABC):
    """The append-only log of one ledger, opened by one try."""

    location: str
    """Where the ledger is, as users name it (a file path, an ``s3://`` URI)."""
    skipped = 0
    """Lines cut short by a crash that :meth:`read` skipped."""
    takes_positions = False
    """Whether each write takes a position another writer can take first (an object log)."""

    @abstractmethod
    def read(self) -> Iterator[bytes]:
        """Every complete line of the log, in order (call once, before the first append)."""

    @abstractmethod
    def append(self, lines: list[bytes], *, defer: bool = False) -> None:
        """Write ``lines`` (each ending with a newline) durably after this try's last write.

        :param lines: JSON lines.
        :param defer: the lines may wait for the next write (a store where each write costs a
            request holds them until then, or until :meth:`flush`).
        :raises FamulorLedgerConflictError: another writer took the place (on an object store,
            nothing of ``lines`` was written; a POSIX file notices a second writer in :attr:`fenced`).
        """

    def check(self) -> None:
        """Before a send: raise the conflict when another writer wrote since this try's last write."""
        if self.fenced:
            raise self.conflict()

    @property
    @abstractmethod
    def fenced(self) -> bool:
        """Whether another writer wrote to the log during this try."""

    @abstractmethod
    def conflict(self) -> FamulorLedgerConflictError:
        """The error naming the other writer."""

    @abstractmethod
    def probe(self) -> None:
        """Once per try, after its first write: refuse a store that would not fence a second writer."""

    @abstractmethod
    def flush(self) -> None:
        """Write what :meth:`append` held back."""

    @abstractmethod
    def close(self) -> None:
        """Release the log (safe to call twice)."""


class ObjectStore(ABC):
    """What an object log needs from a bucket: create-only writes, ordered listing, reads."""

    parallel_reads = 8
    """How many objects a try may read at once when it loads the log."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """``key`` as users name it (``s3://bucket/key``)."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` holding ``data`` only if no object has that key.

        :returns: ``True`` when created, ``False`` when the key was taken.
        """

    @abstractmethod
    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """The keys under ``prefix`` after ``start_after``, in ascending (byte) order."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes."""


def conflict_error(
    location: str, foreign_lines: Iterable[bytes], why: str = ""
) -> FamulorLedgerConflictError:
    """The error for a second writer, named from the first ``try`` line it wrote.

    :param location: the ledger.
    :param foreign_lines: what the other writer wrote.
    :param why: how two writers could get there, in parentheses after "at once".
    """
    other = "another process"
    for line in foreign_lines:
        try:
            event: Any = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == "try":
            other = f"try {event.get('try_number')} on host {event.get('hostname')} (pid {event.get('pid')})"
            break
    return FamulorLedgerConflictError(
        f"Another writer appended to the campaign ledger {location} during this try: {other}. "
        f"Two tries may be sending at once{why}, so this try sends nothing more. A later try resumes "
        "from the ledger once the other one has ended."
    )
