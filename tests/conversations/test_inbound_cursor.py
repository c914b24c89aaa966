from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import uuid
import zlib
from typing import Any

import pytest
from fake_state_store import MAX_VALUE_STORAGE_BYTES, FakeAssetStateStore

from famulor_provider.conversations.inbound_cursor import (
    JOURNAL_LIMIT,
    CursorStore,
    InboundCursor,
    bucket_of,
    buckets_for,
    decode_bucket,
    encode_bucket,
)


def _ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def _load(store: Any, prefix: str = "s") -> InboundCursor | None:
    return asyncio.run(CursorStore([store], prefix).load())


def _counts(cursor: InboundCursor | None, ids: list[str]) -> dict[str, int | None]:
    assert cursor is not None
    return {cid: cursor.get(cid) for cid in ids}


def test_bucket_round_trip_with_uuids_large_counts_and_other_ids():
    counts = {cid: i * 997 for i, cid in enumerate(_ids(50))}
    counts["not-a-uuid"] = 3
    counts["ABCDEF00-0000-4000-8000-000000000000"] = 5  # upper case: not canonical, kept as text
    counts["ümlaut-id"] = 2**40
    assert decode_bucket(encode_bucket(counts)) == counts
    assert decode_bucket(encode_bucket({})) == {}


def test_decode_rejects_an_unknown_tag():
    with pytest.raises(ValueError, match="unknown entry tag 0x7"):
        decode_bucket(base64.b64encode(zlib.compress(b"\x07abc")).decode())


def test_buckets_scale_with_the_account():
    assert bucket_of("a1b2c3d4-0000-4000-8000-000000000000") == 0xA1
    assert bucket_of("a1b2c3d4-0000-4000-8000-000000000000", 2) == 1
    assert bucket_of("a1b2c3d4-0000-4000-8000-000000000000", 1) == 0
    assert bucket_of("conv-1", 256) == bucket_of("conv-1", 256) < 256
    assert [buckets_for(n) for n in (0, 1_000, 10_000, 100_000, 10_000_000)] == [1, 1, 8, 128, 256]


def test_put_records_the_journal_and_the_dirty_bucket():
    ids = _ids(3)
    cursor = InboundCursor({cid: 1 for cid in ids}, buckets=4)
    cursor.put(ids[0], 1)  # unchanged
    assert cursor.journal == {} and cursor.dirty() == set()
    cursor.put(ids[1], 4)
    assert cursor.journal == {ids[1]: 4} and cursor.dirty() == {bucket_of(ids[1], 4)}
    with pytest.raises(ValueError, match="count must be >= 0"):
        cursor.put(ids[2], -1)


def test_an_advance_writes_one_value_and_a_load_applies_it():
    store = FakeAssetStateStore()
    ids = _ids(1000)
    cursor = InboundCursor({cid: 2 for cid in ids})
    saver = CursorStore([store], "s")
    asyncio.run(saver.save(cursor))  # the first save is a compaction: the buckets, then the meta
    assert [key for key, _ in store.writes] == ["s.b00.g1", "s.meta"]
    before = len(store.writes)
    cursor.put(ids[10], 3)
    cursor.put(ids[20], 5)
    asyncio.run(saver.save(cursor))
    assert [key for key, _ in store.writes[before:]] == ["s.journal"]
    tag, _, journal = json.loads(store.values["s.journal"]).partition(":")
    assert tag == "1" and decode_bucket(journal) == {ids[10]: 3, ids[20]: 5}
    loaded = _load(store)
    assert loaded is not None and len(loaded) == 1000
    assert _counts(loaded, ids[:21])[ids[10]] == 3 and loaded.get(ids[20]) == 5 and loaded.get(ids[0]) == 2


def test_a_full_journal_is_compacted_into_the_buckets():
    store = FakeAssetStateStore()
    ids = _ids(5000)
    cursor = InboundCursor({cid: 1 for cid in ids})
    saver = CursorStore([store], "s")
    asyncio.run(saver.save(cursor))
    for cid in ids:  # every conversation moves: the journal outgrows its limit
        cursor.put(cid, 2)
    assert len(encode_bucket(cursor.journal)) > JOURNAL_LIMIT
    asyncio.run(saver.save(cursor))
    assert json.loads(store.values["s.meta"])["generation"] == 2
    assert "s.journal" not in store.values  # every change went into the buckets
    assert set(_counts(_load(store), ids).values()) == {2}


