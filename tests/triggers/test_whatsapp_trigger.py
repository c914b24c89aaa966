"""WhatsAppSenderTrigger: serialization, run() over real HTTP against the sandbox, coalescing."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import logging
import time
from typing import Any

import pytest
from famulor_fixtures import SENDERS, sender_requests, set_sandbox_conn

from famulor_provider.exceptions import (
    FamulorAuthError,
    FamulorError,
    FamulorSenderNotFoundError,
    FamulorValidationError,
    error_event,
    error_from_event,
)
from famulor_provider.models import SenderCriteria
from famulor_provider.testing import SANDBOX_API_KEY
from famulor_provider.triggers import whatsapp as trigger_module
from famulor_provider.triggers.whatsapp import WhatsAppSenderTrigger, shared_senders

# What the sensor sends by default: online, any rating but RED.
DEFAULT_CRITERIA = SenderCriteria.parse(online_only=True, excluded_quality_ratings=["RED"])


def criteria(**kwargs: Any) -> SenderCriteria:
    return SenderCriteria.parse(online_only=True, excluded_quality_ratings=["RED"], **kwargs)


def make_trigger(
    *, poll_interval: float = 0.1, timeout: float | None = 10.0, **kwargs: Any
) -> WhatsAppSenderTrigger:
    kwargs.setdefault("criteria", DEFAULT_CRITERIA)
    end_time = None if timeout is None else time.time() + timeout
    return WhatsAppSenderTrigger(poll_interval=poll_interval, end_time=end_time, **kwargs)


async def all_events(trigger: WhatsAppSenderTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


def run_trigger(trigger: WhatsAppSenderTrigger) -> list[dict[str, Any]]:
    """Run the trigger to its end on a new event loop; every event it yielded."""
    return asyncio.run(all_events(trigger))


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- serialization ----------------------------------------------------------------------------


def test_serialize_gives_json_primitives_without_the_api_key(famulor_sandbox: Any) -> None:
    trigger = WhatsAppSenderTrigger(
        famulor_conn_id="famulor_default",
        criteria=SenderCriteria.parse(
            online_only=True, quality_ratings=["GREEN", None], min_messaging_limit=1000, sender_ids=[12]
        ),
        min_count=1,
        poll_interval=300,
        end_time=1_900_000_000.5,
    )

    classpath, kwargs = trigger.serialize()

    assert classpath == "famulor_provider.triggers.whatsapp.WhatsAppSenderTrigger"
    assert kwargs == {
        "famulor_conn_id": "famulor_default",
        "criteria": {
            "online_only": True,
            "quality_ratings": ["GREEN", None],
            "excluded_quality_ratings": [],
            "min_messaging_limit": 1000,
            "sender_ids": [12],
            "phone_numbers": None,
        },
        "min_count": 1,
        "poll_interval": 300.0,
        "end_time": 1_900_000_000.5,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs  # only JSON primitives
    assert SANDBOX_API_KEY not in json.dumps(kwargs)


def test_a_trigger_rebuilt_from_its_kwargs_is_the_same_and_behaves_the_same(famulor_sandbox: Any) -> None:
    trigger = make_trigger(criteria=criteria(phone_numbers=["+44 20 7123 4567"]), min_count=1)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")

    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))

    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.criteria == trigger.criteria
    [event] = run_trigger(rebuilt)
    assert event["status"] == "success"
    assert [s["id"] for s in event["senders"]] == [15]


def test_end_time_may_be_an_iso_string() -> None:
    trigger = WhatsAppSenderTrigger(criteria=DEFAULT_CRITERIA, end_time="2030-01-01T00:00:00+00:00")

    assert trigger.serialize()[1]["end_time"] == 1_893_456_000.0


def test_a_zero_poll_interval_is_floored_so_it_cannot_spin() -> None:
    assert WhatsAppSenderTrigger(poll_interval=0).poll_interval == trigger_module.MIN_POLL_INTERVAL


# -- run() against the sandbox ---------------------------------------------------------------


def test_run_yields_one_success_event_with_the_matching_senders(famulor_sandbox: Any) -> None:
    events = run_trigger(make_trigger(min_count=3))

    assert len(events) == 1
    assert events[0]["status"] == "success"
    assert [(s["id"], s["quality_rating"]) for s in events[0]["senders"]] == [
        (12, "GREEN"),
        (15, "GREEN"),
        (21, "YELLOW"),
    ]
    assert events[0]["senders"][0] == SENDERS[0]
    [request] = sender_requests(famulor_sandbox)
    assert request.query == {"status": "all"}


def test_run_waits_until_a_sender_comes_online(famulor_sandbox: Any) -> None:
    famulor_sandbox.schedule_sender(33, 0.4, status="online")
    started = time.monotonic()

    events = run_trigger(make_trigger(criteria=criteria(sender_ids=[33]), poll_interval=0.1))

    assert time.monotonic() - started >= 0.4
    assert [e["status"] for e in events] == ["success"]
    assert [(s["id"], s["status"], s["quality_rating"]) for s in events[0]["senders"]] == [
        (33, "online", None)
    ]
    assert 2 <= len(sender_requests(famulor_sandbox)) <= 8  # about one per poll interval


def test_run_times_out_at_the_end_time(famulor_sandbox: Any) -> None:
    # A process's first poll imports httpx and reads the connection, which can take more than
    # the 0.5 s below on a loaded machine: warm up first, so the test counts polls, not start-up.
    run_trigger(make_trigger())
    warm_up = len(sender_requests(famulor_sandbox))
    started = time.monotonic()

    events = run_trigger(make_trigger(criteria=criteria(sender_ids=[31]), poll_interval=0.1, timeout=1.5))

    elapsed = time.monotonic() - started
    assert 1.45 <= elapsed < 4
    assert len(events) == 1
    assert events[0]["status"] == "timeout"
    assert events[0]["senders"] == []
    assert "Sensor has timed out" in events[0]["message"]
    polls = len(sender_requests(famulor_sandbox)) - warm_up
    assert 2 <= polls <= 16  # polled at the interval until the end, not in a hot loop


def test_run_with_an_end_time_already_past_times_out_without_a_request(famulor_sandbox: Any) -> None:
    events = run_trigger(make_trigger(timeout=-1))

    assert [e["status"] for e in events] == ["timeout"]
    assert sender_requests(famulor_sandbox) == []


def test_the_end_time_cuts_a_slow_request_short(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("delay", path="/user/whatsapp/senders", delay=3)
    started = time.monotonic()

    events = run_trigger(make_trigger(timeout=0.3))

    assert time.monotonic() - started < 1.5
    assert [e["status"] for e in events] == ["timeout"]


def test_an_auth_error_is_an_error_event_at_once(famulor_sandbox: Any, wrong_key: None) -> None:
    events = run_trigger(make_trigger())

    assert len(events) == 1
    event = events[0]
    assert event["status"] == "error"
    assert event["error_type"] == "FamulorAuthError"
    assert event["status_code"] == 401
    assert "HTTP 401" in event["message"]
    assert "not-the-key" not in event["message"]
    assert len(sender_requests(famulor_sandbox)) == 1  # auth errors are not retried


def test_a_sender_not_in_the_account_is_an_error_event_at_once(famulor_sandbox: Any) -> None:
    events = run_trigger(make_trigger(criteria=criteria(sender_ids=[999])))

    [event] = events
    assert event["status"] == "error"
    assert event["error_type"] == "FamulorSenderNotFoundError"
    assert event["field"] == "sender_id"
    assert "sender_id 999 not found" in event["message"]
    assert "12 (+14155551234)" in event["message"]  # the account's senders, to spot the typo


def test_a_sender_removed_while_waiting_is_an_error_event(famulor_sandbox: Any) -> None:
    async def scenario() -> list[dict[str, Any]]:
        task = asyncio.ensure_future(all_events(make_trigger(criteria=criteria(sender_ids=[31]))))
        await wait_for(lambda: len(sender_requests(famulor_sandbox)) >= 1)
        famulor_sandbox.remove_sender(31)
        return await task

    [event] = asyncio.run(scenario())
    assert event["error_type"] == "FamulorSenderNotFoundError"


def test_an_html_answer_is_an_error_event(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("html", path="/user/whatsapp/senders")

    [event] = run_trigger(make_trigger())

    assert event["status"] == "error"
    assert event["error_type"] == "FamulorResponseError"
    assert "HTML" in event["message"]


@pytest.mark.parametrize(
    ("fault", "fault_kwargs"),
    [
        ("status", {"status": 503}),
        ("status", {"status": 429, "retry_after": 0.4}),
        ("drop", {}),
    ],
)
def test_transient_faults_keep_polling(
    famulor_sandbox: Any,
    async_sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    fault_kwargs: dict[str, Any],
) -> None:
    # Each poll is one attempt (the poll loop is the retry): 2 faults fail the first 2 polls.
    famulor_sandbox.inject(fault, path="/user/whatsapp/senders", times=2, **fault_kwargs)

    with caplog.at_level(logging.WARNING):
        events = run_trigger(make_trigger(poll_interval=0.05))

    assert [e["status"] for e in events] == ["success"]
    assert [s["id"] for s in events[0]["senders"]] == [12, 15, 21]
    polls = sender_requests(famulor_sandbox)
    assert len(polls) == 3
    assert async_sleeps == []  # no retries inside a poll
    gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(polls)]
    if "retry_after" in fault_kwargs:
        assert min(gaps) >= 0.4  # the API's Retry-After beats the shorter poll interval
    else:
        assert max(gaps) < 0.4
    # Airflow 3 logs triggers through structlog (stdout), Airflow 2 through logging.
    assert "Famulor is unavailable for now" in caplog.text + capsys.readouterr().out


def test_a_read_timeout_keeps_polling(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, async_sleeps: list[float]
) -> None:
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra={"timeout": 0.2, "max_retries": 0})
    famulor_sandbox.inject("delay", path="/user/whatsapp/senders", delay=0.5)

    events = run_trigger(make_trigger(poll_interval=0.05))

    assert [e["status"] for e in events] == ["success"]
    assert len(sender_requests(famulor_sandbox)) == 2


def test_a_lasting_outage_polls_at_the_interval_not_in_a_hot_loop(
    famulor_sandbox: Any, async_sleeps: list[float]
) -> None:
    famulor_sandbox.inject("status", path="/user/whatsapp/senders", times=1000, status=503)

    events = run_trigger(make_trigger(poll_interval=0.1, timeout=0.5))

    assert [e["status"] for e in events] == ["timeout"]
    # About 5 polls of one attempt each; a hot loop would send hundreds.
    assert 2 <= len(sender_requests(famulor_sandbox)) <= 7


# -- error events ------------------------------------------------------------------------------


def test_an_error_event_rebuilds_the_typed_error() -> None:
    auth = FamulorAuthError("GET /x failed with HTTP 401: Unauthenticated", status_code=401)
    missing = FamulorSenderNotFoundError("sender_id", "sender_id 9 not found")

    rebuilt_auth = error_from_event(json.loads(json.dumps(error_event(auth))))
    rebuilt_missing = error_from_event(json.loads(json.dumps(error_event(missing))))

    assert type(rebuilt_auth) is FamulorAuthError
    assert str(rebuilt_auth) == str(auth)
    assert (rebuilt_auth.status_code, rebuilt_auth.error_code) == (401, None)
    assert type(rebuilt_missing) is FamulorSenderNotFoundError
    assert isinstance(rebuilt_missing, FamulorValidationError)
    assert (str(rebuilt_missing), rebuilt_missing.field) == (
        "Invalid sender_id: sender_id 9 not found",
        "sender_id",
    )


def test_an_error_event_of_a_foreign_error_becomes_a_famulor_error() -> None:
    error = error_from_event(error_event(KeyError("surprise")))

    assert type(error) is FamulorError
    assert str(error) == "KeyError: 'surprise'"


# -- coalescing --------------------------------------------------------------------------------


def test_triggers_waiting_together_share_one_request(famulor_sandbox: Any) -> None:
    async def scenario() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(all_events(make_trigger()) for _ in range(200)))

    results = asyncio.run(scenario())

    assert len(sender_requests(famulor_sandbox)) == 1
    assert {len(events) for events in results} == {1}
    assert {events[0]["status"] for events in results} == {"success"}
    assert {tuple(s["id"] for s in events[0]["senders"]) for events in results} == {(12, 15, 21)}


def test_waiting_triggers_send_about_one_request_per_interval(famulor_sandbox: Any) -> None:
    famulor_sandbox.schedule_sender(31, 0.65, status="online")

    async def scenario() -> list[list[dict[str, Any]]]:
        waiters = []
        for i in range(100):  # started over 0.2 s, as sensors defer at different moments
            waiters.append(
                asyncio.ensure_future(
                    all_events(make_trigger(criteria=criteria(sender_ids=[31]), poll_interval=0.2))
                )
            )
            if i % 10 == 0:
                await asyncio.sleep(0.02)
        return await asyncio.gather(*waiters)

    results = asyncio.run(scenario())

    assert {events[0]["status"] for events in results} == {"success"}
    # 0.65 s of waiting at a 0.2 s interval: about 4 polls for all 100 triggers together.
    assert 2 <= len(sender_requests(famulor_sandbox)) <= 7


def test_the_shortest_poll_interval_sets_the_pace(famulor_sandbox: Any) -> None:
    async def scenario() -> None:
        await shared_senders("famulor_default", max_age=10)
        await shared_senders("famulor_default", max_age=10)  # a fresh result: reused
        assert len(sender_requests(famulor_sandbox)) == 1
        await asyncio.sleep(0.06)
        await shared_senders("famulor_default", max_age=10)  # still fresh for a slow poller
        await shared_senders("famulor_default", max_age=0.05)  # too old for a fast one: refreshed
        assert len(sender_requests(famulor_sandbox)) == 2
        await shared_senders("famulor_default", max_age=10)  # and everybody gets the fresher result
        assert len(sender_requests(famulor_sandbox)) == 2

    asyncio.run(scenario())


def test_an_error_is_never_reused_by_a_later_call(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("status", path="/user/whatsapp/senders", status=503)

    async def scenario() -> list[int]:
        with pytest.raises(FamulorError):
            await shared_senders("famulor_default", max_age=3600)
        senders = await shared_senders("famulor_default", max_age=3600)  # a new request
        await shared_senders("famulor_default", max_age=3600)  # a result: reused
        return [s.id for s in senders]

    assert asyncio.run(scenario()) == [12, 15, 21, 27, 31, 33]
    assert len(sender_requests(famulor_sandbox)) == 2


def test_connections_and_event_loops_do_not_share(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_OTHER", famulor_sandbox.connection_json())

    async def scenario() -> None:
        await asyncio.gather(
            shared_senders("famulor_default", max_age=10), shared_senders("famulor_other", max_age=10)
        )

    asyncio.run(scenario())
    assert len(sender_requests(famulor_sandbox)) == 2
    asyncio.run(scenario())  # a new event loop (a new triggerer) asks again
    assert len(sender_requests(famulor_sandbox)) == 4


def test_a_failure_of_the_shared_request_reaches_every_waiting_trigger(
    famulor_sandbox: Any, wrong_key: None
) -> None:
    async def scenario() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(all_events(make_trigger()) for _ in range(20)))

    results = asyncio.run(scenario())

    assert len(sender_requests(famulor_sandbox)) == 1
    assert [[(e["status"], e["error_type"]) for e in events] for events in results] == [
        [("error", "FamulorAuthError")]
    ] * 20


def test_cancelling_one_trigger_does_not_cancel_the_shared_request(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("delay", path="/user/whatsapp/senders", delay=0.3)

    async def scenario() -> tuple[asyncio.Future[Any], list[list[dict[str, Any]]]]:
        waiters = [asyncio.ensure_future(all_events(make_trigger())) for _ in range(10)]
        await wait_for(lambda: len(sender_requests(famulor_sandbox)) == 1)  # in flight
        waiters[0].cancel()
        return waiters[0], await asyncio.gather(*waiters[1:])

    cancelled, results = asyncio.run(scenario())

    assert cancelled.cancelled()
    assert [[e["status"] for e in events] for events in results] == [["success"]] * 9
    assert len(sender_requests(famulor_sandbox)) == 1


def test_cancelling_every_trigger_lets_the_shared_request_finish_for_the_next(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("delay", path="/user/whatsapp/senders", delay=0.2)

    async def scenario() -> list[dict[str, Any]]:
        waiters = [asyncio.ensure_future(all_events(make_trigger(poll_interval=10))) for _ in range(5)]
        await wait_for(lambda: len(sender_requests(famulor_sandbox)) == 1)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await asyncio.sleep(0.3)  # the request finishes although nobody waits for it
        return await all_events(make_trigger(poll_interval=10))

    events = asyncio.run(scenario())

    assert [e["status"] for e in events] == ["success"]
    assert len(sender_requests(famulor_sandbox)) == 1  # the late trigger reused the result
