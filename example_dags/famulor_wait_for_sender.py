"""Wait, in the triggerer, until a WhatsApp sender can send; then prepare the campaign from it.

A new number is "connecting" for a while after onboarding. The deferrable sensor waits for it
to be online with a quality rating other than RED (unrated is fine) and pushes the matching
sender; the campaign step takes its id from there.

Needs a Famulor connection ``famulor_default`` (or the local sandbox, whose sender 33 is
"connecting": ``python -m famulor_provider.testing serve --sender-online-after 33=60``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.sensors.whatsapp import WhatsAppSenderSensor

# Famulor syncs sender status with Meta every 5 minutes, so the sensor polls every 300 s.
# Tests and demos against the sandbox poll faster through this variable.
POKE_INTERVAL = float(os.environ.get("FAMULOR_EXAMPLE_POKE_INTERVAL", "300"))

with DAG(
    dag_id="famulor_wait_for_sender",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={"sender_id": 33},
    tags=["famulor", "whatsapp", "example"],
) as dag:
    wait_for_sender = WhatsAppSenderSensor(
        task_id="wait_for_sender",
        sender_id="{{ params.sender_id }}",
        min_messaging_limit=250,
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=timedelta(hours=6),
    )

    @task
    def prepare_campaign(senders: list[dict[str, Any]]) -> dict[str, Any]:
        """The payload a send task would post from the sender the sensor found."""
        sender = senders[0]
        return {
            "sender_id": sender["id"],
            "from": sender["phone_number"],
            "template_name": "welcome",
            "daily_capacity": sender["messaging_limit"],  # None: unlimited
        }

    prepare_campaign(wait_for_sender.output)
