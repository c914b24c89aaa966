"""WhatsAppInboundMessageTrigger against the sandbox, driven by Airflow 3.3's own shared-stream manager.

``Triggerer`` below plays the triggerer's part with Airflow's real ``SharedStreamManager``
(subscribe, ``filter_shared_stream``, ``bind_pending_event``, ``confirm_persisted``): an event
counts as stored when the test confirms it, as the supervisor does after writing it to the
metadata database. A "kill" drops the manager without confirming what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from typing import Any

import pytest
from fake_state_store import FakeAssetStateStore
from famulor_fixtures import set_sandbox_conn

from famulor_provider.conversations.inbound_messages import inbound_messages
from famulor_provider.conversations.inbound_poll import InboundPoller
from famulor_provider.triggers import whatsapp as trigger_module
from famulor_provider.triggers.whatsapp import WhatsAppInboundMessageTrigger

shared_stream = pytest.importorskip("airflow.triggers.shared_stream", reason="shared streams: Airflow 3.3+")

SENDER = "+4930901820"  # seed sender 21
OTHER_SENDER = "+14155551234"  # seed sender 12
CONVERSATIONS_PATH = "/api/user/conversations"


# The text of each event's message when the event was fired, by dedupe_key (events hold no text).
TEXT_AT_EMIT: dict[str, str] = {}
SANDBOX: list[Any] = []


@pytest.fixture(autouse=True)
def fast_budget(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox as the connection, with a polling budget that does not slow the tests down."""
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra={"poll_requests_per_minute": 600_000})
    monkeypatch.setattr(trigger_module, "_inbound_stores", {})
    TEXT_AT_EMIT.clear()
    SANDBOX[:] = [famulor_sandbox]


def message_text(event: dict[str, Any]) -> str:
    """The text of the event's message, read from the sandbox's own record now (no request)."""
    (sandbox,) = SANDBOX
    with sandbox._lock:
        message = sandbox._conversation_index.by_id[event["conversation_id"]].history[event["message_index"]]
    assert message["role"].lower() == "user"
    text = str(message["content"])
    TEXT_AT_EMIT.setdefault(event["dedupe_key"], text)
    return text


