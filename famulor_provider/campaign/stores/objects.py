"""The ledger as an append-only log of immutable objects in a bucket.

Layout: ``<folder>/0000000000.jsonl``, ``<folder>/0000000001.jsonl`` ...: position ``n`` is the
``n``-th write of any try, holding one or more whole JSON lines. A try lists and reads the log,
then takes each next position with a create-only write; a write that finds its position taken
means another try wrote there: this try is fenced out and writes (and sends) nothing more.

Writes: each write is a request, so lines written with ``defer`` (a ``sent`` outcome) wait for
the next write, which is the attempt of the next send (or :meth:`flush`, at the end of a run);
every other line is written at once. A try that dies with lines held back leaves those
recipients in flight, that is ``unknown``, never sent again: never more of them than were in
flight at once.

Checkpoints: every :data:`CHECKPOINT_EVERY` positions a try also writes
``<folder>/checkpoints/<n>.jsonl``, the first ``n`` objects' lines in one object (create-only,
so the same bytes whichever try writes it). A later try reads the newest checkpoint and the
objects after it, not every object: a retry of a campaign of 100,000 reads at most
:data:`CHECKPOINT_EVERY` small objects.
"""

from __future__ import annotations

import logging
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from famulor_provider.campaign.stores import LedgerStore, conflict_error
from famulor_provider.exceptions import FamulorError, FamulorValidationError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from famulor_provider.campaign.stores import ObjectStore
    from famulor_provider.exceptions import FamulorLedgerConflictError

POSITION_DIGITS = 10
_POSITION = re.compile(rf"(\d{{{POSITION_DIGITS}}})\.jsonl")
CHECKPOINTS = "checkpoints/"
CHECKPOINT_EVERY = 10_000  # positions between two checkpoints
_SPOOL_BYTES = 8 << 20  # the log's copy for checkpoints stays in memory up to this size

log = logging.getLogger(__name__)


