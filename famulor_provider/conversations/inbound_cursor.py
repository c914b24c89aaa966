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
:data:`JOURNAL_LIMIT`, a compaction writes the changed buckets (the conversations split by
their uuid's first byte into a power of two of buckets, as many as keep each under
:data:`BUCKET_TARGET` bytes: 1 for a few hundred conversations, 128 for 100,000).

**Kills.** The meta value is the commit: it names the generation and, per bucket, the generation
that wrote it; a bucket is stored under a key tagged with that generation (``b00.g7``), so a
compaction never overwrites a value the committed meta points at, and a journal applies only
under the meta of its own generation (it is written as ``"7:<entries>"``). A compaction writes
its buckets under new keys, then the meta, then deletes the keys no longer named. A process
killed (or a store write that raises) between any two writes leaves the cursor as it was before
the compaction or as it is after it, never a mix, also when the bucket count doubles. A journal
value is written whole, so it too is before or after. Hence a count may also go *down* (a cut
history) and stay down after a restart.

**Cut histories.** When a conversation's history gets shorter than its count, the cursor moves
back and the conversation's *epoch* goes up by one; events of a conversation cut ``n`` times
carry ``@n`` in their ``dedupe_key``, so a key is never reused for another message.
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
import zlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

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


def encode_bucket(counts: Mapping[str, int], epochs: Mapping[str, int] | None = None) -> str:
    """
    Encode one bucket's ``{conversation_id: count}`` as compact text (sorted, so stable).

    Each count is stored as ``varint(count * 2 + has_epoch)``, followed by ``varint(epoch)`` for a
    conversation whose history was cut (epoch > 0).

    :param counts: the bucket's conversations and their counts (counts >= 0).
    :param epochs: the conversations' cut epochs (absent: 0).
    """
    epochs = epochs or {}
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
        epoch = epochs.get(conversation_id, 0)
        out += _varint(counts[conversation_id] * 2 + (1 if epoch else 0))
        if epoch:
            out += _varint(epoch)
    return base64.b64encode(zlib.compress(bytes(out), 9)).decode("ascii")


def decode_entries(value: str) -> dict[str, tuple[int, int]]:
    """
    Decode what :func:`encode_bucket` wrote: ``{conversation_id: (count, epoch)}``.

    :param value: the stored text.
    """
    data = zlib.decompress(base64.b64decode(value))
    entries: dict[str, tuple[int, int]] = {}
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
        packed, pos = _read_varint(data, pos)
        epoch = 0
        if packed & 1:
            epoch, pos = _read_varint(data, pos)
        entries[conversation_id] = (packed >> 1, epoch)
    return entries


def decode_bucket(value: str) -> dict[str, int]:
    """
    The counts of what :func:`encode_bucket` wrote.

    :param value: the stored text.
    """
    return {conversation_id: count for conversation_id, (count, _) in decode_entries(value).items()}


