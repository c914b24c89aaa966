"""WhatsAppSenderTrigger against a server that never finishes its answer (real loopback HTTP).

A stalled listing must not hold a trigger past its ``end_time``, and a shared listing older
than the connection's deadline is not joined: the next poll starts a new request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from loopback_servers import DripServer, famulor_connection, run_within

from famulor_provider.triggers import whatsapp as trigger_module
from famulor_provider.triggers.whatsapp import WhatsAppSenderTrigger

LATE = 2.0  # how long after its end_time a trigger may yield its timeout event


@pytest.fixture(autouse=True)
def fresh_listings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No shared listing leaks from one test into another."""
    monkeypatch.setattr(trigger_module, "_listings", {})


def sender_trigger(end_in: float) -> WhatsAppSenderTrigger:
    return WhatsAppSenderTrigger(
        famulor_conn_id="famulor_default",
        criteria={"online_only": True},
        min_count=1,
        poll_interval=0.2,
        end_time=time.time() + end_in,
    )


async def run_to_end(trigger: WhatsAppSenderTrigger) -> tuple[list[dict[str, Any]], float]:
    """Every event the trigger yields, and the epoch time when it returned."""
    events = [event.payload async for event in trigger.run()]
    return events, time.time()


def assert_timed_out_on_time(trigger: WhatsAppSenderTrigger, events: list[dict], ended: float) -> None:
    assert [event["status"] for event in events] == ["timeout"]
    assert trigger.end_time is not None
    assert trigger.end_time - 0.1 <= ended <= trigger.end_time + LATE


def test_a_stalled_listing_holds_no_trigger_past_its_end_time(airflow_conn: Callable[..., str]) -> None:
    with DripServer(interval=1.0) as server:
        airflow_conn("famulor_default", **famulor_connection(server.url, timeout=60, max_retries=0))
        early, late = sender_trigger(end_in=2.0), sender_trigger(end_in=3.5)

        async def both() -> list[tuple[list[dict[str, Any]], float]]:
            return await asyncio.gather(run_to_end(early), run_to_end(late))

        (early_events, early_end), (late_events, late_end) = run_within(3.5 + LATE + 3, both())

        assert_timed_out_on_time(early, early_events, early_end)
        assert_timed_out_on_time(late, late_events, late_end)
        assert server.methods() == ["GET"]  # younger than its 60 s deadline: shared, not repeated


def test_a_listing_past_its_deadline_is_not_joined_by_the_next_poll(
    airflow_conn: Callable[..., str],
) -> None:
    # Bytes every 0.3 s: no gap between bytes reaches the 1 s timeout, only the total does.
    with DripServer(interval=0.3) as server:
        airflow_conn("famulor_default", **famulor_connection(server.url, timeout=1, max_retries=0))
        trigger = sender_trigger(end_in=3.5)

        events, ended = run_within(3.5 + LATE + 3, run_to_end(trigger))

        assert_timed_out_on_time(trigger, events, ended)
        assert len(server.methods()) >= 2, "every poll joined the first, stalled request"
