"""WhatsAppReplyTrigger: serialization, run() over real HTTP against the sandbox, shared polling."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent
from famulor_fixtures import set_sandbox_conn

from famulor_provider.conversations import polling
from famulor_provider.conversations.polling import PollingBudget
from famulor_provider.conversations.replies import resume_reply
from famulor_provider.exceptions import FamulorError, FamulorValidationError
from famulor_provider.hooks.famulor import FamulorHook
from famulor_provider.testing import SANDBOX_API_KEY
from famulor_provider.triggers.whatsapp import WhatsAppReplyTrigger, conversation_poller

SENDER = "+14155551234"  # sender 12
PHONE = "+4915112345678"
LIST_PATH = "/api/user/conversations"


@pytest.fixture(autouse=True)
def unpaced(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> PollingBudget:
    """A budget that never makes the tests wait (its stretch is still computed and logged)."""
    extra = {"timeout": 5, "max_retries": 0, "poll_requests_per_minute": 60000}
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra=extra)
    budget = PollingBudget(burst_seconds=1e9)
    monkeypatch.setattr(polling, "POLLING_BUDGET", budget)
    return budget


def customer(n: int) -> str:
    return f"+49170{n:07d}"


def make_trigger(phone: str = PHONE, *, timeout: float = 10.0, **kwargs: Any) -> WhatsAppReplyTrigger:
    kwargs.setdefault("sender_phone", SENDER)
    kwargs.setdefault("poll_interval", 0.1)
    return WhatsAppReplyTrigger(recipient_phone=phone, end_time=time.time() + timeout, **kwargs)


async def first_event(trigger: WhatsAppReplyTrigger) -> dict[str, Any]:
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1
    return events[0]


def what_airflow_logs_and_stores(event: TriggerEvent) -> str:
    """The event as the triggerer logs it ("Trigger fired event", its repr) and as Airflow stores
    it for the resumed task (serde)."""
    try:
        from airflow.sdk.serde import serialize
    except ImportError:  # Airflow 2.11
        from airflow.serialization.serde import serialize
    return repr(event) + json.dumps(serialize(event.payload))


def resumed(event: dict[str, Any], phone: str = PHONE, choices: Any = None) -> dict[str, Any]:
    """What the resumed sensor returns for a success ``event``: one read of the conversation."""
    return resume_reply(FamulorHook(), event, phone, None if choices is None else tuple(choices))


def listings(sandbox: Any) -> list[Any]:
    return [r for r in sandbox.requests if r.path == LIST_PATH]


def reads(sandbox: Any) -> list[Any]:
    return [r for r in sandbox.requests if r.path.startswith("/api/conversations/")]


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- serialization ---------------------------------------------------------------------------------


def test_serialize_gives_json_primitives_without_the_api_key() -> None:
    trigger = WhatsAppReplyTrigger(
        recipient_phone=PHONE,
        sender_id=12,
        history_lengths_after_send={SENDER: 3},
        choices=("YES", "NO"),
        poll_interval=60,
        end_time=1_900_000_000.5,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "famulor_provider.triggers.whatsapp.WhatsAppReplyTrigger"
    assert kwargs == {
        "famulor_conn_id": "famulor_default",
        "recipient_phone": PHONE,
        "sender_id": 12,
        "sender_phone": None,
        "baseline": None,
        "history_lengths_after_send": {SENDER: 3},
        "choices": ["YES", "NO"],
        "poll_interval": 60.0,
        "end_time": 1_900_000_000.5,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert SANDBOX_API_KEY not in json.dumps(kwargs)
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_a_sender_is_needed() -> None:
    with pytest.raises(FamulorValidationError, match="sender_id"):
        WhatsAppReplyTrigger(recipient_phone=PHONE)


# -- run ---------------------------------------------------------------------------------------------


def test_a_reply_already_there_is_found_in_the_first_poll(famulor_sandbox: Any) -> None:
    famulor_sandbox.add_conversation(
        SENDER,
        PHONE,
        history=[{"role": "assistant", "content": "Confirm?"}, {"role": "user", "content": "Yes"}],
    )
    event = asyncio.run(
        first_event(make_trigger(sender_phone=None, sender_id=12, baseline=1, choices=["YES"]))
    )
    assert event["status"] == "success"
    reply = resumed(event, choices=["YES"])
    assert (reply["choice"], reply["message_index"], reply["replies"]) == ("YES", 1, ["Yes"])


def test_the_events_hold_neither_the_customers_number_nor_their_words(famulor_sandbox: Any) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=[{"role": "assistant", "content": "Confirm?"}])
    famulor_sandbox.receive(SENDER, PHONE, "Maybe tomorrow")
    famulor_sandbox.receive(SENDER, PHONE, "*Yes* 👍")

    async def events(trigger: WhatsAppReplyTrigger) -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    (found,) = asyncio.run(events(make_trigger(sender_phone=None, sender_id=12, baseline=1, choices=["YES"])))
    (timeout,) = asyncio.run(events(make_trigger(baseline=1, choices=["NEVER"], timeout=1)))

    uuid = famulor_sandbox.conversations[0]["id"]
    assert found.payload == {
        "status": "success",
        "conversation_id": uuid,
        "sender_phone": SENDER,  # the business number
        "baseline": 1,
        "message_index": 2,
        "history_length": 3,
    }
    assert timeout.payload == {
        "status": "timeout",
        "message": "Sensor has timed out: no reply in ['NEVER'] by the end time",
        "replies_seen": 2,
    }
    for event in (found, timeout):
        logged = what_airflow_logs_and_stores(event)
        assert PHONE.removeprefix("+") not in logged and "****" not in logged
        assert "Maybe" not in logged and "Yes" not in logged
    # The resumed task builds today's result from one read.
    assert resumed(found.payload, choices=["YES"]) == {
        "conversation_id": uuid,
        "sender_phone": SENDER,
        "recipient_phone": PHONE,
        "text": "*Yes* 👍",
        "choice": "YES",
        "message_index": 2,
        "replies": ["Maybe tomorrow", "*Yes* 👍"],
    }


def test_the_result_is_what_the_trigger_saw_even_when_the_customer_wrote_on(famulor_sandbox: Any) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=[{"role": "assistant", "content": "Confirm?"}])
    famulor_sandbox.receive(SENDER, PHONE, "no")
    event = asyncio.run(first_event(make_trigger(baseline=1, choices=["YES", "NO"])))
    famulor_sandbox.receive(SENDER, PHONE, "sorry, I meant yes")  # after the trigger fired

    reads_before = len(reads(famulor_sandbox))
    reply = resumed(event, choices=["YES", "NO"])

    assert (reply["choice"], reply["message_index"], reply["replies"]) == ("NO", 1, ["no"])
    assert len(reads(famulor_sandbox)) == reads_before + 1  # one read


def test_a_reply_gone_from_the_history_when_the_task_resumes_is_a_clear_error(famulor_sandbox: Any) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=[{"role": "assistant", "content": "Confirm?"}])
    famulor_sandbox.receive(SENDER, PHONE, "yes")
    event = asyncio.run(first_event(make_trigger(baseline=1, choices=["YES"])))
    del famulor_sandbox._conversation_index.created[0].history[1:]  # the history was cut in between

    with pytest.raises(FamulorError, match="no longer in conversation") as caught:
        resumed(event, choices=["YES"])
    assert PHONE not in str(caught.value)


def test_the_baseline_comes_from_the_send_record_once_the_sender_number_is_known(
    famulor_sandbox: Any,
) -> None:
    history = [{"role": "user", "content": "NO"}, {"role": "assistant", "content": "Confirm?"}]
    famulor_sandbox.add_conversation(SENDER, PHONE, history=history)
    famulor_sandbox.schedule_receive(0.5, SENDER, PHONE, "no")
    trigger = make_trigger(
        sender_phone=None, sender_id=12, history_lengths_after_send={SENDER: 2}, choices=["NO"]
    )
    event = asyncio.run(first_event(trigger))
    reply = resumed(event, choices=["NO"])
    assert (reply["message_index"], reply["text"]) == (2, "no")


def test_timeout_event_counts_the_replies_seen(famulor_sandbox: Any) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=[{"role": "assistant", "content": "Confirm?"}])
    famulor_sandbox.receive(SENDER, PHONE, "Maybe")
    event = asyncio.run(first_event(make_trigger(baseline=1, choices=["YES"], timeout=3)))
    assert event == {
        "status": "timeout",
        "message": "Sensor has timed out: no reply in ['YES'] by the end time",
        "replies_seen": 1,
    }


def test_an_unknown_sender_id_is_an_error_event_at_once(famulor_sandbox: Any) -> None:
    started = time.monotonic()
    event = asyncio.run(first_event(make_trigger(sender_phone=None, sender_id=99)))
    assert (event["status"], event["error_type"]) == ("error", "FamulorSenderNotFoundError")
    assert time.monotonic() - started < 5


def test_a_bad_key_is_an_error_event_at_once(famulor_sandbox: Any, wrong_key: None) -> None:
    event = asyncio.run(first_event(make_trigger(baseline=0)))
    assert (event["status"], event["error_type"], event["status_code"]) == ("error", "FamulorAuthError", 401)


def test_transient_faults_keep_polling(
    famulor_sandbox: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    famulor_sandbox.inject("status", path="/user/conversations", status=503, times=2)
    famulor_sandbox.schedule_receive(0.3, SENDER, PHONE, "YES")
    with caplog.at_level(logging.WARNING):
        event = asyncio.run(first_event(make_trigger(baseline=0)))
    assert event["status"] == "success"
    assert "Famulor is unavailable for now" in caplog.text + capsys.readouterr().out


def test_a_failed_sender_look_up_is_retried_at_the_next_poll(famulor_sandbox: Any) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=[{"role": "assistant", "content": "Confirm?"}])
    famulor_sandbox.inject("status", path="/user/whatsapp/senders", status=503)
    famulor_sandbox.schedule_receive(0.5, SENDER, PHONE, "YES")

    event = asyncio.run(first_event(make_trigger(sender_phone=None, sender_id=12, baseline=1, timeout=8)))

    assert event["status"] == "success"
    senders = [r for r in famulor_sandbox.requests if r.path == "/api/user/whatsapp/senders"]
    assert [r.status for r in senders] == [503, 200]  # the 503 was not reused: the next poll asked again


# -- shared polling -----------------------------------------------------------------------------------


def add_account(sandbox: Any, count: int) -> None:
    for n in range(count):
        sandbox.add_conversation(SENDER, customer(n), history=[{"role": "assistant", "content": "Confirm?"}])


def test_many_triggers_cost_the_listing_pages_plus_one_read_per_changed_conversation(
    famulor_sandbox: Any,
) -> None:
    add_account(famulor_sandbox, 1000)  # 10 pages of 100

    awaited = range(0, 1000, 20)  # 50 triggers

    async def scenario() -> list[str]:
        waiters = [
            asyncio.ensure_future(
                first_event(make_trigger(customer(n), baseline=1, poll_interval=0.3, timeout=20))
            )
            for n in awaited
        ]
        poller = conversation_poller("famulor_default")
        await wait_for(lambda: poller.rounds >= 2)
        assert (len(listings(famulor_sandbox)), len(reads(famulor_sandbox))) == (20, 0)  # 2 rounds x 10 pages
        for n in (0, 20, 40):
            famulor_sandbox.receive(SENDER, customer(n), "YES")
        await wait_for(lambda: sum(w.done() for w in waiters) == 3)
        assert len(reads(famulor_sandbox)) == 3  # one per changed conversation, none for the others
        pages_per_round = {poller.rounds: len(listings(famulor_sandbox)) / poller.rounds}
        assert pages_per_round == {poller.rounds: 10.0}
        for waiter in waiters:
            waiter.cancel()
        return [
            customer(n)
            for n, w in zip(awaited, waiters, strict=True)
            if w.done() and not w.cancelled() and w.result()["status"] == "success"
        ]

    assert asyncio.run(scenario()) == [customer(0), customer(20), customer(40)]


def test_few_awaited_customers_use_filtered_listings(famulor_sandbox: Any) -> None:
    add_account(famulor_sandbox, 1000)

    async def scenario() -> int:
        waiters = [
            asyncio.ensure_future(
                first_event(make_trigger(customer(n), baseline=1, poll_interval=0.2, timeout=20))
            )
            for n in (5, 995)
        ]
        poller = conversation_poller("famulor_default")
        await wait_for(lambda: poller.rounds >= 4)
        famulor_sandbox.receive(SENDER, customer(995), "Yes")
        await wait_for(lambda: waiters[1].done())
        waiters[0].cancel()
        return poller.rounds

    rounds = asyncio.run(scenario())
    # The first round walks 2 pages and stops (as dear as 2 filtered listings); then 2 per round.
    walk = [r for r in listings(famulor_sandbox) if "customer_phone" not in r.query]
    filtered = [r for r in listings(famulor_sandbox) if "customer_phone" in r.query]
    assert len(walk) == 2
    assert len(filtered) <= 2 * rounds
    assert {r.query["customer_phone"] for r in filtered} <= {customer(5), customer(995)}
    assert {r.query["whatsapp_sender_phone"] for r in filtered} == {SENDER}


def test_the_interval_is_stretched_to_the_budget_and_logged(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_sandbox_conn(
        monkeypatch, famulor_sandbox, extra={"timeout": 5, "max_retries": 0, "poll_requests_per_minute": 600}
    )
    add_account(famulor_sandbox, 500)  # 5 pages: 0.5 s of a 600/min budget, the interval is 0.1 s

    async def scenario() -> tuple[float, float]:
        waiters = [
            asyncio.ensure_future(first_event(make_trigger(customer(n), baseline=1, timeout=20)))
            for n in range(0, 500, 50)
        ]
        poller = conversation_poller("famulor_default")
        await wait_for(lambda: poller.rounds >= 1)
        first = time.monotonic()
        await wait_for(lambda: poller.rounds >= 3)
        for waiter in waiters:
            waiter.cancel()
        return first, time.monotonic()

    with caplog.at_level(logging.INFO, logger="famulor_provider.conversations.polling"):
        first, third = asyncio.run(scenario())
    assert third - first >= 2 * 0.5 - 0.05  # two rounds at the stretched 0.5 s, not 0.1 s
    assert "costs 5 requests: stretching the interval from 0.1 s to 0.5 s" in caplog.text
