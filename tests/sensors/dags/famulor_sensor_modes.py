"""One DAG per sensor mode, for end-to-end runs with ``dag.test()`` against the sandbox.

``sensor_<mode>``: ``wait`` waits for ``params.sender_id`` and ``use_sender`` reads what it
pushed; ``timeout`` and ``soft_timeout`` wait for the offline sender 31 for one second.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.sensors.whatsapp import WhatsAppSenderSensor

MODES: dict[str, dict[str, Any]] = {
    "poke": {"mode": "poke", "deferrable": False},
    "reschedule": {"mode": "reschedule", "deferrable": False},
    "deferrable": {"deferrable": True},
}

for name, mode_kwargs in MODES.items():
    with DAG(
        dag_id=f"sensor_{name}",
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        params={"sender_id": 33},
    ):
        wait = WhatsAppSenderSensor(
            task_id="wait",
            sender_id="{{ params.sender_id }}",
            poke_interval=0.2,
            timeout=30,
            retries=0,
            **mode_kwargs,
        )

        @task
        def use_sender(senders: list[dict[str, Any]]) -> int:
            return senders[0]["id"]

        use_sender(wait.output)
        for task_id, soft_fail in (("timeout", False), ("soft_timeout", True)):
            WhatsAppSenderSensor(
                task_id=task_id,
                sender_id=31,
                poke_interval=0.2,
                timeout=1,
                soft_fail=soft_fail,
                retries=0,
                **mode_kwargs,
            )
