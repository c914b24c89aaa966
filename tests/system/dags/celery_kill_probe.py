"""
A probe for killing a worker mid-task (``tests/system/test_system_celery.py``).

One task, ``probe``, with two retries one second apart: every try appends a JSON line with its
``try_number``, worker (``FAMULOR_SYSTEM_WORKER``, set per Celery worker by the harness),
host and pid to ``celery_kill_probe.jsonl`` in ``FAMULOR_SYSTEM_SHARED_DIR``; try 1 then sleeps
(``FAMULOR_PROBE_SLEEP`` s, default 60) so the test can kill its worker, later tries return at once.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import DAG, BaseOperator

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

RECORD_FILE = "celery_kill_probe.jsonl"


class KillProbeOperator(BaseOperator):
    """Record this try on shared storage; sleep on the first try only."""

    def execute(self, context: Context) -> dict[str, object]:
        record: dict[str, object] = {
            "try_number": context["ti"].try_number,
            "worker": os.environ.get("FAMULOR_SYSTEM_WORKER"),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
        }
        path = Path(os.environ["FAMULOR_SYSTEM_SHARED_DIR"]) / RECORD_FILE
        with path.open("a") as records:
            records.write(json.dumps(record) + "\n")
        if record["try_number"] == 1:
            time.sleep(float(os.environ.get("FAMULOR_PROBE_SLEEP", "60")))
        return record


with DAG(
    dag_id="celery_kill_probe",
    start_date=datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    tags=["system-test"],
):
    KillProbeOperator(task_id="probe", retries=2, retry_delay=timedelta(seconds=1))
