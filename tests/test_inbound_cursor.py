from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from fake_state_store import MAX_VALUE_STORAGE_BYTES, FakeAssetStateStore

from famulor_provider.inbound_cursor import (
    BUCKETS,
    CursorStore,
    InboundCursor,
    bucket_of,
    decode_bucket,
    encode_bucket,
)


def _ids(n: int, seed: int = 7) -> list[str]:
    import random

    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def test_bucket_round_trip_with_uuids_large_counts_and_other_ids():
    counts = {cid: i * 997 for i, cid in enumerate(_ids(50))}
    counts["not-a-uuid"] = 3
    counts["ABCDEF00-0000-4000-8000-000000000000"] = 5  # upper case: not canonical, kept as text
    counts["ümlaut-id"] = 2**40
    assert decode_bucket(encode_bucket(counts)) == counts


def test_bucket_of_is_the_uuid_first_byte_and_stable_for_other_ids():
    assert bucket_of("a1b2c3d4-0000-4000-8000-000000000000") == 0xA1
    assert bucket_of("conv-1") == bucket_of("conv-1")
    assert 0 <= bucket_of("conv-1") < BUCKETS


def test_decode_rejects_an_unknown_tag():
    import base64
    import zlib

    with pytest.raises(ValueError, match="unknown entry tag 0x7"):
        decode_bucket(base64.b64encode(zlib.compress(b"\x07abc")).decode())


def test_set_marks_only_the_changed_bucket_dirty():
    ids = _ids(3)
    cursor = InboundCursor({cid: 1 for cid in ids})
    cursor.put(ids[0], 1)  # unchanged
    assert cursor.take_dirty() == set()
    cursor.put(ids[1], 4)
    assert cursor.take_dirty() == {bucket_of(ids[1])}
    assert cursor.take_dirty() == set()
    with pytest.raises(ValueError, match="count must be >= 0"):
        cursor.put(ids[2], -1)


def test_save_and_load_round_trip_and_rewrite_only_changed_buckets():
    store = FakeAssetStateStore()
    ids = _ids(1000)
    cursor = InboundCursor({cid: 2 for cid in ids})
    cursor.mark_all_dirty()
    asyncio.run(CursorStore([store], "scope").save(cursor))
    first_writes = len(store.writes)
    assert first_writes == len({bucket_of(cid) for cid in ids}) + 1  # every non-empty bucket, then meta

    cursor.put(ids[10], 3)
    cursor.put(ids[20], 5)
    saver = CursorStore([store], "scope")
    loaded = asyncio.run(saver.load())
    assert loaded is not None and len(loaded) == 1000 and loaded.get(ids[10]) == 2
    asyncio.run(saver.save(cursor))
    new_keys = [key for key, _ in store.writes[first_writes:]]
    assert sorted(new_keys) == sorted(
        {f"scope.b{bucket_of(ids[10]):02x}", f"scope.b{bucket_of(ids[20]):02x}", "scope.meta"}
    )
    reloaded = asyncio.run(CursorStore([store], "scope").load())
    assert reloaded is not None and reloaded.get(ids[10]) == 3 and reloaded.get(ids[20]) == 5
    assert json.loads(store.values["scope.meta"])["generation"] == 2


def test_load_without_a_cursor_is_none_and_prefixes_are_separate():
    store = FakeAssetStateStore()
    cursor = InboundCursor({"c1": 1})
    asyncio.run(CursorStore([store], "a").save(cursor))
    assert asyncio.run(CursorStore([store], "b").load()) is None
    assert asyncio.run(CursorStore([FakeAssetStateStore()], "a").load()) is None


def test_several_stores_load_the_most_advanced_and_save_to_all():
    ahead, behind, empty = FakeAssetStateStore(), FakeAssetStateStore(), FakeAssetStateStore()
    saver = CursorStore([behind, ahead], "s")
    cursor = InboundCursor({"c1": 1})
    asyncio.run(saver.save(cursor))
    CursorStore([ahead], "s").generation = 0
    solo = CursorStore([ahead], "s")
    asyncio.run(solo.load())
    cursor.put("c1", 9)
    asyncio.run(solo.save(cursor))  # only `ahead` moves to generation 2
    loaded = asyncio.run(CursorStore([empty, behind, ahead], "s").load())
    assert loaded is not None and loaded.get("c1") == 9
    both = CursorStore([empty, ahead], "s")
    asyncio.run(both.load())
    cursor.put("c1", 10)
    asyncio.run(both.save(cursor))
    assert asyncio.run(CursorStore([empty], "s").load()).get("c1") == 10  # type: ignore[union-attr]


def test_a_failed_save_writes_its_buckets_again_next_time():
    class Failing(FakeAssetStateStore):
        fail = True

        async def aset(self, key, value):
            if self.fail:
                raise ConnectionError("supervisor gone")
            await super().aset(key, value)

    store = Failing()
    cursor = InboundCursor()
    cursor.put("c1", 4)
    saver = CursorStore([store], "s")
    with pytest.raises(ConnectionError):
        asyncio.run(saver.save(cursor))
    store.fail = False
    asyncio.run(saver.save(cursor))
    assert asyncio.run(CursorStore([store], "s").load()).get("c1") == 4  # type: ignore[union-attr]


def test_100k_conversations_fit_airflow_default_value_limit():
    store = FakeAssetStateStore()
    cursor = InboundCursor({cid: 1 + i % 300 for i, cid in enumerate(_ids(100_000))})
    cursor.mark_all_dirty()
    asyncio.run(CursorStore([store], "scope").save(cursor))
    assert store.oversized == []
    largest = store.largest_value()
    total = sum(len(raw) for raw in store.values.values())
    assert largest < 12_000  # about 10 KB: room for ~600,000 conversations under the limit
    assert total / 100_000 < 30  # bytes per conversation (a naive JSON map: ~43)
    assert largest < MAX_VALUE_STORAGE_BYTES
