"""The inbound trigger's cursor: per WhatsApp conversation, the ``message_count`` already turned into events.

Airflow's asset state store keeps JSON values, each rewritten whole at every write, and warns
above ``[state_store] max_value_storage_bytes`` (65,535 bytes by default). A naive ``{uuid:
count}`` map costs about 43 bytes per conversation (4.3 MB at 100,000). Here an entry is the
uuid's 16 bytes and the count as a varint (ids that are not canonical uuids: a 0xFF tag, a varint
length and the UTF-8 text), a set of entries is stored as ``base64(zlib(entries))``: about 22
bytes per conversation, since uuids do not compress.

In a triggerer every store read or write is a round trip through the triggerer's supervisor
(up to about a second on a busy deployment), so an advance writes **one** value, the journal:
the conversations that moved since the last compaction. When the journal outgrows
:data:`JOURNAL_LIMIT`, a compaction writes them into the buckets (the conversations split by
their uuid's first byte into a power of two of buckets, as many as keep each under
:data:`BUCKET_TARGET` bytes: 1 for a few hundred conversations, 128 for 100,000), then the meta
value, then an empty journal. Counts only grow, and every stored count covers only events
Airflow stored, so a load takes, per conversation, the larger of its bucket and journal values:
a process killed between any two writes leaves a cursor that is behind, never ahead.
"""

from __future__ import annotations

import base64
import re
import uuid
import zlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

MAX_BUCKETS = 256
BUCKET_TARGET = 32_000  # bytes per stored bucket, half of Airflow's default value limit
JOURNAL_LIMIT = 32_000  # bytes of journal before a compaction
BYTES_PER_ENTRY = 24  # what an entry costs stored (measured: about 22), to size the buckets
_TEXT_TAG = 0xFF  # every entry starts with a kind byte: a uuid or a text id
_UUID_TAG = 0x00
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _first_byte(conversation_id: str) -> int:
    if _CANONICAL_UUID.fullmatch(conversation_id):
        return int(conversation_id[:2], 16)
    return zlib.crc32(conversation_id.encode()) & 0xFF


def bucket_of(conversation_id: str, buckets: int = MAX_BUCKETS) -> int:
    """
    The bucket of a conversation: its uuid's first byte (a CRC32 byte for other ids), scaled.

    :param conversation_id: the conversation's ``id`` as the API gives it.
    :param buckets: how many buckets (a power of two up to 256).
    """
    return _first_byte(conversation_id) * buckets // MAX_BUCKETS


def buckets_for(conversations: int) -> int:
    """
    The fewest buckets (a power of two) that keep each under :data:`BUCKET_TARGET` bytes.

    :param conversations: how many conversations the cursor holds.
    """
    buckets = 1
    while buckets < MAX_BUCKETS and conversations * BYTES_PER_ENTRY / buckets > BUCKET_TARGET:
        buckets *= 2
    return buckets


def _uuid_bytes(conversation_id: str) -> bytes | None:
    # Only ids in canonical form (they decode back to the same text) are stored as 16 bytes.
    return uuid.UUID(conversation_id).bytes if _CANONICAL_UUID.fullmatch(conversation_id) else None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_bucket(counts: Mapping[str, int]) -> str:
    """
    Encode one bucket's ``{conversation_id: count}`` as compact text (sorted, so stable).

    :param counts: the bucket's conversations and their counts (counts >= 0).
    """
    out = bytearray()
    for conversation_id in sorted(counts):
        raw = _uuid_bytes(conversation_id)
        if raw is not None:
            out.append(_UUID_TAG)
            out += raw
        else:
            text = conversation_id.encode()
            out.append(_TEXT_TAG)
            out += _varint(len(text)) + text
        out += _varint(counts[conversation_id])
    return base64.b64encode(zlib.compress(bytes(out), 9)).decode("ascii")


def decode_bucket(value: str) -> dict[str, int]:
    """
    Decode what :func:`encode_bucket` wrote.

    :param value: the stored text.
    """
    data = zlib.decompress(base64.b64decode(value))
    counts: dict[str, int] = {}
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag == _UUID_TAG:
            conversation_id = str(uuid.UUID(bytes=data[pos : pos + 16]))
            pos += 16
        elif tag == _TEXT_TAG:
            length, pos = _read_varint(data, pos)
            conversation_id = data[pos : pos + length].decode()
            pos += length
        else:
            raise ValueError(f"inbound cursor bucket: unknown entry tag {tag:#x} at byte {pos - 1}")
        counts[conversation_id], pos = _read_varint(data, pos)
    return counts


