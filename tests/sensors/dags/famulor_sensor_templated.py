"""``WhatsAppSenderSensor`` with every templated argument from ``params``, for ``dag.test()``.

``wait_for_many`` waits for ``min_count`` senders by rating and limit; ``wait_for_one`` for one
sender by id and phone number, after ``wait_for_many``. Both poll every 0.1 s for at most 10 s.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.common.compat.sdk import DAG

from famulor_provider.sensors.whatsapp import WhatsAppSenderSensor

with DAG(
    dag_id="famulor_sensor_templated",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={
        "conn_id": "famulor_default",
        "quality_ratings": ["GREEN", "YELLOW"],
        "min_messaging_limit": 2000,
        "min_count": 4,
        "sender_id": 15,
        "phone_number": "+44 20 7123 4567",
    },
):
    common = {"famulor_conn_id": "{{ params.conn_id }}", "poke_interval": 0.1, "timeout": 10, "retries": 0}
    wait_for_many = WhatsAppSenderSensor(
        task_id="wait_for_many",
        quality_ratings="{{ params.quality_ratings }}",
        min_messaging_limit="{{ params.min_messaging_limit }}",
        min_count="{{ params.min_count }}",
        **common,
    )
    wait_for_one = WhatsAppSenderSensor(
        task_id="wait_for_one",
        sender_id="{{ params.sender_id }}",
        phone_number="{{ params.phone_number }}",
        **common,
    )
    wait_for_many >> wait_for_one