def test_the_buckets_grow_with_the_account_and_stay_under_the_limit():
    store = FakeAssetStateStore()
    cursor = InboundCursor({cid: 1 for cid in _ids(1000)})
    saver = CursorStore([store], "s")
    asyncio.run(saver.save(cursor))
    more = _ids(20_000, seed=8)
    for cid in more:
        cursor.put(cid, 1)
    asyncio.run(saver.save(cursor))  # a compaction at 21,000 conversations: 16 buckets
    meta = json.loads(store.values["s.meta"])
    assert meta["buckets"] == 16 and meta["layout"] == [2] * 16
    assert sorted(key for key in store.values if key.startswith("s.b")) == [
        f"s.b{i:02x}.g2" for i in range(16)
    ]
    loaded = _load(store)
    assert loaded is not None and len(loaded) == 21_000 and loaded.get(more[-1]) == 1
    assert store.oversized == []


def test_a_kill_between_any_two_writes_leaves_the_cursor_behind_never_ahead():
    ids = _ids(3000)  # 4 buckets: a compaction writes them, then the meta value
    for fail_after in range(5):

        class Dying(FakeAssetStateStore):
            writes_left = 10**9

            async def aset(self, key: str, value: Any) -> None:
                if self.writes_left == 0:
                    raise ConnectionError("killed")
                self.writes_left -= 1
                await super().aset(key, value)

        store = Dying()
        cursor = InboundCursor({cid: 1 for cid in ids})
        saver = CursorStore([store], "s")
        asyncio.run(saver.save(cursor))
        for cid in ids:
            cursor.put(cid, 2)  # a compaction follows: several writes, any of them the last
        store.writes_left = fail_after
        with pytest.raises(ConnectionError):
            asyncio.run(saver.save(cursor))
        loaded = _counts(_load(store), ids)
        assert set(loaded.values()) == {1}  # the meta is written last: before, never a mix
        store.writes_left = 10**9
        asyncio.run(saver.save(cursor))  # the next advance completes it
        assert set(_counts(_load(store), ids).values()) == {2}


def test_load_without_a_cursor_is_none_and_prefixes_are_separate():
    store = FakeAssetStateStore()
    asyncio.run(CursorStore([store], "a").save(InboundCursor({"c1": 1})))
    assert _load(store, "b") is None
    assert _load(FakeAssetStateStore(), "a") is None
    assert _load(store, "a").get("c1") == 1  # type: ignore[union-attr]


def test_several_stores_get_every_write_and_a_new_one_a_full_copy():
    first, later = FakeAssetStateStore(), FakeAssetStateStore()
    cursor = InboundCursor({"c1": 1, "c2": 1})
    saver = CursorStore([first], "s")
    asyncio.run(saver.save(cursor))
    cursor.put("c1", 2)
    asyncio.run(saver.save(cursor))
    saver.stores = [first, later]  # a second asset's watcher joined
    cursor.put("c2", 3)
    asyncio.run(saver.save(cursor))
    for store in (first, later):
        assert _counts(_load(store), ["c1", "c2"]) == {"c1": 2, "c2": 3}
    # A load picks the store with the most compactions.
    stale = FakeAssetStateStore()
    asyncio.run(CursorStore([stale], "s").save(InboundCursor({"c1": 1})))
    loaded = asyncio.run(CursorStore([stale, later], "s").load())
    assert _counts(loaded, ["c1", "c2"]) == {"c1": 2, "c2": 3}


def test_100k_conversations_fit_airflow_default_value_limit():
    store = FakeAssetStateStore()
    ids = _ids(100_000)
    cursor = InboundCursor({cid: 1 + i % 300 for i, cid in enumerate(ids)})
    asyncio.run(CursorStore([store], "s").save(cursor))
    assert store.oversized == []
    total = sum(len(raw) for raw in store.values.values())
    assert json.loads(store.values["s.meta"])["buckets"] == 128
    assert store.largest_value() < 24_000 < MAX_VALUE_STORAGE_BYTES  # about 17 KB
    assert total / 100_000 < 25  # bytes per conversation (a naive JSON map: ~43)
    loaded = _load(store)
    assert loaded is not None and loaded.get(ids[-1]) == 1 + 99_999 % 300


