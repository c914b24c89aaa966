"""WhatsAppInboundMessageTrigger inside Airflow 3.3's real ``TriggerRunner.run_trigger``.

The runner subscribes the trigger to its ``SharedStreamManager``, and for each event the filter
yields it awaits ``log.ainfo("Trigger fired event")`` before binding the event to the raw event
(``bind_pending_event``) and queueing it. A cancellation (``cancel_triggers``: the watcher was
edited, removed or moved) that lands in that await leaves the event neither bound nor queued,
while ``unsubscribe`` counts the raw event as acknowledged. The test plays the supervisor:
it stores what the runner queued and confirms it (``confirm_persisted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from typing import Any

import pytest
from fake_state_store import FakeAssetStateStore
from famulor_fixtures import set_sandbox_conn

from famulor_provider.conversations.inbound_messages import inbound_messages
from famulor_provider.triggers import whatsapp as trigger_module
from famulor_provider.triggers.whatsapp import WhatsAppInboundMessageTrigger

runner_module = pytest.importorskip("airflow.jobs.triggerer_job_runner")
pytest.importorskip("airflow.triggers.shared_stream", reason="shared streams: Airflow 3.3+")

SENDER = "+4930901820"  # seed sender 21
CUSTOMER = "+4915100000071"


@pytest.fixture(autouse=True)
def fast_budget(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra={"poll_requests_per_minute": 600_000})
    monkeypatch.setattr(trigger_module, "_inbound_stores", {})


class GatedLog:
    """The runner's logger; ``ainfo("Trigger fired event")`` for the gated message never returns.

    ``fired`` keeps each event the runner logs, as it hands it to the log.
    """

    def __init__(self, real: Any, gate: int | None) -> None:
        self.real = real
        self.gate = gate
        self.reached = asyncio.Event()
        self.fired: list[Any] = []

    async def ainfo(self, event: str, *args: Any, **kwargs: Any) -> None:
        result = kwargs.get("result")
        if event == "Trigger fired event":
            self.fired.append(result)
        if (
            event == "Trigger fired event"
            and self.gate is not None
            and result.payload["message_index"] == self.gate
        ):
            self.reached.set()
            await asyncio.Event().wait()  # the cancellation lands here
        await self.real.ainfo(event, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Runner:
    """Airflow's ``TriggerRunner`` with the supervisor's part played by the test."""

    def __init__(self, gate: int | None = None) -> None:
        self.runner = runner_module.TriggerRunner()
        self.log = self.runner.log = GatedLog(self.runner.log, gate)
        self.stored: list[dict[str, Any]] = []
        self.serialized: list[str] = []  # each stored event as sent to the supervisor

    def start(self, trigger: WhatsAppInboundMessageTrigger, store: Any, trigger_id: int) -> None:
        trigger.asset_state_store = store  # as create_triggers injects it for an asset watcher
        trigger.trigger_id = trigger_id
        self.runner.triggers[trigger_id] = {
            "task": asyncio.create_task(self.runner.run_trigger(trigger_id, trigger)),
            "is_watcher": True,
            "name": f"inbound {trigger_id}",
            "events": 0,
        }

    def sync(self) -> None:
        """The state sync: the supervisor stored the queued events and confirms them."""
        seqs = []
        while self.runner.events:
            entry = self.runner.events.popleft()
            self.stored.append(entry.event.payload)
            self.serialized.append(entry.event.model_dump_json())
            if entry.persist_seq is not None:
                seqs.append(entry.persist_seq)
        self.runner._shared_streams.confirm_persisted(seqs)

    async def until(self, condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for details in self.runner.triggers.values():
                if details["task"].done() and not details["task"].cancelled():
                    details["task"].result()
            assert time.monotonic() < deadline, f"not met in time; stored: {self.stored}"
            self.sync()
            await asyncio.sleep(0.01)
        self.sync()

    async def cancel(self, trigger_id: int) -> None:
        """What cancel_triggers() does for a watcher that was edited, removed or moved."""
        task = self.runner.triggers[trigger_id]["task"]
        self.runner.to_cancel.append(trigger_id)
        await self.runner.cancel_triggers()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.sync()

    async def stop(self) -> None:
        for trigger_id in list(self.runner.triggers):
            await self.cancel(trigger_id)


def trigger() -> WhatsAppInboundMessageTrigger:
    return WhatsAppInboundMessageTrigger(sender_phone=SENDER, poll_interval=0.05)


def texts(sandbox: Any, events: list[dict[str, Any]]) -> list[str]:
    """The texts of the events' messages, from the sandbox's own record (histories are never cut here)."""
    with sandbox._lock:
        by_id = sandbox._conversation_index.by_id
        return [str(by_id[e["conversation_id"]].history[e["message_index"]]["content"]) for e in events]


def test_a_watcher_cancelled_between_two_events_of_one_update_loses_none(famulor_sandbox: Any):
    store = FakeAssetStateStore()

    async def scenario() -> list[dict[str, Any]]:
        first = Runner(gate=1)  # msg2
        first.start(trigger(), store, trigger_id=1)
        await first.until(lambda: any(key.endswith(".meta") for key in store.values))
        with famulor_sandbox._lock:  # three messages, one update (one poll reads them together)
            for text in ("msg1", "msg2", "msg3"):
                famulor_sandbox.receive(SENDER, CUSTOMER, text)
        await first.until(first.log.reached.is_set)  # msg1 queued; the runner logs msg2
        first.sync()  # msg1 is stored and confirmed
        await first.cancel(1)
        await asyncio.sleep(0.2)  # whatever the stopped stream still advances
        # The watcher comes back (edited, or on another triggerer) on the same asset.
        second = Runner()
        second.start(trigger(), store, trigger_id=2)
        await second.until(lambda: {"msg2", "msg3"} <= set(texts(famulor_sandbox, second.stored)))
        await asyncio.sleep(0.3)
        await second.stop()
        return first.stored + second.stored

    stored = asyncio.run(scenario())
    counts = Counter(texts(famulor_sandbox, stored))
    assert set(counts) == {"msg1", "msg2", "msg3"}, counts
    assert counts["msg2"] == counts["msg3"] == 1 and counts["msg1"] <= 2  # msg1 at most once more
    assert len({event["dedupe_key"] for event in stored}) == 3


def test_the_events_airflow_logs_and_stores_hold_no_personal_data_yet_give_every_message(
    famulor_sandbox: Any,
):
    """What Airflow 3.3's runner logs ("Trigger fired event", the event's repr) and sends to be
    stored in ``asset_event`` (the serialized event) holds neither the customer's number nor their
    name, words or variables; ``inbound_messages`` gives the messages with every field."""
    customer, name = "+4915112345678", "Ada Lovelace"
    cid = famulor_sandbox.add_conversation(
        SENDER, customer, customer_name=name, variables={"order": "A-7731"}
    )
    written = ["my order number is 7731", "please call me back"]
    store = FakeAssetStateStore()

    async def scenario() -> Runner:
        runner = Runner()
        runner.start(trigger(), store, trigger_id=1)
        await runner.until(lambda: any(key.endswith(".meta") for key in store.values))
        famulor_sandbox.receive(SENDER, customer, written[0], assistant_reply="Thanks, Ada!")
        famulor_sandbox.receive(SENDER, customer, written[1])
        await runner.until(lambda: len(runner.stored) >= 2)
        await asyncio.sleep(0.2)
        await runner.stop()
        return runner

    runner = asyncio.run(scenario())
    assert len(runner.log.fired) == len(runner.stored) == len(runner.serialized) == 2
    logged = "\n".join(repr(event) for event in runner.log.fired)
    stored = "\n".join([*runner.serialized, json.dumps({"from_trigger": True, "payload": runner.stored})])
    for personal in (customer, customer[1:], customer[-8:], name, "Lovelace", "A-7731", "7731", *written):
        assert personal not in logged, personal
        assert personal not in stored, personal
    assert [event["dedupe_key"] for event in runner.stored] == [f"{cid}:0", f"{cid}:2"]

    result = inbound_messages(runner.stored)
    assert result.cut == []
    assert result.messages == [
        {
            "conversation_id": cid,
            "sender_phone": SENDER,
            "sender_name": "Acme GmbH Berlin",
            "customer_phone": customer,
            "customer_name": name,
            "text": text,
            "message_index": index,
            "variables": {"order": "A-7731"},
            "dedupe_key": f"{cid}:{index}",
        }
        for index, text in ((0, written[0]), (2, written[1]))
    ]