class InboundCursor:
    """
    Per conversation, the ``message_count`` up to which its messages were turned into stored events.

    Kept in memory as one dict per bucket, so that encoding a bucket touches only its
    conversations. Remembers the conversations changed since the last compaction (the journal)
    and the buckets they fall in, and the cut epoch of each conversation whose history was cut.

    :param counts: the initial counts, e.g. decoded from the store.
    :param buckets: how many buckets (a power of two up to 256).
    """

    def __init__(self, counts: Mapping[str, int] | None = None, buckets: int = 1) -> None:
        self._buckets: list[dict[str, int]] = [{} for _ in range(buckets)]
        self.epochs: dict[str, int] = {}  # only conversations cut at least once
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

    def epoch(self, conversation_id: str) -> int:
        """
        How many times the conversation's history was seen cut (0: never).

        :param conversation_id: the conversation's ``id``.
        """
        return self.epochs.get(conversation_id, 0)

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

    def cut(self, conversation_id: str, count: int) -> None:
        """
        The conversation's history is now shorter: move back to ``count`` and start a new epoch.

        :param conversation_id: the conversation's ``id``.
        :param count: the history's new length.
        """
        self.epochs[conversation_id] = self.epoch(conversation_id) + 1
        self.put(conversation_id, count)
        self.journal[conversation_id] = count  # also when the count is unchanged: the epoch moved
        self._dirty.add(bucket_of(conversation_id, len(self._buckets)))

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
        return {index: encode_bucket(self._buckets[index], self.epochs) for index in buckets}

    def encode_journal(self) -> str:
        """Encode the journal (the conversations changed since the last compaction)."""
        return encode_bucket(self.journal, self.epochs)

    def is_empty_bucket(self, index: int) -> bool:
        """
        Whether a bucket holds no conversation.

        :param index: the bucket index.
        """
        return not self._buckets[index]

    @classmethod
    def decode(cls, buckets: Mapping[int, str], count: int, journal: str | None = None) -> InboundCursor:
        """
        Build a cursor from stored buckets (missing ones are empty) and the journal on top.

        The journal is newer than the buckets (a journal of another generation is never passed),
        so its entries replace theirs, also when lower (a cut history).

        :param buckets: ``{bucket index: stored text}``.
        :param count: how many buckets there are.
        :param journal: the stored journal entries, if any.
        """
        cursor = cls(buckets=count)
        for value in buckets.values():
            for conversation_id, (stored, epoch) in decode_entries(value).items():
                cursor._buckets[bucket_of(conversation_id, count)][conversation_id] = stored
                if epoch:
                    cursor.epochs[conversation_id] = epoch
        if journal:
            for conversation_id, (stored, epoch) in decode_entries(journal).items():
                index = bucket_of(conversation_id, count)
                cursor._buckets[index][conversation_id] = stored
                if epoch:
                    cursor.epochs[conversation_id] = epoch
                else:
                    cursor.epochs.pop(conversation_id, None)
                cursor.journal[conversation_id] = stored
                cursor._dirty.add(index)
        return cursor


class StateStore(Protocol):
    """What the cursor needs of Airflow's asset state store accessor (one asset)."""

    async def aget(self, key: str, default: Any = None) -> Any: ...

    async def aset(self, key: str, value: Any) -> None: ...