class FaultyStore(FakeAssetStateStore):
    """A store whose ``aset`` raises from the ``fail_at``-th write on (a kill: nothing after it lands)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_at: int | None = None
        self.attempts = 0

    async def aset(self, key: str, value: Any) -> None:
        if self.fail_at is not None and self.attempts >= self.fail_at:
            raise ConnectionError(f"killed at write {self.attempts}")
        self.attempts += 1
        await super().aset(key, value)

    async def adelete(self, key: str) -> None:
        if self.fail_at is not None and self.attempts >= self.fail_at:
            raise ConnectionError(f"killed at write {self.attempts}")
        self.attempts += 1
        self.values.pop(key, None)


@pytest.mark.parametrize(("before", "grown"), [(1_000, 1_500), (3_000, 3_000)])  # 1 -> 2 and 4 -> 8 buckets
def test_a_layout_change_killed_at_any_write_loads_as_before_or_after(before: int, grown: int):
    old, new = _ids(before), _ids(grown, seed=9)
    moved = old[::7]

    def prepared() -> tuple[FaultyStore, CursorStore, InboundCursor]:
        store = FaultyStore()
        cursor = InboundCursor({cid: 1 for cid in old})
        saver = CursorStore([store], "s")
        asyncio.run(saver.save(cursor))
        cursor.put(old[0], 5)
        asyncio.run(saver.save(cursor))  # a journal on top of the buckets
        for cid in moved:
            cursor.put(cid, 2)
        for cid in new:
            cursor.put(cid, 3)  # enough to double the bucket count: the next save changes the layout
        return store, saver, cursor

    state_before = {cid: 1 for cid in old} | {old[0]: 5}
    state_after = state_before | {cid: 2 for cid in moved} | {cid: 3 for cid in new}
    every = [*old, *new]
    store, saver, cursor = prepared()
    start_buckets = json.loads(store.values["s.meta"])["buckets"]
    store.attempts = 0
    asyncio.run(saver.save(cursor))
    assert json.loads(store.values["s.meta"])["buckets"] == 2 * start_buckets
    total_writes = store.attempts
    assert total_writes >= 2 * start_buckets + 1
    for fail_at in range(total_writes + 1):
        store, saver, cursor = prepared()
        store.attempts, store.fail_at = 0, fail_at
        with contextlib.suppress(ConnectionError):
            asyncio.run(saver.save(cursor))
        loaded = _load(store)
        assert loaded is not None
        counts = {cid: count for cid, count in _counts(loaded, every).items() if count is not None}
        assert counts in (state_before, state_after), f"a mix after a kill at write {fail_at}"
        # The next advance completes the change, and the store keeps only what the cursor uses.
        store.fail_at = None
        asyncio.run(saver.save(cursor))
        assert {cid: count for cid, count in _counts(_load(store), every).items() if count} == state_after
        asyncio.run(saver._compact(cursor))  # a delete that failed is retried at the next compaction
        meta = json.loads(store.values["s.meta"])
        bucket_keys = {key for key in store.values if key.startswith("s.b")}
        assert len(bucket_keys) == len([g for g in meta["layout"] if g]), f"stale buckets after {fail_at}"


def test_a_cut_history_survives_a_restart_at_the_lower_count():
    store = FakeAssetStateStore()
    ids = _ids(10)
    cursor = InboundCursor({cid: 10 for cid in ids})
    saver = CursorStore([store], "s")
    asyncio.run(saver.save(cursor))  # a compaction: the buckets hold 10
    cursor.cut(ids[3], 3)  # the history was cut to 3 messages
    asyncio.run(saver.save(cursor))  # the journal holds 3
    loaded = _load(store)
    assert loaded is not None and loaded.get(ids[3]) == 3 and loaded.epoch(ids[3]) == 1
    assert loaded.get(ids[4]) == 10 and loaded.epoch(ids[4]) == 0
    # And after the next compaction, from the buckets.
    for cid in ids:
        cursor.put(cid, 20 if cid != ids[3] else 4)
    saver2 = CursorStore([store], "s")
    reloaded = asyncio.run(saver2.load())
    assert reloaded is not None
    reloaded.update({cid: 20 if cid != ids[3] else 4 for cid in ids})
    reloaded.mark_all_dirty()
    asyncio.run(saver2._compact(reloaded))
    final = _load(store)
    assert final is not None and final.get(ids[3]) == 4 and final.epoch(ids[3]) == 1


def test_a_stale_journal_never_moves_compacted_buckets():
    """The journal of an older generation is ignored: its counts may be higher than a later cut."""
    store = FakeAssetStateStore()
    cursor = InboundCursor({"c1": 10, "c2": 1})
    saver = CursorStore([store], "s")
    asyncio.run(saver.save(cursor))
    cursor.put("c2", 2)
    asyncio.run(saver.save(cursor))  # journal: c2 = 2
    cursor.cut("c1", 2)
    cursor.put("c2", 3)
    asyncio.run(saver._compact(cursor))  # buckets: c1 = 2 (cut), c2 = 3; the old journal stays
    loaded = _load(store)
    assert loaded is not None and (loaded.get("c1"), loaded.get("c2")) == (2, 3)
