"""
System test: the ``famulor_whatsapp_confirmation`` example DAG on a real Airflow deployment.

The template goes out, the reply sensor defers (task instance ``deferred``, a
``WhatsAppReplyTrigger`` row, the triggerer polling the sandbox's conversations without a
worker), the sandbox's customer answers NO, and the sensor resumes in the same try: ``declined``
runs, ``confirmed`` is skipped. Every process is stopped by its id afterwards.

Slow (about a minute): runs only with ``FAMULOR_SYSTEM_TEST=1`` (``make test-system``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deployment import SYSTEM_TEST, AirflowDeployment, deployed

pytestmark = SYSTEM_TEST

EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_whatsapp_confirmation.py"
DAG_ID = "famulor_whatsapp_confirmation"
SENSOR = "answer"
SENDER = "+14155551234"  # sender 12, the example's default
PHONE = "+4915112345678"
LIST_PATH = "/api/user/conversations"


@pytest.fixture
def deployment(tmp_path: Path, famulor_sandbox: Any) -> Iterator[AirflowDeployment]:
    env = {**famulor_sandbox.env(), "FAMULOR_EXAMPLE_POKE_INTERVAL": "1"}
    with deployed(tmp_path, EXAMPLE_DAG, env) as airflow:
        yield airflow


def listings(sandbox: Any) -> int:
    return sum(1 for r in sandbox.requests if r.path == LIST_PATH)


FIRED = re.compile(r"Trigger fired event|Trigger .+ fired: ")


def triggerer_logs(deployment: AirflowDeployment) -> list[str]:
    """The triggerer's own log and every trigger log file Airflow wrote."""
    files = [deployment.home / "triggerer.log", *(deployment.home / "logs").rglob("*trigger*")]
    return [f.read_text(errors="replace") for f in files if f.is_file()]


def test_the_reply_sensor_defers_and_resumes_when_the_customer_answers(
    deployment: AirflowDeployment, famulor_sandbox: Any
) -> None:
    started = time.monotonic()
    kwargs = deployment.trigger_until_deferred(DAG_ID, SENSOR, "WhatsAppReplyTrigger")
    assert "sandbox-api-key" not in kwargs
    deployment.wait_for_polls(DAG_ID, SENSOR, lambda: listings(famulor_sandbox))

    famulor_sandbox.receive(SENDER, PHONE, "No.")
    states = deployment.wait_for_success(DAG_ID)
    assert states[SENSOR] == ("success", 1)  # resumed, not retried
    assert states["declined"][0] == "success"
    assert states["confirmed"][0] == "skipped"
    reply = deployment.return_value(DAG_ID, SENSOR)
    assert (reply["text"], reply["choice"], reply["replies"]) == ("No.", "NO", ["No."])
    # Airflow logs the event the trigger fired, payload included: no customer number, no text.
    # ("Trigger fired event" on Airflow 3, "Trigger <name> fired: <event>" on 2.11.)
    fired = [text for text in triggerer_logs(deployment) if FIRED.search(text)]
    assert fired, "the triggerer logged no event"
    for text in fired:
        assert PHONE.removeprefix("+") not in text and "No." not in text
    print(f"system test: deferred, resumed on the reply and finished in {time.monotonic() - started:.0f} s")
