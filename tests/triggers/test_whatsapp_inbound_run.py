"""WhatsAppInboundMessageTrigger on every Airflow line: serialization, and run() (Airflow 3.0 - 3.2).

On 3.0 - 3.2 the triggerer calls ``run()`` (no shared streams, no state store): history at
start, one event per new customer message, the cursor in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from famulor_fixtures import set_sandbox_conn

from famulor_provider.conversations.inbound_messages import inbound_messages
from famulor_provider.triggers.whatsapp import WhatsAppInboundMessageTrigger

SENDER = "+4930901820"  # seed sender 21


@pytest.fixture(autouse=True)
def fast_budget(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox as the connection, with a polling budget that does not slow the tests down."""
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra={"poll_requests_per_minute": 600_000})


def trigger(**kwargs: Any) -> WhatsAppInboundMessageTrigger:
    kwargs.setdefault("sender_phone", SENDER)
    kwargs.setdefault("poll_interval", 0.05)
    return WhatsAppInboundMessageTrigger(**kwargs)


def test_serialize_holds_no_secret_and_the_store_keys_no_phone_number():
    t = trigger(famulor_conn_id="famulor_x", customer_phone="+4915112345678", poll_interval=30)
    classpath, kwargs = t.serialize()
    assert classpath == "famulor_provider.triggers.whatsapp.WhatsAppInboundMessageTrigger"
    assert kwargs == {
        "famulor_conn_id": "famulor_x",
        "sender_phone": SENDER,
        "customer_phone": "+4915112345678",
        "poll_interval": 30.0,
    }
    assert WhatsAppInboundMessageTrigger(**kwargs).serialize() == (classpath, kwargs)
    prefix = t.cursor_key_prefix()
    assert prefix.startswith("famulor_inbound.") and "4915" not in prefix and "4930" not in prefix
    assert prefix != trigger(famulor_conn_id="famulor_x").cursor_key_prefix()


def test_run_without_a_store_airflow_3_1_semantics(famulor_sandbox: Any):
    """run() (Airflow 3.0 - 3.2): history at start, one event per new message, cursor in memory."""
    famulor_sandbox.add_conversation(SENDER, "+4915100000051", history=[{"role": "user", "content": "old"}])

    async def scenario() -> list[dict[str, Any]]:
        t = trigger()
        events: list[dict[str, Any]] = []

        async def consume() -> None:
            async for event in t.run():
                events.append(event.payload)

        task = asyncio.create_task(consume())
        deadline = time.monotonic() + 10
        while not [r for r in famulor_sandbox.requests if r.path == "/api/user/conversations"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)  # until the baseline's listing was answered
        await asyncio.sleep(0.05)
        famulor_sandbox.receive(SENDER, "+4915100000051", "one")
        famulor_sandbox.receive(SENDER, "+4915100000051", "two")
        deadline = time.monotonic() + 10
        while len(events) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return events

    events = asyncio.run(scenario())
    assert [e["message_index"] for e in events] == [1, 2]
    assert "+4915100000051" not in repr(events)
    messages = inbound_messages(events).messages
    assert [(m["text"], m["customer_phone"]) for m in messages] == [
        ("one", "+4915100000051"),
        ("two", "+4915100000051"),
    ]
