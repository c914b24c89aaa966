"""End to end with ``dag.test()``: the sensor in poke, reschedule and deferrable mode (the trigger
runs inline) and the ``famulor_wait_for_sender`` example DAG, against the sandbox over real HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from famulor_provider.triggers import whatsapp as trigger_module

MODES_DAG = Path(__file__).parent / "dags" / "famulor_sensor_modes.py"
EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_wait_for_sender.py"
SENDERS_PATH = "/api/user/whatsapp/senders"


@pytest.fixture
def trigger_polls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Connection ids the trigger polled (only a trigger polls through ``shared_senders``)."""
    polls: list[str] = []
    real = trigger_module.shared_senders

    async def spy(famulor_conn_id: str, **kwargs: Any) -> Any:
        polls.append(famulor_conn_id)
        return await real(famulor_conn_id, **kwargs)

    monkeypatch.setattr(trigger_module, "shared_senders", spy)
    return polls


def sender_requests(sandbox: Any) -> list[Any]:
    return [r for r in sandbox.requests if r.path == SENDERS_PATH]


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_the_sensor_waits_then_pushes_the_sender_in_every_mode(
    run_dag: Any, famulor_sandbox: Any, trigger_polls: list[str], mode: str
) -> None:
    famulor_sandbox.schedule_sender(33, 1.0, status="online")
    started = time.monotonic()

    result = run_dag(MODES_DAG, f"sensor_{mode}")

    assert result.states == {
        "wait": "success",
        "use_sender": "success",
        "timeout": "failed",  # AirflowSensorTimeout on every Airflow line, deferred or not
        "soft_timeout": "skipped",
    }
    [sender] = result.xcom("wait")
    assert (sender["id"], sender["status"], sender["quality_rating"]) == (33, "online", None)
    assert result.xcom("use_sender") == 33
    assert time.monotonic() - started >= 1.0
    # wait polled until second 1, the timeout sensors for a second each: several polls.
    assert len(sender_requests(famulor_sandbox)) >= 4
    if mode == "deferrable":
        assert set(trigger_polls) == {"famulor_default"}  # the trigger really ran
    else:
        assert trigger_polls == []


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_an_auth_error_fails_the_sensor_at_once_in_every_mode(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    conn = json.loads(famulor_sandbox.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_DEFAULT", json.dumps({**conn, "password": "not-the-key"}))

    result = run_dag(MODES_DAG, f"sensor_{mode}")

    assert result.ti("wait").state == "failed"
    assert result.ti("wait").try_number == 1
    assert result.ti("use_sender").state == "upstream_failed"
    assert result.ti("timeout").state == "failed"
    # One request per sensor task: no retries on 401, no waiting for the timeout.
    assert len(sender_requests(famulor_sandbox)) == 3
    assert {r.status for r in sender_requests(famulor_sandbox)} == {401}


def test_a_typo_in_the_sender_id_fails_at_once(run_dag: Any, famulor_sandbox: Any) -> None:
    started = time.monotonic()

    result = run_dag(MODES_DAG, "sensor_deferrable", conf={"sender_id": 999})

    assert result.ti("wait").state == "failed"
    assert time.monotonic() - started < 25  # not the 30 s sensor timeout


def test_the_example_dag_defers_until_the_sender_is_online_and_prepares_the_campaign(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, trigger_polls: list[str]
) -> None:
    monkeypatch.setenv("FAMULOR_EXAMPLE_POKE_INTERVAL", "0.2")
    # Late enough that the first poke finds it still connecting, even on a loaded machine.
    famulor_sandbox.schedule_sender(33, 4.0, status="online")

    result = run_dag(EXAMPLE_DAG, "famulor_wait_for_sender")

    assert result.states == {"wait_for_sender": "success", "prepare_campaign": "success"}
    assert [s["id"] for s in result.xcom("wait_for_sender")] == [33]
    assert result.xcom("prepare_campaign") == {
        "sender_id": 33,
        "from": "+14155550199",
        "template_name": "welcome",
        "daily_capacity": 250,
    }
    assert trigger_polls  # it deferred: the trigger polled
    assert len(sender_requests(famulor_sandbox)) >= 3