class InboundCursor:
    """
    Per conversation, the ``message_count`` up to which its messages were turned into stored events.

    Kept in memory as one dict per bucket, so that encoding a bucket touches only its
    conversations. Remembers the conversations changed since the last compaction (the journal)
    and the buckets they fall in.

    :param counts: the initial counts, e.g. decoded from the store.
    :param buckets: how many buckets (a power of two up to 256).
    """

    def __init__(self, counts: Mapping[str, int] | None = None, buckets: int = 1) -> None:
        self._buckets: list[dict[str, int]] = [{} for _ in range(buckets)]
        self.journal: dict[str, int] = {}
        self._dirty: set[int] = set()
        for conversation_id, count in (counts or {}).items():
            self._buckets[bucket_of(conversation_id, buckets)][conversation_id] = count

    @property
    def bucket_count(self) -> int:
        """How many buckets."""
        return len(self._buckets)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets)

    def get(self, conversation_id: str) -> int | None:
        """
        The count for a conversation, or ``None`` when the cursor has never seen it.

        :param conversation_id: the conversation's ``id``.
        """
        return self._buckets[bucket_of(conversation_id, len(self._buckets))].get(conversation_id)

    def put(self, conversation_id: str, count: int) -> None:
        """
        Record that messages ``[0, count)`` of a conversation are covered.

        :param conversation_id: the conversation's ``id``.
        :param count: the new count (>= 0).
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        index = bucket_of(conversation_id, len(self._buckets))
        bucket = self._buckets[index]
        if bucket.get(conversation_id) != count:
            bucket[conversation_id] = count
            self.journal[conversation_id] = count
            self._dirty.add(index)

    def update(self, counts: Mapping[str, int]) -> None:
        """
        :meth:`put` each of ``counts``.

        :param counts: ``{conversation_id: count}``.
        """
        for conversation_id, count in counts.items():
            self.put(conversation_id, count)

    def dirty(self) -> set[int]:
        """The buckets changed since the last compaction."""
        return set(self._dirty)

    def compacted(self) -> None:
        """Forget the journal and the dirty buckets: a compaction wrote them."""
        self.journal = {}
        self._dirty = set()

    def resize(self, buckets: int) -> None:
        """
        Split the conversations into ``buckets`` buckets; every non-empty bucket becomes dirty.

        :param buckets: a power of two up to 256.
        """
        counts = {cid: count for bucket in self._buckets for cid, count in bucket.items()}
        self._buckets = [{} for _ in range(buckets)]
        for conversation_id, count in counts.items():
            self._buckets[bucket_of(conversation_id, buckets)][conversation_id] = count
        self.mark_all_dirty()

    def mark_all_dirty(self) -> None:
        """Make the next compaction write every non-empty bucket."""
        self._dirty = {index for index, bucket in enumerate(self._buckets) if bucket}

    def encode(self, buckets: Iterable[int]) -> dict[int, str]:
        """
        Encode the given buckets.

        :param buckets: the bucket indexes to encode.
        """
        return {index: encode_bucket(self._buckets[index]) for index in buckets}

    @classmethod
    def decode(cls, buckets: Mapping[int, str], count: int, journal: str | None = None) -> InboundCursor:
        """
        Build a cursor from stored buckets (missing ones are empty) and the journal on top.

        :param buckets: ``{bucket index: stored text}``.
        :param count: how many buckets there are.
        :param journal: the stored journal text, if any.
        """
        cursor = cls(buckets=count)
        for value in buckets.values():
            for conversation_id, stored in decode_bucket(value).items():
                cursor._buckets[bucket_of(conversation_id, count)][conversation_id] = stored
        if journal:
            for conversation_id, stored in decode_bucket(journal).items():
                bucket = cursor._buckets[bucket_of(conversation_id, count)]
                # Counts only grow: a journal older than the buckets cannot move them back.
                if stored > bucket.get(conversation_id, -1):
                    bucket[conversation_id] = stored
                    cursor.journal[conversation_id] = stored
                    cursor._dirty.add(bucket_of(conversation_id, count))
        return cursor


class StateStore(Protocol):
    """What the cursor needs of Airflow's asset state store accessor (one asset)."""

    async def aget(self, key: str, default: Any = None) -> Any: ...

    async def aset(self, key: str, value: Any) -> None: ...