class ObjectLedgerStore(LedgerStore):
    """One ledger's log under ``folder`` in an :class:`ObjectStore`.

    :param objects: the bucket.
    :param folder: the key prefix of this ledger's objects, ending with ``/``.
    :param ledger_path: what the user gave, for errors.
    """

    takes_positions = True

    def __init__(self, objects: ObjectStore, folder: str, ledger_path: str) -> None:
        self.objects = objects
        self.folder = folder
        self.ledger_path = ledger_path
        self.location = objects.uri(folder)
        self.skipped = 0
        self.writes = 0
        """Create-only writes this try made (the probe included)."""
        self._next = 0  # the position this try writes next
        self._last: tuple[str, bytes] | None = None  # this try's last object
        self._pending: list[bytes] = []
        self._foreign_at: int | None = None  # the first position another writer took
        self._closed = False
        self._copy: tempfile.SpooledTemporaryFile[bytes] | None = None  # the log's bytes, for checkpoints
        self._checkpoint_at = 0  # the position of the newest checkpoint this try knows

    def key(self, position: int) -> str:
        return f"{self.folder}{position:0{POSITION_DIGITS}d}.jsonl"

    def positions(self, start: int = 0) -> list[str]:
        """The log's keys from position ``start`` on, checked to follow one another."""
        after = self.key(start - 1) if start > 0 else ""
        keys: list[str] = []
        for key in self.objects.list(self.folder, after):
            match = _POSITION.fullmatch(key[len(self.folder) :])
            if match is None:
                continue  # not ours to read
            if int(match.group(1)) != start + len(keys):
                raise FamulorError(
                    f"The campaign ledger {self.location} has a gap before {self.objects.uri(key)}: an "
                    "object was deleted, so what was sent cannot be told. Restore it (bucket versioning) "
                    "or move the ledger aside; nothing is sent."
                )
            keys.append(key)
        return keys

    def read(self) -> Iterator[bytes]:
        start, checkpoint = self._newest_checkpoint()
        # Kept open until close(): the checkpoints are written from it.
        self._copy = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self._checkpoint_at = start
        if checkpoint is not None:
            data = self.objects.read(checkpoint)
            self._keep(data)
            yield from data.splitlines(keepends=True)
        keys = self.positions(start)
        self._next = start + len(keys)
        with ThreadPoolExecutor(min(self.objects.parallel_reads, max(1, len(keys)))) as pool:
            for first in range(0, len(keys), 1024):  # bounded: a few MB held at once
                for data in pool.map(self.objects.read, keys[first : first + 1024]):
                    self._keep(data)
                    yield from data.splitlines(keepends=True)

    def _keep(self, data: bytes) -> None:
        """Add ``data`` to the log's copy; without room for it (no writable temp folder), no checkpoints."""
        if self._copy is None:
            return
        try:
            self._copy.write(data)
        except OSError as err:
            log.warning(
                "No checkpoints for the campaign ledger %s (no room for its copy: %s)", self.location, err
            )
            self._copy.close()
            self._copy = None

    def checkpoint_key(self, position: int) -> str:
        return f"{self.folder}{CHECKPOINTS}{position:0{POSITION_DIGITS}d}.jsonl"

    def _newest_checkpoint(self) -> tuple[int, str | None]:
        """The position and key of the newest checkpoint, or ``(0, None)``."""
        newest: tuple[int, str | None] = (0, None)
        prefix = self.folder + CHECKPOINTS
        for key in self.objects.list(prefix):
            match = _POSITION.fullmatch(key[len(prefix) :])
            if match is not None and int(match.group(1)) > newest[0]:
                newest = (int(match.group(1)), key)
        return newest

    def _write_checkpoint(self) -> None:
        """Write the log up to this try's next position as one object (an optimisation only)."""
        if self._copy is None:
            return
        self._checkpoint_at = self._next
        self._copy.seek(0)
        data = self._copy.read()
        try:
            self.objects.create(self.checkpoint_key(self._next), data)  # taken: the same bytes
        except FamulorError as err:  # the log itself is whole: a later try reads more objects
            log.warning("Could not write a checkpoint of the campaign ledger %s: %s", self.location, err)

    @property
    def fenced(self) -> bool:
        return self._foreign_at is not None

    def conflict(self) -> FamulorLedgerConflictError:
        def foreign_lines() -> Iterator[bytes]:
            for key in self.positions(self._foreign_at or 0)[:100]:
                yield from self.objects.read(key).splitlines()

        return conflict_error(self.location, foreign_lines())

    def append(self, lines: list[bytes], *, defer: bool = False) -> None:
        if self._closed:
            raise FamulorError(f"The campaign ledger {self.location} is closed")
        if self.fenced:
            raise self.conflict()
        self._pending.extend(lines)
        if not defer:
            self.flush()

    def flush(self) -> None:
        if not self._pending or self.fenced:
            return
        key, data = self.key(self._next), b"".join(self._pending)
        self.writes += 1
        # Taken: ours when it holds our bytes (a retried request whose first answer was lost).
        if not self.objects.create(key, data) and self.objects.read(key) != data:
            self._foreign_at = self._next
            raise self.conflict()
        self._next += 1
        self._last = (key, data)
        self._pending.clear()
        self._keep(data)
        if self._copy is not None and self._next - self._checkpoint_at >= CHECKPOINT_EVERY:
            self._write_checkpoint()

    def probe(self) -> None:
        """Create this try's last object again: a store that honours create-only writes refuses."""
        if self._last is None:
            return
        key, data = self._last
        self.writes += 1
        if self.objects.create(key, data):  # the same bytes: nothing changed, but nothing fences
            raise FamulorValidationError(
                "ledger_path",
                f"{self.ledger_path!r}: the store accepted a create-only write (If-None-Match: *) of "
                f"{self.objects.uri(key)}, which exists: it ignores conditional writes, so it cannot keep "
                "a second try from sending alongside this one. Use Amazon S3 or a store that honours "
                "If-None-Match on PUT (Cloudflare R2, a recent MinIO, Ceph RGW), or a POSIX ledger_path. "
                "Nothing was sent.",
            )

    def close(self) -> None:
        self._closed = True
        if self._copy is not None:
            self._copy.close()
            self._copy = None
