"""``ReceiptBook``: folding receipts (forward only, duplicates and test events skipped) and paging
through the execution API's ``after`` (inclusive, ordered by time only) without losing or
repeating an event when many share one instant."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow_harness import EXAMPLE_DAGS, airflow_version
from delivery_receipts import receipt

from famulor_provider.webhooks import receipts as receipts_module
from famulor_provider.webhooks.receipts import ReceiptBook, since_for

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


@dataclass
class Event:
    id: int
    timestamp: datetime
    extra: dict[str, Any]


class Accessor:
    """What ``inlet_events[asset]`` does: ``after`` inclusive, ordered by time only (ties in any order)."""

    def __init__(self, events: list[Event], seed: int = 0) -> None:
        self.events = events
        self.rng = random.Random(seed)
        self.calls: list[tuple[datetime, int]] = []

    def after(self, after: datetime) -> Accessor:
        self._after = after
        return self

    def ascending(self, ascending: bool = True) -> Accessor:
        assert ascending
        return self

    def limit(self, limit: int) -> Accessor:
        self._limit = limit
        return self

    def __iter__(self) -> Any:
        self.calls.append((self._after, self._limit))
        found = [e for e in self.events if e.timestamp >= self._after]
        self.rng.shuffle(found)  # ties come back in any order, as SQL without a tie-breaker
        found.sort(key=lambda e: e.timestamp)
        return iter(found[: self._limit])


def events_of(payloads: list[tuple[datetime, dict[str, Any]]]) -> list[Event]:
    return [Event(i + 1, at, {"payload": p, "dedupe_key": "k"}) for i, (at, p) in enumerate(payloads)]


def test_statuses_only_move_forward_and_duplicates_and_tests_are_skipped() -> None:
    book = ReceiptBook([1, "2", 3])
    for payload in [
        receipt(1, "sent"),
        receipt(1, "read"),
        receipt(1, "delivered"),  # late: read stays
        receipt(1, "read"),  # duplicate
        receipt(2, "sent"),
        receipt(2, "failed", error_code=63016),
        receipt(2, "delivered"),  # nothing after a failure
        receipt(3, "delivered", test=True),  # the settings' test button
        receipt(4, "delivered"),  # not awaited
    ]:
        book.add({"payload": payload})
    assert {k: r.status for k, r in book.receipts.items()} == {"1": "read", "2": "failed"}
    assert book.duplicates == 1
    assert book.get(2).error_code == 63016  # type: ignore[union-attr]
    assert book.get("2").description().startswith("failed, error 63016: Message failed to send")  # type: ignore[union-attr]
    assert book.get(1).reached("delivered") and book.get(1).reached("read")  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(5))
def test_pages_lose_and_repeat_nothing_when_many_events_share_an_instant(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(receipts_module, "PAGE_SIZE", 4)
    # 30 messages; 10 events at one instant (more than a page), then pairs sharing instants.
    payloads = [(T0, receipt(i, "sent")) for i in range(10)]
    payloads += [(T0 + timedelta(seconds=1 + i // 2), receipt(i, "sent")) for i in range(10, 30)]
    payloads += [(T0 + timedelta(seconds=20), receipt(i, "delivered")) for i in range(0, 30, 3)]
    accessor = Accessor(events_of(payloads), seed)
    book = ReceiptBook(range(30))

    assert book.read(accessor, T0) == len(payloads)
    assert book.duplicates == 0
    assert sum(r.status == "delivered" for r in book.receipts.values()) == 10
    assert len(book.receipts) == 30

    # A later read (poke mode) reads only what is new, and a new event at the cursor's instant.
    accessor.events += events_of([(T0 + timedelta(seconds=20), receipt(1, "read"))])
    accessor.events[-1].id = 10_000
    assert book.read(accessor, T0) == 1
    assert book.get(1).status == "read"  # type: ignore[union-attr]


def test_since_is_the_earliest_time_less_the_margin() -> None:
    assert since_for(["2026-03-01T09:10:00+00:00", T0, None]) == T0 - timedelta(minutes=5)
    assert since_for(["2026-03-01T09:00:00Z"]) == T0 - timedelta(minutes=5)


def test_airflow_3_1s_plain_list_of_every_event_is_filtered_by_time() -> None:
    events = events_of(
        [
            (T0 - timedelta(hours=1), receipt(1, "read")),  # before the send: another message's past
            (T0, receipt(1, "sent")),
            (T0 + timedelta(seconds=1), receipt(1, "delivered")),
        ]
    )
    book = ReceiptBook([1])
    assert book.read(list(events), T0) == 2
    assert book.get(1).status == "delivered"  # type: ignore[union-attr]
    assert book.read(list(events), T0) == 0  # nothing new


@pytest.mark.skipif(not airflow_version().startswith("2."), reason="Airflow 2 refuses; 3.1+ runs them")
def test_airflow_2_refuses_the_sensor_and_the_report_clearly_and_the_examples_still_parse() -> None:
    from airflow.models.dagbag import DagBag

    from famulor_provider.operators.delivery import WhatsAppDeliveryReportOperator
    from famulor_provider.sensors.delivery import WhatsAppDeliverySensor

    with pytest.raises(RuntimeError, match=r"needs Airflow 3\.1 or later \(this is Airflow 2\."):
        WhatsAppDeliverySensor(task_id="wait", after={"whatsapp_message_id": 1})
    with pytest.raises(RuntimeError, match=r"needs Airflow 3\.1 or later"):
        WhatsAppDeliveryReportOperator(task_id="report", campaign="/tmp/ledger.jsonl")
    for name in ("famulor_whatsapp_delivery_fallback.py", "famulor_conversation_ended.py"):
        bag = DagBag(dag_folder=str(EXAMPLE_DAGS / name), include_examples=False, safe_mode=False)
        assert (bag.import_errors, bag.dags) == ({}, {})
