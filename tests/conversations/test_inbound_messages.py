"""inbound_messages(): a run's inbound events back to the customers' messages, against the sandbox.

The events come from the real poller (the trigger's events); the reads go over HTTP to the sandbox.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from famulor_fixtures import set_sandbox_conn

from famulor_provider.conversations.inbound_messages import CutMessage, inbound_messages
from famulor_provider.conversations.inbound_poll import InboundPoller

SENDER = "+4930901820"  # seed sender 21
READS = "/api/conversations/"


@pytest.fixture(autouse=True)
def sandbox_conn(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra={"poll_requests_per_minute": 600_000})


def trigger_events(sandbox: Any, write: Any) -> list[dict[str, Any]]:
    """The events the trigger fires for what ``write()`` makes customers write after its baseline."""

    async def poll() -> list[dict[str, Any]]:
        from famulor_provider.hooks.famulor import FamulorHook

        poller = InboundPoller(FamulorHook(), sender_phone=SENDER)
        poller.cursor = await poller.take_baseline()
        write()
        return [event async for update in poller.poll() for event in update.events()]

    return asyncio.run(poll())


def cut_history(sandbox: Any, conversation_id: str, keep: int) -> None:
    with sandbox._lock:
        conversation = sandbox._conversation_index.by_id[conversation_id]
        del conversation.history[keep:]
        sandbox._conversation_index.touch(conversation, time.time())


def reads(sandbox: Any) -> list[str]:
    return [r.path for r in sandbox.requests if r.path.startswith(READS)]


def test_one_read_per_conversation_each_message_once_with_every_field(famulor_sandbox: Any):
    ada, bob = "+4915100000201", "+4915100000202"
    cid = famulor_sandbox.add_conversation(
        SENDER,
        ada,
        customer_name="Ada",
        variables={"order": "A-1"},
        history=[{"role": "user", "content": "old"}],
    )

    def write() -> None:
        famulor_sandbox.receive(SENDER, ada, "first", assistant_reply="ok")
        famulor_sandbox.receive(SENDER, ada, "second")
        famulor_sandbox.receive(SENDER, bob, "hi", customer_name="Bob")

    events = trigger_events(famulor_sandbox, write)
    bob_cid = next(e["conversation_id"] for e in events if e["conversation_id"] != cid)
    before = len(reads(famulor_sandbox))
    # As a task sees them: asset events (one twice, as after a crash or from inlet_events), an
    # event of another source, and the same payload given bare.
    asset_events = [SimpleNamespace(extra={"from_trigger": True, "payload": e}) for e in events]
    result = inbound_messages(
        [*asset_events, asset_events[0], SimpleNamespace(extra={"manual": True}), events[1]]
    )

    assert result.cut == []
    # Each message once, in the events' order.
    assert [m["dedupe_key"] for m in result.messages] == [e["dedupe_key"] for e in events]
    assert sorted((m["text"], m["dedupe_key"]) for m in result.messages) == sorted(
        [("first", f"{cid}:1"), ("second", f"{cid}:3"), ("hi", f"{bob_cid}:0")]
    )
    first = next(m for m in result.messages if m["text"] == "first")
    assert first == {
        "conversation_id": cid,
        "sender_phone": SENDER,
        "sender_name": "Acme GmbH Berlin",
        "customer_phone": ada,
        "customer_name": "Ada",
        "text": "first",
        "message_index": 1,
        "variables": {"order": "A-1"},
        "dedupe_key": f"{cid}:1",
    }
    assert sorted(reads(famulor_sandbox)[before:]) == sorted([f"{READS}{cid}", f"{READS}{bob_cid}"])


def test_a_history_cut_since_is_reported_never_answered_with_another_message(famulor_sandbox: Any):
    customer = "+4915100000211"
    cid = famulor_sandbox.add_conversation(SENDER, customer, history=[{"role": "user", "content": "old"}])

    def write() -> None:
        famulor_sandbox.receive(SENDER, customer, "kept")  # 1
        famulor_sandbox.receive(SENDER, customer, "deleted", assistant_reply="answer")  # 2, 3

    events = trigger_events(famulor_sandbox, write)
    assert [e["message_index"] for e in events] == [1, 2]

    cut_history(famulor_sandbox, cid, 2)  # "deleted" and its answer are gone
    result = inbound_messages(events)
    assert [m["text"] for m in result.messages] == []  # the history no longer begins as it was read
    assert [(g.dedupe_key, g.message_index) for g in result.cut] == [(f"{cid}:1", 1), (f"{cid}:2", 2)]
    assert "2 message(s) now, 4 when the trigger read it" in result.cut[1].reason

    # The history grew back past its old length: position 2 holds another message now. (Messages
    # have no id and no time: a history grown back with the same sequence of who wrote, here
    # customer, customer, customer, assistant, would pass for the one the trigger read.)
    famulor_sandbox.receive(SENDER, customer, "a new message")  # 2
    famulor_sandbox.receive(SENDER, customer, "and another")  # 3
    result = inbound_messages(events)
    assert result.messages == []
    assert [g.message_index for g in result.cut] == [1, 2]
    assert "not the ones the trigger read" in result.cut[1].reason


def test_a_deleted_conversation_is_reported(famulor_sandbox: Any):
    def write() -> None:
        famulor_sandbox.receive(SENDER, "+4915100000221", "hello")

    (event,) = trigger_events(famulor_sandbox, write)
    cid = event["conversation_id"]
    famulor_sandbox.inject(
        "status",
        path=f"/conversations/{cid}",
        status=404,
        body={"status": False, "error": "Conversation not found"},
    )
    assert inbound_messages([event]).cut == [CutMessage(f"{cid}:0", cid, 0, "the conversation was deleted")]


def test_a_failed_read_is_retried_as_reads_are(famulor_sandbox: Any):
    def write() -> None:
        famulor_sandbox.receive(SENDER, "+4915100000231", "through a 503")

    (event,) = trigger_events(famulor_sandbox, write)
    famulor_sandbox.inject("status", path=f"/conversations/{event['conversation_id']}", status=503)
    before = len(reads(famulor_sandbox))
    assert [m["text"] for m in inbound_messages([event]).messages] == ["through a 503"]
    assert len(reads(famulor_sandbox)[before:]) == 2


def test_an_event_of_an_earlier_release_holds_the_message_and_is_taken_as_it_is(famulor_sandbox: Any):
    earlier = {
        "conversation_id": "c1",
        "sender_phone": SENDER,
        "sender_name": "Acme GmbH Berlin",
        "customer_phone": "+4915100000241",
        "customer_name": None,
        "text": "from before the upgrade",
        "message_index": 0,
        "variables": None,
        "dedupe_key": "c1:0",
    }
    before = len(famulor_sandbox.requests)
    assert inbound_messages([SimpleNamespace(extra={"payload": earlier})]).messages == [earlier]
    assert len(famulor_sandbox.requests) == before  # nothing to read


def test_an_event_without_its_position_is_a_clear_error_before_any_read(famulor_sandbox: Any):
    from famulor_provider.exceptions import FamulorValidationError

    before = len(famulor_sandbox.requests)
    with pytest.raises(
        FamulorValidationError, match="the inbound event c1:0 has no history_length, roles_digest"
    ):
        inbound_messages([{"conversation_id": "c1", "message_index": 0, "dedupe_key": "c1:0"}])
    assert len(famulor_sandbox.requests) == before
