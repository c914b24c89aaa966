"""
System test: the ``famulor_wait_for_sender`` example DAG on a real Airflow deployment.

Starts the real components on 127.0.0.1 in a temporary ``AIRFLOW_HOME`` with a SQLite DB
(Airflow 3: api-server, scheduler with the LocalExecutor, dag-processor, triggerer;
Airflow 2.11: scheduler with the SequentialExecutor, triggerer), triggers the DAG and checks
that the sensor really deferred (task instance ``deferred``, the triggerer polling the
sandbox) and resumed in the same try once the sender came online. Every process is stopped by
its id afterwards, also when the test fails.

Slow (about a minute): runs only with ``FAMULOR_SYSTEM_TEST=1`` (``make test-system``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deployment import SYSTEM_TEST, AirflowDeployment, deployed

pytestmark = SYSTEM_TEST

EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_wait_for_sender.py"
DAG_ID = "famulor_wait_for_sender"
SENSOR = "wait_for_sender"
SENDERS_PATH = "/api/user/whatsapp/senders"


@pytest.fixture
def deployment(tmp_path: Path, famulor_sandbox: Any) -> Iterator[AirflowDeployment]:
    env = {**famulor_sandbox.env(), "FAMULOR_EXAMPLE_POKE_INTERVAL": "1"}
    with deployed(tmp_path, EXAMPLE_DAG, env) as airflow:
        yield airflow


def test_the_example_dag_defers_in_the_triggerer_and_resumes(
    deployment: AirflowDeployment, famulor_sandbox: Any
) -> None:
    started = time.monotonic()
    # Sender 33 is "connecting": the first poke fails to match and the sensor defers.
    deployment.trigger_until_deferred(DAG_ID, SENSOR, "WhatsAppSenderTrigger")
    deployment.wait_for_polls(
        DAG_ID, SENSOR, lambda: sum(1 for r in famulor_sandbox.requests if r.path == SENDERS_PATH)
    )

    famulor_sandbox.set_sender(33, status="online")
    states = deployment.wait_for_success(DAG_ID)
    assert states == {"prepare_campaign": ("success", 1), SENSOR: ("success", 1)}  # resumed, not retried
    assert deployment.return_value(DAG_ID, "prepare_campaign") == {
        "sender_id": 33,
        "from": "+14155550199",
        "template_name": "welcome",
        "daily_capacity": 250,
    }
    print(f"system test: deferred, resumed and finished in {time.monotonic() - started:.0f} s")
