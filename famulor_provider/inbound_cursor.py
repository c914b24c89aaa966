"""The inbound trigger's cursor: per WhatsApp conversation, the ``message_count`` already turned into events.

Airflow's asset state store keeps JSON values, each rewritten whole at every write, and warns
above ``[state_store] max_value_storage_bytes`` (65,535 bytes by default). A naive ``{uuid:
count}`` map costs about 43 bytes per conversation (4.3 MB at 100,000). This cursor is split
into :data:`BUCKETS` buckets by the first byte of the conversation's uuid; a bucket is stored as
one value: ``base64(zlib(entries))`` where an entry is the uuid's 16 bytes and the count as a
varint (ids that are not canonical uuids: a 0xFF tag, a varint length and the UTF-8 text; their
bucket is a CRC32 byte). Uuids do not compress, so a conversation costs about 22 bytes: 100,000
conversations are at most about 10 KB per bucket (``benchmarks/inbound_polling.py`` measures it), and
an advance rewrites only the buckets whose conversations moved.

Each bucket is correct on its own (every count in it covers only events Airflow stored), so a
process killed between two bucket writes leaves a cursor that is behind, never ahead.
"""

from __future__ import annotations

import base64
import re
import uuid
import zlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

BUCKETS = 256
_TEXT_TAG = 0xFF  # every entry starts with a kind byte: a uuid or a text id
_UUID_TAG = 0x00
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def bucket_of(conversation_id: str) -> int:
    """
    The bucket of a conversation: its uuid's first byte, or a CRC32 byte for other ids.

    :param conversation_id: the conversation's ``id`` as the API gives it.
    """
    if _CANONICAL_UUID.fullmatch(conversation_id):
        return int(conversation_id[:2], 16)
    return zlib.crc32(conversation_id.encode()) & 0xFF


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

    Kept in memory as one dict per bucket, so that encoding a changed bucket touches only its
    conversations; tracks which buckets changed since the last :meth:`take_dirty` so that a save
    rewrites only those.

    :param counts: the initial counts, e.g. decoded from the store.
    """

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._buckets: list[dict[str, int]] = [{} for _ in range(BUCKETS)]
        self._dirty: set[int] = set()
        for conversation_id, count in (counts or {}).items():
            self._buckets[bucket_of(conversation_id)][conversation_id] = count

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets)

    def get(self, conversation_id: str) -> int | None:
        """
        The count for a conversation, or ``None`` when the cursor has never seen it.

        :param conversation_id: the conversation's ``id``.
        """
        return self._buckets[bucket_of(conversation_id)].get(conversation_id)

    def put(self, conversation_id: str, count: int) -> None:
        """
        Record that messages ``[0, count)`` of a conversation are covered.

        :param conversation_id: the conversation's ``id``.
        :param count: the new count (>= 0).
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        index = bucket_of(conversation_id)
        bucket = self._buckets[index]
        if bucket.get(conversation_id) != count:
            bucket[conversation_id] = count
            self._dirty.add(index)

    def update(self, counts: Mapping[str, int]) -> None:
        """
        :meth:`put` each of ``counts``.

        :param counts: ``{conversation_id: count}``.
        """
        for conversation_id, count in counts.items():
            self.put(conversation_id, count)

    def take_dirty(self) -> set[int]:
        """The buckets changed since the last call (and forget them)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def mark_dirty(self, buckets: Iterable[int]) -> None:
        """
        Make the next save write these buckets again (a save that failed).

        :param buckets: bucket indexes.
        """
        self._dirty |= set(buckets)

    def mark_all_dirty(self) -> None:
        """Make the next save write every non-empty bucket (e.g. the first save into a store)."""
        self._dirty = {index for index, bucket in enumerate(self._buckets) if bucket}

    def encode(self, buckets: Iterable[int]) -> dict[int, str]:
        """
        Encode the given buckets.

        :param buckets: the bucket indexes to encode.
        """
        return {index: encode_bucket(self._buckets[index]) for index in buckets}

    @classmethod
    def decode(cls, buckets: Mapping[int, str]) -> InboundCursor:
        """
        Build a cursor from stored buckets (missing buckets are empty).

        :param buckets: ``{bucket index: stored text}``.
        """
        cursor = cls()
        for value in buckets.values():
            for conversation_id, count in decode_bucket(value).items():
                cursor._buckets[bucket_of(conversation_id)][conversation_id] = count
        return cursor


class StateStore(Protocol):
    """What the cursor needs of Airflow's asset state store accessor (one asset)."""

    async def aget(self, key: str, default: Any = None) -> Any: ...

    async def aset(self, key: str, value: Any) -> None: ...


class CursorStore:
    """
    Load and save an :class:`InboundCursor` in one or more asset state stores.

    Keys are ``{prefix}.meta`` (``{"version", "generation", "buckets": [indexes written]}``)
    and ``{prefix}.bXX`` per bucket (hex index). The prefix names the trigger's scope, so
    watchers of different scopes on one asset keep separate cursors. With several stores (one
    trigger watching several assets), every save writes to each, and a load reads the store
    whose ``generation`` is highest (a store added later is empty or behind).

    :param stores: the per-asset accessors.
    :param prefix: the key prefix (the scope).
    """

    VERSION = 1

    def __init__(self, stores: Iterable[StateStore], prefix: str) -> None:
        self.stores = list(stores)
        self.prefix = prefix
        self.generation = 0
        self._written: set[int] = set()

    def key(self, bucket: int | None) -> str:
        """
        The store key of a bucket, or of the meta value for ``None``.

        :param bucket: the bucket index or ``None``.
        """
        return f"{self.prefix}.meta" if bucket is None else f"{self.prefix}.b{bucket:02x}"

    async def load(self) -> InboundCursor | None:
        """The most advanced stored cursor, or ``None`` when no store holds one."""
        best: tuple[int, StateStore, Mapping[str, Any]] | None = None
        for store in self.stores:
            meta = await store.aget(self.key(None))
            if not isinstance(meta, dict) or meta.get("version") != self.VERSION:
                continue
            if best is None or int(meta["generation"]) > best[0]:
                best = (int(meta["generation"]), store, meta)
        if best is None:
            return None
        generation, store, meta = best
        values: dict[int, str] = {}
        for index in meta.get("buckets", []):
            value = await store.aget(self.key(int(index)))
            if isinstance(value, str):
                values[int(index)] = value
        self.generation = generation
        self._written = set(values)
        return InboundCursor.decode(values)

    async def save(self, cursor: InboundCursor) -> int:
        """
        Write the buckets changed since the last save, then the meta value; return the bytes written.

        :param cursor: the cursor to save.
        """
        dirty = cursor.take_dirty()
        if not dirty and self.generation:
            return 0
        encoded = cursor.encode(dirty)
        self._written |= set(encoded)
        self.generation += 1
        meta = {"version": self.VERSION, "generation": self.generation, "buckets": sorted(self._written)}
        written = 0
        try:
            for store in self.stores:
                for index, value in sorted(encoded.items()):
                    await store.aset(self.key(index), value)
                    written += len(value)
                await store.aset(self.key(None), meta)
        except BaseException:
            cursor.mark_dirty(dirty)  # the next save writes them again
            raise
        return written