class CursorStore:
    """
    Load and save an :class:`InboundCursor` in one or more asset state stores.

    Keys: ``{prefix}.meta`` (``{"version", "generation", "buckets": count, "layout": [the
    generation that wrote each bucket, 0 for an empty one]}``), ``{prefix}.bXX.gN`` per bucket
    (hex index, generation) and ``{prefix}.journal`` (``"N:<encoded journal>"``). The prefix
    names the trigger's scope, so watchers of different scopes on one asset keep separate
    cursors. With several stores (one trigger watching several assets), every save writes to
    each, and a load reads the store whose ``generation`` (compactions) is highest; a store that
    has not been written by this instance yet gets a full compaction first.

    :param stores: the per-asset accessors.
    :param prefix: the key prefix (the scope).
    """

    VERSION = 3

    def __init__(self, stores: Iterable[StateStore], prefix: str) -> None:
        self.stores = list(stores)
        self.prefix = prefix
        self.generation = 0  # the last generation committed to every store
        self._tag = 0  # the last generation any compaction used (never reused, also when it failed)
        self._layout: list[int] = []  # the committed layout (see the class doc)
        self._complete: list[StateStore] = []  # stores whose meta is this instance's generation
        self._keys: dict[StateStore, set[str]] = {}  # bucket keys known to exist, per store

    def key(self, name: int | str, generation: int = 0) -> str:
        """
        The store key of a bucket (by index and generation) or of ``"meta"`` / ``"journal"``.

        :param name: the bucket index, or ``"meta"`` or ``"journal"``.
        :param generation: the generation that wrote the bucket.
        """
        if isinstance(name, int):
            return f"{self.prefix}.b{name:02x}.g{generation}"
        return f"{self.prefix}.{name}"

    def _meta_keys(self, meta: Mapping[str, Any]) -> set[str]:
        return {self.key(index, int(gen)) for index, gen in enumerate(meta.get("layout", [])) if gen}

    async def load(self) -> InboundCursor | None:
        """The most advanced stored cursor, or ``None`` when no store holds one."""
        best: tuple[int, StateStore, Mapping[str, Any]] | None = None
        for store in self.stores:
            meta = await store.aget(self.key("meta"))
            if not isinstance(meta, dict) or meta.get("version") != self.VERSION:
                continue
            self._keys[store] = self._meta_keys(meta)
            if best is None or int(meta["generation"]) > best[0]:
                best = (int(meta["generation"]), store, meta)
        if best is None:
            return None
        generation, store, meta = best
        layout = [int(gen) for gen in meta["layout"]]
        values: dict[int, str] = {}
        for index, gen in enumerate(layout):
            if not gen:
                continue
            value = await store.aget(self.key(index, gen))
            if not isinstance(value, str):
                raise ValueError(
                    f"inbound cursor {self.prefix!r}: bucket {index} of generation {gen} is missing from "
                    "the asset state store; clear the cursor's keys to start the watcher afresh"
                )
            values[index] = value
        journal = await store.aget(self.key("journal"))
        entries = None
        if isinstance(journal, str) and ":" in journal:
            tag, _, encoded = journal.partition(":")
            entries = encoded if tag == str(generation) else None
        self.generation = self._tag = max(self._tag, generation)
        self._layout = layout
        self._complete = [store]
        return InboundCursor.decode(values, int(meta["buckets"]), entries)

    async def save(self, cursor: InboundCursor) -> int:
        """
        Write what changed: the journal alone, or a compaction; return the characters written.

        :param cursor: the cursor to save.
        """
        if not cursor.journal and all(store in self._complete for store in self.stores):
            return 0
        journal = cursor.encode_journal()
        if (
            len(journal) <= JOURNAL_LIMIT
            and self.generation
            and all(s in self._complete for s in self.stores)
        ):
            value = f"{self.generation}:{journal}"
            for store in self.stores:
                await store.aset(self.key("journal"), value)
            return len(value) * len(self.stores)
        return await self._compact(cursor)

    async def _compact(self, cursor: InboundCursor) -> int:
        buckets = max(cursor.bucket_count, buckets_for(len(cursor)))
        if buckets != cursor.bucket_count:
            cursor.resize(buckets)
        # A new layout, or a store that does not hold the committed one: write every bucket.
        full = len(self._layout) != buckets or any(store not in self._complete for store in self.stores)
        if full:
            cursor.mark_all_dirty()
        layout = [0] * buckets if full else list(self._layout)
        generation = self._tag = max(self._tag, self.generation) + 1
        encoded = cursor.encode(cursor.dirty())
        for index in range(buckets):
            if index in encoded:
                layout[index] = generation
            elif cursor.is_empty_bucket(index):
                layout[index] = 0
        meta: dict[str, Any] = {
            "version": self.VERSION,
            "generation": generation,
            "buckets": buckets,
            "layout": layout,
        }
        keep = self._meta_keys(meta)
        written = 0
        try:
            for store in self.stores:
                known = self._keys.setdefault(store, set())
                for index, value in sorted(encoded.items()):
                    key = self.key(index, generation)
                    known.add(key)
                    await store.aset(key, value)
                    written += len(value)
                # The commit: until here the store's cursor is the one before this compaction.
                await store.aset(self.key("meta"), meta)
                for key in sorted(known - keep):
                    if await _delete(store, key):
                        known.discard(key)
        except BaseException:
            self._complete = []  # the stores may differ now: the next save is a full compaction
            raise
        self.generation = generation
        self._layout = layout
        self._complete = list(self.stores)
        cursor.compacted()
        return written


async def _delete(store: StateStore, key: str) -> bool:
    """Delete a key no committed meta names; whether it is gone (a failure is retried next time)."""
    adelete = getattr(store, "adelete", None)
    if adelete is None:
        return True  # a store without deletes keeps it
    try:
        await adelete(key)
    except Exception:
        log.debug("Could not delete %s from the asset state store; retried at the next compaction", key)
        return False
    return True