class CursorStore:
    """
    Load and save an :class:`InboundCursor` in one or more asset state stores.

    Keys: ``{prefix}.meta`` (``{"version", "generation", "buckets": count, "written": [indexes]}``),
    ``{prefix}.bXX`` per bucket (hex index) and ``{prefix}.journal`` (the encoded journal). The
    prefix names the trigger's scope, so watchers of different scopes on one asset keep separate
    cursors. With several stores (one trigger watching several assets), every save writes to
    each, and a load reads the store whose ``generation`` (compactions) is highest; a store that
    has not been written by this instance yet gets a full compaction first.

    :param stores: the per-asset accessors.
    :param prefix: the key prefix (the scope).
    """

    VERSION = 2

    def __init__(self, stores: Iterable[StateStore], prefix: str) -> None:
        self.stores = list(stores)
        self.prefix = prefix
        self.generation = 0
        self._written: set[int] = set()
        self._complete: list[StateStore] = []  # stores holding this cursor's buckets and meta

    def key(self, name: int | str) -> str:
        """
        The store key of a bucket (by index) or of ``"meta"`` / ``"journal"``.

        :param name: the bucket index, or ``"meta"`` or ``"journal"``.
        """
        return f"{self.prefix}.b{name:02x}" if isinstance(name, int) else f"{self.prefix}.{name}"

    async def load(self) -> InboundCursor | None:
        """The most advanced stored cursor, or ``None`` when no store holds one."""
        best: tuple[int, StateStore, Mapping[str, Any]] | None = None
        for store in self.stores:
            meta = await store.aget(self.key("meta"))
            if not isinstance(meta, dict) or meta.get("version") != self.VERSION:
                continue
            if best is None or int(meta["generation"]) > best[0]:
                best = (int(meta["generation"]), store, meta)
        if best is None:
            return None
        generation, store, meta = best
        values: dict[int, str] = {}
        for index in meta.get("written", []):
            value = await store.aget(self.key(int(index)))
            if isinstance(value, str):
                values[int(index)] = value
        journal = await store.aget(self.key("journal"))
        self.generation = generation
        self._written = set(values)
        self._complete = [store]
        return InboundCursor.decode(
            values, int(meta["buckets"]), journal if isinstance(journal, str) else None
        )

    async def save(self, cursor: InboundCursor) -> int:
        """
        Write what changed: the journal alone, or a compaction; return the characters written.

        :param cursor: the cursor to save.
        """
        if not cursor.journal and all(store in self._complete for store in self.stores):
            return 0
        journal = encode_bucket(cursor.journal)
        if (
            len(journal) <= JOURNAL_LIMIT
            and self.generation
            and all(s in self._complete for s in self.stores)
        ):
            for store in self.stores:
                await store.aset(self.key("journal"), journal)
            return len(journal) * len(self.stores)
        return await self._compact(cursor)

    async def _compact(self, cursor: InboundCursor) -> int:
        buckets = max(cursor.bucket_count, buckets_for(len(cursor)))
        if buckets != cursor.bucket_count:
            cursor.resize(buckets)
            self._written = set()
        new_stores = [store for store in self.stores if store not in self._complete]
        if new_stores:
            cursor.mark_all_dirty()
        encoded = cursor.encode(cursor.dirty())
        self._written = (self._written & set(range(buckets))) | set(encoded)
        # After a resize the buckets written at the old size are stale: the meta lists only those
        # written at this size.
        meta: dict[str, Any] = {
            "version": self.VERSION,
            "generation": self.generation + 1,
            "buckets": buckets,
            "written": sorted(self._written),
        }
        written = 0
        for store in self.stores:
            for index, value in sorted(encoded.items()):
                await store.aset(self.key(index), value)
                written += len(value)
            await store.aset(self.key("meta"), meta)
            await store.aset(self.key("journal"), "")
        self.generation += 1
        self._complete = list(self.stores)
        cursor.compacted()
        return written