class Triggerer:
    """The triggerer's side of ack mode, with Airflow's ``SharedStreamManager``."""

    def __init__(self) -> None:
        self.manager = shared_stream.SharedStreamManager(ack_timeout=30.0)
        self.events: list[dict[str, Any]] = []  # stored (confirmed) events
        self.unconfirmed: list[tuple[int | None, dict[str, Any]]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, trigger: WhatsAppInboundMessageTrigger, store: Any, trigger_id: int = 1) -> None:
        trigger.asset_state_store = store  # what the triggerer injects for an asset watcher
        self.tasks.append(asyncio.create_task(self._run(trigger, trigger_id)))

    async def _run(self, trigger: WhatsAppInboundMessageTrigger, trigger_id: int) -> None:
        key = trigger.shared_stream_key()
        stream = self.manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
        async for event in trigger.filter_shared_stream(stream):
            seq = self.manager.bind_pending_event(trigger_id=trigger_id, key=key)
            message_text(event.payload)  # what the message says at the time of the event
            self.unconfirmed.append((seq, event.payload))

    def sync(self) -> None:
        """The state sync: the supervisor stored the events and confirms them."""
        seqs = [seq for seq, _ in self.unconfirmed if seq is not None]
        self.events += [payload for _, payload in self.unconfirmed]
        self.unconfirmed = []
        self.manager.confirm_persisted(seqs)

    async def until(self, condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for task in self.tasks:
                if task.done():
                    task.result()  # surface a failed trigger
            assert time.monotonic() < deadline, f"not met in time; events: {self.events}"
            self.sync()
            await asyncio.sleep(0.01)
        self.sync()

    async def settle(self, polls: int = 3, interval: float = 0.05) -> None:
        """Let a few more polls pass, syncing (nothing more must happen)."""
        for _ in range(int(polls * interval / 0.01)):
            self.sync()
            await asyncio.sleep(0.01)

    async def kill(self) -> None:
        """SIGKILL: the in-memory events and confirmations are gone; nothing is flushed."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.unconfirmed = []
        # Cancel the poll without letting the pump drain: a killed process advances nothing.
        for group in list(self.manager._groups.values()):
            group._pump_stopping = True
            for task in (group._poll_task, group._pump_task, group._ack_timeout_task):
                if task is not None:
                    task.cancel()
        await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.manager.stop_all()


def trigger(**kwargs: Any) -> WhatsAppInboundMessageTrigger:
    kwargs.setdefault("sender_phone", SENDER)
    kwargs.setdefault("poll_interval", 0.05)
    return WhatsAppInboundMessageTrigger(**kwargs)


def texts(events: list[dict[str, Any]]) -> list[str]:
    """The texts of the events' messages, as they were when each event was fired."""
    return [TEXT_AT_EMIT[event["dedupe_key"]] for event in events]


async def started(triggerer: Triggerer, store: FakeAssetStateStore) -> None:
    """Wait until the watcher took its baseline (the cursor is in the store)."""
    await triggerer.until(lambda: any(key.endswith(".meta") for key in store.values))


def test_history_is_not_an_event_and_assistant_messages_never_are(famulor_sandbox: Any):
    famulor_sandbox.add_conversation(
        SENDER,
        "+4915100000001",
        customer_name="Old",
        history=[{"role": "user", "content": "old question"}, {"role": "assistant", "content": "old answer"}],
    )
    store = FakeAssetStateStore()

    async def scenario() -> list[dict[str, Any]]:
        triggerer = Triggerer()
        triggerer.start(trigger(), store)
        await started(triggerer, store)
        famulor_sandbox.receive(SENDER, "+4915100000001", "new question", assistant_reply="new answer")
        famulor_sandbox.receive(SENDER, "+4915100000002", "hello", customer_name="Ada")
        famulor_sandbox.receive(OTHER_SENDER, "+4915100000003", "other number")  # out of scope
        await triggerer.until(lambda: len(triggerer.events) >= 2)
        await triggerer.settle()
        await triggerer.stop()
        return triggerer.events

    events = asyncio.run(scenario())
    conversations = {c["customer"]["phone"]: c for c in famulor_sandbox.conversations}
    first = conversations["+4915100000001"]["id"]
    second = conversations["+4915100000002"]["id"]
    # Where each message is (who wrote what before it: "uaua", "u"), never whose or what it is.
    assert sorted(events, key=lambda e: e["message_index"]) == [
        {
            "conversation_id": second,
            "sender_phone": SENDER,
            "message_index": 0,
            "history_length": 1,
            "roles_digest": hashlib.sha256(b"u").hexdigest()[:16],
            "epoch": 0,
            "dedupe_key": f"{second}:0",
        },
        {
            "conversation_id": first,
            "sender_phone": SENDER,
            "message_index": 2,
            "history_length": 4,
            "roles_digest": hashlib.sha256(b"uaua").hexdigest()[:16],
            "epoch": 0,
            "dedupe_key": f"{first}:2",
        },
    ]
    # The consuming task's read gives the message itself, with every field.
    messages = inbound_messages(events).messages
    assert sorted(messages, key=lambda m: m["text"]) == [
        {
            "conversation_id": second,
            "sender_phone": SENDER,
            "sender_name": "Acme GmbH Berlin",
            "customer_phone": "+4915100000002",
            "customer_name": "Ada",
            "text": "hello",
            "message_index": 0,
            "variables": None,
            "dedupe_key": f"{second}:0",
        },
        {
            "conversation_id": first,
            "sender_phone": SENDER,
            "sender_name": "Acme GmbH Berlin",
            "customer_phone": "+4915100000001",
            "customer_name": "Old",
            "text": "new question",
            "message_index": 2,
            "variables": None,
            "dedupe_key": f"{first}:2",
        },
    ]
    assert store.oversized == []


def ordered(order: str, *values: Any) -> Any:
    """A test parameter running against a sandbox whose listing has this order."""
    return pytest.param(order, *values, marks=pytest.mark.famulor_sandbox(conversation_order=order), id=order)


def add_past_conversations(sandbox: Any, prefix: str, n: int) -> list[str]:
    """``n`` conversations of SENDER with one customer message, last active an hour ago and
    earlier (one second apart, in creation order), so the listing's order shows in updated_at."""
    phones = [f"{prefix}{k:08d}" for k in range(n)]
    start = time.time() - 3600 - n
    for k, phone in enumerate(phones):
        cid = sandbox.add_conversation(SENDER, phone, history=[{"role": "user", "content": "hi"}])
        sandbox._conversation_index.by_id[cid].updated_at = start + k  # the sandbox's own record
    return phones


@pytest.mark.parametrize("order", [ordered("created_asc"), ordered("updated_desc"), ordered("shuffled")])
def test_a_message_on_the_last_page_is_seen_whatever_the_order(famulor_sandbox: Any, order: str):
    assert famulor_sandbox._conversation_index.order == order
    customers = [f"+49151{n:08d}" for n in range(250)]
    for phone in customers:
        famulor_sandbox.add_conversation(SENDER, phone, history=[{"role": "user", "content": "hi"}])
    store = FakeAssetStateStore()

    async def scenario() -> list[dict[str, Any]]:
        triggerer = Triggerer()
        triggerer.start(trigger(), store)
        await started(triggerer, store)
        famulor_sandbox.receive(SENDER, customers[-1], "last page")  # created last: page 3 when created_asc
        famulor_sandbox.receive(SENDER, customers[0], "first created")
        await triggerer.until(lambda: len(triggerer.events) >= 2)
        await triggerer.settle()
        await triggerer.stop()
        return triggerer.events

    events = asyncio.run(scenario())
    assert sorted(texts(events)) == ["first created", "last page"]
    assert {e["message_index"] for e in events} == {1}


def test_one_event_per_message_when_several_arrive_between_polls(famulor_sandbox: Any):
    store = FakeAssetStateStore()

    async def scenario() -> list[dict[str, Any]]:
        triggerer = Triggerer()
        triggerer.start(trigger(poll_interval=0.5), store)
        await started(triggerer, store)
        for n in range(5):
            famulor_sandbox.receive(SENDER, "+4915100000009", f"message {n}", assistant_reply=f"reply {n}")
        await triggerer.until(lambda: len(triggerer.events) >= 5)
        await triggerer.settle(polls=2, interval=0.5)
        await triggerer.stop()
        return triggerer.events

    events = asyncio.run(scenario())
    assert texts(events) == [f"message {n}" for n in range(5)]
    assert [e["message_index"] for e in events] == [0, 2, 4, 6, 8]
    assert len({e["dedupe_key"] for e in events}) == 5


def test_a_poll_reads_only_the_conversations_that_changed(famulor_sandbox: Any):
    for n in range(150):
        famulor_sandbox.add_conversation(SENDER, f"+49152{n:08d}", history=[{"role": "user", "content": "x"}])
    store = FakeAssetStateStore()

    async def scenario() -> None:
        triggerer = Triggerer()
        t = trigger(poll_interval=0.3)
        triggerer.start(t, store)
        await started(triggerer, store)
        before = len(famulor_sandbox.requests)
        famulor_sandbox.receive(SENDER, "+4915200000007", "changed")
        await triggerer.until(lambda: len(triggerer.events) >= 1)
        await triggerer.stop()
        paths = [r.path for r in famulor_sandbox.requests[before:]]
        reads = [p for p in paths if p.startswith("/api/conversations/")]
        assert reads == [f"/api/conversations/{triggerer.events[0]['conversation_id']}"]
        assert set(paths) - set(reads) == {CONVERSATIONS_PATH}

    asyncio.run(scenario())


def test_a_new_trigger_with_the_same_store_neither_repeats_nor_loses(famulor_sandbox: Any):
    store = FakeAssetStateStore()

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        first = Triggerer()
        first.start(trigger(), store)
        await started(first, store)
        famulor_sandbox.receive(SENDER, "+4915100000011", "before restart")
        await first.until(lambda: len(first.events) >= 1)
        await first.settle()
        await first.stop()
        # While no trigger runs, customers keep writing: these are not history.
        famulor_sandbox.receive(SENDER, "+4915100000011", "while down")
        famulor_sandbox.receive(SENDER, "+4915100000012", "new customer while down")
        second = Triggerer()
        second.start(trigger(), store)
        await second.until(lambda: len(second.events) >= 2)
        famulor_sandbox.receive(SENDER, "+4915100000012", "after restart")
        await second.until(lambda: len(second.events) >= 3)
        await second.settle()
        await second.stop()
        return first.events, second.events

    before, after = asyncio.run(scenario())
    assert texts(before) == ["before restart"]
    assert sorted(texts(after)) == ["after restart", "new customer while down", "while down"]


def test_a_kill_before_the_events_are_confirmed_repeats_them_once_and_loses_none(famulor_sandbox: Any):
    store = FakeAssetStateStore()

    async def scenario() -> list[dict[str, Any]]:
        first = Triggerer()
        first.start(trigger(), store)
        await started(first, store)
        famulor_sandbox.receive(SENDER, "+4915100000021", "stored, then the kill")
        famulor_sandbox.receive(SENDER, "+4915100000022", "emitted, never stored")
        # The first is stored (its confirmation never reaches the runner), the second is not.
        deadline = time.monotonic() + 10
        while len(first.unconfirmed) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        stored = [p for _, p in first.unconfirmed if texts([p])[0].startswith("stored")]
        await first.kill()
        famulor_sandbox.receive(SENDER, "+4915100000021", "after the kill")
        second = Triggerer()
        second.start(trigger(), store)
        await second.until(lambda: len(second.events) >= 3)
        await second.settle()
        await second.stop()
        return stored + second.events

    events = asyncio.run(scenario())
    counts = Counter(e["dedupe_key"] for e in events)
    by_text = Counter(texts(events))
    assert by_text == {"stored, then the kill": 2, "emitted, never stored": 1, "after the kill": 1}
    assert max(counts.values()) == 2  # at most one extra per kill, under the same dedupe_key


def test_watchers_of_one_scope_share_one_poll_and_both_get_every_message(famulor_sandbox: Any):
    store_a, store_b = FakeAssetStateStore(), FakeAssetStateStore()

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        triggerer = Triggerer()
        a = trigger()
        b = trigger(poll_interval=0.05)
        triggerer.start(a, store_a, trigger_id=1)
        triggerer.start(b, store_b, trigger_id=2)
        await started(triggerer, store_a)
        await triggerer.until(lambda: any(key.endswith(".meta") for key in store_b.values))
        famulor_sandbox.receive(SENDER, "+4915100000031", "for both")
        await triggerer.until(lambda: len(triggerer.events) >= 2)
        await triggerer.settle()
        await triggerer.stop()
        listings = [r for r in famulor_sandbox.requests if r.path == CONVERSATIONS_PATH]
        return triggerer.events, len(listings)

    events, listings = asyncio.run(scenario())
    assert texts(events) == ["for both", "for both"]
    assert store_a.values == store_b.values  # one cursor, written to each watched asset
    assert listings < 40  # one poll loop at 0.05 s, not two


def test_a_429_is_waited_out_as_retry_after_says(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch):
    from famulor_provider.conversations import inbound_poll

    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(inbound_poll.asyncio, "sleep", recorded_sleep)
    set_sandbox_conn(
        monkeypatch, famulor_sandbox, extra={"poll_requests_per_minute": 600_000, "max_retries": 0}
    )
    store = FakeAssetStateStore()

    async def scenario() -> list[dict[str, Any]]:
        triggerer = Triggerer()
        triggerer.start(trigger(), store)
        await started(triggerer, store)
        famulor_sandbox.inject("status", path="/user/conversations", status=429, retry_after=7)
        famulor_sandbox.receive(SENDER, "+4915100000041", "after the 429")
        await triggerer.until(lambda: len(triggerer.events) >= 1)
        await triggerer.stop()
        return triggerer.events

    assert texts(asyncio.run(scenario())) == ["after the 429"]
    # The poll after the 429 waits what Retry-After said (less the failed poll's own duration).
    assert [s for s in sleeps if 6.0 < s <= 7.0], sleeps


@pytest.mark.parametrize(
    ("order", "costs"),
    [
        # Ordered by activity (proven by the baseline): each poll stops after the first page,
        # then walks its share of the sweep (4 pages over 3 polls: 2 pages, then the last one).
        ordered("updated_desc", [(3, False, True), (2, False, True), (3, False, True), (2, False, True)]),
        # Not ordered by activity: every poll walks every page.
        ordered("shuffled", [(4, True, False)] * 4),
    ],
)
def test_early_stop_only_when_the_listing_is_ordered_by_activity(
    famulor_sandbox: Any, order: str, costs: list[tuple[int, bool, bool]]
):
    assert famulor_sandbox._conversation_index.order == order
    phones = add_past_conversations(famulor_sandbox, "+49153", 350)

    async def scenario() -> list[tuple[int, bool, bool]]:
        from famulor_provider.hooks.famulor import FamulorHook

        poller = InboundPoller(FamulorHook(), sender_phone=SENDER, full_pass_every=3)
        await poller.take_baseline()
        seen = []
        for n in range(4):
            famulor_sandbox.receive(SENDER, phones[n * 80], f"new {n}")  # anywhere in the listing
            async for update in poller.poll():
                poller.acknowledge(update.conversation_id, update.start, update.end)
                seen += [message_text(event) for event in update.events()]
            measured.append((poller.stats.pages, poller.stats.full_pass, poller.stats.stopped_early))
        assert seen == [f"new {n}" for n in range(4)]  # early stop or not, every message is found
        return measured

    measured: list[tuple[int, bool, bool]] = []
    assert asyncio.run(scenario()) == costs


def test_a_trigger_watching_several_assets_writes_the_cursor_to_each():
    """Airflow 3.3 hands such a trigger one AssetStateStoreAccessors; its per-asset accessors are used."""
    from airflow.sdk import Asset
    from airflow.sdk.execution_time.context import AssetStateStoreAccessor, AssetStateStoreAccessors

    accessors = AssetStateStoreAccessors(inlets=[Asset(name="a"), Asset(name="b")])
    stores = trigger_module._asset_stores(accessors)
    assert stores == [AssetStateStoreAccessor(name="a"), AssetStateStoreAccessor(name="b")]
    single = FakeAssetStateStore()
    assert trigger_module._asset_stores(single) == [single]


def cut_history(sandbox: Any, conversation_id: str, keep: int) -> None:
    """The account deleted messages: the history is ``keep`` messages long now."""
    with sandbox._lock:
        conversation = sandbox._conversation_index.by_id[conversation_id]
        del conversation.history[keep:]
        sandbox._conversation_index.touch(conversation, time.time())


def test_a_cut_history_and_a_restart_lose_nothing_and_never_reuse_a_dedupe_key(famulor_sandbox: Any):
    customer = "+4915100000061"
    cid = famulor_sandbox.receive(SENDER, customer, "old 0")["conversation_id"]
    for n in range(1, 6):
        famulor_sandbox.receive(SENDER, customer, f"old {n}")
    store = FakeAssetStateStore()

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        first = Triggerer()
        first.start(trigger(), store)
        await started(first, store)
        famulor_sandbox.receive(SENDER, customer, "before the cut")  # message 6
        await first.until(lambda: len(first.events) >= 1)
        cut_history(famulor_sandbox, cid, 2)
        await first.settle(polls=10)  # the cut is seen and the cursor written
        await first.stop()
        for n in range(5):
            famulor_sandbox.receive(SENDER, customer, f"after the cut {n}")  # messages 2 - 6
        second = Triggerer()
        second.start(trigger(), store)
        await second.until(lambda: len(second.events) >= 5)
        await second.settle()
        await second.stop()
        return first.events, second.events

    before, after = asyncio.run(scenario())
    assert texts(before) == ["before the cut"]
    assert texts(after) == [f"after the cut {n}" for n in range(5)]
    assert [e["message_index"] for e in after] == [2, 3, 4, 5, 6]
    keys = [e["dedupe_key"] for e in before + after]
    assert len(set(keys)) == 6, keys  # "after the cut 4" is message 6 too, under another key
    assert before[0]["dedupe_key"] == f"{cid}:6" and after[-1]["dedupe_key"] == f"{cid}:6@1"


def test_a_stopped_watchers_store_is_never_used_by_a_later_watcher(famulor_sandbox: Any):
    """Watcher A (asset 1) stops without reaching cleanup() (a second cancellation while Airflow's
    run_trigger awaits unsubscribe in its finally, e.g. at shutdown); watcher B (asset 2, same
    connection and sender) starts later in the same process on its own empty store."""
    store_a, store_b = FakeAssetStateStore(), FakeAssetStateStore()

    async def scenario() -> list[dict[str, Any]]:
        first = Triggerer()
        first.start(trigger(), store_a, trigger_id=1)
        await started(first, store_a)
        await first.stop()  # the harness never calls cleanup()
        for n in range(5):
            famulor_sandbox.receive(SENDER, f"+49151000008{n:02d}", f"written before B started {n}")
        second = Triggerer()
        second.start(trigger(), store_b, trigger_id=2)
        await started(second, store_b)
        famulor_sandbox.receive(SENDER, "+4915100000090", "after B started")
        await second.until(lambda: len(second.events) >= 1)
        await second.settle()
        await second.stop()
        assert any(key.endswith(".meta") for key in store_b.values)
        return second.events

    assert texts(asyncio.run(scenario())) == ["after B started"]


def test_a_listing_without_message_count_reads_the_conversations_whose_updated_at_changed(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from famulor_provider.testing.conversation_index import Conversation

    listing_item = Conversation.listing_item

    def without_count(self: Conversation) -> dict[str, Any]:
        item = listing_item(self)
        del item["message_count"]  # optional in the answer's model
        return item

    monkeypatch.setattr(Conversation, "listing_item", without_count)
    for phone, text in (("+4915100000101", "history, not an event"), ("+4915100000102", "quiet")):
        cid = famulor_sandbox.add_conversation(SENDER, phone, history=[{"role": "user", "content": text}])
        famulor_sandbox._conversation_index.by_id[cid].updated_at = time.time() - 3600  # last active before
    store = FakeAssetStateStore()

    async def scenario() -> tuple[list[dict[str, Any]], list[str]]:
        triggerer = Triggerer()
        triggerer.start(trigger(poll_interval=0.2), store)
        await started(triggerer, store)
        await triggerer.settle(polls=3, interval=0.2)
        before = len(famulor_sandbox.requests)
        famulor_sandbox.receive(SENDER, "+4915100000101", "new 1")
        await triggerer.until(lambda: len(triggerer.events) >= 1)
        await asyncio.sleep(1.1)  # updated_at has whole seconds
        famulor_sandbox.receive(SENDER, "+4915100000101", "new 2")
        famulor_sandbox.receive(SENDER, "+4915100000103", "a new customer")
        await triggerer.until(lambda: len(triggerer.events) >= 3)
        await triggerer.settle(polls=3, interval=0.2)
        await triggerer.stop()
        reads = [
            r.path for r in famulor_sandbox.requests[before:] if r.path.startswith("/api/conversations/")
        ]
        return triggerer.events, reads

    with caplog.at_level(logging.WARNING, logger="famulor_provider"):
        events, reads = asyncio.run(scenario())
    assert sorted(texts(events)) == ["a new customer", "new 1", "new 2"]
    quiet = next(c["id"] for c in famulor_sandbox.conversations if c["customer"]["phone"] == "+4915100000102")
    assert f"/api/conversations/{quiet}" not in reads  # unchanged: never read after the baseline
    warnings = [r for r in caplog.records if "message_count" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_the_customers_role_is_compared_without_regard_to_case(famulor_sandbox: Any):
    cid = famulor_sandbox.add_conversation(
        SENDER, "+4915100000111", history=[{"role": "user", "content": "old"}]
    )

    async def scenario() -> list[str]:
        from famulor_provider.hooks.famulor import FamulorHook

        poller = InboundPoller(FamulorHook(), sender_phone=SENDER)
        await poller.take_baseline()
        with famulor_sandbox._lock:
            conversation = famulor_sandbox._conversation_index.by_id[cid]
            conversation.history += [
                {"role": "User", "content": "capital U"},
                {"role": "ASSISTANT", "content": "not the customer"},
                {"role": "USER", "content": "all caps"},
            ]
            famulor_sandbox._conversation_index.touch(conversation, time.time())
        return [message_text(event) async for update in poller.poll() for event in update.events()]

    assert asyncio.run(scenario()) == ["capital U", "all caps"]


@pytest.mark.famulor_sandbox(conversation_order="updated_desc")
def test_the_sweep_finds_a_change_the_front_misses_without_a_full_walk_in_any_poll(famulor_sandbox: Any):
    """A listing that only seemed ordered (a count grew, updated_at did not move): the sweep, a full
    pass spread over polls, finds it within one round, and no poll walks every page."""
    phones = add_past_conversations(famulor_sandbox, "+49154", 950)  # 10 pages; phones[0] on the last

    async def scenario() -> tuple[list[str], list[int]]:
        from famulor_provider.hooks.famulor import FamulorHook

        poller = InboundPoller(FamulorHook(), sender_phone=SENDER, full_pass_every=5)
        await poller.take_baseline()
        with famulor_sandbox._lock:
            quiet = famulor_sandbox._conversation_index.by_pair[(SENDER, phones[0])]
            quiet.history.append({"role": "user", "content": "behind the front"})  # no touch
        seen: list[str] = []
        pages: list[int] = []
        for _ in range(5):
            async for update in poller.poll():
                poller.acknowledge(update.conversation_id, update.start, update.end)
                seen += [message_text(event) for event in update.events()]
            pages.append(poller.stats.pages)
        return seen, pages

    seen, pages = asyncio.run(scenario())
    assert seen == ["behind the front"]
    assert pages == [3, 3, 3, 3, 2]  # the front page, then 2 of the 9 others (the last poll: 1)


class DyingStore(FakeAssetStateStore):
    """A store whose triggerer dies at the ``die_at``-th write of the next compaction (counted from
    its first bucket write): that write and every later one fail, as after a SIGKILL."""

    def __init__(self) -> None:
        super().__init__()
        self.die_at: int | None = None
        self.compaction_writes = 0
        self.dead = False

    def _write(self, key: str) -> None:
        if self.die_at is None:
            return
        if self.compaction_writes or ".b" in key:
            if self.dead or self.compaction_writes >= self.die_at:
                self.dead = True
                raise ConnectionError("the triggerer was killed")
            self.compaction_writes += 1

    async def aset(self, key: str, value: Any) -> None:
        self._write(key)
        await super().aset(key, value)

    async def adelete(self, key: str) -> None:
        self._write(key)
        await super().adelete(key)


@pytest.mark.parametrize("die_at", range(5))  # 2 buckets, the meta, 1 delete: every write, and none
def test_a_kill_at_any_write_of_a_layout_change_replays_no_history_and_loses_nothing(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, die_at: int
):
    from famulor_provider.conversations import inbound_cursor

    # Small values, so that 120 conversations need 2 buckets and 30 moved ones a compaction.
    monkeypatch.setattr(inbound_cursor, "BUCKET_TARGET", 2_400)
    monkeypatch.setattr(inbound_cursor, "JOURNAL_LIMIT", 300)
    add_past_conversations(famulor_sandbox, "+49155", 90)  # history: "hi" in each
    store = DyingStore()

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        first = Triggerer()
        first.start(trigger(), store)
        await started(first, store)
        assert json.loads(store.values[next(k for k in store.values if k.endswith(".meta"))])["buckets"] == 1
        store.die_at = die_at
        for n in range(30):  # 30 new customers: the cursor grows to 120 conversations, 2 buckets
            famulor_sandbox.receive(SENDER, f"+4915600000{n:03d}", f"new {n}")
        await first.until(lambda: len(first.events) >= 30)
        await first.until(lambda: store.dead or store.compaction_writes >= 4)
        await first.kill()
        store.die_at = None
        second = Triggerer()
        second.start(trigger(), store)
        famulor_sandbox.receive(SENDER, "+4915700000001", "after the restart")
        await second.until(lambda: "after the restart" in texts(second.events))
        await second.settle()
        await second.stop()
        return first.events, second.events

    before, after = asyncio.run(scenario())
    assert sorted(texts(before)) == sorted(f"new {n}" for n in range(30))
    assert "hi" not in texts(after)  # no history replayed
    # The messages the stored cursor had not passed at the kill come once more, with the same
    # dedupe_key (tests/conversations: the stored cursor is exactly the one before or after).
    repeated = Counter(e["dedupe_key"] for e in after if texts([e]) != ["after the restart"])
    assert set(repeated) <= {e["dedupe_key"] for e in before} and set(repeated.values()) <= {1}
    meta = json.loads(store.values[next(k for k in store.values if k.endswith(".meta"))])
    assert meta["buckets"] == 2
