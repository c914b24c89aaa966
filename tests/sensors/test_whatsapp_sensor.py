"""WhatsAppSenderSensor against the sandbox over real HTTP: poke, reschedule and deferrable mode."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowSensorTimeout,
    AirflowSkipException,
    PokeReturnValue,
    TaskDeferred,
)
from famulor_fixtures import SENDERS, sender_requests, set_sandbox_conn

from famulor_provider.exceptions import (
    FamulorAuthError,
    FamulorError,
    FamulorResponseError,
    FamulorSenderNotFoundError,
    FamulorValidationError,
)
from famulor_provider.sensors.whatsapp import WhatsAppSenderSensor
from famulor_provider.testing import SANDBOX_API_KEY
from famulor_provider.triggers.whatsapp import WhatsAppSenderTrigger

TEMPLATED_DAG = Path(__file__).parent / "dags" / "famulor_sensor_templated.py"


def sensor(**kwargs: Any) -> WhatsAppSenderSensor:
    kwargs.setdefault("task_id", "wait_for_sender")
    return WhatsAppSenderSensor(**kwargs)


def ids(senders: list[dict[str, Any]] | None) -> list[int]:
    return [s["id"] for s in senders or []]


def first_event(trigger: WhatsAppSenderTrigger) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(run())


# -- the contract -----------------------------------------------------------------------------


def test_defaults() -> None:
    task = sensor()

    assert task.poke_interval == 300  # Famulor syncs with Meta every 5 minutes
    assert (task.min_count, task.deferrable) == (1, None)  # deferrable: read when the task runs


def test_every_templated_argument_renders_in_a_real_run(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_TEMPLATED", famulor_sandbox.connection_json())
    set_sandbox_conn(monkeypatch, famulor_sandbox, host="http://127.0.0.1:9/api")

    def online_after_the_first_poll() -> None:
        while not sender_requests(famulor_sandbox):
            time.sleep(0.01)
        famulor_sandbox.schedule_sender(31, 0.5, status="online")

    # GREEN or YELLOW with a limit of 2000 or more: 12, 15, 21 at first; min_count 4 needs 31 too.
    helper = threading.Thread(target=online_after_the_first_poll, daemon=True)
    helper.start()
    result = run_dag(TEMPLATED_DAG, "famulor_sensor_templated", conf={"conn_id": "famulor_templated"})
    helper.join(timeout=5)

    assert result.states == {"wait_for_many": "success", "wait_for_one": "success"}
    assert ids(result.xcom("wait_for_many")) == [12, 15, 21, 31]
    assert result.xcom("wait_for_one") == [SENDERS[1]]  # id 15 and "+44 20 7123 4567"
    polls = sender_requests(famulor_sandbox)
    # wait_for_many polled until second 0.5 (several polls at 0.1 s), wait_for_one once.
    assert polls[-1].monotonic - polls[0].monotonic >= 0.5
    assert len(polls) >= 4
    assert all(r.query == {"status": "all"} for r in polls)


def test_the_constructor_is_keyword_only() -> None:
    with pytest.raises((TypeError, AirflowException)):  # Airflow 2 checks first
        WhatsAppSenderSensor("famulor_default", task_id="t")  # type: ignore[misc]


# -- poke matrix (seed: 12 online GREEN 10000, 15 online GREEN unlimited, 21 online YELLOW 2000,
#    27 online RED 250, 31 offline GREEN 100000, 33 connecting unrated 250) -----------------------


@pytest.mark.parametrize(
    ("kwargs", "done", "matching"),
    [
        pytest.param({}, True, [12, 15, 21], id="default: online, any rating but RED"),
        pytest.param({"min_count": 3}, True, [12, 15, 21], id="min_count reached"),
        pytest.param({"min_count": 4}, False, [12, 15, 21], id="min_count not reached"),
        pytest.param({"min_count": "3"}, True, [12, 15, 21], id="templated min_count"),
        pytest.param({"quality_ratings": ["GREEN"]}, True, [12, 15], id="GREEN only"),
        pytest.param({"quality_ratings": ["green"], "min_count": 3}, False, [12, 15], id="GREEN x3"),
        pytest.param({"quality_ratings": "GREEN, YELLOW"}, True, [12, 15, 21], id="templated ratings"),
        pytest.param({"quality_ratings": ["RED"]}, True, [27], id="RED when asked for"),
        pytest.param({"quality_ratings": [None]}, False, [], id="unrated only: 33 not online"),
        pytest.param({"min_messaging_limit": 5000}, True, [12, 15], id="limit 5000"),
        pytest.param({"min_messaging_limit": "20000"}, True, [15], id="limit: unlimited passes"),
        pytest.param({"min_messaging_limit": 20000, "min_count": 2}, False, [15], id="limit x2"),
        pytest.param({"sender_id": 12}, True, [12], id="sender_id online"),
        pytest.param({"sender_id": "21"}, True, [21], id="templated sender_id"),
        pytest.param({"sender_id": 27}, False, [], id="sender_id RED"),
        pytest.param({"sender_id": 27, "quality_ratings": ["RED"]}, True, [27], id="sender_id RED allowed"),
        pytest.param({"sender_id": 31}, False, [], id="sender_id offline"),
        pytest.param({"sender_id": 33}, False, [], id="sender_id connecting"),
        pytest.param({"sender_id": 21, "min_messaging_limit": 2001}, False, [], id="sender_id limit"),
        pytest.param({"phone_number": "+1 (415) 555-1234"}, True, [12], id="phone online"),
        pytest.param({"phone_number": "+61291234567"}, False, [], id="phone offline"),
        pytest.param({"sender_id": 15, "phone_number": "+442071234567"}, True, [15], id="id and phone"),
        pytest.param({"sender_id": "", "phone_number": ""}, True, [12, 15, 21], id="blank = not given"),
    ],
)
def test_poke_matrix(famulor_sandbox: Any, kwargs: dict[str, Any], done: bool, matching: list[int]) -> None:
    result = sensor(**kwargs).poke({})

    assert isinstance(result, PokeReturnValue)
    assert result.is_done is done
    assert ids(result.xcom_value) == matching
    [request] = sender_requests(famulor_sandbox)
    assert request.query == {"status": "all"}


def test_poke_returns_the_senders_as_dicts_with_the_api_fields(famulor_sandbox: Any) -> None:
    result = sensor(sender_id=15).poke({})

    assert result.xcom_value == [SENDERS[1]]
    assert SENDERS[1]["messaging_limit_formatted"] == "Unlimited"


@pytest.mark.parametrize(
    ("change", "kwargs", "done"),
    [
        pytest.param({"status": "online"}, {"sender_id": 33}, True, id="unrated online: default passes"),
        pytest.param(
            {"status": "online"}, {"sender_id": 33, "quality_ratings": ["GREEN"]}, False, id="GREEN"
        ),
        pytest.param({"status": "ONLINE"}, {"sender_id": 33}, True, id="status case"),
        pytest.param({"status": "online", "quality_rating": "NA"}, {"sender_id": 33}, True, id="NA"),
        pytest.param({"status": "online", "quality_rating": "red"}, {"sender_id": 33}, False, id="red"),
        pytest.param({"status": "suspended"}, {"sender_id": 33}, False, id="unknown status"),
    ],
)
def test_poke_follows_the_sender_as_it_changes(
    famulor_sandbox: Any, change: dict[str, Any], kwargs: dict[str, Any], done: bool
) -> None:
    famulor_sandbox.set_sender(33, **change)

    assert sensor(**kwargs).poke({}).is_done is done


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sender_id": 999}, "sender_id 999 not found"),
        ({"phone_number": "+4930000000"}, "phone_number +4930000000 not found"),
        ({"sender_id": 12, "phone_number": "+442071234567"}, "a sender with sender_id 12 and phone_number"),
    ],
)
def test_a_sender_not_in_the_account_fails_at_once(
    famulor_sandbox: Any, kwargs: dict[str, Any], message: str
) -> None:
    task = sensor(poke_interval=60, timeout=3600, **kwargs)
    started = time.monotonic()

    with pytest.raises(FamulorSenderNotFoundError, match=re.escape(message)) as err:
        task.execute({})

    assert time.monotonic() - started < 5
    assert "its senders: 12 (+14155551234), 15 (+442071234567)" in str(err.value)
    assert len(sender_requests(famulor_sandbox)) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_count": 0}, "min_count"),
        ({"min_count": "two"}, "min_count"),
        ({"min_count": 2, "sender_id": 12}, "min_count"),
        ({"sender_id": "abc"}, "sender_ids"),
        ({"min_messaging_limit": -1}, "min_messaging_limit"),
    ],
)
def test_invalid_arguments_fail_before_any_request(
    famulor_sandbox: Any, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(FamulorValidationError) as err:
        sensor(**kwargs).poke({})

    assert err.value.field == field
    assert sender_requests(famulor_sandbox) == []


# -- auth and transient faults ------------------------------------------------------------------


@pytest.mark.parametrize("deferrable", [False, True])
def test_an_auth_error_fails_at_once(famulor_sandbox: Any, wrong_key: None, deferrable: bool) -> None:
    # Reschedule mode needs a task instance: tests/sensors/test_sensor_dags.py covers it.
    task = sensor(deferrable=deferrable, poke_interval=60, timeout=3600)

    with pytest.raises(FamulorAuthError, match="HTTP 401") as err:
        task.execute({})

    assert err.value.status_code == 401
    assert "not-the-key" not in str(err.value)
    assert len(sender_requests(famulor_sandbox)) == 1


def test_an_auth_error_in_the_triggerer_fails_the_task(famulor_sandbox: Any, wrong_key: None) -> None:
    trigger = WhatsAppSenderTrigger(criteria=sensor().sender_criteria(), poll_interval=0.1)

    with pytest.raises(FamulorAuthError, match="HTTP 401") as err:
        sensor().execute_complete({}, first_event(trigger))

    assert err.value.status_code == 401


@pytest.mark.parametrize(
    ("fault", "fault_kwargs"),
    [
        ("status", {"status": 503}),
        ("status", {"status": 500}),
        ("status", {"status": 429, "retry_after": 3}),
        ("drop", {}),
    ],
)
def test_transient_faults_keep_the_sensor_waiting(
    famulor_sandbox: Any,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    fault_kwargs: dict[str, Any],
) -> None:
    # The sandbox connection allows 2 retries: 3 faults fail one whole poke.
    famulor_sandbox.inject(fault, path="/user/whatsapp/senders", times=3, **fault_kwargs)
    task = sensor()

    with caplog.at_level(logging.WARNING):
        first = task.poke({})
    second = task.poke({})

    assert (first.is_done, first.xcom_value) == (False, None)
    assert "Famulor is unavailable for now" in caplog.text + capsys.readouterr().out
    assert len(sleeps) == 2
    if "retry_after" in fault_kwargs:
        assert sleeps == [3.0, 3.0]
    assert (second.is_done, ids(second.xcom_value)) == (True, [12, 15, 21])
    assert len(sender_requests(famulor_sandbox)) == 4


def test_a_read_timeout_keeps_the_sensor_waiting(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra={"timeout": 0.2, "max_retries": 0})
    famulor_sandbox.inject("delay", path="/user/whatsapp/senders", delay=0.5)

    assert sensor().poke({}).is_done is False


def test_an_html_answer_is_not_transient(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("html", path="/user/whatsapp/senders")

    with pytest.raises(FamulorResponseError, match="HTML"):
        sensor().poke({})


def test_poke_mode_waits_through_faults_until_the_sender_is_online(
    famulor_sandbox: Any, sleeps: list[float]
) -> None:
    famulor_sandbox.inject("status", path="/user/whatsapp/senders", times=3, status=502)
    famulor_sandbox.schedule_sender(31, 0.3, status="online")

    result = sensor(sender_id=31, poke_interval=0.05, timeout=10).execute({})

    assert ids(result) == [31]
    assert len(sender_requests(famulor_sandbox)) >= 5  # 3 failed attempts, then polls


@pytest.mark.parametrize("soft_fail", [False, True])
def test_poke_mode_times_out(famulor_sandbox: Any, soft_fail: bool) -> None:
    task = sensor(sender_id=31, poke_interval=0.05, timeout=0.2, soft_fail=soft_fail)

    with pytest.raises(AirflowSkipException if soft_fail else AirflowSensorTimeout):
        task.execute({})

    assert len(sender_requests(famulor_sandbox)) >= 3


# -- deferrable mode ----------------------------------------------------------------------------


def test_deferrable_defers_with_the_trigger_its_kwargs_and_the_sensor_timeout(famulor_sandbox: Any) -> None:
    task = sensor(
        deferrable=True,
        sender_id=31,
        quality_ratings=["GREEN", "YELLOW"],
        min_messaging_limit=1000,
        poke_interval=120,
        timeout=timedelta(hours=2),
    )
    before = time.time()

    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})

    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(hours=2)
    trigger = deferred.value.trigger
    assert isinstance(trigger, WhatsAppSenderTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "famulor_provider.triggers.whatsapp.WhatsAppSenderTrigger"
    end_time = kwargs.pop("end_time")
    assert before + 7200 <= end_time <= time.time() + 7200
    assert kwargs == {
        "famulor_conn_id": "famulor_default",
        "criteria": {
            "online_only": True,
            "quality_ratings": ["GREEN", "YELLOW"],
            "excluded_quality_ratings": [],
            "min_messaging_limit": 1000,
            "sender_ids": [31],
            "phone_numbers": None,
        },
        "min_count": 1,
        "poll_interval": 120.0,
    }
    assert SANDBOX_API_KEY not in json.dumps(kwargs)
    assert len(sender_requests(famulor_sandbox)) == 1  # it poked once before deferring


def test_the_default_criteria_exclude_red_in_the_trigger_too(famulor_sandbox: Any) -> None:
    with pytest.raises(TaskDeferred) as deferred:
        sensor(deferrable=True, min_count=5).execute({})

    criteria = deferred.value.trigger.serialize()[1]["criteria"]
    assert (criteria["quality_ratings"], criteria["excluded_quality_ratings"]) == (None, ["RED"])
    assert deferred.value.trigger.serialize()[1]["min_count"] == 5


def test_deferrable_does_not_defer_when_the_first_poke_succeeds(famulor_sandbox: Any) -> None:
    result = sensor(deferrable=True, sender_id=12).execute({})

    assert ids(result) == [12]
    assert len(sender_requests(famulor_sandbox)) == 1


def test_a_transient_fault_on_the_first_poke_defers(famulor_sandbox: Any, sleeps: list[float]) -> None:
    famulor_sandbox.inject("status", path="/user/whatsapp/senders", times=3, status=503)

    with pytest.raises(TaskDeferred):
        sensor(deferrable=True, sender_id=12).execute({})


def test_deferrable_none_reads_default_deferrable_when_the_task_runs(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    task = sensor(sender_id=31, poke_interval=0.05, timeout=0.1)
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")  # changed after the DAG parsed

    with pytest.raises(TaskDeferred):
        task.execute({})

    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    with pytest.raises(AirflowSensorTimeout):  # poke mode
        task.execute({})


def test_deferral_round_trip_through_the_serialized_trigger(famulor_sandbox: Any) -> None:
    task = sensor(deferrable=True, sender_id=33, poke_interval=0.1, timeout=10)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    famulor_sandbox.set_sender(33, status="online")

    classpath, kwargs = deferred.value.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    result = getattr(task, deferred.value.method_name)({}, event=first_event(trigger))

    assert ids(result) == [33]
    assert result[0]["status"] == "online"


@pytest.mark.parametrize("soft_fail", [False, True])
def test_the_trigger_times_out_at_the_sensor_timeout(famulor_sandbox: Any, soft_fail: bool) -> None:
    task = sensor(deferrable=True, sender_id=31, poke_interval=0.05, timeout=0.4, soft_fail=soft_fail)
    started = time.monotonic()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})

    event = first_event(deferred.value.trigger)

    assert 0.3 <= time.monotonic() - started < 2  # the end time counts from the first poke
    assert event["status"] == "timeout"
    with pytest.raises(AirflowSkipException if soft_fail else AirflowSensorTimeout, match="timed out"):
        task.execute_complete({}, event)


def test_execute_complete_returns_the_senders_of_a_success_event() -> None:
    senders = [{"id": 12, "phone_number": "+14155551234"}]

    assert sensor().execute_complete({}, {"status": "success", "senders": senders}) == senders


@pytest.mark.parametrize(
    ("event", "error", "message"),
    [
        (
            {
                "status": "error",
                "error_type": "FamulorSenderNotFoundError",
                "message": "Invalid sender_id: x",
            },
            FamulorSenderNotFoundError,
            "Invalid sender_id: x",
        ),
        ({"status": "error", "error_type": "OSError", "message": "disk"}, FamulorError, "OSError: disk"),
        ({"status": "surprise"}, FamulorError, "unexpected event"),
        (None, FamulorError, "unexpected event"),
    ],
)
def test_execute_complete_raises_the_error_of_an_error_event(
    event: dict[str, Any] | None, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        sensor().execute_complete({}, event)
